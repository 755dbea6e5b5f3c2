"""``--json`` writes a typed value of the client exactly as protobuf wrote the message it
was read from: the same keys, in the same order, with the same values."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from tests.client.samples import READERS, filled, sparse
from tongban.cli.common import message_dict
from tongban.cli.wire_json import instant_json, message_json
from tongban.client import _replies
from tongban.v1 import cases_pb2, items_pb2


def _same(value: object, message: Message) -> None:
    for every_field in (False, True):
        expected = MessageToDict(
            message,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=every_field,
        )
        written = message_json(value, type(message), every_field=every_field)
        # Compared as text: the order of the keys is part of the output.
        assert json.dumps(written, ensure_ascii=False) == json.dumps(expected, ensure_ascii=False)


@pytest.mark.parametrize("message_type", list(READERS), ids=lambda t: t.__name__)
def test_every_field_set(message_type: type[Message]) -> None:
    for seed in (1, 500):
        message = filled(message_type, seed)
        _same(READERS[message_type](message), message)


@pytest.mark.parametrize("message_type", list(READERS), ids=lambda t: t.__name__)
def test_only_what_the_value_requires(message_type: type[Message]) -> None:
    """Unset optional instants and messages, empty lists, zeros and empty strings: absent
    from the short form, at their defaults in the long one."""
    typed = type(READERS[message_type](filled(message_type)))
    message = sparse(message_type, typed)
    _same(READERS[message_type](message), message)


def test_each_source_of_a_material() -> None:
    item = items_pb2.ServiceItem(
        spec=items_pb2.ItemSpec(
            code="food-business-permit",
            materials=[
                items_pb2.Material(
                    code="a",
                    required=True,
                    licence=items_pb2.LicenceSource(licence_type="business-licence"),
                ),
                items_pb2.Material(
                    code="b",
                    dataset=items_pb2.DatasetSource(
                        dataset="samr.enterprise",
                        key_from=items_pb2.KeyFrom(material="a", field="holder_id"),
                    ),
                ),
                items_pb2.Material(code="c", dataset=items_pb2.DatasetSource()),
                items_pb2.Material(code="d", submitted=items_pb2.SubmittedSource(), defer_days=2),
                items_pb2.Material(code="e"),
            ],
        )
    )
    item.created_at.FromDatetime(datetime(2026, 3, 2, tzinfo=UTC))
    item.version_created_at.FromDatetime(datetime(2026, 3, 2, tzinfo=UTC))
    _same(_replies.service_item(item), item)


@pytest.mark.parametrize(
    "at",
    [
        datetime(2026, 3, 2, 8, 0, tzinfo=timezone(timedelta(hours=8))),
        datetime(2026, 3, 2, 0, 0, 0, 120_000, tzinfo=UTC),
        datetime(2026, 3, 2, 0, 0, 0, 123_456, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    ],
)
def test_an_instant_is_written_as_its_timestamp(at: datetime) -> None:
    stamp = Timestamp()
    stamp.FromDatetime(at)
    assert instant_json(at) == stamp.ToJsonString()


def test_message_dict_takes_a_message_or_a_typed_value_and_its_message() -> None:
    message = filled(cases_pb2.Case)
    expected = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    assert message_dict(message) == expected
    assert message_dict(_replies.case(message), cases_pb2.Case) == expected
    with pytest.raises(TypeError):
        message_dict(_replies.case(message))  # type: ignore[call-overload]
