"""Electronic supervision (电子监察, issue 16) over mutual TLS: real cases opened and moved
through the client, materials resolved for them (the record of which were obtained
electronically), the node's clock moved; the report's figures checked exactly over gRPC,
the CLI, /metrics and the console page; bad input refused with its reason code."""

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
from tests.stories.restaurant import BUSINESS_LICENCE_CLAIMS, COMPANY_USCC, OWNER_ID
from tongban.client import Case, SupervisionRow
from tongban.exchange.enrolment import bundle_dir
from tongban.exchange.node import Node
from tongban.exchange.web import LinkStore
from tongban.v1 import cases_pb2, items_pb2

ONLINE = "supervision-online"  # one required licence material, one optional submitted
MIXED = "supervision-mixed"  # a required licence material and a required submitted one
SAMR_ITEM = "supervision-samr"
DECIDED = cases_pb2.CASE_STATE_DECIDED
APPROVED, REFUSED = cases_pb2.CASE_OUTCOME_APPROVED, cases_pb2.CASE_OUTCOME_REFUSED
MONTH = MONDAY.strftime("%Y-%m")  # every case is opened on MONDAY


@pytest_asyncio.fixture
async def supervision_node(cases_node: Node) -> Node:  # noqa: F811 - the imported fixture
    """``test_cases``' node: approval's 3/6-day and 即办 items, a holiday on the first
    Wednesday, the clock at Monday 10:00 China time."""
    return cases_node


def _materials_item(code: str, *, plan_required: bool) -> items_pb2.ItemSpec:
    return items_pb2.ItemSpec(
        code=code,
        name="监察测试许可",
        legal_basis="《测试条例》第二条",
        purpose="监察测试审批",
        legal_limit_days=6,
        promised_limit_days=3,
        materials=[
            items_pb2.Material(
                code="business-licence",
                name="营业执照",
                required=True,
                licence=items_pb2.LicenceSource(licence_type="business-licence"),
            ),
            items_pb2.Material(
                code="sign-plan",
                name="招牌设置方案",
                required=plan_required,
                submitted=items_pb2.SubmittedSource(),
            ),
        ],
    )


@dataclass
class Story:
    now: datetime
    decided: list[Case]
    """approval's decided cases, as GetCase reads them at the end."""
    numbers: dict[str, str]


async def _story(node: Node) -> Story:
    """approval's ten cases and samr's one, all opened on Monday 10:00; moved, resolved and
    decided over the next week; measured the next Monday 11:00 (see the figures below)."""
    async with client_for(node, "samr", "SC-1") as samr:
        await samr.register_item(_item(SAMR_ITEM, promised=1, legal=2))
        s1 = await samr.open_case(SAMR_ITEM, COMPANY_USCC)
        await samr.issue_licence("business-licence", BUSINESS_LICENCE_CLAIMS, case_id="DJ-1")
    async with client_for(node, "approval", "SP-1") as approval:
        await approval.register_item(_materials_item(ONLINE, plan_required=False))
        await approval.register_item(_materials_item(MIXED, plan_required=True))
        c: dict[str, str] = {}
        for name, item in (
            ("c1", ITEM), ("c2", AT_ONCE), ("c3", ITEM), ("c4", ITEM), ("c5", AT_ONCE),
            ("c6", ITEM), ("c7", ONLINE), ("c8", MIXED), ("c9", MIXED), ("c10", MIXED),
        ):  # fmt: skip
            c[name] = (await approval.open_case(item, COMPANY_USCC)).number
        # Monday 10:00: resolutions of c7 (fully online), c8 and c10 (one of two required
        # materials electronic); and some that must record nothing.
        for name, item in (("c7", ONLINE), ("c8", MIXED), ("c10", MIXED)):
            resolved = await approval.resolve_materials(item, COMPANY_USCC, c[name])
            assert [m.source for m in resolved.materials] == ["licence", "submit"]
        await approval.resolve_materials(ONLINE, OWNER_ID, c["c7"])  # not c7's applicant
        await approval.resolve_materials(MIXED, COMPANY_USCC, c["c7"])  # not c7's item
        await approval.resolve_materials(ONLINE, COMPANY_USCC, "own-system-0001")
        await approval.resolve_materials(ONLINE, COMPANY_USCC, s1.number)  # samr's case
    async with client_for(node, "samr") as samr:
        await samr.resolve_materials(ONLINE, COMPANY_USCC, c["c9"])  # approval's case

    async with client_for(node, "approval", "SP-1") as approval:
        # Monday 11:00: c2 (即办) and c7 decided the day they were opened.
        _set(node, _china(MONDAY, 11))
        await approval.move_case(c["c2"], DECIDED, outcome=REFUSED, reason="不符合条件")
        await approval.move_case(c["c7"], DECIDED, outcome=APPROVED)
        # Tuesday: c1 sent to 补正 twice (answered the same day: no days stopped), decided;
        # c10 decided on its first resolution; MIXED v2 (the plan optional) resolves c8
        # and c9 fully online before their decisions; c6 goes to 补正 and stays.
        _set(node, _china(MONDAY + timedelta(days=1)))
        for _ in range(2):
            await approval.move_case(c["c1"], cases_pb2.CASE_STATE_CORRECTION, reason="补正")
            await approval.move_case(c["c1"], cases_pb2.CASE_STATE_ACCEPTED)
        await approval.move_case(c["c1"], DECIDED, outcome=REFUSED, reason="不符合条件")
        await approval.move_case(c["c10"], DECIDED, outcome=APPROVED)
        await approval.register_item(_materials_item(MIXED, plan_required=False))
        for name in ("c8", "c9"):
            resolved = await approval.resolve_materials(MIXED, COMPANY_USCC, c[name])
            assert [m.required for m in resolved.materials] == [True, False]
            await approval.move_case(c[name], DECIDED, outcome=APPROVED)
        # After its decision, a resolution of c9 counts no more (the plan required again).
        await approval.register_item(_materials_item(MIXED, plan_required=True))
        await approval.resolve_materials(MIXED, COMPANY_USCC, c["c9"])
        await approval.move_case(c["c6"], cases_pb2.CASE_STATE_CORRECTION, reason="补正")
        # The next Monday: c3 decided past its promised date (Friday), within the legal.
        _set(node, _china(MONDAY + timedelta(days=7)))
        await approval.move_case(c["c3"], DECIDED, outcome=REFUSED, reason="不符合条件")
        now = _china(MONDAY + timedelta(days=7), 11)
        _set(node, now)
        decided = [
            await approval.get_case(c[name]) for name in ("c1", "c2", "c3", "c7", "c8", "c9", "c10")
        ]
    return Story(now, decided, {**c, "s1": s1.number})


def _figures(row: SupervisionRow) -> dict[str, object]:
    return {
        "opened": row.opened,
        "decided": row.decided,
        "within": row.decided_within_promised,
        "late": row.decided_late,
        "past_legal": row.decided_past_legal,
        "overdue": (row.overdue_promised, row.overdue_legal),
        "in_correction": row.in_correction,
        "repeated": row.corrected_repeatedly,
        "same_day": row.decided_same_day,
        "resolved": (row.resolved, row.fully_online),
        "materials": (row.materials_required, row.materials_electronic),
    }


APPROVAL = {
    "opened": 10,
    "decided": 7,  # c1, c2, c3, c7, c8, c9, c10
    "within": 6,
    "late": 1,  # c3
    "past_legal": 0,
    "overdue": (1, 1),  # c4 past its promised date, c5 (即办, due Tuesday) past its legal
    "in_correction": 1,  # c6
    "repeated": 1,  # c1
    "same_day": 2,  # c2, c7
    "resolved": (4, 3),  # c7, c8, c9 fully online; c10 not
    "materials": (5, 4),  # c7 1/1, c8 1/1, c9 1/1, c10 1/2
}


def _days(decided: list[Case], due: str) -> float:
    total = sum(((getattr(c, due) - c.opened_at).total_seconds() for c in decided), 0.0)
    return total / 86_400 / len(decided)


async def test_report_figures_per_department_and_month(supervision_node: Node) -> None:
    node = supervision_node
    story = await _story(node)
    async with client_for(node, "approval") as approval:
        own = await approval.supervision_report()
    assert own.at == story.now
    (row,) = own.rows
    assert (row.department, row.month) == ("approval", MONTH)
    assert _figures(row) == APPROVAL
    assert row.within_promised_share == 6 / 7
    assert row.immediate_share == 2 / 7
    assert row.fully_online_share == 3 / 4
    assert row.no_submission_share == 4 / 5
    assert row.average_days == pytest.approx(_days(story.decided, "decided_at"), abs=1e-9)
    assert row.average_promised_days == pytest.approx(
        _days(story.decided, "promised_due_at"), abs=1e-9
    )
    assert row.average_legal_days == pytest.approx(_days(story.decided, "legal_due_at"), abs=1e-9)
    # c3 took 7 days against a promise of 4 days 14 hours: the average shows it.
    assert row.average_days == pytest.approx((1 / 24 * 2 + 1 + 1 + 1 + 1 + 7) / 7, abs=1e-9)

    # The record holds material codes and sources only, the last resolution of each case.
    assert node.db is not None
    recorded = {
        r["case_number"]: (list(r["materials"]), list(r["sources"]), list(r["required"]))
        for r in await node.db.pool.fetch("SELECT * FROM service_case_resolution")
    }
    c = story.numbers
    assert recorded == {
        c["c7"]: (["business-licence", "sign-plan"], ["licence", "submit"], [True, False]),
        c["c8"]: (["business-licence", "sign-plan"], ["licence", "submit"], [True, False]),
        c["c9"]: (["business-licence", "sign-plan"], ["licence", "submit"], [True, False]),
        c["c10"]: (["business-licence", "sign-plan"], ["licence", "submit"], [True, True]),
    }
    columns = {
        r["column_name"]
        for r in await node.db.pool.fetch(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_name = 'service_case_resolution'"
        )
    }
    assert columns == {
        "case_number", "item_version", "resolved_at", "materials", "sources", "required",
        "required_count", "electronic_count",
    }  # fmt: skip

    # The auditor sees every department; samr's case is past its legal date.
    async with client_for(node, "audit") as audit:
        every = await audit.supervision_report()
        assert [(r.department, r.month) for r in every.rows] == [
            ("approval", MONTH),
            ("samr", MONTH),
        ]
        assert _figures(every.rows[0]) == APPROVAL
        samr = every.rows[1]
        assert (samr.opened, samr.decided, samr.overdue_legal) == (1, 0, 1)
        assert (samr.within_promised_share, samr.immediate_share, samr.average_days) == (
            None,
            None,
            None,
        )
        only = await audit.supervision_report("samr", MONTH, MONTH)
        assert [r.department for r in only.rows] == ["samr"]
        after = MONDAY.replace(day=28) + timedelta(days=4)  # a day of the next month
        assert (await audit.supervision_report("", after.strftime("%Y-%m"))).rows == ()
        assert (await audit.supervision_report("audit")).rows == ()  # handles no items


async def test_refusals_have_their_reasons(supervision_node: Node) -> None:
    node = supervision_node
    another = await _refused(node, "approval", "supervision_report", "samr")
    assert another.reason == "CASE_NOT_PERMITTED"
    assert (await _refused(node, "approval", "supervision_report", "nosuch")).reason == (
        "CASE_NOT_PERMITTED"
    )
    unknown = await _refused(node, "audit", "supervision_report", "nosuch")
    assert unknown.reason == "DEPARTMENT_NOT_FOUND"
    for args, field in (
        (("", "2026-13"), "from_month"),
        (("", "26-01"), "from_month"),
        (("", "", "2026-1"), "to_month"),
        (("", "2026-05", "2026-04"), "to_month"),
        (("", "2000-01", "2026-01"), "from_month"),
    ):
        bad = await _refused(node, "approval", "supervision_report", *args)
        assert (bad.reason, bad.metadata.get("field")) == ("INVALID_ARGUMENT", field), args


async def test_metrics_cli_and_console_page(supervision_node: Node) -> None:
    node = supervision_node
    story = await _story(node)
    base = f"http://127.0.0.1:{node.http_port}"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(f"{base}/metrics") as answer:
            text = await answer.text()
        metrics = set(text.splitlines())
        assert 'tongban_cases_overdue{department="approval",severity="promised"} 1.0' in metrics
        assert 'tongban_cases_overdue{department="approval",severity="legal"} 1.0' in metrics
        assert 'tongban_cases_overdue{department="samr",severity="legal"} 1.0' in metrics
        assert (
            f'tongban_cases_decided_within_promised_ratio{{department="approval"}} {6 / 7!r}'
            in metrics
        )

        # The console page, for auditors only.
        async with http.get(f"{base}/console/supervision") as answer:
            assert answer.status == 401
        assert node.db is not None
        for who, status in (("approval", 403), ("audit", 200)):
            token = await LinkStore(node.db.pool).issue("login", who, node.clock.now())
            async with http.post(
                f"{base}/console/link/login", data={"token": token}, allow_redirects=False
            ) as opened:
                assert opened.status == 303
            async with http.get(f"{base}/console/supervision?lang=en") as answer:
                page = await answer.text()
                assert answer.status == status, page
        assert 'id="supervision-approval"' in page
        assert 'id="supervision-samr"' in page
        assert f'<g class="bar" data-month="{MONTH}">' in page
        assert 'data-series="within" data-count="6"' in page
        assert 'data-series="late" data-count="1"' in page
        assert 'data-series="overdue" data-count="2"' in page
        assert '<td class="within">85.7%</td>' in page
        assert '<td class="online">75.0%</td>' in page
        assert '<td class="no-submission">80.0%</td>' in page
        assert "<script" not in page.split("</nav>", 1)[1]
        async with http.get(
            f"{base}/console/supervision", params={"department": "<b>x</b>", "from": "2026-13"}
        ) as answer:
            refused = await answer.text()
            assert answer.status == 400
            assert "<b>x</b>" not in refused
        async with http.get(f"{base}/console/supervision?department=nosuch") as answer:
            assert answer.status == 404

    endpoint = f"127.0.0.1:{node.grpc_port}"

    def dept(code: str) -> list[str]:
        return ["--as", str(bundle_dir(node.settings, code)), "--endpoint", endpoint]

    table = await atongban("supervision", "report", *dept("audit"))
    assert table.code == 0, table.stdout + table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["DEPARTMENT", "MONTH", "OPENED", "DECIDED"]
    assert lines[1].split() == [
        "approval", MONTH, "10", "7", "86%", "1", "1", "1", "1", "29%", "75%", "80%",
        f"{_days(story.decided, 'decided_at'):.1f}",
        f"{_days(story.decided, 'promised_due_at'):.1f}",
        f"{_days(story.decided, 'legal_due_at'):.1f}",
    ]  # fmt: skip
    as_json = await atongban(
        "supervision", "report", "--from", MONTH, "--to", MONTH, *dept("approval"), "--json"
    )
    assert as_json.code == 0, as_json.stderr
    (row,) = as_json.json()["rows"]
    assert (row["department"], row["opened"], row["fully_online"]) == ("approval", 10, 3)
    other = await atongban("supervision", "report", "--department", "samr", *dept("approval"))
    assert other.code == 1
    bad = await atongban("supervision", "report", "--from", "2026-13", *dept("audit"), "--json")
    assert (bad.code, bad.json()["reason"]) == (1, "INVALID_ARGUMENT")
