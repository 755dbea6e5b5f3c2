"""The leaf encoding: exactly RFC 8785, and decoded back to the same entry."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tongban.exchange.audit.leaf import (
    AccessEntry,
    LeafInvalid,
    decode_leaf,
    encode_leaf,
    sequenced_row,
)
from tongban.exchange.catalogue.canonical import canonical_json

# The leaf encoder's fast path must give exactly the RFC 8785 bytes.


_texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)


@settings(max_examples=300, deadline=None)
@given(
    micros=st.integers(min_value=0, max_value=10**15),
    texts=st.lists(_texts, min_size=6, max_size=6),
    optional=st.lists(st.none() | _texts, min_size=3, max_size=3),
    fields=st.lists(_texts, max_size=5),
    subject=st.none() | st.binary(min_size=32, max_size=32),
    decision=st.sampled_from(["allowed", "denied"]),
)
def test_leaf_encoding_is_rfc_8785(
    micros: int,
    texts: list[str],
    optional: list[str | None],
    fields: list[str],
    subject: bytes | None,
    decision: str,
) -> None:
    at = datetime(1990, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
    entry = AccessEntry(
        at=at,
        node=texts[0],
        caller=texts[1],
        officer=optional[0],
        action=texts[2],
        dataset=optional[1],
        fields=tuple(fields),
        purpose=texts[3],
        case_id=texts[4],
        subject_hmac=subject,
        decision=decision,  # type: ignore[arg-type]
        reason=optional[2],
    )
    expected = canonical_json(
        {
            "v": 1,
            "at": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "node": texts[0],
            "caller": texts[1],
            "officer": optional[0],
            "action": texts[2],
            "dataset": optional[1],
            "fields": fields,
            "purpose": texts[3],
            "case_id": texts[4],
            "subject": base64.b64encode(subject).decode() if subject else None,
            "decision": decision,
            "reason": optional[2],
        }
    )
    assert encode_leaf(entry) == expected
    assert decode_leaf(expected) == entry


@pytest.mark.parametrize(
    "leaf",
    [
        b"not json",
        b"[]",
        b'{"v":2}',
        b'{"action":"query","at":"2026-11-23T09:00:00Z","caller":"c","case_id":null,"dataset":null,'
        b'"decision":"allowed","fields":[],"node":"n","officer":null,"purpose":null,"reason":null,'
        b'"subject":null,"v":1}',  # timestamp without microseconds: not canonical
        b'{"v":1, "action":"query"}',
    ],
)
def test_malformed_leaves_are_refused(leaf: bytes) -> None:
    with pytest.raises(LeafInvalid):
        decode_leaf(leaf)


def test_the_sequenced_row_is_the_bounded_entry_its_leaf_and_columns() -> None:
    entry = AccessEntry(
        at=datetime(2026, 11, 23, 17, 0, tzinfo=timezone(timedelta(hours=8))),
        node="node-1",
        caller="tax",
        officer="SW-0042",
        action="query",
        dataset="police.person",
        fields=("name", "x" * 300),
        purpose="税" * 300,
        case_id="SW-2026-77",
        subject_hmac=bytes(32),
        decision="denied",
        reason="GRANT_REQUIRED",
    )
    bounded = entry.bounded()
    assert sequenced_row(entry) == (0, encode_leaf(bounded), *bounded.columns())
