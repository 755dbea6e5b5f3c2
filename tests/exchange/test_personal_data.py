"""Personal fields (个人信息) are purpose-bound even in unconditional datasets (issue 14,
finding 2): tax asked samr's register for a legal representative's citizen id with the
purpose "=1+2" and got it, and a subscription from the start replayed every one.

Each test calls the node over mutual TLS as a department system would, and reads the
access log as an auditor would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest

from tests.conftest import client_for
from tests.stories.restaurant import COMPANY, COMPANY_USCC, ENTERPRISE
from tongban.client import ExchangeClient, ExchangeError
from tongban.exchange.audit.log import SubjectHasher
from tongban.exchange.datadir import load_log_key
from tongban.exchange.node import Node
from tongban.v1 import catalogue_pb2

LAW = "law:《企业信息公示暂行条例》第六条"


@pytest.fixture
async def samr(node: Node) -> AsyncIterator[ExchangeClient]:
    async with client_for(node, "samr", "SC-1") as client:
        await client.register_dataset(ENTERPRISE, publish=True)
        await client.publish_records("samr.enterprise", [(COMPANY_USCC, COMPANY)])
        yield client


async def _refused(coro: object) -> ExchangeError:
    with pytest.raises(ExchangeError) as caught:
        await coro  # type: ignore[misc]
    return caught.value


async def _log(node: Node, caller: str) -> list[tuple[str, str, list[str], str | None]]:
    """(action, decision, fields, reason) of ``caller``'s entries about the company."""
    assert node.db is not None
    subject = SubjectHasher(load_log_key(node.settings))(COMPANY_USCC)
    rows = await node.db.pool.fetch(
        "SELECT action, decision, fields, reason FROM access_log"
        " WHERE caller = $1 AND subject_hmac = $2 ORDER BY idx",
        caller,
        subject,
    )
    return [(r["action"], r["decision"], list(r["fields"]), r["reason"]) for r in rows]


async def test_a_citizen_id_is_not_shared_for_any_purpose(node: Node, samr: ExchangeClient) -> None:
    async with client_for(node, "tax", "SW-1") as tax:
        denied = await _refused(
            tax.query(
                "samr.enterprise",
                [COMPANY_USCC],
                fields=["name", "legal_representative_id"],
                purpose="=1+2",
                case_id="C-1",
            )
        )
        assert denied.reason == "PERSONAL_GRANT_REQUIRED"
        assert denied.code is grpc.StatusCode.PERMISSION_DENIED
        assert "legal_representative_id" in denied.message
        assert "personal information" in denied.message
        # The fields that are not personal are still shared by default ...
        plain = await tax.query(
            "samr.enterprise", [COMPANY_USCC], fields=["name", "address"], purpose="税务登记",
            case_id="C-2",
        )  # fmt: skip
        assert plain.by_key()[COMPANY_USCC].fields == {
            "name": COMPANY["name"],
            "address": COMPANY["address"],
        }
        # ... and a personal field the dataset cites a law for is shared under that law.
        named = await tax.query(
            "samr.enterprise", [COMPANY_USCC], fields=["legal_representative"],
            purpose="税务登记", case_id="C-3",
        )  # fmt: skip
        assert named.by_key()[COMPANY_USCC].fields == {"legal_representative": "王晓明"}
    assert await _log(node, "tax") == [
        ("query", "denied", ["name", "legal_representative_id"], "PERSONAL_GRANT_REQUIRED"),
        ("query", "allowed", ["name", "address"], None),
        ("query", "allowed", ["legal_representative"], LAW),
    ]


async def test_a_subscription_from_the_start_needs_the_grant_too(
    node: Node, samr: ExchangeClient
) -> None:
    async with client_for(node, "tax", "SW-1") as tax:
        stream = tax.subscribe(
            "samr.enterprise", fields=["legal_representative_id"], purpose="=1+2",
            after_position=-1,
        )  # fmt: skip
        denied = await _refused(anext(aiter(stream)))
        assert denied.reason == "PERSONAL_GRANT_REQUIRED"
        # Without the personal field the replay is a bulk disclosure of shared data, one
        # entry per subject.
        replay = tax.subscribe(
            "samr.enterprise", fields=["name", "legal_representative"], purpose="登记信息同步",
            after_position=-1,
        )  # fmt: skip
        event = await asyncio.wait_for(anext(aiter(replay)), 15)
        assert event.fields == {"name": COMPANY["name"], "legal_representative": "王晓明"}
        await replay.aclose()  # type: ignore[attr-defined]
    assert node.db is not None
    refusal = await node.db.pool.fetchrow(
        "SELECT decision, fields, reason FROM access_log WHERE caller = 'tax'"
        " AND action = 'subscribe'"
    )
    assert refusal is not None
    assert tuple(refusal) == ("denied", ["legal_representative_id"], "PERSONAL_GRANT_REQUIRED")
    assert await _log(node, "tax") == [("event", "allowed", ["name", "legal_representative"], LAW)]


async def test_a_grant_opens_a_personal_field_for_its_purpose_only(
    node: Node, samr: ExchangeClient
) -> None:
    now = node.clock.now()
    async with client_for(node, "tax", "SW-1") as tax:
        # A grant on unconditional data names only personal fields no law covers.
        for needless in (["address"], ["legal_representative"]):
            refused = await _refused(
                tax.request_grant(
                    "samr.enterprise",
                    needless,
                    "税务稽查",
                    "《税收征收管理法》第五十四条",
                    now + timedelta(days=30),
                )
            )
            assert refused.reason == "INVALID_ARGUMENT"
            assert "needs no grant" in refused.message
        grant = await tax.request_grant(
            "samr.enterprise", ["legal_representative_id"], "税务稽查",
            "《税收征收管理法》第五十四条", now + timedelta(days=30),
        )  # fmt: skip
    await samr.decide_grant(grant.id, approve=True, reason="稽查需要")
    async with client_for(node, "tax", "SW-1") as tax:
        answer = await tax.query(
            "samr.enterprise", [COMPANY_USCC], fields=["legal_representative_id", "name"],
            purpose="税务稽查", case_id="JC-1",
        )  # fmt: skip
        assert (
            answer.by_key()[COMPANY_USCC].fields["legal_representative_id"]
            == (COMPANY["legal_representative_id"])
        )
        other = await _refused(
            tax.query(
                "samr.enterprise",
                [COMPANY_USCC],
                fields=["legal_representative_id"],
                purpose="=1+2",
                case_id="JC-1",
            )
        )
        assert other.reason == "PERSONAL_GRANT_REQUIRED"
    await samr.revoke_grant(grant.id, reason="稽查结束")
    async with client_for(node, "tax", "SW-1") as tax:
        revoked = await _refused(
            tax.query(
                "samr.enterprise",
                [COMPANY_USCC],
                fields=["legal_representative_id"],
                purpose="税务稽查",
                case_id="JC-1",
            )
        )
        assert revoked.reason == "PERSONAL_GRANT_REQUIRED"
        assert "revoked" in revoked.message
    assert (
        "query", "allowed", ["legal_representative_id", "name"], f"grant:{grant.id}"
    ) in await _log(node, "tax")  # fmt: skip


async def test_the_catalogue_shows_the_law_and_checks_it(node: Node, samr: ExchangeClient) -> None:
    async with client_for(node, "tax") as tax:
        shown = await tax.get_dataset("samr.enterprise")
    [basis] = shown.spec.personal_bases
    assert (basis.law, basis.article, list(basis.fields)) == (
        "企业信息公示暂行条例", "第六条", ["legal_representative"],
    )  # fmt: skip
    wrong = catalogue_pb2.DatasetSpec()
    wrong.CopyFrom(ENTERPRISE)
    wrong.code = "samr.branches"
    wrong.personal_bases[0].fields.append("address")  # not a personal field
    refused = await _refused(samr.register_dataset(wrong))
    assert refused.reason == "INVALID_ARGUMENT"
    assert "'address' is not a personal field" in refused.message
    wrong.personal_bases[0].fields[:] = ["legal_representative"]
    wrong.share_class = catalogue_pb2.SHARE_CLASS_CONDITIONAL
    wrong.conditions = "审批"
    refused = await _refused(samr.register_dataset(wrong))
    assert refused.reason == "INVALID_ARGUMENT"
    assert "Only an unconditional dataset" in refused.message
