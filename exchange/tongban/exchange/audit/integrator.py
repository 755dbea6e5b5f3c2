"""Integrating sequenced entries into the Merkle tree: one integrator per exchange.

The sequencer (``audit/log.py``) makes an entry durable in ``access_log`` with its index
and nothing more. The integrator then takes the entries past the tree head, in index
order, and in one transaction: locks the head (``log_state``), hashes their leaves,
writes every newly completed perfect subtree of 256 leaves or more (``log_node``; smaller
ones are computed from their leaves when a proof needs them), copies their searchable
columns into ``access_log_search`` (the auditors' indexes), and moves the head. The
checkpointer signs what the head says.

Every node (every worker) runs an ``Integrator``, and one of them leads: the one holding
a PostgreSQL session advisory lock on a connection of its own, as the outbox relay's
leader does. When that connection ends (the process died, the network split),
PostgreSQL frees the lock and another node's integrator takes over from the head. Since
every integration locks the head row and starts from the size it finds there, even two
integrators at once (a leader that lost its lock without knowing) would only take turns,
never write an entry twice; the lock decides who does the work, not whether it is right.

``catch_up()`` brings the tree up to everything sequenced when it is called: the leader
integrates at once; another process waits for the leader, or, when no process leads
(``tongban audit verify`` on a stopped exchange), integrates under the lock itself.
``Checkpointer.sign_now`` calls it, so an entry asked for on demand is in the tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from tongban.exchange.audit.log import AuditUnavailable
from tongban.exchange.audit.merkle import HASH_SIZE, Frontier
from tongban.exchange.audit.store import STORED_LEVEL
from tongban.exchange.db.guard import held_for_long
from tongban.exchange.db.trouble import DRIVER_ERRORS

__all__ = ["INTEGRATOR_LOCK", "Integrator", "integrate"]

_log = logging.getLogger(__name__)

#: The advisory lock key the leading integrator holds (the bytes of "tb-integ").
INTEGRATOR_LOCK = int.from_bytes(b"tb-integ", "big", signed=True)

_DB_ERRORS = DRIVER_ERRORS
_MAX_BATCH = 20_000
"""Entries per integration transaction, at most."""
_POLL = 0.1
"""How often the leader looks for entries other processes sequenced (its own wake it)."""
_PACE = 0.05
"""After a pass that was not full, the next starts no sooner than this after it: under a
steady trickle one pass per 50 ms instead of one per group commit (a pass costs
PostgreSQL a transaction and ~0.4 ms beside its entries). ``catch_up()`` does not wait."""
_LEAD_POLL = 0.25
"""How often a process that does not lead tries the lock (PostgreSQL cannot tell it)."""
_WAIT_POLL = 0.01
_FIRST_BACKOFF = 0.1
_MAX_BACKOFF = 5.0

# The leaf hashes are computed by PostgreSQL (RFC 6962: SHA-256(0x00 || leaf)), once, and
# come back as one value of 32 bytes each in index order; this process folds them into
# the interior nodes and the head, and sends back, as one value, the hashes of the nodes
# of STORED_LEVEL and up (the smaller ones are computed from their leaves when a proof
# needs them; no array element, record or tuple per entry on either side).
_READ = (
    "SELECT count(*) AS n, max(idx) AS last,"
    " string_agg(sha256('\\x00'::bytea || leaf), ''::bytea ORDER BY idx) AS hashes"
    " FROM (SELECT idx, leaf FROM access_log WHERE idx >= $1 ORDER BY idx LIMIT $2) AS s"
)
_INDICES = "SELECT idx FROM access_log WHERE idx >= $1 ORDER BY idx LIMIT $2"
_INTEGRATE = """
    WITH nodes AS (
        INSERT INTO log_node (level, idx, hash)
        SELECT level, idx, substring($3::bytea FROM 32 * n::int - 31 FOR 32)
        FROM unnest($1::smallint[], $2::bigint[]) WITH ORDINALITY AS t(level, idx, n)
    ), search AS (
        INSERT INTO access_log_search
        SELECT idx, at, caller, officer, action, dataset, purpose, case_id, subject_hmac,
               decision
        FROM access_log WHERE idx >= $4 AND idx < $5
    )
    UPDATE log_state SET size = $5, root = $6, frontier = $7
"""


async def integrate(conn: PoolConnectionProxy[asyncpg.Record], limit: int = _MAX_BATCH) -> int:
    """Fold up to ``limit`` entries past the tree head into the tree, in one transaction on
    ``conn``; return how many. Stops before a missing index (which only SQL run outside
    the sequencer can cause), logging it."""
    async with conn.transaction():
        head = await conn.fetchrow("SELECT size, frontier FROM log_state FOR UPDATE")
        assert head is not None  # created by the migration
        size = int(head["size"])
        read = await conn.fetchrow(_READ, size, limit)
        assert read is not None  # an aggregate: one row
        count: int = read["n"]
        if not count:
            return 0
        leaves = bytes(read["hashes"])
        if read["last"] != size + count - 1:  # distinct indices from size: a gap among them
            count = await _before_gap(conn, size, limit)
            leaves = leaves[: count * HASH_SIZE]
            if not count:
                return 0
        frontier = Frontier(size, [bytes(h) for h in head["frontier"]])
        levels, indices, nodes = frontier.extend(leaves, min_level=STORED_LEVEL)
        await conn.execute(
            _INTEGRATE,
            levels,
            indices,
            bytes(nodes),
            size,
            frontier.size,
            frontier.root(),
            frontier.roots,
        )
        return count


async def _before_gap(conn: PoolConnectionProxy[asyncpg.Record], size: int, limit: int) -> int:
    """How many entries run from ``size`` without a gap (logging the gap)."""
    count = 0
    for row in await conn.fetch(_INDICES, size, limit):
        if row["idx"] != size + count:
            _log.error(
                "the access log has no entry %d but has %d: the tree stops before the "
                "gap; run tongban audit verify",
                size + count,
                row["idx"],
            )
            break
        count += 1
    return count


class Integrator:
    """Integrates while this process leads; ``start()`` before use, ``stop()`` after.

    ``grown`` is set when this process sequenced entries (its ``AccessLog.grown``): the
    leader integrates them at once after an idle spell, else at most once per ``_PACE``
    seconds (a full pass goes on at once); entries of other processes it finds every
    ``_POLL`` seconds. ``integrated`` is set after each integration by this process (the
    checkpointer waits on it)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        grown: asyncio.Event | None = None,
        timeout: float = 10.0,
        on_integrated: Callable[[int], object] | None = None,
    ) -> None:
        self._pool = pool
        self._grown = grown or asyncio.Event()
        self._timeout = timeout
        self._on_integrated = on_integrated
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._conn: PoolConnectionProxy[asyncpg.Record] | None = None
        self._turn = asyncio.Lock()  # the loop and catch_up take turns on the connection
        self.integrated = asyncio.Event()
        self.leading = False
        self.entries = 0

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="log-integrator")

    async def stop(self) -> None:
        """Stop; a leader first integrates what is sequenced, so its checkpoint covers it."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        if self._conn is not None:
            with contextlib.suppress(*_DB_ERRORS):
                async with self._turn:
                    await self._drain(self._conn)
        # A cancellation that lands in asyncpg while a dead connection is being released
        # can come out as a connection error, which the loop retries; so cancel until the
        # task has ended (the loop also ends by itself once it sees ``_stopping``).
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=0.5)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def catch_up(self) -> int:
        """Return the tree's size once it covers every entry sequenced before this call.
        Raises AuditUnavailable if it does not within the timeout."""
        deadline = time.monotonic() + self._timeout
        try:
            target = int(await self._pool.fetchval("SELECT next FROM log_sequence"))
            while True:
                conn = self._conn
                if conn is not None:
                    async with self._turn:
                        size = await self._drain(conn)
                else:
                    size = int(await self._pool.fetchval("SELECT size FROM log_state"))
                    if size < target:
                        size = await self._integrate_if_no_leader()
                if size >= target:
                    return size
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(_WAIT_POLL)
        except _DB_ERRORS as e:
            raise AuditUnavailable(
                "The access log's tree cannot be brought up to date; retry later."
            ) from e
        raise AuditUnavailable(
            f"The access log's tree did not reach entry {target - 1} within "
            f"{self._timeout:g} s: no integrator is keeping up; retry later."
        )

    async def _integrate_if_no_leader(self) -> int:
        """Integrate everything under the lock if no process holds it; return the size."""
        async with self._pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", INTEGRATOR_LOCK):
                return int(await conn.fetchval("SELECT size FROM log_state"))
            try:
                return await self._drain(conn)
            finally:
                await self._unlock(conn)

    async def _drain(self, conn: PoolConnectionProxy[asyncpg.Record]) -> int:
        """Integrate until nothing is left; return the tree's size."""
        while await self._once(conn):
            pass
        return int(await conn.fetchval("SELECT size FROM log_state"))

    async def _once(self, conn: PoolConnectionProxy[asyncpg.Record]) -> int:
        count = await integrate(conn)
        if count:
            self.entries += count
            if self._on_integrated is not None:
                self._on_integrated(count)
            self.integrated.set()
        return count

    async def _run(self) -> None:
        backoff = _FIRST_BACKOFF
        while not self._stopping:
            try:
                async with self._leadership() as conn:
                    backoff = _FIRST_BACKOFF
                    await self._integrate_while_leading(conn)
            except _DB_ERRORS as e:
                _log.warning("the log integrator lost its database connection (%s); retrying", e)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _integrate_while_leading(self, conn: PoolConnectionProxy[asyncpg.Record]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            self._grown.clear()
            async with self._turn:
                count = await self._once(conn)
            if count >= _MAX_BATCH:
                await asyncio.sleep(0)  # let the others run between full batches
                continue
            if count:
                # Paced: what is sequenced meanwhile waits for the next pass (a checkpoint
                # does not: sign_now catches up first).
                await asyncio.sleep(started + _PACE - loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_POLL):
                    await self._grown.wait()

    @contextlib.asynccontextmanager
    async def _leadership(self) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
        """Yield a connection holding the integrator lock, waiting until this process
        gets it."""
        conn = await self._pool.acquire()
        held_for_long(conn)
        try:
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", INTEGRATOR_LOCK):  # noqa: ASYNC110
                await asyncio.sleep(_LEAD_POLL)
            self.leading = True
            self._conn = conn
            _log.info("this node now integrates the access log")
            try:
                yield conn
            finally:
                self.leading = False
                self._conn = None
                if not conn.is_closed():
                    # Shielded: the lock must not outlive the integrator on a pooled connection.
                    await asyncio.shield(self._unlock(conn))
        finally:
            await self._pool.release(conn)

    @staticmethod
    async def _unlock(conn: PoolConnectionProxy[asyncpg.Record]) -> None:
        with contextlib.suppress(*_DB_ERRORS):
            await conn.execute("SELECT pg_advisory_unlock($1)", INTEGRATOR_LOCK)
