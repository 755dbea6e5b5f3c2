"""Checks every decoded request message gets before any service sees it.

The services check what their fields mean (a dataset code's form, a page size's range).
These checks are the ones no field should ever fail, whatever the method, so they are
done once, from the message descriptors, and cover methods added later:

- a string holds no NUL character (PostgreSQL refuses it in text, and no identifier,
  purpose or claim needs one);
- a string is at most ``MAX_STRING`` characters (a service may allow fewer);
- an enum field holds one of its enum's values (proto3 enums are open: an unknown
  number decodes silently).

Invalid UTF-8 in a string field does not get this far: protobuf refuses to decode it,
and the interceptor answers MALFORMED_REQUEST.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from tongban.exchange.errors import InvalidArgument

__all__ = ["MAX_STRING", "check_request"]

MAX_STRING = 256 * 1024
"""The longest string any request field may hold (an SD-JWT with its chain is ~10 KB)."""

_STRING = FieldDescriptor.TYPE_STRING
_ENUM = FieldDescriptor.TYPE_ENUM
_MESSAGE = FieldDescriptor.TYPE_MESSAGE


def check_request(message: Message) -> None:
    """Raise InvalidArgument naming the first field that breaks a rule above."""
    _check(message, "")


@cache
def _worth_walking(descriptor: Descriptor) -> bool:
    """Whether messages of ``descriptor`` can hold a string or an enum at any depth."""
    return _reaches_checked(descriptor, set())


def _reaches_checked(descriptor: Descriptor, seen: set[str]) -> bool:
    if descriptor.full_name in seen:
        return False
    seen.add(descriptor.full_name)
    field: Any  # descriptor attributes are typed optional; a set type makes them present
    for field in descriptor.fields:
        if field.type in (_STRING, _ENUM):
            return True
        if field.type == _MESSAGE and _reaches_checked(field.message_type, seen):
            return True
    return False


def _check(message: Message, prefix: str) -> None:
    if not _worth_walking(message.DESCRIPTOR):
        return
    field: Any
    value: Any
    for field, value in message.ListFields():
        name = prefix + field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            _check_map(field, value, name)
        elif field.is_repeated:
            for index, item in enumerate(value):
                _check_value(field, item, f"{name}[{index}]")
        else:
            _check_value(field, value, name)


def _check_map(field: Any, value: Any, name: str) -> None:
    key_field = field.message_type.fields_by_name["key"]
    value_field = field.message_type.fields_by_name["value"]
    for key, item in value.items():
        if key_field.type == _STRING:
            _check_string(key, f"{name} key")
        _check_value(value_field, item, f"{name}[{str(key)[:40]!r}]")


def _check_value(field: Any, value: Any, name: str) -> None:
    if field.type == _STRING:
        _check_string(value, name)
    elif field.type == _ENUM:
        if field.enum_type.values_by_number.get(value) is None:
            raise InvalidArgument(
                f"Field {name} holds {value}, which is not a value of {field.enum_type.name}; "
                f"use one of {', '.join(v.name for v in field.enum_type.values)}.",
                metadata={"field": name},
            )
    elif field.type == _MESSAGE:
        _check(value, name + ".")


def _check_string(value: str, name: str) -> None:
    if "\x00" in value:
        raise InvalidArgument(
            f"Field {name} contains a NUL character, which no field may hold; remove it.",
            metadata={"field": name},
        )
    if len(value) > MAX_STRING:
        raise InvalidArgument(
            f"Field {name} holds {len(value):,} characters; no field may hold more than "
            f"{MAX_STRING:,}.",
            metadata={"field": name},
        )
