"""Scalar values ↔ JSON that keeps their type, for the state store and fingerprints.

Legacy rows and checkpoints hold ``Decimal``, ``date``, naive and aware ``datetime`` and
``UUID`` values that plain JSON would flatten into strings or floats. Each such value is
written as a one-member object whose name is a type tag (``{"$dec": "12.50"}``), so that it
reads back as the same type and value, and so that two values of different types never
share a fingerprint.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

__all__ = ["decode", "dumps", "encode", "loads", "record_writer", "scalar_dumps"]

_TAGS = ("$dec", "$date", "$dt", "$time", "$uuid", "$bytes", "$float")


def encode(value: object) -> object:
    """Return ``value`` as plain JSON data with tagged non-JSON scalars.

    Raises ``TypeError`` for a type it cannot represent.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        # Legacy spreadsheets hand out floats; keep them distinct from decimals.
        return {"$float": repr(value)}
    if isinstance(value, Decimal):
        return {"$dec": str(value)}
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, date):
        return {"$date": value.isoformat()}
    if isinstance(value, time):
        return {"$time": value.isoformat()}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": bytes(value).hex()}
    if isinstance(value, Mapping):
        out: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"mapping keys must be str, not {type(key).__name__}")
            out[key] = encode(item)
        return out
    if isinstance(value, list | tuple):
        return [encode(item) for item in value]
    raise TypeError(f"cannot store a value of type {type(value).__name__}")


def decode(data: object) -> object:
    """Return the value ``encode`` was given for ``data``.

    Raises ``ValueError`` for a malformed tagged value.
    """
    if isinstance(data, dict):
        if len(data) == 1:
            ((tag, raw),) = data.items()
            if tag in _TAGS:
                if not isinstance(raw, str):
                    raise ValueError(f"tagged value {tag} must hold a string")
                return _decode_tagged(tag, raw)
        return {key: decode(item) for key, item in data.items()}
    if isinstance(data, list):
        return [decode(item) for item in data]
    return data


def _decode_tagged(tag: str, raw: str) -> object:
    if tag == "$dec":
        return Decimal(raw)
    if tag == "$date":
        return date.fromisoformat(raw)
    if tag == "$dt":
        return datetime.fromisoformat(raw)
    if tag == "$time":
        return time.fromisoformat(raw)
    if tag == "$uuid":
        return uuid.UUID(raw)
    if tag == "$bytes":
        return bytes.fromhex(raw)
    return float(raw)


_CANONICAL = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode
_PLAIN = frozenset({str, int, bool, type(None)})  # exact types JSON writes as they are


def dumps(value: object) -> str:
    """Return the canonical text of ``value``: tagged, sorted keys, no whitespace.

    For a record (a dict with str keys), plain values (str, int, bool, None; exact types)
    go to JSON as they are and only the others through ``encode``: the same text as
    ``encode`` then JSON, without a call per value, since every row of a snapshot is
    fingerprinted."""
    if type(value) is dict and all(type(key) is str for key in value):
        plain = _PLAIN
        return _CANONICAL(
            {key: item if type(item) in plain else encode(item) for key, item in value.items()}
        )
    return _CANONICAL(encode(value))


def loads(text: str) -> object:
    """Return the value ``dumps`` wrote; raises ``ValueError`` for malformed text."""
    return decode(json.loads(text))


_string_text = json.encoder.encode_basestring  # what the canonical encoder writes for a str


def _value_text(value: object) -> str:
    return _CANONICAL(encode(value))


_VALUE_TEXT: dict[type, Callable[[Any], str]] = {
    str: _string_text,
    int: int.__repr__,
    bool: lambda value: "true" if value else "false",
    type(None): lambda value: "null",
    Decimal: lambda value: '{"$dec":' + _string_text(str(value)) + "}",
    date: lambda value: '{"$date":"' + value.isoformat() + '"}',
}


def record_writer(names: Iterable[str]) -> Callable[[Mapping[str, object]], str]:
    """Return a function writing ``dumps`` of a record whose fields are exactly ``names``.

    The members are written in sorted order from texts made once, and each value by its
    exact type (str, int, bool, None, Decimal, date; others through ``encode``): the same
    text as ``dumps``, without building the tagged record and sorting it for every row.
    A record with other fields is written by ``dumps``.
    """
    ordered = sorted(set(names))
    heads = [("{" if i == 0 else ",") + _string_text(n) + ":" for i, n in enumerate(ordered)]
    members = list(zip(ordered, heads, strict=True))
    count = len(ordered)
    writers = _VALUE_TEXT

    def write(record: Mapping[str, object]) -> str:
        if len(record) != count:
            return dumps(record)
        parts = []
        try:
            for name, head in members:
                value = record[name]
                parts.append(head)
                parts.append(writers.get(type(value), _value_text)(value))
        except KeyError:
            return dumps(record)
        return "".join(parts) + "}" if parts else "{}"

    return write


def scalar_dumps(value: object) -> str:
    """Return ``dumps(value)``, quicker for the scalars a record holds."""
    return _VALUE_TEXT.get(type(value), _value_text)(value)
