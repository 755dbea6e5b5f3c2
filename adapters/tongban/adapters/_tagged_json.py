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
from collections.abc import Mapping
from datetime import date, datetime, time
from decimal import Decimal

__all__ = ["decode", "dumps", "encode", "loads"]

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
