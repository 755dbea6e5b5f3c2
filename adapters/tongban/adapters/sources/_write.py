"""Write-back values: a command's dataset record → the legacy columns' values. Pure.

A target maps each legacy column to a dataset field (optionally formatted as text with a
``strftime`` format) or a constant. The values are then fitted to what the legacy column
holds, by its family: the exchange sends a ``date``, a ``timestamp without time zone``
column wants a naive local time, a ``varchar`` column wants text. A value that cannot be
fitted rejects that command, not the batch.
"""

from __future__ import annotations

import unicodedata
from datetime import date, datetime
from decimal import Decimal, InvalidOperation

from tongban.adapters._coerce import canonical_decimal, offset
from tongban.adapters.mapping import WriteBackTarget
from tongban.adapters.sdk import Column, ColumnFamily, WriteCommand

__all__ = ["Unfit", "fit", "row_values"]


class Unfit(Exception):
    """A value that does not fit its legacy column; the command is rejected."""

    def __init__(self, column: str, message: str) -> None:
        super().__init__(message)
        self.column = column
        self.message = message


def row_values(target: WriteBackTarget, command: WriteCommand) -> dict[str, object]:
    """Return legacy column → value for an upsert of ``command`` (key column included)."""
    values: dict[str, object] = {target.key_column: command.key}
    zone = offset(target.timezone)
    for column, spec in target.columns.items():
        value = spec.constant if spec.field is None else command.values.get(spec.field)
        if spec.format is not None and isinstance(value, datetime | date):
            if isinstance(value, datetime) and value.tzinfo is not None:
                value = value.astimezone(zone)
            value = value.strftime(spec.format)
        values[column] = value
    return values


def fit(column: Column, value: object, *, timezone: str, naive_datetimes: bool) -> object:
    """Return ``value`` as the legacy ``column`` takes it.

    ``naive_datetimes``: the column holds local times without an offset (write aware
    datetimes converted to ``timezone``, without tzinfo). Raises ``Unfit``.
    """
    if value is None:
        return None
    family = column.family
    try:
        if family is ColumnFamily.STRING:
            return _text(value, timezone)
        if family is ColumnFamily.INTEGER:
            return _integer(value)
        if family is ColumnFamily.DECIMAL:
            return _decimal(value)
        if family is ColumnFamily.FLOAT:
            return float(_decimal(value))
        if family is ColumnFamily.BOOLEAN:
            return _boolean(value)
        if family is ColumnFamily.DATE:
            return _date(value)
        if family is ColumnFamily.DATETIME:
            return _datetime(value, timezone, naive=naive_datetimes)
    except (ValueError, TypeError, InvalidOperation):
        raise Unfit(
            column.name,
            f"The value for legacy column {column.name} ({column.type_name}) cannot be "
            f"written there; map a different field or add a format.",
        ) from None
    return value


def _text(value: object, timezone: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(canonical_decimal(value), "f")
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(offset(timezone)).replace(tzinfo=None)
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _integer(value: object) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    number = _decimal(value)
    if number != number.to_integral_value():
        raise ValueError("not a whole number")
    return int(number)


def _decimal(value: object) -> Decimal:
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    if isinstance(value, Decimal | int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, str):
        return Decimal(unicodedata.normalize("NFKC", value).strip().replace(",", ""))
    raise TypeError("not a number")


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return value == 1
    if isinstance(value, str) and value.strip().lower() in {"true", "false", "1", "0"}:
        return value.strip().lower() in {"true", "1"}
    raise TypeError("not a boolean")


def _date(value: object) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        return date.fromisoformat(value.strip())
    raise TypeError("not a date")


def _datetime(value: object, timezone: str, *, naive: bool) -> datetime:
    zone = offset(timezone)
    if isinstance(value, datetime):
        result = value
    elif isinstance(value, date):
        result = datetime(value.year, value.month, value.day, tzinfo=zone)
    elif isinstance(value, str):
        result = datetime.fromisoformat(value.strip())
    else:
        raise TypeError("not a datetime")
    if result.tzinfo is None:
        result = result.replace(tzinfo=zone)
    result = result.astimezone(zone)
    return result.replace(tzinfo=None) if naive else result
