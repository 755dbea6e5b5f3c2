"""Appending access-log entries to the Merkle tree, durably, in group commits.

Rule 2 of DESIGN.md: no answer without its audit entry. ``AccessLog.append`` returns only
once the entries are committed to PostgreSQL with their tree indices; a request handler
awaits it before it answers, and if it raises (``AuditUnavailable``) the request fails.

One writer task per node is the sequencer. It takes everything queued while the previous
commit was in flight and, in one transaction: locks the tree head (``log_state``), assigns
the next contiguous indices, encodes each entry as its leaf, writes the entries and every
newly completed perfect-subtree hash (COPY), and moves the head (size, root, frontier).
So indices have no gaps and no entry is acknowledged that is not in the tree; a node
killed mid-batch loses only unacknowledged entries. Nodes sharing a database serialise
on the head row, so the log stays one log.

A request that changes state (issuing a licence, changing its status) appends its entries
inside its own transaction instead (``AccessLog.transaction``): the change and its entries
commit together or not at all, so no "allowed" entry outlives a rolled-back change, and
the request never waits for a second connection while it holds one. Both paths take the
same head lock, so the tree stays one sequence.

The subject id is logged only as HMAC-SHA256 under the exchange's log key (rule 10).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import asyncpg

from tongban.errors import TongbanError
from tongban.exchange.audit.leaf import COLUMNS, AccessEntry, encode_leaf
from tongban.exchange.audit.merkle import Frontier, leaf_hash
from tongban.exchange.pagetokens import PageTokens

__all__ = ["AccessEntry", "AccessLog", "AuditUnavailable", "LogTransaction", "SubjectHasher"]

_log = logging.getLogger(__name__)


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
        return hmac.digest(self._key, subject_id.encode("utf-8"), "sha256")

    def page_tokens(self) -> PageTokens:
        """The node's page tokens, under a key derived from the log key (never the key)."""
        return PageTokens.from_log_key(self._key)


# An entry ready to sequence: its searchable columns, its leaf bytes and the leaf's hash.
_Prepared = tuple[AccessEntry, bytes, bytes]

# access_log's columns in table order: the tuples handed to _APPEND follow it.
_ROW = ("idx", "leaf", *COLUMNS)
_APPEND = """
    WITH leaves AS (
        INSERT INTO access_log SELECT * FROM unnest($1::access_log[])
    ), nodes AS (
        INSERT INTO log_node (level, idx, hash)
        SELECT * FROM unnest($2::smallint[], $3::bigint[], $4::bytea[])
    )
    UPDATE log_state SET size = $5, root = $6, frontier = $7
"""
_Pending = tuple[list[_Prepared], "asyncio.Future[range]"]

_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


def _prepare(entries: Sequence[AccessEntry]) -> list[_Prepared]:
    prepared = []
    for entry in entries:
        bounded = entry.bounded()
        leaf = encode_leaf(bounded)
        prepared.append((bounded, leaf, leaf_hash(leaf)))
    return prepared


class _Deadlines:
    """Fails each waiting append's future ``timeout`` seconds (to within ``_TICK``) after
    it was queued, if the writer has not settled it by then; the writer may still commit
    those entries, but their callers are told they were not.

    One timer per ``_TICK`` of deadlines instead of an ``asyncio.timeout`` per call: with
    hundreds of appends waiting on each commit, a timer each (made, pushed on the loop's
    heap, cancelled) cost a third of an append's own work."""

    _TICK = 0.1

    def __init__(self, timeout: float, error: Callable[[], Exception]) -> None:
        self._timeout = timeout
        self._error = error
        self._buckets: dict[int, list[asyncio.Future[range]]] = {}

    def add(self, loop: asyncio.AbstractEventLoop, done: asyncio.Future[range]) -> None:
        tick = int((loop.time() + self._timeout) / self._TICK) + 1
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = []
            loop.call_at(tick * self._TICK, self._expire, tick)
        bucket.append(done)

    def _expire(self, tick: int) -> None:
        for done in self._buckets.pop(tick, ()):
            if not done.done():
                done.set_exception(self._error())


class LogTransaction:
    """The entries a transaction will append as it commits (see ``AccessLog.transaction``)."""

    def __init__(self) -> None:
        self._prepared: list[_Prepared] = []
        self.indices = range(0)
        """The entries' tree indices, known once the transaction has committed."""

    def record(self, entries: Sequence[AccessEntry]) -> None:
        """Add ``entries``; they are encoded now and written when the transaction ends."""
        self._prepared.extend(_prepare(entries))


class AccessLog:
    """Durable, sequenced appends; ``start()`` before use, ``stop()`` after."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        timeout: float = 5.0,
        on_written: Callable[[int], object] | None = None,
    ) -> None:
        self._pool = pool
        self._timeout = timeout
        self._on_written = on_written
        self._queue: list[_Pending] = []
        self._deadlines = _Deadlines(
            timeout,
            lambda: AuditUnavailable(
                f"The access log could not be written within {timeout:g} s, so the "
                "request was not served; retry later."
            ),
        )
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self.grown = asyncio.Event()  # set after every commit (the checkpointer waits on it)
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

    async def append(self, entries: Sequence[AccessEntry]) -> range:
        """Return the tree indices of ``entries`` once committed; raise AuditUnavailable."""
        if not entries:
            return range(0)
        if self._closing or self._writer is None:
            raise AuditUnavailable("The access log is not running; the node is shutting down.")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[range] = loop.create_future()
        # Encode and hash here, in the caller, so that this work overlaps the writer's
        # wait on the database instead of queueing behind it.
        self._queue.append((_prepare(entries), done))
        self._wake.set()
        self._deadlines.add(loop, done)
        return await done

    @contextlib.asynccontextmanager
    async def transaction(self, conn: Any) -> AsyncIterator[LogTransaction]:
        """Open a transaction on ``conn`` whose recorded entries join the log as it commits.

        The body does its work on ``conn`` and calls ``record()``; when it ends without an
        exception, the entries are appended on ``conn`` in the same transaction, which then
        commits: the work and its entries are durable together, or neither is. If the
        body raises, nothing is appended and the transaction rolls back.

        The append takes the tree head lock, held from then until the commit (one round
        trip), so every other append waits that long; keep slow work out of the caller's
        transaction. Raises AuditUnavailable (and rolls back) if the head is not free
        within the log's timeout or the database fails during the append.
        """
        if self._closing or self._writer is None:
            raise AuditUnavailable("The access log is not running; the node is shutting down.")
        recorded = LogTransaction()
        async with conn.transaction():
            yield recorded
            if recorded._prepared:
                try:
                    # The head's lock waits at most the log's timeout (lock_timeout, set
                    # with the lock's query), and a timer of our own, in case the server's
                    # does not fire (a server under libfaketime; a pooler).
                    async with asyncio.timeout(self._timeout + 1.0):
                        first, count = await self._sequence_on(
                            conn, recorded._prepared, lock_timeout_ms=int(self._timeout * 1000)
                        )
                except _DB_ERRORS as e:
                    _log.error("access log append in a transaction failed: %s", e)
                    raise AuditUnavailable(
                        "The access log cannot be written, so the change was not made; retry later."
                    ) from None
                recorded.indices = range(first, first + count)
        if recorded.indices:
            self._written(len(recorded.indices))

    def _written(self, count: int) -> None:
        self.batches += 1
        self.entries += count
        if self._on_written is not None:
            self._on_written(count)
        self.grown.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._queue = self._queue, []
            if batch:
                await self._write(batch)
            if self._closing and not self._queue:
                return

    async def _write(self, batch: list[_Pending]) -> None:
        try:
            start, count = await self._sequence([p for prepared, _ in batch for p in prepared])
        except _DB_ERRORS as e:
            _log.error("access log write failed for %d requests: %s", len(batch), e)
            error = AuditUnavailable(
                "The access log cannot be written, so the request was not served; retry later."
            )
            for _, done in batch:
                if not done.done():
                    done.set_exception(error)
            return
        self._written(count)
        for entries, done in batch:
            if not done.done():
                done.set_result(range(start, start + len(entries)))
            start += len(entries)

    async def _sequence(self, entries: list[_Prepared]) -> tuple[int, int]:
        """Append ``entries`` to the tree in one transaction; return (first index, count)."""
        async with self._pool.acquire() as conn, conn.transaction():
            return await self._sequence_on(conn, entries)

    @staticmethod
    async def _sequence_on(
        conn: Any, entries: list[_Prepared], *, lock_timeout_ms: int | None = None
    ) -> tuple[int, int]:
        """Append ``entries`` in the transaction open on ``conn``; return (first, count).
        With ``lock_timeout_ms``, the wait for the head's lock is bounded by it (set for the
        rest of the transaction, in the same round trip: set_config runs as the FROM list
        is read, before the row is locked)."""
        if lock_timeout_ms is None:
            head = await conn.fetchrow("SELECT size, frontier FROM log_state FOR UPDATE")
        else:
            head = await conn.fetchrow(
                "SELECT size, frontier FROM set_config('lock_timeout', $1, true), log_state "
                "FOR UPDATE OF log_state",
                f"{lock_timeout_ms}ms",
            )
        assert head is not None  # created by the migration
        frontier = Frontier(head["size"], [bytes(h) for h in head["frontier"]])
        first = frontier.size
        rows: list[tuple[object, ...]] = []
        levels: list[int] = []
        indices: list[int] = []
        hashes: list[bytes] = []
        for entry, leaf, digest in entries:
            rows.append((frontier.size, leaf, *entry.columns()))
            for (level, index), node in frontier.append(digest):
                levels.append(level)
                indices.append(index)
                hashes.append(node)
        # One statement (one round trip) while the head is locked: the leaves, the new
        # subtree hashes and the head. The rows are access_log's row type, in its
        # column order (_ROW), which asyncpg encodes as a composite array.
        await conn.execute(
            _APPEND, rows, levels, indices, hashes, frontier.size, frontier.root(), frontier.roots
        )
        return first, len(entries)
