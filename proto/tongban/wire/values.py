"""Python values ↔ ``tongban.v1.FieldValue``.

None ↔ null, str ↔ string, bool ↔ boolean, int ↔ integer, Decimal ↔ decimal (exact string),
date ↔ date (ISO), aware datetime ↔ datetime (Timestamp, UTC).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation

from google.protobuf.timestamp_pb2 import Timestamp

from tongban.errors import TongbanError
from tongban.v1 import values_pb2

__all__ = ["ValueNotSupported", "from_field_value", "to_field_value"]

_INT64 = (-(2**63), 2**63 - 1)


class ValueNotSupported(TongbanError):
    reason = "INVALID_ARGUMENT"
    status = "INVALID_ARGUMENT"


def to_field_value(value: object) -> values_pb2.FieldValue:
    """Encode a Python value; raise ValueNotSupported for other types or naive datetimes."""
    if value is None:
        return values_pb2.FieldValue(null_value=True)
    if isinstance(value, bool):
        return values_pb2.FieldValue(boolean_value=value)
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise ValueNotSupported(f"{value} does not fit a 64-bit integer field.")
        return values_pb2.FieldValue(integer_value=value)
    if isinstance(value, Decimal):
        return values_pb2.FieldValue(decimal_value=str(value))
    if isinstance(value, str):
        return values_pb2.FieldValue(string_value=value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueNotSupported("A datetime value must carry its time zone.")
        stamp = Timestamp()
        stamp.FromDatetime(value.astimezone(UTC))
        return values_pb2.FieldValue(datetime_value=stamp)
    if isinstance(value, date):
        return values_pb2.FieldValue(date_value=value.isoformat())
    raise ValueNotSupported(f"Values of type {type(value).__name__} cannot be sent.")


def from_field_value(value: values_pb2.FieldValue) -> object:
    """Decode a FieldValue; raise ValueNotSupported for a malformed decimal, date or
    datetime."""
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "string_value":
        return value.string_value
    if kind == "integer_value":
        return value.integer_value
    if kind == "boolean_value":
        return value.boolean_value
    if kind == "decimal_value":
        try:
            return Decimal(value.decimal_value)
        except InvalidOperation:
            raise ValueNotSupported(f"{value.decimal_value[:40]!r} is not a decimal.") from None
    if kind == "date_value":
        try:
            return date.fromisoformat(value.date_value)
        except ValueError:
            raise ValueNotSupported(
                f"{value.date_value[:40]!r} is not a date (YYYY-MM-DD)."
            ) from None
    try:
        return value.datetime_value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise ValueNotSupported(
            "The datetime value is not an instant a Timestamp can hold (years 1 to 9999, "
            "nanos 0 to 999,999,999)."
        ) from None
