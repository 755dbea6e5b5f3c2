"""The cases behind the supervision report's figures (电子监察, issue 16) over mutual TLS:
real cases opened, sent to 补正 and decided through the client with the node's clock
moved; ``ListSupervisedCases`` lists exactly the cases decided late, decided past the
legal date and sent to 补正 more than once, as many as the report counts; pages of any
size make the whole; tokens are the node's; who may read; each read one access-log entry;
``tongban supervision cases`` and the console's list page."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import aiohttp
import pytest
import pytest_asyncio

from tests.cli_helpers import atongban
from tests.conftest import client_for
from tests.exchange.test_cases import (  # noqa: F401 - cases_node is a fixture
    AT_ONCE,
    ITEM,
    MONDAY,
    _china,
    _item,
    _refused,
    _set,
    cases_node,
)
from tests.stories.restaurant import COMPANY_USCC, OWNER_ID
from tongban.client import CaseOutcome, CaseState, ExchangeClient, SupervisedCase
from tongban.exchange.enrolment import bundle_dir
from tongban.exchange.node import Node
from tongban.exchange.web import LinkStore
from tongban.v1 import cases_pb2, supervision_pb2

SAMR_ITEM = "supervised-samr"  # 1/2 working days, no licence: approved without one
LATE = supervision_pb2.SUPERVISED_CASE_KIND_DECIDED_LATE
PAST_LEGAL = supervision_pb2.SUPERVISED_CASE_KIND_DECIDED_PAST_LEGAL
CORRECTED = supervision_pb2.SUPERVISED_CASE_KIND_CORRECTED_REPEATEDLY
DECIDED, CORRECTION, ACCEPTED = (
    cases_pb2.CASE_STATE_DECIDED,
    cases_pb2.CASE_STATE_CORRECTION,
    cases_pb2.CASE_STATE_ACCEPTED,
)
APPROVED, REFUSED = cases_pb2.CASE_OUTCOME_APPROVED, cases_pb2.CASE_OUTCOME_REFUSED
MONTH = MONDAY.strftime("%Y-%m")
LATER_DAY = MONDAY + timedelta(days=35)  # a Monday in a later month
LATER = LATER_DAY.strftime("%Y-%m")


@pytest_asyncio.fixture
async def supervised_node(cases_node: Node) -> Node:  # noqa: F811 - the imported fixture
    """``test_cases``' node: approval's 3/6-day and 即办 (0/1) items, a holiday on the first
    Wednesday, the clock at Monday 10:00 China time."""
    return cases_node


@dataclass
class Story:
    now: datetime
    n: dict[str, str]
    """Case numbers by name."""


async def _story(node: Node) -> Story:
    """All opened at Monday 10:00 unless said otherwise:

    - a1 (3/6): 补正 twice, decided Tuesday (in time): corrected;
    - a2 (3/6): decided the next Monday, after its promised Friday: late;
    - a3 (即办, 0/1): decided the next Monday, after its legal Tuesday: late, past legal;
    - a4 (即办): decided at 11:00 the day opened: none;
    - a5 (3/6): 补正, back, 补正 again and still there: corrected (not decided);
    - a6 (3/6): 补正 once, decided Tuesday: none;
    - a7 (3/6): opened a Monday five weeks on (another month), decided two weeks later:
      late, past legal;
    - s1 (samr, 1/2): approved the next Monday: late, past legal.
    """
    n: dict[str, str] = {}
    async with client_for(node, "samr") as samr:
        spec = _item(SAMR_ITEM, promised=1, legal=2)
        spec.issues_licence = ""
        await samr.register_item(spec)
        n["s1"] = (await samr.open_case(SAMR_ITEM, COMPANY_USCC)).number
    async with client_for(node, "approval", "SP-1") as approval:
        for name, item, applicant in (
            ("a1", ITEM, COMPANY_USCC), ("a2", ITEM, OWNER_ID), ("a3", AT_ONCE, OWNER_ID),
            ("a4", AT_ONCE, COMPANY_USCC), ("a5", ITEM, COMPANY_USCC), ("a6", ITEM, OWNER_ID),
        ):  # fmt: skip
            n[name] = (await approval.open_case(item, applicant)).number
        _set(node, _china(MONDAY, 11))
        await approval.move_case(n["a4"], DECIDED, outcome=REFUSED, reason="不符合条件")
        _set(node, _china(MONDAY + timedelta(days=1)))
        for name in ("a1", "a1", "a5"):
            await approval.move_case(n[name], CORRECTION, reason="补正")
            await approval.move_case(n[name], ACCEPTED)
        await approval.move_case(n["a5"], CORRECTION, reason="再次补正")
        await approval.move_case(n["a1"], DECIDED, outcome=REFUSED, reason="不符合条件")
        await approval.move_case(n["a6"], CORRECTION, reason="补正")
        await approval.move_case(n["a6"], ACCEPTED)
        await approval.move_case(n["a6"], DECIDED, outcome=REFUSED, reason="不符合条件")
        _set(node, _china(MONDAY + timedelta(days=7)))
        for name in ("a2", "a3"):
            await approval.move_case(n[name], DECIDED, outcome=REFUSED, reason="不符合条件")
    async with client_for(node, "samr") as samr:
        await samr.move_case(n["s1"], DECIDED, outcome=APPROVED)
    async with client_for(node, "approval", "SP-1") as approval:
        _set(node, _china(LATER_DAY))
        n["a7"] = (await approval.open_case(ITEM, COMPANY_USCC)).number
        _set(node, _china(LATER_DAY + timedelta(days=14)))
        await approval.move_case(n["a7"], DECIDED, outcome=REFUSED, reason="不符合条件")
    now = _china(LATER_DAY + timedelta(days=14), 11)
    _set(node, now)
    return Story(now, n)


def _order(story: Story, *names: str) -> list[str]:
    """The numbers of ``names`` in the list's order: by opening, then number (a7 alone was
    opened later; the others at the same instant)."""
    first = sorted(story.n[name] for name in names if name != "a7")
    return first + ([story.n["a7"]] if "a7" in names else [])


async def _pages(
    client: ExchangeClient,
    kind: supervision_pb2.SupervisedCaseKind.ValueType,
    department: str = "",
    month: str = "",
    page_size: int = 0,
) -> list[list[SupervisedCase]]:
    pages = []
    token = ""
    while True:
        page = await client.list_supervised_cases(kind, department, month, page_size, token)
        pages.append(list(page.cases))
        token = page.next_page_token
        if not token:
            return pages


async def _listed(client: ExchangeClient, *args: object) -> list[str]:
    return [c.number for p in await _pages(client, *args) for c in p]  # type: ignore[arg-type]


async def _logged(node: Node) -> list[tuple[object, ...]]:
    assert node.db is not None
    rows = await node.db.pool.fetch(
        "SELECT caller, officer, decision, purpose, case_id, subject_hmac, reason"
        " FROM access_log WHERE action = 'case.supervision' ORDER BY idx"
    )
    return [tuple(r) for r in rows]


async def test_lists_match_the_cases_and_the_report(supervised_node: Node) -> None:
    node = supervised_node
    story = await _story(node)
    n = story.n
    async with client_for(node, "approval", "SP-7") as approval:
        late = await approval.list_supervised_cases(LATE)
        assert [c.number for c in late.cases] == _order(story, "a2", "a3", "a7")
        assert late.next_page_token == ""
        assert late.at == story.now
        # Every field as GetCase reads it (decided cases: their dates are final).
        for listed in late.cases:
            case = await approval.get_case(listed.number)
            assert (
                listed.item,
                listed.item_version,
                listed.department,
                listed.applicant,
                listed.state,
                listed.outcome,
            ) == (
                case.item,
                case.item_version,
                "approval",
                case.applicant,
                CaseState.DECIDED,
                CaseOutcome.REFUSED,
            )
            for stamp in ("opened_at", "promised_due_at", "legal_due_at", "decided_at"):
                assert getattr(listed, stamp) == getattr(case, stamp), stamp
            assert listed.decided_at is not None
            assert listed.decided_at > listed.promised_due_at
            assert listed.corrections == 0
        past = await _listed(approval, PAST_LEGAL)
        assert past == _order(story, "a3", "a7")
        corrected = (await approval.list_supervised_cases(CORRECTED)).cases
        assert [(c.number, c.corrections, c.state) for c in corrected] == [
            (number, 2, CaseState.DECIDED if number == n["a1"] else CaseState.CORRECTION)
            for number in _order(story, "a1", "a5")
        ]
        a5 = next(c for c in corrected if c.number == n["a5"])
        assert a5.decided_at is None
        assert a5.outcome == CaseOutcome.UNSPECIFIED
        # The same lists named as the department's own.
        assert await _listed(approval, LATE, "approval") == _order(story, "a2", "a3", "a7")

        # Pages of one and of two make the whole; a page that ends the list has no token.
        for kind, whole in ((LATE, 3), (PAST_LEGAL, 2), (CORRECTED, 2)):
            every = await _listed(approval, kind)
            assert len(every) == whole
            for size in (1, 2):
                pages = await _pages(approval, kind, page_size=size)
                assert [c.number for p in pages for c in p] == every
                assert all(len(p) == size for p in pages[:-1])
                assert 1 <= len(pages[-1]) <= size
            assert len(await _pages(approval, kind, page_size=whole)) == 1

        # The month filter: the month opened, where the offices are.
        assert await _listed(approval, LATE, "", MONTH) == _order(story, "a2", "a3")
        assert await _listed(approval, LATE, "", LATER) == [n["a7"]]
        assert await _listed(approval, CORRECTED, "", LATER) == []
        one = await _pages(approval, LATE, "", MONTH, 1)
        assert [c.number for p in one for c in p] == _order(story, "a2", "a3")

        # As many as the report counts, cell by cell.
        report = await approval.supervision_report()
    for row in report.rows:
        async with client_for(node, "approval") as approval:
            cells = {
                kind: len(await _listed(approval, kind, row.department, row.month))
                for kind in (LATE, PAST_LEGAL, CORRECTED)
            }
        assert cells == {
            LATE: row.decided_late,
            PAST_LEGAL: row.decided_past_legal,
            CORRECTED: row.corrected_repeatedly,
        }, row.month

    # The auditor: every department's, by opening then number, or one department's.
    async with client_for(node, "audit") as audit:
        assert await _listed(audit, LATE) == _order(story, "a2", "a3", "s1", "a7")
        assert await _listed(audit, PAST_LEGAL, "", "", 1) == _order(story, "a3", "s1", "a7")
        samr = (await audit.list_supervised_cases(LATE, "samr")).cases
        assert [(c.number, c.department, c.outcome) for c in samr] == [
            (n["s1"], "samr", CaseOutcome.APPROVED)
        ]
        assert await _listed(audit, LATE, "audit") == []  # it handles no items

    # Each call is one entry: who, what was asked, no case, no subject.
    logged = await _logged(node)
    assert logged[0] == ("approval", "SP-7", "allowed", "supervision late", None, None, None)
    assert ("approval", "SP-7", "allowed", f"supervision late month={MONTH}", None, None, None) in (
        logged
    )
    assert ("audit", None, "allowed", "supervision late department=samr", None, None, None) in (
        logged
    )
    assert all(r[2] == "allowed" and r[4] is None and r[5] is None for r in logged)
    before = len(logged)
    async with client_for(node, "audit") as audit:
        assert len(await _pages(audit, LATE, page_size=1)) == 4
    assert len(await _logged(node)) == before + 4  # page by page


async def test_refusals_and_tokens(supervised_node: Node) -> None:
    node = supervised_node
    await _story(node)
    # Another department's list without the auditor role: refused and logged as a denial.
    other = await _refused(node, "approval", "list_supervised_cases", LATE, "samr", MONTH)
    assert other.reason == "CASE_NOT_PERMITTED"
    assert await _logged(node) == [
        (
            "approval",
            None,
            "denied",
            f"supervision late department=samr month={MONTH}",
            None,
            None,
            "CASE_NOT_PERMITTED",
        )
    ]
    unknown = await _refused(node, "audit", "list_supervised_cases", LATE, "nosuch")
    assert unknown.reason == "DEPARTMENT_NOT_FOUND"
    for args, field in (
        ((supervision_pb2.SUPERVISED_CASE_KIND_UNSPECIFIED,), "kind"),
        ((9,), "kind"),
        ((LATE, "", "2026-13"), "month"),
        ((LATE, "", "26-01"), "month"),
        ((LATE, "", "", 1001), "page_size"),
    ):
        bad = await _refused(node, "approval", "list_supervised_cases", *args)
        assert (bad.reason, bad.metadata.get("field")) == ("INVALID_ARGUMENT", field), args
    assert len(await _logged(node)) == 1  # bad requests are not reads

    # Tokens are the node's, for one listing: kind, department and month.
    async with client_for(node, "approval") as approval:
        token = (await approval.list_supervised_cases(LATE, page_size=1)).next_page_token
        month_token = (
            await approval.list_supervised_cases(LATE, "", MONTH, page_size=1)
        ).next_page_token
    assert token
    assert month_token
    altered = token[:-1] + ("A" if token[-1] != "A" else "B")
    for dept, kind, department, month, forged in (
        ("approval", LATE, "", "", "c2Ftci5h"),
        ("approval", LATE, "", "", altered),
        ("approval", CORRECTED, "", "", token),  # another kind's
        ("approval", LATE, "", LATER, month_token),  # another month's
        ("approval", LATE, "", "", month_token),  # a month's, for every month
        ("audit", LATE, "", "", token),  # approval's, handed to the auditor (every one's)
    ):
        refused = await _refused(
            node, dept, "list_supervised_cases", kind, department, month, 1, forged
        )
        assert refused.reason == "PAGE_TOKEN_INVALID", (dept, kind, month)
    async with client_for(node, "audit") as audit:
        # The auditor naming approval reads the same listing as approval itself.
        rest = await audit.list_supervised_cases(LATE, "approval", "", 5, token)
    assert len(rest.cases) == 2


@pytest.mark.timeout(120)
async def test_command_and_console_page(supervised_node: Node) -> None:
    node = supervised_node
    story = await _story(node)
    n = story.n
    endpoint = f"127.0.0.1:{node.grpc_port}"

    def dept(code: str) -> list[str]:
        return ["--as", str(bundle_dir(node.settings, code)), "--endpoint", endpoint]

    listed = await atongban(
        "supervision", "cases", "--kind", "late", "--limit", "3", *dept("audit"), "--json"
    )
    assert listed.code == 0, listed.stdout + listed.stderr
    out = listed.json()
    assert [c["number"] for c in out["cases"]] == _order(story, "a2", "a3", "s1")
    assert out["more"] is True
    text = await atongban(
        "supervision", "cases", "--kind", "corrected", "--month", MONTH, *dept("approval")
    )
    assert text.code == 0, text.stderr
    lines = text.stdout.splitlines()
    assert [line.split()[0] for line in lines] == _order(story, "a1", "a5")
    assert all(line.endswith("补正x2") for line in lines)
    assert "not decided" in lines[[line.split()[0] for line in lines].index(n["a5"])]
    refused = await atongban(
        "supervision", "cases", "--kind", "late", "--department", "samr", *dept("approval"),
        "--json",
    )  # fmt: skip
    assert (refused.code, refused.json()["reason"]) == (1, "CASE_NOT_PERMITTED")

    base = f"http://127.0.0.1:{node.http_port}"
    page_path = "/console/supervision/cases"
    assert node.db is not None
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(f"{base}{page_path}?kind=late") as answer:
            assert answer.status == 401
        for who, status in (("approval", 403), ("audit", 200)):
            login = await LinkStore(node.db.pool).issue("login", who, node.clock.now())
            async with http.post(
                f"{base}/console/link/login", data={"token": login}, allow_redirects=False
            ) as opened:
                assert opened.status == 303
            async with http.get(f"{base}{page_path}?kind=late&lang=en") as answer:
                assert answer.status == status, await answer.text()
        before = len(await _logged(node))
        # The report links each cell to its list.
        async with http.get(f"{base}/console/supervision", params={"from": MONTH}) as answer:
            report = await answer.text()
        link = f"{page_path}?kind=late&amp;department=approval&amp;month={MONTH}"
        assert f'<a href="{link}">2</a>' in report
        assert f"{page_path}?kind=past-legal&amp;department=samr&amp;month={MONTH}" in report
        assert f"{page_path}?kind=corrected&amp;department=approval&amp;month={MONTH}" in report
        async with http.get(f"{base}{link.replace('&amp;', '&')}") as answer:
            page = await answer.text()
            assert answer.status == 200, page
        assert [n[name] in page for name in ("a2", "a3", "a7", "s1")] == [True, True, False, False]
        assert 'id="next"' not in page
        # Paged with the node's tokens: a gRPC page's token opens the console's next page.
        async with client_for(node, "audit") as audit:
            first = await audit.list_supervised_cases(CORRECTED, "approval", MONTH, 1)
        async with http.get(
            f"{base}{page_path}",
            params={
                "kind": "corrected",
                "department": "approval",
                "month": MONTH,
                "page": first.next_page_token,
            },
        ) as answer:
            rest = await answer.text()
            assert answer.status == 200, rest
        assert first.cases[0].number not in rest
        (second,) = (name for name in ("a1", "a5") if n[name] != first.cases[0].number)
        assert n[second] in rest
        assert '<td class="corrections">2</td>' in rest
        for params, status, reason in (
            ({"kind": "late", "page": "c2Ftci5h"}, 400, "PAGE_TOKEN_INVALID"),
            ({"kind": "nonsense"}, 400, "INVALID_ARGUMENT"),
            ({"kind": "late", "month": "<b>x</b>"}, 400, "INVALID_ARGUMENT"),
            ({"kind": "late", "department": "<b>x</b>"}, 404, "DEPARTMENT_NOT_FOUND"),
        ):
            async with http.get(f"{base}{page_path}", params=params) as answer:
                body = await answer.text()
                assert answer.status == status, body
                assert reason in body
                assert "<b>x</b>" not in body
    # Each list view was one entry, by the auditor's session.
    views = (await _logged(node))[before:]
    assert [(r[0], r[2], r[3]) for r in views] == [
        ("audit", "allowed", f"supervision late department=approval month={MONTH}"),
        ("audit", "allowed", f"supervision corrected department=approval month={MONTH}"),
        ("audit", "allowed", f"supervision corrected department=approval month={MONTH}"),
    ]
