"""Sharing the node's one event loop fairly during long work.

A call that does long CPU work in slices (a bulk load validating 5,000 records) calls
``yield_fairly(spent)`` between slices. The gRPC interceptor sets, for each call, how
that department's work is paced (``server.limits.CallLimiter.pacer``): while other
departments have calls in progress, the slice is followed by a pause of ``BACKOFF`` times
its length, so long work takes at most 1 / (1 + BACKOFF) of the loop and others' calls
run in between; when no one else is waiting it only hands the loop back once.

Every authenticated call is also metered (``metered``, ``CpuShare``): its loop time is
charged to its department, quick calls' once and long work's ``HEAVY_WEIGHT`` times, and
a department past its share waits between steps while others have calls in progress.
Work a call hands to a task of its own is started with ``spawn``, so it is metered too.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from contextvars import ContextVar
from typing import Any, Generic, TypeVar

from tongban.exchange.db.guard import holds_connection

__all__ = [
    "BACKOFF",
    "HEAVY_WEIGHT",
    "MAX_HOLD",
    "QUICK_CALL",
    "CpuShare",
    "metered",
    "set_pacer",
    "spawn",
    "yield_fairly",
]

T = TypeVar("T")

BACKOFF = 2.0
"""Pause after a slice, as a multiple of its length, while others wait: 2 gives long work
a third of the loop."""

MAX_HOLD = 0.1
"""Seconds a department is held back at most, counted from now. Steps that are not held
back (a step holding a pooled connection, steps already running) still add their
pauses, and 64 calls of one department could otherwise push its next step 300-400 ms
away, far past what the others need to run theirs: every call of that department then
stalled at once, a few times a minute, while the other department's quick calls (10% of
the load) had long finished. With this bound those stalls went, and ``bench fairness``
(a bulk load beside an interactive department) held the interactive p99 no worse: in
alternate runs, 1.45, 1.52, 1.35, 1.37x its p99 alone, against 1.74, 1.55, 1.50, 1.50x
without a bound and 1.67, 1.31, 1.53, 1.45x at 0.25 s."""

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
    at once it gets at most 1 / (1 + backoff) of the loop until the others catch up, and
    it waits at most ``max_hold`` at a time. When the loop has time to spare, or no other
    department has a call in progress, nobody waits; a call holding a pooled connection
    is never held back (its transaction's row locks would hold the others back with it).
    """

    def __init__(
        self,
        *,
        half_life: float = 0.5,
        busy: float = 0.3,
        margin: float = 1.2,
        backoff: float = BACKOFF,
        max_hold: float = MAX_HOLD,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._tau = half_life / math.log(2)  # seconds: recent use / tau ≈ use per second
        self._half_life = half_life
        self._busy = busy
        self._margin = margin
        self._backoff = backoff
        self._max_hold = max_hold
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
            self._next[department] = min(start + spent * self._backoff, now + self._max_hold)

    def wait(self, department: str) -> float:
        """How long ``department``'s next step should wait (0: go)."""
        until = self._next.get(department)
        if until is None:
            return 0.0
        others = len(self._active) - (1 if department in self._active else 0)
        if others == 0:  # no other department has a call in progress: nobody to wait for
            del self._next[department]
            return 0.0
        return max(0.0, until - self._clock())

    def use(self, department: str) -> float:
        """``department``'s recent use of the loop, in seconds per second."""
        now = self._clock()
        return self._decayed(self._recent.get(department, (0.0, now)), now) / self._tau


QUICK_CALL = 0.001
"""Seconds of loop time an interactive call takes at most, counted once: a key query's
handler takes about 0.2 ms of the loop on the 2-core reference machine, a licence issue
about 3 ms, a 5,000-record batch of a bulk load about 200 ms."""

HEAVY_WEIGHT = 4.0
"""How many times a call's loop time past its first ``QUICK_CALL`` counts, and all of a
bulk stream's (``StreamRecords``, any method whose requests stream in): while others'
calls wait, long work gets about a quarter of the share of quick calls, so an interactive
load keeps most of the loop while a department loads or issues in bulk beside it
(docs/architecture.md, "Fairness between departments")."""


class _Metered(Generic[T]):
    """Awaits ``coro`` step by step, charging each step to ``department`` and holding a
    step back while ``share`` says so. Results, exceptions and cancellation pass through
    unchanged. ``used`` is the loop time the call has taken so far, which sets how much
    its next step counts (``QUICK_CALL``, ``HEAVY_WEIGHT``)."""

    def __init__(
        self,
        coro: Coroutine[Any, Any, T],
        department: str,
        share: CpuShare,
        *,
        bulk: bool,
        used: float = 0.0,
    ) -> None:
        self.coro = coro
        self.department = department
        self.share = share
        self.bulk = bulk
        self.used = used

    def _charge(self, spent: float) -> None:
        quick = 0.0 if self.bulk else min(spent, max(0.0, QUICK_CALL - self.used))
        self.used += spent
        self.share.charge(self.department, quick + (spent - quick) * HEAVY_WEIGHT)

    def __await__(self) -> Generator[Any, Any, T]:
        coro, department, share = self.coro, self.department, self.share
        value: Any = None
        error: BaseException | None = None
        while True:
            # Never held back while holding a pooled connection: its transaction may hold
            # row locks (the log's sequence) that other departments' calls wait for.
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
                self._charge(time.perf_counter() - started)
                return done.value  # type: ignore[no-any-return]
            except BaseException:
                self._charge(time.perf_counter() - started)
                raise
            self._charge(time.perf_counter() - started)
            try:
                value = yield step
            except BaseException as e:  # noqa: BLE001 - handed to the call's coroutine
                value, error = None, e


_call: ContextVar[_Metered[Any] | None] = ContextVar("tongban_metered_call", default=None)
"""The metered call the current task works for (``spawn`` charges its tasks to it)."""


async def metered(work: Awaitable[T], department: str, share: CpuShare, *, bulk: bool = False) -> T:
    """Await ``work`` with its loop time charged to ``department`` (see ``CpuShare``): its
    first ``QUICK_CALL`` seconds once, the rest ``HEAVY_WEIGHT`` times, and all of it
    ``HEAVY_WEIGHT`` times for a ``bulk`` call. An awaitable that is not a coroutine is
    awaited as it is, unmetered."""
    if not isinstance(work, Coroutine):
        return await work
    return await _run(_Metered(work, department, share, bulk=bulk))


async def _run(call: _Metered[T]) -> T:
    call.share.enter(call.department)
    token = _call.set(call)
    try:
        return await call
    finally:
        _call.reset(token)
        call.share.leave(call.department)


def spawn(work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Run ``work`` in a task of its own, metered as part of the current call: charged to
    its department, counted as long work once the call's loop time is past
    ``QUICK_CALL`` (a bulk call's always), and held back as its steps are. Outside a
    metered call it is a plain task. Returns the task."""
    call = _call.get()
    if call is None:
        return asyncio.ensure_future(work)
    part = _Metered(work, call.department, call.share, bulk=call.bulk, used=call.used)
    return asyncio.ensure_future(_run(part))
