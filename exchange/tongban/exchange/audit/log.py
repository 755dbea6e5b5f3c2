"""Appending access-log entries durably, in pipelined group commits.

Rule 2 of DESIGN.md: no answer without its audit entry. ``AccessLog.append`` returns only
once the entries are committed to PostgreSQL with their log indices; a request handler
awaits it before it answers, and if it raises (``AuditUnavailable``) the request fails.

Sequence first, integrate after (as Tessera does). One writer task per node is the
sequencer: it takes everything queued and, in one statement that is its own transaction,
takes the next indices from ``log_sequence`` (a row lock held to the commit) and writes
the entries, each with its leaf, to ``access_log`` (which has no index but its primary
key). Nothing else is on this path: the Merkle tree, the signed checkpoint and the
auditors' search indexes are built after, by the exchange's one integrator
(``audit/integrator.py``). Indices are given and committed in order under that lock, so
the committed entries are always 0..n-1 with no gap, and no entry is acknowledged that
is not durable; a node killed mid-batch loses only unacknowledged entries, and the next
integrator takes the tree up to every committed one. Nodes and workers sharing a
database take indices from the same row, so the log stays one log.

Commits are pipelined: up to ``PIPELINE`` batches of at most ``BATCH_REQUESTS`` requests
are in flight on their own connections (a second only once ``OVERLAP_AT_LEAST`` requests
are queued). A batch commits without waiting for the disk, so
the lock is held only while its rows are written, and is answered once a synchronous
commit after it has flushed the WAL; meanwhile the next batch is written, and this
process answers the last batch's callers and encodes their next entries. A batch alone
(none other in flight, nothing queued) has nothing to overlap and commits synchronously
in its one statement.

A request that changes state (issuing a licence, changing its status) appends its entries
inside its own transaction instead (``AccessLog.transaction``): the change and its entries
commit together or not at all, so no "allowed" entry outlives a rolled-back change, and
the request never waits for a second connection while it holds one. Both paths take the
same sequence lock, so the log stays one sequence.

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
from tongban.exchange.audit.leaf import COLUMNS, AccessEntry, sequenced_row
from tongban.exchange.db import trouble
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


# An entry ready to sequence: the row of access_log without its index (idx 0 here; the
# statement gives it). Its leaf is encoded in the caller, before it is queued.
_Prepared = tuple[object, ...]

# access_log's columns in table order: the tuples handed to _APPEND follow it.
_ROW = ("idx", "leaf", *COLUMNS)
# One statement, one transaction: take the next indices (the row lock is held to the
# commit, so batches get and commit their indices in order) and write the entries.
_TAKE = "UPDATE log_sequence SET next = next + cardinality($1::access_log[])"
_WRITE = f"""
    leaves AS (
        INSERT INTO access_log
        SELECT seq.first + r.n - 1, {", ".join(f"r.{c}" for c in _ROW[1:])}
        FROM seq, unnest($1::access_log[]) WITH ORDINALITY AS r({", ".join(_ROW)}, n)
    )
    SELECT first FROM seq
"""  # noqa: S608 - built from fixed names
# The writer's batch commits without waiting for its WAL to reach the disk
# (synchronous_commit off for this transaction only), so the sequence lock is released
# as soon as the rows are written, and the next batch writes its rows while this one's
# WAL is flushed; the writer then answers no caller before _FLUSH, a transaction that
# commits synchronously after it, returns: its commit flushes the WAL up to itself, this
# batch's commit included. See "Sequencing and integration" in docs/audit-log.md.
_APPEND = f"""
    WITH seq AS (
        {_TAKE} FROM (SELECT set_config('synchronous_commit', 'off', true)) AS t
        RETURNING next - cardinality($1::access_log[]) AS first
    ), {_WRITE}
"""
# A batch with no other in flight and nothing queued behind it has nothing to overlap
# with: it commits synchronously, in its one round trip.
_APPEND_ALONE = f"""
    WITH seq AS (
        {_TAKE} RETURNING next - cardinality($1::access_log[]) AS first
    ), {_WRITE}
"""
_FLUSH = "SELECT pg_current_xact_id()"
"""A transaction that takes an id, so that its commit is written and waited for."""
# The same in a caller's transaction, its wait for the lock bounded by $2 (set for the
# rest of the transaction as the FROM list is read, before the row is locked).
_APPEND_BOUNDED = f"""
    WITH seq AS (
        {_TAKE} FROM (SELECT set_config('lock_timeout', $2, true)) AS t
        RETURNING next - cardinality($1::access_log[]) AS first
    ), {_WRITE}
"""
PIPELINE = 2
"""Batches in flight at once (each on its own connection of the log's pool)."""
BATCH_REQUESTS = 128
"""Requests in a batch, at most: when more are queued, the rest go in the next batch, on
the other connection, so that one batch is written while the other's callers run
again, rather than every caller in one batch and nothing in flight while they run."""

OVERLAP_AT_LEAST = 16
"""Requests queued, at least, for a batch to go while another is in flight. Fewer wait
for the batch in flight to land and go with what queued meanwhile, in one batch alone:
a few entries overlapping would cost a transaction and a flush round trip of their own
and wait on the first batch's lock anyway. Under the audited query at 64 callers
(batches of one or two) the node served 1,199-1,284 queries/s this way against 950-974
sending each at once, and PostgreSQL's CPU a query fell from ~406 to ~250 us; a full
queue (256 appending tasks) overlaps as before."""

_Pending = tuple[list[_Prepared], "asyncio.Future[range]"]

_DB_ERRORS = (*trouble.DRIVER_ERRORS, TimeoutError)
# Refusals of a value in the statement, by the server (SQLSTATE classes 22 and 23) or by
# asyncpg while encoding it: the data's fault, not the database's.
_REFUSED_VALUE = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.exceptions._base.DataError,
)


def _report(error: Exception, what: str) -> None:
    """Log an append that failed. The database's trouble (out of disk, read-only, not
    there) fails every append until it is fixed, hundreds a second: that goes through
    ``trouble.report``, a line every few seconds; anything else is logged each time."""
    if isinstance(error, trouble.DATABASE_TROUBLE):
        trouble.report(f"the access log ({what})", error)
    else:
        _log.error("access log write failed for %s: %s", what, error)


def _prepare(entries: Sequence[AccessEntry]) -> list[_Prepared]:
    return [sequenced_row(entry) for entry in entries]


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
        """Return the log indices of ``entries`` once committed; raise AuditUnavailable."""
        if not entries:
            return range(0)
        if self._closing or self._writer is None:
            raise AuditUnavailable("The access log is not running; the node is shutting down.")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[range] = loop.create_future()
        # Encode here, in the caller, so that this work overlaps the writer's wait on the
        # database instead of queueing behind it.
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

        The append takes the sequence lock, held from then until the commit (one round
        trip), so every other append waits that long; keep slow work out of the caller's
        transaction. Raises AuditUnavailable (and rolls back) if the lock is not free
        within the log's timeout or the database fails during the append.
        """
        if self._closing or self._writer is None:
            raise AuditUnavailable("The access log is not running; the node is shutting down.")
        recorded = LogTransaction()
        async with conn.transaction():
            yield recorded
            if recorded._prepared:
                try:
                    # The lock waits at most the log's timeout (lock_timeout, set with the
                    # statement), and a timer of our own, in case the server's does not
                    # fire (a server under libfaketime; a pooler).
                    async with asyncio.timeout(self._timeout + 1.0):
                        first = await self._sequence_on(
                            conn, recorded._prepared, lock_timeout_ms=int(self._timeout * 1000)
                        )
                except _DB_ERRORS as e:
                    _report(e, "an append in a transaction")
                    raise AuditUnavailable(
                        "The access log cannot be written, so the change was not made; retry later."
                    ) from None
                recorded.indices = range(first, first + len(recorded._prepared))
        if recorded.indices:
            self._written(len(recorded.indices))

    def _written(self, count: int) -> None:
        self.batches += 1
        self.entries += count
        if self._on_written is not None:
            self._on_written(count)
        self.grown.set()

    async def _run(self) -> None:
        in_flight: set[asyncio.Task[None]] = set()

        def landed(task: asyncio.Task[None]) -> None:
            in_flight.discard(task)
            self._wake.set()  # a connection is free: send what queued meanwhile

        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if (
                self._queue
                and len(in_flight) < PIPELINE
                and (not in_flight or len(self._queue) >= OVERLAP_AT_LEAST)
            ):
                batch = self._queue[:BATCH_REQUESTS]
                del self._queue[:BATCH_REQUESTS]
                alone = not self._queue and not in_flight
                if self._queue:
                    self._wake.set()  # send the rest too, if a connection is free
                task = loop.create_task(self._write(batch, alone), name="access-log-batch")
                in_flight.add(task)
                task.add_done_callback(landed)
            if self._closing and not self._queue and not in_flight:
                return

    async def _write(self, batch: list[_Pending], alone: bool = False) -> None:
        rows = [row for prepared, _ in batch for row in prepared]
        committed = False
        try:
            async with self._pool.acquire() as conn:
                if alone:
                    start = await conn.fetchval(_APPEND_ALONE, rows)
                else:
                    start = await conn.fetchval(_APPEND, rows)
                    committed = True  # perhaps not durable yet: no answer before the flush
                    await conn.execute(_FLUSH)
        except _REFUSED_VALUE as e:
            if len(batch) > 1 and not committed:
                # One request's entry that the database refuses (a NUL in a text, a value
                # a check forbids) fails the whole statement; it must not fail the other
                # requests' entries with it. Nothing was committed: write each request's
                # entries on their own, in order, so only the bad one is refused.
                _log.warning("access log batch refused (%s); writing its requests one by one", e)
                for pending in batch:
                    await self._write([pending])
                return
            self._fail(batch, e)
            return
        except _DB_ERRORS as e:
            self._fail(batch, e)
            return
        self._written(len(rows))
        for entries, done in batch:
            if not done.done():
                done.set_result(range(start, start + len(entries)))
            start += len(entries)

    @staticmethod
    def _fail(batch: list[_Pending], e: Exception) -> None:
        _report(e, f"a batch of {len(batch)} requests")
        error = AuditUnavailable(
            "The access log cannot be written, so the request was not served; retry later."
        )
        for _, done in batch:
            if not done.done():
                done.set_exception(error)

    @staticmethod
    async def _sequence_on(conn: Any, entries: list[_Prepared], *, lock_timeout_ms: int) -> int:
        """Append ``entries`` in the transaction open on ``conn``; return the first index."""
        return int(await conn.fetchval(_APPEND_BOUNDED, entries, f"{lock_timeout_ms}ms"))
