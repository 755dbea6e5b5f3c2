"""Sharing the node's one event loop fairly during long work.

A call that does long CPU work in slices (a bulk load validating 5,000 records) calls
``yield_fairly(spent)`` between slices. The gRPC interceptor sets, for each call, how
that department's work is paced (``server.limits.CallLimiter.pacer``): while other
departments have calls in progress, the slice is followed by a pause of ``BACKOFF`` times
its length, so long work takes at most 1 / (1 + BACKOFF) of the loop and others' calls
run in between; when no one else is waiting it only hands the loop back once.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from contextvars import ContextVar
from typing import Any, TypeVar

from tongban.exchange.db.guard import holds_connection

__all__ = ["BACKOFF", "CpuShare", "metered", "set_pacer", "yield_fairly"]

T = TypeVar("T")

BACKOFF = 2.0
"""Pause after a slice, as a multiple of its length, while others wait: 2 gives long work
a third of the loop."""

Pacer = Callable[[float], Awaitable[None]]

_pacer: ContextVar[Pacer | None] = ContextVar("tongban_pacer", default=None)


def set_pacer(pacer: Pacer | None) -> None:
    """Set how the current call's long work is paced (the interceptor does, per call)."""
    _pacer.set(pacer)


async def yield_fairly(spent: float) -> None:
    """After a slice of long work that took ``spent`` seconds: let others run."""
    pacer = _pacer.get()
    if pacer is None:
        await asyncio.sleep(0)
    else:
        await pacer(spent)


class CpuShare:
    """Each department's share of the node's event loop, metered per call.

    The interceptor runs every authenticated call's handler through ``metered``, which
    times each step of the call's coroutine (the loop runs one step at a time, so a step's
    length is loop time that call took) and charges it to the call's department. Recent
    use decays with a half-life of ``half_life`` seconds. While the loop is busy (the
    handlers' recent use above ``busy`` of one core: gRPC's own work, TLS and protobuf
    come on top, so 0.3 is a loop near its limit) and other departments have calls in
    progress, a
    department using more than its even share (``margin`` above 1/n of the recent use) is
    held back: after each of its steps, its next step may start only after a pause of
    ``backoff`` times that step, counted per department, so however many calls it runs
    at once it gets at most 1 / (1 + backoff) of the loop until the others catch up. When
    the loop has time to spare, nobody waits, and a call holding a pooled connection is
    never held back (its transaction's row locks would hold the others back with it).
    """

    def __init__(
        self,
        *,
        half_life: float = 0.5,
        busy: float = 0.3,
        margin: float = 1.2,
        backoff: float = BACKOFF,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._tau = half_life / math.log(2)  # seconds: recent use / tau ≈ use per second
        self._half_life = half_life
        self._busy = busy
        self._margin = margin
        self._backoff = backoff
        self._clock = clock
        self._recent: dict[str, tuple[float, float]] = {}  # department -> (use, at)
        self._total = (0.0, clock())
        self._active: dict[str, int] = {}
        self._next: dict[str, float] = {}

    def _decayed(self, value: tuple[float, float], now: float) -> float:
        use, at = value
        return use * math.exp(-max(0.0, now - at) / self._tau)

    def enter(self, department: str) -> None:
        self._active[department] = self._active.get(department, 0) + 1

    def leave(self, department: str) -> None:
        left = self._active.get(department, 0) - 1
        if left > 0:
            self._active[department] = left
        else:
            self._active.pop(department, None)
            self._next.pop(department, None)

    def charge(self, department: str, spent: float) -> None:
        """``department`` just used ``spent`` seconds of the loop."""
        now = self._clock()
        mine = self._decayed(self._recent.get(department, (0.0, now)), now) + spent
        total = self._decayed(self._total, now) + spent
        self._recent[department] = (mine, now)
        self._total = (total, now)
        others = sum(1 for code in self._active if code != department)
        if not others or total / self._tau < self._busy:
            return
        if mine > total / (others + 1) * self._margin:
            start = max(now, self._next.get(department, now))
            self._next[department] = start + spent * self._backoff

    def wait(self, department: str) -> float:
        """How long ``department``'s next step should wait (0: go)."""
        return max(0.0, self._next.get(department, 0.0) - self._clock())

    def use(self, department: str) -> float:
        """``department``'s recent use of the loop, in seconds per second."""
        now = self._clock()
        return self._decayed(self._recent.get(department, (0.0, now)), now) / self._tau


class _Metered:
    """Awaits ``coro`` step by step, charging each step to ``department`` and holding a
    step back while ``share`` says so. Results, exceptions and cancellation pass through
    unchanged."""

    def __init__(
        self, coro: Coroutine[Any, Any, T], department: str, share: CpuShare, weight: float
    ) -> None:
        self._coro = coro
        self._department = department
        self._share = share
        self._weight = weight

    def __await__(self) -> Generator[Any, Any, T]:
        coro, department, share, weight = self._coro, self._department, self._share, self._weight
        value: Any = None
        error: BaseException | None = None
        while True:
            # Never held back while holding a pooled connection: its transaction may hold
            # row locks (the log's head) that other departments' calls wait for.
            pause = share.wait(department) if error is None and not holds_connection() else 0.0
            if pause > 0:
                try:
                    yield from asyncio.sleep(pause).__await__()
                except BaseException as e:  # noqa: BLE001 - cancelled while held: to the call
                    error = e
            started = time.perf_counter()
            try:
                if error is not None:
                    thrown, error = error, None
                    step = coro.throw(thrown)
                else:
                    step = coro.send(value)
            except StopIteration as done:
                share.charge(department, (time.perf_counter() - started) * weight)
                return done.value  # type: ignore[no-any-return]
            except BaseException:
                share.charge(department, (time.perf_counter() - started) * weight)
                raise
            share.charge(department, (time.perf_counter() - started) * weight)
            try:
                value = yield step
            except BaseException as e:  # noqa: BLE001 - handed to the call's coroutine
                value, error = None, e


BULK_WEIGHT = 2.0
"""How much a bulk stream's loop time counts (``StreamRecords``, and any method whose
requests stream in): while others' calls are waiting, a department loading in bulk gets
half the share of one making calls, so an interactive load keeps about two thirds of the
loop rather than half (docs/architecture.md, "Fairness between departments")."""


async def metered(
    work: Awaitable[T], department: str, share: CpuShare, *, weight: float = 1.0
) -> T:
    """Await ``work`` with its loop time, times ``weight``, charged to ``department`` (see
    ``CpuShare``); an awaitable that is not a coroutine is awaited as it is, unmetered."""
    if not isinstance(work, Coroutine):
        return await work
    share.enter(department)
    try:
        return await _Metered(work, department, share, weight)
    finally:
        share.leave(department)
