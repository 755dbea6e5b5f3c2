"""Step 8 of DESIGN.md: the auditor verifies the log was not altered and lists every
access to the owner's data; the owner sees the same list in the subject view (minus
covert entries still under embargo)."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest

from tests.conftest import client_for
from tests.stories.restaurant import OWNER_ID
from tests.stories.test_sharing import _publish_story_data
from tongban.client import ExchangeError
from tongban.exchange.audit.merkle import leaf_hash, verify_consistency, verify_inclusion
from tongban.exchange.audit.note import open_checkpoint, parse_verifier_key
from tongban.exchange.node import Node
from tongban.signing.clock import FixedClock
from tongban.v1 import audit_pb2


async def _accesses_to_owner(node: Node) -> None:
    await _publish_story_data(node)
    async with client_for(node, "tax", "SW-0042") as tax:
        with pytest.raises(ExchangeError):
            await tax.query(
                "police.person", [OWNER_ID], fields=["name"], purpose="税务稽查", case_id="SW-9"
            )
    async with client_for(node, "police", "GA-9") as police:
        await police.query(
            "police.person", [OWNER_ID], fields=["name"], purpose="户籍核查", case_id="GA-1"
        )
        await police.query(
            "police.person", [OWNER_ID], fields=["name"], purpose="侦查", case_id="GA-SECRET"
        )


async def test_step_8_auditor_verifies_and_lists_every_access(node: Node) -> None:
    await _accesses_to_owner(node)
    async with client_for(node, "audit", "JW-0001") as audit:
        listed = await audit.audit_search(audit_pb2.SearchRequest(subject_id=OWNER_ID))
        seen = [(e.caller, e.decision, e.case_id) for e in listed.entries if e.action == "query"]
        assert seen == [
            ("tax", "denied", "SW-9"),
            ("police", "allowed", "GA-1"),
            ("police", "allowed", "GA-SECRET"),
        ]

        # Every entry is in the tree under a signed checkpoint: check it as an outsider
        # would, with nothing but the log's verifier key.
        first = listed.entries[0]
        proved = await audit.audit_entry(first.index)
        name, key = parse_verifier_key(proved.checkpoint.verifier_key)
        checkpoint = open_checkpoint(proved.checkpoint.note, [(name, key)], origin=name)
        verify_inclusion(
            leaf_hash(proved.entry.leaf),
            first.index,
            checkpoint.size,
            list(proved.inclusion_proof),
            checkpoint.root,
        )
        async with client_for(node, "police", "GA-9") as police:
            await police.query(
                "police.person", [OWNER_ID], fields=["name"], purpose="户籍核查", case_id="GA-2"
            )
        later = await audit.audit_checkpoint()
        newer = open_checkpoint(later.note, [(name, key)], origin=name)
        assert newer.size > checkpoint.size
        proof = await audit.audit_consistency(checkpoint.size, newer.size)
        verify_consistency(
            checkpoint.size, newer.size, checkpoint.root, newer.root, list(proof.proof)
        )

        # Police declares its investigation covert for 30 days: hidden from the subject view.
        async with client_for(node, "police", "GA-9") as police:
            await police.declare_covert_case(
                "GA-SECRET", node.clock.now() + timedelta(days=30), "《刑事诉讼法》第一百五十二条"
            )
        view = await audit.subject_accesses(OWNER_ID)
        shown = [(a.department, a.department_name, a.case_id) for a in view.accesses if a.dataset]
        assert shown == [
            ("tax", "县税务局", "SW-9"),
            ("police", "县公安局", "GA-1"),
            ("police", "县公安局", "GA-2"),
        ]
        assert view.withheld == 1
        assert isinstance(node.clock, FixedClock)
        node.clock.advance(timedelta(days=31))
        after = await audit.subject_accesses(OWNER_ID)
        assert "GA-SECRET" in [a.case_id for a in after.accesses if a.dataset]
        assert after.withheld == 0
        # The auditor's own looks at the owner's history are in the log too.
        looks = await audit.audit_search(
            audit_pb2.SearchRequest(subject_id=OWNER_ID, caller="audit")
        )
        assert {e.action for e in looks.entries} >= {"audit.search", "audit.subject"}


async def test_only_auditors_read_the_log(node: Node) -> None:
    async with client_for(node, "tax") as tax:
        with pytest.raises(ExchangeError) as refused:
            await tax.audit_search(audit_pb2.SearchRequest())
    assert refused.value.reason == "AUDITOR_ROLE_REQUIRED"
    assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
