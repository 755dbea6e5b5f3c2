"""Personal fields on Kafka topics are sealed with the nodes' payload keys (pure part:
the message format, tampering, key rotation, the keys file in the data dir).

The same properties against a real broker, read by an outside client, are in
``test_kafka_payload.py``."""

from __future__ import annotations

import base64
import json
import stat
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tongban.exchange.catalogue.schema import FieldSpec, FieldType, build_schema
from tongban.exchange.datadir import ensure_node_keys, load_kafka_payload_keys
from tongban.exchange.errors import DataDirUnusable
from tongban.exchange.kafka.sealing import (
    KEY_ID_HEADER,
    MessageRejected,
    PayloadKeys,
    SealedMessage,
    TopicFields,
    open_event,
    seal_event,
    seal_events,
    topic_fields,
)
from tongban.exchange.settings import Settings
from tongban.exchange.sharing.events import EventRow
from tongban.signing.clock import SystemClock

DATASET = "samr.enterprise"
USCC = "91330102MA2K8Q7R1N"
CITIZEN_ID = "330106198503120014"
REPRESENTATIVE = "王晓明"
RECORD = {
    "uscc": USCC,
    "name": "杭州味道餐饮管理有限公司",
    "legal_representative": REPRESENTATIVE,
    "legal_representative_id": CITIZEN_ID,
    "address": "浙江省杭州市上城区解放路88号",
}
ENTERPRISE_FIELDS = TopicFields(frozenset({"uscc", "name", "address"}), key_in_clear=True)
PERSON_FIELDS = TopicFields(frozenset(), key_in_clear=False)


def _keys(seed: int = 1, key_id: str = "k1") -> PayloadKeys:
    return PayloadKeys.generate(key_id, random=lambda n: bytes([seed]) * n)


def _row(position: int = 0, data: dict[str, Any] | None = None, key: str = USCC) -> EventRow:
    return EventRow(
        position=position,
        event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"{key}/{position}"),
        key=key,
        version=position + 1,
        op="upsert" if data is not None else "delete",
        data=data,
        at=datetime(2026, 11, 23, 10, 0, position, tzinfo=UTC),
    )


def _everything(message: SealedMessage) -> bytes:
    """Every byte an outside reader sees: key, value, header names and values."""
    headers = b"".join(name.encode() + value for name, value in message.headers)
    return message.key + message.value + headers


def _forms(text: str) -> list[bytes]:
    """``text`` as it could appear in a message: UTF-8, JSON-escaped, base64 of UTF-8."""
    return [
        text.encode(),
        json.dumps(text).encode()[1:-1],
        base64.b64encode(text.encode()),
    ]


def test_personal_fields_are_sealed_and_the_rest_is_in_clear() -> None:
    keys = _keys()
    message = seal_event(keys, DATASET, _row(data=RECORD), ENTERPRISE_FIELDS)
    seen = _everything(message)
    for secret in (REPRESENTATIVE, CITIZEN_ID):
        for form in _forms(secret):
            assert form not in seen
    doc = json.loads(message.value)
    assert doc["data"] == {"uscc": USCC, "name": RECORD["name"], "address": RECORD["address"]}
    assert doc["key"] == USCC
    assert message.key == USCC.encode()
    assert dict(message.headers)[KEY_ID_HEADER] == b"k1"
    assert open_event(keys, message.value, message.headers, dataset=DATASET) == _row(data=RECORD)


def test_a_personal_subject_key_travels_as_a_pseudonym() -> None:
    keys = _keys()
    person = {"citizen_id": CITIZEN_ID, "name": REPRESENTATIVE}
    message = seal_event(keys, "police.person", _row(data=person, key=CITIZEN_ID), PERSON_FIELDS)
    for secret in (CITIZEN_ID, REPRESENTATIVE):
        for form in _forms(secret):
            assert form not in _everything(message)
    doc = json.loads(message.value)
    assert doc["key"].startswith("pseudonym:")
    assert message.key == doc["key"].encode()
    # Same subject, same pseudonym (so the same partition); another dataset, another one.
    again = seal_event(keys, "police.person", _row(1, person, CITIZEN_ID), PERSON_FIELDS)
    elsewhere = seal_event(keys, "hrss.person", _row(data=person, key=CITIZEN_ID), PERSON_FIELDS)
    assert again.key == message.key != elsewhere.key
    opened = open_event(keys, message.value, message.headers, dataset="police.person")
    assert (opened.key, opened.data) == (CITIZEN_ID, person)


def test_a_delete_is_sealed_too() -> None:
    keys = _keys()
    message = seal_event(keys, DATASET, _row(3, None), ENTERPRISE_FIELDS)
    assert json.loads(message.value)["data"] is None
    assert open_event(keys, message.value, message.headers, dataset=DATASET) == _row(3, None)


def test_swapped_blobs_fail_authentication() -> None:
    keys = _keys()
    first = seal_event(keys, DATASET, _row(0, RECORD), ENTERPRISE_FIELDS)
    other = dict(RECORD, legal_representative="李四", legal_representative_id="110101199003070011")
    second = seal_event(keys, DATASET, _row(1, other), ENTERPRISE_FIELDS)
    doc = json.loads(first.value)
    doc["sealed"] = json.loads(second.value)["sealed"]
    swapped = json.dumps(doc, ensure_ascii=False).encode()
    with pytest.raises(MessageRejected) as refused:
        open_event(keys, swapped, first.headers, dataset=DATASET)
    assert refused.value.kind == "not_authentic"


@pytest.mark.parametrize(
    ("field", "value"),
    [("position", 7), ("key", "91110000100000000R"), ("name", "另一家公司"), ("op", "delete")],
)
def test_a_changed_clear_field_fails_authentication(field: str, value: object) -> None:
    keys = _keys()
    message = seal_event(keys, DATASET, _row(0, RECORD), ENTERPRISE_FIELDS)
    doc = json.loads(message.value)
    if field == "name":
        doc["data"][field] = value
    else:
        doc[field] = value
    with pytest.raises(MessageRejected) as refused:
        open_event(keys, json.dumps(doc).encode(), message.headers, dataset=DATASET)
    assert refused.value.kind == "not_authentic"


def test_an_authentic_message_on_another_datasets_topic_is_refused() -> None:
    keys = _keys()
    message = seal_event(keys, DATASET, _row(0, RECORD), ENTERPRISE_FIELDS)
    with pytest.raises(MessageRejected) as refused:
        open_event(keys, message.value, message.headers, dataset="tax.taxpayer")
    assert refused.value.kind == "not_authentic"


def test_unknown_key_ids_and_unsealed_messages_are_refused() -> None:
    message = seal_event(_keys(1), DATASET, _row(0, RECORD), ENTERPRISE_FIELDS)
    with pytest.raises(MessageRejected) as refused:
        open_event(_keys(2, "k9"), message.value, message.headers, dataset=DATASET)
    assert refused.value.kind == "unknown_key"
    # Same id, other key material (a node with another exchange's keys file).
    with pytest.raises(MessageRejected) as refused:
        open_event(_keys(2), message.value, message.headers, dataset=DATASET)
    assert refused.value.kind == "not_authentic"
    swapped_header = [(n, b"k2" if n == KEY_ID_HEADER else v) for n, v in message.headers]
    with pytest.raises(MessageRejected) as refused:
        open_event(_keys(1).rotated("k2"), message.value, swapped_header, dataset=DATASET)
    assert refused.value.kind == "not_authentic"
    plain = {k: v for k, v in json.loads(message.value).items() if k != "sealed"}
    for value, headers in [
        (json.dumps(plain).encode(), message.headers),  # the format before sealing
        (message.value, [("event_id", b"x")]),  # no key id
        (b"not json", message.headers),
        (b"[1, 2]", message.headers),
    ]:
        with pytest.raises(MessageRejected) as refused:
            open_event(_keys(1), value, headers, dataset=DATASET)
        assert refused.value.kind == "malformed"


def test_a_message_laid_out_otherwise_opens_and_one_with_members_after_the_blob_does_not() -> None:
    keys = _keys()
    message = seal_event(keys, DATASET, _row(0, RECORD), ENTERPRISE_FIELDS)
    doc = json.loads(message.value)
    assert list(doc)[-1] == "sealed"  # the canonical clear part, then the blob
    # Re-encoded by a tool (spaces, another member order, ASCII escapes): the clear part
    # is serialised canonically for the check, as for messages written before.
    reordered = json.dumps(dict(reversed(list(doc.items())))).encode()
    assert open_event(keys, reordered, message.headers, dataset=DATASET) == _row(0, RECORD)
    # A member after the blob would override a clear one when parsed: never delivered.
    other = json.dumps({"name": "另一家公司"}, ensure_ascii=False).encode()
    for extra in [b',"data":' + other, b',"position":7', b',"sealed":"AAAA"']:
        value = message.value[:-1] + extra + b"}"
        with pytest.raises(MessageRejected) as refused:
            open_event(keys, value, message.headers, dataset=DATASET)
        assert refused.value.kind == "not_authentic"


def test_a_batch_is_sealed_with_a_nonce_per_message() -> None:
    keys = _keys()
    rows = [_row(i, RECORD) for i in range(3)]
    messages = seal_events(keys, DATASET, rows, ENTERPRISE_FIELDS)
    sealed = {base64.b64decode(json.loads(m.value)["sealed"])[:12] for m in messages}
    assert len(sealed) == 3
    opened = [open_event(keys, m.value, m.headers, dataset=DATASET) for m in messages]
    assert opened == rows


def test_rotation_keeps_old_messages_readable_and_seals_new_ones_with_the_new_key() -> None:
    old = _keys()
    before = seal_event(old, DATASET, _row(0, RECORD), ENTERPRISE_FIELDS)
    new = old.rotated("k2")
    assert (new.current, sorted(new.keys)) == ("k2", ["k1", "k2"])
    after = seal_event(new, DATASET, _row(1, RECORD), ENTERPRISE_FIELDS)
    assert dict(after.headers)[KEY_ID_HEADER] == b"k2"
    assert open_event(new, before.value, before.headers, dataset=DATASET) == _row(0, RECORD)
    assert open_event(new, after.value, after.headers, dataset=DATASET) == _row(1, RECORD)
    with pytest.raises(MessageRejected):  # a node not yet given the new key
        open_event(old, after.value, after.headers, dataset=DATASET)
    with pytest.raises(ValueError, match="taken"):
        new.rotated("k1")


def test_clear_fields_come_from_every_version_of_the_schema() -> None:
    def schema(*fields: FieldSpec) -> Any:
        return build_schema([FieldSpec("uscc", FieldType.STRING, required=True), *fields], "uscc")

    v1 = schema(
        FieldSpec("name", FieldType.STRING),
        FieldSpec("phone", FieldType.STRING, personal=True),
    )
    # v2 drops the personal flag of phone (by mistake or not): it stays sealed.
    v2 = schema(FieldSpec("name", FieldType.STRING), FieldSpec("phone", FieldType.STRING))
    fields = topic_fields([v1, v2])
    assert fields == TopicFields(frozenset({"uscc", "name"}), key_in_clear=True)
    # A field no version knows is sealed.
    message = seal_event(_keys(), DATASET, _row(0, {"uscc": USCC, "extra": "x"}), fields)
    assert json.loads(message.value)["data"] == {"uscc": USCC}
    personal_key = build_schema(
        [FieldSpec("id", FieldType.STRING, required=True, personal=True)], "id"
    )
    assert topic_fields([personal_key]) == TopicFields(frozenset(), key_in_clear=False)
    assert topic_fields([]) == TopicFields(frozenset(), key_in_clear=False)


def test_the_keys_file_round_trips_and_refuses_nonsense_without_showing_keys() -> None:
    keys = _keys(7).rotated("2027-01", random=lambda n: b"\x09" * n)
    assert PayloadKeys.from_json(keys.to_json()) == keys
    assert "\\x07" not in repr(keys)
    assert "BwcH" not in repr(keys)
    doc = json.loads(keys.to_json())
    for broken, expected in [
        (dict(doc, current="k3"), "current key"),
        (dict(doc, keys={"k1": "not base64!"}, current="k1"), "not base64"),
        (dict(doc, keys={"k1": base64.b64encode(b"short").decode()}, current="k1"), "32 bytes"),
        (dict(doc, format="other/1"), "format"),
        (dict(doc, extra=1), "extra"),
        ({k: v for k, v in doc.items() if k != "pseudonym_key"}, "pseudonym_key"),
    ]:
        with pytest.raises(ValueError, match=expected) as refused:
            PayloadKeys.from_json(json.dumps(broken).encode())
        assert doc["keys"]["k1"] not in str(refused.value)


def test_node_key_setup_makes_the_keys_file_once_mode_0600(settings: Settings) -> None:
    path = settings.data_dir / "secrets" / "kafka-payload.keys"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keys = load_kafka_payload_keys(settings)
    assert list(keys.keys) == [keys.current]
    ensure_node_keys(settings, SystemClock().now())
    assert load_kafka_payload_keys(settings) == keys  # never replaced
    assert not list(path.parent.glob(".kafka-payload.keys.*"))


def test_a_damaged_keys_file_is_reported_with_what_to_do(settings: Settings) -> None:
    path: Path = settings.data_dir / "secrets" / "kafka-payload.keys"
    path.write_text('{"format": "tongban-kafka-payload-keys/1"}')
    with pytest.raises(DataDirUnusable, match="restore it from another node"):
        load_kafka_payload_keys(settings)
    path.unlink()
    with pytest.raises(DataDirUnusable, match="every node needs the same one"):
        load_kafka_payload_keys(settings)
