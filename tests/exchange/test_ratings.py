"""Ratings (好差评, issue 16) on a real node: the one-time link in the decision's notice,
the rating page and the subject view, a bad rating's rectification due in working days
(the node's calendar, its clock moved), the department's answer over mutual TLS, the
re-rating, the auditor's overdue list, each bad input with its reason code, the node
role's grants, and rows changed behind the node's back found by the check."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import pytest_asyncio

from tests.cli_helpers import atongban
from tests.conftest import client_for, enrol_demo
from tests.stories.restaurant import COMPANY_USCC, OWNER_ID
from tongban.client import ExchangeError
from tongban.exchange.enrolment import bundle_dir
from tongban.exchange.licensing.ratings import RatingsTampered, verify_ratings
from tongban.exchange.node import Node
from tongban.exchange.settings import Settings, load_settings
from tongban.exchange.web.sessions import LinkStore
from tongban.signing.clock import FixedClock, SystemClock
from tongban.v1 import cases_pb2, items_pb2

CHINA = timezone(timedelta(hours=8))
ITEM = "ratings-test-filing"
_NODE_FIELDS = (
    "data_dir",
    "database_url",
    "grpc_listen",
    "http_listen",
    "key_passphrase",
    "shutdown_grace_seconds",
)


def _monday_after(today: date) -> date:
    day = today + timedelta(days=2)
    return day + timedelta(days=(7 - day.weekday()) % 7)


MONDAY = _monday_after(SystemClock().now().astimezone(CHINA).date())
HOLIDAY = MONDAY + timedelta(days=2)  # the first Wednesday


def _china(day: date, hour: int = 10) -> datetime:
    return datetime.combine(day, time(hour), tzinfo=CHINA)


@pytest_asyncio.fixture
async def rating_node(settings: Settings, tmp_path: Path) -> AsyncIterator[Node]:
    """A node with a Wednesday holiday, notices to a file, at Monday 10:00 China time, and
    an item of ``approval`` that issues no licence."""
    with_notices = load_settings(
        **{name: getattr(settings, name) for name in _NODE_FIELDS},
        holidays=(HOLIDAY,),
        case_notify=f"file:{tmp_path / 'notices.jsonl'}",
    )
    async with Node(with_notices, clock=FixedClock(_china(MONDAY))) as running:
        assert running.db is not None
        await enrol_demo(with_notices)
        async with client_for(running, "approval") as approval:
            await approval.register_item(
                items_pb2.ItemSpec(
                    code=ITEM,
                    name="评价测试备案",
                    legal_basis="《测试条例》第一条",
                    purpose="备案",
                    legal_limit_days=5,
                    promised_limit_days=2,
                    materials=[
                        items_pb2.Material(
                            code="form", name="备案表", submitted=items_pb2.SubmittedSource()
                        )
                    ],
                )
            )
        yield running


def _set(node: Node, at: datetime) -> None:
    assert isinstance(node.clock, FixedClock)
    node.clock.set(at)


async def _decided_case(node: Node, applicant: str = COMPANY_USCC) -> str:
    async with client_for(node, "approval", "SP-0007") as approval:
        case = await approval.open_case(ITEM, applicant)
        await approval.move_case(
            case.number, cases_pb2.CASE_STATE_DECIDED, outcome=cases_pb2.CASE_OUTCOME_APPROVED
        )
    assert node.notices is not None
    await node.notices.drained()
    return case.number


def _rating_link(node: Node, number: str) -> str:
    """The path of the rating link in the case's decision notice."""
    path = Path(node.settings.case_notify.removeprefix("file:"))
    notices = [json.loads(line) for line in path.read_text().splitlines()]
    decided = [n for n in notices if n["case_number"] == number and n["state"] == "decided"]
    assert len(decided) == 1
    others = [n for n in notices if n["case_number"] == number and n["state"] != "decided"]
    assert all("rating_link" not in n for n in others)
    link = str(decided[0]["rating_link"])
    assert link.startswith(f"http://localhost:{node.http_port}/console/rate/")
    return "/console/rate/" + link.rsplit("/", 1)[1]


class Browser:
    """A browser-like HTTP client of the node's console (cookies kept)."""

    def __init__(self, node: Node, http: aiohttp.ClientSession) -> None:
        self.base = f"http://127.0.0.1:{node.http_port}"
        self.http = http

    async def get(self, path: str) -> tuple[int, str]:
        async with self.http.get(self.base + path, allow_redirects=False) as r:
            return r.status, await r.text()

    async def post(self, path: str, **form: str) -> tuple[int, str]:
        async with self.http.post(
            self.base + path, data=form, allow_redirects=False, headers={"Origin": self.base}
        ) as r:
            return r.status, await r.text()


def _reason(body: str) -> str:
    found = re.search(r"<code>([A-Z_]+)</code>", body)
    return found.group(1) if found else ""


async def _subject(node: Node, http: aiohttp.ClientSession, subject: str) -> Browser:
    assert node.db is not None
    token = await LinkStore(node.db.pool).issue("subject", subject, node.clock.now())
    browser = Browser(node, http)
    status, _ = await browser.post("/console/link/subject", token=token)
    assert status == 303
    return browser


async def _log(node: Node, action: str) -> list[asyncpg.Record]:
    assert node.db is not None
    return await node.db.pool.fetch(
        "SELECT case_id, reason, caller, officer, decision FROM access_log WHERE action = $1"
        " ORDER BY idx",
        action,
    )


async def test_rate_by_link_rectify_answer_rerate_and_overdue(rating_node: Node) -> None:
    node = rating_node
    assert node.db is not None
    jar = aiohttp.CookieJar(unsafe=True)
    async with (
        aiohttp.ClientSession() as anonymous_http,
        aiohttp.ClientSession(cookie_jar=jar) as subject_http,
    ):
        anonymous = Browser(node, anonymous_http)
        subject = await _subject(node, subject_http, COMPANY_USCC)

        # Undecided: refused, from the subject view.
        async with client_for(node, "approval", "SP-0007") as approval:
            open_case = await approval.open_case(ITEM, COMPANY_USCC)
        status, body = await subject.post(
            "/console/subject/rate", case=open_case.number, score="5", comment=""
        )
        assert (status, _reason(body)) == (400, "RATING_CASE_UNDECIDED")

        number = await _decided_case(node)
        link = _rating_link(node, number)
        status, body = await anonymous.get(link)
        assert status == 200
        assert number in body
        assert 'id="rate-form"' in body

        # Bad input spends nothing.
        status, body = await anonymous.post(link, score="9", comment="")
        assert (status, _reason(body)) == (400, "RATING_SCORE_INVALID")
        status, body = await anonymous.post(link, score="0", comment="")
        assert (status, _reason(body)) == (400, "RATING_SCORE_INVALID")
        status, body = await anonymous.post(link, score="2", comment="长" * 501)
        assert (status, _reason(body)) == (400, "RATING_COMMENT_INVALID")
        assert await node.db.pool.fetchval("SELECT count(*) FROM case_rating") == 0

        status, body = await anonymous.post(link, score="2", comment="窗口等候太久")
        assert status == 200
        assert 'id="rectification-opened"' in body
        status, body = await anonymous.post(link, score="5", comment="")
        assert (status, _reason(body)) == (403, "RATING_LINK_USED")
        status, body = await anonymous.get(link)
        assert (status, _reason(body)) == (403, "RATING_LINK_USED")
        # A second rating from the subject view is refused too.
        status, body = await subject.post(
            "/console/subject/rate", case=number, score="5", comment=""
        )
        assert (status, _reason(body)) == (409, "RATING_ALREADY_GIVEN")

        row = await node.db.pool.fetchrow("SELECT * FROM case_rating WHERE case_number = $1",
                                          number)  # fmt: skip
        assert row is not None
        assert (row["round"], row["score"], row["comment"]) == (1, 2, "窗口等候太久")
        assert (row["item"], row["department"], row["officer"]) == (ITEM, "approval", "SP-0007")
        # Due at the end of the 5th working day after Monday (Wednesday is a holiday).
        due = await node.db.pool.fetchval(
            "SELECT due_at FROM case_rectification WHERE case_number = $1", number
        )
        assert due == datetime.combine(MONDAY + timedelta(days=8), time.max, tzinfo=CHINA)
        (rated,) = await _log(node, "rating.rate")
        assert rated["case_id"] == number
        assert re.fullmatch(r"round=1 score=2 sha256=[0-9a-f]{64}", rated["reason"])
        assert len(await _log(node, "rating.rectify")) == 1

        # The department answers; another department cannot.
        async with client_for(node, "tax", "SW-1") as tax:
            assert list((await tax.list_rectifications()).cases) == []
            with pytest.raises(ExchangeError) as foreign:
                await tax.answer_rectification(number, "不是我们的")
            assert foreign.value.reason == "RECTIFICATION_NOT_PERMITTED"
        denied = [e for e in await _log(node, "rating.answer") if e["decision"] == "denied"]
        assert [(e["caller"], e["case_id"]) for e in denied] == [("tax", number)]

        async with client_for(node, "approval", "SP-0009") as approval:
            listed = await approval.list_rectifications(open_only=True)
            assert [c.case_number for c in listed.cases] == [number]
            assert listed.cases[0].ratings[0].comment == "窗口等候太久"
            assert listed.cases[0].ratings[0].officer == "SP-0007"
            with pytest.raises(ExchangeError) as empty:
                await approval.answer_rectification(number, "   ")
            assert empty.value.reason == "RECTIFICATION_ANSWER_INVALID"
            with pytest.raises(ExchangeError) as long:
                await approval.answer_rectification(number, "改" * 1001)
            assert long.value.reason == "RECTIFICATION_ANSWER_INVALID"
            with pytest.raises(ExchangeError) as none:
                await approval.answer_rectification(open_case.number, "无")
            assert none.value.reason == "RECTIFICATION_NOT_FOUND"

            # Past due (the Tuesday after next): the auditor sees it overdue.
            _set(node, _china(MONDAY + timedelta(days=9)))
            async with client_for(node, "audit", "JW-1") as audit:
                overdue = await audit.list_overdue_rectifications()
                assert [c.case_number for c in overdue.cases] == [number]
                fix = overdue.cases[0].rectification
                assert fix is not None
                assert fix.overdue
                assert not (await audit.list_overdue_rectifications("tax")).cases
            with pytest.raises(ExchangeError) as not_auditor:
                await approval.list_overdue_rectifications()
            assert not_auditor.value.reason == "AUDITOR_ROLE_REQUIRED"
            cli = await atongban(
                "rating", "overdue", "--as", str(bundle_dir(node.settings, "audit")),
                "--endpoint", f"127.0.0.1:{node.grpc_port}",
            )  # fmt: skip
            assert cli.code == 0, cli.stderr
            assert number in cli.stdout
            assert "OVERDUE" in cli.stdout

            answered = await approval.answer_rectification(number, "已增设窗口，缩短等候。")
            fix = answered.rectification
            assert fix is not None
            assert fix.answer == "已增设窗口，缩短等候。"
            assert fix.answered_by == "SP-0009"
            assert fix.overdue  # answered late
            with pytest.raises(ExchangeError) as twice:
                await approval.answer_rectification(number, "再答一次")
            assert twice.value.reason == "RECTIFICATION_ALREADY_ANSWERED"
        async with client_for(node, "audit") as audit:
            assert not (await audit.list_overdue_rectifications()).cases

        # The subject view shows the rating and the answer, and takes one re-rating (signed
        # in again: a subject's session lasts an hour, and the clock moved on days).
        subject = await _subject(node, subject_http, COMPANY_USCC)
        status, body = await subject.get("/console/subject")
        assert status == 200
        assert "窗口等候太久" in body
        assert "已增设窗口，缩短等候。" in body
        assert f'data-case="{number}"' in body
        assert "rate-form" in body
        status, body = await subject.post(
            "/console/subject/rate", case=number, score="4", comment="有改进"
        )
        assert status == 200
        assert 'id="rated-score">4<' in body
        status, body = await subject.post(
            "/console/subject/rate", case=number, score="5", comment=""
        )
        assert (status, _reason(body)) == (409, "RATING_ALREADY_GIVEN")
        # Another applicant's case is not theirs to rate.
        other = await _decided_case(node, OWNER_ID)
        status, body = await subject.post("/console/subject/rate", case=other, score="5")
        assert (status, _reason(body)) == (404, "CASE_NOT_FOUND")
        status, body = await subject.post("/console/subject/rate", case=number, score="x")
        assert (status, _reason(body)) == (400, "RATING_SCORE_INVALID")

    assert len(await _log(node, "rating.rerate")) == 1
    async with client_for(node, "audit") as audit:
        report = await audit.verify_ratings()
    assert (report.ratings, report.rectifications, report.answers) == (2, 1, 1)


async def test_expired_and_unknown_links(rating_node: Node) -> None:
    node = rating_node
    number = await _decided_case(node)
    link = _rating_link(node, number)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        browser = Browser(node, http)
        _set(node, _china(MONDAY + timedelta(days=31)))
        status, body = await browser.get(link)
        assert (status, _reason(body)) == (403, "RATING_LINK_EXPIRED")
        status, body = await browser.post(link, score="5", comment="")
        assert (status, _reason(body)) == (403, "RATING_LINK_EXPIRED")
        for bad in ("/console/rate/" + "A" * 43, "/console/rate/short", "/console/rate/%FF"):
            status, body = await browser.get(bad)
            assert (status, _reason(body)) == (403, "RATING_LINK_INVALID")
        # The applicant still rates from the subject view.
        subject = await _subject(node, http, COMPANY_USCC)
        status, body = await subject.get("/console/subject")
        assert status == 200
        assert f'data-case="{number}"' in body
        status, _ = await subject.post("/console/subject/rate", case=number, score="5")
        assert status == 200


async def test_rows_cannot_be_changed_by_the_node_and_changes_are_found(
    rating_node: Node, database_url: str
) -> None:
    node = rating_node
    assert node.db is not None
    number = await _decided_case(node)
    async with aiohttp.ClientSession() as http:
        status, _ = await Browser(node, http).post(
            _rating_link(node, number), score="1", comment="很差"
        )
    assert status == 200
    assert (await verify_ratings(node.db.pool)).ratings == 1

    # The node's role may not change or delete a rating, a rectification or a link's case.
    for statement in (
        "UPDATE case_rating SET score = 5",
        "DELETE FROM case_rating",
        "UPDATE case_rectification SET due_at = due_at + interval '1 year'",
        "DELETE FROM case_rectification",
        "UPDATE case_rating_link SET case_number = case_number",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await node.db.pool.execute(statement)

    owner = await asyncpg.connect(database_url)
    try:
        await owner.execute("UPDATE case_rating SET score = 5 WHERE case_number = $1", number)
        with pytest.raises(RatingsTampered) as edited:
            await verify_ratings(node.db.pool)
        assert number in edited.value.metadata["cases"]
        async with client_for(node, "audit") as audit:
            with pytest.raises(ExchangeError) as over_grpc:
                await audit.verify_ratings()
        assert over_grpc.value.reason == "RATINGS_TAMPERED"
        cli = await atongban(
            "rating", "verify", "--as", str(bundle_dir(node.settings, "audit")),
            "--endpoint", f"127.0.0.1:{node.grpc_port}", "--json",
        )  # fmt: skip
        assert cli.code == 1
        assert json.loads(cli.stdout)["reason"] == "RATINGS_TAMPERED"

        await owner.execute("UPDATE case_rating SET score = 1 WHERE case_number = $1", number)
        assert (await verify_ratings(node.db.pool)).ratings == 1
        await owner.execute("DELETE FROM case_rating WHERE case_number = $1", number)
        with pytest.raises(RatingsTampered) as deleted:
            await verify_ratings(node.db.pool)
        assert "no row" in deleted.value.message
    finally:
        await owner.close()
    async with client_for(node, "tax") as tax:
        with pytest.raises(ExchangeError) as not_auditor:
            await tax.verify_ratings()
    assert not_auditor.value.reason == "AUDITOR_ROLE_REQUIRED"


async def test_rating_commands(rating_node: Node) -> None:
    node = rating_node
    number = await _decided_case(node)
    async with aiohttp.ClientSession() as http:
        await Browser(node, http).post(_rating_link(node, number), score="2", comment="慢")

    def dept(code: str) -> list[str]:
        return ["--as", str(bundle_dir(node.settings, code)), "--endpoint",
                f"127.0.0.1:{node.grpc_port}"]  # fmt: skip

    listed = await atongban("rating", "rectifications", "--open", *dept("approval"))
    assert listed.code == 0, listed.stderr
    assert number in listed.stdout
    assert "not answered" in listed.stdout
    answered = await atongban("rating", "answer", number, "已整改", *dept("approval"), "--json")
    assert answered.code == 0, answered.stderr
    assert json.loads(answered.stdout)["case"]["rectification"]["answer"] == "已整改"
    wrong = await atongban("rating", "answer", number, "再答", *dept("tax"), "--json")
    assert wrong.code == 1
    assert json.loads(wrong.stdout)["reason"] == "RECTIFICATION_NOT_PERMITTED"
    verified = await atongban("rating", "verify", *dept("audit"))
    assert verified.code == 0, verified.stderr
    assert "ratings intact" in verified.stdout
