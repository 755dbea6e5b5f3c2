"""A legacy SQLite database through the whole pipeline: cursors, late commits, crashes,
rejects and replays, schema changes and a locked file."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.adapters.conftest import VALIDATORS, Crash, RecordingSink, write_mapping
from tests.conftest import uscc
from tongban.adapters import (
    AdapterMapping,
    CursorCheckpoint,
    Op,
    RejectReason,
    SnapshotShrank,
    SourceSchemaChanged,
    SourceUnavailable,
    StateStore,
    StreamSync,
    SyncReport,
)
from tongban.adapters.sources import RestSource, SqliteSource, open_source
from tongban.signing.clock import FixedClock

MAPPING = """\
adapter: samr
source:
  kind: sqlite
  path: legacy.db
  busy_timeout_seconds: 0
  retry: {{attempts: 20, initial_delay_seconds: 0.01, max_delay_seconds: 0.05}}
streams:
  - name: enterprises
    dataset: samr.enterprise
    table: qydj
    key: uscc
    batch_size: 2
    mode: {{kind: {mode}, cursor_column: gxsj, key_column: id, look_back: {look_back}}}
    fields:
      uscc: {{column: tyshxydm, check: uscc}}
      name: qymc
      founded: {{column: clrq, type: date, formats: ["%Y%m%d", "%Y/%m/%d", "%Y年%m月%d日"]}}
      capital: {{column: zczb, type: decimal}}
"""
SNAPSHOT_MAPPING = MAPPING.replace(
    "mode: {{kind: {mode}, cursor_column: gxsj, key_column: id, look_back: {look_back}}}",
    "mode: {{kind: snapshot_diff, key_column: id}}",
)
T0 = "2026-01-05 10:00:00"


def _db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    return conn


def _create(path: Path) -> None:
    conn = _db(path)
    conn.execute(
        "CREATE TABLE qydj (id INTEGER PRIMARY KEY, tyshxydm TEXT, qymc VARCHAR(200), "
        "clrq TEXT, zczb DECIMAL(18,2), gxsj TEXT)"
    )
    conn.close()


def _insert(path: Path, *rows: tuple[int, str, str, str, str, str | None]) -> None:
    conn = _db(path)
    conn.executemany("INSERT INTO qydj VALUES (?, ?, ?, ?, ?, ?)", rows)
    conn.close()


def _row(n: int, at: str = T0, *, founded: str = "20200102") -> tuple[int, str, str, str, str, str]:
    return (n, uscc(n), f"企业{n}", founded, f"{n}000.50", at)


def _execute(path: Path, sql: str, *params: object) -> None:
    conn = _db(path)
    conn.execute(sql, params)
    conn.close()


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    path = tmp_path / "legacy.db"
    _create(path)
    return path


def _mapping(tmp_path: Path, *, look_back: int = 0, mode: str = "cursor") -> AdapterMapping:
    return write_mapping(tmp_path, MAPPING.format(look_back=look_back, mode=mode))


@pytest.fixture
def state(tmp_path: Path, clock: FixedClock) -> Iterator[StateStore]:
    with StateStore.open(tmp_path / "state.sqlite", clock=clock) as store:
        yield store


async def _run(mapping: AdapterMapping, state: StateStore, sink: RecordingSink) -> SyncReport:
    async with SqliteSource(mapping) as source:
        return await StreamSync(
            source, mapping, "enterprises", state, sink, validators=VALIDATORS
        ).run()


async def test_equal_timestamps_across_a_batch_boundary(
    tmp_path: Path, legacy: Path, state: StateStore, sink: RecordingSink
) -> None:
    _insert(legacy, *(_row(n) for n in range(1, 6)))  # five rows, one timestamp
    mapping = _mapping(tmp_path)
    report = await _run(mapping, state, sink)

    assert sink.keys() == [uscc(n) for n in range(1, 6)]  # each once, in order
    assert [len(batch) for _, batch in sink.calls] == [2, 2, 1]
    assert state.checkpoint("enterprises") == CursorCheckpoint(T0, 5)
    assert report.inserts == 5

    sink.reset()
    _insert(legacy, _row(6))  # same timestamp again, after the checkpoint's key
    await _run(mapping, state, sink)
    assert sink.keys() == [uscc(6)]


async def test_a_late_commit_with_an_older_timestamp_is_caught_once(
    tmp_path: Path, legacy: Path, state: StateStore, sink: RecordingSink
) -> None:
    _insert(legacy, _row(1, "2026-01-05 10:00:00"), _row(2, "2026-01-05 10:05:00"))
    mapping = _mapping(tmp_path, look_back=300)
    await _run(mapping, state, sink)
    assert sink.keys() == [uscc(1), uscc(2)]

    # A transaction stamped 10:03 commits after the pass that checkpointed 10:05.
    _insert(legacy, _row(3, "2026-01-05 10:03:00"))
    sink.reset()
    report = await _run(mapping, state, sink)
    assert sink.keys() == [uscc(3)]
    assert report.unchanged == 2  # rows 1 and 2, in the window

    sink.reset()
    await _run(mapping, state, sink)
    assert sink.keys() == []


async def test_killed_between_publish_and_checkpoint_resumes_without_loss(
    tmp_path: Path, legacy: Path, clock: FixedClock
) -> None:
    _insert(legacy, *(_row(n, f"2026-01-05 10:0{n}:00") for n in range(1, 8)))
    mapping = _mapping(tmp_path)
    crashed = RecordingSink()
    crashed.crash_after = 2
    with StateStore.open(tmp_path / "state.sqlite", clock=clock) as state:
        with pytest.raises(Crash):
            await _run(mapping, state, crashed)
        assert state.checkpoint("enterprises") == CursorCheckpoint("2026-01-05 10:02:00", 2)

    resumed = RecordingSink()
    with StateStore.open(tmp_path / "state.sqlite", clock=clock) as state:
        await _run(mapping, state, resumed)

    resent = crashed.calls[-1][1]
    assert [(c.key, c.fingerprint, c.id) for c in resumed.calls[0][1]] == [
        (c.key, c.fingerprint, c.id) for c in resent
    ]
    everything = crashed.keys() + resumed.keys()
    assert sorted(set(everything)) == sorted(uscc(n) for n in range(1, 8))
    assert len(everything) == 7 + len(resent)  # only the re-sent batch twice


async def test_a_failed_publish_does_not_advance_the_checkpoint(
    tmp_path: Path, legacy: Path, state: StateStore, sink: RecordingSink
) -> None:
    _insert(legacy, *(_row(n, f"2026-01-05 10:0{n}:00") for n in range(1, 6)))
    mapping = _mapping(tmp_path)
    sink.fail_on = 2
    with pytest.raises(ConnectionError):
        await _run(mapping, state, sink)
    assert state.checkpoint("enterprises") == CursorCheckpoint("2026-01-05 10:02:00", 2)
    assert sink.keys() == [uscc(1), uscc(2)]

    sink.reset()
    await _run(mapping, state, sink)
    assert sink.keys() == [uscc(n) for n in range(3, 6)]


async def test_bad_rows_are_rejected_and_replayed_after_the_source_is_fixed(
    tmp_path: Path, legacy: Path, state: StateStore, sink: RecordingSink
) -> None:
    _insert(
        legacy, _row(1), _row(2, founded="2020-13-45"), _row(3), _row(4, founded="2020年2月3日")
    )
    _insert(legacy, (5, uscc(5), "企业5", "20200102", "1", None))  # no cursor value
    mapping = _mapping(tmp_path)
    report = await _run(mapping, state, sink)

    assert sink.keys() == [uscc(1), uscc(3), uscc(4)]  # good rows keep flowing
    assert report.rejected == 2
    rejects = {r.key: r for r in state.list_rejects("enterprises")}
    bad = rejects[uscc(2)]
    assert (bad.reason, bad.field, bad.source_key, bad.count) == ("BAD_DATE", "founded", 2, 1)
    assert bad.location == "qydj id=2"
    assert bad.row["clrq"] == "2020-13-45"
    assert rejects[uscc(5)].reason == RejectReason.NULL_CURSOR

    # Fixed in place, without touching gxsj: a cursor pass would never see it again.
    _execute(legacy, "UPDATE qydj SET clrq = '2020/02/03' WHERE id = 2")
    sink.reset()
    await _run(mapping, state, sink)
    assert sink.keys() == []
    assert state.reject_count("enterprises") == 2  # the NULL cursor row counted again
    assert {r.key: r.count for r in state.list_rejects()}[uscc(5)] == 2

    async with SqliteSource(mapping) as source:
        sync = StreamSync(source, mapping, "enterprises", state, sink, validators=VALIDATORS)
        replay = await sync.replay_rejects()
    assert sink.keys() == [uscc(2)]
    assert replay.cleared == 1
    assert [r.key for r in state.list_rejects()] == [uscc(5)]  # still no cursor value

    _execute(legacy, "UPDATE qydj SET gxsj = ? WHERE id = 5", T0)
    sink.reset()
    await _run(mapping, state, sink)
    assert sink.keys() == [uscc(5)]
    assert state.reject_count() == 0


async def test_a_column_added_mid_sync_changes_nothing(
    tmp_path: Path, legacy: Path, state: StateStore, sink: RecordingSink
) -> None:
    _insert(legacy, *(_row(n) for n in range(1, 6)))

    async def add_column(call: int) -> None:
        if call == 2:
            _execute(legacy, "ALTER TABLE qydj ADD COLUMN fddbr TEXT DEFAULT '张三'")

    sink.before = add_column
    mapping = _mapping(tmp_path)
    await _run(mapping, state, sink)
    assert sink.keys() == [uscc(n) for n in range(1, 6)]

    sink.reset()
    _execute(legacy, "INSERT INTO qydj VALUES (?, ?, ?, ?, ?, ?, ?)", *_row(6), "李四")
    await _run(mapping, state, sink)
    assert sink.keys() == [uscc(6)]


def _rebuild_with(path: Path, qymc_type: str) -> None:
    conn = _db(path)
    conn.executescript(
        f"""
        BEGIN;
        CREATE TABLE qydj_new (id INTEGER PRIMARY KEY, tyshxydm TEXT, qymc {qymc_type},
                               clrq TEXT, zczb DECIMAL(18,2), gxsj TEXT);
        INSERT INTO qydj_new SELECT id, tyshxydm, substr(qymc, 1, 2), clrq, zczb, gxsj FROM qydj;
        DROP TABLE qydj;
        ALTER TABLE qydj_new RENAME TO qydj;
        COMMIT;
        """
    )
    conn.close()


async def test_a_narrowed_column_stops_the_stream_until_accepted(
    tmp_path: Path, legacy: Path, state: StateStore, sink: RecordingSink
) -> None:
    _insert(legacy, _row(1))
    mapping = _mapping(tmp_path, look_back=3600)
    await _run(mapping, state, sink)

    _rebuild_with(legacy, "VARCHAR(2)")  # names truncated by the migration
    sink.reset()
    with pytest.raises(SourceSchemaChanged) as error:
        await _run(mapping, state, sink)
    assert error.value.metadata == {
        "stream": "enterprises",
        "columns": "qymc",
        "changes": "qymc:narrowed",
    }
    assert sink.calls == []  # no truncated names went out

    state.accept_source_schema("enterprises")  # an operator checked the data
    await _run(mapping, state, sink)
    assert [dict(c.values)["name"] for c in sink.changes] == ["企业"]


async def test_a_column_dropped_mid_pass_stops_the_stream(
    tmp_path: Path, legacy: Path, state: StateStore, sink: RecordingSink
) -> None:
    _insert(legacy, *(_row(n) for n in range(1, 6)))

    async def drop_column(call: int) -> None:
        if call == 1:
            _execute(legacy, "ALTER TABLE qydj DROP COLUMN clrq")

    sink.before = drop_column
    mapping = _mapping(tmp_path)
    with pytest.raises(SourceSchemaChanged) as error:
        await _run(mapping, state, sink)
    assert error.value.metadata["changes"] == "clrq:missing"
    assert sink.keys() == [uscc(1), uscc(2)]  # the first batch, already read
    assert state.checkpoint("enterprises") == CursorCheckpoint(T0, 2)

    sink.reset()
    with pytest.raises(SourceSchemaChanged):
        await _run(mapping, state, sink)  # and it stays stopped
    assert sink.calls == []


async def test_a_locked_database_is_retried_and_the_pass_continues(
    tmp_path: Path, legacy: Path, state: StateStore, sink: RecordingSink
) -> None:
    _insert(legacy, *(_row(n) for n in range(1, 6)))
    holder = _db(legacy)

    async def lock_for_a_moment(call: int) -> None:
        if call == 1:
            holder.execute("BEGIN EXCLUSIVE")  # the legacy application's long write

            async def release() -> None:
                await asyncio.sleep(0.1)
                holder.execute("COMMIT")

            asyncio.get_running_loop().create_task(release())

    sink.before = lock_for_a_moment
    try:
        await _run(_mapping(tmp_path), state, sink)
    finally:
        await asyncio.sleep(0.15)
        holder.close()
    assert sink.keys() == [uscc(n) for n in range(1, 6)]


async def test_snapshot_diff_emits_only_inserts_changes_and_deletes(
    tmp_path: Path, legacy: Path, state: StateStore, sink: RecordingSink
) -> None:
    _insert(legacy, *(_row(n) for n in range(1, 6)))
    mapping = write_mapping(tmp_path, SNAPSHOT_MAPPING.format())
    first = await _run(mapping, state, sink)
    assert (first.inserts, first.deletes) == (5, 0)

    _execute(legacy, "UPDATE qydj SET qymc = '新名称' WHERE id = 2")
    _execute(legacy, "DELETE FROM qydj WHERE id = 4")
    _insert(legacy, _row(9))
    sink.reset()
    report = await _run(mapping, state, sink)
    assert [(c.op, c.key) for c in sink.changes] == [
        (Op.UPSERT, uscc(2)),
        (Op.UPSERT, uscc(9)),
        (Op.DELETE, uscc(4)),
    ]
    assert (report.inserts, report.changed, report.deletes, report.unchanged) == (
        1,
        1,
        1,
        3,
    )

    sink.reset()
    await _run(mapping, state, sink)
    assert sink.changes == []


async def test_an_emptied_table_is_not_taken_for_mass_deletion(
    tmp_path: Path, legacy: Path, state: StateStore, sink: RecordingSink
) -> None:
    _insert(legacy, *(_row(n) for n in range(1, 5)))
    mapping = write_mapping(tmp_path, SNAPSHOT_MAPPING.format())
    await _run(mapping, state, sink)
    _execute(legacy, "DELETE FROM qydj WHERE id > 1")
    sink.reset()
    with pytest.raises(SnapshotShrank):
        await _run(mapping, state, sink)
    assert sink.calls == []
    assert state.published_count("enterprises") == 4


async def test_discover_check_and_the_source_for_each_kind(tmp_path: Path, legacy: Path) -> None:
    mapping = _mapping(tmp_path)
    source = open_source(mapping)
    assert isinstance(source, SqliteSource)
    async with source:
        await source.check()
        (table,) = await source.discover()
        assert (table.name, table.key, table.cursor) == ("qydj", ("id",), "gxsj")
        qymc = table.column("qymc")
        assert qymc is not None
        assert (qymc.family, qymc.max_length) == ("string", 200)
        zczb = table.column("zczb")
        assert zczb is not None
        assert (zczb.family, zczb.precision, zczb.scale) == ("decimal", 18, 2)

    rest = write_mapping(
        tmp_path, "adapter: x\nsource: {kind: rest, base_url: 'https://legacy'}\n", "rest.yaml"
    )
    assert isinstance(open_source(rest), RestSource)

    missing = write_mapping(
        tmp_path,
        MAPPING.format(look_back=0, mode="cursor").replace("legacy.db", "gone.db"),
        "missing.yaml",
    )
    async with SqliteSource(missing) as source:
        with pytest.raises(SourceUnavailable) as error:
            await source.check()
    assert error.value.metadata["sqlite_error"] == "SQLITE_CANTOPEN"
