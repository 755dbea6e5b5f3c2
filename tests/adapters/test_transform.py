"""Row → record: legacy dates, decimals, code tables, subject-id checks and filters."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.adapters.conftest import VALIDATORS, citizen_id, write_mapping
from tests.conftest import uscc
from tongban.adapters import (
    AdapterMapping,
    Excluded,
    Record,
    Rejected,
    StreamTransform,
    ValidatorMissing,
    _tagged_json,
    fingerprint,
)
from tongban.adapters._coerce import CoercionError, coerce
from tongban.adapters.mapping import DateField
from tongban.adapters.sdk import change_id

MAPPING = """\
adapter: test
source: {kind: sqlite, path: legacy.db}
streams:
  - name: people
    dataset: police.person
    table: rk
    key: id_number
    mode: {kind: snapshot_diff, key_column: id}
    fields:
      id_number: {column: sfzh, check: citizen_id}
      employer: {column: dwdm, check: uscc}
      name: {column: xm, max_length: 4}
      born: {column: csrq, type: date, formats: ["%Y%m%d", "%Y/%m/%d", "%Y年%m月%d日"]}
      salary: {column: gz, type: decimal}
      children: {column: znsl, type: integer}
      registered: {column: djsj, type: datetime, formats: ["%Y-%m-%d %H:%M:%S"]}
      married: {column: hyzk, type: boolean}
      region: {column: xzqh, type: code, table: {"110101": 东城区, "110102": 西城区}}
      nation: {column: mz, type: code, table_file: nations.yaml, default: 其他}
      source: {constant: 户籍系统}
    filters:
      - {column: zt, not_in: [注销]}
"""


@pytest.fixture
def mapping(tmp_path: Path) -> AdapterMapping:
    (tmp_path / "nations.yaml").write_text('"01": 汉族\n"02": 蒙古族\n', "utf-8")
    return write_mapping(tmp_path, MAPPING)


@pytest.fixture
def transform(mapping: AdapterMapping) -> StreamTransform:
    return StreamTransform(mapping.stream("people"), VALIDATORS)


def _row(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {
        "sfzh": citizen_id(7, "19850312"),
        "dwdm": uscc(42),
        "xm": " 张三 ",
        "csrq": "19850312",
        "gz": "12,345.50",
        "znsl": "\uff12",  # a full-width 2, as Chinese input methods type it
        "djsj": "2024-01-05 08:30:00",
        "hyzk": "是",
        "xzqh": 110101,
        "mz": "01",
        "zt": "正常",
    }
    row.update(changes)
    return row


def test_a_legacy_row_becomes_a_typed_record(transform: StreamTransform) -> None:
    record = transform.apply(_row())
    assert isinstance(record, Record)
    assert record.key == citizen_id(7, "19850312")
    assert dict(record.values) == {
        "id_number": citizen_id(7, "19850312"),
        "employer": uscc(42),
        "name": "张三",
        "born": date(1985, 3, 12),
        "salary": Decimal("12345.5"),
        "children": 2,
        "registered": datetime(2024, 1, 5, 0, 30, tzinfo=UTC),  # +08:00 local time
        "married": True,
        "region": "东城区",
        "nation": "汉族",
        "source": "户籍系统",
    }
    assert record.fingerprint == fingerprint(record.values)


@pytest.mark.parametrize(
    "text", ["19850312", "1985/03/12", "1985年3月12日", "１９８５年３月１２日", 19850312]
)
def test_dates_in_legacy_formats(transform: StreamTransform, text: object) -> None:
    record = transform.apply(_row(csrq=text))
    assert isinstance(record, Record)
    assert record.values["born"] == date(1985, 3, 12)


def test_subject_ids_are_normalised_by_the_injected_validators(
    transform: StreamTransform,
) -> None:
    lower = uscc(42).lower()
    record = transform.apply(_row(dwdm=f" {lower} "))
    assert isinstance(record, Record)
    assert record.values["employer"] == uscc(42)


@pytest.mark.parametrize(
    ("changes", "reason", "field"),
    [
        ({"csrq": "1985-13-45"}, "BAD_DATE", "born"),
        ({"gz": "一万二"}, "BAD_DECIMAL", "salary"),
        ({"gz": "NaN"}, "BAD_DECIMAL", "salary"),
        ({"znsl": "2.5"}, "BAD_INTEGER", "children"),
        ({"djsj": "yesterday"}, "BAD_DATETIME", "registered"),
        ({"hyzk": "maybe"}, "BAD_BOOLEAN", "married"),
        ({"xzqh": "999999"}, "UNKNOWN_CODE", "region"),
        ({"xm": "欧阳修远航"}, "TOO_LONG", "name"),
        ({"xm": "张\x00三"}, "CONTROL_CHARACTER", "name"),
        (
            {"dwdm": uscc(42)[:-1] + ("0" if uscc(42)[-1] != "0" else "1")},
            "CHECK_FAILED",
            "employer",
        ),
        ({"xm": 1.2e17}, "PRECISION_LOST", "name"),
    ],
)
def test_bad_values_are_rejected_naming_the_field(
    transform: StreamTransform, changes: dict[str, object], reason: str, field: str
) -> None:
    outcome = transform.apply(_row(**changes))
    assert isinstance(outcome, Rejected)
    assert (outcome.reason_code, outcome.field) == (reason, field)
    assert outcome.key == citizen_id(7, "19850312")  # the key was readable
    assert outcome.message.startswith(f"Field {field}")


def test_a_bad_key_is_rejected_without_a_key(transform: StreamTransform) -> None:
    wrong = citizen_id(7)[:-1] + ("0" if citizen_id(7)[-1] != "0" else "1")
    outcome = transform.apply(_row(sfzh=wrong))
    assert isinstance(outcome, Rejected)
    assert (outcome.reason_code, outcome.field, outcome.key) == ("CHECK_FAILED", "id_number", None)
    assert "mistyped" in outcome.message

    missing = transform.apply(_row(sfzh="  "))
    assert isinstance(missing, Rejected)
    assert (missing.reason_code, missing.field) == ("MISSING_VALUE", "id_number")


def test_unknown_codes_fall_back_to_a_default_when_one_is_given(
    transform: StreamTransform,
) -> None:
    record = transform.apply(_row(mz="57"))
    assert isinstance(record, Record)
    assert record.values["nation"] == "其他"


def test_filters_exclude_rows_but_keep_their_key(transform: StreamTransform) -> None:
    outcome = transform.apply(_row(zt="注销"))
    assert outcome == Excluded(citizen_id(7, "19850312"))


def test_fingerprints_are_stable_and_type_aware() -> None:
    a = fingerprint({"x": Decimal("1.5"), "y": "a"})
    assert a == fingerprint({"y": "a", "x": Decimal("1.5")})
    assert a != fingerprint({"x": "1.5", "y": "a"})
    assert a != fingerprint({"x": Decimal("1.5"), "y": "b"})


def test_a_missing_validator_fails_closed(mapping: AdapterMapping) -> None:
    with pytest.raises(ValidatorMissing) as error:
        StreamTransform(mapping.stream("people"), {"uscc": VALIDATORS["uscc"]})
    assert error.value.metadata == {"stream": "people", "field": "id_number", "check": "citizen_id"}


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(),
    st.floats(allow_nan=False),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.dates(),
    st.datetimes(),
    st.uuids(),
    st.binary(max_size=8),
)


@given(st.dictionaries(st.text(max_size=8), st.one_of(_SCALARS, st.lists(_SCALARS, max_size=3))))
def test_the_fast_canonical_text_is_the_tagged_json_of_the_record(
    record: dict[str, object],
) -> None:
    # Stored fingerprints must not change when the writer gets faster.
    expected = json.dumps(
        _tagged_json.encode(record), ensure_ascii=False, sort_keys=True, separators=(",", ":")
    )
    assert _tagged_json.dumps(record) == expected


def test_iso_dates_read_as_strptime_reads_them() -> None:
    spec = DateField(type="date", column="d", formats=["%Y-%m-%d", "%Y%m%d"])
    assert coerce(spec, "2024-02-29") == date(2024, 2, 29)
    assert coerce(spec, "20240105") == date(2024, 1, 5)  # the second format
    with pytest.raises(CoercionError):
        coerce(spec, "2023-02-29")  # not a day: neither format reads it
    compact = DateField(type="date", column="d", formats=["%Y%m%d"])
    assert coerce(compact, "20240229") == date(2024, 2, 29)
    full_width = "".join(chr(0xFF10 + int(c)) for c in "20240229")  # as an IME types it
    assert coerce(compact, full_width) == date(2024, 2, 29)
    for text in ("20230229", "20241301", "2024011", "99991231", "00010101"):
        try:  # the fast path reads exactly what strptime reads, and refuses what it refuses
            expected: date | None = datetime.strptime(text, "%Y%m%d").date()  # noqa: DTZ007
        except ValueError:
            expected = None
        if expected is None:
            with pytest.raises(CoercionError):
                coerce(compact, text)
        else:
            assert coerce(compact, text) == expected


@given(st.text(max_size=20), st.text(max_size=20), st.none() | st.text(max_size=64))
def test_change_ids_are_the_uuid5_of_the_transition(
    key: str, after: str, before: str | None
) -> None:
    name = f"samr.enterprise\x00{key}\x00{before or ''}\x00{after or ''}"
    expected = uuid.uuid5(uuid.UUID("6f1c3b52-5d0e-4d8e-9a56-2f4f0e3c7a11"), name)
    assert change_id("samr.enterprise", key, before, after) == str(expected)
