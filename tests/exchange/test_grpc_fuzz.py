"""Garbage never escapes: every method the node lists through server reflection, fed random
and corrupt messages over real mutual TLS, answers with a deliberate status.

The methods and their request types come from reflection alone (a fresh descriptor pool
built from the files the server sends), so a method added later is fuzzed without editing
this file. For each method and each class of garbage (``KINDS``) Hypothesis draws a few
requests; each goes out as raw bytes on a generic channel call. The property: no call ends
UNKNOWN, INTERNAL or DEADLINE_EXCEEDED, and every error of a ``tongban.*`` method carries an
``ErrorInfo`` (domain ``tongban``, a reason), i.e. it was raised on purpose. At the end the
node still answers ``/healthz``.

Bounded and reproducible: a fixed number of examples per method and class, derandomized,
no example database and no shrinking (a failure prints the exact payload, and the same run
draws it again). The status codes seen per method are printed at the end (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import client_for, raw_channel
from tests.stories.restaurant import (
    BUSINESS_LICENCE_CLAIMS,
    CASE_ID,
    COMPANY,
    COMPANY_USCC,
    ENTERPRISE,
    FOOD_BUSINESS_PERMIT_ITEM,
    OWNER_ID,
    PERSON,
    PURPOSE,
    SERVICE_ITEM,
)
from tongban.exchange.node import Node

# The classes of garbage; docs/architecture.md ("Input checks") says what each gets.
KINDS = (
    "valid",  # well-formed messages, half plausible (names from the story), half random
    "random_bytes",  # not a message at all
    "truncated",  # a message cut short
    "bit_flipped",  # one bit of a message flipped
    "wrong_wire_type",  # a known field sent with another wire type (6 and 7: none exists)
    "unknown_field",  # a field number the message does not have
    "enum_out_of_range",  # an enum field holding a number its enum does not define
    "huge_integer",  # an integer field at an end of its range (2^64-1, -2^63, 2^31, ...)
    "nul_in_string",  # a string holding U+0000
    "long_string",  # a string or bytes field of 257 to 262,145 characters
    "invalid_utf8",  # a string field holding bytes that are not UTF-8
    "bad_officer",  # a well-formed message with a malformed x-tongban-officer header
)
EXAMPLES = {"valid": 24, "huge_integer": 8, "long_string": 6}  # per method and kind
DEFAULT_EXAMPLES = 4
STREAMING_EXAMPLES = 3  # a stream still open costs a read timeout
CALLERS = ("samr", "tax", "audit")  # owner, consumer and auditor of the demo
OFFICERS = (None, "SC-1")
BAD_OFFICERS = ("x" * 65, " ", "SC 1;--", "-")
CALL_TIMEOUT = 20.0
STREAM_READS = 3
STREAM_READ_WAIT = 0.2
NOW = int(datetime.now(UTC).timestamp())
TIMESTAMP = "google.protobuf.Timestamp"
FAR = (-62_135_596_800, 253_402_300_799, -1, 1)  # 0001-01-01, 9999-12-31T23:59:59, 1970
BAD_CODES = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
OPEN = "OPEN"  # a stream still open when we cancelled it

INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
# The ends of the integer types' ranges and of PostgreSQL's integer and bigint columns.
EDGES = (0, 1, -1, 2**31 - 1, 2**31, -(2**31) - 1, 2**32 - 1, 2**53 + 1, 2**63 - 1, 2**64 - 1)
FLOATS = (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE)
STRINGS = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES)
MAX_DEPTH = 4

# Wire types (https://protobuf.dev/programming-guides/encoding/).
VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5
_WIRE = {
    FieldDescriptor.TYPE_DOUBLE: I64,
    FieldDescriptor.TYPE_FIXED64: I64,
    FieldDescriptor.TYPE_SFIXED64: I64,
    FieldDescriptor.TYPE_FLOAT: I32,
    FieldDescriptor.TYPE_FIXED32: I32,
    FieldDescriptor.TYPE_SFIXED32: I32,
    FieldDescriptor.TYPE_STRING: LEN,
    FieldDescriptor.TYPE_BYTES: LEN,
    FieldDescriptor.TYPE_MESSAGE: LEN,
}


# -- the node's methods, from reflection -------------------------------------------------


@dataclass(frozen=True)
class Method:
    path: str  # /package.Service/Method
    request: Descriptor
    client_streaming: bool
    server_streaming: bool


async def _reflect(channel: grpc.aio.Channel, requests: list[Any]) -> list[Any]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(iter(requests))
    return [response async for response in call]


async def discover_methods(channel: grpc.aio.Channel) -> list[Method]:
    """Every method of every service the server lists, with its request descriptor."""
    (listing,) = await _reflect(channel, [reflection_pb2.ServerReflectionRequest(list_services="")])
    services = [s.name for s in listing.list_services_response.service]
    answers = await _reflect(
        channel,
        [reflection_pb2.ServerReflectionRequest(file_containing_symbol=s) for s in services],
    )
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for answer in answers:
        assert not answer.HasField("error_response"), answer.error_response
        for blob in answer.file_descriptor_response.file_descriptor_proto:
            proto = descriptor_pb2.FileDescriptorProto.FromString(blob)
            files[proto.name] = proto
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()
    while len(added) < len(files):  # dependencies first
        ready = [f for n, f in files.items() if n not in added and set(f.dependency) <= added]
        assert ready, f"reflection left dependencies out: {sorted(set(files) - added)}"
        for proto in ready:
            pool.AddSerializedFile(proto.SerializeToString())
            added.add(proto.name)
    methods = []
    for name in services:
        service = pool.FindServiceByName(name)
        for m in service.methods:
            methods.append(_method(service.full_name, m))
    return methods


def _method(service: str, m: MethodDescriptor) -> Method:
    return Method(f"/{service}/{m.name}", m.input_type, m.client_streaming, m.server_streaming)


# -- plausible values, so that random requests also get past the first checks -----------


@dataclass(frozen=True)
class Story:
    """What the node holds when the fuzzing starts (see ``_prepare``)."""

    licence_number: str
    licence_texts: tuple[str, ...]


def _plausible(story: Story) -> dict[str, tuple[str, ...]]:
    fields = tuple(f.name for f in ENTERPRISE.fields)
    claims = json.dumps(BUSINESS_LICENCE_CLAIMS, ensure_ascii=False, default=str)
    return {
        "dataset": ("samr.enterprise", "samr.nothing", "tax.x"),
        "code": ("samr.enterprise", "samr.fuzz", "business-licence", SERVICE_ITEM),
        "keys": (COMPANY_USCC, OWNER_ID),
        "key": (COMPANY_USCC,),
        "fields": fields,
        "key_field": ("uscc",),
        "name": fields,
        "disclose": ("name", "address"),
        "purpose": (PURPOSE,),
        "case_id": (CASE_ID,),
        "holder_id": (COMPANY_USCC, OWNER_ID),
        "applicant": (COMPANY_USCC,),
        "subject_id": (COMPANY_USCC, OWNER_ID),
        "licence_type": ("business-licence", "food-business-permit"),
        "claims_json": (claims, "{}", "[]"),
        "service_item": (SERVICE_ITEM,),
        "number": (story.licence_number,),
        "text": story.licence_texts,
        "id": (str(uuid.UUID(int=1)), "not-a-uuid"),
        "subscription_id": (str(uuid.UUID(int=1)), "not-a-uuid"),
        "caller": CALLERS,
        "owner": ("samr", "tax"),
        "decision": ("allowed", "denied"),
        # Listings by department (items, covert cases, the overdue report): the callers'
        # own and each other's (only the auditor reads another's), and the items' handler.
        "department": (*CALLERS, "approval"),
        # The first page, and forged tokens: plain base64 positions, as tokens once were.
        "page_token": ("", "c2Ftci5h", "MA", "LTE", "!!!"),
    }


# -- requests, drawn from descriptors ----------------------------------------------------

Path = tuple[FieldDescriptor, ...]  # fields from the request down to a leaf


@dataclass(frozen=True)
class Mode:
    """How a well-formed message is drawn."""

    plausible: dict[str, tuple[str, ...]]
    dense: bool  # set every field that has plausible values, from them (to get past checks)


def _text(mode: Mode, field: FieldDescriptor) -> st.SearchStrategy[str]:
    normal = st.text(
        st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=24
    )
    choices = mode.plausible.get(field.name)
    if not choices:
        return normal
    if mode.dense:
        return st.sampled_from(choices)
    return st.one_of(st.sampled_from(choices), normal)


def _scalar(mode: Mode, field: FieldDescriptor) -> st.SearchStrategy[Any]:
    """A value of ``field``'s type (an enum: one of its values; a string: no NUL)."""
    if field.type == FieldDescriptor.TYPE_STRING:
        return _text(mode, field)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=32), st.just(b"%PDF-1.7\n%%EOF\n"))
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from(_enum_numbers(field))
    if field.type in FLOATS:
        return st.floats(width=32 if field.type == FieldDescriptor.TYPE_FLOAT else 64)
    low, high = INT_RANGES[field.type]
    if mode.dense:
        return st.integers(0, 5)
    return st.one_of(st.integers(0, 5), st.integers(low, high))


def _sub(field: FieldDescriptor) -> Descriptor:
    """The message type of a message field."""
    assert field.message_type is not None
    return field.message_type


def _enum_numbers(field: FieldDescriptor) -> list[int]:
    assert field.enum_type is not None
    return sorted(v.number for v in field.enum_type.values)


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and _sub(field).GetOptions().map_entry


@st.composite
def messages(draw: st.DrawFn, descriptor: Descriptor, mode: Mode, depth: int = 0) -> Message:
    """A well-formed message of ``descriptor`` with some (dense: most) fields set."""
    message = message_factory.GetMessageClass(descriptor)()
    if descriptor.full_name == TIMESTAMP and (mode.dense or draw(st.booleans())):
        # Instants near now, or the first and last a Timestamp may hold (the generic
        # fields below mostly give seconds out of its range).
        near = st.integers(-400, 400).map(lambda days: NOW + 86_400 * days)
        message.seconds = draw(st.one_of(near, st.sampled_from(FAR)))  # type: ignore[attr-defined]
        return message
    for field in descriptor.fields:
        wanted = mode.dense and field.name in mode.plausible
        if not (wanted or draw(st.booleans())):
            continue
        target = getattr(message, field.name)
        if _is_map(field):
            if depth >= MAX_DEPTH:
                continue
            key_field, value_field = _sub(field).fields
            for _ in range(draw(st.integers(0, 3))):
                key = draw(_scalar(mode, key_field))
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    target[key].CopyFrom(draw(messages(_sub(value_field), mode, depth + 2)))
                else:
                    target[key] = draw(_scalar(mode, value_field))
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= MAX_DEPTH:
                continue
            sub = messages(_sub(field), mode, depth + 1)
            if field.is_repeated:
                for _ in range(draw(st.integers(0, 3))):
                    target.add().CopyFrom(draw(sub))
            else:
                target.CopyFrom(draw(sub))
        elif field.is_repeated:
            target.extend(draw(st.lists(_scalar(mode, field), min_size=int(wanted), max_size=3)))
        else:
            setattr(message, field.name, draw(_scalar(mode, field)))
    return message


def well_formed(
    descriptor: Descriptor, plausible: dict[str, tuple[str, ...]]
) -> st.SearchStrategy[Message]:
    """Half plausible requests (that get past the first checks), half random ones."""
    return st.one_of(
        messages(descriptor, Mode(plausible, dense=True)),
        messages(descriptor, Mode(plausible, dense=False)),
    )


def _paths(
    descriptor: Descriptor, want: Callable[[FieldDescriptor], bool], depth: int = 0
) -> list[Path]:
    """Paths to every field ``want`` accepts, through nested messages and map entries."""
    found: list[Path] = []
    for field in descriptor.fields:
        if want(field):
            found.append((field,))
        if field.type == FieldDescriptor.TYPE_MESSAGE and depth < MAX_DEPTH:
            found += [(field, *p) for p in _paths(_sub(field), want, depth + 1)]
    return found


def _put(message: Message, path: Path, value: Any) -> None:
    """Set the leaf at ``path`` to ``value``, making the messages on the way."""
    field, rest = path[0], path[1:]
    target = getattr(message, field.name)
    if not rest:
        if field.is_repeated:
            target.append(value)
        else:
            setattr(message, field.name, value)
    elif _is_map(field):
        key_field, value_field = _sub(field).fields
        key = value if rest[0] is key_field else key_field.default_value
        if rest[0] is key_field:
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                target[key].SetInParent()
            else:
                target[key] = value_field.default_value
        elif value_field.type == FieldDescriptor.TYPE_MESSAGE:
            _put(target[key], rest[1:], value)
        else:
            target[key] = value
    elif field.is_repeated:
        _put(target.add(), rest, value)
    else:
        _put(target, rest, value)


# What each class of bad leaf value goes into, and the values.
def _out_of_range(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    defined = set(_enum_numbers(field))
    return st.one_of(
        st.sampled_from([-1, max(defined) + 1, 2**31 - 1, -(2**31)]),
        st.integers(-(2**31), 2**31 - 1),
    ).filter(lambda n: n not in defined)


def _huge(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    low, high = INT_RANGES[field.type]
    return st.sampled_from(sorted({low, high, *(e for e in EDGES if low <= e <= high)}))


def _with_nul(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    return st.builds(
        lambda text, at: text[:at] + "\x00" + text[at:],
        st.sampled_from(("", "samr.enterprise", COMPANY_USCC, PURPOSE)),
        st.integers(0, 20),
    )


def _long(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    sizes = st.sampled_from((257, 4_097, 70_000, 262_145))
    if field.type == FieldDescriptor.TYPE_BYTES:
        return sizes.map(lambda n: b"%PDF-" * n)
    return st.builds(lambda ch, n: ch * n, st.sampled_from(("x", "界", "e\u0301")), sizes)


BAD_LEAVES: dict[str, tuple[Callable[[FieldDescriptor], bool], Callable[..., Any]]] = {
    "enum_out_of_range": (lambda f: f.type == FieldDescriptor.TYPE_ENUM, _out_of_range),
    "huge_integer": (lambda f: f.type in INT_RANGES, _huge),
    "nul_in_string": (lambda f: f.type == FieldDescriptor.TYPE_STRING, _with_nul),
    "long_string": (lambda f: f.type in STRINGS, _long),
}

# -- raw wire encoding, for what a well-formed message cannot hold ----------------------


def _varint(value: int) -> bytes:
    value &= 2**64 - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _record(number: int, wire: int, payload: bytes) -> bytes:
    """One field record: the tag, then ``payload`` as ``wire`` frames it."""
    tag = _varint(number << 3 | wire)
    if wire == LEN:
        return tag + _varint(len(payload)) + payload
    if wire == SGROUP:
        return tag + payload + _varint(number << 3 | EGROUP)
    return tag + payload


def _payload(wire: int) -> st.SearchStrategy[bytes]:
    if wire == VARINT:
        return st.integers(0, 2**64 - 1).map(_varint)
    if wire == I64:
        return st.binary(min_size=8, max_size=8)
    if wire == I32:
        return st.binary(min_size=4, max_size=4)
    if wire == SGROUP:
        return st.just(b"")
    return st.binary(max_size=16)  # LEN, and the invalid wire types 6 and 7 (bare tags)


def _nest(path: Path, leaf: bytes) -> bytes:
    """``leaf`` (a record of the last field) wrapped in the messages of ``path``."""
    for field in reversed(path[:-1]):
        leaf = _record(field.number, LEN, leaf)
    return leaf


def _natural_wires(field: FieldDescriptor) -> set[int]:
    wire = _WIRE.get(field.type, VARINT)
    if field.is_repeated and wire != LEN:
        return {wire, LEN}  # packed or not, both parse
    return {wire}


def _flip(data: bytes, bit: int) -> bytes:
    return data[: bit // 8] + bytes([data[bit // 8] ^ 1 << bit % 8]) + data[bit // 8 + 1 :]


def payloads(
    descriptor: Descriptor, kind: str, plausible: dict[str, tuple[str, ...]]
) -> st.SearchStrategy[bytes] | None:
    """Request bytes of ``kind`` for ``descriptor``; None if such a message cannot carry it
    (no enum field to put out of range, say)."""
    good = well_formed(descriptor, plausible)
    valid = good.map(lambda m: m.SerializeToString())
    # A message of a few bytes at least: an unknown field pads an empty one.
    some = valid.map(lambda b: b if len(b) >= 4 else b + _record(1999, LEN, b"padding"))
    if kind in ("valid", "bad_officer"):
        return valid
    if kind in BAD_LEAVES:
        want, values = BAD_LEAVES[kind]
        paths = _paths(descriptor, want)
        if not paths:
            return None

        def spoil(message: Message, path: Path, value: Any) -> bytes:
            _put(message, path, value)
            return message.SerializeToString()

        return st.sampled_from(paths).flatmap(
            lambda path: st.builds(spoil, good, st.just(path), values(path[-1]))
        )
    if kind == "random_bytes":
        return st.binary(min_size=1, max_size=256)
    if kind == "truncated":
        return some.flatmap(lambda b: st.integers(1, len(b) - 1).map(lambda n: b[:n]))
    if kind == "bit_flipped":
        return some.flatmap(lambda b: st.integers(0, len(b) * 8 - 1).map(lambda i: _flip(b, i)))
    if kind == "wrong_wire_type":
        paths = _paths(descriptor, lambda f: True)
        if not paths:
            return None
        wrong = st.sampled_from(paths).flatmap(
            lambda path: st.sampled_from(
                [w for w in (0, 1, 2, 3, 5, 6, 7) if w not in _natural_wires(path[-1])]
            ).flatmap(
                lambda wire: _payload(wire).map(
                    lambda p: _nest(path, _record(path[-1].number, wire, p))
                )
            )
        )
        return st.builds(bytes.__add__, valid, wrong)
    if kind == "unknown_field":
        known = {f.number for f in descriptor.fields}
        numbers = st.integers(1, 2**29 - 1).filter(
            lambda n: n not in known and not 19000 <= n <= 19999  # reserved by protobuf
        )
        unknown = st.tuples(numbers, st.sampled_from((VARINT, I64, LEN, SGROUP, I32))).flatmap(
            lambda t: _payload(t[1]).map(lambda p: _record(t[0], t[1], p))
        )
        return st.builds(bytes.__add__, valid, unknown)
    if kind == "invalid_utf8":
        paths = _paths(descriptor, lambda f: f.type == FieldDescriptor.TYPE_STRING)
        if not paths:
            return None
        bad = st.sampled_from((b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"ok\xf8\x88\x80\x80\x80"))
        record = st.builds(
            lambda path, raw: _nest(path, _record(path[-1].number, LEN, raw)),
            st.sampled_from(paths),
            bad,
        )
        return st.builds(bytes.__add__, valid, record)
    raise AssertionError(kind)


# -- calls --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    code: str  # a grpc.StatusCode name, or OPEN
    reason: str | None  # the ErrorInfo reason, if the status carried one
    domain: str | None
    message: str


def _error_info(trailers: Sequence[tuple[str, str | bytes]] | None) -> tuple[str, str] | None:
    for key, value in trailers or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info.reason, info.domain
    return None


def _outcome(code: grpc.StatusCode, details: str | None, trailers: Any) -> Outcome:
    info = _error_info(tuple(trailers or ()))
    return Outcome(code.name, info[0] if info else None, info[1] if info else None, details or "")


async def _requests(items: Sequence[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def _read_some(call: Any) -> Outcome:
    """Read a few responses; cancel a stream that is still open after them."""
    try:
        for _ in range(STREAM_READS):
            try:
                response = await asyncio.wait_for(call.read(), STREAM_READ_WAIT)
            except TimeoutError:
                break
            if response is grpc.aio.EOF:  # type: ignore[attr-defined]
                code = await call.code()
                return _outcome(code, await call.details(), await call.trailing_metadata())
    except grpc.aio.AioRpcError as e:
        return _outcome(e.code(), e.details(), e.trailing_metadata())
    call.cancel()
    return Outcome(OPEN, None, None, "")


async def invoke(
    channel: grpc.aio.Channel, method: Method, request: bytes | list[bytes], officer: str | None
) -> Outcome:
    """Send ``request`` (a list for client-streaming methods) as raw bytes."""
    metadata = (("x-tongban-officer", officer),) if officer else ()
    kwargs: dict[str, Any] = {"metadata": metadata, "timeout": CALL_TIMEOUT}
    raw: dict[str, Any] = {"request_serializer": None, "response_deserializer": None}
    try:
        if method.client_streaming and method.server_streaming:
            assert isinstance(request, list)
            call = channel.stream_stream(method.path, **raw)(_requests(request), **kwargs)
            return await _read_some(call)
        if method.client_streaming:
            assert isinstance(request, list)
            await channel.stream_unary(method.path, **raw)(_requests(request), **kwargs)
        elif method.server_streaming:
            assert isinstance(request, bytes)
            return await _read_some(channel.unary_stream(method.path, **raw)(request, **kwargs))
        else:
            assert isinstance(request, bytes)
            await channel.unary_unary(method.path, **raw)(request, **kwargs)
    except grpc.aio.AioRpcError as e:
        return _outcome(e.code(), e.details(), e.trailing_metadata())
    return Outcome("OK", None, None, "")


def acceptable(method: Method, outcome: Outcome) -> bool:
    """No unexpected failure, and every error of our own services raised on purpose."""
    if outcome.code in {c.name for c in BAD_CODES}:
        return False
    if outcome.code in ("OK", OPEN) or not method.path.startswith("/tongban."):
        return True
    return outcome.domain == "tongban" and bool(outcome.reason)


# -- the test -----------------------------------------------------------------------------


async def _prepare(node: Node) -> Story:
    """A published dataset with a record, a licence and a service item: things for
    requests to name."""
    async with client_for(node, "samr", "SC-1") as samr:
        await samr.register_dataset(ENTERPRISE, publish=True)
        await samr.publish_records("samr.enterprise", [(COMPANY_USCC, COMPANY)])
        licence = await samr.issue_licence(
            "business-licence", BUSINESS_LICENCE_CLAIMS, case_id=CASE_ID
        )
    # The food permit's item, so that ResolveMaterials runs the resolver, not only refusals.
    async with client_for(node, "police", "GA-1") as police:
        await police.register_dataset(PERSON, publish=True)
    async with client_for(node, "approval", "SP-1") as approval:
        await approval.register_item(FOOD_BUSINESS_PERMIT_ITEM)
    return Story(licence.number, (licence.sd_jwt, licence.qr, "TB1:" + "A" * 40))


def _requests_of(
    method: Method, kind: str, payload: st.SearchStrategy[bytes], valid: st.SearchStrategy[bytes]
) -> st.SearchStrategy[bytes | list[bytes]]:
    if not method.client_streaming:
        return payload
    if kind == "valid":
        return st.lists(valid, min_size=1, max_size=3)
    # The garbage in the middle of a stream of good messages.
    return st.tuples(
        st.lists(valid, min_size=1, max_size=2), payload, st.lists(valid, min_size=1, max_size=2)
    ).map(lambda t: [*t[0], t[1], *t[2]])


def _examples(method: Method, kind: str) -> int:
    if method.server_streaming:
        return STREAMING_EXAMPLES
    return EXAMPLES.get(kind, DEFAULT_EXAMPLES)


def fuzz_method(
    method: Method,
    kind: str,
    plausible: dict[str, tuple[str, ...]],
    send: Callable[[str, Method, bytes | list[bytes], str | None], Outcome],
    seen: Callable[[Method, str, Outcome], None],
) -> str | None:
    """Run the property for one method and kind; the failure's description, or None."""
    payload = payloads(method.request, kind, plausible)
    if payload is None:
        return None  # e.g. no enum field to put out of range
    valid = well_formed(method.request, plausible).map(lambda m: m.SerializeToString())
    requests = _requests_of(method, kind, payload, valid)

    @settings(
        max_examples=_examples(method, kind),
        derandomize=True,
        database=None,
        deadline=None,
        phases=(Phase.explicit, Phase.generate),
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        caller=st.sampled_from(CALLERS),
        officer=st.sampled_from(BAD_OFFICERS if kind == "bad_officer" else OFFICERS),
        request=requests,
    )
    def garbage_never_escapes(
        caller: str, officer: str | None, request: bytes | list[bytes]
    ) -> None:
        outcome = send(caller, method, request, officer)
        seen(method, kind, outcome)
        assert acceptable(method, outcome), (
            f"{method.path} [{kind}] as {caller}: {outcome.code} reason={outcome.reason} "
            f"{outcome.message[:200]!r}; request={_show(request)}"
        )

    try:
        garbage_never_escapes()
    except AssertionError as e:
        return str(e).splitlines()[0]
    return None


def _show(request: bytes | list[bytes]) -> str:
    if isinstance(request, bytes):
        return request[:120].hex() + ("…" if len(request) > 120 else "")
    return "[" + ", ".join(_show(r) for r in request) + "]"


@pytest.mark.timeout(180)  # ~30 s on two cores; room for a loaded CI machine
async def test_garbage_never_escapes(node: Node) -> None:
    story = await _prepare(node)
    plausible = _plausible(story)
    channels = {code: raw_channel(node, code) for code in CALLERS}
    loop = asyncio.get_running_loop()
    codes: dict[str, Counter[str]] = defaultdict(Counter)
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    took: dict[str, float] = {}

    def send(
        caller: str, method: Method, request: bytes | list[bytes], officer: str | None
    ) -> Outcome:
        future = asyncio.run_coroutine_threadsafe(
            invoke(channels[caller], method, request, officer), loop
        )
        return future.result(timeout=CALL_TIMEOUT * 2)

    def seen(method: Method, kind: str, outcome: Outcome) -> None:
        label = outcome.code + (f"/{outcome.reason}" if outcome.reason else "")
        codes[method.path][label] += 1
        by_kind[kind][outcome.code] += 1

    try:
        methods = await discover_methods(channels["samr"])

        def run_all() -> list[str]:
            failures = []
            for method in methods:
                started = time.perf_counter()
                for kind in KINDS:
                    failure = fuzz_method(method, kind, plausible, send, seen)
                    if failure is not None:
                        failures.append(failure)
                took[method.path] = time.perf_counter() - started
            return failures

        failures = await asyncio.to_thread(run_all)
    finally:
        for channel in channels.values():
            await channel.close(None)

    print(f"\n{len(methods)} methods fuzzed; status codes seen per method:")
    for path in sorted(codes):
        print(
            f"  {path} ({took[path]:.1f} s): "
            + ", ".join(f"{c}: {n}" for c, n in sorted(codes[path].items()))
        )
    print("per kind of garbage:")
    for kind in KINDS:
        print(f"  {kind}: " + ", ".join(f"{c}: {n}" for c, n in sorted(by_kind[kind].items())))

    assert {m.path for m in methods} >= {
        "/tongban.v1.CatalogueService/ListDatasets",
        "/tongban.v1.RecordService/StreamRecords",
        "/tongban.v1.SubscriptionService/Subscribe",
    }
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{node.http_port}/healthz") as response,
    ):
        assert response.status == 200
    assert not failures, "garbage escaped:\n" + "\n".join(failures)
