"""Reply messages with every field set, or with only what the typed values require, for
the tests of the client's typed values and of their ``--json`` form."""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from tongban.client import _replies
from tongban.v1 import (
    audit_pb2,
    cases_pb2,
    catalogue_pb2,
    events_pb2,
    grants_pb2,
    items_pb2,
    licence_pb2,
    packages_pb2,
    ratings_pb2,
    supervision_pb2,
)

# Every reply message the client reads into a typed value, with its reader.
READERS: dict[type[Message], Callable[[Any], object]] = {
    catalogue_pb2.Dataset: _replies.dataset,
    grants_pb2.Grant: _replies.grant,
    events_pb2.Subscription: _replies.subscription,
    audit_pb2.SearchResponse: _replies.entry_page,
    audit_pb2.Checkpoint: _replies.checkpoint,
    audit_pb2.EntryWithProof: _replies.entry_with_proof,
    audit_pb2.ConsistencyProof: _replies.consistency_proof,
    audit_pb2.SubjectAccessesResponse: _replies.subject_access_page,
    audit_pb2.Anomaly: _replies.anomaly,
    audit_pb2.CovertCase: _replies.covert_case,
    audit_pb2.ListCovertCasesResponse: _replies.covert_case_page,
    licence_pb2.LicenceType: _replies.licence_type,
    licence_pb2.Licence: _replies.licence,
    licence_pb2.VerificationResult: _replies.licence_verification,
    licence_pb2.ResolveMaterialsResponse: _replies.resolved_materials,
    licence_pb2.VerifyPdfResponse: _replies.pdf_verification,
    items_pb2.ServiceItem: _replies.service_item,
    cases_pb2.CaseMaterial: _replies.case_material,
    cases_pb2.Case: _replies.case,
    cases_pb2.OverdueReportResponse: _replies.overdue_report,
    cases_pb2.ListOverdueCasesResponse: _replies.overdue_case_page,
    packages_pb2.Package: _replies.package,
    packages_pb2.PackageCase: _replies.package_case,
    ratings_pb2.RatedCase: _replies.rated_case,
    ratings_pb2.ListRectificationsResponse: _replies.rectification_page,
    ratings_pb2.VerifyRatingsResponse: _replies.ratings_check,
    supervision_pb2.SupervisionReportResponse: _replies.supervision_report,
    supervision_pb2.ListSupervisedCasesResponse: _replies.supervised_case_page,
}

# An instant with microseconds, in a year a 64-bit count of seconds needs more than 32 bits for.
T0 = datetime(2106, 2, 7, 6, 28, 16, 250_001, tzinfo=UTC)


_M = typing.TypeVar("_M", bound=Message)


def filled(message_type: type[_M], seed: int = 1) -> _M:
    """A message with every field set to a value no other field has: repeated fields hold
    two, a oneof its first member, enums their last value, instants ``T0`` onwards."""
    message = message_type()
    counter = iter(range(seed, seed + 10_000))
    _fill(message, counter)
    return message


def _fill(message: Message, counter: typing.Iterator[int]) -> None:
    chosen: set[str] = set()
    for field in message.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        if oneof is not None and field.has_presence and len(oneof.fields) > 1:
            if oneof.name in chosen:
                continue
            chosen.add(oneof.name)
        if field.is_repeated:
            for _ in range(2):
                _add(message, field, counter)
        elif field.message_type is not None:
            _fill_message(getattr(message, field.name), counter)
        else:
            setattr(message, field.name, _scalar(field, next(counter)))


def _add(message: Message, field: Any, counter: typing.Iterator[int]) -> None:
    container = getattr(message, field.name)
    if field.message_type is not None:
        _fill_message(container.add(), counter)
    else:
        container.append(_scalar(field, next(counter)))


def _fill_message(message: Message, counter: typing.Iterator[int]) -> None:
    if isinstance(message, Timestamp):
        message.FromDatetime(T0 + timedelta(days=next(counter)))
    else:
        message.SetInParent()
        _fill(message, counter)


def _scalar(field: Any, n: int) -> object:
    if field.enum_type is not None:
        return max(v.number for v in field.enum_type.values)
    kind = field.cpp_type
    if kind == FieldDescriptor.CPPTYPE_STRING:
        return bytes([0, 255, n % 256]) if field.type == FieldDescriptor.TYPE_BYTES else f"值-{n}"
    if kind == FieldDescriptor.CPPTYPE_BOOL:
        return True
    if kind in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return n + 0.25
    if kind in (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64):
        return 2**40 + n
    return n


def sparse(message_type: type[Message], typed: type) -> Message:
    """A message with only what ``typed`` (the value it is read into) cannot do without:
    its instants and messages that are not optional there, every other field unset."""
    message = message_type()
    _sparse(message, typed)
    return message


def _sparse(message: Message, typed: type) -> None:
    assert is_dataclass(typed), typed
    hints = typing.get_type_hints(typed)
    for field in fields(typed):
        hint = hints[field.name]
        if hint is datetime:
            getattr(message, field.name).FromDatetime(T0)
        elif is_dataclass(hint) and isinstance(hint, type):
            nested = getattr(message, field.name)
            nested.SetInParent()
            _sparse(nested, hint)


def optional(hint: object) -> bool:
    """Whether a field's type allows None."""
    return isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
