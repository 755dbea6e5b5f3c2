"""Steps 1, 3 and 7 of DESIGN.md over real gRPC with real certificates:

1. samr publishes the new company to samr.enterprise (unconditional);
3. approval reads the company and, under a grant for this purpose, the owner's identity
   from police.person (conditional) — only the fields asked for;
7. tax asks police.person without a grant: denied GRANT_REQUIRED, and the denial is in the
   access log.
"""

from __future__ import annotations

from datetime import timedelta
from functools import partial

import grpc
import pytest

from tests.conftest import client_for
from tests.stories.restaurant import (
    CASE_ID,
    COMPANY,
    COMPANY_USCC,
    ENTERPRISE,
    OWNER,
    OWNER_ID,
    PERSON,
    PURPOSE,
)
from tongban.cli.story_data import grant_representative_ids
from tongban.client import ExchangeError, verify_answer
from tongban.exchange.audit.log import SubjectHasher
from tongban.exchange.datadir import ca_certificate_pem, load_log_key
from tongban.exchange.node import Node
from tongban.signing.errors import SignatureInvalid


async def _publish_story_data(node: Node) -> None:
    async with client_for(node, "samr", "S-0001") as samr:
        await samr.register_dataset(ENTERPRISE, publish=True)
        counts = await samr.publish_records("samr.enterprise", [(COMPANY_USCC, COMPANY)])
        assert counts.inserted == 1
    await grant_representative_ids(partial(client_for, node), node.clock.now())
    async with client_for(node, "police", "P-0001") as police:
        await police.register_dataset(PERSON, publish=True)
        await police.publish_records("police.person", [(OWNER_ID, OWNER)])


async def test_step_1_samr_publishes_the_company(node: Node) -> None:
    await _publish_story_data(node)
    async with client_for(node, "tax") as tax:
        found = await tax.list_datasets(keyword="市场主体")
        assert [d.spec.code for d in found] == ["samr.enterprise"]
        answer = await tax.query(
            "samr.enterprise",
            [COMPANY_USCC],
            fields=["name", "address"],
            purpose="税务登记",
            case_id="SW-2026-1",
        )
    assert answer.by_key()[COMPANY_USCC].fields == {
        "name": COMPANY["name"],
        "address": COMPANY["address"],
    }
    # Re-delivering the same record changes nothing (enter once, idempotent).
    async with client_for(node, "samr") as samr:
        again = await samr.publish_records("samr.enterprise", [(COMPANY_USCC, COMPANY)])
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 1)


async def test_step_3_approval_resolves_materials_without_paper(node: Node) -> None:
    await _publish_story_data(node)
    now = node.clock.now()
    async with client_for(node, "approval", "SP-0007") as approval:
        company = await approval.query(
            "samr.enterprise",
            [COMPANY_USCC],
            fields=["name", "legal_representative", "legal_representative_id", "address"],
            purpose=PURPOSE,
            case_id=CASE_ID,
            sign=True,
        )
        record = company.by_key()[COMPANY_USCC]
        assert set(record.fields) == {
            "name",
            "legal_representative",
            "legal_representative_id",
            "address",
        }
        assert record.fields["legal_representative_id"] == OWNER_ID

        # The owner's identity is conditional: without a grant, no.
        with pytest.raises(ExchangeError) as denied:
            await approval.query(
                "police.person", [OWNER_ID], fields=["name"], purpose=PURPOSE, case_id=CASE_ID
            )
        assert denied.value.reason == "GRANT_REQUIRED"
        assert denied.value.code is grpc.StatusCode.PERMISSION_DENIED

        grant = await approval.request_grant(
            "police.person",
            ["name", "gender", "household_address"],
            PURPOSE,
            "《食品经营许可和备案管理办法》第十二条",
            now + timedelta(days=365),
        )
    async with client_for(node, "police", "P-0002") as police:
        pending = await police.list_grants(dataset="police.person")
        assert [g.id for g in pending] == [grant.id]
        # The owner allows fewer fields than asked.
        approved = await police.decide_grant(
            grant.id, approve=True, fields=["name", "gender"], reason="核验身份所需"
        )
        assert list(approved.fields) == ["name", "gender"]
    async with client_for(node, "approval", "SP-0007") as approval:
        person = await approval.query(
            "police.person", [OWNER_ID], fields=["name", "gender"], purpose=PURPOSE, case_id=CASE_ID
        )
        assert person.by_key()[OWNER_ID].fields == {"name": "王晓明", "gender": "男"}
        with pytest.raises(ExchangeError) as wider:
            await approval.query(
                "police.person",
                [OWNER_ID],
                fields=["name", "household_address"],
                purpose=PURPOSE,
                case_id=CASE_ID,
            )
        assert wider.value.reason == "FIELD_NOT_GRANTED"
        with pytest.raises(ExchangeError) as other_purpose:
            await approval.query(
                "police.person", [OWNER_ID], fields=["name"], purpose="营销推广", case_id=CASE_ID
            )
        assert other_purpose.value.reason == "GRANT_REQUIRED"

    # The signed answer proves later what was received, to anyone with the CA certificate.
    ca = ca_certificate_pem(node.settings)
    proof = verify_answer(company.signed_payload, company.signature, ca_pem=ca, now=now)
    assert proof["caller"] == "approval"
    assert proof["case_id"] == CASE_ID
    assert proof["records"][0]["fields"]["name"] == COMPANY["name"]
    forged = company.signed_payload.replace("味道".encode(), "美味".encode())
    with pytest.raises(SignatureInvalid):
        verify_answer(forged, company.signature, ca_pem=ca, now=now)

    # Revocation takes effect at once.
    async with client_for(node, "police") as police:
        await police.revoke_grant(grant.id, "审批已办结")
    async with client_for(node, "approval") as approval:
        with pytest.raises(ExchangeError) as revoked:
            await approval.query(
                "police.person", [OWNER_ID], fields=["name"], purpose=PURPOSE, case_id=CASE_ID
            )
    assert revoked.value.reason == "GRANT_REQUIRED"
    assert "revoked" in revoked.value.message


async def test_step_7_tax_is_denied_and_the_denial_is_logged(node: Node) -> None:
    await _publish_story_data(node)
    async with client_for(node, "tax", "SW-0042") as tax:
        with pytest.raises(ExchangeError) as denied:
            await tax.query(
                "police.person",
                [OWNER_ID],
                fields=["name", "household_address"],
                purpose="税务稽查",
                case_id="SW-2026-77",
            )
    assert denied.value.reason == "GRANT_REQUIRED"
    assert denied.value.code is grpc.StatusCode.PERMISSION_DENIED
    hasher = SubjectHasher(load_log_key(node.settings))
    assert node.db is not None
    rows = await node.db.pool.fetch(
        "SELECT caller, officer, dataset, fields, purpose, case_id, decision, reason"
        " FROM access_log WHERE subject_hmac = $1",
        hasher(OWNER_ID),
    )
    assert [dict(r) for r in rows] == [
        {
            "caller": "tax",
            "officer": "SW-0042",
            "dataset": "police.person",
            "fields": ["name", "household_address"],
            "purpose": "税务稽查",
            "case_id": "SW-2026-77",
            "decision": "denied",
            "reason": "GRANT_REQUIRED",
        }
    ]
    # The id itself is nowhere in the log.
    dump = await node.db.pool.fetchval("SELECT string_agg(access_log::text, '') FROM access_log")
    assert OWNER_ID not in dump
