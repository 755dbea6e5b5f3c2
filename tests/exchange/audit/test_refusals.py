"""Merged refusal entries (issue 14, finding 13b): every refusal is counted in some
entry, whether the window ends by its timer or the node stops first, and the counts read
back from the entries' purposes."""

from __future__ import annotations

import asyncio

import pytest

from tongban.exchange.audit.refusals import (
    AUTH_REFUSED,
    CALL_REFUSED,
    RefusalTally,
    auth_refusal_purpose,
    call_refusal_purpose,
    refusals_in,
)


class Written:
    """What the tally wrote: (key, count) in order."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, int]] = []
        self.changed = asyncio.Event()

    async def __call__(self, key: str, count: int) -> None:
        self.entries.append((key, count))
        self.changed.set()

    def total(self, key: str) -> int:
        return sum(n for k, n in self.entries if k == key)

    async def until_total(self, key: str, total: int) -> None:
        """Wait (at most 30 s) until ``key``'s counts add up to ``total``."""
        async with asyncio.timeout(30):
            while self.total(key) < total:
                self.changed.clear()
                await self.changed.wait()


async def test_the_tail_of_a_burst_is_written_by_the_timer() -> None:
    written = Written()
    tally = RefusalTally(written, window=0.05)
    try:
        for _ in range(6):
            await tally.refused("ghost")
        assert written.entries[0] == ("ghost", 1)  # the first one at once
        await written.until_total("ghost", 6)  # the other five without a seventh refusal
        assert len(written.entries) == 2
    finally:
        await tally.close()
    assert written.total("ghost") == 6


async def test_closing_writes_what_is_pending() -> None:
    written = Written()
    tally = RefusalTally(written, window=3600)  # the timer never ends a window here
    for _ in range(6):
        await tally.refused("ghost")
    await tally.refused("other")
    assert written.entries == [("ghost", 1), ("other", 1)]
    await tally.close()
    assert written.entries == [("ghost", 1), ("other", 1), ("ghost", 5)]
    await tally.refused("ghost")  # after close: written one by one
    assert written.entries[-1] == ("ghost", 1)
    await tally.close()  # idempotent


async def test_a_full_tally_writes_each_new_key_alone() -> None:
    written = Written()
    tally = RefusalTally(written, window=3600, max_keys=1)
    await tally.refused("a")
    await tally.refused("b")
    await tally.refused("b")
    await tally.refused("a")
    await tally.close()
    assert sorted(written.entries) == [("a", 1), ("a", 1), ("b", 1), ("b", 1)]


async def test_a_failed_write_keeps_the_count_for_the_next_try() -> None:
    written = Written()
    failures = [RuntimeError("log down")]

    async def flaky(key: str, count: int) -> None:
        if count > 1 and failures:
            raise failures.pop()
        await written(key, count)

    tally = RefusalTally(flaky, window=0.05)
    try:
        for _ in range(4):
            await tally.refused("ghost")
        await written.until_total("ghost", 4)
    finally:
        await tally.close()
    assert failures == []
    assert written.entries == [("ghost", 1), ("ghost", 3)]


def test_counts_are_read_back_from_the_purposes() -> None:
    fingerprint = "ab" * 32
    assert refusals_in(AUTH_REFUSED, auth_refusal_purpose(1, fingerprint)) == 1
    assert refusals_in(AUTH_REFUSED, auth_refusal_purpose(17, fingerprint)) == 17
    assert refusals_in(CALL_REFUSED, call_refusal_purpose(3, "/tongban.v1.X/Y")) == 3
    # Any other entry is one access, whatever its purpose says.
    assert refusals_in("query", auth_refusal_purpose(17, fingerprint)) == 1
    assert refusals_in(AUTH_REFUSED, None) == 1
    assert refusals_in(AUTH_REFUSED, "0 refusals of certificate sha256:x") == 1
    assert refusals_in(AUTH_REFUSED, "many refusals of certificate sha256:x") == 1


def test_a_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window"):
        RefusalTally(Written(), window=0)
