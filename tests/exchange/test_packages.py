"""Packages (一件事, issue 15) over mutual TLS: 企业开办 as a package whose later steps are
applied for by the enterprise that 设立登记 creates, the package-steps and case streams
under the usual sharing rules, and each bad input with its reason code."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import client_for
from tests.stories.restaurant import BUSINESS_LICENCE_CLAIMS, COMPANY_USCC, OWNER_ID
from tongban.client import (
    CaseOutcome,
    CaseState,
    ExchangeError,
    PackageCase,
    PackageState,
    StepState,
)
from tongban.client.client import Event
from tongban.exchange.node import Node
from tongban.v1 import cases_pb2, items_pb2, packages_pb2

ESTABLISH, SEAL, INVOICE, SOCIAL = "pk-establish", "pk-seal", "pk-invoice", "pk-social"
PACKAGE = "pk-enterprise-start"
DECIDED, APPROVED = cases_pb2.CASE_STATE_DECIDED, cases_pb2.CASE_OUTCOME_APPROVED


def _item(code: str, *, issues: str = "", licence_material: bool = False) -> items_pb2.ItemSpec:
    materials = [
        items_pb2.Material(
            code="form", name="申请表", required=True, submitted=items_pb2.SubmittedSource()
        )
    ]
    if licence_material:
        materials = [
            items_pb2.Material(
                code="business-licence",
                name="营业执照",
                required=True,
                licence=items_pb2.LicenceSource(licence_type="business-licence"),
            )
        ]
    return items_pb2.ItemSpec(
        code=code,
        name=f"测试事项 {code}",
        legal_basis="《测试条例》第一条",
        purpose="企业开办",
        legal_limit_days=10,
        promised_limit_days=2,
        issues_licence=issues,
        materials=materials,
    )


def _package(
    steps: list[tuple[str, list[str], str]], code: str = PACKAGE
) -> packages_pb2.PackageSpec:
    return packages_pb2.PackageSpec(
        code=code,
        name="企业开办",
        description="设立登记、公章刻制、发票申领、社保登记，一次办",
        steps=[
            packages_pb2.PackageStepSpec(item=item, after=after, applicant_from=source)
            for item, after, source in steps
        ],
    )


ENTERPRISE_START = [
    (ESTABLISH, [], ""),
    (SEAL, [ESTABLISH], ESTABLISH),
    (INVOICE, [ESTABLISH], ESTABLISH),
    (SOCIAL, [ESTABLISH], ESTABLISH),
]


async def _register_all(node: Node) -> None:
    for dept, item in (
        ("samr", _item(ESTABLISH, issues="business-licence")),
        ("police", _item(SEAL, licence_material=True)),
        ("tax", _item(INVOICE, licence_material=True)),
        ("hrss", _item(SOCIAL, licence_material=True)),
    ):
        async with client_for(node, dept) as client:
            await client.register_item(item)
    async with client_for(node, "approval") as approval:
        await approval.register_package(_package(ENTERPRISE_START))


async def _events(stream: AsyncIterator[Event], count: int) -> list[Event]:
    got: list[Event] = []
    async with asyncio.timeout(15):
        async for event in stream:
            got.append(event)
            if len(got) == count:
                return got
    raise AssertionError(f"the stream ended after {len(got)} of {count} events")


def _steps(package: PackageCase) -> dict[str, tuple[StepState, str]]:
    return {s.item: (s.state, s.applicant) for s in package.steps}


async def _refused(node: Node, dept: str, call: str, *args: Any, **kwargs: Any) -> ExchangeError:
    async with client_for(node, dept) as client:
        with pytest.raises(ExchangeError) as caught:
            await getattr(client, call)(*args, **kwargs)
    assert "Traceback" not in caught.value.message
    return caught.value


async def test_enterprise_start_in_one_trip(node: Node) -> None:
    await _register_all(node)
    async with client_for(node, "approval", "CK-01") as approval:
        opened = await approval.open_package(PACKAGE, OWNER_ID)
    assert opened.state == PackageState.OPEN
    assert _steps(opened) == {
        ESTABLISH: (StepState.READY, OWNER_ID),
        SEAL: (StepState.WAITING, ""),
        INVOICE: (StepState.WAITING, ""),
        SOCIAL: (StepState.WAITING, ""),
    }
    number = opened.number

    async with client_for(node, "samr", "SC-1") as samr:
        # samr learns of its ready step from the coordinator's stream; the founder's
        # citizen id is a personal field it gets only with a grant for its purpose...
        stream = samr.subscribe(
            "approval.package_steps",
            fields=["item", "department", "state", "applicant_uscc"],
            purpose="企业开办",
            after_position=-1,
        )
        first = await _events(stream, 4)
        ready = [e for e in first if e.fields["state"] == "ready"]
        assert [(e.key, e.fields["department"]) for e in ready] == [
            (f"{number}/{ESTABLISH}", "samr")
        ]
        personal = samr.subscribe(
            "approval.package_steps",
            fields=["item", "applicant_citizen_id"],
            purpose="企业开办",
        )
        with pytest.raises(ExchangeError) as no_grant:
            await _events(personal, 1)
        assert no_grant.value.reason == "PERSONAL_GRANT_REQUIRED"
        # ...and reads the package itself, which is logged, for the applicant.
        shown = await samr.get_package_case(number)
        assert _steps(shown)[ESTABLISH] == (StepState.READY, OWNER_ID)

        case = await samr.open_case(ESTABLISH, OWNER_ID, package_number=number)
        assert case.package_number == number
        with pytest.raises(ExchangeError) as again:
            await samr.open_case(ESTABLISH, OWNER_ID, package_number=number)
        assert again.value.reason == "PACKAGE_STEP_NOT_READY"
        # 设立登记 issues the business licence to the enterprise it creates, for the case.
        licence = await samr.issue_licence(
            "business-licence", BUSINESS_LICENCE_CLAIMS, case_id=case.number
        )
        assert licence.holder_id == COMPANY_USCC
        await samr.move_case(case.number, DECIDED, outcome=APPROVED, licence_number=licence.number)

    async with client_for(node, "approval") as approval:
        after = await approval.get_package_case(number)
    assert _steps(after) == {
        ESTABLISH: (StepState.DONE, OWNER_ID),
        SEAL: (StepState.READY, COMPANY_USCC),
        INVOICE: (StepState.READY, COMPANY_USCC),
        SOCIAL: (StepState.READY, COMPANY_USCC),
    }
    assert next(s for s in after.steps if s.item == ESTABLISH).licence_number == licence.number

    refused = await _refused(node, "police", "open_case", SEAL, OWNER_ID, package_number=number)
    assert refused.reason == "PACKAGE_STEP_NOT_READY"  # the founder is not the step's applicant
    for dept, item in (("police", SEAL), ("tax", INVOICE), ("hrss", SOCIAL)):
        async with client_for(node, dept) as client:
            step_case = await client.open_case(item, COMPANY_USCC, package_number=number)
            # The business licence issued at 设立登记 is the material: nothing to submit.
            resolved = await client.resolve_materials(item, COMPANY_USCC, step_case.number)
            assert resolved.to_submit == 0
            assert [m.reference for m in resolved.materials] == [licence.number]
            await client.move_case(step_case.number, DECIDED, outcome=APPROVED)
    async with client_for(node, "approval") as approval:
        done = await approval.get_package_case(number)
    assert done.state == PackageState.DONE
    assert {s.case_state for s in done.steps} == {CaseState.DECIDED}

    # The regulator (审管互通) follows samr's case stream: the enterprise's cases are public
    # workflow metadata; the founder's citizen id is not in what it may take.
    async with client_for(node, "regulator") as regulator:
        cases = regulator.subscribe(
            "samr.cases",
            fields=["case_number", "item", "state", "outcome", "package_number"],
            purpose="审管互通",
            after_position=-1,
        )
        seen = await _events(cases, 2)
    assert [(e.fields["state"], e.fields["package_number"]) for e in seen] == [
        ("accepted", number),
        ("decided", number),
    ]
    assert node.db is not None
    logged = await node.db.pool.fetch(
        "SELECT caller, action FROM access_log WHERE case_id = $1 ORDER BY idx", number
    )
    assert [tuple(r) for r in logged] == [
        ("approval", "package.open"),
        ("samr", "package.read"),
        ("approval", "package.read"),
        ("approval", "package.read"),
    ]


async def test_a_refused_step_blocks_the_steps_after_it(node: Node) -> None:
    await _register_all(node)
    async with client_for(node, "approval") as approval:
        number = (await approval.open_package(PACKAGE, OWNER_ID)).number
    async with client_for(node, "samr") as samr:
        case = await samr.open_case(ESTABLISH, OWNER_ID, package_number=number)
        await samr.move_case(
            case.number, DECIDED, outcome=cases_pb2.CASE_OUTCOME_REFUSED, reason="名称不合规"
        )
        shown = await samr.get_package_case(number)
    assert shown.state == PackageState.FAILED
    assert {s.item: s.state for s in shown.steps} == {
        ESTABLISH: StepState.FAILED,
        SEAL: StepState.BLOCKED,
        INVOICE: StepState.BLOCKED,
        SOCIAL: StepState.BLOCKED,
    }
    refused = await _refused(node, "tax", "open_case", INVOICE, COMPANY_USCC, package_number=number)
    assert refused.reason == "PACKAGE_STEP_NOT_READY"


async def _written(node: Node) -> tuple[int, ...]:
    assert node.db is not None
    row = await node.db.pool.fetchrow(
        "SELECT (SELECT count(*) FROM service_package_version) AS versions,"
        " (SELECT count(*) FROM package_case) AS opened,"
        " (SELECT count(*) FROM package_step) AS steps,"
        " (SELECT count(*) FROM service_case) AS cases,"
        " (SELECT count(*) FROM access_log WHERE decision = 'allowed') AS logged"
    )
    assert row is not None
    return tuple(row)


async def test_bad_packages_and_steps_are_refused_and_write_nothing(node: Node) -> None:
    await _register_all(node)
    async with client_for(node, "approval") as approval:
        number = (await approval.open_package(PACKAGE, OWNER_ID)).number
    before = await _written(node)
    bad_specs = {
        "cycle": (
            _package([(ESTABLISH, [SOCIAL], ""), (SEAL, [ESTABLISH], ""), (SOCIAL, [SEAL], "")]),
            "PACKAGE_CYCLE",
        ),
        "waits for itself": (_package([(ESTABLISH, [ESTABLISH], "")]), "PACKAGE_INVALID"),
        "unknown item": (_package([("no-such-item", [], "")]), "PACKAGE_INVALID"),
        "item twice": (_package([(ESTABLISH, [], ""), (ESTABLISH, [], "")]), "PACKAGE_INVALID"),
        "after not a step": (_package([(SEAL, [ESTABLISH], "")]), "PACKAGE_INVALID"),
        "applicant from not after": (
            _package([(ESTABLISH, [], ""), (SEAL, [], ESTABLISH)]),
            "PACKAGE_INVALID",
        ),
        "applicant from an item issuing no licence": (
            _package([(SEAL, [], ""), (INVOICE, [SEAL], SEAL)]),
            "PACKAGE_INVALID",
        ),
        "no steps": (_package([]), "PACKAGE_INVALID"),
        "bad code": (_package([(ESTABLISH, [], "")], code="Bad Code"), "PACKAGE_INVALID"),
        "control characters": (
            packages_pb2.PackageSpec(
                code="pk-x", name="企业\x00开办", steps=[packages_pb2.PackageStepSpec(item=SEAL)]
            ),
            "INVALID_ARGUMENT",  # refused by the node's checks of every request's text
        ),
    }
    for what, (spec, reason) in bad_specs.items():
        error = await _refused(node, "approval", "register_package", spec)
        assert (what, error.reason) == (what, reason)
        assert error.message
    cycle = await _refused(node, "approval", "register_package", bad_specs["cycle"][0])
    assert "→" in cycle.message
    others = {
        "another department's package": (
            "tax", "register_package", (_package(ENTERPRISE_START),), "PACKAGE_NOT_PERMITTED"
        ),
        "another opens": ("tax", "open_package", (PACKAGE, OWNER_ID), "PACKAGE_NOT_PERMITTED"),
        "unknown package": ("approval", "open_package", ("pk-none", OWNER_ID), "PACKAGE_UNKNOWN"),
        "bad applicant": ("approval", "open_package", (PACKAGE, "123"), "INVALID_SUBJECT_ID"),
        "unknown opened package": (
            "approval", "get_package_case", ("approval-2026-0000000000",), "PACKAGE_UNKNOWN"
        ),
        "malformed number": ("approval", "get_package_case", ("../x",), "PACKAGE_UNKNOWN"),
        "case for an unknown package": (
            "samr", "open_case", (ESTABLISH, OWNER_ID), "PACKAGE_UNKNOWN"
        ),
        "case for a step of another department": (
            "tax", "open_case", (INVOICE, OWNER_ID), "PACKAGE_STEP_NOT_READY"
        ),
    }  # fmt: skip
    for what, (dept, call, args, reason) in others.items():
        kwargs = {}
        if call == "open_case":
            kwargs["package_number"] = (
                "samr-2026-0000000000" if what == "case for an unknown package" else number
            )
        error = await _refused(node, dept, call, *args, **kwargs)
        assert (what, error.reason) == (what, reason)
    assert await _written(node) == before
    # A department with no step in the package may not read it; the refusal is logged.
    foreign = await _refused(node, "regulator", "get_package_case", number)
    assert foreign.reason == "PACKAGE_NOT_PERMITTED"
    assert node.db is not None
    denied = await node.db.pool.fetch(
        "SELECT caller, action FROM access_log WHERE decision = 'denied' AND case_id = $1",
        number,
    )
    assert [tuple(r) for r in denied] == [("regulator", "package.read")]


async def test_a_case_of_an_item_without_a_licence_names_none(node: Node) -> None:
    await _register_all(node)
    async with client_for(node, "tax") as tax:
        case = await tax.open_case(INVOICE, COMPANY_USCC)
        with pytest.raises(ExchangeError) as named:
            await tax.move_case(
                case.number, DECIDED, outcome=APPROVED, licence_number="330102-2026-0000001"
            )
        assert named.value.reason == "CASE_DECISION_INVALID"
        decided = await tax.move_case(case.number, DECIDED, outcome=APPROVED)
    assert (decided.outcome, decided.licence_number) == (CaseOutcome.APPROVED, "")
