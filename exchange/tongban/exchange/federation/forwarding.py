"""Queries across exchanges, one hop (docs/federation.md, "Forwarded queries").

The calling side (``Forwarding.query``): a department of ours asks for a remote dataset
(``<peer>:<code>``); we log the outgoing request, forward it to the peer signed by our
node (a JWS with the original department, officer, purpose, case, a nonce and a time
window), and log the receipt with the peer's log index. We never decide for the owner.

The owner's side (``Forwarding.answer``): the request must be signed by a node of the
exchange whose node called, inside its window, with a nonce not seen before; then the
owner's policy (``sharing.policy.decide``, through ``Sharing.decide``) decides for the
remote department ``<peer>/<department>``, the decision is logged under that name, and
only the allowed fields are answered.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Protocol, Self, TypeVar

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from google.protobuf.timestamp_pb2 import Timestamp

from tongban.client.answers import verify_answer
from tongban.errors import TongbanError
from tongban.exchange.audit.log import AccessLog, SubjectHasher
from tongban.exchange.audit.recorder import AccessRecorder, Outcome
from tongban.exchange.catalogue.canonical import canonical_json
from tongban.exchange.catalogue.subject_ids import SubjectKind, validate_subject_id
from tongban.exchange.datadir import NodeSigning
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.federation.entries import (
    chain_root,
    node_signing_certificate,
    owner_entry_root,
)
from tongban.exchange.federation.errors import (
    PeerAnswerUnsigned,
    PeerNotOwner,
    PeerRequestAltered,
    PeerRequestExpired,
    PeerRequestInvalid,
    PeerRequestReplayed,
    PeerRouteLoop,
    PeerSignatureMismatch,
    PeerTooManyHops,
    PeerUnavailable,
    PeerUnknown,
)
from tongban.exchange.federation.links import PeerLinks, PeerRefusal
from tongban.exchange.federation.offer import CatalogueOffer
from tongban.exchange.federation.peers import Peer, peer_ca
from tongban.exchange.federation.remote import RemoteCatalogue
from tongban.exchange.federation.routing import Routes
from tongban.exchange.federation.trust import PeerTrust
from tongban.exchange.identity import Caller
from tongban.exchange.sharing.errors import DatasetNotFound, QueryDenied
from tongban.exchange.sharing.model import DatasetEntry
from tongban.exchange.sharing.policy import Denied, QueryIntent
from tongban.exchange.sharing.service import (
    AnsweredRecord,
    QueryInput,
    QueryResult,
    Sharing,
    signable_records,
)
from tongban.signing.certs import certificate_fingerprint, certificate_pem
from tongban.signing.clock import Clock
from tongban.signing.jose import sign_jws, verify_jws
from tongban.v1 import federation_pb2, values_pb2
from tongban.wire.values import from_field_value, to_field_value

__all__ = [
    "DEPARTMENT",
    "NONCE",
    "OFFICER",
    "QUERY",
    "REQUEST_TYPE",
    "Addressed",
    "Carried",
    "ForwardedQuery",
    "Forwarding",
    "RequestKind",
    "carried_members",
    "carried_payload",
    "carried_route",
    "carry_on",
    "check_addressed",
    "check_signed_answer",
    "instant",
    "peer_department",
    "receive",
    "sign_claims",
    "sign_request",
    "verify_chain",
    "verify_peer_signed",
    "verify_request",
]

REQUEST_TYPE = "tongban-forwarded-query+jws"
SKEW = timedelta(seconds=30)
"""Clock difference tolerated between two exchanges' nodes."""
MAX_LIFETIME = timedelta(hours=1)
"""The longest window a forwarded request may claim, whatever the caller's setting."""
MAX_KEYS = 1000
OFFICER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}")
"""An officer id as a signed request may name it."""
DEPARTMENT = re.compile(r"[a-z][a-z0-9-]{1,62}")
"""A department code (or an exchange's name for a peer) in a signed request."""
NONCE = re.compile(r"[0-9a-f]{32}")
"""A signed request's nonce: 16 random bytes in hex."""
_PURGE_EVERY = 60.0
MAX_CHAIN = 8
"""The most requests one forwarded request may embed, whatever the settings."""


@dataclass(frozen=True)
class ForwardedQuery:
    """What a department of the calling exchange asked, as its node signed it."""

    exchange: str
    """Hex SHA-256 of the calling exchange's root."""
    audience: str
    """Hex SHA-256 of the owner exchange's root."""
    department: str
    officer: str | None
    purpose: str
    case_id: str
    dataset: str
    """The owner exchange's code (no peer prefix)."""
    fields: tuple[str, ...]
    keys: tuple[str, ...]
    nonce: str
    issued_at: datetime
    expires_at: datetime
    route: tuple[str, ...] = ()
    """For a request a middle exchange carries on: its names of the exchanges behind it,
    nearest first (``("county-a",)``); the department is of the last one."""
    previous: str | None = None
    """For a carried request: the signed request it carries on, as the middle exchange
    received it (which may carry another)."""
    sign: bool = False
    """Whether the department asked for the owner's signed answer."""
    as_of: datetime | None = None
    """The instant the records are asked as of (None: as they stand)."""

    @property
    def department_path(self) -> tuple[str, ...]:
        """The route and the department: ``("county-a", "approval")``."""
        return (*self.route, self.department)

    def carries(self, embedded: ForwardedQuery) -> bool:
        """The same officer, purpose, case, fields, signing and ``as_of``, and the keys
        or fewer."""
        return (
            (self.officer, self.purpose, self.case_id, self.sign, self.as_of, self.fields)
            == (embedded.officer, embedded.purpose, embedded.case_id, embedded.sign,
                embedded.as_of, embedded.fields)
            and set(self.keys) <= set(embedded.keys)
        )  # fmt: skip

    def payload(self) -> dict[str, object]:
        carried = carried_payload(self)
        # "sign" and "as_of" only when asked, so a request without them reads as before.
        signed: dict[str, object] = {"sign": True} if self.sign else {}
        if self.as_of is not None:
            signed["as_of"] = instant(self.as_of)
        return (
            carried
            | signed
            | {
                "v": 1,
                "exchange": self.exchange,
                "audience": self.audience,
                "department": self.department,
                "officer": self.officer,
                "purpose": self.purpose,
                "case_id": self.case_id,
                "dataset": self.dataset,
                "fields": list(self.fields),
                "keys": list(self.keys),
                "nonce": self.nonce,
                "issued_at": instant(self.issued_at),
                "expires_at": instant(self.expires_at),
            }
        )


def instant(at: datetime) -> str:
    """``at`` as a signed request writes it (UTC, ``Z``)."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def sign_request(request: ForwardedQuery, signing: NodeSigning) -> str:
    """The compact JWS of ``request`` by the calling node's signing key."""
    return sign_claims(request.payload(), signing, REQUEST_TYPE)


def sign_claims(payload: Mapping[str, object], signing: NodeSigning, typ: str) -> str:
    """A compact JWS of type ``typ`` over the canonical JSON of ``payload`` by this node's
    signing key, its chain in ``x5c``: how a node signs what it sends a peer."""
    x5c = [base64.b64encode(c.public_bytes(Encoding.DER)).decode() for c in signing.chain]
    return sign_jws(
        canonical_json(dict(payload)),
        signing.signer,
        headers={"typ": typ, "x5c": x5c},
    )


def verify_request(token: str, *, peer: Peer, own_exchange: bytes, now: datetime) -> ForwardedQuery:
    """The request in ``token``, sent over a connection of peer ``peer``, checked.

    Raises PeerSignatureMismatch unless a node signing certificate of ``peer``'s root
    signed it for us as ``peer``'s exchange; PeerRequestExpired outside its window
    (``SKEW`` tolerated); PeerRequestInvalid if malformed.
    """
    claimed = verify_peer_signed(token, peer=peer, typ=REQUEST_TYPE, now=now)
    request = _request(claimed)
    check_addressed(
        request, peer=peer, own_exchange=own_exchange, now=now, what="forwarded request"
    )
    return request


class Addressed(Protocol):
    """What every signed request between exchanges names: who sends it, to whom, its
    nonce and its window."""

    @property
    def exchange(self) -> str: ...
    @property
    def audience(self) -> str: ...
    @property
    def nonce(self) -> str: ...
    @property
    def issued_at(self) -> datetime: ...
    @property
    def expires_at(self) -> datetime: ...


def check_addressed(
    request: Addressed, *, peer: Peer, own_exchange: bytes, now: datetime, what: str
) -> None:
    """Raise PeerSignatureMismatch unless ``request`` names ``peer``'s exchange as its
    sender and ours as its audience; PeerRequestExpired if it claims a window longer
    than ``MAX_LIFETIME`` or ``now`` lies outside it (``SKEW`` tolerated). ``what``
    names the request in the messages ("forwarded request", "grant request", ...)."""
    if request.exchange != peer.ca_fingerprint.hex() or request.audience != own_exchange.hex():
        raise PeerSignatureMismatch(
            f"The {what} names another exchange than peer {peer.name} or than us.",
            metadata={"peer": peer.name},
        )
    if request.expires_at - request.issued_at > MAX_LIFETIME:
        raise PeerRequestExpired(
            f"A {what} may be valid for at most {MAX_LIFETIME}; ask the peer's operator to "
            "shorten TONGBAN_PEER_REQUEST_SECONDS.",
            metadata={"peer": peer.name},
        )
    if not request.issued_at - SKEW <= now <= request.expires_at + SKEW:
        raise PeerRequestExpired(
            f"The {what} is valid from {instant(request.issued_at)} to "
            f"{instant(request.expires_at)}, not at {instant(now)}; check both exchanges' "
            "clocks.",
            metadata={"peer": peer.name},
        )


async def admit(
    request: Addressed,
    *,
    peer: Peer,
    own_exchange: bytes,
    now: datetime,
    what: str,
    first_use: Callable[[Peer, str, datetime], Awaitable[bool]],
) -> None:
    """``check_addressed``, then the nonce: PeerRequestReplayed if ``first_use`` (the
    node's one nonce table, ``Forwarding.first_use``) has seen it from that peer."""
    check_addressed(request, peer=peer, own_exchange=own_exchange, now=now, what=what)
    if not await first_use(peer, request.nonce, request.expires_at):
        raise PeerRequestReplayed(
            f"This {what} (nonce {request.nonce}) was already received; a peer signs each "
            "request once.",
            metadata={"peer": peer.name},
        )


def verify_peer_signed(token: str, *, peer: Peer, typ: str, now: datetime) -> dict[str, Any]:
    """The claims of ``token``, a compact JWS of type ``typ`` signed by a node of peer
    ``peer`` (under its root as configured here). Raises PeerRequestInvalid (malformed,
    another type) or PeerSignatureMismatch."""
    header, claimed = _parts(token)
    try:
        leaf = node_signing_certificate(header, roots=[peer_ca(peer)], now=now)
        verify_jws(token, leaf.public_key())  # type: ignore[arg-type]
    except (TongbanError, ValueError, TypeError, binascii.Error) as e:
        raise PeerSignatureMismatch(
            f"The forwarded request is not signed by a node of peer {peer.name}, whose node "
            "sent it; an exchange forwards only its own departments' requests.",
            metadata={"peer": peer.name},
        ) from e
    if header.get("typ") != typ:
        raise PeerRequestInvalid(f"The signed object is not a {typ} request.")
    return claimed


class Carried(Addressed, Protocol):
    """A signed request a middle exchange may carry on: besides what ``Addressed`` names,
    the dataset (in the receiver's names), the department, the route of exchanges
    behind the sender and the request it carries (``previous``)."""

    @property
    def dataset(self) -> str: ...
    @property
    def department(self) -> str: ...
    @property
    def route(self) -> tuple[str, ...]: ...
    @property
    def previous(self) -> str | None: ...
    def carries(self, embedded: Self) -> bool:
        """Whether this request, made by a middle exchange, asks what ``embedded`` asked
        of it (beyond the route, dataset and window, which ``verify_chain`` checks)."""
        ...


R = TypeVar("R", bound=Carried)


@dataclass(frozen=True)
class RequestKind(Generic[R]):
    """One kind of signed request between exchanges: its JWS ``typ`` and how its claims
    are read (raising PeerRequestInvalid for a malformed one)."""

    typ: str
    parse: Callable[[Mapping[str, Any]], R]


def carried_route(claimed: Mapping[str, Any]) -> tuple[tuple[str, ...], str | None]:
    """The ``route`` and ``previous`` of a signed request's claims (empty and None for a
    request of the sender's own department). Raises ValueError if malformed."""
    route, previous = claimed.get("route", []), claimed.get("previous")
    if not (
        isinstance(route, list)
        and len(route) <= MAX_CHAIN
        and all(isinstance(n, str) and DEPARTMENT.fullmatch(n) for n in route)
        and (previous is None or isinstance(previous, str))
        and (previous is None) == (not route)
    ):
        raise ValueError("a route is malformed")
    return tuple(route), previous


def carried_members(claimed: Mapping[str, Any], *, max_text: int) -> dict[str, Any]:
    """The members every signed request between exchanges carries, read and checked, as
    keyword arguments of the request's class: ``route``, ``previous``, ``exchange``,
    ``audience``, ``department``, ``officer``, ``nonce``, ``issued_at`` and
    ``expires_at``. ``max_text`` bounds the exchange and audience. Each kind reads its
    own members beside these. Raises KeyError, TypeError or ValueError for a missing or
    malformed one."""
    exchange, audience, department, officer, nonce = (
        claimed[k] for k in ("exchange", "audience", "department", "officer", "nonce")
    )
    if not all(isinstance(text, str) for text in (exchange, audience, department, nonce)):
        raise TypeError("a text member is not a string")
    if not (
        len(exchange) <= max_text
        and len(audience) <= max_text
        and DEPARTMENT.fullmatch(department)
        and NONCE.fullmatch(nonce)
        and (officer is None or (isinstance(officer, str) and OFFICER.fullmatch(officer)))
    ):
        raise ValueError("a member is malformed")
    issued_at = datetime.fromisoformat(claimed["issued_at"])
    expires_at = datetime.fromisoformat(claimed["expires_at"])
    if issued_at.tzinfo is None or expires_at.tzinfo is None:
        raise ValueError("an instant has no time zone")
    route, previous = carried_route(claimed)
    return {
        "route": route, "previous": previous, "exchange": exchange, "audience": audience,
        "department": department, "officer": officer, "nonce": nonce,
        "issued_at": issued_at, "expires_at": expires_at,
    }  # fmt: skip


def carried_payload(request: Carried) -> dict[str, object]:
    """The ``route`` and ``previous`` members of a carried request's payload (none for a
    request of the sender's own department, so that one reads as before routing)."""
    if request.previous is None:
        return {}
    return {"route": list(request.route), "previous": request.previous}


def verify_chain(
    request: R, *, kind: RequestKind[R], own_exchange: bytes, now: datetime, max_hops: int
) -> tuple[R, ...]:
    """The requests ``request`` embeds, checked, nearest first (empty for a request made
    by the calling exchange's own department). One check for every kind of request a
    middle exchange carries (queries, grant requests, subscriptions).

    Each embedded request must be of ``kind``, signed by a node of the root its own
    ``x5c`` carries, that root must be the exchange it names, it must be addressed to the
    exchange that carried it on, and the carrier must ask what it asked (the same
    department behind one more name, the same dataset behind one more name, a window no
    later, and what ``Carried.carries`` compares): PeerSignatureMismatch,
    PeerRequestAltered otherwise. Raises PeerRouteLoop if the chain passed through us or
    one exchange twice, PeerTooManyHops past ``max_hops``, PeerRequestExpired outside a
    window.
    """
    chain: list[R] = []
    carrier = request
    while carrier.previous is not None:
        if len(chain) + 1 >= max_hops:
            raise PeerTooManyHops(
                f"The request has crossed more than {max_hops} links between exchanges, "
                "the most this exchange answers or carries.",
                metadata={"max_hops": str(max_hops)},
            )
        embedded = _embedded(carrier.previous, kind)
        _same_ask(carrier, embedded)
        if not embedded.issued_at - SKEW <= now <= embedded.expires_at + SKEW:
            raise PeerRequestExpired(
                f"The request this one carries was valid until {instant(embedded.expires_at)}"
                f", not at {instant(now)}."
            )
        chain.append(embedded)
        carrier = embedded
    seen = [own_exchange.hex(), request.exchange, *(r.exchange for r in chain)]
    if len(set(seen)) != len(seen):
        raise PeerRouteLoop(
            "The request has already passed through this exchange, or one exchange twice; "
            "a route never loops."
        )
    return tuple(chain)


async def receive(
    token: str,
    *,
    kind: RequestKind[R],
    peer: Peer,
    own_exchange: bytes,
    now: datetime,
    max_hops: int,
    what: str,
    first_use: Callable[[Peer, str, datetime], Awaitable[bool]],
) -> tuple[R, tuple[R, ...]]:
    """A signed request of ``kind`` that peer ``peer`` sent (its own department's, or one
    it carries), checked in full: a node of ``peer`` signed it (``verify_peer_signed``),
    the requests it embeds (``verify_chain``), then its audience, window and nonce
    (``admit``). Returns it and the requests it embeds, nearest first. Raises what those
    raise."""
    request = kind.parse(verify_peer_signed(token, peer=peer, typ=kind.typ, now=now))
    chain = verify_chain(request, kind=kind, own_exchange=own_exchange, now=now, max_hops=max_hops)
    await admit(
        request, peer=peer, own_exchange=own_exchange, now=now, what=what, first_use=first_use
    )
    return request, chain


def carry_on(
    request: R,
    *,
    token: str,
    sender: Peer,
    onward: Peer,
    own_exchange: bytes,
    nonce: str,
    now: datetime,
    lifetime: timedelta,
    **changes: object,
) -> R:
    """``request``, which peer ``sender`` sent us as ``token``, as we carry it on to
    ``onward``: from our exchange, addressed to ``onward``'s, with a fresh nonce, a window
    no later than the sender's, the sender's name added to its route, and ``token``
    embedded (``previous``). ``changes`` names what it asks for in ``onward``'s names (the
    dataset, the grant, the listing). Unsigned: the caller signs it with its kind's type.
    """
    carried: R = replace(
        request,  # type: ignore[type-var]  # every kind of Carried request is a dataclass
        exchange=own_exchange.hex(),
        audience=onward.ca_fingerprint.hex(),
        nonce=nonce,
        issued_at=now,
        expires_at=min(now + lifetime, request.expires_at),
        route=(sender.name, *request.route),
        previous=token,
        **changes,
    )
    return carried


def _embedded(token: str, kind: RequestKind[R]) -> R:
    header, claimed = _parts(token)
    request = kind.parse(claimed)
    altered = PeerSignatureMismatch(
        "A request carried by a middle exchange is not signed by a node of the exchange it "
        "names: it was altered on the way."
    )
    try:
        root = chain_root(header)
        leaf = node_signing_certificate(header, roots=[root], now=request.issued_at)
        verify_jws(token, leaf.public_key())  # type: ignore[arg-type]
    except (TongbanError, ValueError, TypeError, binascii.Error) as e:
        raise altered from e
    if certificate_fingerprint(root).hex() != request.exchange:
        raise altered
    if header.get("typ") != kind.typ:
        raise PeerRequestInvalid(
            "A carried object is not of the kind of the request that carries it."
        )
    return request


def _same_ask(carrier: R, embedded: R) -> None:
    """Raise PeerRequestAltered unless ``carrier`` asks what ``embedded`` asked of it."""
    same = (
        embedded.audience == carrier.exchange
        and carrier.route[1:] == embedded.route
        and carrier.department == embedded.department
        and embedded.dataset.endswith(":" + carrier.dataset)
        and carrier.expires_at <= embedded.expires_at + SKEW
        and carrier.carries(embedded)
    )
    if not same:
        raise PeerRequestAltered(
            "A middle exchange's request does not ask what the request it carries asked "
            "(department, officer, purpose, case, fields, keys, dataset, signing, as_of, "
            "legal basis, expiry or position differ).",
        )


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    parts = token.split(".")
    if len(parts) != 3 or len(token) > 1024 * 1024:
        raise PeerRequestInvalid("The forwarded request is not a compact JWS.")
    try:
        header = json.loads(_b64(parts[0]))
        claimed = json.loads(_b64(parts[1]))
    except (ValueError, binascii.Error) as e:
        raise PeerRequestInvalid("The forwarded request is not a compact JWS.") from e
    if not isinstance(header, dict) or not isinstance(claimed, dict) or claimed.get("v") != 1:
        raise PeerRequestInvalid("The forwarded request is of an unknown form.")
    return header, claimed


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _request(claimed: Mapping[str, Any]) -> ForwardedQuery:
    try:
        return _members(claimed)
    except (KeyError, TypeError, ValueError) as e:
        raise PeerRequestInvalid(
            "The forwarded request lacks a member or holds a malformed one."
        ) from e


QUERY = RequestKind(REQUEST_TYPE, _request)
"""Forwarded queries, as a middle exchange carries them."""


_MAX_TEXT = 2000
"""The longest exchange or audience a forwarded query may name (both are fingerprints)."""


def _members(claimed: Mapping[str, Any]) -> ForwardedQuery:
    """Raises KeyError, TypeError or ValueError for a missing or malformed member."""
    members = carried_members(claimed, max_text=_MAX_TEXT)
    if not all(isinstance(claimed[k], str) for k in ("purpose", "case_id", "dataset")):
        raise TypeError("a text member is not a string")
    fields, keys = claimed["fields"], claimed["keys"]
    if not (
        isinstance(fields, list)
        and all(isinstance(f, str) for f in fields)
        and isinstance(keys, list)
        and all(isinstance(k, str) for k in keys)
        and len(keys) <= MAX_KEYS
    ):
        raise ValueError("a member is malformed")
    sign = claimed.get("sign", False)
    if not isinstance(sign, bool):
        raise TypeError("sign is not a boolean")
    as_of_text = claimed.get("as_of")
    as_of = None if as_of_text is None else datetime.fromisoformat(as_of_text)
    if as_of is not None and as_of.tzinfo is None:
        raise ValueError("as_of has no time zone")
    return ForwardedQuery(
        **members,
        purpose=claimed["purpose"],
        case_id=claimed["case_id"],
        dataset=claimed["dataset"],
        fields=tuple(fields),
        keys=tuple(keys),
        sign=sign,
        as_of=as_of,
    )


def check_signed_answer(
    answer: federation_pb2.ForwardQueryResponse,
    *,
    root: x509.Certificate,
    now: datetime,
    dataset: DatasetEntry,
    fields: Sequence[str],
    purpose: str,
    case_id: str,
    records: Sequence[AnsweredRecord],
    missing_keys: Sequence[str],
) -> dict[str, Any]:
    """The owner's signed answer in ``answer``, checked before we pass it on: a node of
    the owner's exchange (under ``root``) signed it, and it says what the answer says
    (dataset, purpose, case, fields, the ``records`` and ``missing_keys`` we return).
    Raises PeerAnswerUnsigned otherwise."""
    if not answer.signature or not answer.signed_payload:
        raise PeerAnswerUnsigned(
            "The owner exchange answered without the signature that was asked for; the "
            "answer was not used."
        )
    try:
        signed = verify_answer(
            answer.signed_payload, answer.signature, ca_pem=certificate_pem(root), now=now
        )
    except TongbanError as e:
        raise PeerAnswerUnsigned(
            f"The owner exchange's signature over its answer does not verify ({e.message}); "
            "the answer was not used."
        ) from e
    ours = json.loads(
        canonical_json(
            signable_records(
                dataset,
                [replace(r, values={n: r.values.get(n) for n in fields}) for r in records],
            )
        )
    )
    says = (
        signed.get("dataset") == dataset.code
        and signed.get("purpose") == purpose
        and signed.get("case_id") == case_id.strip()
        and isinstance(signed.get("fields"), list)
        and set(signed["fields"]) == set(fields)
        and isinstance(signed.get("missing_keys"), list)
        and set(signed["missing_keys"]) >= set(missing_keys)
        and _by_key(signed.get("records")) == _by_key(ours)
    )
    if not says:
        raise PeerAnswerUnsigned(
            "The owner exchange's signed answer says something else than the answer it "
            "sent (dataset, purpose, case, fields or records differ); the answer was not used."
        )
    return signed


def _by_key(records: object) -> dict[str, object] | None:
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        return None
    return {str(r.get("key")): r for r in records}


def peer_department(peer: Peer, department: str, route: Sequence[str] = ()) -> str:
    """Our name for a department peer ``peer``'s node names in an unsigned request over
    its link (an acknowledgement, a listing), behind the exchanges ``route`` (the peer's
    names, nearest first) when the peer asks for an exchange behind it: InvalidArgument
    if the department or a name of the route is not a code, or the route is too long."""
    if not DEPARTMENT.fullmatch(department):
        raise InvalidArgument(
            "department is not a department code.", metadata={"field": "department"}
        )
    if len(route) > MAX_CHAIN or not all(DEPARTMENT.fullmatch(name) for name in route):
        raise InvalidArgument(
            f"route names at most {MAX_CHAIN} exchanges, each by a peer's name.",
            metadata={"field": "route"},
        )
    return remote_department(peer.name, *route, department)


def remote_department(peer: str, *path: str) -> str:
    """How we name a peer's department: ``<peer>/<department>``, or with the route of
    exchanges between (``city/county-a/approval``)."""
    return "/".join((peer, *path))


class Forwarding:
    """Both sides of a forwarded query; see the module docstring."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        trust: PeerTrust,
        links: PeerLinks,
        remote: RemoteCatalogue,
        offer: CatalogueOffer,
        routes: Routes,
        sharing: Sharing,
        access_log: AccessLog,
        hasher: SubjectHasher,
        signing: NodeSigning,
        node_name: str,
        clock: Clock,
        request_seconds: float,
        nonce: Callable[[], str] = lambda: secrets.token_hex(16),
    ) -> None:
        self._pool = pool
        self._trust = trust
        self._links = self.links = links
        self._remote = remote
        self._offer = offer
        self.routes = routes
        """Routing over several hops (the peer service offers relayed entries with it)."""
        self._sharing = sharing
        self._log = access_log
        self._recorder = AccessRecorder(node_name, hasher)
        self._signing = signing
        self._clock = clock
        self._lifetime = timedelta(seconds=request_seconds)
        self._nonce = nonce
        self._purged_at = 0.0

    # -- the calling side ---------------------------------------------------------------

    async def query(self, caller: Caller, q: QueryInput) -> QueryResult:
        """Answer ``q`` for a remote dataset ``<peer>:<code>`` by asking its owner's
        exchange; raise the owner's refusal (its reason), PeerUnknown, DatasetNotFound,
        PeerUnavailable or PeerNotOwner. Every outcome is in our log first."""
        now = self._clock.now()
        peer_name, _, code = q.dataset.partition(":")
        if q.as_of is not None and q.as_of.tzinfo is None:
            raise InvalidArgument("as_of must carry a time zone.", metadata={"field": "as_of"})

        async def log(
            keys: Sequence[str], action: str, decision: Outcome, reason: str | None
        ) -> None:
            await self._log.append(
                self._recorder.entries(
                    keys,
                    at=self._clock.now(),
                    department=caller.department.code,
                    officer=caller.officer_id,
                    action=action,
                    decision=decision,
                    reason=reason,
                    dataset=q.dataset[:200],
                    fields=q.fields,
                    purpose=q.purpose,
                    case_id=q.case_id,
                )
            )

        try:
            peer = await self._trust.active_peer(peer_name)
        except PeerUnknown:
            await log([], "query.forward", "denied", PeerUnknown.reason)
            raise
        entry = await self._remote.get(peer, code, now=now)
        if entry is None:
            await log([], "query.forward", "denied", DatasetNotFound.reason)
            raise DatasetNotFound(
                f"Peer {peer.name} offers no dataset {code[:100]!r}; check the remote catalogue."
            )
        try:
            keys = _keys(entry.subject_kind, q.keys)
        except TongbanError as e:
            await log([], "query.forward", "denied", e.reason)
            raise
        await log(keys, "query.forward", "allowed", f"peer:{peer.name}")
        request = ForwardedQuery(
            exchange=self._trust.own_fingerprint.hex(),
            audience=peer.ca_fingerprint.hex(),
            department=caller.department.code,
            officer=caller.officer_id,
            purpose=q.purpose,
            case_id=q.case_id,
            dataset=code,
            fields=tuple(q.fields),
            keys=tuple(keys),
            nonce=self._nonce(),
            issued_at=now,
            expires_at=now + self._lifetime,
            sign=q.sign,
            as_of=q.as_of,
        )
        token = sign_request(request, self._signing)
        try:
            answer = await self._links.call(
                peer,
                f"a query of {code}",
                lambda timeout: self._links.stub(peer).ForwardQuery(
                    federation_pb2.ForwardQueryRequest(request=token), timeout=timeout
                ),
            )
        except PeerRefusal as e:
            index = e.metadata.get("log_index")
            where = f"; log:{index}" if index else ""
            await log(keys, "query.receipt", "denied", f"{e.reason}; peer:{peer.name}{where}")
            raise
        except PeerUnavailable as e:
            index = e.metadata.get("log_index")
            where = f"; log:{index}" if index else ""
            await log(keys, "query.receipt", "denied", f"{e.reason}; peer:{peer.name}{where}")
            raise
        if answer.dataset != code:
            await log(keys, "query.receipt", "denied", f"{PeerNotOwner.reason}; peer:{peer.name}")
            raise PeerNotOwner(
                f"Peer {peer.name} answered for {answer.dataset[:100]!r}, not {code}.",
                metadata={"peer": peer.name},
            )
        asked, fields = set(keys), tuple(dict.fromkeys(q.fields))
        records = [
            AnsweredRecord(
                key=r.key,
                version=r.version,
                valid_from=r.valid_from.ToDatetime(tzinfo=UTC),
                # Only what was asked, whatever the peer sent (minimum fields).
                values={n: from_field_value(r.fields[n]) for n in fields if n in r.fields},
            )
            for r in answer.records
            if r.key in asked
        ]
        missing = [k for k in answer.missing_keys if k in asked]
        signer_root = b""
        if q.sign:
            try:
                root = await self._owner_root(peer, code, now)
                check_signed_answer(
                    answer, root=root, now=now, dataset=entry, fields=fields, purpose=q.purpose,
                    case_id=q.case_id, records=records, missing_keys=missing,
                )  # fmt: skip
            except PeerAnswerUnsigned as e:
                await log(keys, "query.receipt", "denied", f"{e.reason}; peer:{peer.name}")
                raise
            signer_root = certificate_pem(root)
        await log(keys, "query.receipt", "allowed", f"peer:{peer.name}; log:{answer.log_index}")
        return QueryResult(
            entry=replace(entry, code=q.dataset, version=answer.dataset_version or entry.version),
            records=records,
            missing_keys=missing,
            answered_at=answer.answered_at.ToDatetime(tzinfo=UTC),
            signed_payload=answer.signed_payload if q.sign else b"",
            signature=answer.signature if q.sign else "",
            signature_sm2=answer.signature_sm2 if q.sign else "",
            signer_root=signer_root,
        )

    async def _owner_root(self, peer: Peer, code: str, now: datetime) -> x509.Certificate:
        """The root CA of the exchange that owns ``code`` as ``peer`` offers it: the peer's
        own root for its own dataset; for a relayed one, the root in the owner's signed
        entry, whose fingerprint the relayed entry names (``path``): we trust the relay's
        word for it, as we trust it to carry the query."""
        remote = await self._remote.get_remote(peer, code, now=now)
        if remote is None or not remote.route:
            return peer_ca(peer)
        root = owner_entry_root(remote)
        if certificate_fingerprint(root).hex() != remote.path[-1]:
            raise PeerAnswerUnsigned(
                f"The entry peer {peer.name} relayed for {code[:100]} names an owner whose "
                "root it does not carry, so its signed answer cannot be checked.",
                metadata={"peer": peer.name},
            )
        return root

    # -- the owner's side ---------------------------------------------------------------

    async def answer(self, peer: Peer, token: str) -> federation_pb2.ForwardQueryResponse:
        """Decide and answer a request peer ``peer`` forwarded; raise the refusal (with our
        log index in its metadata when it was logged)."""
        now = self._clock.now()
        try:
            request = verify_request(
                token, peer=peer, own_exchange=self._trust.own_fingerprint, now=now
            )
        except TongbanError as e:
            # Who asked cannot be trusted here: the entry names the calling exchange only.
            raise await self._logged(e, peer.name, None, None, [], now) from None
        caller = remote_department(peer.name, *request.department_path)
        intent = QueryIntent(
            caller, request.dataset, request.fields, request.purpose, request.case_id
        )
        try:
            chain = verify_chain(
                request,
                kind=QUERY,
                own_exchange=self._trust.own_fingerprint,
                now=now,
                max_hops=self.routes.max_hops,
            )
        except TongbanError as e:
            raise await self._logged(e, caller, request, intent, [], now) from None
        if not await self._first_use(peer, request):
            raise await self._logged(
                PeerRequestReplayed(
                    f"This forwarded request (nonce {request.nonce}) was already answered; "
                    "a peer signs each request once.",
                    metadata={"peer": peer.name},
                ),
                caller, request, intent, [], now,
            )  # fmt: skip
        if ":" in request.dataset:
            return await self._carry(peer, token, request, chain, caller, intent, now)
        entry = await self._offer.offers(peer.name, request.dataset)
        keys: list[str] = []
        if entry is not None:
            try:
                keys = _keys(entry.subject_kind, request.keys)
            except TongbanError as e:
                raise await self._logged(e, caller, request, intent, [], now) from None
        decision = await self._sharing.decide(intent, entry, now)
        if isinstance(decision, Denied):
            raise await self._logged(
                QueryDenied.from_decision(decision), caller, request, intent, keys, now
            )
        assert entry is not None
        found = await self._sharing.records.fetch(entry.code, keys, request.as_of)
        indices = await self._log.append(
            self._entries(
                caller, request, intent, keys, now, "allowed", decision.grounds(),
                decision.fields,
            )
        )  # fmt: skip
        response = federation_pb2.ForwardQueryResponse(
            dataset=entry.code,
            dataset_version=entry.version,
            records=[_record(found[k], entry, decision.fields) for k in keys if k in found],
            missing_keys=[k for k in keys if k not in found],
            answered_at=_timestamp(now),
            log_index=indices.start,
            log_entries=len(indices),
        )
        if request.sign:
            # Signed for the remote department by name, as our own answers are for ours.
            answered = [
                AnsweredRecord(r.key, r.version, r.valid_from, r.values(entry, decision.fields))
                for r in (found[k] for k in keys if k in found)
            ]
            signed = self._sharing.sign_answer(
                QueryResult(entry, answered, list(response.missing_keys), now),
                caller, intent, decision.fields,
            )  # fmt: skip
            response.signed_payload = signed.signed_payload
            response.signature = signed.signature
            response.signature_sm2 = signed.signature_sm2
        return response

    # -- a middle exchange ----------------------------------------------------------------

    async def _carry(
        self,
        peer: Peer,
        token: str,
        request: ForwardedQuery,
        chain: Sequence[ForwardedQuery],
        caller: str,
        intent: QueryIntent,
        now: datetime,
    ) -> federation_pb2.ForwardQueryResponse:
        """Carry ``request`` (of ``<next peer>:<code>`` in our names; ``chain``, the
        requests it embeds, checked) to the next exchange, signed by us and embedding
        ``token``; log it going out and the answer coming back under the remote identity
        ``caller``. We decide nothing about the data: only whether we carry it
        (``Routes.onward``: an active peer offered it, within our hops, no loop)."""
        try:
            onward, remote = await self.routes.onward(
                peer, request.dataset, passed=[request.exchange, *(r.exchange for r in chain)],
                now=now,
            )  # fmt: skip
        except TongbanError as e:
            raise await self._logged(e, caller, request, intent, [], now) from None
        try:
            keys = _keys(remote.entry.subject_kind, request.keys)
        except TongbanError as e:
            raise await self._logged(e, caller, request, intent, [], now) from None
        await self._log.append(
            self._entries(
                caller, request, intent, keys, now, "allowed", f"peer:{onward.name}",
                action="query.forward",
            )
        )  # fmt: skip
        carried = carry_on(
            request, token=token, sender=peer, onward=onward,
            own_exchange=self._trust.own_fingerprint, nonce=self._nonce(), now=now,
            lifetime=self._lifetime, dataset=remote.code, keys=tuple(keys),
        )  # fmt: skip
        signed = sign_request(carried, self._signing)
        try:
            answer = await self._links.call(
                onward,
                f"a query of {remote.code}",
                lambda timeout: self._links.stub(onward).ForwardQuery(
                    federation_pb2.ForwardQueryRequest(request=signed), timeout=timeout
                ),
            )
        except PeerRefusal as e:
            index = e.metadata.get("log_index")
            where = f"; log:{index}" if index else ""
            indices = await self._log.append(
                self._entries(
                    caller, request, intent, keys, self._clock.now(), "denied",
                    f"{e.reason}; peer:{onward.name}{where}", action="query.receipt",
                )
            )  # fmt: skip
            e.metadata["log_index"] = str(indices.start)
            raise
        except PeerUnavailable as e:
            indices = await self._log.append(
                self._entries(
                    caller, request, intent, keys, self._clock.now(), "denied",
                    f"{e.reason}; peer:{onward.name}", action="query.receipt",
                )
            )  # fmt: skip
            e.metadata["log_index"] = str(indices.start)
            raise
        if answer.dataset != remote.code:
            raise await self._logged(
                PeerNotOwner(
                    f"Peer {onward.name} answered for {answer.dataset[:100]!r}, not "
                    f"{remote.code}.",
                    metadata={"peer": onward.name},
                ),
                caller, request, intent, keys, now, action="query.receipt",
            )  # fmt: skip
        indices = await self._log.append(
            self._entries(
                caller, request, intent, keys, self._clock.now(), "allowed",
                f"peer:{onward.name}; log:{answer.log_index}", action="query.receipt",
            )
        )  # fmt: skip
        asked, fields = set(keys), set(request.fields)
        records = []
        for record in answer.records:
            if record.key in asked:
                # Only what was asked travels on (minimum fields), whatever came back.
                for name in [n for n in record.fields if n not in fields]:
                    del record.fields[name]
                records.append(record)
        return federation_pb2.ForwardQueryResponse(
            dataset=request.dataset,
            dataset_version=answer.dataset_version,
            records=records,
            missing_keys=[k for k in answer.missing_keys if k in asked],
            answered_at=answer.answered_at,
            log_index=indices.start,
            log_entries=len(indices),
            # The owner's signed answer travels on unchanged: only the caller's exchange,
            # which asked for it, checks it (we have no say in what the owner signed).
            signed_payload=answer.signed_payload,
            signature=answer.signature,
            signature_sm2=answer.signature_sm2,
        )

    def _entries(
        self,
        caller: str,
        request: ForwardedQuery | None,
        intent: QueryIntent | None,
        keys: Sequence[str],
        now: datetime,
        decision: Outcome,
        reason: str | None,
        fields: Sequence[str] | None = None,
        *,
        action: str = "query",
    ) -> list[Any]:
        return self._recorder.entries(
            keys,
            at=now,
            department=caller,
            officer=request.officer if request is not None else None,
            action=action,
            decision=decision,
            reason=reason,
            dataset=intent.dataset[:200] if intent is not None else None,
            fields=fields if fields is not None else (intent.fields if intent else ()),
            purpose=intent.purpose if intent is not None else None,
            case_id=intent.case_id if intent is not None else None,
        )

    async def _logged(
        self,
        error: TongbanError,
        caller: str,
        request: ForwardedQuery | None,
        intent: QueryIntent | None,
        keys: Sequence[str],
        now: datetime,
        *,
        action: str = "query",
    ) -> TongbanError:
        """Log ``error`` as a denial for ``caller``; return it with our log index."""
        indices = await self._log.append(
            self._entries(caller, request, intent, keys, now, "denied", error.reason, action=action)
        )
        error.metadata["log_index"] = str(indices.start)
        return error

    async def _first_use(self, peer: Peer, request: ForwardedQuery) -> bool:
        """Record the request's nonce; False if the peer used it before."""
        return await self.first_use(peer, request.nonce, request.expires_at)

    async def first_use(self, peer: Peer, nonce: str, expires_at: datetime) -> bool:
        """Record a signed request's nonce (``peer_nonce``, kept until ``expires_at``);
        False if the peer used it before."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._purged_at > _PURGE_EVERY:
            self._purged_at = loop.time()
            await self._pool.execute(
                "DELETE FROM peer_nonce WHERE expires_at < $1", self._clock.now()
            )
        # The insert commits without waiting for its WAL flush (synchronous_commit off for
        # this statement's own transaction only). That loses no protection: no data
        # leaves and nothing is changed for a signed request before an entry about it is
        # appended to the access log (or its grant request stored) with a synchronous
        # commit, which flushes the WAL up to its own commit record, and so through this
        # earlier one. A crash can lose only the nonce of a request that got no data and
        # changed nothing, whose replay gets no more than it did. It spares every
        # forwarded request a wait for fsync and PostgreSQL a flush of its own
        # (docs/federation.md, "Measured").
        done = await self._pool.fetchval(
            """
            INSERT INTO peer_nonce (peer, nonce, expires_at)
            SELECT $1, $2, $3 FROM (SELECT set_config('synchronous_commit', 'off', true)) AS s
            ON CONFLICT DO NOTHING RETURNING true
            """,
            peer.name,
            nonce,
            expires_at + SKEW,
        )
        return bool(done)


def _keys(kind: SubjectKind, given: Sequence[str]) -> list[str]:
    if not given:
        raise InvalidArgument("Name at least one subject key.", metadata={"field": "keys"})
    if len(given) > MAX_KEYS:
        raise InvalidArgument(
            f"A query names at most {MAX_KEYS:,} keys; split it.", metadata={"field": "keys"}
        )
    return [validate_subject_id(kind, key) for key in dict.fromkeys(given)]


def _record(stored: Any, entry: DatasetEntry, fields: Sequence[str]) -> values_pb2.Record:
    values = stored.values(entry, fields)
    return values_pb2.Record(
        key=stored.key,
        fields={name: to_field_value(v) for name, v in values.items()},
        version=stored.version,
        valid_from=_timestamp(stored.valid_from),
    )


def _timestamp(at: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp
