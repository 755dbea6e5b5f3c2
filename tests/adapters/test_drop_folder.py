"""Drop folders: CSV exports in GBK, GB18030 and UTF-8, broken lines, half-written
files, crashes mid-file, and Excel sheets with merged cells."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import openpyxl
import pytest

from tests.adapters.conftest import VALIDATORS, Crash, RecordingSink, write_mapping
from tests.conftest import uscc
from tongban.adapters import (
    AdapterMapping,
    Op,
    SourceSchemaChanged,
    StateStore,
    StreamSync,
    SyncReport,
)
from tongban.adapters.sources import DropFolderSource, detect_encoding
from tongban.signing.clock import FixedClock

CSV_MAPPING = """\
adapter: licences
source:
  kind: csv
  folder: drop
  encoding: {encoding}
  settle_seconds: 60
streams:
  - name: licences
    dataset: samr.licence
    file: "zz_*.csv"
    key: number
    batch_size: 2
    mode: {{kind: snapshot_diff}}
    fields:
      number: 证照编号
      holder: {{column: 持证人, required: true}}
      uscc: {{column: 统一社会信用代码, check: uscc}}
      issued: {{column: 发证日期, type: date, formats: ["%Y%m%d", "%Y年%m月%d日"]}}
"""
HEADER = "证照编号,持证人,统一社会信用代码,发证日期\r\n"


def _line(n: int, holder: str | None = None, issued: str = "20240105") -> str:
    return f"ZZ{n:04d},{holder or f'持证人{n}'},{uscc(n)},{issued}\r\n"


@pytest.fixture
def drop(tmp_path: Path) -> Path:
    folder = tmp_path / "drop"
    folder.mkdir()
    return folder


@pytest.fixture
def state(tmp_path: Path, clock: FixedClock) -> Iterator[StateStore]:
    with StateStore.open(tmp_path / "state.sqlite", clock=clock) as store:
        yield store


def _drop_file(folder: Path, name: str, data: bytes, clock: FixedClock, age: float = 120) -> Path:
    path = folder / name
    path.write_bytes(data)
    at = clock.now().timestamp() - age
    os.utime(path, (at, at))
    return path


def _mapping(tmp_path: Path, encoding: str = "auto") -> AdapterMapping:
    return write_mapping(tmp_path, CSV_MAPPING.format(encoding=encoding))


async def _run(
    mapping: AdapterMapping,
    state: StateStore,
    sink: RecordingSink,
    clock: FixedClock,
    *,
    replay: bool = False,
) -> SyncReport:
    async with DropFolderSource(mapping, clock=clock) as source:
        sync = StreamSync(
            source, mapping, mapping.streams[0].name, state, sink, validators=VALIDATORS
        )
        return await (sync.replay_rejects() if replay else sync.run())


@pytest.mark.parametrize(
    ("encoding", "name"),
    [("gbk", "张三丰"), ("gb18030", "王𠮷"), ("utf-8-sig", "李四"), ("utf-8", "赵六")],
)
async def test_chinese_names_in_each_encoding(
    tmp_path: Path,
    drop: Path,
    state: StateStore,
    sink: RecordingSink,
    clock: FixedClock,
    encoding: str,
    name: str,
) -> None:
    text = HEADER + _line(1, name) + _line(2)
    data = text.encode(encoding)
    if encoding == "gb18030":
        with pytest.raises(UnicodeEncodeError):
            name.encode("gbk")  # a name GBK cannot hold
    assert detect_encoding(data.splitlines(keepends=True)) == (
        "gb18030" if encoding in ("gbk", "gb18030") else encoding
    )
    _drop_file(drop, "zz_20240105.csv", data, clock)
    await _run(_mapping(tmp_path), state, sink, clock)
    assert [dict(c.values)["holder"] for c in sink.changes] == [name, "持证人2"]
    assert sink.changes[0].values["issued"] == date(2024, 1, 5)


async def test_an_explicit_encoding_rejects_lines_it_cannot_decode(
    tmp_path: Path, drop: Path, state: StateStore, sink: RecordingSink, clock: FixedClock
) -> None:
    data = (HEADER + _line(1)).encode("utf-8") + _line(2, "张三").encode("gbk")
    _drop_file(drop, "zz_1.csv", data + _line(3).encode("utf-8"), clock)
    report = await _run(_mapping(tmp_path, "utf-8"), state, sink, clock)
    assert sink.keys() == ["ZZ0001", "ZZ0003"]
    (reject,) = state.list_rejects()
    assert (reject.reason, reject.location, reject.key) == ("UNDECODABLE", "zz_1.csv:3", None)
    assert report.rejected == 1


async def test_a_broken_line_is_rejected_with_its_number_and_the_rest_flows(
    tmp_path: Path, drop: Path, state: StateStore, sink: RecordingSink, clock: FixedClock
) -> None:
    text = (
        HEADER
        + _line(1)
        + "ZZ0002,多了,一个,字段,20240105\r\n"  # five fields under a four-column header
        + _line(3)
        + '"ZZ0004,"unclosed\r\n'  # broken quoting
        + _line(5, issued="2024年2月30日")  # a date that does not exist
        + _line(6)
    )
    _drop_file(drop, "zz_1.csv", text.encode("gb18030"), clock)
    await _run(_mapping(tmp_path), state, sink, clock)
    assert sink.keys() == ["ZZ0001", "ZZ0003", "ZZ0006"]
    rejects = {r.location: r for r in state.list_rejects()}
    assert sorted(rejects) == ["zz_1.csv:3", "zz_1.csv:5", "zz_1.csv:6"]
    assert rejects["zz_1.csv:3"].reason == "BROKEN_LINE"
    assert "has 5 fields but the header has 4" in rejects["zz_1.csv:3"].message
    assert rejects["zz_1.csv:5"].reason == "BROKEN_LINE"
    assert (rejects["zz_1.csv:6"].reason, rejects["zz_1.csv:6"].field) == ("BAD_DATE", "issued")
    assert rejects["zz_1.csv:6"].key == "ZZ0005"


async def test_a_fixed_export_clears_the_rejects(
    tmp_path: Path, drop: Path, state: StateStore, sink: RecordingSink, clock: FixedClock
) -> None:
    broken = HEADER + _line(1) + _line(2, issued="2024-99-99") + "ZZ0003,x\r\n"
    _drop_file(drop, "zz_1.csv", broken.encode(), clock, age=300)
    mapping = _mapping(tmp_path)
    await _run(mapping, state, sink, clock)
    assert state.reject_count() == 2

    # Replaying the unchanged export counts the same rejects again and publishes nothing.
    sink.reset()
    await _run(mapping, state, sink, clock, replay=True)
    assert sink.changes == []
    assert sorted(r.count for r in state.list_rejects()) == [2, 2]

    fixed = HEADER + _line(1) + _line(2) + _line(3)
    _drop_file(drop, "zz_2.csv", fixed.encode(), clock, age=200)
    sink.reset()
    await _run(mapping, state, sink, clock)
    assert sink.keys() == ["ZZ0002", "ZZ0003"]  # row 1 is unchanged
    assert state.reject_count() == 0


async def test_files_still_being_written_are_ignored(
    tmp_path: Path, drop: Path, state: StateStore, sink: RecordingSink, clock: FixedClock
) -> None:
    _drop_file(drop, "zz_1.csv", (HEADER + _line(1) + _line(2) + _line(3)).encode(), clock, 600)
    _drop_file(drop, "zz_2.csv.part", (HEADER + _line(7)).encode(), clock, age=300)
    _drop_file(drop, ".zz_2.csv.tmp", (HEADER + _line(8)).encode(), clock, age=300)
    fresh = HEADER + _line(2) + _line(3) + _line(4)
    _drop_file(drop, "zz_3.csv", fresh.encode(), clock, age=5)  # too fresh
    mapping = _mapping(tmp_path)
    await _run(mapping, state, sink, clock)
    assert sink.keys() == ["ZZ0001", "ZZ0002", "ZZ0003"]

    sink.reset()
    await _run(mapping, state, sink, clock)  # the same export is not read twice
    assert sink.changes == []

    clock.advance(timedelta(minutes=2))
    await _run(mapping, state, sink, clock)  # zz_3 has settled: it replaces zz_1
    assert [(c.op, c.key) for c in sink.changes] == [(Op.UPSERT, "ZZ0004"), (Op.DELETE, "ZZ0001")]


async def test_a_crash_mid_file_resumes_where_it_was(
    tmp_path: Path, drop: Path, clock: FixedClock
) -> None:
    text = HEADER + "".join(_line(n) for n in range(1, 8))
    _drop_file(drop, "zz_1.csv", text.encode(), clock)
    mapping = _mapping(tmp_path)
    crashed = RecordingSink()
    crashed.crash_after = 2
    with StateStore.open(tmp_path / "state.sqlite", clock=clock) as state, pytest.raises(Crash):
        await _run(mapping, state, crashed, clock)
    resumed = RecordingSink()
    with StateStore.open(tmp_path / "state.sqlite", clock=clock) as state:
        await _run(mapping, state, resumed, clock)
        assert state.published_count("licences") == 7
    assert [c.id for c in resumed.calls[0][1]] == [c.id for c in crashed.calls[1][1]]
    assert sorted(set(crashed.keys() + resumed.keys())) == [f"ZZ{n:04d}" for n in range(1, 8)]
    assert len(crashed.keys() + resumed.keys()) == 7 + 2


async def test_snapshot_diff_of_two_exports_and_withheld_deletes(
    tmp_path: Path, drop: Path, state: StateStore, sink: RecordingSink, clock: FixedClock
) -> None:
    first = HEADER + "".join(_line(n) for n in range(1, 6))
    _drop_file(drop, "zz_1.csv", first.encode(), clock, age=900)
    mapping = _mapping(tmp_path)
    await _run(mapping, state, sink, clock)

    second = HEADER + _line(1) + _line(2, "新持证人") + _line(3) + _line(4) + _line(9)
    _drop_file(drop, "zz_2.csv", second.encode(), clock, age=600)
    sink.reset()
    report = await _run(mapping, state, sink, clock)
    assert [(c.op, c.key) for c in sink.changes] == [
        (Op.UPSERT, "ZZ0002"),
        (Op.UPSERT, "ZZ0009"),
        (Op.DELETE, "ZZ0005"),
    ]
    assert (report.inserts, report.changed, report.deletes, report.unchanged) == (1, 1, 1, 3)

    # ZZ0004 is missing, but a broken line might be it: the delete waits.
    third = HEADER + _line(1) + _line(2, "新持证人") + _line(3) + "ZZ0004;broken\r\n" + _line(9)
    _drop_file(drop, "zz_3.csv", third.encode(), clock, age=300)
    sink.reset()
    report = await _run(mapping, state, sink, clock)
    assert sink.changes == []
    assert report.deletes_withheld == 1
    assert state.published_count("licences") == 5


async def test_a_missing_column_stops_the_stream(
    tmp_path: Path, drop: Path, state: StateStore, sink: RecordingSink, clock: FixedClock
) -> None:
    text = "证照编号,持证人,发证日期\r\nZZ0001,甲,20240105\r\n"
    _drop_file(drop, "zz_1.csv", text.encode(), clock)
    with pytest.raises(SourceSchemaChanged) as error:
        await _run(_mapping(tmp_path), state, sink, clock)
    assert error.value.metadata["changes"] == "统一社会信用代码:missing"
    assert sink.calls == []


XLSX_MAPPING = """\
adapter: food
source: {kind: xlsx, folder: drop, settle_seconds: 0}
streams:
  - name: shops
    dataset: food.shop
    file: "*.xlsx"
    sheet: 经营者
    header_row: 2
    key: uscc
    mode: {kind: snapshot_diff}
    fields:
      uscc: {column: 统一社会信用代码, check: uscc}
      name: 名称
      district: 所属区县
      capital: {column: 注册资本, type: decimal}
      opened: {column: 开业日期, type: date}
"""


async def test_an_excel_sheet_with_merged_cells(
    tmp_path: Path, drop: Path, state: StateStore, sink: RecordingSink, clock: FixedClock
) -> None:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.title = "经营者"
    sheet.append(["2024年食品经营者名录"])  # a title row above the header
    sheet.merge_cells("A1:E1")
    sheet.append(["所属区县", "统一社会信用代码", "名称", "注册资本", "开业日期"])
    sheet.append(["东城区", uscc(1), "甲餐馆", 100000, date(2024, 1, 5)])
    sheet.append([None, uscc(2), "乙面馆", 50000.5, "2024-02-06"])
    sheet.append([None, uscc(3), "丙茶社", "30,000", date(2024, 3, 7)])
    sheet.merge_cells("A3:A5")  # one district for three rows
    sheet.append(["西城区", uscc(4), "丁小吃", 20000, date(2024, 4, 8)])
    sheet.append(["合计", None, None, 200000.5, None])
    sheet.merge_cells("A7:C7")  # a total line across the table
    sheet.append([])
    workbook.save(drop / "名录.xlsx")
    workbook.close()
    _drop_file(drop, "名录.xlsx", (drop / "名录.xlsx").read_bytes(), clock)

    mapping = write_mapping(tmp_path, XLSX_MAPPING)
    async with DropFolderSource(mapping, clock=clock) as source:
        await StreamSync(source, mapping, "shops", state, sink, validators=VALIDATORS).run()

    records = {c.key: dict(c.values) for c in sink.changes}
    assert [records[uscc(n)]["district"] for n in range(1, 5)] == [
        "东城区",
        "东城区",
        "东城区",
        "西城区",
    ]
    assert str(records[uscc(2)]["capital"]) == "50000.5"
    assert records[uscc(3)]["opened"] == date(2024, 3, 7)
    (total,) = state.list_rejects()
    assert (total.reason, total.location) == ("MERGED_CELLS", "名录.xlsx!经营者:7")
