"""Covert cases (issue 14, finding 4): only a department with the covert role hides its
accesses from a data subject, for at most TONGBAN_COVERT_MAX_DAYS; every declaration is
a log entry; the node cannot change or delete one; auditors list them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest

from tests.cli_helpers import atongban, cli_env
from tests.conftest import client_for, enrol_demo
from tests.exchange.test_page_tokens import altered_token
from tests.stories.restaurant import OWNER_ID
from tests.stories.test_audit import _accesses_to_owner
from tongban.client import ExchangeClient, ExchangeError
from tongban.exchange.audit.covert import check_declaration
from tongban.exchange.errors import ConfigInvalid, InvalidArgument
from tongban.exchange.node import Node
from tongban.exchange.settings import Settings, load_settings
from tongban.signing.clock import FixedClock, SystemClock
from tongban.v1 import audit_pb2

LAW = "《刑事诉讼法》第一百五十二条"


async def _declarations(node: Node) -> list[asyncpg.Record]:
    assert node.db is not None
    return await node.db.pool.fetch(
        "SELECT caller, officer, case_id, decision, reason FROM access_log"
        " WHERE action = 'covert.declare' ORDER BY idx"
    )


async def _shown(audit: ExchangeClient) -> tuple[list[tuple[str, str]], int]:
    view = await audit.subject_accesses(OWNER_ID)
    return [(a.department, a.case_id) for a in view.accesses if a.dataset], view.withheld


def _cli_env(node: Node) -> dict[str, str]:
    url = node.settings.database_url
    assert url is not None
    return cli_env(
        TONGBAN_DATABASE_URL=url.get_secret_value(), TONGBAN_KEY_PASSPHRASE="test passphrase"
    )


# -- (a) the role -------------------------------------------------------------------------


async def test_a_department_without_the_covert_role_cannot_hide_its_accesses(node: Node) -> None:
    await _accesses_to_owner(node)  # tax asked for the owner's data in case SW-9
    async with client_for(node, "tax", "SW-0042") as tax:
        with pytest.raises(ExchangeError) as refused:
            await tax.declare_covert_case("SW-9", node.clock.now() + timedelta(days=30), LAW)
    assert refused.value.reason == "COVERT_ROLE_REQUIRED"
    assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert "covert role" in refused.value.message
    assert node.db is not None
    assert await node.db.pool.fetchval("SELECT count(*) FROM covert_case") == 0
    # The attempt is in the log, and the owner still sees tax's query.
    assert [tuple(r) for r in await _declarations(node)] == [
        ("tax", "SW-0042", "SW-9", "denied", "COVERT_ROLE_REQUIRED")
    ]
    async with client_for(node, "audit", "JW-0001") as audit:
        shown, withheld = await _shown(audit)
    assert ("tax", "SW-9") in shown
    assert withheld == 0


# -- (b) a department with the role: hidden, and logged -----------------------------------


async def test_a_department_with_the_covert_role_hides_its_case_and_the_log_says_so(
    node: Node,
) -> None:
    await _accesses_to_owner(node)
    until = node.clock.now() + timedelta(days=30)
    async with client_for(node, "police", "GA-9") as police:
        declared = await police.declare_covert_case(" GA-SECRET ", until, f"  {LAW} ")
    assert (declared.department, declared.case_id, declared.legal_basis) == (
        "police",
        "GA-SECRET",
        LAW,
    )
    assert (declared.declared_by, declared.in_force) == ("GA-9", True)
    assert declared.until == until
    async with client_for(node, "audit", "JW-0001") as audit:
        shown, withheld = await _shown(audit)
    assert shown == [("tax", "SW-9"), ("police", "GA-1")]
    assert withheld == 1
    [entry] = await _declarations(node)
    assert tuple(entry)[:4] == ("police", "GA-9", "GA-SECRET", "allowed")
    assert entry["reason"] == f"until {until:%Y-%m-%dT%H:%M:%SZ}; basis: {LAW}"
    # The declaration and its entry are in one transaction: one row each.
    assert node.db is not None
    assert await node.db.pool.fetchval("SELECT count(*) FROM covert_case") == 1


async def test_the_operator_gives_the_covert_role_with_dept_add(node: Node) -> None:
    env = _cli_env(node)
    data = str(node.settings.data_dir)
    added = await atongban(
        "dept", "add", "jw-case", "--name", "县纪委监委案件审查室", "--level", "county",
        "--role", "covert", "--data-dir", data, "--json", env=env,
    )  # fmt: skip
    assert added.code == 0, added.stdout + added.stderr
    assert added.json()["department"]["roles"] == ["covert"]
    bogus = await atongban(
        "dept", "add", "jw-x", "--name", "x", "--level", "county", "--role", "root",
        "--data-dir", data, env=env,
    )  # fmt: skip
    assert bogus.code != 0
    assert "invalid choice" in bogus.stderr
    async with client_for(node, "jw-case", "JW-7") as jw:
        declared = await jw.declare_covert_case(
            "JW-2026-3", node.clock.now() + timedelta(days=90), "《监察法》第十八条"
        )
    assert (declared.department, declared.in_force) == ("jw-case", True)
    # The database refuses a role the code does not know, even to the schema's owner.
    url = node.settings.database_url
    assert url is not None
    owner = await asyncpg.connect(url.get_secret_value())
    try:
        with pytest.raises(asyncpg.CheckViolationError):
            await owner.execute(
                "UPDATE department SET roles = '{covert,root}' WHERE code = 'jw-case'"
            )
    finally:
        await owner.close()


async def test_the_operator_gives_and_takes_the_role_of_a_registered_department(
    node: Node,
) -> None:
    """`tongban dept roles`: effective on the running node at once (the registry notifies)."""
    env = _cli_env(node)
    data = str(node.settings.data_dir)
    until = node.clock.now() + timedelta(days=30)
    given = await atongban(
        "dept", "roles", "tax", "--add", "covert", "--data-dir", data, "--json", env=env
    )  # fmt: skip
    assert given.code == 0, given.stdout + given.stderr
    assert given.json()["department"]["roles"] == ["covert"]
    async with client_for(node, "tax", "SW-1") as tax:
        declared = await tax.declare_covert_case("SW-JC-1", until, LAW)
        assert declared.in_force
    taken = await atongban(
        "dept", "roles", "tax", "--remove", "covert", "--data-dir", data, env=env
    )
    assert taken.code == 0, taken.stderr
    assert "tax: no extra roles" in taken.stdout
    async with client_for(node, "tax", "SW-1") as tax:
        with pytest.raises(ExchangeError) as refused:
            await tax.declare_covert_case("SW-JC-2", until, LAW)
    assert refused.value.reason == "COVERT_ROLE_REQUIRED"
    for bad, says in (
        (["nobody", "--add", "covert"], "nobody"),
        (["tax", "--add", "root"], "invalid choice"),
    ):
        wrong = await atongban("dept", "roles", *bad, "--data-dir", data, env=env)
        assert wrong.code != 0
        assert says in wrong.stderr
        assert "Traceback" not in wrong.stderr


# -- (c) the maximum embargo ----------------------------------------------------------------


def test_the_embargo_is_counted_in_days_up_to_the_limit() -> None:
    leap_day = datetime(2028, 2, 29, 9, 30, tzinfo=UTC)  # replace(year=+5) raised here
    longest = leap_day + timedelta(days=365)
    assert longest == datetime(2029, 2, 28, 9, 30, tzinfo=UTC)
    kept = check_declaration(
        case_id=" GA-1 ", until=longest, legal_basis=LAW, now=leap_day, max_days=365
    )
    assert (kept.case_id, kept.until) == ("GA-1", longest)
    with pytest.raises(InvalidArgument, match="at most 365 days") as too_long:
        check_declaration(
            case_id="GA-1",
            until=longest + timedelta(microseconds=1),
            legal_basis=LAW,
            now=leap_day,
            max_days=365,
        )
    assert too_long.value.metadata == {"field": "until", "max_days": "365"}
    for case_id, until, basis, field in (
        ("", longest, LAW, "case_id"),
        ("x" * 65, longest, LAW, "case_id"),
        ("GA\n1", longest, LAW, "case_id"),
        ("GA-1", None, LAW, "until"),
        ("GA-1", leap_day, LAW, "until"),
        ("GA-1", longest, "  ", "legal_basis"),
        ("GA-1", longest, "x" * 501, "legal_basis"),
    ):
        with pytest.raises(InvalidArgument) as refused:
            check_declaration(
                case_id=case_id, until=until, legal_basis=basis, now=leap_day, max_days=365
            )
        assert refused.value.metadata["field"] == field


def test_the_maximum_is_a_setting_with_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().covert_max_days == 365
    monkeypatch.setenv("TONGBAN_COVERT_MAX_DAYS", "30")
    assert load_settings().covert_max_days == 30
    for bad in ("0", "1827", "a year"):
        monkeypatch.setenv("TONGBAN_COVERT_MAX_DAYS", bad)
        with pytest.raises(ConfigInvalid, match="TONGBAN_COVERT_MAX_DAYS"):
            load_settings()


async def test_the_node_refuses_an_embargo_beyond_its_setting(settings: Settings) -> None:
    short = settings.model_copy(update={"covert_max_days": 30})
    async with Node(short, clock=FixedClock(SystemClock().now())) as node:
        assert node.db is not None
        await enrol_demo(short)
        now = node.clock.now()
        async with client_for(node, "police", "GA-9") as police:
            kept = await police.declare_covert_case("GA-1", now + timedelta(days=30), LAW)
            with pytest.raises(ExchangeError) as refused:
                await police.declare_covert_case("GA-2", now + timedelta(days=30, seconds=1), LAW)
        assert kept.in_force
        assert refused.value.reason == "INVALID_ARGUMENT"
        assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert "at most 30 days" in refused.value.message
        assert await node.db.pool.fetchval("SELECT array_agg(case_id) FROM covert_case") == ["GA-1"]
        assert [
            (r["case_id"], r["decision"], r["reason"][:6]) for r in await _declarations(node)
        ] == [
            ("GA-1", "allowed", "until "),
            ("GA-2", "denied", "INVALI"),
        ]


# -- (d) append-only ------------------------------------------------------------------------

# What the node's role is refused, and by which check: its privileges, not the trigger
# (which raises the same error class, "covert_case is append-only", even with the
# privilege granted), so these fail if migration 0012's REVOKE is undone.
CHANGES = [
    ("UPDATE covert_case SET until = now()", "permission denied for table covert_case"),
    ("DELETE FROM covert_case", "permission denied for table covert_case"),
    ("TRUNCATE covert_case", "permission denied for table covert_case"),
    (
        "ALTER TABLE covert_case DISABLE TRIGGER covert_case_no_update",
        "must be owner of table covert_case",
    ),
    ("DROP VIEW covert_case_current", "must be owner of view covert_case_current"),
]


async def test_no_one_changes_or_deletes_a_covert_case(node: Node) -> None:
    async with client_for(node, "police", "GA-9") as police:
        await police.declare_covert_case("GA-SECRET", node.clock.now() + timedelta(days=30), LAW)
    assert node.db is not None
    async with node.db.pool.acquire() as conn:  # a session of the node's role
        assert await conn.fetchval("SELECT current_user") == "tongban_node"
        for statement, refusal in CHANGES:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match=re.escape(refusal)):
                await conn.execute(statement)
        for privilege in ("UPDATE", "DELETE", "TRUNCATE"):
            assert not await conn.fetchval(
                "SELECT has_table_privilege('covert_case', $1)", privilege
            ), privilege
    # The triggers stop even the schema's owner.
    url = node.settings.database_url
    assert url is not None
    owner = await asyncpg.connect(url.get_secret_value())
    try:
        for statement, _ in CHANGES[:3]:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await owner.execute(statement)
    finally:
        await owner.close()
    assert await node.db.pool.fetchval("SELECT count(*) FROM covert_case") == 1


# -- (e) the latest declaration holds -------------------------------------------------------


async def test_declaring_again_shortens_or_extends_the_embargo(node: Node) -> None:
    await _accesses_to_owner(node)
    now = node.clock.now()
    async with (
        client_for(node, "police", "GA-9") as police,
        client_for(node, "audit", "JW-0001") as audit,
    ):
        await police.declare_covert_case("GA-SECRET", now + timedelta(days=300), LAW)
        await police.declare_covert_case("GA-SECRET", now + timedelta(days=2), LAW)
        assert (await _shown(audit))[1] == 1
        listed = await audit.list_covert_cases()
        assert [(c.case_id, c.until) for c in listed.cases] == [
            ("GA-SECRET", now + timedelta(days=2))
        ]
        assert isinstance(node.clock, FixedClock)
        node.clock.advance(timedelta(days=3))  # past the shorter end, before the longer
        shown, withheld = await _shown(audit)
        assert ("police", "GA-SECRET") in shown
        assert withheld == 0
        assert (await audit.list_covert_cases()).cases == ()
        ended = await audit.list_covert_cases(include_ended=True)
        assert [(c.case_id, c.in_force) for c in ended.cases] == [("GA-SECRET", False)]
        # Declared again: hidden again, until the new end.
        await police.declare_covert_case("GA-SECRET", node.clock.now() + timedelta(days=10), LAW)
        assert (await _shown(audit))[1] == 1
    assert node.db is not None
    assert await node.db.pool.fetchval("SELECT count(*) FROM covert_case") == 3
    assert [r["decision"] for r in await _declarations(node)] == ["allowed"] * 3


# -- (f) auditors list them ---------------------------------------------------------------


async def test_auditors_list_covert_cases_and_the_listing_is_logged(node: Node) -> None:
    now = node.clock.now()
    async with client_for(node, "police", "GA-9") as police:
        for i in range(3):
            await police.declare_covert_case(f"GA-{i}", now + timedelta(days=10 + i), LAW)
    async with client_for(node, "tax") as tax:
        with pytest.raises(ExchangeError) as refused:
            await tax.list_covert_cases()
    assert refused.value.reason == "AUDITOR_ROLE_REQUIRED"
    assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
    async with client_for(node, "audit", "JW-0001") as audit:
        first = await audit.list_covert_cases(page_size=2)
        assert [c.case_id for c in first.cases] == ["GA-2", "GA-1"]  # newest first
        case = first.cases[0]
        assert (case.department, case.declared_by, case.legal_basis, case.in_force) == (
            "police",
            "GA-9",
            LAW,
            True,
        )
        assert case.declared_at == now
        rest = await audit.list_covert_cases(page_size=2, page_token=first.next_page_token)
        assert [c.case_id for c in rest.cases] == ["GA-0"]
        assert rest.next_page_token == ""
        assert (await audit.list_covert_cases(department="tax")).cases == ()
        with pytest.raises(ExchangeError) as forged:
            await audit.list_covert_cases(page_token=altered_token(first.next_page_token))
        assert forged.value.reason == "PAGE_TOKEN_INVALID"
        other = await audit.audit_search(audit_pb2.SearchRequest(page_size=1))
        with pytest.raises(ExchangeError) as foreign:
            await audit.list_covert_cases(page_token=other.next_page_token)
        assert foreign.value.reason == "PAGE_TOKEN_INVALID"
    assert node.db is not None
    looks = await node.db.pool.fetch(
        "SELECT caller, officer, purpose FROM access_log WHERE action = 'audit.covert' ORDER BY idx"
    )
    # Each answered listing is logged; the refused ones (bad page tokens) are not.
    assert [tuple(r) for r in looks] == [
        ("audit", "JW-0001", "covert cases"),
        ("audit", "JW-0001", "covert cases"),
        ("audit", "JW-0001", "covert cases department=tax"),
    ]


async def test_the_cli_lists_covert_cases(node: Node) -> None:
    assert isinstance(node.clock, FixedClock)
    now = node.clock.now()
    async with client_for(node, "police", "GA-9") as police:
        await police.declare_covert_case("GA-OPEN", now + timedelta(days=30), LAW)
        # Declared three minutes ago for two (within the certificates' five minutes of
        # leeway): ended by the real clock, which the CLI reads.
        node.clock.advance(timedelta(minutes=-3))
        await police.declare_covert_case("GA-SHORT", now - timedelta(minutes=1), LAW)
        node.clock.advance(timedelta(minutes=3))
    env = _cli_env(node)
    data = str(node.settings.data_dir)
    listed = await atongban("audit", "covert-cases", "--data-dir", data, "--json", env=env)
    assert listed.code == 0, listed.stdout + listed.stderr
    [case] = listed.json()["covert_cases"]
    assert (case["department"], case["case_id"], case["declared_by"], case["in_force"]) == (
        "police",
        "GA-OPEN",
        "GA-9",
        True,
    )
    every = await atongban(
        "audit", "covert-cases", "--department", "police", "--all", "--data-dir", data, env=env
    )
    assert every.code == 0, every.stderr
    lines = every.stdout.splitlines()
    assert len(lines) == 2
    assert [line.split()[1] for line in lines] == ["GA-SHORT", "GA-OPEN"]  # newest first
    assert " ended " in lines[0]
    assert " in force " in lines[1]
    none = await atongban(
        "audit", "covert-cases", "--department", "tax", "--data-dir", data, env=env
    )
    assert none.stdout.strip() == "no covert cases in force"
