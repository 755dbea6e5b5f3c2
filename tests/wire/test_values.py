"""The value codec both ends share (``tongban.wire.values``)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from tongban.v1 import values_pb2
from tongban.wire.values import ValueNotSupported, from_field_value, to_field_value


@pytest.mark.parametrize(
    "value",
    [
        None,
        "统一社会信用代码",
        "",
        0,
        -(2**63),
        2**63 - 1,
        True,
        False,
        Decimal("50.00"),
        date(2026, 2, 28),
        datetime(2026, 2, 28, 9, 30, 0, 123456, tzinfo=UTC),
    ],
)
def test_values_come_back_as_they_went(value: object) -> None:
    back = from_field_value(to_field_value(value))
    assert back == value
    assert type(back) is type(value)


def test_an_aware_datetime_comes_back_in_utc() -> None:
    beijing = datetime(2026, 2, 28, 17, 30, tzinfo=timezone(timedelta(hours=8)))
    back = from_field_value(to_field_value(beijing))
    assert isinstance(back, datetime)
    assert back == beijing
    assert back.tzinfo is UTC


@pytest.mark.parametrize(
    "value",
    [2**63, datetime(2026, 2, 28, 9, 30), 1.5, b"bytes", ["a"]],  # noqa: DTZ001
)
def test_values_without_a_wire_form_are_refused(value: object) -> None:
    with pytest.raises(ValueNotSupported):
        to_field_value(value)


@pytest.mark.parametrize(
    "message",
    [
        values_pb2.FieldValue(decimal_value="fifty"),
        values_pb2.FieldValue(date_value="2026-02-30"),
    ],
)
def test_malformed_values_are_refused(message: values_pb2.FieldValue) -> None:
    with pytest.raises(ValueNotSupported):
        from_field_value(message)


def test_an_unset_value_is_null() -> None:
    assert from_field_value(values_pb2.FieldValue()) is None
