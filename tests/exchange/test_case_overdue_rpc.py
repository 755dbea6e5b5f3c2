"""The overdue report (电子监察) over mutual TLS: ``OverdueReport`` and ``ListOverdueCases``
answer what ``case_report``'s functions find at the node's clock; a department reads its
own, the auditor any; page tokens are the node's; each list read is one access-log entry;
and ``tongban case overdue``."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import pytest_asyncio

from tests.cli_helpers import atongban
from tests.conftest import client_for
from tests.exchange.test_cases import (  # noqa: F401 - cases_node is a fixture
    AT_ONCE,
    CHINA,
    ITEM,
    MONDAY,
    _china,
    _item,
    _refused,
    _set,
    cases_node,
)
from tests.stories.restaurant import COMPANY_USCC, OWNER_ID
from tongban import client
from tongban.client import CaseOverdue, ExchangeClient
from tongban.exchange.enrolment import bundle_dir
from tongban.exchange.licensing.case_report import OverdueCase, overdue_cases, overdue_report
from tongban.exchange.licensing.cases import Overdue
from tongban.exchange.node import Node
from tongban.v1 import cases_pb2

SAMR_ITEM = "overdue-rpc-samr"


@pytest_asyncio.fixture
async def overdue_node(cases_node: Node) -> Node:  # noqa: F811 - the imported fixture
    """``test_cases``' node: approval's 3/6-day and 即办 items, a holiday on the first
    Wednesday, the clock at Monday 10:00 China time."""
    return cases_node


PROMISED = cases_pb2.CASE_OVERDUE_PROMISED
LEGAL = cases_pb2.CASE_OVERDUE_LEGAL
_SEVERITY = {CaseOverdue.PROMISED: Overdue.PROMISED, CaseOverdue.LEGAL: Overdue.LEGAL}

Row = tuple[str, str, str, int, str, datetime, datetime, datetime, Overdue]


async def _open_cases(node: Node) -> datetime:
    """approval: a 3/6-day case of a citizen (past its promised date at the end), one in
    补正, and five 即办 cases (past their legal dates); samr: one 1/2-day case (past its
    legal date). Returns the instant everything is measured at: the next Monday."""
    async with client_for(node, "samr") as samr:
        await samr.register_item(_item(SAMR_ITEM, promised=1, legal=2))
        await samr.open_case(SAMR_ITEM, COMPANY_USCC)
    async with client_for(node, "approval") as approval:
        await approval.open_case(ITEM, OWNER_ID)
        paused = await approval.open_case(ITEM, COMPANY_USCC)
        for day, applicant in ((0, OWNER_ID), (0, COMPANY_USCC), (0, OWNER_ID), (1, OWNER_ID)):
            _set(node, _china(MONDAY + timedelta(days=day), 11 + day))
            await approval.open_case(AT_ONCE, applicant)
        await approval.open_case(AT_ONCE, COMPANY_USCC)
        await approval.move_case(paused.number, cases_pb2.CASE_STATE_CORRECTION, reason="补正")
    now = _china(MONDAY + timedelta(days=7))
    _set(node, now)
    return now


def _expected(cases: list[OverdueCase]) -> list[Row]:
    return [
        (
            c.number,
            c.department,
            c.item,
            c.item_version,
            c.applicant,
            c.promised_due_at,
            c.legal_due_at,
            c.due_at,
            c.severity,
        )
        for c in cases
    ]


def _rows(cases: list[client.OverdueCase]) -> list[Row]:
    return [
        (
            c.number,
            c.department,
            c.item,
            c.item_version,
            c.applicant,
            c.promised_due_at,
            c.legal_due_at,
            c.due_at,
            _SEVERITY[c.severity],
        )
        for c in cases
    ]


async def _pages(
    client: ExchangeClient,
    severity: cases_pb2.CaseOverdue.ValueType,
    department: str = "",
    page_size: int = 0,
) -> list[list[client.OverdueCase]]:
    """Every page of the list, following the tokens."""
    pages = []
    token = ""
    while True:
        page = await client.list_overdue_cases(severity, department, page_size, token)
        pages.append(list(page.cases))
        token = page.next_page_token
        if not token:
            return pages


async def _reference(
    node: Node, severity: Overdue, now: datetime, department: str | None
) -> list[Row]:
    assert node.db is not None
    return _expected(
        await overdue_cases(
            node.db.pool, now=now, department=department, severity=severity, limit=1000
        )
    )


async def _logged(node: Node) -> list[tuple[object, ...]]:
    assert node.db is not None
    rows = await node.db.pool.fetch(
        "SELECT caller, officer, decision, purpose, case_id, subject_hmac, reason"
        " FROM access_log WHERE action = 'case.overdue' ORDER BY idx"
    )
    return [tuple(r) for r in rows]


async def test_report_and_pages_match_case_report(overdue_node: Node) -> None:
    node = overdue_node
    assert node.db is not None
    now = await _open_cases(node)
    reference = await overdue_report(node.db.pool, now=now)
    assert (reference.open, reference.in_correction) == (8, 1)
    assert (reference.past_promised, reference.past_legal) == (1, 6)

    def counts(response: client.OverdueReport) -> list[tuple[str, int, int, int, int]]:
        return [
            (d.department, d.open, d.in_correction, d.past_promised, d.past_legal)
            for d in response.departments
        ]

    by_department = {
        d.department: (d.department, d.open, d.in_correction, d.past_promised, d.past_legal)
        for d in reference.departments
    }
    async with client_for(node, "approval", "SP-0007") as approval:
        own = await approval.overdue_report()
        assert own.at == now
        assert counts(own) == [by_department["approval"]]
        assert counts(await approval.overdue_report("approval")) == counts(own)

        legal = await _reference(node, Overdue.LEGAL, now, "approval")
        assert len(legal) == 5
        assert _rows([c for p in await _pages(approval, LEGAL) for c in p]) == legal
        # Pages of two: 2, 2, 1. A page that ends the list exactly gives no token.
        two = await _pages(approval, LEGAL, page_size=2)
        assert [len(p) for p in two] == [2, 2, 1]
        assert _rows([c for p in two for c in p]) == legal
        assert [len(p) for p in await _pages(approval, LEGAL, page_size=5)] == [5]
        promised = await approval.list_overdue_cases(PROMISED)
        assert _rows(list(promised.cases)) == await _reference(
            node, Overdue.PROMISED, now, "approval"
        )
        assert [c.applicant for c in promised.cases] == [OWNER_ID]
        assert promised.next_page_token == ""
    async with client_for(node, "samr") as samr:
        assert counts(await samr.overdue_report()) == [by_department["samr"]]
        assert _rows(list((await samr.list_overdue_cases(LEGAL)).cases)) == await _reference(
            node, Overdue.LEGAL, now, "samr"
        )
    # Each list call is one entry: the caller, what it asked, no case and no subject.
    # The counts name nobody and are not logged.
    logged = await _logged(node)
    assert len(logged) == 1 + 3 + 1 + 1 + 1  # the calls above, page by page
    assert logged[0] == ("approval", "SP-0007", "allowed", "overdue legal", None, None, None)
    assert {(r[0], r[3]) for r in logged} == {
        ("approval", "overdue legal"),
        ("approval", "overdue promised"),
        ("samr", "overdue legal"),
    }
    assert all(r[2] == "allowed" and r[4] is None and r[5] is None for r in logged)


async def test_auditor_reads_every_department(overdue_node: Node) -> None:
    node = overdue_node
    assert node.db is not None
    now = await _open_cases(node)
    reference = await overdue_report(node.db.pool, now=now)
    async with client_for(node, "audit") as audit:
        every = await audit.overdue_report()
        assert [
            (d.department, d.open, d.past_promised, d.past_legal) for d in every.departments
        ] == [(d.department, d.open, d.past_promised, d.past_legal) for d in reference.departments]
        samr_only = await audit.overdue_report("samr")
        assert [d.department for d in samr_only.departments] == ["samr"]
        assert (await audit.overdue_report("audit")).departments == ()  # it handles none
        pages = await _pages(audit, LEGAL, page_size=3)
        assert [len(p) for p in pages] == [3, 3]
        assert _rows([c for p in pages for c in p]) == await _reference(
            node, Overdue.LEGAL, now, None
        )
        assert {c.department for p in pages for c in p} == {"approval", "samr"}
        samr_cases = await audit.list_overdue_cases(LEGAL, "samr")
        assert _rows(list(samr_cases.cases)) == await _reference(node, Overdue.LEGAL, now, "samr")
    assert [(r[0], r[2], r[3]) for r in await _logged(node)] == [
        ("audit", "allowed", "overdue legal"),
        ("audit", "allowed", "overdue legal"),
        ("audit", "allowed", "overdue legal department=samr"),
    ]


async def test_refusals(overdue_node: Node) -> None:
    node = overdue_node
    await _open_cases(node)
    # Another department's report or list, without the auditor role; the list attempt is
    # logged as a denial.
    report = await _refused(node, "approval", "overdue_report", "samr")
    assert report.reason == "CASE_NOT_PERMITTED"
    listing = await _refused(node, "approval", "list_overdue_cases", LEGAL, "samr")
    assert listing.reason == "CASE_NOT_PERMITTED"
    assert await _logged(node) == [
        (
            "approval",
            None,
            "denied",
            "overdue legal department=samr",
            None,
            None,
            "CASE_NOT_PERMITTED",
        )
    ]
    # Page tokens are the node's, for one listing: forged, altered, or another listing's.
    async with client_for(node, "approval") as approval:
        first = await approval.list_overdue_cases(LEGAL, page_size=2)
    async with client_for(node, "audit") as audit:
        everyone = await audit.list_overdue_cases(LEGAL, page_size=2)
    token = first.next_page_token
    assert token
    altered = token[:-1] + ("A" if token[-1] != "A" else "B")
    for dept, severity, department, forged in (
        ("approval", LEGAL, "", "c2Ftci5h"),
        ("approval", LEGAL, "", altered),
        ("approval", PROMISED, "", token),  # the other severity's list
        ("approval", LEGAL, "", everyone.next_page_token),  # the auditor's list of all
        ("audit", LEGAL, "", token),  # approval's list, handed to the auditor
    ):
        refused = await _refused(node, dept, "list_overdue_cases", severity, department, 2, forged)
        assert refused.reason == "PAGE_TOKEN_INVALID", forged
    # The same token still works where it belongs.
    async with client_for(node, "approval") as approval:
        second = await approval.list_overdue_cases(LEGAL, page_size=2, page_token=token)
    assert len(second.cases) == 2
    # Bad arguments.
    for severity, page_size, field in (
        (cases_pb2.CASE_OVERDUE_NONE, 0, "severity"),
        (LEGAL, 5000, "page_size"),
        (PROMISED, 1001, "page_size"),
    ):
        bad = await _refused(node, "approval", "list_overdue_cases", severity, "", page_size)
        assert (bad.reason, bad.metadata.get("field")) == ("INVALID_ARGUMENT", field)
    unknown = await _refused(node, "approval", "list_overdue_cases", 7)
    assert unknown.reason == "INVALID_ARGUMENT"


@pytest.mark.timeout(120)
async def test_case_overdue_command(overdue_node: Node) -> None:
    node = overdue_node
    assert node.db is not None
    now = await _open_cases(node)
    endpoint = f"127.0.0.1:{node.grpc_port}"

    def dept(code: str) -> list[str]:
        return ["--as", str(bundle_dir(node.settings, code)), "--endpoint", endpoint]

    table = await atongban("case", "overdue", *dept("audit"))
    assert table.code == 0, table.stdout + table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "DEPARTMENT",
        "OPEN",
        "CORRECTION",
        "PAST",
        "PROMISED",
        "PAST",
        "LEGAL",
    ]
    assert lines[1].split() == ["approval", "7", "1", "1", "5"]
    assert lines[2].split() == ["samr", "1", "0", "0", "1"]
    assert lines[3].split() == ["total", "8", "1", "1", "6"]

    listed = await atongban(
        "case", "overdue", "--severity", "legal", "--limit", "3", *dept("approval"), "--json"
    )
    assert listed.code == 0, listed.stdout + listed.stderr
    out = listed.json()
    legal = await _reference(node, Overdue.LEGAL, now, "approval")
    assert [c["number"] for c in out["cases"]] == [row[0] for row in legal[:3]]
    assert out["more"] is True

    text = await atongban("case", "overdue", "--severity", "promised", *dept("approval"))
    assert text.code == 0, text.stderr
    (promised,) = await _reference(node, Overdue.PROMISED, now, "approval")
    due = promised[7].astimezone(CHINA).strftime("%Y-%m-%d %H:%M")
    assert text.stdout.split() == [promised[0], ITEM, OWNER_ID, "promised", "due", *due.split()]

    other = await atongban("case", "overdue", "--department", "samr", *dept("approval"), "--json")
    assert other.code == 1
    assert other.json()["reason"] == "CASE_NOT_PERMITTED"
