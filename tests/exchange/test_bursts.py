"""Bursts of changes from one department with the default pool of 10 connections.

Every change (issue, status change, grant decision) holds a pooled connection for its
transaction; none may wait for a second one (the access log's writer used to need one, so
40 concurrent issues stalled the whole node for a minute). Another department's calls in
the same window must all succeed; how long they waited is printed, and measured against
a target in ``bench burst``, not asserted here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from tests.conftest import client_for
from tests.stories.restaurant import BUSINESS_LICENCE_CLAIMS, PERSON, PURPOSE
from tongban.exchange.audit.leaf import AccessEntry
from tongban.exchange.audit.log import AccessLog, AuditUnavailable
from tongban.exchange.db.migrate import apply_migrations
from tongban.exchange.node import Node

BURST = 64


async def _while_tax_lists(node: Node, burst: Callable[[], Awaitable[None]]) -> float:
    """Run ``burst`` while tax lists the catalogue in a loop; return tax's longest call."""
    longest = 0.0
    done = asyncio.Event()

    async def tax_loop() -> int:
        nonlocal longest
        calls = 0
        async with client_for(node, "tax") as tax:
            while not done.is_set() or calls == 0:
                start = time.perf_counter()
                await tax.list_datasets()
                longest = max(longest, time.perf_counter() - start)
                calls += 1
        return calls

    tax = asyncio.create_task(tax_loop())
    try:
        await burst()
    finally:
        done.set()
    assert await tax > 0
    return longest


async def test_64_concurrent_issues_status_changes_and_grant_decisions(node: Node) -> None:
    assert node.settings.db_pool_size == 10
    numbers: list[str] = []

    async def issue() -> None:
        async with client_for(node, "samr", "SC-0001") as samr:
            issued = await asyncio.gather(
                *(
                    samr.issue_licence(
                        "business-licence", BUSINESS_LICENCE_CLAIMS, reason="设立登记"
                    )
                    for _ in range(BURST)
                )
            )
        numbers.extend(licence.number for licence in issued)

    async def suspend() -> None:
        async with client_for(node, "samr", "SC-0001") as samr:
            changed = await asyncio.gather(
                *(samr.change_licence_status(n, "suspend", "经营异常") for n in numbers)
            )
        assert {licence.status for licence in changed} == {"suspended"}

    waits = {"issue": await _while_tax_lists(node, issue)}
    assert len(set(numbers)) == BURST
    waits["status"] = await _while_tax_lists(node, suspend)

    async with client_for(node, "police") as police:
        await police.register_dataset(PERSON, publish=True)
    async with client_for(node, "approval", "SP-1") as approval:
        grants = await asyncio.gather(
            *(
                approval.request_grant(
                    "police.person",
                    ["name"],
                    PURPOSE,
                    "依法核验",
                    node.clock.now() + timedelta(days=30),
                )
                for _ in range(BURST)
            )
        )

    async def decide() -> None:
        async with client_for(node, "police", "GA-1") as police:
            decided = await asyncio.gather(
                *(police.decide_grant(g.id, approve=True, reason="同意") for g in grants)
            )
        assert len({g.id for g in decided}) == BURST

    waits["grants"] = await _while_tax_lists(node, decide)
    print("tax's longest ListDatasets during each burst (s):", waits)

    # One entry per change, each committed with its change.
    assert node.db is not None
    rows = await node.db.pool.fetch(
        "SELECT action, count(*) AS n FROM access_log WHERE caller = 'samr' GROUP BY action"
    )
    counts = {row["action"]: row["n"] for row in rows}
    assert counts == {"licence-issue": BURST, "licence-suspend": BURST}


@pytest.fixture
async def log_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    conn = await asyncpg.connect(database_url)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=3)
    assert pool is not None
    yield pool
    await pool.close()


def _entry() -> AccessEntry:
    return AccessEntry(
        at=datetime(2026, 1, 1, tzinfo=UTC),
        node="n",
        caller="samr",
        officer=None,
        action="licence-issue",
        dataset="samr.licences",
        fields=(),
        purpose=None,
        case_id=None,
        subject_hmac=None,
        decision="allowed",
        reason=None,
    )


async def _log_size(pool: asyncpg.Pool) -> int:
    size: int = await pool.fetchval("SELECT count(*) FROM access_log")
    return size


async def _work(log: AccessLog, conn: Any, n: int, *, fail: bool = False) -> None:
    async with log.transaction(conn) as recorded:
        await conn.execute("INSERT INTO work VALUES ($1)", n)
        recorded.record([_entry()])
        if fail:
            raise ZeroDivisionError


async def test_a_change_and_its_entries_commit_together(log_pool: asyncpg.Pool) -> None:
    log = AccessLog(log_pool, timeout=0.5)
    await log.start()
    try:
        await log_pool.execute("CREATE TABLE work (n int)")
        async with log_pool.acquire() as conn:
            # The body fails after recording: neither the work nor the entry is kept.
            with pytest.raises(ZeroDivisionError):
                await _work(log, conn, 1, fail=True)
            assert await _log_size(log_pool) == 0

            # The sequence is locked elsewhere past the log's timeout: the work rolls back.
            async with log_pool.acquire() as holder, holder.transaction():
                await holder.execute("SELECT 1 FROM log_sequence FOR UPDATE")
                with pytest.raises(AuditUnavailable):
                    await _work(log, conn, 2)
            assert await log_pool.fetchval("SELECT count(*) FROM work") == 0
            assert await _log_size(log_pool) == 0

            # Both commit, interleaved with the group-commit writer's appends.
            async with log.transaction(conn) as recorded:
                await conn.execute("INSERT INTO work VALUES (3)")
                recorded.record([_entry(), _entry()])
                assert (await log.append([_entry()])) == range(0, 1)
            assert recorded.indices == range(1, 3)
        assert await log_pool.fetchval("SELECT count(*) FROM work") == 1
        assert await _log_size(log_pool) == 3
    finally:
        await log.stop()


async def test_an_append_that_cannot_commit_in_time_is_refused_and_lands_later(
    log_pool: asyncpg.Pool,
) -> None:
    log = AccessLog(log_pool, timeout=0.3)
    await log.start()
    try:
        async with log_pool.acquire() as holder, holder.transaction():
            await holder.execute("SELECT 1 FROM log_sequence FOR UPDATE")
            # Every waiting append is told within its timeout (to within a tick), together.
            refused = await asyncio.gather(
                *(log.append([_entry()]) for _ in range(20)), return_exceptions=True
            )
            assert all(isinstance(r, AuditUnavailable) for r in refused)
            assert "within 0.3 s, so the request was not served" in str(refused[0])
        # The writer was not undone: the refused entries commit once the lock is free,
        # and the log goes on.
        assert (await log.append([_entry()])) == range(20, 21)
        assert await _log_size(log_pool) == 21
    finally:
        await log.stop()
