"""The per-department share of the event loop (fairness.CpuShare) and the metered call
driver: decisions on a clock the test moves, how much quick calls, long work and bulk
calls count, work a call spawns charged to it, and results, errors and cancellation
passing through a metered call (or a part it spawned) unchanged."""

from __future__ import annotations

import asyncio
import inspect
import math
import time

import pytest

from tongban.exchange.fairness import HEAVY_WEIGHT, QUICK_CALL, CpuShare, metered, spawn

_TAU = 0.5 / math.log(2)  # CpuShare's use per second, for a half-life of 0.5 s


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _share(clock: Clock) -> CpuShare:
    return CpuShare(half_life=0.5, busy=0.3, margin=1.2, backoff=2.0, clock=clock)


def test_alone_a_department_never_waits() -> None:
    clock = Clock()
    share = _share(clock)
    share.enter("samr")
    for _ in range(100):
        share.charge("samr", 0.01)
        clock.now += 0.01
    assert share.wait("samr") == 0.0
    assert share.use("samr") > 0.5


def _held_back(clock: Clock, share: CpuShare) -> None:
    """samr (8 ms steps) and tax (1 ms ones) fill the loop until samr is held back."""
    share.enter("samr")
    share.enter("tax")
    for _ in range(50):
        share.charge("samr", 0.008)
        share.charge("tax", 0.001)
        clock.now += 0.009
    assert share.wait("samr") > 0.0


def test_the_heavy_department_is_held_back_while_another_waits() -> None:
    clock = Clock()
    share = _share(clock)
    _held_back(clock, share)
    assert share.wait("tax") == 0.0
    # Once samr has waited, its next step's pause is twice that step (backoff 2), and
    # the pauses of its steps add up, counted per department.
    clock.now += share.wait("samr")
    share.charge("samr", 0.008)
    assert share.wait("samr") == pytest.approx(0.016)
    share.charge("samr", 0.008)
    assert share.wait("samr") == pytest.approx(0.032)
    # When tax's calls end, samr is alone again and goes on at once.
    share.leave("tax")
    assert share.wait("samr") == 0.0


def test_a_department_left_alone_goes_on_at_once_with_its_calls_still_running() -> None:
    clock = Clock()
    share = _share(clock)
    _held_back(clock, share)
    # tax's last call ends while samr's calls go on: nobody is left to make room for.
    share.leave("tax")
    assert share.wait("samr") == 0.0
    share.charge("samr", 0.008)
    assert share.wait("samr") == 0.0
    # tax comes back: samr, still far above its share, is held back again from now on.
    share.enter("tax")
    share.charge("samr", 0.008)
    assert share.wait("samr") == pytest.approx(0.016)


def test_a_department_is_held_back_at_most_max_hold_however_many_steps_it_ran() -> None:
    clock = Clock()
    share = CpuShare(half_life=0.5, busy=0.3, margin=1.2, backoff=2.0, max_hold=0.1, clock=clock)
    _held_back(clock, share)
    # 64 of samr's calls each finish a step at once (steps not held: they were running, or
    # held a pooled connection); their pauses add up to 1 s, but samr waits 0.1 s at most.
    for _ in range(64):
        share.charge("samr", 0.008)
    assert share.wait("samr") == pytest.approx(0.1)
    clock.now += 0.04
    assert share.wait("samr") == pytest.approx(0.06)
    assert share.wait("tax") == 0.0


def test_a_loop_with_time_to_spare_holds_nobody_back() -> None:
    clock = Clock()
    share = _share(clock)
    share.enter("samr")
    share.enter("tax")
    for _ in range(20):  # 2 ms of work every 100 ms: 2% of the loop
        share.charge("samr", 0.002)
        clock.now += 0.1
    assert share.wait("samr") == 0.0


def test_use_decays_with_its_half_life() -> None:
    clock = Clock()
    share = _share(clock)
    share.charge("samr", 0.1)
    before = share.use("samr")
    clock.now += 0.5
    assert share.use("samr") == pytest.approx(before / 2)


async def test_a_metered_call_returns_raises_and_is_cancelled_as_itself() -> None:
    share = CpuShare()

    async def answer() -> int:
        await asyncio.sleep(0)
        await asyncio.sleep(0.001)
        return 42

    async def fail() -> None:
        await asyncio.sleep(0)
        raise ValueError("bad input")

    cleaned: list[str] = []

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append("finally ran")

    assert await metered(answer(), "tax", share) == 42
    with pytest.raises(ValueError, match="bad input"):
        await metered(fail(), "tax", share)
    task = asyncio.ensure_future(metered(forever(), "tax", share))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["finally ran"]
    assert share.use("tax") > 0.0
    assert share.wait("tax") == 0.0  # its calls ended: nothing held


async def test_a_call_cancelled_while_held_back_ends_cancelled_and_closed() -> None:
    clock = Clock()
    share = _share(clock)
    share.enter("tax")
    share.enter("samr")
    for _ in range(50):
        share.charge("samr", 0.008)
        clock.now += 0.008
    clock.now -= 10.0  # the hold now lasts ~10 s on this clock: the call waits in it
    assert share.wait("samr") > 9.0

    async def work() -> None:
        await asyncio.sleep(0)

    coro = work()
    task = asyncio.ensure_future(metered(coro, "samr", share))
    await asyncio.sleep(0.01)
    assert not task.done()  # held back
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED  # not left unawaited


def _steps_take(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Each step of a metered call "takes" ``seconds`` on a counter the test owns (the
    driver reads perf_counter once before and once after a step)."""
    ticks = iter(range(1_000_000))
    monkeypatch.setattr(time, "perf_counter", lambda: next(ticks) * seconds)


async def _steps(count: int) -> None:
    for _ in range(count - 1):
        await asyncio.sleep(0)


async def test_a_quick_call_counts_once_and_long_work_counts_heavier(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Steps of half of QUICK_CALL: the first two fit in it and count once, each step past
    # it counts HEAVY_WEIGHT times.
    _steps_take(monkeypatch, QUICK_CALL / 2)
    clock = Clock()
    quick, long = CpuShare(half_life=0.5, clock=clock), CpuShare(half_life=0.5, clock=clock)
    await metered(_steps(2), "tax", quick)
    await metered(_steps(6), "samr", long)
    step = QUICK_CALL / 2
    assert HEAVY_WEIGHT > 1
    assert quick.use("tax") == pytest.approx(2 * step / _TAU)
    assert long.use("samr") == pytest.approx((2 + 4 * HEAVY_WEIGHT) * step / _TAU)


async def test_a_bulk_call_counts_all_its_loop_time_heavier(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _steps_take(monkeypatch, QUICK_CALL / 2)
    clock = Clock()
    plain, bulk = CpuShare(clock=clock), CpuShare(clock=clock)
    await metered(_steps(2), "samr", plain)
    await metered(_steps(2), "samr", bulk, bulk=True)
    assert bulk.use("samr") == pytest.approx(plain.use("samr") * HEAVY_WEIGHT)


async def test_work_a_call_spawns_is_charged_to_its_department_as_the_call() -> None:
    clock = Clock()
    share = CpuShare(clock=clock)
    seen: list[bool] = []

    async def part() -> str:
        await asyncio.sleep(0)
        seen.append(share.use("samr") > 0)
        return "written"

    async def call() -> str:
        task = spawn(part())
        await asyncio.sleep(0)
        assert share.use("samr") > 0  # the call's own steps so far
        return await task

    assert await metered(call(), "samr", share, bulk=True) == "written"
    assert seen == [True]
    assert share.use("tax") == 0.0


async def test_a_spawned_part_of_a_bulk_call_counts_as_bulk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _steps_take(monkeypatch, QUICK_CALL / 2)
    clock = Clock()
    share = CpuShare(half_life=0.5, clock=clock)
    parts: list[asyncio.Task[None]] = []

    async def call() -> None:
        parts.append(spawn(_steps(2)))
        await parts[0]

    await metered(call(), "samr", share, bulk=True)
    # The call's two steps (start, and resuming after the part) and the part's two, all
    # counted HEAVY_WEIGHT times.
    assert share.use("samr") == pytest.approx(4 * HEAVY_WEIGHT * QUICK_CALL / 2 / _TAU)


async def test_spawn_outside_a_metered_call_is_a_plain_task() -> None:
    clock = Clock()
    share = CpuShare(clock=clock)

    async def part() -> int:
        await asyncio.sleep(0)
        return 7

    assert await spawn(part()) == 7
    assert share.use("samr") == 0.0


async def test_a_spawned_part_fails_and_is_cancelled_as_itself() -> None:
    share = CpuShare()
    cleaned: list[str] = []

    async def fail() -> None:
        await asyncio.sleep(0)
        raise ValueError("bad batch")

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append("finally ran")

    async def call() -> None:
        with pytest.raises(ValueError, match="bad batch"):
            await spawn(fail())
        task = spawn(forever())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    await metered(call(), "samr", share)
    assert cleaned == ["finally ran"]
    assert share.wait("samr") == 0.0  # every part ended: nothing held
