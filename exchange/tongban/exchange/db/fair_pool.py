"""A connection pool that no one department can empty.

Requests of one department could otherwise hold every pooled connection — 64 licence
issues queued on the status list's row lock each hold one — while another department's
query waits for any connection at all. ``FairPool`` gives each department a share: at
most ``share`` connections held at once by calls made for one department (the task's
``department`` context variable, set by the gRPC interceptor for each authenticated
call). A call past its department's share waits for one of that department's own
connections to come back, never for another department's; it waits holding no
connection, so this cannot deadlock. Work done for no department (the access-log writer,
the change listener, the Kafka relay, CLI commands) is not limited.

With the default pool of 10 and a share of half the pool, two departments at full
speed still leave connections for a third.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from typing import Any

import asyncpg
from asyncpg import connection as _connection
from asyncpg import exceptions as _exceptions
from asyncpg import pool as _pool
from asyncpg import protocol as _protocol

__all__ = ["DatabaseUnreachable", "FairPool", "department", "share_of"]

department: ContextVar[str | None] = ContextVar("tongban_pool_department", default=None)
"""Whose work the current task does: a department code, or None for the node's own."""


class DatabaseUnreachable(ConnectionError):
    """No connection to PostgreSQL could be opened for a call: it is down, restarting,
    refusing connections or out of them. A ``ConnectionError``, so code that handles the
    driver's connection failures as ``OSError`` still does; the gRPC interceptor answers
    it UNAVAILABLE / DATABASE_UNAVAILABLE (``db.trouble``). Its cause is the driver's error."""


_UNREACHABLE = (
    OSError,  # refused, reset, no such socket file, no such host
    asyncpg.PostgresConnectionError,
    _exceptions.CannotConnectNowError,  # starting up or shutting down
    _exceptions.TooManyConnectionsError,
)
"""What opening a connection raises when the database is not there to serve it."""


class _Acquired(_pool.PoolAcquireContext):
    """``async with pool.acquire()`` (and ``pool.fetch()`` and the like, which use it).

    Two failures of the connection rather than of the call leave the block as
    DatabaseUnreachable, which the call's answer treats as the database not there
    (UNAVAILABLE, ``db.trouble``), not as a fault of the node:

    - InternalClientError ("cannot switch to state …; another operation (2) is in
      progress"): a connection whose session the server ended while it sat idle in the
      pool (an operator's ``pg_terminate_backend``, a failover) may have read the
      server's FATAL message and not yet its end of file; asyncpg hands it out in that
      state (MagicStack/asyncpg#1069). It cannot be used again: the block closes it, so
      that it does not go back to the pool as it is; the next acquire opens a new one.
    - TimeoutError: the driver's own ``command_timeout`` (the server's
      ``statement_timeout`` and a grace) passed with no answer from the server: a
      network cut, a server that hangs. asyncpg has asked the server to cancel.
    """

    async def __aexit__(self, *exc: Any) -> None:
        error = exc[1]
        broken = isinstance(error, _exceptions.InternalClientError)
        if not (broken or isinstance(error, TimeoutError)) or self.connection is None:
            await super().__aexit__(*exc)
            return
        if broken:
            self.connection.terminate()
        await super().__aexit__(*exc)
        what = "can no longer be used" if broken else "had no answer from the server in time"
        raise DatabaseUnreachable(f"the connection {what}: {error!r}") from error


def share_of(size: int) -> int:
    """Connections one department may hold from a pool of ``size``: half, at least one."""
    return max(1, size // 2)


class FairPool(asyncpg.Pool):
    """``asyncpg.Pool`` with a per-department share (see the module docstring)."""

    def __init__(self, *args: Any, share: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._share = share
        self._gates: dict[str, asyncio.Semaphore] = {}
        self._held: dict[int, asyncio.Semaphore] = {}

    def acquire(self, *, timeout: float | None = None) -> Any:
        """asyncpg's ``acquire``, whose block closes a connection found broken (below)."""
        return _Acquired(self, timeout)

    # asyncpg's own method names and signatures: every acquire, pool.fetch() included,
    # goes through _acquire, and every release through release.
    async def _acquire(self, timeout: float | None) -> Any:  # noqa: ASYNC109
        code = department.get()
        if code is None:
            return await self._connected(timeout)
        gate = self._gates.get(code)
        if gate is None:
            gate = self._gates[code] = asyncio.Semaphore(self._share)
        # A department past its share waits here, holding nothing.
        async with asyncio.timeout(timeout):
            await gate.acquire()
        try:
            proxy = await self._connected(timeout)
        except BaseException:
            gate.release()
            raise
        self._held[id(proxy)] = gate
        return proxy

    async def _connected(self, timeout: float | None) -> Any:  # noqa: ASYNC109
        """asyncpg's acquire, which opens a new connection when the one it hands out is
        closed; failing that, DatabaseUnreachable (an OSError too, as before)."""
        try:
            return await super()._acquire(timeout)  # type: ignore[misc]
        except _UNREACHABLE as e:
            raise DatabaseUnreachable(f"cannot open a database connection: {e}") from e

    async def release(self, connection: Any, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        gate = self._held.pop(id(connection), None)
        try:
            await super().release(connection, timeout=timeout)
        finally:
            if gate is not None:
                gate.release()


async def create_fair_pool(
    dsn: str, *, share: int, min_size: int, max_size: int, **kwargs: Any
) -> FairPool:
    """``asyncpg.create_pool`` for a ``FairPool``."""
    pool = FairPool(
        dsn,
        share=share,
        min_size=min_size,
        max_size=max_size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connection_class=_connection.Connection,
        record_class=_protocol.Record,
        **kwargs,
    )
    await pool
    return pool
