"""The licence service over real gRPC with real certificates and PostgreSQL: issuance,
get, list, fetch for an approval, status changes, amendment, verification, events and
the access log."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from functools import partial

import grpc
import pytest

from tests.conftest import client_for
from tests.stories.restaurant import (
    BUSINESS_LICENCE_CLAIMS,
    CASE_ID,
    COMPANY_USCC,
    FOOD_PERMIT_CLAIMS,
    PURPOSE,
)
from tongban.cli.story_data import grant_licence_representative
from tongban.client import ExchangeError
from tongban.errors import TongbanError
from tongban.exchange.audit.log import SubjectHasher
from tongban.exchange.datadir import load_log_key
from tongban.exchange.licensing.authorisations import authorise
from tongban.exchange.node import Node
from tongban.licence import (
    MIN_SIZE,
    check_licence_number,
    parse_licence_number,
)


async def _issue_business_licence(node: Node) -> str:
    async with client_for(node, "samr", "SC-0001") as samr:
        licence = await samr.issue_licence(
            "business-licence", BUSINESS_LICENCE_CLAIMS, case_id="DJ-2026-1", reason="设立登记"
        )
    return licence.number


async def test_issue_get_and_list(node: Node) -> None:
    async with client_for(node, "samr", "SC-0001") as samr:
        licence = await samr.issue_licence(
            "business-licence", BUSINESS_LICENCE_CLAIMS, case_id="DJ-2026-1", reason="设立登记"
        )
        assert check_licence_number(licence.number) == licence.number
        parts = parse_licence_number(licence.number)
        assert (parts.type_prefix, parts.department) == ("YYZZ", "samr")
        assert licence.status == "valid"
        assert licence.holder_id == COMPANY_USCC
        assert licence.holder_name == BUSINESS_LICENCE_CLAIMS["name"]
        assert licence.qr.startswith("TB1:")
        assert licence.sd_jwt.count("~") == 2  # one disclosure: the legal representative
        assert licence.expires is None  # 长期
        assert json.loads(licence.claims_json)["registered_capital"] == "50.00"
        assert licence.status_uri.endswith("/status-lists/1")
        assert 0 <= licence.status_index < MIN_SIZE

        got = await samr.get_licence(licence.number.lower())  # normalised
        assert got.number == licence.number
        assert [h.action for h in got.history] == ["issue"]
        assert got.history[0].reason == "设立登记"
        assert got.history[0].officer == "SC-0001"

    async with client_for(node, "tax", "SW-1") as tax:
        listed = await tax.list_licences(COMPANY_USCC)
        assert [entry.number for entry in listed] == [licence.number]
        assert listed[0].sd_jwt == ""
        assert "legal_representative" not in json.loads(listed[0].claims_json)
        with pytest.raises(ExchangeError) as refused:
            await tax.get_licence(licence.number)
        assert refused.value.reason == "LICENCE_NOT_PERMITTED"


async def test_issuance_is_logged_and_published_as_an_event(node: Node) -> None:
    number = await _issue_business_licence(node)
    assert node.db is not None
    subject = SubjectHasher(load_log_key(node.settings))(COMPANY_USCC)
    row = await node.db.pool.fetchrow(
        "SELECT caller, officer, dataset, decision FROM access_log"
        " WHERE action = 'licence-issue' AND subject_hmac = $1",
        subject,
    )
    assert row is not None
    assert dict(row) == {
        "caller": "samr",
        "officer": "SC-0001",
        "dataset": "samr.licence_business_licence",
        "decision": "allowed",
    }
    event = await node.db.pool.fetchrow(
        "SELECT key, op, data FROM change_event WHERE dataset = 'samr.licence_business_licence'"
    )
    assert event is not None
    assert event["key"] == COMPANY_USCC
    data = json.loads(event["data"])
    assert data["licence_number"] == number
    assert data["licence_status"] == "valid"
    # The personal claim is a personal field of the dataset: there, but purpose-bound.
    assert data["legal_representative"] == "王晓明"
    # A subscriber learns of it like of any shared data.
    async with client_for(node, "tax") as tax:
        stream = tax.subscribe(
            "samr.licence_business_licence",
            fields=["licence_number", "licence_status"],
            purpose="税务登记",
        )
        first = await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]  # an async generator
    assert first.fields == {"licence_number": number, "licence_status": "valid"}


async def test_bad_issuance_requests_are_refused_with_their_reason(node: Node) -> None:
    bad_uscc = COMPANY_USCC[:-1] + ("0" if COMPANY_USCC[-1] != "0" else "1")
    async with client_for(node, "samr") as samr:
        with pytest.raises(ExchangeError) as unknown:
            await samr.issue_licence("fishing-licence", BUSINESS_LICENCE_CLAIMS)
        assert unknown.value.reason == "LICENCE_TYPE_UNKNOWN"
        with pytest.raises(ExchangeError) as holder:
            await samr.issue_licence(
                "business-licence", {**BUSINESS_LICENCE_CLAIMS, "uscc": bad_uscc}
            )
        assert holder.value.reason == "LICENCE_CLAIM_INVALID"
        assert holder.value.metadata["problem"] == "holder_id"
        with pytest.raises(ExchangeError) as missing:
            await samr.issue_licence(
                "business-licence",
                {k: v for k, v in BUSINESS_LICENCE_CLAIMS.items() if k != "name"},
            )
        assert missing.value.metadata == {
            "licence_type": "business-licence",
            "claim": "name",
            "problem": "missing",
        }
        with pytest.raises(ExchangeError) as not_issuer:
            await samr.issue_licence("food-business-permit", FOOD_PERMIT_CLAIMS)
        assert not_issuer.value.reason == "LICENCE_NOT_PERMITTED"
    assert node.db is not None
    assert await node.db.pool.fetchval("SELECT count(*) FROM licence") == 0


async def test_fetch_for_an_approval_discloses_only_what_is_asked(node: Node) -> None:
    number = await _issue_business_licence(node)
    async with client_for(node, "approval", "SP-0007") as approval:
        # The legal representative is a personal claim: no grant, no disclosure.
        with pytest.raises(ExchangeError) as personal:
            await approval.fetch_licence(
                holder_id=COMPANY_USCC, licence_type="business-licence", purpose=PURPOSE,
                case_id=CASE_ID, disclose=["legal_representative"],
            )  # fmt: skip
        assert personal.value.reason == "PERSONAL_GRANT_REQUIRED"
        assert personal.value.code is grpc.StatusCode.PERMISSION_DENIED
    grant = await grant_licence_representative(partial(client_for, node), node.clock.now())
    async with client_for(node, "approval", "SP-0007") as approval:
        fetched = await approval.fetch_licence(
            holder_id=COMPANY_USCC,
            licence_type="business-licence",
            purpose=PURPOSE,
            case_id=CASE_ID,
            disclose=["legal_representative"],
        )
        assert fetched.number == number
        assert json.loads(fetched.claims_json)["legal_representative"] == "王晓明"
        hidden = await approval.fetch_licence(number=number, purpose=PURPOSE, case_id=CASE_ID)
        assert "legal_representative" not in json.loads(hidden.claims_json)
        assert hidden.sd_jwt.count("~") == 1  # the presentation holds no disclosure
        result = await approval.verify_licence(fetched.sd_jwt)
        assert result.verified, result.message
        assert json.loads(result.claims_json)["legal_representative"] == "王晓明"
        # Purpose and case are checked by the sharing policy, with its reason codes.
        with pytest.raises(ExchangeError) as no_case:
            await approval.fetch_licence(number=number, purpose=PURPOSE, case_id="")
        assert no_case.value.reason == "CASE_REQUIRED"
        with pytest.raises(ExchangeError) as long_purpose:
            await approval.fetch_licence(number=number, purpose="审" * 201, case_id=CASE_ID)
        assert long_purpose.value.reason == "INVALID_ARGUMENT"
        assert long_purpose.value.metadata["field"] == "purpose"
    assert node.db is not None
    rows = await node.db.pool.fetch(
        "SELECT decision, reason, case_id, fields FROM access_log"
        " WHERE action = 'licence-fetch' ORDER BY idx"
    )
    assert [(r["decision"], r["reason"]) for r in rows] == [
        ("denied", "PERSONAL_GRANT_REQUIRED"),
        ("allowed", f"grant:{grant}"),
        ("allowed", None),
        ("denied", "CASE_REQUIRED"),
        ("denied", "INVALID_ARGUMENT"),
    ]
    assert list(rows[1]["fields"]) == ["legal_representative"]


async def test_a_department_without_grant_or_consent_gets_no_personal_claim(node: Node) -> None:
    """Issue 14, finding 3: tax fetched samr's business licence with the legal
    representative disclosed, for the purpose "随便"."""
    number = await _issue_business_licence(node)
    await grant_licence_representative(partial(client_for, node), node.clock.now())
    async with client_for(node, "tax", "SW-1") as tax:
        with pytest.raises(ExchangeError) as refused:
            await tax.fetch_licence(
                number=number, purpose="随便", case_id="X-1", disclose=["legal_representative"]
            )
        assert refused.value.reason == "PERSONAL_GRANT_REQUIRED"
        # approval's grant is approval's, for its purpose: tax using that purpose gets nothing.
        with pytest.raises(ExchangeError) as borrowed:
            await tax.fetch_licence(
                number=number, purpose=PURPOSE, case_id=CASE_ID, disclose=["legal_representative"]
            )
        assert borrowed.value.reason == "PERSONAL_GRANT_REQUIRED"
        # The public claims still come, with purpose and case, as before.
        public = await tax.fetch_licence(number=number, purpose="税务登记", case_id="X-1")
        assert json.loads(public.claims_json)["name"] == BUSINESS_LICENCE_CLAIMS["name"]
        assert "legal_representative" not in json.loads(public.claims_json)


async def test_the_holder_authorises_one_use(node: Node) -> None:
    """授权用证: the holder's one-time code opens the personal claims for one department,
    purpose and case, once; the holder sees its making and its use."""
    number = await _issue_business_licence(node)
    assert node.db is not None
    assert node.licensing is not None
    assert node.access_log is not None
    code, made = await authorise(
        node.db.pool, node.access_log, SubjectHasher(load_log_key(node.settings)),
        node="node-1", by="subject", holder_id=COMPANY_USCC, department="tax",
        purpose="纳税信用评价", case_id="NS-9", licence_type="business-licence",
        valid_for=timedelta(hours=1), now=node.clock.now(),
    )  # fmt: skip
    assert len(code) == 14
    assert code.count("-") == 2

    async def fetch(dept: str, purpose: str, case: str, given: str) -> ExchangeError | str:
        async with client_for(node, dept, "X-1") as client:
            try:
                got = await client.fetch_licence(
                    number=number, purpose=purpose, case_id=case,
                    disclose=["legal_representative"], authorisation=given,
                )  # fmt: skip
            except ExchangeError as e:
                return e
            return str(json.loads(got.claims_json)["legal_representative"])

    # Another department, another purpose, another case, a wrong or garbled code: no.
    for dept, purpose, case, given in [
        ("hrss", "纳税信用评价", "NS-9", code),
        ("tax", "随便", "NS-9", code),
        ("tax", "纳税信用评价", "NS-10", code),
        ("tax", "纳税信用评价", "NS-9", "AAAA-BBBB-CCCC"),
        ("tax", "纳税信用评价", "NS-9", "' OR 1=1 --" * 40),
    ]:
        refused = await fetch(dept, purpose, case, given)
        assert isinstance(refused, ExchangeError), (dept, purpose, case)
        assert refused.reason == "AUTHORISATION_INVALID"
        assert refused.code is grpc.StatusCode.PERMISSION_DENIED
    # The right one, once (lower case and without dashes is the same code) ...
    assert await fetch("tax", "纳税信用评价", "NS-9", code.lower().replace("-", "")) == "王晓明"
    again = await fetch("tax", "纳税信用评价", "NS-9", code)
    assert isinstance(again, ExchangeError)
    assert again.reason == "AUTHORISATION_INVALID"
    # ... and the holder sees both the authorisation and its use.
    [record] = await node.licensing.authorisations.of_holder(COMPANY_USCC)
    assert record.id == made.id
    assert record.used_number == number
    rows = await node.db.pool.fetch(
        "SELECT caller, action, decision, reason FROM access_log WHERE subject_hmac = $1"
        " AND action IN ('licence-authorise', 'licence-fetch') ORDER BY idx",
        SubjectHasher(load_log_key(node.settings))(COMPANY_USCC),
    )
    seen = [(r["caller"], r["action"], r["decision"], r["reason"]) for r in rows]
    assert seen[0] == (
        "subject",
        "licence-authorise",
        "allowed",
        f"authorisation:{made.id} for tax",
    )
    assert ("tax", "licence-fetch", "allowed", f"authorisation:{made.id}") in seen
    assert [s[3] for s in seen].count("AUTHORISATION_INVALID") == 6
    # Bad requests to make one are refused with a reason, and nothing is stored.
    for bad in (
        {"department": "nobody"},
        {"purpose": ""},
        {"case_id": "x" * 65},
        {"valid_for": timedelta(days=31)},
        {"holder_id": "91330102MA2K8Q7R1X"},
    ):
        args: dict[str, object] = {
            "holder_id": COMPANY_USCC, "department": "tax", "purpose": "p", "case_id": "c",
            "valid_for": timedelta(hours=1), **bad,
        }  # fmt: skip
        with pytest.raises(TongbanError) as invalid:
            await authorise(
                node.db.pool, node.access_log, SubjectHasher(load_log_key(node.settings)),
                node="node-1", by="operator", licence_type=None, now=node.clock.now(),
                **args,  # type: ignore[arg-type]
            )  # fmt: skip
        assert invalid.value.reason in ("INVALID_ARGUMENT", "INVALID_SUBJECT_ID"), bad
    assert len(await node.licensing.authorisations.of_holder(COMPANY_USCC)) == 1


async def test_revocation_by_the_regulator_stops_verification(node: Node) -> None:
    async with client_for(node, "approval", "SP-0007") as approval:
        permit = await approval.issue_licence("food-business-permit", FOOD_PERMIT_CLAIMS)
        assert (await approval.verify_licence(permit.qr)).verified
    async with client_for(node, "regulator", "JG-0003") as regulator:
        with pytest.raises(ExchangeError) as no_reason:
            await regulator.change_licence_status(permit.number, "revoke", "")
        assert no_reason.value.reason == "INVALID_ARGUMENT"
        with pytest.raises(ExchangeError) as cancel:
            await regulator.change_licence_status(permit.number, "cancel", "注销")
        assert cancel.value.reason == "LICENCE_NOT_PERMITTED"
        suspended = await regulator.change_licence_status(permit.number, "suspend", "整改期间")
        assert suspended.status == "suspended"
        result = await regulator.verify_licence(permit.qr)
        assert (result.verified, result.check, result.reason, result.status) == (
            False,
            "status",
            "LICENCE_SUSPENDED",
            "suspended",
        )
        await regulator.change_licence_status(permit.number, "reinstate", "整改完成")
        assert (await regulator.verify_licence(permit.sd_jwt)).verified
        revoked = await regulator.change_licence_status(permit.number, "revoke", "检查不合格")
        assert [h.action for h in revoked.history] == ["issue", "suspend", "reinstate", "revoke"]
        for text in (permit.qr, permit.sd_jwt):
            result = await regulator.verify_licence(text)
            assert (result.verified, result.reason, result.status) == (
                False,
                "LICENCE_REVOKED",
                "revoked",
            )
        with pytest.raises(ExchangeError) as again:
            await regulator.change_licence_status(permit.number, "reinstate", "x")
        assert again.value.reason == "LICENCE_STATUS_CHANGE_INVALID"


async def test_amendment_supersedes_the_old_version(node: Node) -> None:
    number = await _issue_business_licence(node)
    async with client_for(node, "samr", "SC-0002") as samr:
        old = await samr.get_licence(number)
        amended = await samr.amend_licence(
            number, claims={"address": "浙江省杭州市上城区解放路99号"}, reason="住所变更"
        )
        assert (amended.number, amended.version) == (number, 2)
        assert json.loads(amended.claims_json)["address"].endswith("99号")
        assert [h.action for h in amended.history] == ["issue", "amend"]
        stale = await samr.verify_licence(old.qr)
        assert (stale.verified, stale.reason, stale.status) == (
            False,
            "LICENCE_SUPERSEDED",
            "superseded",
        )
        assert (await samr.verify_licence(amended.qr)).verified
        renewed = await samr.amend_licence(number, renew=True, reason="换发")
        assert renewed.version == 3


async def test_amendments_of_one_licence_at_once_follow_one_another(node: Node) -> None:
    """Eight amendments of one licence at once: each one that waited for another's lock
    used to find the version it waited for superseded and the new one not yet visible,
    and was answered "no licence … exists" (6 of 8). Now each applies on top of the one
    before it: versions 2 to 9, one current, eight amendments in the history."""
    number = await _issue_business_licence(node)
    async with client_for(node, "samr", "SC-0002") as samr:
        amended = await asyncio.gather(
            *(
                samr.amend_licence(
                    number, claims={"address": f"浙江省杭州市上城区解放路{i}号"}, reason="住所变更"
                )
                for i in range(8)
            )
        )
        assert sorted(a.version for a in amended) == list(range(2, 10))
        current = await samr.get_licence(number)
        assert current.version == 9
        assert [h.action for h in current.history] == ["issue", *["amend"] * 8]
    assert node.db is not None
    statuses = await node.db.pool.fetch(
        "SELECT status, count(*) AS n FROM licence WHERE number = $1 GROUP BY status", number
    )
    assert {r["status"]: r["n"] for r in statuses} == {"valid": 1, "superseded": 8}


async def test_status_indices_are_random_and_distinct(node: Node) -> None:
    assert node.licensing is not None
    async with client_for(node, "samr") as samr:
        numbers = [await _issue_business_licence(node) for _ in range(5)]
        indices = [(await samr.get_licence(n)).status_index for n in numbers]
    assert len(set(indices)) == 5
    assert indices != sorted(indices) or indices[0] > 1000


async def test_types_are_listed(node: Node) -> None:
    async with client_for(node, "tax") as tax:
        types = await tax.licence_types()
    food = next(t for t in types if t.code == "food-business-permit")
    assert list(food.issuers) == ["approval"]
    assert list(food.revokers) == ["regulator"]
    assert food.validity_days == 5 * 365 + 1
