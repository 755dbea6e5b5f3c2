"""The mapping file: a wrong file is reported by line, column and field path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.adapters.conftest import VALIDATORS, write_mapping
from tongban.adapters import MappingInvalid, load_mapping, parse_mapping
from tongban.adapters.mapping import CodeField, CursorMode, DateField, PostgresSettings

GOOD = """\
adapter: samr
source:
  kind: postgres
  dsn: postgresql://reader@legacy/registration
  schema: legacy
streams:
  - name: enterprises
    dataset: samr.enterprise
    table: t_qydj
    key: uscc
    mode: {kind: cursor, cursor_column: gxsj, key_column: id, look_back: 60}
    fields:
      uscc: {column: tyshxydm, check: uscc}
      name: qymc
      founded: {column: clrq, type: date, formats: ["%Y%m%d", "%Y年%m月%d日"]}
      region: {column: xzqh, type: code, table_file: regions.csv}
      source: {constant: 登记系统}
    filters:
      - {column: zt, in: ["1", "2"]}
write_back:
  - dataset: tax.registration
    table: t_tax
    key_column: uscc
    columns:
      status: status
      reg_date: {field: registered_on, format: "%Y%m%d"}
"""


def _problems(error: pytest.ExceptionInfo[MappingInvalid]) -> list[str]:
    return [str(p) for p in error.value.problems]


def test_a_good_file_loads_with_code_tables_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "regions.csv").write_text("code,name\n110101,东城区\n110102,西城区\n", "utf-8")
    mapping = write_mapping(tmp_path, GOOD)

    assert isinstance(mapping.source, PostgresSettings)
    assert mapping.source.db_schema == "legacy"
    stream = mapping.stream("enterprises")
    assert isinstance(stream.mode, CursorMode)
    assert stream.mode.look_back == 60
    region = stream.fields["region"]
    assert isinstance(region, CodeField)
    assert region.table == {"110101": "东城区", "110102": "西城区"}
    founded = stream.fields["founded"]
    assert isinstance(founded, DateField)
    assert founded.formats == ["%Y%m%d", "%Y年%m月%d日"]
    assert stream.fields["name"].column == "qymc"  # the shorthand
    assert stream.source_columns() == ["gxsj", "id", "tyshxydm", "qymc", "clrq", "xzqh", "zt"]
    assert mapping.state_path == tmp_path / "samr.state.sqlite"
    assert mapping.write_back_target("tax.registration").columns["reg_date"].format == "%Y%m%d"


def test_every_problem_names_its_line_column_and_field(tmp_path: Path) -> None:
    text = GOOD.replace(
        "mode: {kind: cursor, cursor_column: gxsj, key_column: id, look_back: 60}",
        "mode:\n      kind: cursor\n      key_column: id\n      look_bak: 60",
    ).replace(
        "region: {column: xzqh, type: code, table_file: regions.csv}",
        "region: {column: xzqh, type: cod, table: {}}",
    )
    (tmp_path / "mapping.yaml").write_text(text, "utf-8")
    with pytest.raises(MappingInvalid) as error:
        load_mapping(tmp_path / "mapping.yaml")
    file = str(tmp_path / "mapping.yaml")
    assert _problems(error) == [
        f"{file}:12:7: streams.0.mode.cursor_column: Field required",
        f"{file}:14:7: streams.0.mode.look_bak: this setting is not known here (check its "
        f"spelling and indentation)",
        f"{file}:19:15: streams.0.fields.region: type must be one of string, integer, "
        f"decimal, date, datetime, boolean, code",
    ]
    assert error.value.reason == "MAPPING_INVALID"
    assert error.value.metadata == {"file": file, "problems": "3"}
    assert error.value.diagnostics().endswith("[MAPPING_INVALID]")


def test_checks_across_fields_are_reported_by_line(tmp_path: Path) -> None:
    text = (
        GOOD.replace("key: uscc", "key: usc")
        .replace("check: uscc", "check: usci")
        .replace("{constant: 登记系统}", "{constant: 登记系统, type: date}")
        .replace("table_file: regions.csv", "table_file: missing.csv")
        .replace('"%Y年%m月%d日"', '"%Q"')
        .replace("    table: t_tax\n", "")
    )
    with pytest.raises(MappingInvalid) as error:
        write_mapping(tmp_path, text)
    file = str(tmp_path / "mapping.yaml")
    assert _problems(error) == [
        f"{file}:10:10: streams.0.key: the key 'usc' is not one of the stream's fields",
        f"{file}:13:39: streams.0.fields.uscc.check: unknown check (known: citizen_id, uscc)",
        f"{file}:15:63: streams.0.fields.founded.formats.1: not a usable strptime format",
        f"{file}:16:54: streams.0.fields.region.table_file: cannot load the code table: "
        f"No such file or directory",
        f"{file}:17:26: streams.0.fields.source.constant: the value is not a date in any of "
        f"the formats %Y-%m-%d; correct it in the source or add its format to the field.",
        f"{file}:21:5: write_back.0.table: a SQL source writes back into a table; name it",
    ]


def test_yaml_syntax_errors_and_duplicate_keys_have_lines() -> None:
    with pytest.raises(MappingInvalid) as broken:
        parse_mapping("adapter: x\nsource: {kind: sqlite\n", file="m.yaml")
    assert _problems(broken)[0].startswith("m.yaml:3:1: while parsing a flow mapping")

    text = textwrap.dedent(
        """\
        adapter: x
        source: {kind: sqlite, path: a.db}
        streams:
          - name: s
            dataset: a.b
            table: t
            key: k
            mode: {kind: snapshot_diff, key_column: id}
            fields:
              k: c1
              k: c2
        """
    )
    with pytest.raises(MappingInvalid) as duplicated:
        parse_mapping(text, file="m.yaml")
    assert _problems(duplicated) == ["m.yaml:11:7: streams.0.fields.k: this key is given twice"]


def test_unquoted_codes_and_source_kinds_are_refused_clearly(tmp_path: Path) -> None:
    text = GOOD.replace("table_file: regions.csv", "table: {110101: 东城区}").replace(
        "dsn: postgresql://reader@legacy/registration", "path: x.db"
    )
    with pytest.raises(MappingInvalid) as error:
        write_mapping(tmp_path, text)
    problems = _problems(error)
    assert any(":3:3: source.dsn: Field required" in p for p in problems)
    assert any(":4:3: source.path: this setting is not known here" in p for p in problems)
    assert any(
        "streams.0.fields.region.table: code table codes and values must be quoted strings" in p
        for p in problems
    )


def test_a_drop_folder_cannot_use_a_cursor(tmp_path: Path) -> None:
    text = """\
        adapter: licences
        source: {kind: csv, folder: drop}
        streams:
          - name: licences
            dataset: samr.licence
            table: x
            key: number
            mode: {kind: cursor, cursor_column: a, key_column: b}
            fields: {number: zzbh}
        """
    with pytest.raises(MappingInvalid) as error:
        write_mapping(tmp_path, text)
    problems = _problems(error)
    assert any("streams.0: a csv source needs 'file' on each stream" in p for p in problems)
    assert any("streams.0.table: a csv source reads 'file', not 'table'" in p for p in problems)
    assert any(
        ":8:18: streams.0.mode.kind: a drop folder has no cursor; use snapshot_diff" in p
        for p in problems
    )


def test_known_checks_are_the_injected_validators() -> None:
    assert sorted(VALIDATORS) == ["citizen_id", "uscc"]


def test_the_examples_in_the_docs_load(tmp_path: Path) -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "adapters.md").read_text("utf-8")
    blocks = [b.split("```", 1)[0] for b in docs.split("```yaml\n")[1:]]
    (tmp_path / "xzqh.csv").write_text("110101,东城区\n", "utf-8")
    full = write_mapping(tmp_path, blocks[0])
    assert [s.name for s in full.streams] == ["enterprises"]
    drop = write_mapping(tmp_path, "adapter: licences\n" + blocks[1], name="drop.yaml")
    assert drop.stream("licences").dataset == "samr.licence"
    # The story's complete files (the other blocks are fragments of a file).
    story = {b.split("\n", 1)[0]: b for b in blocks if b.startswith("# ") and ".yaml" in b}
    assert sorted(story) == ["# hrss.yaml", "# police.yaml", "# samr.yaml", "# tax.yaml"]
    for title, text in story.items():
        mapping = write_mapping(tmp_path, text, name=title[2:])
        assert mapping.exchange is not None
        assert mapping.streams or mapping.write_back
