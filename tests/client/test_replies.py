"""The client's typed values: each reply message read field for field, instants as aware
UTC datetimes (None where the message leaves an optional one unset), enums mirroring the
``.proto``."""

from __future__ import annotations

import dataclasses
import re
import typing
from datetime import UTC, datetime
from enum import IntEnum

import grpc
import pytest
from google.protobuf.message import Message

import tongban.client
from tests.client.samples import READERS, T0, filled, optional, sparse
from tongban.client import (
    Case,
    CaseState,
    DatasetSource,
    ExchangeError,
    KeyFrom,
    LicenceSource,
    SubmittedSource,
    _replies,
)
from tongban.v1 import (
    cases_pb2,
    catalogue_pb2,
    grants_pb2,
    items_pb2,
    licence_pb2,
    packages_pb2,
    ratings_pb2,
    supervision_pb2,
    values_pb2,
)

_PROTO_ENUMS = [
    values_pb2.FieldType,
    catalogue_pb2.ShareClass,
    catalogue_pb2.SubjectKind,
    grants_pb2.GrantStatus,
    cases_pb2.CaseState,
    cases_pb2.CaseOutcome,
    cases_pb2.CaseOverdue,
    cases_pb2.MaterialKind,
    cases_pb2.MaterialState,
    packages_pb2.StepState,
    packages_pb2.PackageState,
    supervision_pb2.SupervisedCaseKind,
]


def _values(typed: object) -> list[tuple[str, object]]:
    """Every (path, value) of a typed value, nested values and tuples walked."""
    found: list[tuple[str, object]] = []

    def walk(path: str, value: object) -> None:
        found.append((path, value))
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                walk(f"{path}.{f.name}", getattr(value, f.name))
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                walk(f"{path}[{i}]", item)

    walk("", typed)
    return found


@pytest.mark.parametrize("message_type", list(READERS), ids=lambda t: t.__name__)
def test_each_reply_becomes_frozen_values_of_plain_types(message_type: type[Message]) -> None:
    typed = READERS[message_type](filled(message_type))
    for path, value in _values(typed):
        assert not isinstance(value, Message | list | dict), path
        if dataclasses.is_dataclass(value):
            assert getattr(type(value), "__dataclass_params__").frozen, path  # noqa: B009
        if isinstance(value, datetime):
            assert value.tzinfo is UTC, path
            assert value >= T0, path  # the instant sent, not the epoch of an unset one
            assert value.microsecond == 250_001, path


@pytest.mark.parametrize("message_type", list(READERS), ids=lambda t: t.__name__)
def test_each_typed_value_has_the_fields_of_its_message(message_type: type[Message]) -> None:
    """Same names, so that ``--json`` can write a value as its message (tests/cli)."""

    def check(typed: object, descriptor: typing.Any) -> None:
        names = {f.name for f in dataclasses.fields(typed)}  # type: ignore[arg-type]
        wanted = {
            f.containing_oneof.name
            if f.containing_oneof is not None and len(f.containing_oneof.fields) > 1
            else f.name
            for f in descriptor.fields
        }
        assert names == wanted, type(typed).__name__
        for f in descriptor.fields:
            value: typing.Any = getattr(typed, f.name, None)
            if f.message_type is None or f.message_type.name == "Timestamp":
                continue
            for item in list(value) if f.is_repeated else [value]:
                if dataclasses.is_dataclass(item) and dataclasses.fields(item):
                    check(item, f.message_type)

    check(READERS[message_type](filled(message_type)), message_type.DESCRIPTOR)


@pytest.mark.parametrize("message_type", list(READERS), ids=lambda t: t.__name__)
def test_optional_instants_and_messages_left_unset_read_as_none(
    message_type: type[Message],
) -> None:
    full = READERS[message_type](filled(message_type))
    typed = READERS[message_type](sparse(message_type, type(full)))
    for path, value in _values(typed):
        if isinstance(value, datetime):
            assert value == T0, path
    hints = typing.get_type_hints(type(typed))
    for f in dataclasses.fields(typed):  # type: ignore[arg-type]
        if optional(hints[f.name]):
            assert getattr(typed, f.name) is None, f.name


def test_enums_mirror_the_proto_by_name_and_number() -> None:
    exported = {
        name: value
        for name in tongban.client.__all__
        if isinstance(value := getattr(tongban.client, name), type) and issubclass(value, IntEnum)
    }
    assert len(exported) == len(_PROTO_ENUMS)
    for proto in _PROTO_ENUMS:
        name = proto.DESCRIPTOR.name
        prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper() + "_"
        typed = exported[name]
        assert {prefix + m.name: m.value for m in typed} == dict(proto.items()), name


def test_an_enum_number_the_client_does_not_know_is_refused() -> None:
    message = cases_pb2.Case(state=typing.cast(cases_pb2.CaseState.ValueType, 42))
    message.opened_at.FromDatetime(T0)
    with pytest.raises(ExchangeError) as refused:
        _replies.case(message)
    assert refused.value.reason == "UNSUPPORTED_ANSWER"
    assert refused.value.code is grpc.StatusCode.UNIMPLEMENTED
    assert not refused.value.retriable
    assert "CaseState" in str(refused.value)


def test_a_case_reads_its_states_and_leaves_unset_dates_none() -> None:
    message = cases_pb2.Case(
        number="approval-2026-7K3Q9XW2M4",
        state=cases_pb2.CASE_STATE_CORRECTION,
        stopped_days=2,
        history=[
            cases_pb2.CaseTransition(to_state=cases_pb2.CASE_STATE_ACCEPTED),
            cases_pb2.CaseTransition(
                from_state=cases_pb2.CASE_STATE_ACCEPTED, to_state=cases_pb2.CASE_STATE_CORRECTION
            ),
        ],
    )
    for stamp in (message.opened_at, message.promised_due_at, message.legal_due_at):
        stamp.FromDatetime(T0)
    message.correction_since.FromDatetime(datetime(2026, 3, 2, 1, 30, tzinfo=UTC))
    case = _replies.case(message)
    assert isinstance(case, Case)
    assert case.state is CaseState.CORRECTION
    assert case.correction_since == datetime(2026, 3, 2, 1, 30, tzinfo=UTC)
    assert (case.decided_at, case.closed_at, case.delivered_at) == (None, None, None)
    assert [(t.from_state, t.to_state) for t in case.history] == [
        (CaseState.UNSPECIFIED, CaseState.ACCEPTED),
        (CaseState.ACCEPTED, CaseState.CORRECTION),
    ]
    assert case.materials == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        case.number = "other"  # type: ignore[misc]


def _item_with(*materials: items_pb2.Material) -> items_pb2.ServiceItem:
    item = items_pb2.ServiceItem(spec=items_pb2.ItemSpec(code="x", materials=materials))
    item.created_at.FromDatetime(T0)
    item.version_created_at.FromDatetime(T0)
    return item


def test_a_material_source_is_the_oneof_chosen() -> None:
    keyed = items_pb2.DatasetSource(
        dataset="samr.enterprise",
        fields=["name"],
        key_from=items_pb2.KeyFrom(material="licence", field="holder_id"),
    )
    item = _replies.service_item(
        _item_with(
            items_pb2.Material(
                code="a", licence=items_pb2.LicenceSource(licence_type="business-licence")
            ),
            items_pb2.Material(code="b", dataset=keyed),
            items_pb2.Material(code="c", dataset=items_pb2.DatasetSource(dataset="x.y")),
            items_pb2.Material(code="d", submitted=items_pb2.SubmittedSource()),
            items_pb2.Material(code="e"),
        )
    )
    assert [m.source for m in item.spec.materials] == [
        LicenceSource(licence_type="business-licence", disclose=()),
        DatasetSource(
            dataset="samr.enterprise",
            fields=("name",),
            key_from=KeyFrom(material="licence", field="holder_id"),
        ),
        DatasetSource(dataset="x.y", fields=(), key_from=None),
        SubmittedSource(),
        None,
    ]


def test_a_share_of_zero_is_not_an_absent_share() -> None:
    report = supervision_pb2.SupervisionReportResponse(
        rows=[supervision_pb2.SupervisionRow(department="approval", within_promised_share=0.0)]
    )
    report.at.FromDatetime(T0)
    (row,) = _replies.supervision_report(report).rows
    assert row.within_promised_share == 0.0
    assert (row.immediate_share, row.average_days) == (None, None)


def test_a_rated_case_without_a_rectification_has_none() -> None:
    rated = ratings_pb2.RatedCase(case_number="n", ratings=[ratings_pb2.Rating(score=5)])
    rated.ratings[0].rated_at.FromDatetime(T0)
    assert _replies.rated_case(rated).rectification is None
    fix = rated.rectification
    fix.opened_at.FromDatetime(T0)
    fix.due_at.FromDatetime(T0)
    read = _replies.rated_case(rated).rectification
    assert read is not None
    assert (read.answer, read.answered_at, read.overdue) == ("", None, False)


def test_an_open_ended_licence_has_no_expiry() -> None:
    message = licence_pb2.Licence(number="YYZZ", status="valid")
    message.not_before.FromDatetime(T0)
    message.issued_at.FromDatetime(T0)
    assert _replies.licence(message).expires is None
    message.expires.FromDatetime(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))
    assert _replies.licence(message).expires == datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
