"""The sequencer's group commit: an entry the database refuses fails its own request only,
and the others in its batch are still written, in order and without a gap."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from tongban.exchange.audit.leaf import AccessEntry
from tongban.exchange.audit.log import BATCH_REQUESTS, AccessLog, AuditUnavailable
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
