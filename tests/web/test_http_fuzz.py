"""Hostile input to every route of the node's HTTP side (the public licence endpoints and
the web console), and valid licences altered one byte at a time: every answer is a 2xx,
a redirect or a 4xx with a stable reason code and a sentence, never a 500, a trace or an
incident page, and the node keeps serving.

Each route gets a sweep (every value of ``_NASTY`` in each of its parameters, path
segments and form fields, and garbage under every content type) and then Hypothesis
examples. Hypothesis runs in a worker thread and sends each request on the test's event
loop, where the node runs, so that one node serves every route's examples. docs/web.md
lists the classes of garbage and what each gets.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import re
import zlib
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar
from urllib.parse import quote_from_bytes

import aiohttp
import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from tests.conftest import client_for
from tests.stories.restaurant import FOOD_PERMIT_CLAIMS, OWNER_ID
from tongban.exchange.node import Node
from tongban.exchange.web import LinkStore
from tongban.licence import QR_PREFIX, LicenceFormatInvalid, QrClaims
from tongban.licence.base45 import b45decode, b45encode

# ---- answers ----------------------------------------------------------------------------------

_REASON = re.compile(r"[A-Z][A-Z0-9_]{2,63}")
_PAGE_REASON = re.compile(r'<p class="muted"><code>([A-Z0-9_]+)</code></p>')
_PAGE_MESSAGE = re.compile(r'<p class="notice bad" role="alert" id="message">([^<]+)</p>')
_VERIFY_ERROR = re.compile(
    r'<p class="notice bad" role="alert" id="verify-error" data-reason="([A-Z0-9_]+)">([^<]+)</p>'
)
_OUTCOME = re.compile(r'<h2 id="outcome" data-outcome="([a-z]+)">')
_CHECK = re.compile(r'<dd id="check"><code>([a-z-]+)</code> · <code>([A-Z0-9_]+)</code></dd>')
# What an unexpected error shows: the console's incident page, the API's INTERNAL.
_CRASH = ("incident", "事件", "Traceback", "INTERNAL")

#: Why garbage or an altered licence fails verification, and the checks that say so.
_REFUSED = {
    "LICENCE_FORMAT_INVALID",
    "PAYLOAD_TOO_LARGE",
    "LICENCE_SIGNATURE_INVALID",
    "SIGNER_UNTRUSTED",
    "DISCLOSURE_INVALID",
    "LICENCE_TYPE_UNKNOWN",
}
_REFUSED_CHECKS = {"format", "signature", "issuer", "disclosure"}


@dataclass(frozen=True)
class Answer:
    request: str
    status: int
    content_type: str
    body: str

    def __str__(self) -> str:
        found = (_PAGE_MESSAGE.search(self.body), _PAGE_REASON.search(self.body))
        shown = " ".join(m[0] for m in found if m) or self.body[-900:]
        return f"{self.request} -> {self.status} {self.content_type}: {shown!r}"

    def json(self) -> dict[str, object]:
        assert self.content_type == "application/json", self
        data = json.loads(self.body)
        assert isinstance(data, dict), self
        return data

    def reason(self) -> str:
        """The reason code of a refusal, checked to come with a sentence: JSON, a console
        message page, or the verify page's error."""
        if self.content_type == "application/json":
            data = self.json()
            reason, message = data.get("reason"), data.get("message")
            assert isinstance(reason, str), self
            assert _REASON.fullmatch(reason), self
            assert isinstance(message, str), self
            assert len(message) > 10, self
            return reason
        assert self.content_type == "text/html", self
        error = _VERIFY_ERROR.search(self.body)
        if error is not None:
            assert len(error[2].strip()) > 5, self
            return error[1]
        reason, message = _PAGE_REASON.search(self.body), _PAGE_MESSAGE.search(self.body)
        assert reason is not None, self
        assert message is not None, self
        assert len(message[1].strip()) > 5, self
        return reason[1]

    def outcome(self) -> tuple[str, str, str]:
        """The verify page's outcome, failed check and reason."""
        outcome = _OUTCOME.search(self.body)
        assert outcome is not None, self
        check = _CHECK.search(self.body)
        return (outcome[1], check[1], check[2]) if check else (outcome[1], "", "")


def _refused(answer: Answer, allowed: dict[int, set[str]]) -> None:
    """``answer`` has one of the ``allowed`` statuses and one of that status's reasons."""
    assert answer.status in allowed, answer
    assert answer.reason() in allowed[answer.status], answer


def _unverified(answer: Answer) -> None:
    """A /verify result that names the failed check and why."""
    assert answer.status == 200, answer
    data = answer.json()
    assert data["verified"] is False, answer
    assert data["check"] in _REFUSED_CHECKS, answer
    assert data["reason"] in _REFUSED, answer
    assert isinstance(data["message"], str), answer
    assert len(data["message"]) > 10, answer


# ---- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    method: str
    path: str
    """Percent-encoded."""
    query: str = ""
    """Percent-encoded (or deliberately not)."""
    body: bytes | None = None
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


class Sender:
    """Sends probes to one node with one client session (and its cookies)."""

    def __init__(self, node: Node, http: aiohttp.ClientSession) -> None:
        self.base = f"http://127.0.0.1:{node.http_port}"
        self.http = http

    async def send(self, probe: Probe) -> Answer:
        """The answer to ``probe``, checked to be no crash."""
        url = URL(self.base + probe.path + (f"?{probe.query}" if probe.query else ""), encoded=True)
        headers = dict(probe.headers)
        if probe.content_type is not None:
            headers["Content-Type"] = probe.content_type
        body = probe.body
        async with self.http.request(
            probe.method,
            url,
            # A stream for a large body, as aiohttp asks (else it warns).
            data=io.BytesIO(body) if body is not None and len(body) > 1 << 18 else body,
            headers=headers,
            skip_auto_headers=["Content-Type"] if probe.content_type is None else [],
            allow_redirects=False,
        ) as response:
            raw = await response.read()
        shown = f"{probe.method} {probe.path}?{probe.query[:300]} [{probe.content_type}]"
        if body is not None:
            shown += f" {body[:300]!r}"
        answer = Answer(
            shown, response.status, response.content_type, raw.decode("utf-8", "replace")
        )
        assert 200 <= answer.status < 500, answer
        for word in _CRASH:
            assert word not in answer.body, answer
        return answer

    async def form(self, path: str, **fields: bytes) -> Answer:
        body = "&".join(f"{k}={_enc(v)}" for k, v in fields.items()).encode()
        return await self.send(
            Probe("POST", path, body=body, content_type="application/x-www-form-urlencoded")
        )

    async def upload(self, path: str, data: bytes) -> Answer:
        body = _multipart([("file", data, "licence.pdf")])
        return await self.send(Probe("POST", path, body=body, content_type=_MULTIPART))


async def _raw(node: Node, request: bytes) -> tuple[int, str]:
    """Send ``request`` as it is on a new connection; the status and the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.http_port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(1 << 20), 10)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):  # the server may close first
            await writer.wait_closed()
    text = data.decode("utf-8", "replace")
    assert text.startswith(("HTTP/1.1 ", "HTTP/1.0 ")), text  # 1.0: aiohttp's parser refusing
    status = int(text.split(" ", 2)[1])
    assert 200 <= status < 500, text
    for word in _CRASH:
        assert word not in text, text
    return status, text


# ---- garbage ----------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _sd_jwt(payload: bytes) -> str:
    header = _b64(b'{"alg":"ES256","typ":"dc+sd-jwt"}')
    return f"{header}.{_b64(payload)}.{_b64(bytes(64))}~"


def _unsigned_qr(status_index: int) -> str:
    """A QR text of well-formed claims (status list 1, index ``status_index``) under a
    signature of zeros."""
    claims = QrClaims(
        licence_number="X", licence_type="food-business-permit", holder_id="X",
        holder_name="X", issuer="approval", not_before=0, expires=2**33,
        status_uri="http://127.0.0.1/status-lists/1", status_index=status_index,
    )  # fmt: skip
    protected = cbor2.dumps({1: -7, 4: bytes(8)})
    cose = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, claims.to_cbor(), bytes(64)]))
    return QR_PREFIX + b45encode(zlib.compress(cose, 9))


_QR_BOMB = QR_PREFIX + b45encode(zlib.compress(b"\0" * 1_000_000, 9))  # fits in a QR code
_STATUS = b'{"status":{"status_list":{"idx":%s,"uri":"http://x/status-lists/1"}}}'

#: Licence-shaped garbage: well-formed on the outside, hostile inside.
_LICENCE_SHAPED = [
    QR_PREFIX + b45encode(b"base45, but not zlib"),
    _QR_BOMB,
    QR_PREFIX + b45encode(zlib.compress(b"\x81" * 5000 + b"\0", 9)),  # CBOR 5,000 deep
    _unsigned_qr(2**40),  # an index no status list has (nor an int4 column)
    _unsigned_qr(7),
    _sd_jwt(b"[" * 1500 + b"]" * 1500),  # deeper than Python's recursion limit
    _sd_jwt(_STATUS % b"1099511627776"),
    _sd_jwt(_STATUS % b"-1"),
    _sd_jwt(_STATUS % b"1e400"),
    _sd_jwt(b'{"status":{"status_list":{"idx":3,"uri":"http://x/status-lists/1\\u0000"}}}'),
]

_NASTY: list[bytes] = [
    b"",
    b" ",
    b"\x00",
    b"a\x00b",
    b"\xff\xfe\xfd",  # not UTF-8
    b"\xc3\x28",  # a broken two-byte sequence
    b"\xed\xa0\x80",  # a lone surrogate, UTF-8-encoded
    b"\xef\xbf\xbe",  # a noncharacter
    b"\x1b[31m\x07\x08",  # terminal escapes
    b"%",
    b"%zz",
    b"%%%",
    b"-1",
    b"-99999999999999999999",
    b"99999999999999999999999999999999",
    b"9223372036854775808",
    b"2147483648",
    b"1e309",
    b"NaN",
    b"0x1f",
    b"1.5",
    "²".encode(),  # a digit to str.isdigit(), not to int()
    "٣".encode(),  # a digit to both
    "１２".encode(),  # noqa: RUF001 - fullwidth digits, on purpose
    b"../../../etc/passwd",
    b"<script>alert(1)</script>",
    b"' OR '1'='1",
    b"\r\nSet-Cookie: x=1",
    b"true",
    b"null",
    b"[]",
    b"{}",
    b"2025-13-45",
    b"9999-12-31T23:59:59",
    b"0001-01-01T00:00:00+14:00",
    b"2025-06-01T09:30+25:00",
    b"2025-06-01",
    b"allowed",
    b"denied",
    b"conditional",
    b"login",
    b"subject",
    b"csv",
    b"jsonl",
    b"0",
    b"1",
    b"TB1:",
    b"TB1:00000",
    b"a.b.c~",
    b"e30.e30.e30~",
    "一二三".encode(),
    b"A" * 5000,
    b"MQ",  # base64url of "1"
    b"LTE",  # base64url of "-1"
    b"OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5",  # base64url of a 24-digit number
    b"AA",  # base64url of a NUL
    b"_w",  # base64url of 0xff
    *(text.encode() for text in _LICENCE_SHAPED),
]

_VALUES: st.SearchStrategy[bytes] = st.one_of(
    st.sampled_from(_NASTY),
    st.binary(max_size=48),
    st.text(max_size=24).map(str.encode),
    st.integers().map(lambda i: str(i).encode()),
)

_URLENCODED = "application/x-www-form-urlencoded"
_MULTIPART = "multipart/form-data; boundary=XyZ"
_CONTENT_TYPES = [
    _URLENCODED,
    _URLENCODED + "; charset=latin-1",
    _URLENCODED + "; charset=no-such-charset",
    _URLENCODED + "; charset=utf-16",
    "multipart/form-data",
    "multipart/form-data; boundary=",
    _MULTIPART,
    "multipart/mixed; boundary=XyZ",
    "application/json",
    "application/pdf",
    "text/plain; charset=utf-16",
    "application/octet-stream",
    "",
    'no/such; ;;="',
]
_PART = b'--XyZ\r\nContent-Disposition: form-data; name="%s"\r\n'
#: Bodies a browser never sends, posted under each content type.
_GARBAGE_BODIES = [
    b"",
    b"\xff\xfe\x00 not a form",
    b"qr=%FF%FE&token=\xff\xfe&qr=\x00&file=\x00",
    b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nno name\r\n--XyZ--\r\n",
    _PART % b"qr" + b"Content-Type: text/plain; charset=nope\r\n\r\nx\r\n--XyZ--\r\n",
    _PART % b"token" + b"Content-Type: text/plain; charset=utf-8\r\n\r\n\xff\xfe\r\n--XyZ--\r\n",
    b"--XyZ\r\nContent-Type: multipart/mixed; boundary=Q\r\n\r\n"  # a nested multipart
    b"--Q\r\n\r\nx\r\n--Q--\r\n--XyZ--\r\n",
    _PART % b"qr" + b"Content-Transfer-Encoding: base64\r\n\r\n!!!\r\n--XyZ--\r\n",
    _PART % b'file"; filename="a.pdf' + b"Content-Encoding: gzip\r\n\r\n%PDF-\xff\r\n--XyZ--\r\n",
    _PART % b"qr" + b"\r\ncut short",
    b"--XyZ--\r\n",
]


def _enc(value: bytes) -> str:
    return quote_from_bytes(value, safe="")


def _fits(probe: Probe) -> bool:
    """Whether the request line is within aiohttp's limit (8,190 bytes); longer ones are
    refused by its HTTP parser before any route runs, which the tests check once."""
    return len(probe.path) + len(probe.query) < 8000


def _multipart(parts: Sequence[tuple[str, bytes, str | None]]) -> bytes:
    out = io.BytesIO()
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out.write(f"--XyZ\r\nContent-Disposition: {disposition}\r\n\r\n".encode())
        out.write(value + b"\r\n")
    out.write(b"--XyZ--\r\n")
    return out.getvalue()


# Sweeps: every nasty value, one request each.


def _each_value(path: str, names: Sequence[str]) -> list[Probe]:
    """Each nasty value in each query parameter of ``names``."""
    probes = (Probe("GET", path, f"{name}={_enc(v)}") for name in names for v in _NASTY)
    return [p for p in probes if _fits(p)]


def _each_segment(prefix: str, suffix: str = "", method: str = "GET") -> list[Probe]:
    """Each nasty value as the path segment between ``prefix`` and ``suffix``."""
    probes = (Probe(method, prefix + _enc(v) + suffix) for v in _NASTY)
    return [p for p in probes if _fits(p)]


def _each_body(path: str, fields: Sequence[str]) -> list[Probe]:
    """Each nasty value in each field (URL-encoded, and multipart, as text and as a file),
    and each garbage body under each content type (and none)."""
    probes = []
    for name in fields:
        for v in _NASTY:
            probes.append(
                Probe("POST", path, body=f"{name}={_enc(v)}".encode(), content_type=_URLENCODED)
            )
            filename = "licence.txt" if name == "file" else None
            probes.append(
                Probe("POST", path, body=_multipart([(name, v, filename)]), content_type=_MULTIPART)
            )
    for content_type in [*_CONTENT_TYPES, None]:
        probes += [Probe("POST", path, body=b, content_type=content_type) for b in _GARBAGE_BODIES]
    return probes


# Hypothesis: what the sweep did not think of.


def _query(names: Sequence[str]) -> st.SearchStrategy[str]:
    """A query string: ``names`` (and others), repeated or not, with hostile values; or
    raw printable text, not percent-encoded at all."""
    pairs = st.lists(
        st.tuples(st.sampled_from([*names, "x", "", "lang"]).map(str.encode), _VALUES),
        max_size=6,
    )
    encoded = pairs.map(lambda ps: "&".join(f"{_enc(k)}={_enc(v)}" for k, v in ps))
    raw = st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#"),
        max_size=40,
    )
    return st.one_of(encoded, raw)


def _bodies(fields: Sequence[str]) -> st.SearchStrategy[tuple[bytes, str | None]]:
    """A body and its content type: forms of ``fields`` with hostile values, multipart
    with hostile parts, and garbage under any content type."""
    names = st.sampled_from([*fields, "x", "file", ""])
    urlencoded = st.lists(st.tuples(names, _VALUES), max_size=4).map(
        lambda ps: ("&".join(f"{k}={_enc(v)}" for k, v in ps).encode(), _URLENCODED)
    )
    filenames = st.sampled_from([None, "a.pdf", "b.png", ""])
    multipart = st.lists(st.tuples(names, _VALUES, filenames), max_size=3).map(
        lambda ps: (_multipart(ps), _MULTIPART)
    )
    garbage = st.tuples(
        st.one_of(st.binary(max_size=200), st.sampled_from([*_GARBAGE_BODIES, *_NASTY])),
        st.sampled_from([*_CONTENT_TYPES, None]),
    )
    return st.one_of(urlencoded, multipart, garbage)


def _gets(paths: st.SearchStrategy[str], names: Sequence[str]) -> st.SearchStrategy[Probe]:
    return st.builds(lambda p, q: Probe("GET", p, q), paths, _query(names)).filter(_fits)


def _posts(paths: st.SearchStrategy[str], fields: Sequence[str]) -> st.SearchStrategy[Probe]:
    return st.builds(
        lambda p, q, b: Probe("POST", p, q, body=b[0], content_type=b[1]),
        paths,
        _query(fields),
        _bodies(fields),
    ).filter(_fits)


def _segments(prefix: str, suffix: str = "") -> st.SearchStrategy[str]:
    return _VALUES.map(lambda v: prefix + _enc(v) + suffix)


# ---- running ----------------------------------------------------------------------------------


_T = TypeVar("_T")


@dataclass(frozen=True)
class Route(Generic[_T]):
    """How to probe one route: ``check`` sends a probe (or alters a licence and sends it)
    and asserts on the answer."""

    check: Callable[[_T], Coroutine[Any, Any, object]]
    sweep: list[_T]
    fuzz: st.SearchStrategy[_T]
    examples: int


def _fuzz(loop: asyncio.AbstractEventLoop, route: Route[_T]) -> None:
    """Run ``route.check`` on examples drawn from ``route.fuzz``: drawn in this (worker)
    thread, each check run on ``loop``."""

    @settings(
        max_examples=route.examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(route.fuzz)
    def run(probe: _T) -> None:
        asyncio.run_coroutine_threadsafe(route.check(probe), loop).result(timeout=60)

    run()


async def _exercise(routes: Sequence[Route[Any]]) -> None:
    """The sweep of every route (a few requests at a time), then its Hypothesis examples."""
    for route in routes:
        for start in range(0, len(route.sweep), 8):
            await asyncio.gather(*(route.check(p) for p in route.sweep[start : start + 8]))
    loop = asyncio.get_running_loop()
    for route in routes:
        await asyncio.to_thread(_fuzz, loop, route)


async def _healthy(sender: Sender) -> None:
    answer = await sender.send(Probe("GET", "/healthz"))
    assert answer.status == 200, answer
    assert answer.json()["status"] == "ok", answer


# ---- the public endpoints ---------------------------------------------------------------------


async def _verify_api(sender: Sender, probe: Probe) -> None:
    answer = await sender.send(probe)
    if answer.status == 200:
        _unverified(answer)
    else:
        _refused(answer, {400: {"INVALID_ARGUMENT"}, 413: {"PAYLOAD_TOO_LARGE"}})


async def _status_list(sender: Sender, probe: Probe) -> None:
    answer = await sender.send(probe)
    if answer.status == 200:
        assert answer.content_type == "application/statuslist+jwt", answer
        assert answer.body.count(".") == 2, answer
        assert probe.path.rsplit("/", 1)[1].lstrip("0") == "1", answer  # the one list there is
    else:
        _refused(answer, {404: {"STATUS_LIST_NOT_FOUND", "NOT_FOUND"}})


async def _no_input(sender: Sender, probe: Probe) -> None:
    answer = await sender.send(probe)
    assert answer.status == 200, answer


_JSON: st.SearchStrategy[object] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["qr", "text", "x"]) | st.text(max_size=4), inner, max_size=3
        )
    ),
    max_leaves=8,
)


def _json_probe(value: object) -> Probe:
    return Probe(
        "POST", "/verify", body=json.dumps(value).encode(), content_type="application/json"
    )


async def test_public_endpoints_refuse_garbage_with_a_reason(node: Node) -> None:
    async with client_for(node, "approval", "SP-0007") as approval:
        await approval.issue_licence("food-business-permit", FOOD_PERMIT_CLAIMS)  # list 1
    async with aiohttp.ClientSession() as http:
        s = Sender(node, http)
        verify = partial(_verify_api, s)
        wrong_types: list[object] = [
            None, 5, "TB1:", [], ["TB1:"], {"qr": 5}, {"qr": ["x"]}, {"qr": {"qr": "x"}},
            {"qr": None, "text": 1.5}, {"qr": True},
        ]  # fmt: skip
        await _exercise(
            [
                Route(
                    verify, _each_value("/verify", ["qr"]), _gets(st.just("/verify"), ["qr"]), 40
                ),
                Route(
                    verify,
                    [_json_probe({"qr": v.decode("utf-8", "surrogateescape")}) for v in _NASTY]
                    + [_json_probe(v) for v in wrong_types],
                    _JSON.map(_json_probe),
                    30,
                ),
                Route(
                    verify,
                    _each_body("/verify", ["qr", "text"]),
                    _posts(st.just("/verify"), ["qr"]),
                    40,
                ),
                Route(
                    partial(_status_list, s),
                    _each_segment("/status-lists/") + _each_segment("/status-lists/", "/x"),
                    _gets(_segments("/status-lists/"), []),
                    30,
                ),
                Route(
                    partial(_no_input, s),
                    [
                        Probe("GET", p, "x=%00&lang=%FF")
                        for p in ("/trust-list", "/healthz", "/metrics")
                    ],
                    _gets(st.sampled_from(["/trust-list", "/healthz", "/metrics"]), ["x"]),
                    10,
                ),
            ]
        )

        # Huge: a 1 MB body is refused before it is parsed, a 1 MB URL by the HTTP parser.
        mega = b"A" * 1_000_000
        for body in (json.dumps({"qr": mega.decode()}).encode(), mega):
            answer = await s.send(
                Probe("POST", "/verify", body=body, content_type="application/json")
            )
            _refused(answer, {413: {"PAYLOAD_TOO_LARGE"}})
        answer = await s.send(Probe("GET", "/verify", "qr=" + mega.decode()))
        assert answer.status == 400, answer
        assert "8190 bytes" in answer.body, answer
        # Wrong methods and paths: JSON with a reason, like every other refusal.
        for method, path in (("PUT", "/verify"), ("DELETE", "/trust-list"), ("POST", "/healthz")):
            _refused(await s.send(Probe(method, path)), {405: {"METHOD_NOT_ALLOWED"}})
        _refused(await s.send(Probe("GET", "/no/such/path")), {404: {"NOT_FOUND"}})

        # Bytes no client library sends: aiohttp's parser refuses them with a plain 400.
        for request in (
            b"GET /verify?qr=\xff\xfeTB1: HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET /status-lists/\xff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET /verify?qr=a\x00b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"POST /verify HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
            b"POST /verify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40),  # a TLS hello
        ):
            status, text = await _raw(node, request)
            assert status == 400, text

        await _healthy(s)


# ---- the web console --------------------------------------------------------------------------

_AUDITOR_PAGES = [
    "/console/audit",
    "/console/audit/entry/0",
    "/console/audit/export.csv",
    "/console/audit/verify",
    "/console/audit/anomalies",
    "/console/audit/volume",
    "/console/supervision",
    "/console/supervision/cases",
]
_FILTERS = ["subject", "caller", "officer", "dataset", "purpose", "case", "decision", "from", "to"]
#: A query the page cannot use: a bad value, or a page token this node did not issue.
_BAD_QUERY = {400: {"INVALID_ARGUMENT", "PAGE_TOKEN_INVALID"}}
#: Ratings (issue 16): a link the node never made, a score or comment out of bounds, a
#: case that is not the subject's.
_RATE_LINK = {403: {"RATING_LINK_INVALID"}, 404: {"NOT_FOUND"}}
_RATE_POST = {
    400: {"FORM_UNREADABLE", "RATING_SCORE_INVALID", "RATING_COMMENT_INVALID"},
    403: {"RATING_LINK_INVALID"},
    404: {"NOT_FOUND"},
    413: {"PAYLOAD_TOO_LARGE"},
}
_SUBJECT_RATE = {
    400: {"FORM_UNREADABLE", "RATING_SCORE_INVALID", "RATING_COMMENT_INVALID"},
    404: {"CASE_NOT_FOUND"},
    413: {"PAYLOAD_TOO_LARGE"},
}


async def _console(
    sender: Sender,
    probe: Probe,
    *,
    ok: tuple[int, ...] = (200,),
    refusals: dict[int, set[str]] | None = None,
) -> Answer:
    """Send ``probe`` to a console page: a NUL in the query is refused as such; else the
    answer is one of ``ok`` or one of ``refusals`` with its reason."""
    answer = await sender.send(probe)
    if "%00" in probe.query:
        _refused(answer, {400: {"INVALID_ARGUMENT"}})
        assert "NUL" in answer.body, answer
    elif answer.status not in ok:
        _refused(answer, refusals or {})
    return answer


async def _verify_page(sender: Sender, probe: Probe) -> None:
    answer = await _console(
        sender,
        probe,
        refusals={
            400: {"INVALID_ARGUMENT", "UPLOAD_UNREADABLE", "FORM_UNREADABLE"},
            413: {"PAYLOAD_TOO_LARGE"},
        },
    )
    if answer.status != 200:
        return
    if probe.method == "GET" and _OUTCOME.search(answer.body) is None:
        assert 'id="verify-form"' in answer.body, answer  # no qr: the empty form
        return
    outcome, check, reason = answer.outcome()
    assert outcome in ("unreadable", "forged"), answer
    assert check in _REFUSED_CHECKS, answer
    assert reason in _REFUSED, answer


async def _link(sender: Sender, probe: Probe) -> None:
    kind = probe.path.rsplit("/", 1)[1]
    if probe.method == "GET":
        answer = await _console(sender, probe, refusals={404: {"NOT_FOUND"}})
        if answer.status == 200:
            assert kind in ("login", "subject"), answer
            assert 'id="continue"' in answer.body, answer
        return
    refusals = {400: {"FORM_UNREADABLE"}, 403: {"LINK_INVALID"}, 413: {"PAYLOAD_TOO_LARGE"}}
    if kind not in ("login", "subject"):
        refusals = {404: {"NOT_FOUND"}}
    await _console(sender, probe, ok=(), refusals=refusals)


async def _page(sender: Sender, probe: Probe, refusals: dict[int, set[str]] | None = None) -> None:
    answer = await _console(sender, probe, refusals=refusals)
    if answer.status == 200:
        assert answer.content_type == "text/html", answer


async def _entry(sender: Sender, probe: Probe) -> None:
    answer = await _console(
        sender,
        probe,
        refusals={400: {"INVALID_ARGUMENT", "PROOF_OUT_OF_RANGE"}, 404: {"NOT_FOUND"}},
    )
    if answer.status == 200:
        index = probe.path.rsplit("/", 1)[1]
        assert re.fullmatch("[0-9]+", index), answer
        assert 'id="proved"' in answer.body, answer


async def _export(sender: Sender, probe: Probe) -> None:
    answer = await _console(sender, probe, refusals={400: {"INVALID_ARGUMENT"}, 404: {"NOT_FOUND"}})
    if answer.status == 200:
        fmt = probe.path.rsplit(".", 1)[1]
        expected = {"csv": "text/csv", "jsonl": "application/jsonl"}[fmt]
        assert answer.content_type == expected, answer


async def _static(sender: Sender, probe: Probe) -> None:
    answer = await _console(sender, probe, refusals={404: {"NOT_FOUND"}})
    if answer.status == 200:
        assert probe.path.endswith(("/console.css", "/console.js")), answer
        assert answer.content_type in ("text/css", "text/javascript"), answer


async def _verify_status(sender: Sender, probe: Probe) -> None:
    answer = await _console(sender, probe, ok=(404,))
    if "%00" not in probe.query:
        assert answer.json() == {"state": "unknown"}, answer


async def _signed_in(
    node: Node, http: aiohttp.ClientSession, kind: str, principal: str, officer: str | None
) -> Sender:
    assert node.db is not None
    token = await LinkStore(node.db.pool).issue(
        "login" if kind == "login" else "subject", principal, node.clock.now(), officer=officer
    )
    sender = Sender(node, http)
    opened = await sender.form(f"/console/link/{kind}", token=token.encode())
    assert opened.status == 303, opened
    return sender


def _jar() -> aiohttp.CookieJar:
    return aiohttp.CookieJar(unsafe=True)  # keeps cookies for 127.0.0.1


_COOKIES = ["", "e30.AAAA", "a.b.c", "....", "x" * 2000, "%FF%00", "\\x00", '"', "e30." + "A" * 43]


async def test_console_refuses_garbage_with_a_reason(node: Node) -> None:
    async with client_for(node, "approval", "SP-0007") as approval:
        await approval.issue_licence("food-business-permit", FOOD_PERMIT_CLAIMS)  # log entries
    async with (
        aiohttp.ClientSession(cookie_jar=_jar()) as anonymous_http,
        aiohttp.ClientSession(cookie_jar=_jar()) as auditor_http,
        aiohttp.ClientSession(cookie_jar=_jar()) as subject_http,
    ):
        anonymous = Sender(node, anonymous_http)
        auditor = await _signed_in(node, auditor_http, "login", "audit", "JW-0001")
        subject = await _signed_in(node, subject_http, "subject", OWNER_ID, None)
        login_required = {401: {"LOGIN_REQUIRED"}}
        kinds = st.one_of(st.sampled_from([b"login", b"subject"]), _VALUES).map(_enc)
        verify = partial(_verify_page, anonymous)
        await _exercise(
            [
                Route(
                    partial(_page, anonymous),
                    _each_value("/console/", ["lang"]),
                    _gets(st.just("/console/"), ["lang"]),
                    10,
                ),
                Route(
                    verify,
                    _each_value("/console/verify", ["qr"]),
                    _gets(st.just("/console/verify"), ["qr"]),
                    30,
                ),
                Route(
                    verify,
                    _each_body("/console/verify", ["qr", "file"]),
                    _posts(st.just("/console/verify"), ["qr"]),
                    40,
                ),
                Route(
                    partial(_link, anonymous),
                    _each_segment("/console/link/") + _each_value("/console/link/login", ["token"]),
                    _gets(kinds.map(lambda k: "/console/link/" + k), ["token"]),
                    15,
                ),
                Route(
                    partial(_link, anonymous),
                    _each_segment("/console/link/", method="POST")
                    + _each_body("/console/link/login", ["token"]),
                    _posts(kinds.map(lambda k: "/console/link/" + k), ["token"]),
                    30,
                ),
                Route(
                    partial(_console, anonymous, ok=(303,)),
                    [
                        Probe("POST", "/console/logout", body=b"\xff", content_type=t)
                        for t in _CONTENT_TYPES
                    ],
                    _posts(st.just("/console/logout"), []),
                    5,
                ),
                Route(
                    partial(_page, anonymous, refusals=login_required),
                    [
                        Probe("GET", p)
                        for p in [*_AUDITOR_PAGES, "/console/catalogue", "/console/items"]
                    ],
                    _gets(
                        st.sampled_from([*_AUDITOR_PAGES, "/console/catalogue", "/console/items"]),
                        _FILTERS,
                    ),
                    15,
                ),
                Route(
                    partial(_page, subject, refusals=login_required),
                    [Probe("GET", p) for p in _AUDITOR_PAGES],
                    _gets(st.sampled_from(_AUDITOR_PAGES), _FILTERS),
                    5,
                ),
                Route(
                    partial(_static, anonymous),
                    _each_segment("/console/static/")
                    + [Probe("GET", f"/console/static/console.{x}") for x in ("css", "js")],
                    _gets(_segments("/console/static/"), []),
                    10,
                ),
                Route(
                    partial(_page, auditor, refusals=_BAD_QUERY),
                    # The text filters all go the same way; the sweep takes one of them.
                    _each_value(
                        "/console/audit", ["subject", "caller", "decision", "from", "to", "page"]
                    ),
                    _gets(st.just("/console/audit"), [*_FILTERS, "page"]),
                    40,
                ),
                Route(
                    partial(_entry, auditor),
                    _each_segment("/console/audit/entry/"),
                    _gets(_segments("/console/audit/entry/"), []),
                    20,
                ),
                Route(
                    partial(_export, auditor),
                    _each_segment("/console/audit/export.")
                    + _each_value("/console/audit/export.jsonl", ["caller", "from"]),
                    _gets(_segments("/console/audit/export."), _FILTERS),
                    20,
                ),
                Route(
                    partial(_page, auditor),
                    _each_value("/console/audit/verify", ["job"]),
                    _gets(st.just("/console/audit/verify"), ["job"]),
                    5,
                ),
                Route(
                    partial(_verify_status, auditor),
                    _each_value("/console/audit/verify/status", ["job"]),
                    _gets(st.just("/console/audit/verify/status"), ["job"]),
                    5,
                ),
                Route(
                    partial(_page, auditor, refusals=_BAD_QUERY),
                    _each_value("/console/audit/anomalies", ["from", "to"]),
                    _gets(st.just("/console/audit/anomalies"), ["from", "to"]),
                    30,
                ),
                Route(
                    partial(_page, auditor),
                    _each_value("/console/audit/volume", ["x"]),
                    _gets(st.just("/console/audit/volume"), []),
                    5,
                ),
                Route(
                    partial(_page, auditor, refusals=_BAD_QUERY),
                    _each_value("/console/catalogue", ["class", "keyword", "owner", "page"]),
                    _gets(st.just("/console/catalogue"), ["class", "keyword", "owner", "page"]),
                    30,
                ),
                Route(
                    partial(_page, auditor, refusals=_BAD_QUERY),
                    _each_value("/console/items", ["department", "page"]),
                    _gets(st.just("/console/items"), ["department", "page"]),
                    20,
                ),
                Route(
                    partial(
                        _page,
                        auditor,
                        refusals={**_BAD_QUERY, 404: {"DEPARTMENT_NOT_FOUND"}},
                    ),
                    _each_value("/console/supervision", ["department", "from", "to"]),
                    _gets(st.just("/console/supervision"), ["department", "from", "to"]),
                    20,
                ),
                Route(  # the cases behind a figure (logged views; tokens the node's)
                    partial(
                        _page,
                        auditor,
                        refusals={**_BAD_QUERY, 404: {"DEPARTMENT_NOT_FOUND"}},
                    ),
                    _each_value(
                        "/console/supervision/cases", ["kind", "department", "month", "page"]
                    )
                    + [  # with a kind, so that the other parameters are read
                        Probe("GET", p.path, f"kind=late&{p.query}")
                        for p in _each_value(
                            "/console/supervision/cases", ["department", "month", "page"]
                        )
                    ],
                    _gets(
                        st.just("/console/supervision/cases"),
                        ["kind", "department", "month", "page"],
                    ),
                    20,
                ),
                Route(
                    partial(_page, subject, refusals=_BAD_QUERY),
                    _each_value("/console/subject", ["page"]),
                    _gets(st.just("/console/subject"), ["page"]),
                    15,
                ),
                Route(  # a rating link (issue 16): garbage tokens open nothing
                    partial(_page, anonymous, refusals=_RATE_LINK),
                    _each_segment("/console/rate/"),
                    _gets(_segments("/console/rate/"), ["x"]),
                    10,
                ),
                Route(
                    partial(_console, anonymous, ok=(), refusals=_RATE_POST),
                    _each_segment("/console/rate/", method="POST")
                    + _each_body("/console/rate/" + "A" * 43, ["score", "comment"]),
                    _posts(_segments("/console/rate/"), ["score", "comment"]),
                    15,
                ),
                Route(  # the subject view's rating form
                    partial(_console, subject, refusals=_SUBJECT_RATE),
                    _each_body("/console/subject/rate", ["case", "score", "comment"]),
                    _posts(st.just("/console/subject/rate"), ["case", "score", "comment"]),
                    15,
                ),
                Route(  # hostile cookies and headers: no session, a page all the same
                    partial(_page, anonymous, refusals={401: {"LOGIN_REQUIRED", "LINK_REQUIRED"}}),
                    [
                        Probe(
                            "GET",
                            p,
                            headers=(
                                ("Cookie", f"tongban_session={c}; tongban_lang={c}"),
                                ("Accept-Language", c),
                            ),
                        )
                        for c in _COOKIES
                        for p in ("/console/audit", "/console/subject", "/console/")
                    ],
                    st.builds(
                        lambda c, path: Probe(
                            "GET",
                            path,
                            headers=(
                                ("Cookie", f"tongban_session={c}; tongban_lang={c}"),
                                ("Accept-Language", c),
                            ),
                        ),
                        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=99),
                        st.sampled_from(["/console/audit", "/console/subject", "/console/"]),
                    ),
                    10,
                ),
            ]
        )

        # Wrong methods: a page with the reason.
        for method, path in (
            ("PUT", "/console/verify"),
            ("DELETE", "/console/audit"),
            ("PATCH", "/console/link/login"),
            ("POST", "/console/catalogue"),
        ):
            _refused(await auditor.send(Probe(method, path)), {405: {"METHOD_NOT_ALLOWED"}})

        # Huge (1 MB) fields: read, then refused with their reason.
        mega = b"A" * 1_000_000
        _refused(await anonymous.form("/console/verify", qr=mega), {400: {"UPLOAD_UNREADABLE"}})
        for part in (
            ("qr", mega, None),
            ("file", mega, "a.txt"),
            ("file", b"%PDF-" + mega, "a.pdf"),
        ):
            answer = await anonymous.send(
                Probe("POST", "/console/verify", body=_multipart([part]), content_type=_MULTIPART)
            )
            _refused(answer, {400: {"UPLOAD_UNREADABLE"}})
        _refused(await anonymous.form("/console/link/login", token=mega), {403: {"LINK_INVALID"}})
        answer = await anonymous.form("/console/link/login", token=mega * 2)  # over 1 MiB
        _refused(answer, {413: {"PAYLOAD_TOO_LARGE"}})
        answer = await auditor.send(Probe("GET", "/console/audit", "caller=" + mega.decode()))
        assert answer.status == 400, answer
        assert "8190 bytes" in answer.body, answer

        # A bomb in a QR text: refused for its size, never inflated.
        answer = await anonymous.form("/console/verify", qr=_QR_BOMB.encode())
        assert answer.outcome() == ("unreadable", "format", "PAYLOAD_TOO_LARGE"), answer

        # Bytes no client library sends: the HTTP parser's 400, or a page.
        cookie = "; ".join(f"{c.key}={c.value}" for c in auditor_http.cookie_jar).encode()
        for request, expected in (
            (b"GET /console/link/\xff\xfe HTTP/1.1\r\n", 400),
            (b"GET /console/\xff HTTP/1.1\r\n", 400),
            (b"GET /console/audit?caller=\xff\xfe HTTP/1.1\r\nCookie: " + cookie + b"\r\n", 400),
            (b"GET /console/audit/entry/%D9%A3 HTTP/1.1\r\nCookie: " + cookie + b"\r\n", 400),
            (b"GET /console/audit/entry/%C2%B2 HTTP/1.1\r\nCookie: " + cookie + b"\r\n", 400),
            (b"GET /console/audit HTTP/1.1\r\nCookie: tongban_session=\xff\xfe.\xc3\r\n", 401),
            (
                b"POST /console/verify HTTP/1.1\r\nContent-Type: "
                + _MULTIPART.encode()
                + b"\r\nContent-Length: 30\r\n\r\n--XyZ\r\nContent-Disposition: fo",
                400,
            ),
        ):
            status, text = await _raw(
                node, request.replace(b"\r\n", b"\r\nHost: x\r\nConnection: close\r\n", 1) + b"\r\n"
            )
            assert status == expected, text

        # Verifying the log with a garbage form still starts it.
        answer = await auditor.send(
            Probe("POST", "/console/audit/verify", body=b"\xff\x00", content_type="text/plain")
        )
        assert answer.status == 303, answer
        await _healthy(anonymous)


# ---- altered licences -------------------------------------------------------------------------


@dataclass(frozen=True)
class Alteration:
    """One byte of a licence flipped (one bit of it), deleted, or a byte inserted."""

    position: int
    kind: str
    value: int

    def apply(self, data: bytes) -> bytes:
        at = self.position % len(data)
        if self.kind == "flip":
            return data[:at] + bytes([data[at] ^ (1 << (self.value % 8))]) + data[at + 1 :]
        if self.kind == "delete":
            return data[:at] + data[at + 1 :]
        return data[:at] + bytes([self.value]) + data[at:]


_KINDS = ("flip", "delete", "insert")


def _alterations(data: bytes, every: int) -> list[Alteration]:
    """A sweep: every ``every``-th position, the two ends and each separator's
    neighbours, each altered every way (inserting a byte of the alphabet, or a high one)."""
    positions = set(range(0, len(data), every)) | {0, 1, len(data) - 1}
    for i, byte in enumerate(data):
        if byte in b".~:":
            positions |= {i - 1, i, i + 1}
    return [
        Alteration(p, kind, value)
        for p in sorted(positions)
        for kind, value in zip(_KINDS, (p % 8, 0, b"A~.\xc3"[p % 4]), strict=True)
    ]


def _altered(data: bytes) -> st.SearchStrategy[Alteration]:
    return st.builds(
        Alteration, st.integers(0, len(data) - 1), st.sampled_from(_KINDS), st.integers(0, 255)
    )


def _inflated(qr: str) -> bytes | None:
    """The message in a QR text, or None if it has none."""
    inflater = zlib.decompressobj()
    try:
        message = inflater.decompress(b45decode(qr.removeprefix(QR_PREFIX)))
    except (zlib.error, LicenceFormatInvalid):
        return None
    return message if inflater.eof and not inflater.unused_data else None


def _same_licence(original: str, text: str) -> bool:
    """Whether altered ``text`` still carries the original's signed bytes: whitespace
    added at an end (verifiers strip it), or a QR whose deflate stream still inflates to
    the same message (a flipped padding bit of the last deflate byte)."""
    text = text.strip()
    if text == original:
        return True
    both_qr = text.startswith(QR_PREFIX) and original.startswith(QR_PREFIX)
    return both_qr and _inflated(text) is not None and _inflated(text) == _inflated(original)


async def _altered_text(sender: Sender, original: str, alteration: Alteration) -> None:
    """The altered licence text is refused by /verify and the console with a named
    check, unless the alteration left the signed bytes as they were."""
    text = alteration.apply(original.encode()).decode("utf-8", "surrogateescape")
    unchanged = _same_licence(original, text)
    answer = await sender.send(_json_probe({"qr": text}))
    page = await sender.form("/console/verify", qr=text.encode("utf-8", "surrogateescape"))
    if unchanged:
        assert answer.json()["verified"] is True, answer
        assert page.outcome()[0] == "valid", page
        return
    _unverified(answer)
    outcome, check, reason = page.outcome()
    assert outcome in ("forged", "unreadable"), page
    assert check in _REFUSED_CHECKS, page
    assert reason in _REFUSED, page


async def _altered_pdf(sender: Sender, original: bytes, alteration: Alteration) -> None:
    """An altered sealed PDF: the console reads its QR code (still valid if the damage
    missed it, unreadable otherwise), or says why it cannot; /verify, which takes QR
    text as JSON, refuses the PDF bytes for what they are."""
    data = alteration.apply(original)
    page = await sender.upload("/console/verify", data)
    if page.status == 200:
        assert page.outcome()[0] in ("valid", "forged", "unreadable"), page
    else:
        _refused(page, {400: {"UPLOAD_UNREADABLE"}})
    answer = await sender.send(Probe("POST", "/verify", body=data, content_type="application/pdf"))
    _refused(answer, {400: {"INVALID_ARGUMENT"}, 413: {"PAYLOAD_TOO_LARGE"}})


async def test_altered_licences_are_refused_with_a_named_reason(node: Node) -> None:
    async with client_for(node, "approval", "SP-0007") as approval:
        permit = await approval.issue_licence("food-business-permit", FOOD_PERMIT_CLAIMS)
        pdf = await approval.render_licence(permit.number)
    async with aiohttp.ClientSession() as http:
        s = Sender(node, http)
        # The originals verify, so that their alterations are a test of something.
        for text in (permit.qr, permit.sd_jwt):
            await _altered_text(s, text, Alteration(0, "insert", ord(" ")))
        page = await s.upload("/console/verify", pdf)
        assert page.outcome()[0] == "valid", page

        qr, sd_jwt = permit.qr.encode(), permit.sd_jwt.encode()
        await _exercise(
            [
                Route(partial(_altered_text, s, permit.qr), _alterations(qr, 9), _altered(qr), 40),
                Route(
                    partial(_altered_text, s, permit.sd_jwt),
                    _alterations(sd_jwt, 41),
                    _altered(sd_jwt),
                    40,
                ),
                Route(
                    partial(_altered_pdf, s, pdf),
                    # The header, the middle, and the end (%%EOF); each costs a rendering.
                    [
                        Alteration(1, "flip", 0),
                        Alteration(len(pdf) // 2, "insert", 0x55),
                        Alteration(len(pdf) - 3, "delete", 0),
                    ],
                    _altered(pdf),
                    3,
                ),
            ]
        )
        truncated = await s.upload("/console/verify", pdf[: len(pdf) // 2])
        _refused(truncated, {400: {"UPLOAD_UNREADABLE"}})
        await _healthy(s)
