"""A database that is there but cannot take a change (out of disk, read-only) makes the
call UNAVAILABLE / DATABASE_UNAVAILABLE, never INTERNAL, and leaves nothing
half-written; once it is fixed, the same call goes through. The operator's log gets a
line per condition every few seconds, not one per call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit

import asyncpg
import grpc
import pytest

from tests.conftest import client_for, enrol_demo
from tests.stories.restaurant import COMPANY, COMPANY_USCC, ENTERPRISE
from tongban.client import ExchangeClient, ExchangeError
from tongban.exchange.db import trouble
from tongban.exchange.db.fair_pool import DatabaseUnreachable
from tongban.exchange.node import Node
from tongban.exchange.settings import Settings
from tongban.signing.clock import FixedClock, SystemClock

T = TypeVar("T")

server_timers = pytest.mark.skipif(
    "libfaketime" in os.environ.get("LD_PRELOAD", ""),
    reason="PostgreSQL's lock_timeout and statement_timeout do not fire under libfaketime "
    "(make test-year-ahead); make test runs this",
)
MOVED = dict(COMPANY, address="杭州市西湖区文三路 90 号")


@contextlib.asynccontextmanager
async def _superuser(node: Node, admin_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A superuser session on the node's database (to break it and mend it)."""
    assert node.settings.database_url is not None
    name = urlsplit(node.settings.database_url.get_secret_value()).path.lstrip("/")
    conn = await asyncpg.connect(admin_dsn.replace("/postgres?", f"/{name}?"))
    try:
        yield conn
    finally:
        await conn.execute(f"ALTER DATABASE {name} RESET default_transaction_read_only")
        await conn.close()


@pytest.fixture
async def owner(node: Node, admin_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    async with _superuser(node, admin_dsn) as conn:
        yield conn


async def _address(tax: ExchangeClient) -> str:
    answer = await tax.query(
        "samr.enterprise",
        [COMPANY_USCC],
        fields=["address"],
        purpose="税务登记",
        case_id="TX-2026-001",
    )
    (record,) = answer.records
    return str(record.fields["address"])


async def _stored(owner: asyncpg.Connection) -> tuple[int, int]:
    """(versions of the company's record, change events of the dataset)."""
    versions = await owner.fetchval(
        "SELECT count(*) FROM record WHERE dataset = 'samr.enterprise' AND key = $1",
        COMPANY_USCC,
    )
    events = await owner.fetchval(
        "SELECT count(*) FROM event_outbox WHERE dataset = 'samr.enterprise'"
    )
    return int(versions), int(events)


async def _past_ended_sessions(call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, made again while it meets a pooled connection the server has just
    ended (condition ``unreachable``), at most five times in all."""
    for _ in range(4):
        try:
            return await call()
        except ExchangeError as e:
            if e.metadata.get("condition") != "unreachable":
                raise
    return await call()


def _unavailable(error: ExchangeError, condition: str, sqlstate: str) -> None:
    assert error.code is grpc.StatusCode.UNAVAILABLE, error
    assert error.reason == "DATABASE_UNAVAILABLE", error
    assert error.metadata == {"condition": condition, "sqlstate": sqlstate}, error
    assert error.retriable
    assert error.retry_after == trouble.RETRY_SECONDS
    assert "nothing was changed" in error.message
    assert "Traceback" not in error.message


async def test_a_full_disk_changes_nothing_and_is_unavailable(
    node: Node, owner: asyncpg.Connection
) -> None:
    """PostgreSQL's disk_full (53100, raised here by a trigger on the change events, the
    publish's last write) fails the publish as UNAVAILABLE: the record's earlier update
    rolled back with it, no event was written, readers still see the old record. Once
    there is space, the same publish goes through."""
    async with client_for(node, "samr") as samr, client_for(node, "tax", "TX-1") as tax:
        await samr.register_dataset(ENTERPRISE, publish=True)
        await samr.publish_records("samr.enterprise", [(COMPANY_USCC, COMPANY)])
        before = await _stored(owner)
        await owner.execute(
            """CREATE FUNCTION no_space() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
                RAISE EXCEPTION 'could not extend file: No space left on device'
                USING ERRCODE = 'disk_full';
            END $$;
            CREATE TRIGGER no_space BEFORE INSERT ON event_outbox
            FOR EACH STATEMENT EXECUTE FUNCTION no_space();"""
        )
        for _ in range(3):
            with pytest.raises(ExchangeError) as caught:
                await samr.publish_records("samr.enterprise", [(COMPANY_USCC, MOVED)])
            _unavailable(caught.value, "disk_full", "53100")
            assert "disk space" in caught.value.message
        assert await _stored(owner) == before
        assert await _address(tax) == COMPANY["address"]
        counted = node.metrics.database_unavailable.labels("disk_full")._value.get()
        assert counted == 3

        await owner.execute("DROP TRIGGER no_space ON event_outbox")
        await samr.publish_records("samr.enterprise", [(COMPANY_USCC, MOVED)])
        assert await _stored(owner) == (before[0] + 1, before[1] + 1)
        assert await _address(tax) == MOVED["address"]


async def test_a_read_only_database_changes_nothing_and_is_unavailable(
    node: Node, owner: asyncpg.Connection
) -> None:
    """A database that takes no writes (a hot standby, a failover under way; here
    ``default_transaction_read_only`` on the node's sessions) answers a publish
    UNAVAILABLE / read_only and a query AUDIT_UNAVAILABLE (its access-log entry cannot be
    written, so no record leaves); once it takes writes again both are served."""
    async with client_for(node, "samr") as samr, client_for(node, "tax", "TX-1") as tax:
        await samr.register_dataset(ENTERPRISE, publish=True)
        await samr.publish_records("samr.enterprise", [(COMPANY_USCC, COMPANY)])
        before = await _stored(owner)
        name = await owner.fetchval("SELECT current_database()")
        await owner.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
        await owner.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        for _ in range(3):
            with pytest.raises(ExchangeError) as caught:
                await _past_ended_sessions(
                    lambda: samr.publish_records("samr.enterprise", [(COMPANY_USCC, MOVED)])
                )
            _unavailable(caught.value, "read_only", "25006")
        with pytest.raises(ExchangeError) as refused:
            await _past_ended_sessions(lambda: _address(tax))
        assert refused.value.code is grpc.StatusCode.UNAVAILABLE
        assert refused.value.reason == "AUDIT_UNAVAILABLE"
        assert await _stored(owner) == before

        await owner.execute(f"ALTER DATABASE {name} RESET default_transaction_read_only")
        await owner.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        await _past_ended_sessions(
            lambda: samr.publish_records("samr.enterprise", [(COMPANY_USCC, MOVED)])
        )
        assert await _stored(owner) == (before[0] + 1, before[1] + 1)
        assert await _address(tax) == MOVED["address"]


@contextlib.asynccontextmanager
async def _node_with(settings: Settings, **limits: float) -> AsyncIterator[Node]:
    changed = settings.model_copy(update=limits)
    async with Node(changed, clock=FixedClock(SystemClock().now())) as running:
        await enrol_demo(changed)
        yield running


@server_timers
async def test_calls_waiting_on_a_lock_are_stopped_and_free_their_connections(
    settings: Settings, admin_dsn: str
) -> None:
    """A table locked by a long transaction (an operator's maintenance; a migration
    queued behind a long query) would hold each query waiting on it, and its pooled
    connection, until the driver's own timeout. With ``db_lock_wait_seconds`` each is
    stopped: UNAVAILABLE / lock_timeout, more of them than the pool has connections;
    meanwhile calls that need no such lock are served; once the lock is gone, so are
    the queries."""
    async with (
        _node_with(settings, db_lock_wait_seconds=0.5) as node,
        client_for(node, "samr") as samr,
        client_for(node, "tax", "TX-1") as tax,
    ):
        await samr.register_dataset(ENTERPRISE, publish=True)
        await samr.publish_records("samr.enterprise", [(COMPANY_USCC, COMPANY)])
        async with _superuser(node, admin_dsn) as holder, holder.transaction():
            await holder.execute("LOCK TABLE record IN ACCESS EXCLUSIVE MODE")
            waiting = node.settings.db_pool_size + 4
            answers = await asyncio.gather(
                *(_address(tax) for _ in range(waiting)), return_exceptions=True
            )
            for answer in answers:
                assert isinstance(answer, ExchangeError), answer
                assert answer.code is grpc.StatusCode.UNAVAILABLE, answer
                assert answer.metadata == {"condition": "lock_timeout", "sqlstate": "55P03"}
                assert "another transaction" in answer.message
            assert (await samr.who_am_i()).department == "samr"
        assert await _address(tax) == COMPANY["address"]
        counted = node.metrics.database_unavailable.labels("lock_timeout")._value.get()
        assert counted == waiting


@server_timers
async def test_a_statement_that_runs_too_long_is_stopped_and_changes_nothing(
    settings: Settings, admin_dsn: str
) -> None:
    """A publish whose last write runs past ``db_statement_seconds`` (a trigger that
    sleeps) is stopped: UNAVAILABLE / statement_timeout, nothing stored."""
    async with (
        _node_with(settings, db_statement_seconds=0.5) as node,
        client_for(node, "samr") as samr,
    ):
        await samr.register_dataset(ENTERPRISE, publish=True)
        await samr.publish_records("samr.enterprise", [(COMPANY_USCC, COMPANY)])
        async with _superuser(node, admin_dsn) as owner:
            before = await _stored(owner)
            await owner.execute(
                """CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
                    PERFORM pg_sleep(30); RETURN NULL;
                END $$;
                CREATE TRIGGER slow BEFORE INSERT ON event_outbox
                FOR EACH STATEMENT EXECUTE FUNCTION slow();"""
            )
            with pytest.raises(ExchangeError) as caught:
                await samr.publish_records("samr.enterprise", [(COMPANY_USCC, MOVED)])
            assert caught.value.code is grpc.StatusCode.UNAVAILABLE
            assert caught.value.metadata == {"condition": "statement_timeout", "sqlstate": "57014"}
            assert "nothing was changed" in caught.value.message
            assert await _stored(owner) == before
            await owner.execute("DROP TRIGGER slow ON event_outbox")
            await samr.publish_records("samr.enterprise", [(COMPANY_USCC, MOVED)])
            assert await _stored(owner) == (before[0] + 1, before[1] + 1)


def test_conditions_are_named_from_the_drivers_error() -> None:
    full = asyncpg.exceptions.DiskFullError("could not extend file")
    assert trouble.condition(full) == "disk_full"
    assert trouble.condition(asyncpg.exceptions.OutOfMemoryError("out of memory")) == (
        "out_of_memory"
    )
    assert trouble.condition(asyncpg.exceptions.ConfigurationLimitExceededError("temp")) == (
        "resource_limit"
    )
    assert trouble.condition(asyncpg.exceptions.ReadOnlySQLTransactionError("ro")) == ("read_only")
    # The pool's own error when no connection opens: named by what the server said.
    crowded = DatabaseUnreachable("no connection")
    crowded.__cause__ = asyncpg.exceptions.TooManyConnectionsError("too many clients")
    assert trouble.condition(crowded) == "too_many_connections"
    refused = DatabaseUnreachable("no connection")
    refused.__cause__ = ConnectionRefusedError(111, "Connection refused")
    assert trouble.condition(refused) == "unreachable"
    assert trouble.refusal(refused).metadata == {"condition": "unreachable"}
    for error in (full, crowded, refused):
        assert isinstance(error, trouble.DATABASE_TROUBLE)


def test_the_log_gets_one_line_per_condition_every_few_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A full disk fails every write, hundreds a second: the operator's log gets the first
    at once, then one line per ``every`` seconds saying how many it stands for, for each
    condition apart."""
    now = [100.0]
    reports = trouble.TroubleReports(every=10.0, clock=lambda: now[0])
    full = asyncpg.exceptions.DiskFullError("could not extend file")
    gone = DatabaseUnreachable("no connection")
    with caplog.at_level(logging.WARNING, logger="tongban.exchange.db.trouble"):
        assert reports.report("/Publish", full)
        for i in range(250):  # five seconds of calls
            now[0] = 100.0 + i / 50
            assert not reports.report("/Publish", full)
        assert reports.report("/Query", gone)  # another condition has its own line
        now[0] = 110.0
        assert reports.report("/Publish", full)
        assert not reports.report("/Publish", full)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert lines == [
        (logging.ERROR, "database disk_full, met by /Publish: could not extend file"),
        (logging.WARNING, "database unreachable, met by /Query: no connection"),
        (
            logging.ERROR,
            "database disk_full, met by /Publish: could not extend file "
            "(250 more since the last line)",
        ),
    ]
