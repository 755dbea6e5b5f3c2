"""The sequencer's group commit: an entry the database refuses fails its own request only,
and the others in its batch are still written, in order and without a gap."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tongban.exchange.audit.leaf import AccessEntry
from tongban.exchange.audit.log import BATCH_REQUESTS, OVERLAP_AT_LEAST, AccessLog, AuditUnavailable
from tongban.exchange.db.database import Database
from tongban.exchange.settings import Settings

_ENTRY = AccessEntry(
    at=datetime(2026, 11, 23, 9, tzinfo=UTC),
    node="node-1",
    caller="tax",
    officer="SW-0042",
    action="query",
    dataset="police.person",
    fields=("name",),
    purpose="核查",
    case_id=None,
    subject_hmac=bytes(32),
    decision="allowed",
    reason=None,
)


@pytest.mark.parametrize(
    "bad",
    [
        dataclasses.replace(_ENTRY, purpose="a\x00b"),  # PostgreSQL refuses NUL in text
        dataclasses.replace(_ENTRY, decision="maybe"),  # type: ignore[arg-type] # a check
    ],
)
async def test_a_refused_entry_fails_only_its_own_request(
    settings: Settings, bad: AccessEntry
) -> None:
    async with await Database.open(settings, pool_size=2) as db:
        log = AccessLog(db.log_pool)
        await log.start()
        try:
            good = [
                dataclasses.replace(_ENTRY, case_id=f"GA-{i}", at=_ENTRY.at + timedelta(seconds=i))
                for i in range(6)
            ]
            # Queued together, so they are sent as one batch (the writer runs after them).
            results = await asyncio.gather(
                *(log.append([e]) for e in good[:3]),
                log.append([bad]),
                *(log.append([e]) for e in good[3:]),
                return_exceptions=True,
            )
            assert isinstance(results[3], AuditUnavailable)
            written = [r for i, r in enumerate(results) if i != 3]
            assert all(isinstance(r, range) for r in written), written
            assert sorted(r.start for r in written if isinstance(r, range)) == list(range(6))
            assert await log.append([_ENTRY]) == range(6, 7)  # and the log goes on
        finally:
            await log.stop()
        rows = await db.pool.fetch("SELECT idx, case_id FROM access_log ORDER BY idx")
        assert [r["idx"] for r in rows] == list(range(7))
        assert {r["case_id"] for r in rows} == {f"GA-{i}" for i in range(6)} | {None}
        assert await db.pool.fetchval("SELECT next FROM log_sequence") == 7


async def test_more_requests_than_a_batch_holds_go_in_several_batches_without_a_gap(
    settings: Settings,
) -> None:
    """Queued together, 2.5 batches' worth of requests are written as three batches (two
    in flight at once), each request's entry at the index it was answered with, 0..n-1
    without a gap."""
    async with await Database.open(settings, pool_size=2) as db:
        log = AccessLog(db.log_pool)
        await log.start()
        try:
            n = BATCH_REQUESTS * 5 // 2
            entries = [
                dataclasses.replace(_ENTRY, case_id=f"GA-{i}", at=_ENTRY.at + timedelta(seconds=i))
                for i in range(n)
            ]
            results = await asyncio.gather(*(log.append([e]) for e in entries))
            # Two batches in flight take the lock in whichever order they reach it.
            assert sorted(r.start for r in results) == list(range(n))
            assert log.batches == 3
        finally:
            await log.stop()
        rows = await db.pool.fetch("SELECT idx, case_id FROM access_log ORDER BY idx")
        assert [r["idx"] for r in rows] == list(range(n))
        assert [rows[r.start]["case_id"] for r in results] == [f"GA-{i}" for i in range(n)]
        assert await db.pool.fetchval("SELECT next FROM log_sequence") == n


async def _waiting_on_the_sequence(conn: Any, count: int) -> None:
    """Return once ``count`` sessions wait for a lock (the sequence row, which the test
    holds in a transaction on ``conn``: the activity snapshot is cleared for each look)."""
    async with asyncio.timeout(10):
        while (
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity, pg_stat_clear_snapshot()"
                " WHERE wait_event_type = 'Lock'"
            )
            != count
        ):
            await asyncio.sleep(0.01)


@pytest.mark.parametrize(("queued", "overlapping"), [(3, False), (OVERLAP_AT_LEAST, True)])
async def test_a_second_batch_overlaps_the_first_only_when_enough_is_queued(
    settings: Settings, queued: int, overlapping: bool
) -> None:
    """While a batch is in flight (held here on the sequence row's lock), requests queued
    behind it go out as a second batch at once only when there are OVERLAP_AT_LEAST of
    them; fewer wait for the first to land and then go together, alone. Either way every
    request is answered with its index, in order, no gap."""
    async with await Database.open(settings, pool_size=2) as db:
        log = AccessLog(db.log_pool)
        await log.start()
        try:
            async with db.pool.acquire() as holder, holder.transaction():
                await holder.execute("SELECT next FROM log_sequence FOR UPDATE")
                first = asyncio.ensure_future(log.append([_ENTRY]))
                await _waiting_on_the_sequence(holder, 1)
                rest = [asyncio.ensure_future(log.append([_ENTRY])) for _ in range(queued)]
                if overlapping:
                    await _waiting_on_the_sequence(holder, 2)
                else:
                    await asyncio.sleep(0.2)  # time enough for a second batch to be sent
                    await _waiting_on_the_sequence(holder, 1)
            assert await first == range(1)
            assert [await r for r in rest] == [range(i, i + 1) for i in range(1, queued + 1)]
            assert log.batches == 2
        finally:
            await log.stop()
        assert await db.pool.fetchval("SELECT next FROM log_sequence") == queued + 1
