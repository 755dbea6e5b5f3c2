"""The log as stored: contiguous, matching the RFC 6962 definition, tamper-evident."""

from __future__ import annotations

import asyncpg
import pytest

from tests.cli_helpers import atongban, cli_env
from tests.conftest import client_for
from tests.stories.restaurant import OWNER_ID
from tests.stories.test_sharing import _publish_story_data
from tongban.client import ExchangeError
from tongban.exchange.audit.merkle import mth
from tongban.exchange.audit.verify import LogCorrupt, verify_log
from tongban.exchange.datadir import log_origin
from tongban.exchange.node import Node
from tongban.v1 import audit_pb2


async def _fill(node: Node, queries: int = 12) -> None:
    await _publish_story_data(node)
    async with client_for(node, "police", "GA-1") as police:
        for i in range(queries):
            await police.query(
                "police.person", [OWNER_ID], fields=["name"], purpose="核查", case_id=f"GA-{i}"
            )


async def _verify(node: Node) -> None:
    assert node.db is not None
    assert node.checkpointer is not None
    await node.checkpointer.sign_now()
    verifier = node.checkpointer.public_key
    await verify_log(node.db.pool, origin=log_origin(node.settings), verifier=verifier)


async def test_the_stored_tree_is_the_rfc_6962_tree_of_the_leaves(node: Node) -> None:
    await _fill(node)
    assert node.db is not None
    assert node.integrator is not None
    await node.integrator.catch_up()  # the tree follows the sequenced entries
    leaves = [
        bytes(r["leaf"])
        for r in await node.db.pool.fetch("SELECT leaf FROM access_log ORDER BY idx")
    ]
    head = await node.db.pool.fetchrow("SELECT size, root FROM log_state")
    assert head is not None
    assert head["size"] == len(leaves) == 12
    assert bytes(head["root"]) == mth(leaves)
    indices = [
        r["idx"] for r in await node.db.pool.fetch("SELECT idx FROM access_log ORDER BY idx")
    ]
    assert indices == list(range(len(leaves)))
    await _verify(node)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ("UPDATE access_log SET purpose = '伪造' WHERE idx = 5", "entry 5 has columns"),
        (
            "UPDATE access_log SET leaf = leaf || ' '::bytea WHERE idx = 7",
            "entry 7 is not a valid leaf",
        ),
        ("DELETE FROM access_log WHERE idx = 3", "entry 3 is missing"),
        # One microsecond, an empty subject (written as null in a leaf, like none) and a
        # leaf that still parses but is not canonical: each is found and named.
        ("UPDATE access_log SET at = at + interval '1 microsecond' WHERE idx = 2", "entry 2 has"),
        ("UPDATE access_log SET subject_hmac = ''::bytea WHERE idx = 6", "entry 6 has columns"),
        (
            "UPDATE access_log SET leaf = '\\x7b20'::bytea || substring(leaf from 2) WHERE idx = 8",
            "entry 8 is not a valid leaf (The leaf is not in canonical form.)",
        ),
    ],
)
async def test_verify_names_the_first_altered_entry(
    node: Node, database_url: str, tamper: str, message: str
) -> None:
    await _fill(node)
    await _verify(node)
    owner = await asyncpg.connect(database_url)
    try:
        # What a superuser could do behind the node's back.
        await owner.execute("ALTER TABLE access_log DISABLE TRIGGER access_log_no_update")
        await owner.execute(tamper)
        await owner.execute("ALTER TABLE access_log ENABLE TRIGGER access_log_no_update")
    finally:
        await owner.close()
    with pytest.raises(LogCorrupt) as corrupt:
        await _verify(node)
    assert message in corrupt.value.message
    # The command line says the same and exits 1.
    assert node.settings.database_url is not None
    result = await atongban(
        "audit",
        "verify",
        "--data-dir",
        str(node.settings.data_dir),
        "--json",
        env=cli_env(
            TONGBAN_DATABASE_URL=node.settings.database_url.get_secret_value(),
            TONGBAN_KEY_PASSPHRASE="test passphrase",
        ),
    )
    assert result.code == 1
    assert result.json()["reason"] == "LOG_CORRUPT"
    assert message in result.json()["message"]


async def test_a_rewritten_leaf_with_fixed_hashes_still_fails_the_signed_checkpoint(
    node: Node, database_url: str
) -> None:
    await _fill(node)
    await _verify(node)
    assert node.db is not None
    row = await node.db.pool.fetchrow("SELECT leaf FROM access_log WHERE idx = 4")
    assert row is not None
    forged = bytes(row["leaf"]).replace("核查".encode(), "审批".encode())
    from tongban.exchange.audit.leaf import decode_leaf
    from tongban.exchange.audit.merkle import leaf_hash

    entry = decode_leaf(forged)
    owner = await asyncpg.connect(database_url)
    try:
        for table in ("access_log", "log_node"):
            await owner.execute(f"ALTER TABLE {table} DISABLE TRIGGER {table}_no_update")
        await owner.execute(
            "UPDATE access_log SET leaf = $1, purpose = $2 WHERE idx = 4", forged, entry.purpose
        )
        await owner.execute(
            "UPDATE log_node SET hash = $1 WHERE level = 0 AND idx = 4", leaf_hash(forged)
        )
        for table in ("access_log", "log_node"):
            await owner.execute(f"ALTER TABLE {table} ENABLE TRIGGER {table}_no_update")
    finally:
        await owner.close()
    with pytest.raises(LogCorrupt) as corrupt:
        await _verify(node)
    assert "no longer match the checkpoint" in corrupt.value.message


async def test_bad_requests_to_the_audit_service(node: Node) -> None:
    await _fill(node, queries=2)
    async with client_for(node, "audit") as audit:
        for request, reason in (
            (audit_pb2.SearchRequest(page_size=100_000), "INVALID_ARGUMENT"),
            (audit_pb2.SearchRequest(page_token="!!not-a-token"), "PAGE_TOKEN_INVALID"),
            (audit_pb2.SearchRequest(decision="maybe"), "INVALID_ARGUMENT"),
        ):
            with pytest.raises(ExchangeError) as bad:
                await audit.audit_search(request)
            assert bad.value.reason == reason
        with pytest.raises(ExchangeError) as beyond:
            await audit.audit_entry(10_000)
        assert beyond.value.reason == "PROOF_OUT_OF_RANGE"
        with pytest.raises(ExchangeError) as too_big:
            await audit.audit_consistency(1, 10_000)
        assert too_big.value.reason == "PROOF_OUT_OF_RANGE"
        with pytest.raises(ExchangeError) as backwards:
            await audit.audit_consistency(5, 2)
        assert backwards.value.reason == "PROOF_OUT_OF_RANGE"
        with pytest.raises(ExchangeError) as no_checkpoint:
            await audit.audit_entry(0, tree_size=3)
        assert no_checkpoint.value.reason == "CHECKPOINT_NOT_FOUND"
        # Paging walks everything exactly once.
        seen: list[int] = []
        token = ""
        while True:
            page = await audit.audit_search(audit_pb2.SearchRequest(page_size=3, page_token=token))
            seen += [e.index for e in page.entries]
            token = page.next_page_token
            if not token:
                break
        assert seen == list(range(len(seen)))
        assert len(seen) >= 2


async def test_the_append_statement_matches_the_table(node: Node) -> None:
    """The log appends rows of access_log's row type in ``_ROW`` order: a migration that
    reorders or adds columns must change both."""
    from tongban.exchange.audit.log import _ROW

    assert node.db is not None
    columns = await node.db.pool.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'access_log'"
        " ORDER BY ordinal_position"
    )
    assert tuple(r["column_name"] for r in columns) == _ROW
