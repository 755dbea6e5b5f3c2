"""Bulk publish of a dataset of only string fields: the quick paths (all fields checked at
once, a batch of new keys written from texts made before its transaction) store and
refuse exactly what the general code does, and events stay in order without gaps."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import client_for, uscc
from tongban.client import ExchangeClient, ExchangeError
from tongban.exchange.catalogue import schema
from tongban.exchange.catalogue.errors import RecordInvalid
from tongban.exchange.catalogue.schema import FieldSpec, FieldType, build_schema, validate_record
from tongban.exchange.identity import Caller
from tongban.exchange.node import Node
from tongban.exchange.sharing import records, service
from tongban.exchange.sharing.records import Change, event_id
from tongban.v1 import catalogue_pb2, values_pb2

_SCHEMA = build_schema(
    [
        FieldSpec("id", FieldType.STRING, required=True),
        FieldSpec("a", FieldType.STRING, max_length=4),
        FieldSpec("b", FieldType.STRING, required=True, max_length=6),
    ],
    "id",
)
# Values near every edge of the checks: combining marks (NFC), controls, a lone
# surrogate, line feeds, lengths around the limits, and values that are not strings.
_PIECES = st.sampled_from(
    ["a", "Z", "é", "e\u0301", "\u0301", "\n", "\t", "\x00", "\x1e", "\x7f", "\ud800", "咖",
     "𠮷", "\uac00", "\u1100\u1161", " "]
)  # fmt: skip
_TEXT = st.lists(_PIECES, max_size=8).map("".join)
_VALUE = st.one_of(_TEXT, _TEXT, _TEXT, st.none(), st.integers(), st.booleans())
_RECORD = st.dictionaries(st.sampled_from(["id", "a", "b", "c"]), _VALUE, max_size=4)


def _general(values: dict[str, object]) -> dict[str, object] | str:
    try:
        return validate_record(_SCHEMA, values)
    except RecordInvalid as e:
        return e.reason


@given(_RECORD)
def test_the_quick_check_answers_what_validate_record_does(values: dict[str, object]) -> None:
    strings = service._all_strings(_SCHEMA)
    assert strings is not None
    quick = service._checked_strings(values, strings)
    general = _general(values)
    if quick is not None:
        record, text = quick
        assert record == general
        assert list(record) == ["id", "a", "b"]  # the schema's order, as validate_record's
        assert text == "\x1f".join(record.values())  # type: ignore[arg-type]
    elif isinstance(general, dict):
        # Only a record with an optional field absent or null, a value that NFC changes,
        # or one over the least limit, is sent the long way.
        assert any(
            values.get(name) is None or value != values[name] or len(value) > 4  # type: ignore[arg-type]
            for name, value in general.items()
        )


def test_the_quick_check_takes_canonical_records() -> None:
    strings = service._all_strings(_SCHEMA)
    assert strings is not None
    values: dict[str, object] = {"b": "咖啡\n馆", "id": "x", "a": "Café"}
    assert service._checked_strings(values, strings) == (
        {"id": "x", "a": "Café", "b": "咖啡\n馆"},
        "x\x1fCafé\x1f咖啡\n馆",
    )
    mixed = [FieldSpec("k", FieldType.STRING, required=True), FieldSpec("n", FieldType.INTEGER)]
    assert service._all_strings(build_schema(mixed, "k")) is None


def test_the_quick_scan_refuses_what_validate_record_refuses_but_its_separator() -> None:
    quick = service._REFUSED_BUT_SEPARATOR
    for code in range(0x110000):
        char = chr(code)
        assert (schema._REFUSED.search(char) is not None) == (
            quick.search(char) is not None or char == records.VALUE_SEP
        ), hex(code)


# -- through the node -------------------------------------------------------------------


_FIELDS = ("uscc", "name", "address", "note")
_SPEC = catalogue_pb2.DatasetSpec(
    code="samr.strings",
    title="字符串字段",
    description="只有字符串字段的数据集",
    fields=[
        catalogue_pb2.FieldSpec(
            name=name,
            type=values_pb2.FIELD_TYPE_STRING,
            description=name,
            required=name in ("uscc", "name"),
        )
        for name in _FIELDS
    ],
    key_field="uscc",
    subject_kind=catalogue_pb2.SUBJECT_KIND_ENTERPRISE,
    update_frequency="实时",
    share_class=catalogue_pb2.SHARE_CLASS_UNCONDITIONAL,
)


@pytest.fixture
async def samr(node: Node) -> AsyncIterator[ExchangeClient]:
    async with client_for(node, "samr") as client:
        await client.register_dataset(_SPEC, publish=True)
        yield client


async def _reason(coro: object) -> ExchangeError:
    with pytest.raises(ExchangeError) as caught:
        await coro  # type: ignore[misc]
    return caught.value


async def test_batches_of_new_and_known_keys_store_and_order_their_events(
    node: Node, samr: ExchangeClient
) -> None:
    rng = random.Random(7)

    def record(i: int, round_: int) -> dict[str, object]:
        values = {
            "uscc": uscc(i),
            "name": f"公司{i}-{round_}",
            "address": rng.choice(["Cafe\u0301 路", "文三路\n2号", "x" * 300, None]),
            "note": rng.choice(["", "备注", '引号"和\\反斜杠', None]),
        }
        return {name: value for name, value in values.items() if value is not None}

    first = [(uscc(i), record(i, 0)) for i in range(600)]

    async def batches() -> AsyncIterator[list[tuple[str, dict[str, object]]]]:
        yield first[:300]  # all new
        yield first[300:]  # all new
        # Known keys (50 changed, 10 the same), and a new key given in lower case.
        changed = [(uscc(i), record(i, 1)) for i in range(50)]
        yield [*changed, *first[50:60], (uscc(600).lower(), record(600, 0))]

    counts = await samr.stream_records("samr.strings", batches())
    assert (counts.inserted, counts.updated, counts.unchanged) == (601, 50, 10)
    await samr.publish_records(
        "samr.strings", [(uscc(2), record(2, 2))], deletes=[uscc(1), uscc(9999)]
    )
    assert node.db is not None
    pool = node.db.pool
    events = await pool.fetch(
        "SELECT position, event_id, key, version, op FROM event_outbox"
        " WHERE dataset = 'samr.strings' ORDER BY position"
    )
    # 300 + 300 + 51, then a deletion and an update (the absent key's deletion is nothing).
    assert len(events) == 653
    start = events[0]["position"]
    assert [e["position"] for e in events] == list(range(start, start + 653))
    for e in events:
        assert e["event_id"].hex == event_id("samr.strings", e["key"], e["version"])
    assert [(e["key"], e["version"], e["op"]) for e in events[-2:]] == [
        (uscc(2), 3, "upsert"),
        (uscc(1), 3, "delete"),
    ]
    rows = await pool.fetch(
        "SELECT key, version, data FROM record WHERE dataset = 'samr.strings'"
        " AND valid_to IS NULL AND NOT deleted"
    )
    stored = {row["key"]: (row["version"], json.loads(row["data"])) for row in rows}
    assert len(stored) == 600  # 601 keys, one deleted
    assert stored[uscc(600)][1]["uscc"] == uscc(600)  # the key field normalised
    assert stored[uscc(3)][0] == 2
    addresses = {data["address"] for _, data in stored.values()}
    assert "Café 路" in addresses  # NFC, as validate_record makes it
    assert "Cafe\u0301 路" not in addresses
    assert None in addresses  # an optional field left out is stored as null
    for i, (_, values) in enumerate(first):
        if i >= 50:  # as sent, but for NFC and the nulls
            _, data = stored[uscc(i)]
            assert data == {
                name: None if values.get(name) is None else data[name] for name in _FIELDS
            }
            assert data["name"] == values["name"]
            assert data.get("note") == values.get("note")


async def test_the_joined_write_falls_back_to_arrays(node: Node, samr: ExchangeClient) -> None:
    # Keys holding the separator never come from a client (subject ids refuse control
    # characters), but other writers call publish_in with keys of their own making.
    assert node.db is not None
    assert node.sharing is not None
    store = node.sharing.records
    entry = await node.sharing.datasets.get("samr.strings")
    assert entry is not None
    now = datetime.now(UTC)
    odd = ["a\x1eb", "", "c"]
    changes = [Change(k, {"uscc": k, "name": "名\x1e", "address": None, "note": None}) for k in odd]
    counts = await store.publish(entry, changes, now)
    assert counts.inserted == 3
    again = await store.publish(entry, [*changes[:2], Change("c", None)], now)
    assert (again.unchanged, again.deleted) == (2, 1)
    rows = await node.db.pool.fetch(
        "SELECT key, version, deleted, data FROM record WHERE dataset = 'samr.strings'"
        " AND valid_to IS NULL ORDER BY key"
    )
    assert [(r["key"], r["version"], r["deleted"]) for r in rows] == [
        ("", 1, False),
        ("a\x1eb", 1, False),
        ("c", 2, True),
    ]
    assert json.loads(rows[1]["data"])["name"] == "名\x1e"


async def test_bad_records_in_a_stream_are_refused_with_their_reason(
    node: Node, samr: ExchangeClient
) -> None:
    good: tuple[str, dict[str, object]] = (uscc(1), {"name": "好"})
    cases: list[tuple[dict[str, object], str, str]] = [
        ({"name": 12}, "RECORD_INVALID", "name"),  # not a string
        ({"address": "无名"}, "RECORD_INVALID", "name"),  # a required field missing
        ({"name": "甲", "nope": "x"}, "RECORD_INVALID", "nope"),  # an unknown field
        ({"name": "甲" * 4001}, "RECORD_INVALID", "name"),  # over the default limit
        ({"name": "a\x07b"}, "RECORD_INVALID", "name"),  # a control character
        ({"name": "甲", "uscc": uscc(3)}, "RECORD_INVALID", "uscc"),  # not the record's key
    ]
    for values, reason, field in cases:

        async def batches(
            values: dict[str, object] = values,
        ) -> AsyncIterator[list[tuple[str, dict[str, object]]]]:
            yield [good]
            yield [(uscc(2), {"name": "乙"}), (uscc(4), values)]

        error = await _reason(samr.stream_records("samr.strings", batches()))
        assert error.reason == reason, (values, error.message)
        assert error.metadata["field"] == field, (values, error.metadata)
        assert error.metadata["index"] == "1"
    assert node.db is not None
    keys = await node.db.pool.fetch(
        "SELECT key FROM record WHERE dataset = 'samr.strings' ORDER BY key"
    )
    assert [r["key"] for r in keys] == [uscc(1)]  # the first batch only, once


async def test_publishers_racing_with_the_same_new_keys_write_each_once(
    node: Node, samr: ExchangeClient
) -> None:
    assert node.db is not None
    assert node.sharing is not None
    sharing = node.sharing
    # What prepare reads of the caller: its department's code.
    caller = cast(Caller, SimpleNamespace(department=SimpleNamespace(code="samr")))
    for round_ in range(5):
        raw = [
            service.RawChange(uscc(10_000 * (round_ + 1) + i), {"name": f"并发{i}"})
            for i in range(200)
        ]
        batches = [await sharing.prepare(caller, "samr.strings", raw) for _ in range(3)]
        assert all(batch.fresh is not None for batch in batches)
        results = await asyncio.gather(*(sharing.apply(batch) for batch in batches))
        assert sum(r.inserted for r in results) == 200
        assert sum(r.unchanged for r in results) == 400
    positions = [
        row["position"]
        for row in await node.db.pool.fetch(
            "SELECT position FROM event_outbox WHERE dataset = 'samr.strings' ORDER BY position"
        )
    ]
    assert positions == list(range(positions[0], positions[0] + 1000))
