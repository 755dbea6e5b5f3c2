"""容缺 and 告知承诺 followed through (issue 16), over mutual TLS on a clock the test moves:
a deferral that runs out and a commitment found false are breaches, in the log and on the
case-materials stream, and under ``on_breach: suspend`` they suspend the licence the case
issued: an online check sees it at once, a bank's offline QR check after it refreshes its
cached status list. And each bad input with its reason code."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.conftest import client_for
from tests.exchange.test_cases import (  # noqa: F401 - cases_node is a fixture
    MONDAY,
    _china,
    _end_of,
    _set,
    cases_node,
)
from tests.stories.restaurant import COMPANY_USCC, FOOD_PERMIT_CLAIMS
from tongban.client import ExchangeError, MaterialState
from tongban.exchange.datadir import ca_certificate_pem
from tongban.exchange.licensing.follow_through import CaseMaterialsTampered, verify_follow_through
from tongban.exchange.node import Node
from tongban.licence import BUILTIN_REGISTRY, StatusListCache, TrustListCache, verify_licence
from tongban.signing import load_pem_certificates
from tongban.v1 import cases_pb2, items_pb2

ITEM = "follow-test-permit"
DECIDED, APPROVED = cases_pb2.CASE_STATE_DECIDED, cases_pb2.CASE_OUTCOME_APPROVED


def _material(code: str, *, defer: int = 0, commit: int = 0) -> items_pb2.Material:
    return items_pb2.Material(
        code=code,
        name=f"材料 {code}",
        required=True,
        submitted=items_pb2.SubmittedSource(),
        defer_days=defer,
        commitment_check_days=commit,
    )


async def _register(node: Node) -> None:
    async with client_for(node, "approval") as approval:
        await approval.register_item(
            items_pb2.ItemSpec(
                code=ITEM,
                name="食品经营许可（容缺、告知承诺）",
                legal_basis="《食品经营许可和备案管理办法》",
                purpose="食品经营许可审批",
                legal_limit_days=10,
                promised_limit_days=5,
                issues_licence="food-business-permit",
                on_breach="suspend",
                supervisors=["regulator"],
                materials=[
                    _material("application"),
                    _material("site-plan", defer=2),
                    _material("hygiene-pledge", commit=3),
                ],
            )
        )


async def _approved_case(node: Node) -> tuple[str, str]:
    """A case of ITEM for the company, approved with a food permit; (case, licence)."""
    async with client_for(node, "approval", "SP-7") as approval:
        case = await approval.open_case(ITEM, COMPANY_USCC)
        deferred = await approval.defer_material(case.number, "site-plan")
        committed = await approval.accept_commitment(case.number, "hygiene-pledge")
        permit = await approval.issue_licence(
            "food-business-permit", FOOD_PERMIT_CLAIMS, case_id=case.number
        )
        await approval.move_case(
            case.number, DECIDED, outcome=APPROVED, licence_number=permit.number
        )
    # Opened Monday: two working days for the plan (Tue, and Thu after Wednesday's
    # holiday), three to check the pledge (Tue, Thu, Fri).
    assert deferred.due_at.date() == (_end_of(MONDAY + timedelta(days=3))).date()
    assert committed.due_at.date() == (_end_of(MONDAY + timedelta(days=4))).date()
    assert deferred.state == committed.state == MaterialState.OPEN
    return case.number, permit.number


async def test_a_deferral_that_runs_out_suspends_the_permit(
    cases_node: Node,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    node = cases_node
    await _register(node)
    number, licence = await _approved_case(node)
    assert node.follow_through is not None

    # A bank caches the trust list and the permit's status list while online.
    roots = load_pem_certificates(ca_certificate_pem(node.settings))
    base = f"http://127.0.0.1:{node.http_port}"
    trust = TrustListCache(tmp_path / "bank" / "trust-list.jwt")
    statuses = StatusListCache(tmp_path / "bank" / "status-lists")

    async def refresh(uri: str) -> None:
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/trust-list") as response:
                trust_list = trust.store(await response.text(), roots=roots, now=node.clock.now())
            async with http.get(uri) as response:
                statuses.store(
                    await response.text(),
                    uri=uri,
                    roots=roots,
                    trusted=trust_list.status_list_certificates_for("approval"),
                    now=node.clock.now(),
                )

    async with client_for(node, "approval") as approval:
        permit = await approval.get_licence(licence)

    def offline() -> str:
        now = node.clock.now()
        trust_list = trust.load(roots=roots, now=now)

        def lookup(issuer: str, uri: str, index: int) -> int | None:
            found = statuses.load(
                uri, roots=roots, trusted=trust_list.status_list_certificates_for(issuer), now=now
            )
            return None if found is None else found.get(index)

        return verify_licence(
            permit.qr, roots=roots, trust_list=trust_list, registry=BUILTIN_REGISTRY, now=now,
            status=lookup,
        ).status  # fmt: skip

    # Thursday evening: still in time, nothing breached; the bank's cache is fresh (a
    # status list lasts a day).
    _set(node, _china(MONDAY + timedelta(days=3), 20))
    assert await node.follow_through.sweep(node.clock.now()) == 0
    await refresh(permit.status_uri)
    assert offline() == "valid"
    # Friday: the plan never came. The sweep records the breach and suspends the permit.
    _set(node, _china(MONDAY + timedelta(days=4)))
    assert await node.follow_through.sweep(node.clock.now()) == 1
    assert await node.follow_through.sweep(node.clock.now()) == 0  # once only
    async with client_for(node, "tax") as anyone:
        online = await anyone.verify_licence(permit.qr)
    assert (online.verified, online.status) == (False, "suspended")
    assert offline() == "valid"  # the cached list predates the suspension...
    await refresh(permit.status_uri)
    assert offline() == "suspended"  # ...until it is refreshed
    async with client_for(node, "approval") as approval:
        shown = await approval.get_case(number)
        with pytest.raises(ExchangeError) as late:
            await approval.supply_material(number, "site-plan")
    assert late.value.reason == "MATERIAL_NOT_OPEN"
    assert {m.material: m.state for m in shown.materials} == {
        "site-plan": MaterialState.BREACHED,
        "hygiene-pledge": MaterialState.OPEN,
    }
    assert node.db is not None
    logged = await node.db.pool.fetch(
        "SELECT action, reason FROM access_log WHERE case_id = $1 AND action IN"
        " ('case.defer', 'case.commit', 'case.breach') ORDER BY idx",
        number,
    )
    assert [r["action"] for r in logged] == ["case.defer", "case.commit", "case.breach"]
    assert logged[2]["reason"] == "site-plan:deferral ran out"
    events = await node.db.pool.fetch(
        "SELECT key, data->>'state' AS state FROM change_event"
        " WHERE dataset = 'approval.case_materials' ORDER BY position"
    )
    assert [(e["key"], e["state"]) for e in events] == [
        (f"{number}/site-plan", "open"),
        (f"{number}/hygiene-pledge", "open"),
        (f"{number}/site-plan", "breached"),
    ]


async def test_a_commitment_found_false_suspends_and_one_found_true_does_not(
    cases_node: Node,  # noqa: F811 - the fixture
) -> None:
    node = cases_node
    await _register(node)
    kept, kept_licence = await _approved_case(node)
    broken, broken_licence = await _approved_case(node)
    async with client_for(node, "regulator", "JG-3") as regulator:
        held = await regulator.record_commitment_check(kept, "hygiene-pledge", passed=True)
        with pytest.raises(ExchangeError) as no_note:
            await regulator.record_commitment_check(broken, "hygiene-pledge", passed=False)
        failed = await regulator.record_commitment_check(
            broken, "hygiene-pledge", passed=False, note="现场卫生条件与承诺不符"
        )
        with pytest.raises(ExchangeError) as twice:
            await regulator.record_commitment_check(broken, "hygiene-pledge", passed=True)
    assert held.state == MaterialState.CHECKED
    assert (failed.state, failed.resolved_by) == (MaterialState.BREACHED, "regulator")
    assert no_note.value.reason == "CASE_REASON_REQUIRED"
    assert twice.value.reason == "MATERIAL_NOT_OPEN"
    async with client_for(node, "approval") as approval:
        kept_view = await approval.get_licence(kept_licence)
        assert kept_view.status == "valid"
        assert (await approval.get_licence(broken_licence)).status == "suspended"
        # The permit carries the commitment it was approved on, as a verifier sees it.
        verified = await approval.verify_licence(kept_view.sd_jwt)
    conditions = json.loads(verified.claims_json)["conditions"]
    assert len(conditions) == 1
    assert conditions[0].startswith("告知承诺：材料 hygiene-pledge，待核查（期限 ")


async def test_bad_follow_through_inputs_have_reasons_and_write_nothing(
    cases_node: Node,  # noqa: F811 - the fixture
) -> None:
    node = cases_node
    await _register(node)
    async with client_for(node, "approval") as approval:
        case = await approval.open_case(ITEM, COMPANY_USCC)
        await approval.defer_material(case.number, "site-plan")
    number = case.number
    assert node.db is not None
    before = await node.db.pool.fetchval("SELECT count(*) FROM case_material")
    bad = {
        "not deferrable": ("approval", "defer_material", (number, "application"), {}),
        "no commitment allowed": ("approval", "accept_commitment", (number, "site-plan"), {}),
        "unknown material": ("approval", "defer_material", (number, "no-such"), {}),
        "deferred twice": ("approval", "defer_material", (number, "site-plan"), {}),
        "another department defers": ("tax", "defer_material", (number, "site-plan"), {}),
        "another department supplies": ("samr", "supply_material", (number, "site-plan"), {}),
        "supply of nothing deferred": ("approval", "supply_material", (number, "application"), {}),
        "check by a non-supervisor": (
            "approval", "record_commitment_check", (number, "hygiene-pledge"), {"passed": True}
        ),
        "check of no commitment": (
            "regulator", "record_commitment_check", (number, "site-plan"), {"passed": True}
        ),
        "unknown case": ("approval", "defer_material", ("approval-2026-0000000000", "x"), {}),
    }  # fmt: skip
    reasons = {}
    for what, (dept, call, args, kwargs) in bad.items():
        async with client_for(node, dept) as client:
            with pytest.raises(ExchangeError) as caught:
                await getattr(client, call)(*args, **kwargs)
        assert "Traceback" not in caught.value.message
        reasons[what] = caught.value.reason
    assert reasons == {
        "not deferrable": "MATERIAL_NOT_DEFERRABLE",
        "no commitment allowed": "MATERIAL_NOT_DEFERRABLE",
        "unknown material": "MATERIAL_UNKNOWN",
        "deferred twice": "MATERIAL_ALREADY_RECORDED",
        "another department defers": "CASE_NOT_PERMITTED",
        "another department supplies": "CASE_NOT_PERMITTED",
        "supply of nothing deferred": "MATERIAL_NOT_OPEN",
        "check by a non-supervisor": "CHECK_NOT_PERMITTED",
        "check of no commitment": "MATERIAL_NOT_OPEN",
        "unknown case": "CASE_NOT_FOUND",
    }
    assert await node.db.pool.fetchval("SELECT count(*) FROM case_material") == before
    denied = await node.db.pool.fetch(
        "SELECT caller, action FROM access_log WHERE decision = 'denied' ORDER BY idx"
    )
    assert [tuple(r) for r in denied] == [
        ("tax", "case.defer"),
        ("samr", "case.supply"),
        ("approval", "case.check"),
    ]
    # Supplied in time (Tuesday), then too late for another case (Friday).
    _set(node, _china(MONDAY + timedelta(days=1)))
    async with client_for(node, "approval") as approval:
        supplied = await approval.supply_material(number, "site-plan")
        other = await approval.open_case(ITEM, COMPANY_USCC)
        await approval.defer_material(other.number, "site-plan")
        _set(node, _china(MONDAY + timedelta(days=7)))
        with pytest.raises(ExchangeError) as late:
            await approval.supply_material(other.number, "site-plan")
        decided = await approval.open_case(ITEM, COMPANY_USCC)
        await approval.move_case(
            decided.number, DECIDED, outcome=cases_pb2.CASE_OUTCOME_REFUSED, reason="不符合条件"
        )
        with pytest.raises(ExchangeError) as closed:
            await approval.defer_material(decided.number, "site-plan")
    assert supplied.state == MaterialState.SUPPLIED
    assert late.value.reason == "MATERIAL_SUPPLY_LATE"
    assert closed.value.reason == "MATERIAL_NOT_OPEN"


async def test_rows_changed_or_deleted_outside_the_node_are_found(
    cases_node: Node,  # noqa: F811 - the fixture
    database_url: str,
) -> None:
    node = cases_node
    await _register(node)
    number, _ = await _approved_case(node)
    _set(node, _china(MONDAY + timedelta(days=4)))
    assert node.follow_through is not None
    assert await node.follow_through.sweep(node.clock.now()) == 1
    assert node.db is not None
    assert await verify_follow_through(node.db.pool) == (2, 3)
    # The node's own role can neither turn a breach back nor delete the record of one.
    for statement in (
        "UPDATE case_material SET due_at = due_at + interval '1 day'",
        "DELETE FROM case_material",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await node.db.pool.execute(statement)
    owner = await asyncpg.connect(database_url)
    try:
        # Someone with the schema owner's login hides the breach...
        await owner.execute(
            "UPDATE case_material SET state = 'open', resolved_at = NULL"
            " WHERE case_number = $1 AND material = 'site-plan'",
            number,
        )
        with pytest.raises(CaseMaterialsTampered) as hidden:
            await verify_follow_through(node.db.pool)
        assert number in hidden.value.metadata["cases"]
        # ...or deletes the commitment.
        await owner.execute(
            "UPDATE case_material SET state = 'breached', resolved_at = now()"
            " WHERE case_number = $1 AND material = 'site-plan'",
            number,
        )
        assert await verify_follow_through(node.db.pool) == (2, 3)
        await owner.execute(
            "DELETE FROM case_material WHERE case_number = $1 AND material = 'hygiene-pledge'",
            number,
        )
        with pytest.raises(CaseMaterialsTampered):
            await verify_follow_through(node.db.pool)
    finally:
        await owner.close()
