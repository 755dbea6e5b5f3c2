"""Dataset schemas, record validation and the JSON storage form of values."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tongban.exchange.catalogue import (
    DatasetSchema,
    FieldSpec,
    FieldType,
    RecordInvalid,
    SchemaInvalid,
    build_schema,
    canonical_to_json,
    schema_from_json,
    schema_to_json,
    validate_record,
    value_from_json,
    value_to_json,
)

BEIJING = timezone(timedelta(hours=8))

LICENCE_FIELDS = (
    FieldSpec("licence_no", FieldType.STRING, "营业执照编号", required=True, max_length=32),
    FieldSpec("holder_name", FieldType.STRING, "持证人姓名", personal=True),
    FieldSpec("employees", FieldType.INTEGER),
    FieldSpec("capital", FieldType.DECIMAL, "注册资本 (万元)"),
    FieldSpec("active", FieldType.BOOLEAN),
    FieldSpec("issued_on", FieldType.DATE),
    FieldSpec("updated_at", FieldType.DATETIME),
)
SCHEMA = build_schema(LICENCE_FIELDS, "licence_no")


def _schema_error(fields: list[FieldSpec], key: str = "key") -> SchemaInvalid:
    with pytest.raises(SchemaInvalid) as caught:
        build_schema(fields, key)
    assert caught.value.reason == "SCHEMA_INVALID"
    assert caught.value.status == "INVALID_ARGUMENT"
    return caught.value


def _record_problem(data: dict[str, object]) -> tuple[str, str]:
    with pytest.raises(RecordInvalid) as caught:
        validate_record(SCHEMA, data)
    error = caught.value
    assert error.reason == "RECORD_INVALID"
    assert error.status == "INVALID_ARGUMENT"
    assert error.metadata["field"] in error.message
    return error.metadata["field"], error.metadata["problem"]


# --- schemas


def test_a_schema_looks_fields_up_by_name() -> None:
    assert SCHEMA.names[:2] == ("licence_no", "holder_name")
    holder = SCHEMA.field("holder_name")
    assert holder is not None
    assert holder.personal
    assert SCHEMA.field("nope") is None
    assert build_schema(list(LICENCE_FIELDS), "licence_no") == SCHEMA


KEY = FieldSpec("key", FieldType.STRING, required=True)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ([FieldSpec("Key", FieldType.STRING, required=True)], "Key"),
        ([FieldSpec("1key", FieldType.STRING, required=True)], "1key"),
        ([FieldSpec("k" * 64, FieldType.STRING, required=True)], "k" * 64),
        ([FieldSpec("名字", FieldType.STRING, required=True)], "名字"),
        ([KEY, KEY], "key"),
        ([KEY, FieldSpec("n", FieldType.INTEGER, max_length=4)], "n"),
        ([KEY, FieldSpec("s", FieldType.STRING, max_length=0)], "s"),
        ([KEY, FieldSpec("s", FieldType.STRING, max_length=100_001)], "s"),
        ([FieldSpec("key", FieldType.STRING)], "key"),  # key not required
        ([FieldSpec("key", FieldType.INTEGER, required=True)], "key"),  # key not a string
        ([FieldSpec("other", FieldType.STRING, required=True)], "key"),  # no such field
    ],
)
def test_malformed_schemas_are_refused(fields: list[FieldSpec], field: str) -> None:
    assert _schema_error(fields).metadata["field"] == field


def test_a_schema_has_one_to_two_hundred_fields() -> None:
    _schema_error([])
    many = [KEY, *(FieldSpec(f"f{i}", FieldType.BOOLEAN) for i in range(199))]
    assert len(build_schema(many, "key").fields) == 200
    _schema_error([*many, FieldSpec("one_more", FieldType.BOOLEAN)])
    assert (
        len(build_schema([FieldSpec("k" * 63, FieldType.STRING, required=True)], "k" * 63).names)
        == 1
    )


def test_a_schema_cannot_be_built_invalid_directly() -> None:
    with pytest.raises(SchemaInvalid):
        DatasetSchema((FieldSpec("key", FieldType.STRING),), "key")


def test_schemas_survive_a_trip_through_json() -> None:
    stored = json.loads(json.dumps(schema_to_json(SCHEMA)))
    assert schema_from_json(stored) == SCHEMA
    minimal = {"key_field": "key", "fields": [{"name": "key", "type": "string", "required": True}]}
    assert schema_from_json(minimal) == build_schema([KEY], "key")


@pytest.mark.parametrize(
    "stored",
    [
        None,
        [],
        "schema",
        {},
        {"fields": []},
        {"fields": [], "key_field": "key", "extra": 1},
        {"fields": {}, "key_field": "key"},
        {"fields": [], "key_field": 1},
        {"fields": [], "key_field": "key"},
        {"fields": [None], "key_field": "key"},
        {"fields": [{"type": "string"}], "key_field": "key"},
        {"fields": [{"name": 1, "type": "string"}], "key_field": "key"},
        {"fields": [{"name": "key", "type": "text"}], "key_field": "key"},
        {"fields": [{"name": "key", "type": ["string"]}], "key_field": "key"},
        {"fields": [{"name": "key", "type": "string", "required": "yes"}], "key_field": "key"},
        {"fields": [{"name": "key", "type": "string", "required": 1}], "key_field": "key"},
        {"fields": [{"name": "key", "type": "string", "max_length": "9"}], "key_field": "key"},
        {"fields": [{"name": "key", "type": "string", "max_length": True}], "key_field": "key"},
        {"fields": [{"name": "key", "type": "string", "description": 3}], "key_field": "key"},
        {"fields": [{"name": "key", "type": "string", "colour": "red"}], "key_field": "key"},
        {"fields": [{"name": "key", "type": "string"}], "key_field": "key"},  # not required
    ],
)
def test_malformed_stored_schemas_raise_schema_invalid(stored: object) -> None:
    with pytest.raises(SchemaInvalid):
        schema_from_json(stored)


# --- records

FULL_RECORD: dict[str, object] = {
    "licence_no": "91350100M000100Y43",
    "holder_name": "张三\n法定代表人\t",
    "employees": 2**63 - 1,
    "capital": Decimal("1200.500"),
    "active": True,
    "issued_on": date(2025, 9, 26),
    "updated_at": datetime(2025, 9, 26, 9, 30, tzinfo=BEIJING),
}


def test_a_valid_record_comes_back_canonical() -> None:
    record = validate_record(SCHEMA, FULL_RECORD)
    assert record == {
        **FULL_RECORD,
        "capital": Decimal("1200.5"),
        "updated_at": datetime(2025, 9, 26, 1, 30, tzinfo=UTC),
    }
    assert str(record["capital"]) == "1200.5"
    updated = record["updated_at"]
    assert isinstance(updated, datetime)
    assert updated.tzinfo is UTC


def test_missing_and_null_optional_fields_become_none() -> None:
    record = validate_record(SCHEMA, {"licence_no": "x", "employees": None})
    assert record == {name: None for name in SCHEMA.names} | {"licence_no": "x"}


def test_strings_are_nfc_normalised_and_measured_after_it() -> None:
    record = validate_record(SCHEMA, {"licence_no": "Cafe\u0301" + "x" * 28})
    assert record["licence_no"] == "Café" + "x" * 28  # 33 code points in, 32 out
    assert unicodedata.is_normalized("NFC", str(record["licence_no"]))


@pytest.mark.parametrize(
    ("changes", "field", "problem"),
    [
        ({"licence_no": None}, "licence_no", "missing"),
        ({"licence_no": 7}, "licence_no", "type"),
        ({"licence_no": "x" * 33}, "licence_no", "too_long"),
        ({"holder_name": "x" * 4001}, "holder_name", "too_long"),
        ({"holder_name": "张\x0b三"}, "holder_name", "control_character"),
        ({"holder_name": "张\x00三"}, "holder_name", "control_character"),
        ({"holder_name": "张\x85三"}, "holder_name", "control_character"),
        ({"holder_name": "张\ud800三"}, "holder_name", "unpaired_surrogate"),
        ({"employees": True}, "employees", "type"),
        ({"employees": 1.0}, "employees", "type"),
        ({"employees": "3"}, "employees", "type"),
        ({"employees": 2**63}, "employees", "out_of_range"),
        ({"employees": -(2**63) - 1}, "employees", "out_of_range"),
        ({"capital": 1.5}, "capital", "type"),
        ({"capital": False}, "capital", "type"),
        ({"capital": "1.5"}, "capital", "type"),
        ({"capital": Decimal("NaN")}, "capital", "not_finite"),
        ({"capital": Decimal("-Infinity")}, "capital", "not_finite"),
        ({"capital": Decimal("1E+38")}, "capital", "out_of_range"),
        ({"capital": Decimal("1E-39")}, "capital", "out_of_range"),
        ({"capital": Decimal("1E+999999999")}, "capital", "out_of_range"),
        ({"active": 1}, "active", "type"),
        ({"issued_on": datetime(2025, 9, 26, tzinfo=UTC)}, "issued_on", "type"),
        ({"issued_on": "2025-09-26"}, "issued_on", "type"),
        ({"updated_at": date(2025, 9, 26)}, "updated_at", "type"),
        ({"updated_at": datetime(2025, 9, 26)}, "updated_at", "naive_datetime"),  # noqa: DTZ001
        ({"updated_at": datetime.min.replace(tzinfo=BEIJING)}, "updated_at", "out_of_range"),
        ({"unknown": 1}, "unknown", "unknown_field"),
    ],
)
def test_invalid_records_name_the_field_and_problem(
    changes: dict[str, object], field: str, problem: str
) -> None:
    assert _record_problem(FULL_RECORD | changes) == (field, problem)


def test_error_messages_do_not_quote_personal_values() -> None:
    with pytest.raises(RecordInvalid) as caught:
        validate_record(SCHEMA, FULL_RECORD | {"holder_name": "李四\x07"})
    assert "李四" not in caught.value.message


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        (Decimal("1.50"), "1.5"),
        (Decimal("1E+2"), "100"),
        (Decimal("-0.000"), "0"),
        (Decimal("0.0000001"), "0.0000001"),
        (12, "12"),
        (Decimal("9" * 38), "9" * 38),
        (Decimal("0." + "0" * 37 + "1"), "0." + "0" * 37 + "1"),
        (Decimal("1" + "0" * 40 + "E-40"), "1"),
    ],
)
def test_decimals_have_one_canonical_form(given: Decimal | int, canonical: str) -> None:
    record = validate_record(SCHEMA, {"licence_no": "x", "capital": given})
    assert value_to_json(FieldType.DECIMAL, record["capital"]) == canonical
    assert record["capital"] == Decimal(canonical)


# --- JSON storage form


@pytest.mark.parametrize(
    ("type_", "value", "stored"),
    [
        (FieldType.STRING, "统一社会信用代码", "统一社会信用代码"),
        (FieldType.INTEGER, -5, -5),
        (FieldType.DECIMAL, Decimal("-12.50"), "-12.5"),
        (FieldType.BOOLEAN, False, False),
        (FieldType.DATE, date(1, 2, 3), "0001-02-03"),
        (FieldType.DATETIME, datetime(2025, 1, 1, 8, tzinfo=BEIJING), "2025-01-01T00:00:00Z"),
        (
            FieldType.DATETIME,
            datetime(2025, 1, 1, 0, 0, 0, 1200, tzinfo=UTC),
            "2025-01-01T00:00:00.001200Z",
        ),
        (FieldType.DATE, None, None),
    ],
)
def test_storage_forms(type_: FieldType, value: object, stored: object) -> None:
    assert value_to_json(type_, value) == stored
    assert value_from_json(type_, stored) == value
    # The publish path's shortcut for values already canonical agrees.
    assert canonical_to_json(value_from_json(type_, stored)) == stored


@given(
    st.one_of(
        st.decimals(allow_nan=False, allow_infinity=False, places=6).map(
            lambda d: (FieldType.DECIMAL, d)
        ),
        st.datetimes(timezones=st.just(UTC)).map(lambda d: (FieldType.DATETIME, d)),
        st.dates().map(lambda d: (FieldType.DATE, d)),
        st.integers(min_value=-(2**63), max_value=2**63 - 1).map(lambda i: (FieldType.INTEGER, i)),
        st.booleans().map(lambda b: (FieldType.BOOLEAN, b)),
    )
)
def test_canonical_to_json_matches_value_to_json(typed: tuple[FieldType, object]) -> None:
    type_, value = typed
    try:
        expected = value_to_json(type_, value)
    except RecordInvalid:
        return  # not a value of the type (e.g. too many digits): never canonical
    assert canonical_to_json(value_from_json(type_, expected)) == expected


def test_value_to_json_refuses_invalid_values() -> None:
    with pytest.raises(RecordInvalid) as caught:
        value_to_json(FieldType.DATETIME, datetime(2025, 1, 1), field="updated_at")  # noqa: DTZ001
    assert caught.value.metadata == {"field": "updated_at", "problem": "naive_datetime"}


@pytest.mark.parametrize(
    ("type_", "stored", "problem"),
    [
        (FieldType.STRING, 1, "type"),
        (FieldType.STRING, "a\x00", "control_character"),
        (FieldType.INTEGER, "1", "type"),
        (FieldType.INTEGER, 1.0, "type"),
        (FieldType.DECIMAL, 1.5, "type"),
        (FieldType.DECIMAL, 15, "type"),
        (FieldType.DECIMAL, "1e5", "format"),
        (FieldType.DECIMAL, "NaN", "format"),
        (FieldType.DECIMAL, " 1", "format"),
        (FieldType.DECIMAL, "١٢", "format"),  # Arabic-Indic digits, which Decimal() accepts
        (FieldType.DECIMAL, "1" * 39, "out_of_range"),
        (FieldType.BOOLEAN, "true", "type"),
        (FieldType.DATE, "2025-02-30", "format"),
        (FieldType.DATE, "20250226", "format"),
        (FieldType.DATETIME, "2025-01-01T00:00:00", "format"),
        (FieldType.DATETIME, "2025-01-01 00:00:00Z", "format"),
        (FieldType.DATETIME, "2025-01-01T00:00:00.1234567Z", "format"),
        (FieldType.DATETIME, "2025-01-01T25:00:00Z", "format"),
        (FieldType.DATETIME, "0001-01-01T00:00:00+08:00", "out_of_range"),
    ],
)
def test_value_from_json_refuses_malformed_storage(
    type_: FieldType, stored: object, problem: str
) -> None:
    with pytest.raises(RecordInvalid) as caught:
        value_from_json(type_, stored, field="f")
    assert caught.value.metadata == {"field": "f", "problem": problem}


def test_value_from_json_accepts_rfc3339_offsets_and_returns_utc() -> None:
    value = value_from_json(FieldType.DATETIME, "2025-01-01T08:00:00.5+08:00")
    assert value == datetime(2025, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)
    assert isinstance(value, datetime)
    assert value.tzinfo is UTC


json_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs", "Cc"]) | st.sampled_from("\n\t")
)
offsets = st.timedeltas(
    min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
)


@st.composite
def decimals(draw: st.DrawFn) -> Decimal:
    coefficient = draw(st.integers(-(10**38) + 1, 10**38 - 1))
    scale = draw(st.integers(0, 38))
    value = Decimal(f"{coefficient}E-{scale}")
    digits = len(str(abs(coefficient)))
    if max(digits, scale) > 38:  # more digits than 38 in plain notation
        value = Decimal(coefficient)
    return value


VALUES: dict[FieldType, st.SearchStrategy[object]] = {
    FieldType.STRING: json_text,
    FieldType.INTEGER: st.integers(-(2**63), 2**63 - 1),
    FieldType.DECIMAL: decimals(),
    FieldType.BOOLEAN: st.booleans(),
    FieldType.DATE: st.dates(),
    FieldType.DATETIME: st.builds(
        lambda naive, offset: naive.replace(tzinfo=timezone(offset)),
        st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)),  # noqa: DTZ001
        offsets,
    ),
}


@given(data=st.data(), type_=st.sampled_from(FieldType))
def test_values_survive_a_trip_through_json(data: st.DataObject, type_: FieldType) -> None:
    value = data.draw(st.none() | VALUES[type_])
    stored = value_to_json(type_, value)
    assert json.loads(json.dumps(stored)) == stored
    restored = value_from_json(type_, stored)
    if value is None:
        assert restored is None
    elif type_ is FieldType.STRING:
        assert restored == unicodedata.normalize("NFC", str(value))
    else:
        assert restored == value
    assert value_to_json(type_, restored) == stored  # the stored form is canonical
    if type_ is FieldType.DECIMAL:
        assert "E" not in str(stored)


@given(
    record=st.fixed_dictionaries(
        {"licence_no": json_text.filter(lambda s: 0 < len(s) <= 16)},
        optional={spec.name: st.none() | VALUES[spec.type] for spec in LICENCE_FIELDS[1:]},
    )
)
def test_validation_is_idempotent(record: dict[str, object]) -> None:
    once = validate_record(SCHEMA, record)
    assert validate_record(SCHEMA, once) == once
    assert list(once) == list(SCHEMA.names)


def test_crlf_text_from_windows_systems_is_kept() -> None:
    schema = build_schema(
        [
            FieldSpec("key", FieldType.STRING, required=True),
            FieldSpec("scope", FieldType.STRING),
        ],
        "key",
    )
    assert validate_record(schema, {"key": "k", "scope": "餐饮服务\r\n食品销售"})["scope"] == (
        "餐饮服务\r\n食品销售"
    )
