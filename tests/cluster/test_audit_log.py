"""The access log stays one log with three nodes appending at once: contiguous indices,
no gap, no duplicate, every answered query in it, one checkpoint covering everything,
checkpoints signed one at a time, and the whole log verifies.

Why no sequencer election: each node's group commit locks the tree head row
(``log_state ... FOR UPDATE``), assigns the next indices and moves the head in one
transaction, so PostgreSQL serialises the nodes' batches; a node that dies mid-batch
releases the row with its connection. Checkpoint signers serialise on a transaction
advisory lock and never sign a size twice (``log_checkpoint.size`` is the key).
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.cli_helpers import atongban, cli_env
from tests.cluster.cluster import Cluster, ClusterNode, connected, shared_url, wait_for
from tests.stories.restaurant import COMPANY, COMPANY_USCC, ENTERPRISE, OWNER, OWNER_ID, PERSON
from tongban.client import ExchangeError

pytestmark = pytest.mark.slow

WORKERS_PER_NODE = 6
QUERIES_PER_WORKER = 40


async def _hammer(cluster: Cluster, node: ClusterNode, worker: int) -> list[str]:
    """Queries through ``node``, allowed and denied alternately; return the case ids the
    node answered (a denial is an answer: it is logged before it leaves)."""
    tax = cluster.client(node, "tax", f"TX-{worker}")
    answered = []
    for i in range(QUERIES_PER_WORKER):
        case = f"{node.name}/{worker}/{i}"
        if i % 2:
            with pytest.raises(ExchangeError) as denied:
                await tax.query(
                    "police.person", [OWNER_ID], fields=["name"], purpose="税务稽查", case_id=case
                )
            assert denied.value.reason == "GRANT_REQUIRED"
        else:
            answer = await tax.query(
                "samr.enterprise", [COMPANY_USCC], fields=["name"], purpose="税务登记", case_id=case
            )
            assert answer.records
        answered.append(case)
    return answered


async def test_three_nodes_append_to_one_log(cluster: Cluster) -> None:
    nodes = await cluster.start(["node-a", "node-b", "node-c"])
    samr = cluster.client(nodes[0], "samr")
    await samr.register_dataset(ENTERPRISE, publish=True)
    await samr.publish_records("samr.enterprise", [(COMPANY_USCC, COMPANY)])
    police = cluster.client(nodes[1], "police")
    await police.register_dataset(PERSON, publish=True)
    await police.publish_records("police.person", [(OWNER_ID, OWNER)])

    results = await asyncio.gather(
        *(_hammer(cluster, node, w) for node in nodes for w in range(WORKERS_PER_NODE))
    )
    answered = [case for cases in results for case in cases]
    assert len(answered) == len(nodes) * WORKERS_PER_NODE * QUERIES_PER_WORKER

    async with connected(cluster.settings) as db:
        rows = await db.fetch("SELECT idx, node, case_id FROM access_log ORDER BY idx")
        # Contiguous from 0, no gap, no duplicate; the head, which the exchange's one
        # integrator moves after the entries are acknowledged, comes to agree.
        assert [r["idx"] for r in rows] == list(range(len(rows)))

        async def integrated() -> bool:
            return int(await db.fetchval("SELECT size FROM log_state")) >= len(rows)

        await wait_for(integrated)
        size = await db.fetchval("SELECT size FROM log_state")
        assert size == len(rows)
        # Every answered query is in the log, once (one subject per query).
        logged = [r["case_id"] for r in rows]
        assert sorted(logged) == sorted(answered)
        # Each entry names the node that decided it, and the nodes' batches interleave.
        by_node = [r["node"] for r in rows]
        assert set(by_node) == {"node-a", "node-b", "node-c"}
        runs = [name for name, _ in itertools.groupby(by_node)]
        assert len(runs) > len(nodes), "the nodes' appends did not interleave"

        # One checkpoint covers them all (signed by whichever node got there first).
        async def covered() -> bool:
            return bool(await db.fetchval("SELECT max(size) FROM log_checkpoint") == size)

        await wait_for(covered)
        checkpoints = await db.fetch(
            "SELECT size, signer, signed_at FROM log_checkpoint ORDER BY signed_at, size"
        )
        # One signer at a time: in signing order, every checkpoint is larger than the one
        # before it (two nodes signing at once could sign the same size or go backwards).
        sizes = [c["size"] for c in checkpoints]
        assert sizes == sorted(set(sizes))
        assert {c["signer"] for c in checkpoints} <= {"node-a", "node-b", "node-c"}

    # Every node serves the same latest checkpoint: one log, one head.
    notes = {(await cluster.client(node, "audit").audit_checkpoint()).note for node in nodes}
    assert len(notes) == 1
    # The operator's full verification: tree recomputed, every checkpoint's signature and
    # root, consistency between consecutive checkpoints.
    assert cluster.settings.key_passphrase is not None
    env = cli_env(
        TONGBAN_DATABASE_URL=shared_url(cluster.settings),
        TONGBAN_KEY_PASSPHRASE=cluster.settings.key_passphrase.get_secret_value(),
        TONGBAN_NODE_NAME="auditor",
    )
    verified = await atongban(
        "audit", "verify", "--json", "--data-dir", str(cluster.settings.data_dir), env=env
    )
    assert verified.code == 0, verified.stdout + verified.stderr
    report = verified.json()
    assert report["size"] == size
    assert report["checkpoints"] == len(checkpoints)
