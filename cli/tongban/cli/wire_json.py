"""The ``--json`` form of the client's typed values: the proto3 JSON mapping of the
``tongban.v1`` message each mirrors, with the ``.proto`` field names — what protobuf's
``MessageToDict`` prints for that message, key for key and in the same order.

The typed values carry the message's fields under the same names, so the message's
descriptor says how each is written: 64-bit integers as strings, bytes as base64, enums
by their names, instants as RFC 3339 text in UTC. A ``oneof`` is one attribute named as
the oneof, holding a value of the class named as the chosen message.
"""

from __future__ import annotations

import base64
import math
from datetime import datetime
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

__all__ = ["instant_json", "message_json"]

_INT64 = (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64)
_FLOAT = (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE)
_TIMESTAMP = Timestamp.DESCRIPTOR.full_name


def message_json(
    value: object, message: type[Message], *, every_field: bool = False
) -> dict[str, Any]:
    """``value`` as the JSON object of ``message``: the fields that are set, in field-number
    order, then (``every_field``) those without presence that are not, at their defaults."""
    descriptor: Descriptor = message.DESCRIPTOR  # type: ignore[assignment]  # upb's is the same
    return _object(value, descriptor, every_field)


def instant_json(at: datetime) -> str:
    """An aware datetime as a Timestamp's JSON text (UTC, ``Z``, 0/3/6 fraction digits)."""
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp.ToJsonString()


def _object(value: object, descriptor: Descriptor, every_field: bool) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for field in sorted(descriptor.fields, key=lambda f: f.number):
        present, item = _read(value, field)
        if present:
            if field.is_repeated:
                found[field.name] = [_single(field, x, every_field) for x in item]
            else:
                found[field.name] = _single(field, item, every_field)
    if every_field:
        for field in descriptor.fields:
            if field.has_presence or field.name in found:
                continue
            if field.is_repeated:
                found[field.name] = []
            else:
                found[field.name] = _single(field, field.default_value, every_field)
    return found


def _read(value: object, field: FieldDescriptor) -> tuple[bool, Any]:
    """Whether ``field`` is set in ``value``, and its value there."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        raise TypeError(f"{field.full_name}: map fields have no typed form here")
    if hasattr(value, field.name):
        item = getattr(value, field.name)
        if field.is_repeated:
            return len(item) > 0, item
        if field.has_presence:
            return item is not None, item
        return item != field.default_value, item
    oneof = field.containing_oneof
    if oneof is None or field.message_type is None or not hasattr(value, oneof.name):
        raise TypeError(f"{type(value).__name__} has no field {field.name}")
    chosen = getattr(value, oneof.name)
    return type(chosen).__name__ == field.message_type.name, chosen


def _single(field: FieldDescriptor, value: Any, every_field: bool) -> Any:
    if field.message_type is not None:
        if field.message_type.full_name == _TIMESTAMP:
            return instant_json(value)
        return _object(value, field.message_type, every_field)
    if field.enum_type is not None:
        named = field.enum_type.values_by_number.get(int(value))
        return int(value) if named is None else named.name
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("utf-8")
    if field.cpp_type in _INT64:
        return str(value)
    if field.cpp_type in _FLOAT:
        if math.isinf(value):
            return "-Infinity" if value < 0 else "Infinity"
        if math.isnan(value):
            return "NaN"
    return value
