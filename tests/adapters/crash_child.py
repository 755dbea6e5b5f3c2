"""A child process for test_killed_process: syncs a stream and kills itself (SIGKILL) at a
chosen point, the way a power cut or the OOM killer would.

Usage: python -m tests.adapters.crash_child MAPPING STATE LOG KILL_AT WHERE
Every published change is appended to LOG (one JSON line, fsynced) before the kill.
WHERE is "after_publish" (the exchange accepted the batch, the state was not committed)
or "before_publish".
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.adapters.conftest import VALIDATORS
from tongban.adapters import Change, StateStore, StreamSync, load_mapping
from tongban.adapters.sources import SqliteSource


class LoggingSink:
    def __init__(self, log: Path, kill_at: int, where: str) -> None:
        self._log = log
        self._kill_at = kill_at
        self._where = where
        self._calls = 0

    async def publish(self, dataset: str, changes: Sequence[Change]) -> None:
        self._calls += 1
        if self._calls == self._kill_at and self._where == "before_publish":
            os.kill(os.getpid(), signal.SIGKILL)
        with self._log.open("a", encoding="utf-8") as f:
            for change in changes:
                line = {"call": self._calls, "key": change.key, "id": change.id}
                f.write(json.dumps({**line, "fingerprint": change.fingerprint}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self._calls == self._kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


async def main(mapping_path: str, state_path: str, log: str, kill_at: str, where: str) -> None:
    mapping = load_mapping(mapping_path)
    sink = LoggingSink(Path(log), int(kill_at), where)
    with StateStore.open(state_path) as state:
        async with SqliteSource(mapping) as source:
            sync = StreamSync(source, mapping, "enterprises", state, sink, validators=VALIDATORS)
            await sync.run()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
