"""Writing access-log entries durably, in group commits.

Rule 2 of DESIGN.md: no answer without its audit entry. ``AccessLog.append`` returns only
once the entries are committed to PostgreSQL; a request handler awaits it before it
answers, and if it raises (``AuditUnavailable``) the request fails.

Concurrent requests share commits: one writer task takes everything queued while the
previous commit was in flight and writes it with one COPY (one transaction, one WAL flush),
so throughput grows with concurrency while each caller waits for about one commit. The
subject id is logged only as HMAC-SHA256 under the exchange's log key (rule 10).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from tongban.errors import TongbanError

__all__ = ["AccessEntry", "AccessLog", "AuditUnavailable", "SubjectHasher"]

_log = logging.getLogger(__name__)

_COLUMNS = (
    "at", "node", "caller", "officer", "action", "dataset", "fields",
    "purpose", "case_id", "subject_hmac", "decision", "reason",
)  # fmt: skip
_TEXT_LIMIT = 200  # logged purposes and case ids are cut here (denials may carry junk)


class AuditUnavailable(TongbanError):
    reason = "AUDIT_UNAVAILABLE"
    status = "UNAVAILABLE"


class SubjectHasher:
    """Keyed hash of subject ids: searchable by key holders, unreadable to table copiers."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the log key must be at least 32 bytes")
        self._key = key

    def __call__(self, subject_id: str) -> bytes:
        return hmac.new(self._key, subject_id.encode("utf-8"), hashlib.sha256).digest()


@dataclass(frozen=True)
class AccessEntry:
    at: datetime
    node: str
    caller: str
    officer: str | None
    action: str
    dataset: str | None
    fields: tuple[str, ...]
    purpose: str | None
    case_id: str | None
    subject_hmac: bytes | None
    decision: Literal["allowed", "denied"]
    reason: str | None

    def row(self) -> tuple[object, ...]:
        return (
            self.at,
            self.node,
            self.caller,
            self.officer,
            self.action,
            _cut(self.dataset),
            [_cut(name) or "" for name in self.fields[:200]],
            _cut(self.purpose),
            _cut(self.case_id),
            self.subject_hmac,
            self.decision,
            self.reason,
        )


def _retrieve(done: asyncio.Future[None]) -> None:
    if not done.cancelled():
        done.exception()


def _cut(text: str | None) -> str | None:
    return None if text is None else text[:_TEXT_LIMIT]


class AccessLog:
    """Durable, batched appends to ``access_log``; ``start()`` before use, ``stop()`` after."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        timeout: float = 5.0,
        on_written: Callable[[int], object] | None = None,
    ) -> None:
        self._pool = pool
        self._on_written = on_written
        self._timeout = timeout
        self._queue: list[tuple[Sequence[AccessEntry], asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self.batches = 0
        self.entries = 0

    async def start(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._run(), name="access-log")

    async def stop(self) -> None:
        """Write what is queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            await self._writer
            self._writer = None

    async def append(self, entries: Sequence[AccessEntry]) -> None:
        """Return once ``entries`` are committed; raise AuditUnavailable otherwise."""
        if not entries:
            return
        if self._closing or self._writer is None:
            raise AuditUnavailable("The access log is not running; the node is shutting down.")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((entries, done))
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(done), self._timeout)
        except TimeoutError:
            done.add_done_callback(_retrieve)  # it may still fail later; nobody waits now
            raise AuditUnavailable(
                f"The access log could not be written within {self._timeout:.0f} s, so the "
                "request was not served; retry later."
            ) from None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._queue = self._queue, []
            if batch:
                await self._write(batch)
            if self._closing and not self._queue:
                return

    async def _write(self, batch: list[tuple[Sequence[AccessEntry], asyncio.Future[None]]]) -> None:
        rows = [entry.row() for entries, _ in batch for entry in entries]
        try:
            await self._pool.copy_records_to_table("access_log", records=rows, columns=_COLUMNS)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
            _log.error("access log write failed for %d entries: %s", len(rows), e)
            error = AuditUnavailable(
                "The access log cannot be written, so the request was not served; retry later."
            )
            for _, done in batch:
                if not done.done():
                    done.set_exception(error)
            return
        self.batches += 1
        self.entries += len(rows)
        if self._on_written is not None:
            self._on_written(len(rows))
        for _, done in batch:
            if not done.done():
                done.set_result(None)
