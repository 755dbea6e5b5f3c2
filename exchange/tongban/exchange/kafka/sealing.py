"""Personal data on event topics is sealed with a key only the nodes hold (AES-256-GCM).

A message keeps in clear what the exchange may show anyone who can read a topic — the
event's id, dataset, position, version, operation, time and the non-personal fields — so
that tools we did not write can still follow a topic. The fields any version of the
dataset marks ``personal``, fields the catalogue does not know, and the subject key when
the key field is personal go into **one sealed blob per message**:

- one blob rather than one ciphertext per field: a reader outside the nodes learns
  neither which personal fields a record has nor the length of each, only the total;
  and it is one nonce, one tag and one authentication per message;
- the blob's associated data is the whole clear part of the message (dataset, position,
  event id, subject key or its pseudonym, version, operation, time, clear fields) and
  the key id, so a blob moved to another message, a clear field changed, or a key id
  header swapped fails authentication. Every message is sealed, even one without
  personal fields, so every message the feed delivers was written by a node.

A personal subject key (a citizen id) is replaced in clear by a keyed pseudonym
(HMAC-SHA256 under the keyring's pseudonym key, bound to the dataset), which is also the
Kafka message key: one subject's events still go to one partition.

Nonces are random (96 bits): a re-published event therefore has a different blob, but the
same id, position and content. Deterministic nonces would repeat under the same key with
other content after a database is restored or reset, which breaks GCM completely; random
ones are safe for 2**32 messages per key, so the current key is rotated well before
(docs/events.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, ConfigDict, ValidationError

from tongban.errors import TongbanError
from tongban.exchange.catalogue.schema import DatasetSchema
from tongban.exchange.sharing.events import EventRow

__all__ = [
    "KEYS_FORMAT",
    "KEY_ID_HEADER",
    "MessageRejected",
    "PayloadKeys",
    "SealedMessage",
    "TopicFields",
    "open_event",
    "seal_event",
    "seal_events",
    "topic_fields",
]

KEYS_FORMAT = "tongban-kafka-payload-keys/1"
KEY_ID_HEADER = "payload_key_id"
"""The Kafka header naming the key a message's blob is sealed with."""

_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_KEY_BYTES = 32
_NONCE_BYTES = 12
_AAD_PREFIX = b"tongban-kafka-event/1\x00"
_PSEUDONYM_PREFIX = "pseudonym:"
_SEALED_MEMBER = b',"sealed":"'
_SEALED_TAIL = re.compile(rb'[A-Za-z0-9+/]*={0,2}"}')

Rejection = Literal["unknown_key", "not_authentic", "malformed"]


class MessageRejected(TongbanError):
    """A message on an event topic that the node will not deliver: its key id is not in
    the keyring (``unknown_key``), it fails authentication (``not_authentic``), or it is
    not a sealed Tongban event (``malformed``). ``kind`` says which."""

    reason = "KAFKA_MESSAGE_REJECTED"
    status = "DATA_LOSS"

    def __init__(self, kind: Rejection, message: str) -> None:
        super().__init__(message, metadata={"kind": kind})
        self.kind: Rejection = kind


# --- the keyring ---------------------------------------------------------------------


class _KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    format: Literal["tongban-kafka-payload-keys/1"]
    current: str
    keys: dict[str, str]
    pseudonym_key: str


@dataclass(frozen=True)
class PayloadKeys:
    """The nodes' payload keys: every key by id (old ones decrypt retained messages),
    the id of the one that seals new messages, and the subject-key pseudonym key."""

    current: str
    keys: Mapping[str, bytes] = field(repr=False)
    pseudonym_key: bytes = field(repr=False)
    _ciphers: Mapping[str, AESGCM] = field(init=False, repr=False, compare=False)
    """An AES-GCM object per key id, made once (each message used to make its own)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))
        for key_id, key in self.keys.items():
            if not _KEY_ID.fullmatch(key_id):
                raise ValueError(f"key id {key_id[:70]!r} is not 1-64 of A-Z a-z 0-9 . _ -")
            if len(key) != _KEY_BYTES:
                raise ValueError(f"key {key_id} is not {_KEY_BYTES} bytes")
        if self.current not in self.keys:
            raise ValueError(f"the current key {self.current[:70]!r} is not among the keys")
        if len(self.pseudonym_key) != _KEY_BYTES:
            raise ValueError(f"the pseudonym key is not {_KEY_BYTES} bytes")
        ciphers = {key_id: AESGCM(key) for key_id, key in self.keys.items()}
        object.__setattr__(self, "_ciphers", MappingProxyType(ciphers))

    @classmethod
    def generate(
        cls, key_id: str = "k1", *, random: Callable[[int], bytes] = secrets.token_bytes
    ) -> PayloadKeys:
        """A new keyring with one key, current."""
        return cls(key_id, {key_id: random(_KEY_BYTES)}, random(_KEY_BYTES))

    def rotated(
        self, key_id: str, *, random: Callable[[int], bytes] = secrets.token_bytes
    ) -> PayloadKeys:
        """This keyring with a new key ``key_id`` made current; the others stay, to open
        messages sealed before. Raises ValueError if ``key_id`` is taken."""
        if key_id in self.keys:
            raise ValueError(f"key id {key_id!r} is taken; choose a new one")
        return PayloadKeys(key_id, {**self.keys, key_id: random(_KEY_BYTES)}, self.pseudonym_key)

    def to_json(self) -> bytes:
        """The file form (``secrets/kafka-payload.keys``)."""
        doc = {
            "format": KEYS_FORMAT,
            "current": self.current,
            "keys": {k: base64.b64encode(v).decode() for k, v in self.keys.items()},
            "pseudonym_key": base64.b64encode(self.pseudonym_key).decode(),
        }
        return (json.dumps(doc, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> PayloadKeys:
        """Parse the file form; raise ValueError saying what is wrong (never a key)."""
        try:
            doc = _KeysFile.model_validate_json(data)
        except ValidationError as e:
            first = e.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(part) for part in first["loc"]) or "the file"
            raise ValueError(f"{where}: {first['msg']}") from None
        return cls(
            doc.current,
            {key_id: _b64(value, f"key {key_id}") for key_id, value in doc.keys.items()},
            _b64(doc.pseudonym_key, "the pseudonym key"),
        )


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError(f"{what} is not base64") from None


# --- which fields travel in clear ---------------------------------------------------


@dataclass(frozen=True)
class TopicFields:
    """What of a dataset's records may travel in clear on its topic."""

    clear: frozenset[str]
    """Fields sent in clear; every other field of a record is sealed."""
    key_in_clear: bool
    """Whether the subject key is sent in clear (else a pseudonym is, and it is sealed)."""


def topic_fields(versions: Iterable[DatasetSchema]) -> TopicFields:
    """The clear fields of a dataset given every version of its schema: a field is clear
    only if some version has it and none marks it personal (a field once personal stays
    sealed, and one no version knows is sealed); likewise the key field."""
    seen: set[str] = set()
    personal: set[str] = set()
    key_fields: set[str] = set()
    for schema in versions:
        key_fields.add(schema.key_field)
        for spec in schema.fields:
            seen.add(spec.name)
            if spec.personal:
                personal.add(spec.name)
    clear = frozenset(seen - personal)
    return TopicFields(clear, bool(key_fields) and key_fields <= clear)


# --- sealing and opening ------------------------------------------------------------


@dataclass(frozen=True)
class SealedMessage:
    """A Kafka message: key, value and headers."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def seal_event(
    keys: PayloadKeys,
    dataset: str,
    row: EventRow,
    fields: TopicFields,
    *,
    nonce: bytes | None = None,
) -> SealedMessage:
    """The message of an outbox event (``row.data`` the record as stored), sealed with
    the current key. ``nonce`` (12 bytes) is for tests; by default a random one."""
    nonce = secrets.token_bytes(_NONCE_BYTES) if nonce is None else nonce
    if len(nonce) != _NONCE_BYTES:
        raise ValueError(f"a nonce is {_NONCE_BYTES} bytes")
    return _seal(keys, dataset, row, fields, nonce)


def seal_events(
    keys: PayloadKeys, dataset: str, rows: Sequence[EventRow], fields: TopicFields
) -> list[SealedMessage]:
    """The messages of ``rows``, events of ``dataset``, as ``seal_event`` makes them:
    each with a random nonce of its own (drawn for the whole batch in one read of the
    system's random source)."""
    randomness = secrets.token_bytes(_NONCE_BYTES * len(rows))
    return [
        _seal(keys, dataset, row, fields, randomness[i : i + _NONCE_BYTES])
        for i, row in zip(range(0, len(randomness), _NONCE_BYTES), rows, strict=True)
    ]


def _seal(
    keys: PayloadKeys, dataset: str, row: EventRow, fields: TopicFields, nonce: bytes
) -> SealedMessage:
    clear_data: dict[str, Any] | None = None
    sealed_data: dict[str, Any] | None = None
    if row.data is not None:
        clear_data = {k: v for k, v in row.data.items() if k in fields.clear}
        sealed_data = {k: v for k, v in row.data.items() if k not in fields.clear}
    shown_key = row.key if fields.key_in_clear else _pseudonym(keys, dataset, row.key)
    event_id = str(row.event_id)
    clear = {
        "event_id": event_id,
        "dataset": dataset,
        "position": row.position,
        "key": shown_key,
        "version": row.version,
        "op": row.op,
        "at": row.at.isoformat(),
        "data": clear_data,
    }
    # The value is the clear part in its canonical form (the associated data) with the
    # blob as a last member, so the clear part is serialised once and the feed can
    # authenticate the value's own bytes (``open_event``).
    canonical = _canonical(clear)
    blob = keys._ciphers[keys.current].encrypt(
        nonce,
        _canonical({"key": row.key, "data": sealed_data}),
        _AAD_PREFIX + keys.current.encode() + b"\x00" + canonical,
    )
    sealed = base64.b64encode(nonce + blob)
    return SealedMessage(
        key=shown_key.encode(),
        value=canonical[:-1] + _SEALED_MEMBER + sealed + b'"}',
        headers=[
            ("event_id", event_id.encode()),
            (KEY_ID_HEADER, keys.current.encode()),
        ],
    )


def open_event(
    keys: PayloadKeys, value: bytes, headers: Sequence[tuple[str, bytes]], *, dataset: str
) -> EventRow:
    """Return the event of a sealed message from the topic of ``dataset``, its sealed
    fields and key restored. Raises MessageRejected."""
    key_id = _header(headers, KEY_ID_HEADER)
    cipher = keys._ciphers.get(key_id) if key_id is not None else None
    opened = _open_as_written(cipher, key_id, value) if cipher and key_id else None
    if opened is not None:
        doc, plain = opened
    else:
        try:
            doc = json.loads(value)
            sealed = base64.b64decode(doc.pop("sealed"), validate=True)
        except (ValueError, TypeError, KeyError, AttributeError, binascii.Error) as e:
            raise MessageRejected("malformed", f"not a sealed Tongban event ({_what(e)})") from None
        if key_id is None:
            raise MessageRejected("malformed", f"no {KEY_ID_HEADER} header")
        if cipher is None:
            raise MessageRejected(
                "unknown_key", f"sealed with key {key_id[:70]!r}, which this node does not hold"
            )
        try:
            plain = cipher.decrypt(
                sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], _associated(key_id, doc)
            )
        except (InvalidTag, ValueError):
            raise MessageRejected(
                "not_authentic", f"fails authentication under key {key_id!r}"
            ) from None
    if doc.get("dataset") != dataset:  # authentic, but moved from another dataset's topic
        raise MessageRejected("not_authentic", f"an event of another dataset on {dataset}'s topic")
    try:
        inner = _json_decode(plain.decode())
        data: dict[str, Any] | None = None
        if doc["data"] is not None or inner["data"] is not None:
            data = {**(doc["data"] or {}), **(inner["data"] or {})}
        return EventRow(
            position=int(doc["position"]),
            event_id=uuid.UUID(doc["event_id"]),
            key=str(inner["key"]),
            version=int(doc["version"]),
            op=str(doc["op"]),
            data=data,
            at=datetime.fromisoformat(doc["at"]),
        )
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        # Authentic but not understood: written by a node of another version.
        raise MessageRejected("malformed", f"not a Tongban event ({_what(e)})") from None


def _open_as_written(cipher: AESGCM, key_id: str, value: bytes) -> tuple[Any, bytes] | None:
    """The clear part and the opened blob of a message laid out as ``seal_event`` writes
    it — the canonical clear part, then the blob as the last member — or None if it is
    not laid out so or does not authenticate (the caller then parses it in general).

    Such a value's clear bytes are the associated data as they stand, so they need not
    be parsed and serialised again to be checked; they are parsed only once they
    authenticate, and what is parsed is exactly what was authenticated.
    """
    head, member, tail = value.rpartition(_SEALED_MEMBER)
    if not member or _SEALED_TAIL.fullmatch(tail) is None:
        return None
    clear = head + b"}"
    try:
        sealed = base64.b64decode(tail[:-2], validate=True)
        plain = cipher.decrypt(
            sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], _associated_bytes(key_id, clear)
        )
        doc = _json_decode(clear.decode())
    except (InvalidTag, ValueError, binascii.Error):
        return None
    return (doc, plain) if isinstance(doc, dict) else None


def _pseudonym(keys: PayloadKeys, dataset: str, key: str) -> str:
    mac = hmac.new(keys.pseudonym_key, f"{dataset}\x00{key}".encode(), hashlib.sha256).hexdigest()
    return _PSEUDONYM_PREFIX + mac[:32]


def _associated(key_id: str, clear: Mapping[str, Any]) -> bytes:
    return _associated_bytes(key_id, _canonical(clear))


def _associated_bytes(key_id: str, canonical: bytes) -> bytes:
    return _AAD_PREFIX + key_id.encode() + b"\x00" + canonical


# Made once: json.dumps and json.loads with arguments build an encoder, and json.loads
# of bytes first guesses their encoding, on every call (a node writes UTF-8).
_canonical_json = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode
_json_decode = json.JSONDecoder().decode


def _canonical(doc: Mapping[str, Any]) -> bytes:
    return _canonical_json(doc).encode()


def _header(headers: Sequence[tuple[str, bytes]], name: str) -> str | None:
    for header, value in headers:
        if header == name:
            try:
                return value.decode()
            except UnicodeDecodeError:
                return None
    return None


def _what(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error)[:80]}"
