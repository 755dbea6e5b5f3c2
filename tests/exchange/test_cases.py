"""Cases (办件, issue 15) over mutual TLS: the state machine, due dates from the working-day
calendar with 补正 stopping the clock, overdue severities, the access log written with
each transition, each bad input with its reason code, and ``tongban case``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from tests.cli_helpers import atongban
from tests.conftest import client_for, enrol_demo
from tests.stories.restaurant import (
    BUSINESS_LICENCE_CLAIMS,
    COMPANY_USCC,
    FOOD_PERMIT_CLAIMS,
    OWNER_ID,
)
from tongban.client import CaseOutcome, CaseOverdue, CaseState, ExchangeError
from tongban.exchange.audit.log import SubjectHasher
from tongban.exchange.datadir import load_log_key
from tongban.exchange.enrolment import bundle_dir
from tongban.exchange.node import Node
from tongban.exchange.settings import Settings, load_settings
from tongban.signing.clock import FixedClock, SystemClock
from tongban.v1 import cases_pb2, items_pb2

CHINA = timezone(timedelta(hours=8))
ITEM = "cases-test-permit"
AT_ONCE = "cases-test-at-once"
_NODE_FIELDS = (
    "data_dir",
    "database_url",
    "grpc_listen",
    "http_listen",
    "key_passphrase",
    "shutdown_grace_seconds",
)


def _monday_after(today: date) -> date:
    """The first Monday at least two days after ``today`` (certificates made today hold)."""
    day = today + timedelta(days=2)
    return day + timedelta(days=(7 - day.weekday()) % 7)


MONDAY = _monday_after(SystemClock().now().astimezone(CHINA).date())
HOLIDAY = MONDAY + timedelta(days=2)  # the Wednesday of the first week


def _china(day: date, hour: int = 10) -> datetime:
    return datetime.combine(day, time(hour), tzinfo=CHINA)


def _end_of(day: date) -> datetime:
    return datetime.combine(day, time.max, tzinfo=CHINA)


@pytest_asyncio.fixture
async def cases_node(settings: Settings) -> AsyncIterator[Node]:
    """A node whose calendar has a holiday on the first Wednesday, at Monday 10:00 China
    time, with two items of ``approval``: 3/6 working days and 即办 (0/1)."""
    with_holiday = load_settings(
        **{name: getattr(settings, name) for name in _NODE_FIELDS}, holidays=(HOLIDAY,)
    )
    async with Node(with_holiday, clock=FixedClock(_china(MONDAY))) as running:
        assert running.db is not None
        await enrol_demo(with_holiday)
        async with client_for(running, "approval") as approval:
            await approval.register_item(_item(ITEM, promised=3, legal=6))
            await approval.register_item(_item(AT_ONCE, promised=0, legal=1))
        yield running


def _item(code: str, *, promised: int, legal: int) -> items_pb2.ItemSpec:
    return items_pb2.ItemSpec(
        code=code,
        name="测试许可",
        legal_basis="《测试条例》第一条",
        purpose="测试许可审批",
        legal_limit_days=legal,
        promised_limit_days=promised,
        immediate=promised == 0,
        issues_licence="food-business-permit",
        materials=[
            items_pb2.Material(
                code="application",
                name="申请书",
                required=True,
                submitted=items_pb2.SubmittedSource(),
            )
        ],
    )


def _set(node: Node, at: datetime) -> None:
    assert isinstance(node.clock, FixedClock)
    node.clock.set(at)


async def _counts(node: Node) -> tuple[int, int, int]:
    assert node.db is not None
    row = await node.db.pool.fetchrow(
        "SELECT (SELECT count(*) FROM service_case) AS cases,"
        " (SELECT count(*) FROM service_case_history) AS history,"
        " (SELECT count(*) FROM access_log WHERE action LIKE 'case.%'"
        "  AND decision = 'allowed') AS logged"
    )
    assert row is not None
    return row["cases"], row["history"], row["logged"]


async def test_open_correct_accept_decide_deliver(cases_node: Node) -> None:
    node = cases_node
    async with client_for(node, "approval", "SP-0007") as approval:
        opened = await approval.open_case(ITEM, COMPANY_USCC, reason="材料齐全")
        assert opened.state == CaseState.ACCEPTED
        assert opened.number.startswith(f"approval-{MONDAY.year}-")
        # Tue, (Wed holiday), Thu, Fri: promised by Friday; + Mon, Tue, Wed: legal.
        assert opened.promised_due_at == _end_of(MONDAY + timedelta(days=4))
        assert opened.legal_due_at == _end_of(MONDAY + timedelta(days=9))

        _set(node, _china(MONDAY + timedelta(days=1)))
        asked = await approval.move_case(
            opened.number, cases_pb2.CASE_STATE_CORRECTION, reason="补正申请书签字"
        )
        assert asked.state == CaseState.CORRECTION
        _set(node, _china(MONDAY + timedelta(days=3)))  # Thursday: one working day stopped
        waiting = await approval.get_case(opened.number)
        assert waiting.stopped_days == 1
        assert waiting.promised_due_at == _end_of(MONDAY + timedelta(days=7))
        assert waiting.overdue == CaseOverdue.NONE

        _set(node, _china(MONDAY + timedelta(days=4)))  # back on Friday: Thu and Fri stopped
        back = await approval.move_case(opened.number, cases_pb2.CASE_STATE_ACCEPTED)
        assert back.stopped_days == 2
        assert back.promised_due_at == _end_of(MONDAY + timedelta(days=8))  # Tuesday
        assert back.legal_due_at == _end_of(MONDAY + timedelta(days=11))  # Friday

        permit = await approval.issue_licence("food-business-permit", FOOD_PERMIT_CLAIMS)
        assert permit.holder_id == COMPANY_USCC
        decided = await approval.move_case(
            opened.number,
            cases_pb2.CASE_STATE_DECIDED,
            outcome=cases_pb2.CASE_OUTCOME_APPROVED,
            licence_number=permit.number,
        )
        assert (decided.outcome, decided.licence_number) == (
            CaseOutcome.APPROVED,
            permit.number,
        )
        assert decided.overdue == CaseOverdue.NONE
        _set(node, _china(MONDAY + timedelta(days=7)))
        delivered = await approval.move_case(opened.number, cases_pb2.CASE_STATE_DELIVERED)
        assert delivered.state == CaseState.DELIVERED
        shown = await approval.get_case(opened.number)

    assert [(t.from_state, t.to_state, t.officer, t.reason) for t in shown.history] == [
        (CaseState.UNSPECIFIED, CaseState.ACCEPTED, "SP-0007", "材料齐全"),
        (
            CaseState.ACCEPTED,
            CaseState.CORRECTION,
            "SP-0007",
            "补正申请书签字",
        ),
        (CaseState.CORRECTION, CaseState.ACCEPTED, "SP-0007", ""),
        (CaseState.ACCEPTED, CaseState.DECIDED, "SP-0007", ""),
        (CaseState.DECIDED, CaseState.DELIVERED, "SP-0007", ""),
    ]
    assert shown.history[1].at == _china(MONDAY + timedelta(days=1))
    # Decided in time, so not overdue, however late it is read.
    assert shown.overdue == CaseOverdue.NONE
    assert node.db is not None
    rows = await node.db.pool.fetch(
        "SELECT action, caller, officer, reason FROM access_log"
        " WHERE case_id = $1 AND subject_hmac = $2 ORDER BY idx",
        opened.number,
        SubjectHasher(load_log_key(node.settings))(COMPANY_USCC),
    )
    assert [(r["action"], r["reason"]) for r in rows] == [
        ("case.accept", "→accepted"),
        ("case.correct", "accepted→correction"),
        ("case.read", "correction"),
        ("case.accept", "correction→accepted"),
        ("case.decide", "accepted→decided:approved"),
        ("case.deliver", "decided→delivered"),
        ("case.read", "delivered"),
    ]
    assert {(r["caller"], r["officer"]) for r in rows} == {("approval", "SP-0007")}


async def test_overdue_past_promised_then_legal_and_at_once_items(cases_node: Node) -> None:
    node = cases_node
    async with client_for(node, "approval") as approval:
        late = await approval.open_case(ITEM, OWNER_ID)  # a citizen applies
        at_once = await approval.open_case(AT_ONCE, COMPANY_USCC)
        assert at_once.promised_due_at == _end_of(MONDAY)  # 即办: the same day
        assert at_once.legal_due_at == _end_of(MONDAY + timedelta(days=1))

        _set(node, _china(MONDAY + timedelta(days=1)))
        assert (await approval.get_case(at_once.number)).overdue == (CaseOverdue.PROMISED)
        _set(node, _china(MONDAY + timedelta(days=4), 23))  # Friday night: promised date
        assert (await approval.get_case(late.number)).overdue == CaseOverdue.NONE
        _set(node, _china(MONDAY + timedelta(days=7), 1))  # Monday: past the promised date
        assert (await approval.get_case(late.number)).overdue == CaseOverdue.PROMISED
        _set(node, _china(MONDAY + timedelta(days=10)))  # Thursday: past the legal date
        assert (await approval.get_case(late.number)).overdue == CaseOverdue.LEGAL
        refused = await approval.move_case(
            late.number,
            cases_pb2.CASE_STATE_DECIDED,
            outcome=cases_pb2.CASE_OUTCOME_REFUSED,
            reason="不符合条件",
        )
        _set(node, _china(MONDAY + timedelta(days=20)))
        # Decided past its legal date: that stays on the record.
        shown = await approval.get_case(late.number)
        assert (shown.refusal_reason, shown.overdue) == ("不符合条件", CaseOverdue.LEGAL)
        assert refused.overdue == CaseOverdue.LEGAL
        withdrawn = await approval.move_case(
            at_once.number, cases_pb2.CASE_STATE_WITHDRAWN, reason="申请人撤回"
        )
        assert withdrawn.overdue == CaseOverdue.NONE


async def _refused(
    node: Node, dept: str, call: str, *args: object, **kwargs: object
) -> ExchangeError:
    async with client_for(node, dept) as client:
        with pytest.raises(ExchangeError) as caught:
            await getattr(client, call)(*args, **kwargs)
    return caught.value


async def test_each_bad_input_has_its_reason_and_writes_nothing(cases_node: Node) -> None:
    node = cases_node
    async with client_for(node, "approval") as approval:
        case = await approval.open_case(ITEM, COMPANY_USCC)
    before = await _counts(node)
    decide = cases_pb2.CASE_STATE_DECIDED
    bad: dict[str, tuple[str, str, tuple[object, ...], dict[str, Any]]] = {
        "unknown item": ("approval", "open_case", ("no-such-item", COMPANY_USCC), {}),
        "bad applicant": ("approval", "open_case", (ITEM, COMPANY_USCC[:-1] + "0"), {}),
        "another opens": ("tax", "open_case", (ITEM, COMPANY_USCC), {}),
        "another moves": (
            "tax",
            "move_case",
            (case.number, cases_pb2.CASE_STATE_CORRECTION),
            {"reason": "x"},
        ),
        "another reads": ("samr", "get_case", (case.number,), {}),
        "deliver first": (
            "approval",
            "move_case",
            (case.number, cases_pb2.CASE_STATE_DELIVERED),
            {},
        ),
        "no outcome": ("approval", "move_case", (case.number, decide), {}),
        "approval without licence": (
            "approval",
            "move_case",
            (case.number, decide),
            {"outcome": cases_pb2.CASE_OUTCOME_APPROVED},
        ),
        "refusal without reason": (
            "approval",
            "move_case",
            (case.number, decide),
            {"outcome": cases_pb2.CASE_OUTCOME_REFUSED},
        ),
        "correction without reason": (
            "approval",
            "move_case",
            (case.number, cases_pb2.CASE_STATE_CORRECTION),
            {},
        ),
        "no target": ("approval", "move_case", (case.number, cases_pb2.CASE_STATE_UNSPECIFIED), {}),
        "unknown case": ("approval", "get_case", ("approval-2026-0000000000",), {}),
        "malformed case": ("approval", "get_case", ("../etc",), {}),
    }
    reasons = {}
    for what, (dept, call, args, kwargs) in bad.items():
        error = await _refused(node, dept, call, *args, **kwargs)
        reasons[what] = error.reason
        assert error.message, what
        assert "Traceback" not in error.message, what
    assert reasons == {
        "unknown item": "SERVICE_ITEM_UNKNOWN",
        "bad applicant": "INVALID_SUBJECT_ID",
        "another opens": "CASE_NOT_PERMITTED",
        "another moves": "CASE_NOT_PERMITTED",
        "another reads": "CASE_NOT_PERMITTED",
        "deliver first": "CASE_TRANSITION_INVALID",
        "no outcome": "CASE_DECISION_INVALID",
        "approval without licence": "CASE_DECISION_INVALID",
        "refusal without reason": "CASE_REASON_REQUIRED",
        "correction without reason": "CASE_REASON_REQUIRED",
        "no target": "INVALID_ARGUMENT",
        "unknown case": "CASE_NOT_FOUND",
        "malformed case": "CASE_NOT_FOUND",
    }
    # Another department's read or move of the case is itself logged, as a denial.
    assert node.db is not None
    refusals = await node.db.pool.fetch(
        "SELECT caller, action, case_id, reason FROM access_log"
        " WHERE decision = 'denied' AND action LIKE 'case.%' ORDER BY idx"
    )
    assert [tuple(r) for r in refusals] == [
        ("tax", "case.move", case.number, "CASE_NOT_PERMITTED"),
        ("samr", "case.read", case.number, "CASE_NOT_PERMITTED"),
    ]
    deliver = await _refused(
        node, "approval", "move_case", case.number, cases_pb2.CASE_STATE_DELIVERED
    )
    assert "受理 (accepted)" in deliver.message
    assert "办结 (decided)" in deliver.message
    assert await _counts(node) == before
    # A licence the department did not issue to this applicant (samr's business licence).
    async with client_for(node, "samr") as samr:
        other = await samr.issue_licence("business-licence", BUSINESS_LICENCE_CLAIMS)
    before = await _counts(node)
    foreign = await _refused(
        node,
        "approval",
        "move_case",
        case.number,
        decide,
        outcome=cases_pb2.CASE_OUTCOME_APPROVED,
        licence_number=other.number,
    )
    assert foreign.reason == "CASE_DECISION_INVALID"
    assert await _counts(node) == before  # nothing half-written, nothing logged
    # After 送达, nothing follows.
    async with client_for(node, "approval") as approval:
        await approval.move_case(
            case.number, decide, outcome=cases_pb2.CASE_OUTCOME_REFUSED, reason="不符合条件"
        )
        await approval.move_case(case.number, cases_pb2.CASE_STATE_DELIVERED)
    after = await _refused(
        node, "approval", "move_case", case.number, cases_pb2.CASE_STATE_WITHDRAWN, reason="x"
    )
    assert after.reason == "CASE_TRANSITION_INVALID"
    assert "nothing follows" in after.message
    # The node's own role cannot rewrite the history, or a case's applicant, or delete.
    assert node.db is not None
    for statement in (
        "UPDATE service_case_history SET reason = 'x'",
        "DELETE FROM service_case_history",
        "DELETE FROM service_case",
        "UPDATE service_case SET applicant = applicant",
        "TRUNCATE service_case_history",
    ):
        async with node.db.pool.acquire() as conn:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)


async def test_case_commands(cases_node: Node) -> None:
    node = cases_node
    endpoint = f"127.0.0.1:{node.grpc_port}"

    def dept(code: str) -> list[str]:
        return ["--as", str(bundle_dir(node.settings, code)), "--endpoint", endpoint]

    opened = await atongban("case", "open", ITEM, COMPANY_USCC, *dept("approval"), "--json")
    assert opened.code == 0, opened.stdout + opened.stderr
    number = opened.json()["case"]["number"]
    asked = await atongban(
        "case", "move", number, "补正", "--reason", "补正申请书签字", *dept("approval")
    )
    assert asked.code == 0, asked.stderr
    _set(node, _china(MONDAY + timedelta(days=8)))  # the next Tuesday
    status = await atongban("case", "status", number, *dept("approval"))
    assert status.code == 0, status.stderr
    assert "state: 补正 correction requested" in status.stdout
    assert "受理 accepted → 补正 correction requested  by approval: 补正申请书签字" in status.stdout
    assert "working days stopped in 补正" in status.stdout
    back = await atongban("case", "move", number, "accepted", *dept("approval"), "--json")
    assert back.json()["case"]["stopped_days"] == 5  # Tue..Tue, less the Wednesday holiday
    wrong = await atongban("case", "move", number, "delivered", *dept("approval"), "--json")
    assert wrong.code == 1
    assert wrong.json()["reason"] == "CASE_TRANSITION_INVALID"
    other = await atongban("case", "status", number, *dept("tax"), "--json")
    assert other.json()["reason"] == "CASE_NOT_PERMITTED"
    bad = await atongban("case", "move", number, "finished", *dept("approval"))
    assert bad.code != 0
    assert "not a state to move to" in bad.stderr
