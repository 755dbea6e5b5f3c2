"""Coercion of one legacy value into a dataset field's type. Pure.

Legacy systems hand out text for everything (``20240105``, ``2024年1月5日``,
``1,234.50``, full-width digits), floats from spreadsheets, naive local timestamps and
padded CHAR columns. Each coercion below accepts what such systems really produce and
raises ``CoercionError`` (a reject reason and a sentence) for anything else, never
guessing. Messages do not quote the value: the row is stored beside the reject.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from tongban.adapters.sdk import RejectReason

if TYPE_CHECKING:
    from tongban.adapters.mapping import (
        BooleanField,
        CodeField,
        DateField,
        DateTimeField,
        DecimalField,
        FieldSpec,
        IntegerField,
        StringField,
    )

__all__ = ["CoercionError", "canonical_decimal", "coerce", "coercer", "offset"]
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_COMPACT_DATE = re.compile(r"[0-9]{8}")

_FLOAT_EXACT = 2**53
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_DECIMAL_MAX_DIGITS = 38
_CONTROL = re.compile(r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F]")
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
# Thousands separators as legacy exports write them: ASCII and full-width commas, spaces.
_SEPARATORS = str.maketrans("", "", ", \u00a0\u3000")


class CoercionError(Exception):
    """A value that does not fit its field. Becomes a ``Rejected`` naming the field."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def offset(text: str) -> tzinfo:
    """Return the fixed offset ``±HH:MM`` as a ``tzinfo``."""
    sign = -1 if text.startswith("-") else 1
    hours, minutes = int(text[1:3]), int(text[4:6])
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def canonical_decimal(value: Decimal) -> Decimal:
    """Return ``value`` without trailing fractional zeros or an exponent (``1.50`` → ``1.5``,
    ``1E+2`` → ``100``, ``-0`` → ``0``), the form the exchange stores. Exact for any
    finite value: the digits are moved, never rounded (a decimal context's precision, 28
    by default, made ``quantize`` fail and ``normalize`` round above 28 digits; a context
    of the value's own digits was exact but cost more than the rest of the coercion)."""
    if not value.is_finite():
        return value
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite
    if digits == (0,):
        return _ZERO
    if exponent > 0:
        return Decimal((sign, digits + (0,) * exponent, 0))
    zeros = 0
    while zeros < -exponent and digits[-1 - zeros] == 0:
        zeros += 1
    if not zeros:
        return value
    return Decimal((sign, digits[:-zeros], exponent + zeros))


_ZERO = Decimal(0)


def coerce(spec: FieldSpec, raw: object) -> object:
    """Return ``raw`` as the value of field ``spec``, or ``None`` for an empty value.

    Raises ``CoercionError``.
    """
    if raw is None:
        return None
    if spec.type == "string":
        return _string(spec, raw)
    if isinstance(raw, str) and not raw.strip():
        return None
    if spec.type == "integer":
        return _integer(spec, raw)
    if spec.type == "decimal":
        return _decimal(spec, raw)
    if spec.type == "date":
        return _date(spec, raw)
    if spec.type == "datetime":
        return _datetime(spec, raw)
    if spec.type == "boolean":
        return _boolean(spec, raw)
    return _code(spec, raw)


def coercer(spec: FieldSpec) -> Callable[[object], object]:
    """Return ``coerce`` for field ``spec`` alone: the same results and errors, with the
    choice by type made once rather than for every value."""
    if spec.type == "string":
        string = spec

        def text(raw: object) -> object:
            return None if raw is None else _string(string, raw)

        return text
    kinds: dict[str, Callable[[Any, object], object]] = {
        "integer": _integer,
        "decimal": _decimal,
        "date": _date,
        "datetime": _datetime,
        "boolean": _boolean,
        "code": _code,
    }
    kind = kinds[spec.type]

    def convert(raw: object) -> object:
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        return kind(spec, raw)

    return convert


def _float_text(raw: float, reason: RejectReason) -> str:
    if raw != raw or raw in (float("inf"), float("-inf")):
        raise CoercionError(reason, "the value is not a finite number.")
    if raw.is_integer():
        if abs(raw) >= _FLOAT_EXACT:
            raise CoercionError(
                RejectReason.PRECISION_LOST,
                "the source stored this number as a float, which cannot hold all its "
                "digits; store the column as text in the source (in Excel, format the "
                "cells as Text) and export again.",
            )
        return str(int(raw))
    return repr(raw)


def _text_of(raw: object, reason: RejectReason) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, float):
        return _float_text(raw, reason)
    if isinstance(raw, Decimal):
        if not raw.is_finite():
            raise CoercionError(reason, "the value is not a finite number.")
        return format(raw, "f")
    if isinstance(raw, datetime | date):
        return raw.isoformat()
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise CoercionError(
                RejectReason.BAD_STRING, "the value is binary data, not UTF-8 text."
            ) from None
    return str(raw)


def _string(spec: StringField, raw: object) -> str | None:
    text = _text_of(raw, RejectReason.BAD_STRING)
    if spec.strip:
        text = text.strip()
    text = unicodedata.normalize("NFC", text)
    if not text and spec.empty_as_null:
        return None
    if _CONTROL.search(text):
        raise CoercionError(
            RejectReason.CONTROL_CHARACTER,
            "the text contains a control character (other than tab or line break); "
            "remove it in the source.",
        )
    if spec.max_length is not None and len(text) > spec.max_length:
        raise CoercionError(
            RejectReason.TOO_LONG,
            f"the text has {len(text)} characters; the field allows {spec.max_length}.",
        )
    return text


def _number_text(raw: str) -> str:
    return unicodedata.normalize("NFKC", raw).strip().translate(_SEPARATORS)


def _integer(spec: IntegerField, raw: object) -> int:
    del spec
    value: int
    if isinstance(raw, bool):
        raise CoercionError(RejectReason.BAD_INTEGER, "a true/false value is not an integer.")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, float):
        value = int(_float_text(raw, RejectReason.BAD_INTEGER)) if raw.is_integer() else _no_int()
    elif isinstance(raw, Decimal):
        if not raw.is_finite() or raw != raw.to_integral_value():
            _no_int()
        value = int(raw)
    elif isinstance(raw, str) and _INTEGER_TEXT.fullmatch(_number_text(raw)):
        value = int(_number_text(raw))
    else:
        _no_int()
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise CoercionError(RejectReason.BAD_INTEGER, "the integer does not fit in 64 bits.")
    return value


def _no_int() -> int:
    raise CoercionError(RejectReason.BAD_INTEGER, "the value is not a whole number.")


def _decimal(spec: DecimalField, raw: object) -> Decimal:
    del spec
    if isinstance(raw, bool):
        raise CoercionError(RejectReason.BAD_DECIMAL, "a true/false value is not a number.")
    if isinstance(raw, int):
        value = Decimal(raw)
    elif isinstance(raw, float):
        value = Decimal(_float_text(raw, RejectReason.BAD_DECIMAL))
    elif isinstance(raw, Decimal):
        value = raw
    elif isinstance(raw, str) and _DECIMAL_TEXT.fullmatch(_number_text(raw)):
        value = Decimal(_number_text(raw))
    else:
        raise CoercionError(
            RejectReason.BAD_DECIMAL,
            "the value is not a decimal number (digits, an optional sign and point, "
            "thousands separated by commas at most).",
        )
    if not value.is_finite():
        raise CoercionError(RejectReason.BAD_DECIMAL, "the value is not a finite number.")
    if value.adjusted() >= _DECIMAL_MAX_DIGITS:  # more integer digits than allowed: do not
        _too_many_digits()  # write them all out (1E+100000) only to count them
    value = canonical_decimal(value)
    digits = len(format(value.copy_abs(), "f").replace(".", "").lstrip("0"))  # exact: no context
    if digits > _DECIMAL_MAX_DIGITS:
        _too_many_digits()
    return value


def _too_many_digits() -> None:
    raise CoercionError(
        RejectReason.BAD_DECIMAL, f"the number has more than {_DECIMAL_MAX_DIGITS} digits."
    )


def _date(spec: DateField, raw: object) -> date:
    if isinstance(raw, datetime):
        if raw.tzinfo is not None:
            raw = raw.astimezone(offset(spec.timezone))
        return raw.date()
    if isinstance(raw, date):
        return raw
    text = _date_text(raw, RejectReason.BAD_DATE)
    for fmt in spec.formats:
        try:
            # The two shapes legacy systems use most, read as strptime reads them when the
            # text has exactly that shape, ten times faster (a snapshot reads every row).
            if fmt == "%Y-%m-%d" and _ISO_DATE.fullmatch(text):
                return date.fromisoformat(text)
            if fmt == "%Y%m%d" and _COMPACT_DATE.fullmatch(text):
                return date(int(text[:4]), int(text[4:6]), int(text[6:]))
            return datetime.strptime(text, fmt).date()  # noqa: DTZ007 - only the date is kept
        except ValueError:
            continue
    raise CoercionError(
        RejectReason.BAD_DATE,
        f"the value is not a date in any of the formats {', '.join(spec.formats)}; "
        f"correct it in the source or add its format to the field.",
    )


def _date_text(raw: object, reason: RejectReason) -> str:
    if isinstance(raw, bool):
        raise CoercionError(reason, "a true/false value is not a date.")
    if isinstance(raw, int | float | Decimal):
        # 20240105 stored as a number.
        return _text_of(raw, reason)
    if isinstance(raw, str):
        # NFKC reads full-width digits as ASCII; ASCII text it leaves as it is.
        return (raw if raw.isascii() else unicodedata.normalize("NFKC", raw)).strip()
    raise CoercionError(reason, f"a {type(raw).__name__} value is not a date.")


def _datetime(spec: DateTimeField, raw: object) -> datetime:
    zone = offset(spec.timezone)
    if isinstance(raw, datetime):
        value = raw
    elif isinstance(raw, date):
        value = datetime(raw.year, raw.month, raw.day, tzinfo=zone)
    else:
        text = _date_text(raw, RejectReason.BAD_DATETIME)
        value = _parse_datetime(text, spec.formats)
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    return value.astimezone(UTC)


def _parse_datetime(text: str, formats: list[str]) -> datetime:
    if not formats:
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            raise CoercionError(
                RejectReason.BAD_DATETIME,
                "the value is not an ISO 8601 date and time; correct it in the source or "
                "give the field its formats.",
            ) from None
    for fmt in formats:
        try:
            return datetime.strptime(text, fmt)  # noqa: DTZ007 - the zone is added by the caller
        except ValueError:
            continue
    raise CoercionError(
        RejectReason.BAD_DATETIME,
        f"the value is not a date and time in any of the formats {', '.join(formats)}.",
    )


def _boolean(spec: BooleanField, raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return raw == 1
    if isinstance(raw, str):
        text = unicodedata.normalize("NFKC", raw).strip().casefold()
        if text in {v.casefold() for v in spec.true_values}:
            return True
        if text in {v.casefold() for v in spec.false_values}:
            return False
    raise CoercionError(
        RejectReason.BAD_BOOLEAN,
        f"the value is not one of the field's true values ({', '.join(spec.true_values)}) "
        f"or false values ({', '.join(spec.false_values)}).",
    )


def _code(spec: CodeField, raw: object) -> str:
    code = _text_of(raw, RejectReason.UNKNOWN_CODE).strip()
    table = spec.table or {}
    found = table.get(code)
    if found is not None:
        return found
    if spec.default is not None:
        return spec.default
    raise CoercionError(
        RejectReason.UNKNOWN_CODE,
        f"the code is not in the field's code table ({len(table)} codes); correct it in "
        f"the source or add it to the table.",
    )
