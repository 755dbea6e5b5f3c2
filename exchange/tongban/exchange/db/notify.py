"""Change notifications from PostgreSQL, for caches that must never go stale.

Tables whose rows nodes cache (departments, datasets, grants) have triggers that
``pg_notify`` a channel with the changed row's key. ``ChangeListener`` holds one pooled
connection LISTENing on every channel and calls the subscribers. When that connection is
lost, notifications may have been missed: every ``on_reset`` callback runs (caches clear
themselves), ``live`` turns False until the listener is back (caches are bypassed
meanwhile), and it reconnects every second.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Generic, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from tongban.exchange.db.guard import held_for_long
from tongban.exchange.db.trouble import DRIVER_ERRORS

__all__ = ["BARRIER_CHANNEL", "ChangeListener", "KeyedCache"]

#: Markers sent by ``ChangeListener.barrier`` to itself.
BARRIER_CHANNEL = "tongban_barrier"

_log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")


class ChangeListener:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._subscribers: dict[str, list[Callable[[str], None]]] = {}
        self._resets: list[Callable[[], None]] = []
        self._conn: PoolConnectionProxy[asyncpg.Record] | None = None
        self._stopped = False
        self._retry: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._barriers: dict[str, asyncio.Future[None]] = {}
        self.live = False
        self.subscribe(BARRIER_CHANNEL, self._barrier_reached)

    async def barrier(self, within: float = 5.0) -> None:
        """Return once every notification committed before this call has been handled.

        PostgreSQL delivers notifications in commit order, so when our own marker
        arrives, everything committed earlier (a department suspended by another
        connection, a grant revoked) has reached the subscribers. Returns at once while
        not listening (caches are bypassed then). Raises TimeoutError after ``within``.
        """
        if not self.live:
            return
        token = uuid.uuid4().hex
        reached = asyncio.get_running_loop().create_future()
        self._barriers[token] = reached
        try:
            await self._pool.execute("SELECT pg_notify($1, $2)", BARRIER_CHANNEL, token)
            async with asyncio.timeout(within):
                await reached
        finally:
            self._barriers.pop(token, None)

    def _barrier_reached(self, token: str) -> None:
        reached = self._barriers.get(token)
        if reached is not None and not reached.done():
            reached.set_result(None)

    def subscribe(self, channel: str, on_change: Callable[[str], None]) -> None:
        """Call ``on_change(payload)`` for each notification on ``channel``."""
        self._subscribers.setdefault(channel, []).append(on_change)

    def on_reset(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever notifications may have been missed."""
        self._resets.append(callback)

    async def start(self) -> None:
        await self._listen()

    async def stop(self) -> None:
        self._stopped = True
        self.live = False
        if self._retry is not None:
            self._retry.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.remove_termination_listener(self._on_lost)
            if not conn.is_closed():
                for channel in self._subscribers:
                    await conn.remove_listener(channel, self._dispatch)
            await self._pool.release(conn)

    async def _listen(self) -> None:
        if self._stopped:
            return
        try:
            conn = await self._pool.acquire()
            held_for_long(conn)
        except DRIVER_ERRORS as e:
            _log.warning("change notifications unavailable (%s); caches off, retrying", e)
            self._schedule_retry()
            return
        try:
            conn.add_termination_listener(self._on_lost)
            for channel in self._subscribers:
                await conn.add_listener(channel, self._dispatch)
        except DRIVER_ERRORS as e:
            _log.warning("cannot LISTEN (%s); caches off, retrying", e)
            await self._pool.release(conn)
            self._schedule_retry()
            return
        self._conn = conn
        self._reset()  # anything cached before we listened may be stale
        self.live = True

    def _dispatch(self, conn: object, pid: int, channel: str, payload: object) -> None:
        for callback in self._subscribers.get(channel, ()):
            callback(str(payload))

    def _reset(self) -> None:
        for callback in self._resets:
            callback()

    def _on_lost(self, conn: object) -> None:
        if self._stopped:
            return
        self.live = False
        self._reset()
        lost, self._conn = self._conn, None
        if lost is not None:
            self._spawn(self._pool.release(lost))
        _log.warning("change notifications lost; caches off until listening again")
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        if not self._stopped:
            self._retry = asyncio.get_running_loop().call_later(
                1.0, lambda: self._spawn(self._listen())
            )

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class KeyedCache(Generic[K, V]):
    """A dict used only while ``listener.live`` and cleared on every reset.

    ``invalidate(key)`` is wired to a channel's notifications by the cache's owner. To
    avoid storing a value read before a concurrent change was notified, take
    ``generation`` before reading the database and pass it to ``put``: the value is kept
    only if nothing was invalidated in between.
    """

    def __init__(self, listener: ChangeListener, *, max_entries: int = 100_000) -> None:
        self._listener = listener
        self._data: dict[K, V] = {}
        self._max = max_entries
        self.generation = 0
        listener.on_reset(self.clear)

    def get(self, key: K) -> V | None:
        return self._data.get(key) if self._listener.live else None

    def put(self, key: K, value: V, generation: int) -> None:
        if not self._listener.live or generation != self.generation:
            return
        if len(self._data) >= self._max:
            self._data.clear()  # crude bound; entries are cheap to read again
        self._data[key] = value

    def invalidate(self, key: K) -> None:
        self.generation += 1
        self._data.pop(key, None)

    def clear(self) -> None:
        self.generation += 1
        self._data.clear()
