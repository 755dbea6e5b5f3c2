"""Running the ``tongban`` command as a user would: a subprocess of the installed script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TONGBAN = str(Path(sys.executable).parent / "tongban")


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def lines(self) -> list[Any]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TONGBAN_")}
    env["GRPC_VERBOSITY"] = "ERROR"
    env.update(extra)
    return env


def tongban(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
    done = subprocess.run(
        [TONGBAN, *args],
        capture_output=True,
        text=True,
        env=env if env is not None else cli_env(),
        timeout=timeout,
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)


async def atongban(*args: str, env: dict[str, str] | None = None, within: float = 120) -> Result:
    """``tongban`` as a subprocess without blocking the event loop (for in-process nodes)."""
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        TONGBAN,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env if env is not None else cli_env(),
    )
    out, err = await asyncio.wait_for(proc.communicate(), within)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())
