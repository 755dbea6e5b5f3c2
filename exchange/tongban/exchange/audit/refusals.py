"""Refusals counted into few access-log entries, none left out (issue 14, finding 13b).

A flood of refused calls must not flood the log, yet every refusal must be counted in
some entry, or the anomaly report under-counts a probe. ``RefusalTally`` writes the
first refusal of a key (a certificate and a reason) at once and opens a window; the
refusals of that key within the window are added up and written when the window ends,
by a timer rather than by the next refusal (which may never come), and ``close()``
writes whatever is left when the node stops. A key quiet for a whole window is
forgotten, so its next refusal is written at once again: at most one entry per key and
window while a flood lasts.

The count travels in the entry's ``purpose`` (the leaf has no count member):
``auth_refusal_purpose`` and ``call_refusal_purpose`` write it and ``refusals_in`` reads
it back, for the anomaly report's ``denial_burst``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = [
    "AUTH_REFUSED",
    "CALL_REFUSED",
    "RefusalTally",
    "auth_refusal_purpose",
    "call_refusal_purpose",
    "refusals_in",
]

_log = logging.getLogger(__name__)

AUTH_REFUSED = "auth.refused"
"""The action of an entry for refused authentications (docs/audit-log.md)."""
CALL_REFUSED = "call.refused"
"""The action of an entry for calls refused by a department's limits."""

_COUNTS = {
    AUTH_REFUSED: re.compile(r"([1-9][0-9]{0,17}) refusals? of certificate "),
    CALL_REFUSED: re.compile(r"([1-9][0-9]{0,17}) calls? refused, "),
}


def auth_refusal_purpose(count: int, fingerprint: str) -> str:
    """The purpose of an ``auth.refused`` entry standing for ``count`` refusals."""
    return f"{count} {'refusal' if count == 1 else 'refusals'} of certificate sha256:{fingerprint}"


def call_refusal_purpose(count: int, method: str) -> str:
    """The purpose of a ``call.refused`` entry standing for ``count`` refused calls."""
    return f"{count} {'call' if count == 1 else 'calls'} refused, the latest to {method}"


def refusals_in(action: str, purpose: str | None) -> int:
    """How many refusals an entry stands for: the count a merged refusal entry's purpose
    starts with, else 1 (every other entry is one access)."""
    pattern = _COUNTS.get(action)
    found = pattern.match(purpose) if pattern is not None and purpose else None
    return int(found[1]) if found else 1


K = TypeVar("K", bound=Hashable)


@dataclass
class _Window:
    ends: float
    pending: int = 0


class RefusalTally(Generic[K]):
    """Counts refusals per key and writes them with ``write(key, count)``.

    ``window``: seconds a key's refusals are added up for. ``max_keys``: how many keys are
    tallied at once; beyond it a refusal is written alone (never dropped). Call
    ``close()`` when no more refusals can come: it writes what is pending."""

    def __init__(
        self,
        write: Callable[[K, int], Awaitable[None]],
        *,
        window: float = 1.0,
        max_keys: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if window <= 0:
            raise ValueError(f"window must be positive, not {window!r}")
        self._write = write
        self._window = window
        self._max_keys = max_keys
        self._now = monotonic
        self._open: dict[K, _Window] = {}
        self._timer: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    async def refused(self, key: K) -> None:
        """Count one refusal of ``key``: written now if it opens a window (or the node is
        stopping, or the tally is full), else added to the count written at the window's
        end."""
        window = self._open.get(key)
        if window is not None:
            window.pending += 1
            return
        if not self._closing.is_set() and len(self._open) < self._max_keys:
            self._open[key] = _Window(ends=self._now() + self._window)
            if self._timer is None:
                self._timer = asyncio.get_running_loop().create_task(
                    self._run(), name="refusal-tally"
                )
        await self._write(key, 1)

    async def close(self) -> None:
        """Write every count still pending and stop the timer; later refusals are written
        one by one. Idempotent."""
        self._closing.set()
        if self._timer is not None:
            await self._timer

    async def _run(self) -> None:
        try:
            while self._open and not self._closing.is_set():
                delay = min(w.ends for w in self._open.values()) - self._now()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._closing.wait()
                await self._flush(everything=self._closing.is_set())
            await self._flush(everything=True)
        finally:
            self._timer = None

    async def _flush(self, *, everything: bool) -> None:
        """Write the counts of the windows that ended (all of them, at ``close()``); a
        window with nothing pending closes, one with a count starts the next."""
        now = self._now()
        for key, window in list(self._open.items()):
            if not everything and window.ends > now:
                continue
            count, window.pending = window.pending, 0
            if count == 0 or everything:
                del self._open[key]
            else:
                window.ends = now + self._window
            if count == 0:
                continue
            try:
                await self._write(key, count)
            except Exception:  # noqa: BLE001 - logged, and the count kept for the next try
                if everything:
                    _log.exception("could not log %d refusals at shutdown", count)
                else:
                    _log.exception("could not log %d refusals; trying again", count)
                    window.pending += count
