"""The per-department share of the event loop (fairness.CpuShare) and the metered call
driver: decisions on a clock the test moves, and results, errors and cancellation passing
through a metered call unchanged."""

from __future__ import annotations

import asyncio
import inspect
import time

import pytest

from tongban.exchange.fairness import BULK_WEIGHT, CpuShare, metered


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


def test_the_heavy_department_is_held_back_while_another_waits() -> None:
    clock = Clock()
    share = _share(clock)
    share.enter("samr")
    share.enter("tax")
    for _ in range(50):  # samr takes 8 ms steps, tax 1 ms ones, the loop is full
        share.charge("samr", 0.008)
        share.charge("tax", 0.001)
        clock.now += 0.009
    # samr's next step waits twice its last step (backoff 2), counted per department.
    assert share.wait("samr") > 0.0
    assert share.wait("tax") == 0.0
    held = share.wait("samr")
    share.charge("samr", 0.008)
    assert share.wait("samr") == pytest.approx(held + 0.016)
    # When tax's calls end, samr is alone again and goes on at once.
    share.leave("tax")
    share.charge("samr", 0.008)
    share.leave("samr")
    share.enter("samr")
    assert share.wait("samr") == 0.0


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


async def test_a_bulk_stream_counts_its_loop_time_by_its_weight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each step of the call "takes" 10 ms on a counter the test owns; metered at weight
    # BULK_WEIGHT (a bulk stream), the department is charged that many times more.
    ticks = iter(range(1_000_000))
    monkeypatch.setattr(time, "perf_counter", lambda: next(ticks) * 0.005)  # fairness reads it

    async def work() -> None:
        for _ in range(3):
            await asyncio.sleep(0)

    clock = Clock()
    plain, bulk = CpuShare(clock=clock), CpuShare(clock=clock)
    await metered(work(), "samr", plain)
    await metered(work(), "samr", bulk, weight=BULK_WEIGHT)
    assert BULK_WEIGHT > 1
    assert bulk.use("samr") == pytest.approx(plain.use("samr") * BULK_WEIGHT)
