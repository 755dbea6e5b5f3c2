"""Write-back into SQLite and PostgreSQL tables and an outbound CSV folder: idempotent on
the command id, across the crash window, with refused commands kept for replay."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from tests.adapters.conftest import write_mapping
from tests.conftest import uscc
from tongban.adapters import (
    Op,
    StateStore,
    WriteBackTargetInvalid,
    WriteBatch,
    WriteCommand,
    apply_commands,
    replay_write_rejects,
)
from tongban.adapters.sources import DropFolderSource, PostgresSource, SqliteSource
from tongban.signing.clock import FixedClock

DATASET = "samr.enterprise"
TARGET = """\
write_back:
  - dataset: samr.enterprise
    {table}
    key_column: uscc
    columns:
      name: name
      status: status
      registered: {{field: registered_on, format: "%Y%m%d"}}
      capital: capital
      changed_at: changed_at
      synced_by: {{constant: tongban}}
"""


def _command(
    n: int, version: int, *, name: str | None = None, status: str = "存续", op: Op = Op.UPSERT
) -> WriteCommand:
    return WriteCommand(
        id=f"event-{n}-{version}",
        dataset=DATASET,
        key=uscc(n),
        op=op,
        values={
            "uscc": uscc(n),
            "name": name or f"企业{n}",
            "status": status,
            "registered_on": date(2024, 1, n),
            "capital": Decimal("1000.50") * n,
            "changed_at": datetime(2026, 1, 5, 2, 0, tzinfo=UTC),
            "unmapped": "ignored",
        },
        version=version,
    )


@pytest.fixture
def state(tmp_path: Path, clock: FixedClock) -> Iterator[StateStore]:
    with StateStore.open(tmp_path / "state.sqlite", clock=clock) as store:
        yield store


# --- SQLite ---------------------------------------------------------------------------


@pytest.fixture
def sqlite_legacy(tmp_path: Path) -> Path:
    path = tmp_path / "legacy.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE swdj (uscc TEXT PRIMARY KEY, name TEXT UNIQUE, status TEXT NOT NULL, "
        "registered TEXT, capital NUMERIC, changed_at DATETIME, synced_by TEXT)"
    )
    conn.commit()
    conn.close()
    return path


def _sqlite_rows(path: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT * FROM swdj ORDER BY uscc").fetchall()
    finally:
        conn.close()


async def test_sqlite_upserts_are_idempotent_on_command_id(
    tmp_path: Path, sqlite_legacy: Path, state: StateStore
) -> None:
    mapping = write_mapping(
        tmp_path,
        "adapter: tax\nsource: {kind: sqlite, path: legacy.db}\n"
        + TARGET.format(table="table: swdj"),
    )
    commands = [_command(1, 1), _command(2, 1), _command(3, 1)]
    async with SqliteSource(mapping) as source:
        report = await apply_commands(source, state, commands)
        assert report.applied == [c.id for c in commands]
        rows = _sqlite_rows(sqlite_legacy)
        assert rows[0] == (
            uscc(1),
            "企业1",
            "存续",
            "20240101",
            1000.5,
            "2026-01-05 10:00:00",  # UTC 02:00 written as local (+08:00) time
            "tongban",
        )

        again = await apply_commands(source, state, commands)  # re-delivered
        assert (again.applied, again.duplicates) == ([], [c.id for c in commands])
        assert _sqlite_rows(sqlite_legacy) == rows

        # The crash window: applied to the legacy table, then killed before the ids were
        # recorded. On re-delivery it is applied again, which changes nothing.
        late = _command(1, 2, name="新名称")
        await source.apply(WriteBatch(99, (late,)))
        after_crash = _sqlite_rows(sqlite_legacy)
        assert (await apply_commands(source, state, [late])).applied == [late.id]
        assert _sqlite_rows(sqlite_legacy) == after_crash

        # An older version arriving late does not overwrite the newer one.
        older = replace(_command(1, 1, name="旧名称"), id="redelivered-1-1")
        stale = await apply_commands(source, state, [older])
        assert stale.stale == ["redelivered-1-1"]
        assert _sqlite_rows(sqlite_legacy)[0][1] == "新名称"

        deleted = WriteCommand("event-3-2", DATASET, uscc(3), Op.DELETE, version=2)
        await apply_commands(source, state, [deleted, deleted])
        assert [r[0] for r in _sqlite_rows(sqlite_legacy)] == [uscc(1), uscc(2)]


async def test_sqlite_refused_commands_are_kept_and_replayed(
    tmp_path: Path, sqlite_legacy: Path, state: StateStore
) -> None:
    mapping = write_mapping(
        tmp_path,
        "adapter: tax\nsource: {kind: sqlite, path: legacy.db}\n"
        + TARGET.format(table="table: swdj"),
    )
    conn = sqlite3.connect(sqlite_legacy)
    conn.execute("INSERT INTO swdj (uscc, name, status) VALUES ('OLD', '企业2', '注销')")
    conn.commit()
    conn.close()
    async with SqliteSource(mapping) as source:
        report = await apply_commands(
            source, state, [_command(1, 1), _command(2, 1), _command(3, 1)]
        )
        assert report.applied == ["event-1-1", "event-3-1"]
        assert report.rejected == ["event-2-1"]  # 企业2's name is taken: UNIQUE
        (refused,) = state.list_write_rejects()
        assert (refused.reason, refused.command.key) == ("CONSTRAINT_VIOLATED", uscc(2))
        assert refused.command.values["capital"] == Decimal("2001.00")

        # Re-delivery does not retry it; an operator fixes the legacy data and replays.
        assert (await apply_commands(source, state, [_command(2, 1)])).duplicates == ["event-2-1"]
        conn = sqlite3.connect(sqlite_legacy)
        conn.execute("DELETE FROM swdj WHERE uscc = 'OLD'")
        conn.commit()
        conn.close()
        replay = await replay_write_rejects(source, state)
        assert replay.applied == ["event-2-1"]
        assert state.list_write_rejects() == []
    assert [r[0] for r in _sqlite_rows(sqlite_legacy)] == [uscc(1), uscc(2), uscc(3)]


# --- PostgreSQL -----------------------------------------------------------------------


@pytest_asyncio.fixture
async def pg_legacy(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    await conn.execute(
        """
        CREATE SCHEMA legacy;
        CREATE TABLE legacy.t_tax (
            uscc varchar(18) PRIMARY KEY,
            name varchar(100),
            status varchar(4) NOT NULL,
            registered char(8),
            capital numeric(12, 2),
            changed_at timestamp,
            synced_by text
        );
        CREATE TABLE legacy.no_key (uscc varchar(18), name text);
        """
    )
    try:
        yield conn
    finally:
        await conn.close()


async def test_postgres_upserts_are_idempotent_and_refusals_isolated(
    tmp_path: Path, database_url: str, pg_legacy: asyncpg.Connection, state: StateStore
) -> None:
    source_text = (
        f'adapter: tax\nsource: {{kind: postgres, dsn: "{database_url}", schema: legacy}}\n'
    )
    mapping = write_mapping(tmp_path, source_text + TARGET.format(table="table: t_tax"))
    commands = [_command(1, 1), _command(2, 1, status="ACTIVE"), _command(3, 1)]
    async with PostgresSource(mapping) as source:
        report = await apply_commands(source, state, commands)
        assert report.applied == ["event-1-1", "event-3-1"]
        assert report.rejected == ["event-2-1"]  # 'ACTIVE' does not fit varchar(4)
        (refused,) = state.list_write_rejects()
        assert refused.reason == "VALUE_REFUSED"

        row = await pg_legacy.fetchrow("SELECT * FROM legacy.t_tax WHERE uscc = $1", uscc(1))
        assert row is not None
        assert dict(row) == {
            "uscc": uscc(1),
            "name": "企业1",
            "status": "存续",
            "registered": "20240101",
            "capital": Decimal("1000.50"),
            "changed_at": datetime(2026, 1, 5, 10, 0),  # noqa: DTZ001 - local time
            "synced_by": "tongban",
        }
        before = await pg_legacy.fetch("SELECT * FROM legacy.t_tax ORDER BY uscc")

        late = _command(1, 2)  # same values, new event: applied, nothing changes
        await source.apply(WriteBatch(7, (late,)))  # the crash window
        assert (await apply_commands(source, state, [late])).applied == [late.id]
        assert (await apply_commands(source, state, commands)).duplicates == [
            c.id for c in commands
        ]
        assert await pg_legacy.fetch("SELECT * FROM legacy.t_tax ORDER BY uscc") == before

        await pg_legacy.execute("ALTER TABLE legacy.t_tax ALTER COLUMN status TYPE varchar(10)")
        assert (await replay_write_rejects(source, state)).applied == ["event-2-1"]

    no_key = write_mapping(
        tmp_path,
        source_text
        + "write_back:\n  - {dataset: samr.enterprise, table: no_key, key_column: uscc, "
        "columns: {name: name}}\n",
        name="no_key.yaml",
    )
    async with PostgresSource(no_key) as source:
        with pytest.raises(WriteBackTargetInvalid) as error:
            await apply_commands(source, state, [_command(5, 1)])
    assert error.value.metadata["sqlstate"] == "42P10"  # no unique constraint to upsert on
    assert state.applied(["event-5-1"]) == set()  # nothing recorded: it can be retried


# --- outbound folder ------------------------------------------------------------------


async def test_outbound_csv_files_are_atomic_ordered_and_not_repeated(
    tmp_path: Path, state: StateStore, clock: FixedClock
) -> None:
    (tmp_path / "drop").mkdir()
    (tmp_path / "outbound").mkdir()
    mapping = write_mapping(
        tmp_path,
        "adapter: tax\nsource:\n  kind: csv\n  folder: drop\n"
        "  outbound: {folder: outbound, encoding: gbk}\n"
        + TARGET.format(table="").replace("changed_at: changed_at", "changed: changed_at"),
    )
    outbound = tmp_path / "outbound"
    async with DropFolderSource(mapping, clock=clock) as source:
        first = await apply_commands(source, state, [_command(1, 1), _command(2, 1, name="王𠮷")])
        assert first.rejected == ["event-2-1"]  # GBK cannot write 𠮷
        await apply_commands(
            source,
            state,
            [_command(3, 1), WriteCommand("event-1-2", DATASET, uscc(1), Op.DELETE, version=2)],
        )
        files = sorted(p.name for p in outbound.iterdir())
        assert len(files) == 2
        assert files[0].startswith("000000000001_samr.enterprise_")
        assert files[1].startswith("000000000002_samr.enterprise_")
        text = (outbound / files[0]).read_bytes().decode("gbk")
        assert text.splitlines() == [
            "op,uscc,name,status,registered,capital,changed,synced_by",
            f"upsert,{uscc(1)},企业1,存续,20240101,1000.5,2026-01-05 10:00:00,tongban",
        ]
        assert (outbound / files[1]).read_bytes().decode("gbk").splitlines()[2] == (
            f"delete,{uscc(1)},,,,,,"
        )

        # The crash window: the file was renamed into place, the ids were not recorded.
        crashed = _command(4, 1)
        await source.apply(WriteBatch(50, (crashed,)))
        assert (await apply_commands(source, state, [crashed])).applied == [crashed.id]
        assert len(list(outbound.iterdir())) == 3  # written once, not again
        assert not [p for p in outbound.iterdir() if p.name.endswith(".tmp")]
