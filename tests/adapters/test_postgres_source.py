"""A legacy PostgreSQL database (the real server from tests/conftest.py): compound
cursors, a real late commit, the adapter's backend killed mid-sync, schema changes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import pytest_asyncio
from asyncpg.transaction import Transaction

from tests.adapters.conftest import VALIDATORS, RecordingSink, write_mapping
from tests.conftest import uscc
from tongban.adapters import (
    AdapterMapping,
    CursorCheckpoint,
    SourceSchemaChanged,
    SourceUnavailable,
    StateStore,
    StreamNotFound,
    StreamSync,
    SyncReport,
)
from tongban.adapters.sources import PostgresSource
from tongban.signing.clock import FixedClock

MAPPING = """\
adapter: samr
source:
  kind: postgres
  dsn: "{dsn}"
  schema: legacy
  retry: {{attempts: 5, initial_delay_seconds: 0.05, max_delay_seconds: 0.2}}
streams:
  - name: enterprises
    dataset: samr.enterprise
    table: t_qydj
    key: uscc
    batch_size: {batch_size}
    mode: {{kind: cursor, cursor_column: gxsj, key_column: {key_column}, look_back: {look_back}}}
    fields:
      uscc: {{column: tyshxydm, check: uscc}}
      name: qymc
      founded: {{column: clrq, type: date, formats: ["%Y%m%d"]}}
      capital: {{column: zczb, type: decimal}}
"""
T0 = datetime(2026, 1, 5, 10, 0)  # noqa: DTZ001 - a legacy "timestamp without time zone"


@pytest_asyncio.fixture
async def legacy(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    await conn.execute(
        """
        CREATE SCHEMA legacy;
        CREATE TABLE legacy.t_qydj (
            id bigint PRIMARY KEY,
            code varchar(20) UNIQUE,
            tyshxydm varchar(18),
            qymc varchar(200),
            clrq varchar(20),
            zczb numeric(18, 2),
            gxsj timestamp NOT NULL
        );
        """
    )
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def state(tmp_path: Path, clock: FixedClock) -> Iterator[StateStore]:
    with StateStore.open(tmp_path / "state.sqlite", clock=clock) as store:
        yield store


def _mapping(
    tmp_path: Path,
    dsn: str,
    *,
    batch_size: int = 2,
    look_back: int = 0,
    key_column: str = "id",
) -> AdapterMapping:
    text = MAPPING.format(
        dsn=dsn, batch_size=batch_size, look_back=look_back, key_column=key_column
    )
    return write_mapping(tmp_path, text)


async def _insert(conn: asyncpg.Connection, n: int, at: datetime, code: str | None = None) -> None:
    await conn.execute(
        "INSERT INTO legacy.t_qydj VALUES ($1, $2, $3, $4, '20200102', $5, $6)",
        n,
        code or f"c{n}",
        uscc(n),
        f"企业{n}",
        n * 1000,
        at,
    )


async def _run(mapping: AdapterMapping, state: StateStore, sink: RecordingSink) -> SyncReport:
    async with PostgresSource(mapping) as source:
        sync = StreamSync(source, mapping, "enterprises", state, sink, validators=VALIDATORS)
        return await sync.run()


async def test_equal_timestamps_across_pages_with_text_keys(
    tmp_path: Path, database_url: str, legacy: asyncpg.Connection, state: StateStore
) -> None:
    # Keys whose order differs between code points and a locale's collation.
    codes = ["B", "a", "C", "b", "A"]
    for n, code in enumerate(codes, start=1):
        await _insert(legacy, n, T0, code)
    sink = RecordingSink()
    await _run(_mapping(tmp_path, database_url, key_column="code"), state, sink)
    assert sorted(sink.keys()) == sorted(uscc(n) for n in range(1, 6))
    assert len(sink.keys()) == 5
    assert state.checkpoint("enterprises") == CursorCheckpoint(T0, "b")  # "b" sorts last


async def test_a_late_commit_is_caught_once_by_the_look_back(
    tmp_path: Path, database_url: str, legacy: asyncpg.Connection, state: StateStore
) -> None:
    mapping = _mapping(tmp_path, database_url, look_back=600)
    late = await asyncpg.connect(database_url)
    try:
        slow = late.transaction()
        await slow.start()
        # Stamped 10:01 by a transaction that is still open...
        await _insert(late, 1, T0 + timedelta(minutes=1))
        # ...while a later one commits at once.
        await _insert(legacy, 2, T0 + timedelta(minutes=3))
        sink = RecordingSink()
        await _run(mapping, state, sink)
        assert sink.keys() == [uscc(2)]
        assert state.checkpoint("enterprises") == CursorCheckpoint(T0 + timedelta(minutes=3), 2)
        await slow.commit()
    finally:
        await late.close()

    sink = RecordingSink()
    await _run(mapping, state, sink)
    assert sink.keys() == [uscc(1)]
    sink = RecordingSink()
    await _run(mapping, state, sink)
    assert sink.keys() == []


async def test_the_adapters_backend_killed_mid_sync(
    tmp_path: Path,
    database_url: str,
    admin_dsn: str,
    legacy: asyncpg.Connection,
    state: StateStore,
) -> None:
    for n in range(1, 8):
        await _insert(legacy, n, T0 + timedelta(seconds=n))
    database = urlsplit(database_url).path.lstrip("/")
    killed: list[int] = []

    async def terminate(call: int) -> None:
        if call in (1, 3):
            admin = await asyncpg.connect(admin_dsn)
            try:
                rows = await admin.fetch(
                    "SELECT pg_terminate_backend(pid) AS done FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid() "
                    "AND application_name = ''",
                    database,
                )
            finally:
                await admin.close()
            killed.extend(int(r["done"]) for r in rows)

    # The fixture's own connection must survive: name it so it is not terminated.
    await legacy.execute("SET application_name = 'test fixture'")
    sink = RecordingSink()
    sink.before = terminate
    await _run(_mapping(tmp_path, database_url), state, sink)

    assert sum(killed) >= 2  # the adapter's connection was killed twice
    assert sink.keys() == [uscc(n) for n in range(1, 8)]  # nothing lost, nothing twice


async def test_the_adapters_backend_killed_while_its_query_runs(
    tmp_path: Path,
    database_url: str,
    admin_dsn: str,
    legacy: asyncpg.Connection,
    state: StateStore,
) -> None:
    for n in range(1, 6):
        await _insert(legacy, n, T0 + timedelta(seconds=n))
    database = urlsplit(database_url).path.lstrip("/")
    blocker = await asyncpg.connect(database_url)
    admin = await asyncpg.connect(admin_dsn)
    killed: list[bool] = []
    tasks: list[asyncio.Task[None]] = []

    async def kill_when_blocked(lock: Transaction) -> None:
        # Wait until the adapter's next page query is stuck behind the lock, kill it
        # there, then let the table go.
        for _ in range(200):
            rows = await admin.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = "
                "'Lock' AND query LIKE 'SELECT%t_qydj%'",
                database,
            )
            if rows:
                for row in rows:
                    done = await admin.fetchval("SELECT pg_terminate_backend($1)", row["pid"])
                    killed.append(bool(done))
                break
            await asyncio.sleep(0.02)
        await lock.commit()

    async def block_next_query(call: int) -> None:
        if call == 1:
            lock = blocker.transaction()
            await lock.start()
            await blocker.execute("LOCK TABLE legacy.t_qydj IN ACCESS EXCLUSIVE MODE")
            tasks.append(asyncio.get_running_loop().create_task(kill_when_blocked(lock)))

    sink = RecordingSink()
    sink.before = block_next_query
    try:
        await _run(_mapping(tmp_path, database_url), state, sink)
        await asyncio.gather(*tasks)
    finally:
        await blocker.close()
        await admin.close()
    assert killed == [True]
    assert sink.keys() == [uscc(n) for n in range(1, 6)]


async def test_an_unreachable_database_is_a_retriable_error(
    tmp_path: Path, database_url: str, state: StateStore
) -> None:
    parts = urlsplit(database_url)
    missing = parts._replace(query="host=/nonexistent-socket-dir").geturl()
    mapping = _mapping(tmp_path, missing)
    with pytest.raises(SourceUnavailable) as error:
        await _run(mapping, state, RecordingSink())
    assert error.value.retriable
    assert error.value.status == "UNAVAILABLE"


async def test_schema_changes_added_narrowed_and_dropped(
    tmp_path: Path, database_url: str, legacy: asyncpg.Connection, state: StateStore
) -> None:
    mapping = _mapping(tmp_path, database_url, look_back=3600)
    await _insert(legacy, 1, T0)
    sink = RecordingSink()
    await _run(mapping, state, sink)

    await legacy.execute("ALTER TABLE legacy.t_qydj ADD COLUMN fddbr text DEFAULT '张三'")
    await _insert(legacy, 2, T0)
    sink = RecordingSink()
    await _run(mapping, state, sink)
    assert sink.keys() == [uscc(2)]  # an added column is harmless

    await legacy.execute(
        "ALTER TABLE legacy.t_qydj ALTER COLUMN zczb TYPE numeric(8, 0) USING round(zczb)"
    )
    with pytest.raises(SourceSchemaChanged) as narrowed:
        await _run(mapping, state, RecordingSink())
    assert narrowed.value.metadata["changes"] == "zczb:narrowed"
    state.accept_source_schema("enterprises")

    await legacy.execute("ALTER TABLE legacy.t_qydj DROP COLUMN clrq")
    sink = RecordingSink()
    with pytest.raises(SourceSchemaChanged) as dropped:
        await _run(mapping, state, sink)
    assert dropped.value.metadata["changes"] == "clrq:missing"
    assert sink.calls == []


async def test_discover_lists_tables_columns_and_keys(
    tmp_path: Path, database_url: str, legacy: asyncpg.Connection
) -> None:
    mapping = _mapping(tmp_path, database_url)
    async with PostgresSource(mapping) as source:
        await source.check()
        (table,) = await source.discover()
        assert (table.name, table.key, table.cursor) == ("t_qydj", ("id",), "gxsj")
        qymc = table.column("qymc")
        assert qymc is not None
        assert (qymc.type_name, qymc.max_length, str(qymc.family)) == (
            "character varying(200)",
            200,
            "string",
        )
        zczb = table.column("zczb")
        assert zczb is not None
        assert (zczb.precision, zczb.scale) == (18, 2)
        await legacy.execute("DROP TABLE legacy.t_qydj")
        with pytest.raises(StreamNotFound):
            await source.check()
