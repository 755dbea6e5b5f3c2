"""The integrator folds exactly the sequenced prefix into the tree: up to a gap, never past
it, and in batches that give the same tree as one at a time."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tongban.exchange.audit.integrator import _PACE, Integrator, integrate
from tongban.exchange.audit.leaf import AccessEntry
from tongban.exchange.audit.log import AccessLog
from tongban.exchange.audit.merkle import (
    Frontier,
    NodeId,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    mth,
    verify_consistency,
    verify_inclusion,
)
from tongban.exchange.audit.store import STORED_LEVEL, AuditStore, fetch_nodes
from tongban.exchange.audit.verify import LogCorrupt, verify_log
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


def _reference_nodes(leaves: list[bytes]) -> dict[NodeId, bytes]:
    """Every perfect node of the tree of ``leaves``, leaf hashes included."""
    frontier, nodes = Frontier(), dict[NodeId, bytes]()
    for leaf in leaves:
        nodes.update(frontier.append(leaf_hash(leaf)))
    return nodes


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
        # Every node of the 37 leaves, leaves included, is computed from them: none is
        # as large as the 256 leaves log_node starts at.
        assert await fetch_nodes(db.pool, [list(_reference_nodes(leaves))]) == (
            _reference_nodes(leaves)
        )
        assert await db.pool.fetchval("SELECT count(*) FROM log_node") == 0
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


async def _logged(db: Database, n: int) -> list[bytes]:
    """Append and integrate ``n`` entries; return their leaves."""
    log = AccessLog(db.pool)
    await log.start()
    try:
        for start in range(0, n, 100):
            await log.append(_entries(min(100, n - start), start))
    finally:
        await log.stop()
    async with db.pool.acquire() as conn:
        while await integrate(conn, limit=97):  # passes that end mid-run, odd on purpose
            pass
    rows = await db.pool.fetch("SELECT leaf FROM access_log ORDER BY idx")
    return [bytes(r["leaf"]) for r in rows]


async def test_only_subtrees_of_256_leaves_and_up_are_stored_and_proofs_hold(
    settings: Settings,
) -> None:
    """log_node holds exactly the reference tree's nodes of STORED_LEVEL and up; every
    proof, whose smaller nodes are computed from the leaves, verifies against the
    reference roots, across the 256-leaf runs and in the last, partial one."""
    async with await Database.open(settings, pool_size=2) as db:
        leaves = await _logged(db, 700)
        reference = _reference_nodes(leaves)
        stored = {
            (r["level"], r["idx"]): bytes(r["hash"])
            for r in await db.pool.fetch("SELECT level, idx, hash FROM log_node")
        }
        assert stored == {n: h for n, h in reference.items() if n[0] >= STORED_LEVEL}
        assert sorted(stored) == [(8, 0), (8, 1), (9, 0)]
        store = AuditStore(db.pool)
        for size in (1, 2, 255, 256, 257, 511, 512, 513, 699, 700):
            root = mth(leaves[:size])
            for index in sorted({0, size // 3, 255 % size, 256 % size, size - 1}):
                proof = await store.inclusion(index, size)
                assert proof == inclusion_proof(index, size, reference)
                verify_inclusion(leaf_hash(leaves[index]), index, size, proof, root)
            for old in (1, 100, 256, 300, 512):
                if old <= size:
                    proof = await store.consistency(old, size)
                    assert proof == consistency_proof(old, size, reference)
                    verify_consistency(old, size, mth(leaves[:old]), root, proof)


async def test_verify_finds_a_stored_subtree_hash_altered_or_removed(
    settings: Settings,
) -> None:
    """The proofs are served from log_node's hashes, so audit verify checks each against
    the one its leaves give."""
    key = Ed25519PrivateKey.generate().public_key()
    async with await Database.open(settings, pool_size=2, owner=True) as db:
        await _logged(db, 600)
        assert (await verify_log(db.pool, origin="test/log", verifier=key)).size == 600
        await db.pool.execute("ALTER TABLE log_node DISABLE TRIGGER log_node_no_update")
        await db.pool.execute("UPDATE log_node SET hash = sha256(hash) WHERE level = 8 AND idx = 1")
        with pytest.raises(LogCorrupt) as altered:
            await verify_log(db.pool, origin="test/log", verifier=key)
        assert altered.value.message == (
            "The access log was altered: entry 256 starts a subtree of 256 entries whose "
            "stored hash differs from its leaves."
        )
        assert altered.value.metadata["first_bad_index"] == "256"
        await db.pool.execute("DELETE FROM log_node WHERE level = 8 AND idx = 1")
        with pytest.raises(LogCorrupt) as removed:
            await verify_log(db.pool, origin="test/log", verifier=key)
        assert "entry 256 starts a subtree of 256 entries whose hash is not stored" in (
            removed.value.message
        )
