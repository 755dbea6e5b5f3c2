"""One department cannot take every pooled connection (db/fair_pool.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tongban.exchange.db.fair_pool import FairPool, create_fair_pool, department, share_of


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[FairPool]:
    created = await create_fair_pool(database_url, share=2, min_size=1, max_size=4)
    yield created
    await created.close()


async def _hold(pool: FairPool, code: str | None, held: asyncio.Event, go: asyncio.Event) -> None:
    department.set(code)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT 1") == 1
        held.set()
        await go.wait()


async def test_a_department_past_its_share_waits_and_others_do_not(pool: FairPool) -> None:
    go = asyncio.Event()
    holding = [asyncio.Event() for _ in range(3)]
    tasks = [asyncio.create_task(_hold(pool, "samr", h, go)) for h in holding]
    await asyncio.wait_for(asyncio.gather(holding[0].wait(), holding[1].wait()), 5)
    await asyncio.sleep(0.2)
    assert not holding[2].is_set(), "samr's third call waits for one of samr's own"
    # tax, and the node's own work, get connections while samr waits.
    tax_held = asyncio.Event()
    tax = asyncio.create_task(_hold(pool, "tax", tax_held, go))
    await asyncio.wait_for(tax_held.wait(), 5)
    assert await asyncio.wait_for(pool.fetchval("SELECT 2"), 5) == 2
    go.set()
    await asyncio.wait_for(asyncio.gather(*tasks, tax), 5)
    assert holding[2].is_set()
    # Every share came back: samr can hold two at once again.
    again = [asyncio.Event(), asyncio.Event()]
    done = asyncio.Event()
    second = [asyncio.create_task(_hold(pool, "samr", e, done)) for e in again]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in again)), 5)
    done.set()
    await asyncio.gather(*second)


async def _acquire_within(pool: FairPool, seconds: float) -> None:
    async with asyncio.timeout(seconds), pool.acquire():
        pass


async def test_a_failed_acquire_gives_its_share_back(pool: FairPool) -> None:
    department.set("samr")
    for _ in range(3):  # more than the share: each failure must have returned its place
        with pytest.raises(TimeoutError):
            await _acquire_within(pool, 0)
    async with pool.acquire() as first, pool.acquire() as second:
        assert first is not second


def test_the_share_is_half_the_pool() -> None:
    assert [share_of(n) for n in (1, 2, 10, 11)] == [1, 1, 5, 5]
