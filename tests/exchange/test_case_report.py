"""The overdue report (电子监察) over cases opened and moved through the node: counts per
department, pages of overdue cases, and agreement with ``GetCase``'s ``overdue`` for the
cases in 受理. Cases in 补正 are counted apart, never overdue."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio

from tests.conftest import client_for
from tests.exchange.test_cases import (  # noqa: F401 - cases_node is a fixture
    AT_ONCE,
    ITEM,
    MONDAY,
    _china,
    _item,
    _set,
    cases_node,
)
from tests.stories.restaurant import COMPANY_USCC, OWNER_ID
from tongban.client import CaseOverdue
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.licensing.case_report import (
    DepartmentOverdue,
    OverdueCase,
    overdue_cases,
    overdue_report,
)
from tongban.exchange.licensing.cases import Overdue
from tongban.exchange.node import Node
from tongban.v1 import cases_pb2

SAMR_ITEM = "report-test-samr"


@pytest_asyncio.fixture
async def report_node(cases_node: Node) -> Node:  # noqa: F811 - the imported fixture
    """``test_cases``' node: approval's 3/6-day and 即办 items, a holiday on the first
    Wednesday, the clock at Monday 10:00 China time."""
    return cases_node


_SEVERITY = {
    CaseOverdue.NONE: Overdue.NONE,
    CaseOverdue.PROMISED: Overdue.PROMISED,
    CaseOverdue.LEGAL: Overdue.LEGAL,
}


async def _all(
    node: Node,
    severity: Overdue,
    now: datetime,
    *,
    department: str | None = None,
    limit: int = 100,
) -> list[OverdueCase]:
    """Every page of the list, following each page's last position."""
    assert node.db is not None
    found: list[OverdueCase] = []
    after: str | None = None
    while True:
        page = await overdue_cases(
            node.db.pool,
            now=now,
            department=department,
            severity=severity,
            limit=limit,
            after=after,
        )
        found += page
        if not page:
            return found
        after = page[-1].position


async def test_counts_per_department_and_correction_is_not_overdue(report_node: Node) -> None:
    node = report_node
    assert node.db is not None
    async with client_for(node, "samr") as samr:
        await samr.register_item(_item(SAMR_ITEM, promised=1, legal=2))
        theirs = await samr.open_case(SAMR_ITEM, COMPANY_USCC)
    async with client_for(node, "approval") as approval:
        # Monday 10:00. ITEM: promised by Friday, legal by the next Wednesday (MONDAY + 9).
        slow = await approval.open_case(ITEM, OWNER_ID)
        quick = await approval.open_case(AT_ONCE, COMPANY_USCC)  # Monday / Tuesday
        paused = await approval.open_case(ITEM, COMPANY_USCC)
        closed = await approval.open_case(AT_ONCE, OWNER_ID)
        _set(node, _china(MONDAY + timedelta(days=1)))
        await approval.move_case(paused.number, cases_pb2.CASE_STATE_CORRECTION, reason="补正")
        await approval.move_case(
            closed.number,
            cases_pb2.CASE_STATE_DECIDED,
            outcome=cases_pb2.CASE_OUTCOME_REFUSED,
            reason="不符合条件",
        )

    pool = node.db.pool
    monday = await overdue_report(pool, now=_china(MONDAY, 12))
    assert monday.departments == (
        DepartmentOverdue("approval", open=3, in_correction=1, past_promised=0, past_legal=0),
        DepartmentOverdue("samr", open=1, in_correction=0, past_promised=0, past_legal=0),
    )
    # Wednesday (the holiday): the 即办 case is past its legal date (Tuesday night).
    wednesday = await overdue_report(pool, now=_china(MONDAY + timedelta(days=2)))
    assert wednesday.departments[0] == DepartmentOverdue("approval", 3, 1, 0, 1)
    # samr's 1/2-day item: promised Tuesday, legal Thursday (the Wednesday is a holiday).
    assert wednesday.departments[1] == DepartmentOverdue("samr", 1, 0, 1, 0)
    # The next Monday: slow is past its promised date, not its legal one; paused, opened
    # with the same dates, is in 补正 and so not overdue; closed is not open.
    later = await overdue_report(pool, now=_china(MONDAY + timedelta(days=7)))
    assert later.departments == (
        DepartmentOverdue("approval", 3, 1, past_promised=1, past_legal=1),
        DepartmentOverdue("samr", 1, 0, past_promised=0, past_legal=1),
    )
    assert (later.open, later.in_correction, later.past_promised, later.past_legal) == (4, 1, 1, 2)
    only = await overdue_report(pool, now=_china(MONDAY + timedelta(days=7)), department="samr")
    assert only.departments == (DepartmentOverdue("samr", 1, 0, 0, 1),)
    assert (await overdue_report(pool, now=later.now, department="tax")).departments == ()

    promised = await _all(node, Overdue.PROMISED, later.now)
    assert [(c.number, c.applicant, c.item) for c in promised] == [(slow.number, OWNER_ID, ITEM)]
    legal = await _all(node, Overdue.LEGAL, later.now)
    assert [c.number for c in legal] == [quick.number, theirs.number]  # by legal date
    assert legal[0].due_at == legal[0].legal_due_at < legal[1].legal_due_at
    assert [c.number for c in await _all(node, Overdue.LEGAL, later.now, department="samr")] == [
        theirs.number
    ]
    # Back from 补正 a week later, paused has its dates moved on and is in time again.
    _set(node, _china(MONDAY + timedelta(days=8)))
    async with client_for(node, "approval") as approval:
        back = await approval.move_case(paused.number, cases_pb2.CASE_STATE_ACCEPTED)
    assert back.stopped_days == 4  # Thu, Fri, Mon, Tue
    after_return = await overdue_report(pool, now=_china(MONDAY + timedelta(days=8)))
    assert after_return.departments[0] == DepartmentOverdue("approval", 3, 0, 1, 1)


async def test_the_report_agrees_with_get_case(report_node: Node) -> None:
    """For cases in 受理, each instant's lists hold exactly the cases GetCase calls overdue,
    with the same severity."""
    node = report_node
    numbers = []
    async with client_for(node, "approval") as approval:
        for day in range(3):
            _set(node, _china(MONDAY + timedelta(days=day), 9 + day))
            for item in (ITEM, AT_ONCE):
                numbers.append((await approval.open_case(item, COMPANY_USCC)).number)
        for offset in (0, 1, 2, 3, 5, 7, 9, 10, 14):
            now = _china(MONDAY + timedelta(days=offset), 15)
            _set(node, now)
            expected = {
                number: _SEVERITY[(await approval.get_case(number)).overdue] for number in numbers
            }
            listed = {c.number: c.severity for c in await _all(node, Overdue.PROMISED, now)}
            listed.update({c.number: c.severity for c in await _all(node, Overdue.LEGAL, now)})
            assert listed == {n: s for n, s in expected.items() if s is not Overdue.NONE}, offset
            assert node.db is not None
            report = await overdue_report(node.db.pool, now=now)
            counts = list(expected.values())
            assert (report.past_promised, report.past_legal) == (
                counts.count(Overdue.PROMISED),
                counts.count(Overdue.LEGAL),
            )


async def test_pages_follow_due_date_then_number(report_node: Node) -> None:
    node = report_node
    assert node.db is not None
    async with client_for(node, "approval") as approval:
        for day in (0, 0, 0, 1, 1, 3, 3, 3):  # 即办 cases, several with the same due dates
            _set(node, _china(MONDAY + timedelta(days=day)))
            await approval.open_case(AT_ONCE, OWNER_ID)
    now = _china(MONDAY + timedelta(days=14))
    whole = await _all(node, Overdue.LEGAL, now, limit=1000)
    assert len(whole) == 8
    assert [(c.legal_due_at, c.number) for c in whole] == sorted(
        (c.legal_due_at, c.number) for c in whole
    )
    for size in (1, 2, 3, 7):
        assert await _all(node, Overdue.LEGAL, now, limit=size) == whole
    # The same page again from a position given in another zone's spelling.
    third = whole[2]
    moved = f"{third.legal_due_at.astimezone(UTC).isoformat()}|{third.number}"
    page = await overdue_cases(
        node.db.pool, now=now, department="approval", severity=Overdue.LEGAL, limit=3, after=moved
    )
    assert page == whole[3:6]
    assert await _all(node, Overdue.PROMISED, now) == []  # all past the legal date too


@pytest.mark.parametrize(
    ("severity", "limit", "after", "field"),
    [
        (Overdue.NONE, 10, None, "severity"),
        (Overdue.LEGAL, 0, None, "limit"),
        (Overdue.LEGAL, 1001, None, "limit"),
        (Overdue.LEGAL, 10, "approval-2026-0000000000", "after"),
        (Overdue.LEGAL, 10, "2026-03-06T00:00:00|approval-2026-0000000000", "after"),
        (Overdue.PROMISED, 10, "yesterday|approval-2026-0000000000", "after"),
        (Overdue.PROMISED, 10, "2026-03-06T00:00:00+08:00|", "after"),
    ],
)
async def test_bad_arguments_are_refused(
    report_node: Node, severity: Overdue, limit: int, after: str | None, field: str
) -> None:
    assert report_node.db is not None
    with pytest.raises(InvalidArgument) as caught:
        await overdue_cases(
            report_node.db.pool,
            now=_china(MONDAY),
            department=None,
            severity=severity,
            limit=limit,
            after=after,
        )
    assert caught.value.metadata == {"field": field}
