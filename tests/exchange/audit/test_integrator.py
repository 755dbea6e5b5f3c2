"""The integrator folds exactly the sequenced prefix into the tree: up to a gap, never past
it, and in batches that give the same tree as one at a time."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest

from tongban.exchange.audit.integrator import _PACE, Integrator, integrate
from tongban.exchange.audit.leaf import AccessEntry
from tongban.exchange.audit.log import AccessLog
from tongban.exchange.audit.merkle import leaf_hash, mth
from tongban.exchange.db.database import Database
from tongban.exchange.settings import Settings

_AT = datetime(2026, 11, 23, 9, tzinfo=UTC)


def _entries(n: int, start: int = 0) -> list[AccessEntry]:
    return [
        AccessEntry(
            at=_AT + timedelta(microseconds=i),
            node="node-1",
            caller="tax",
            officer=None,
            action="query",
            dataset="police.person",
            fields=("name",),
            purpose="核查",
            case_id=f"GA-{i}",
            subject_hmac=bytes(32),
            decision="allowed",
            reason=None,
        )
        for i in range(start, start + n)
    ]


async def test_batches_give_the_tree_of_the_leaves_and_stop_before_a_gap(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async with await Database.open(settings, pool_size=2, owner=True) as db:
        log = AccessLog(db.pool)
        await log.start()
        try:
            await log.append(_entries(37))
        finally:
            await log.stop()
        # A row at an index the sequence has not given (only SQL outside the node can
        # write one): the tree must stop before the gap it leaves at 37.
        await db.pool.execute(
            "INSERT INTO access_log SELECT 38, leaf, at, node, caller, officer, action,"
            " dataset, fields, purpose, case_id, subject_hmac, decision, reason"
            " FROM access_log WHERE idx = 0"
        )
        async with db.pool.acquire() as conn:
            assert await integrate(conn, limit=5) == 5
            assert await integrate(conn, limit=13) == 13
            with caplog.at_level(logging.ERROR):
                assert await integrate(conn) == 19
                assert await integrate(conn) == 0
        assert "no entry 37 but has 38" in caplog.text
        leaves = [
            bytes(r["leaf"])
            for r in await db.pool.fetch("SELECT leaf FROM access_log WHERE idx < 37 ORDER BY idx")
        ]
        head = await db.pool.fetchrow("SELECT size, root FROM log_state")
        assert head is not None
        assert (head["size"], bytes(head["root"])) == (37, mth(leaves))
        stored = {
            r["idx"]: bytes(r["hash"])
            for r in await db.pool.fetch("SELECT idx, hash FROM log_node WHERE level = 0")
        }
        assert stored == {i: leaf_hash(leaf) for i, leaf in enumerate(leaves)}
        searchable = await db.pool.fetchval("SELECT count(*) FROM access_log_search")
        assert searchable == 37


async def test_the_leader_paces_its_passes_under_a_trickle_and_still_keeps_up(
    settings: Settings,
) -> None:
    """One append every 5 ms for 0.6 s: the leader integrates at most once per ``_PACE``
    (about 12 passes; one per group commit, about 120, before pacing), and the tree
    covers every entry soon after the last, without catch_up()."""
    passes: list[int] = []
    async with await Database.open(settings, pool_size=4) as db:
        log = AccessLog(db.pool)
        await log.start()
        integrator = Integrator(db.pool, grown=log.grown, on_integrated=passes.append)
        await integrator.start()
        try:
            loop = asyncio.get_running_loop()
            end = loop.time() + 0.6
            appended = 0
            while loop.time() < end:
                await log.append(_entries(1, appended))
                appended += 1
                await asyncio.sleep(0.005)
            async with asyncio.timeout(5):
                while sum(passes) < appended:
                    await asyncio.sleep(0.01)
        finally:
            await integrator.stop()
            await log.stop()
        assert appended >= 50
        assert len(passes) <= 0.6 / _PACE + 4, passes
        assert await db.pool.fetchval("SELECT size FROM log_state") == appended
