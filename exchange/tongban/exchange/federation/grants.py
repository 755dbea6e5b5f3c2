"""Grant requests across exchanges (docs/federation.md, "Grants across exchanges").

A department asks the owner of a peer's conditional dataset for a grant through its own
node, as it would locally (``GrantService/RequestGrant`` with ``<peer>:<code>``). Its node
signs the request (a JWS naming the department, officer, dataset, fields, purpose, legal
basis and expiry, with a nonce and a time window) and sends it over the peer link
(``PeerService/ForwardGrantRequest``). The owner's exchange checks the signature, the
window and the nonce, and that it offers the dataset to that peer, then records a pending
request for ``<peer>/<department>`` in its own grant store, due in its working days like
any other: its owner decides with ``DecideGrant`` as for a local request. The department
follows it with ``ListGrants`` naming the remote dataset
(``PeerService/ListForwardedGrants``, answered only with that peer's department's grants).

Over several hops (``city:province:police.person``) a middle exchange carries the request
as it carries queries: it checks the signed request, decides only whether it carries it
(``Routes.onward``), logs ``grant.forward``, signs its own request to the next exchange
embedding the one it got (``previous``), and logs the answer (``grant.receipt``). The
owner checks the chain with ``forwarding.verify_chain`` and records the request for the
department named by its route (``city/county-a/approval``). Listings are carried the same
way, for that name only.

The consumer may revoke its own grant from its side (``GrantService/RevokeGrant`` with the
id as its exchange names it, ``province:<id>`` or ``city:province:<id>``): its node signs a
revocation (JWS ``tongban-forwarded-grant-revoke+jws``), a middle exchange carries it as
it carries grant requests (``grant-revoke.forward`` and ``grant-revoke.receipt`` in its
log), and the owner's exchange checks the chain and revokes the grant only if its consumer
is exactly the department the chain names.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tongban.errors import TongbanError
from tongban.exchange.audit.log import AccessLog
from tongban.exchange.audit.recorder import AccessRecorder, Outcome
from tongban.exchange.datadir import NodeSigning
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.federation.errors import (
    PeerNotOwner,
    PeerRequestInvalid,
    PeerUnavailable,
)
from tongban.exchange.federation.forwarding import (
    RequestKind,
    carried_members,
    carried_payload,
    carry_on,
    instant,
    peer_department,
    receive,
    remote_department,
    sign_claims,
)
from tongban.exchange.federation.links import PeerLinks, PeerRefusal
from tongban.exchange.federation.offer import CatalogueOffer
from tongban.exchange.federation.peers import Peer
from tongban.exchange.federation.remote import RemoteCatalogue
from tongban.exchange.federation.routing import Routes
from tongban.exchange.federation.trust import PeerTrust
from tongban.exchange.identity import Caller
from tongban.exchange.sharing.errors import DatasetNotFound
from tongban.exchange.sharing.grants import GrantStore
from tongban.exchange.sharing.model import Grant, GrantStatus
from tongban.signing.clock import Clock
from tongban.v1 import federation_pb2, grants_pb2

__all__ = [
    "GRANT",
    "GRANT_REQUEST_TYPE",
    "GRANT_REVOKE",
    "GRANT_REVOKE_TYPE",
    "ForwardedGrantRequest",
    "ForwardedGrantRevoke",
    "GrantForwarding",
]

GRANT_REQUEST_TYPE = "tongban-forwarded-grant+jws"
GRANT_REVOKE_TYPE = "tongban-forwarded-grant-revoke+jws"
_MAX_FIELDS = 200
_MAX_TEXT = 2000
_MAX_REASON = 500
GRANT_ID = re.compile(r"(?:[a-z][a-z0-9-]{1,62}:){0,8}[A-Za-z0-9-]{1,64}")
"""A grant id as an exchange names another's: the owner's id (a UUID at a Tongban
exchange) behind the names of the exchanges on the way (``province:<id>``)."""


@dataclass(frozen=True)
class ForwardedGrantRequest:
    """A grant request of a department of the calling exchange, as its node signed it."""

    exchange: str
    """Hex SHA-256 of the calling exchange's root."""
    audience: str
    """Hex SHA-256 of the owner exchange's root."""
    department: str
    officer: str | None
    dataset: str
    """The owner exchange's code."""
    fields: tuple[str, ...]
    purpose: str
    legal_basis: str
    expiry: datetime
    nonce: str
    issued_at: datetime
    expires_at: datetime
    route: tuple[str, ...] = ()
    """For a request a middle exchange carries on: its names of the exchanges behind it,
    nearest first; the department is of the last one."""
    previous: str | None = None
    """For a carried request: the signed request it carries on, as received."""

    @property
    def department_path(self) -> tuple[str, ...]:
        """The route and the department: ``("county-a", "approval")``."""
        return (*self.route, self.department)

    def carries(self, embedded: ForwardedGrantRequest) -> bool:
        """The same officer, fields, purpose, legal basis and expiry."""
        return (self.officer, self.fields, self.purpose, self.legal_basis, self.expiry) == (
            embedded.officer, embedded.fields, embedded.purpose, embedded.legal_basis,
            embedded.expiry,
        )  # fmt: skip

    def payload(self) -> dict[str, object]:
        return carried_payload(self) | {
            "v": 1,
            "exchange": self.exchange,
            "audience": self.audience,
            "department": self.department,
            "officer": self.officer,
            "dataset": self.dataset,
            "fields": list(self.fields),
            "purpose": self.purpose,
            "legal_basis": self.legal_basis,
            "expiry": instant(self.expiry),
            "nonce": self.nonce,
            "issued_at": instant(self.issued_at),
            "expires_at": instant(self.expires_at),
        }


def _parse(claimed: Mapping[str, Any]) -> ForwardedGrantRequest:
    """Raises PeerRequestInvalid for a missing or malformed member."""
    bad = PeerRequestInvalid("The forwarded grant request lacks a member or holds a malformed one.")
    try:
        members = carried_members(claimed, max_text=_MAX_TEXT)
        fields, expiry = claimed["fields"], datetime.fromisoformat(claimed["expiry"])
        well_formed = (
            all(
                isinstance(claimed[k], str) and len(claimed[k]) <= _MAX_TEXT
                for k in ("dataset", "purpose", "legal_basis")
            )
            and isinstance(fields, list)
            and len(fields) <= _MAX_FIELDS
            and all(isinstance(f, str) for f in fields)
            and expiry.tzinfo is not None
        )
    except (KeyError, TypeError, ValueError) as e:
        raise bad from e
    if not well_formed:
        raise bad
    return ForwardedGrantRequest(
        **members, dataset=claimed["dataset"], fields=tuple(fields),
        purpose=claimed["purpose"], legal_basis=claimed["legal_basis"], expiry=expiry,
    )  # fmt: skip


GRANT = RequestKind(GRANT_REQUEST_TYPE, _parse)
"""Forwarded grant requests, as a middle exchange carries them."""


@dataclass(frozen=True)
class ForwardedGrantRevoke:
    """A department of the calling exchange revoking its own grant, as its node signed it."""

    exchange: str
    audience: str
    department: str
    officer: str | None
    grant: str
    """The grant's id as the receiver names it: its own (``<id>``), or one a peer of its
    keeps (``province:<id>``)."""
    reason: str
    nonce: str
    issued_at: datetime
    expires_at: datetime
    route: tuple[str, ...] = ()
    """For a revocation a middle exchange carries on: its names of the exchanges behind
    it, nearest first; the department is of the last one."""
    previous: str | None = None
    """For a carried revocation: the signed one it carries on, as received."""

    @property
    def dataset(self) -> str:
        """What ``verify_chain`` follows from hop to hop, as it follows a dataset's name:
        the grant's id, behind one more name at each exchange further from the owner."""
        return self.grant

    @property
    def department_path(self) -> tuple[str, ...]:
        return (*self.route, self.department)

    def carries(self, embedded: ForwardedGrantRevoke) -> bool:
        """The same officer and reason."""
        return (self.officer, self.reason) == (embedded.officer, embedded.reason)

    def payload(self) -> dict[str, object]:
        return carried_payload(self) | {
            "v": 1,
            "exchange": self.exchange,
            "audience": self.audience,
            "department": self.department,
            "officer": self.officer,
            "grant": self.grant,
            "reason": self.reason,
            "nonce": self.nonce,
            "issued_at": instant(self.issued_at),
            "expires_at": instant(self.expires_at),
        }


def _parse_revoke(claimed: Mapping[str, Any]) -> ForwardedGrantRevoke:
    """Raises PeerRequestInvalid for a missing or malformed member."""
    bad = PeerRequestInvalid("The forwarded revocation lacks a member or holds a malformed one.")
    try:
        members = carried_members(claimed, max_text=_MAX_TEXT)
        grant, reason = claimed["grant"], claimed["reason"]
        well_formed = (
            isinstance(grant, str)
            and GRANT_ID.fullmatch(grant)
            and isinstance(reason, str)
            and len(reason) <= _MAX_REASON
        )
    except (KeyError, TypeError, ValueError) as e:
        raise bad from e
    if not well_formed:
        raise bad
    return ForwardedGrantRevoke(**members, grant=grant, reason=reason)


GRANT_REVOKE = RequestKind(GRANT_REVOKE_TYPE, _parse_revoke)
"""Forwarded revocations of a consumer's own grant, as a middle exchange carries them."""


class GrantForwarding:
    """Both sides of a grant request across exchanges; see the module docstring."""

    def __init__(
        self,
        *,
        trust: PeerTrust,
        links: PeerLinks,
        remote: RemoteCatalogue,
        offer: CatalogueOffer,
        routes: Routes,
        grants: GrantStore,
        access_log: AccessLog,
        signing: NodeSigning,
        node_name: str,
        clock: Clock,
        request_seconds: float,
        first_use: Callable[[Peer, str, datetime], Awaitable[bool]],
        nonce: Callable[[], str] = lambda: secrets.token_hex(16),
    ) -> None:
        """``first_use(peer, nonce, expires_at)`` records a signed request's nonce and
        says whether the peer used it before (``Forwarding.first_use``: one nonce table
        for every kind of signed request)."""
        self._routes = routes
        self._log = access_log
        self._recorder = AccessRecorder(node_name)  # entries name no subject
        self._trust = trust
        self._links = links
        self._remote = remote
        self._offer = offer
        self._grants = grants
        self._signing = signing
        self._clock = clock
        self._lifetime = timedelta(seconds=request_seconds)
        self._first_use = first_use
        self._nonce = nonce

    # -- the calling side ---------------------------------------------------------------

    async def _peer_and_code(self, dataset: str) -> tuple[Peer, str]:
        """The peer and its name of the dataset: ``province:police.person``, or a
        dataset it carries requests of, ``city:province:police.person``."""
        peer_name, _, code = dataset.partition(":")
        return await self._trust.active_peer(peer_name), code

    async def request(
        self,
        caller: Caller,
        *,
        dataset: str,
        fields: Sequence[str],
        purpose: str,
        legal_basis: str,
        expiry: datetime,
    ) -> grants_pb2.Grant:
        """Ask the owner of peer dataset ``<peer>:<code>`` for a grant; return the owner's
        pending grant as this exchange names it (dataset ``<peer>:<code>``, id
        ``<peer>:<id>``); ``<code>`` may itself be ``<peer's peer>:<code>``, carried by
        the peer. Raises PeerUnknown, DatasetNotFound, PeerUnavailable, or the refusal of
        the owner or of an exchange on the way (InvalidArgument for a dataset no grant
        opens, a bad field...)."""
        now = self._clock.now()
        peer, code = await self._peer_and_code(dataset)
        if await self._remote.get(peer, code, now=now) is None:
            raise DatasetNotFound(
                f"Peer {peer.name} offers no dataset {code[:100]!r}; check the remote catalogue."
            )
        request = ForwardedGrantRequest(
            exchange=self._trust.own_fingerprint.hex(),
            audience=peer.ca_fingerprint.hex(),
            department=caller.department.code,
            officer=caller.officer_id,
            dataset=code,
            fields=tuple(fields),
            purpose=purpose,
            legal_basis=legal_basis,
            expiry=expiry,
            nonce=self._nonce(),
            issued_at=now,
            expires_at=now + self._lifetime,
        )
        token = sign_claims(request.payload(), self._signing, GRANT_REQUEST_TYPE)
        grant: grants_pb2.Grant = await self._links.call(
            peer,
            f"a grant request on {code}",
            lambda timeout: self._links.stub(peer).ForwardGrantRequest(
                federation_pb2.ForwardGrantRequestRequest(request=token), timeout=timeout
            ),
        )
        return _as_ours(grant, peer, caller.department.code)

    async def revoke(self, caller: Caller, *, grant_id: str, reason: str) -> grants_pb2.Grant:
        """Revoke the caller's own grant ``<peer>:<id>`` (``<id>`` may itself be
        ``<peer's peer>:<id>``, carried by the peer) at the owner's exchange; return it as
        this exchange names it. Raises InvalidArgument (a malformed id or reason),
        PeerUnknown, PeerUnavailable, or the refusal of the owner (GrantNotFound: none of
        the caller's; GrantStateInvalid: already ended) or of an exchange on the way."""
        peer_name, _, rest = grant_id.partition(":")
        if not GRANT_ID.fullmatch(rest):
            raise InvalidArgument(
                f"{grant_id[:100]!r} is not a grant id of a peer exchange; use the id "
                "ListGrants shows (<peer>:<id>).",
                metadata={"field": "id"},
            )
        if len(reason) > _MAX_REASON:
            raise InvalidArgument(
                f"A reason has at most {_MAX_REASON} characters.", metadata={"field": "reason"}
            )
        peer = await self._trust.active_peer(peer_name)
        now = self._clock.now()
        request = ForwardedGrantRevoke(
            exchange=self._trust.own_fingerprint.hex(), audience=peer.ca_fingerprint.hex(),
            department=caller.department.code, officer=caller.officer_id, grant=rest,
            reason=reason, nonce=self._nonce(), issued_at=now, expires_at=now + self._lifetime,
        )  # fmt: skip
        token = sign_claims(request.payload(), self._signing, GRANT_REVOKE_TYPE)
        grant: grants_pb2.Grant = await self._links.call(
            peer,
            f"the revocation of grant {rest}",
            lambda timeout: self._links.stub(peer).ForwardGrantRevoke(
                federation_pb2.ForwardGrantRevokeRequest(request=token), timeout=timeout
            ),
        )
        return _as_ours(grant, peer, caller.department.code)

    async def list_for(
        self, caller: Caller, *, dataset: str, status: grants_pb2.GrantStatus.ValueType
    ) -> grants_pb2.ListGrantsResponse:
        """The caller's grants on peer dataset ``<peer>:<code>``, as the owner keeps them."""
        peer, code = await self._peer_and_code(dataset)
        reply: grants_pb2.ListGrantsResponse = await self._links.call(
            peer,
            f"the grants on {code}",
            lambda timeout: self._links.stub(peer).ListForwardedGrants(
                federation_pb2.ListForwardedGrantsRequest(
                    department=caller.department.code, dataset=code, status=status
                ),
                timeout=timeout,
            ),
        )
        return grants_pb2.ListGrantsResponse(
            grants=[
                _as_ours(g, peer, caller.department.code) for g in reply.grants if g.dataset == code
            ]
        )

    # -- the owner's side, or a middle exchange's --------------------------------------

    async def answer(self, peer: Peer, token: str) -> Grant | grants_pb2.Grant:
        """Record the pending grant request peer ``peer`` forwarded, for the department
        its route names (``<peer>/<department>``, ``city/county-a/approval``); return
        it. For a dataset we reach through a peer of ours (``<peer>:<code>``), carry it
        there instead and return that exchange's grant as we name it. Raises
        PeerSignatureMismatch, PeerRequestAltered, PeerRequestExpired,
        PeerRequestReplayed, PeerRequestInvalid, PeerTooManyHops, PeerRouteLoop,
        DatasetNotFound (not offered to that peer), the grant store's InvalidArgument,
        or, carried, the next exchange's refusal or PeerUnavailable."""
        now = self._clock.now()
        request, chain = await receive(
            token, kind=GRANT, peer=peer, own_exchange=self._trust.own_fingerprint, now=now,
            max_hops=self._routes.max_hops, what="grant request", first_use=self._first_use,
        )  # fmt: skip
        if ":" in request.dataset:
            return await self._carry(peer, token, request, chain, now)
        entry = await self._offer.offers(peer.name, request.dataset)
        if entry is None:
            raise DatasetNotFound(
                f"This exchange offers peer {peer.name} no dataset {request.dataset[:100]!r}."
            )
        return await self._grants.request(
            entry=entry,
            consumer=remote_department(peer.name, *request.department_path),
            fields=request.fields,
            purpose=request.purpose,
            legal_basis=request.legal_basis,
            expiry=request.expiry,
            officer=request.officer,
            now=now,
        )

    async def _carry(
        self,
        peer: Peer,
        token: str,
        request: ForwardedGrantRequest,
        chain: Sequence[ForwardedGrantRequest],
        now: datetime,
    ) -> grants_pb2.Grant:
        """Carry ``request`` to the exchange that offered us its dataset, signed by us and
        embedding ``token``, as queries are carried; log it going out
        (``grant.forward``) and the answer (``grant.receipt``) under the remote identity.
        We decide only whether we carry it (``Routes.onward``), never the grant."""
        caller = remote_department(peer.name, *request.department_path)

        async def log(action: str, decision: Outcome, reason: str) -> None:
            await self._log.append(
                self._recorder.entries(
                    [], at=self._clock.now(), department=caller, officer=request.officer,
                    action=action, decision=decision, reason=reason,
                    dataset=request.dataset[:200], fields=request.fields,
                    purpose=request.purpose[:_MAX_TEXT],
                )
            )  # fmt: skip

        try:
            onward, remote = await self._routes.onward(
                peer, request.dataset, passed=[request.exchange, *(r.exchange for r in chain)],
                now=now,
            )  # fmt: skip
        except TongbanError as e:
            await log("grant.forward", "denied", e.reason)
            raise
        await log("grant.forward", "allowed", f"peer:{onward.name}")
        carried = carry_on(
            request, token=token, sender=peer, onward=onward,
            own_exchange=self._trust.own_fingerprint, nonce=self._nonce(), now=now,
            lifetime=self._lifetime, dataset=remote.code,
        )  # fmt: skip
        signed = sign_claims(carried.payload(), self._signing, GRANT_REQUEST_TYPE)
        try:
            grant: grants_pb2.Grant = await self._links.call(
                onward,
                f"a grant request on {remote.code}",
                lambda timeout: self._links.stub(onward).ForwardGrantRequest(
                    federation_pb2.ForwardGrantRequestRequest(request=signed), timeout=timeout
                ),
            )
        except (PeerRefusal, PeerUnavailable) as e:
            await log("grant.receipt", "denied", f"{e.reason}; peer:{onward.name}")
            raise
        if grant.dataset != remote.code:
            await log("grant.receipt", "denied", f"{PeerNotOwner.reason}; peer:{onward.name}")
            raise PeerNotOwner(
                f"Peer {onward.name} answered for {grant.dataset[:100]!r}, not {remote.code}.",
                metadata={"peer": onward.name},
            )
        await log("grant.receipt", "allowed", f"peer:{onward.name}; grant:{grant.id[:100]}")
        return _as_ours(grant, onward, caller)

    async def answer_revoke(self, peer: Peer, token: str) -> Grant | grants_pb2.Grant:
        """Revoke the grant peer ``peer``'s revocation names, if its consumer is exactly the
        department its route names (``<peer>/<department>``, ``city/county-a/approval``);
        return it. For a grant a peer of ours keeps (``<peer>:<id>``), carry the
        revocation there instead and return that exchange's grant as we name it. Raises
        PeerSignatureMismatch, PeerRequestAltered, PeerRequestExpired,
        PeerRequestReplayed, PeerRequestInvalid, PeerTooManyHops, PeerRouteLoop,
        GrantNotFound (no such grant of that department: nothing changes),
        GrantStateInvalid, or, carried, PeerUnknown, the next exchange's refusal or
        PeerUnavailable."""
        now = self._clock.now()
        request, chain = await receive(
            token, kind=GRANT_REVOKE, peer=peer, own_exchange=self._trust.own_fingerprint,
            now=now, max_hops=self._routes.max_hops, what="grant revocation",
            first_use=self._first_use,
        )  # fmt: skip
        consumer = remote_department(peer.name, *request.department_path)
        if ":" in request.grant:
            return await self._carry_revoke(peer, token, request, chain, consumer, now)
        # The store revokes only for its owner or its consumer, and a peer's department is
        # never an owner here: exactly that department's grant, or GrantNotFound.
        return await self._grants.revoke(
            grant_id=request.grant, caller=consumer, reason=request.reason,
            officer=request.officer, now=now,
        )  # fmt: skip

    async def _carry_revoke(
        self,
        peer: Peer,
        token: str,
        request: ForwardedGrantRevoke,
        chain: Sequence[ForwardedGrantRevoke],
        caller: str,
        now: datetime,
    ) -> grants_pb2.Grant:
        """Carry a revocation of ``<our peer>:<id>`` on to that peer, signed by us and
        embedding ``token``; log it going out (``grant-revoke.forward``) and the answer
        (``grant-revoke.receipt``) under the remote identity ``caller``. We decide only
        whether we carry it (``Routes.towards``); the owner decides whose grant it is."""
        name, _, rest = request.grant.partition(":")

        async def log(action: str, decision: Outcome, reason: str, dataset: str | None) -> None:
            await self._log.append(
                self._recorder.entries(
                    [], at=self._clock.now(), department=caller, officer=request.officer,
                    action=action, decision=decision, reason=reason, dataset=dataset,
                )
            )  # fmt: skip

        try:
            onward = await self._routes.towards(
                peer, name, passed=[request.exchange, *(r.exchange for r in chain)]
            )
        except TongbanError as e:
            await log("grant-revoke.forward", "denied", e.reason, None)
            raise
        await log("grant-revoke.forward", "allowed", f"peer:{onward.name}; grant:{rest}", None)
        carried = carry_on(
            request, token=token, sender=peer, onward=onward,
            own_exchange=self._trust.own_fingerprint, nonce=self._nonce(), now=now,
            lifetime=self._lifetime, grant=rest,
        )  # fmt: skip
        signed = sign_claims(carried.payload(), self._signing, GRANT_REVOKE_TYPE)
        try:
            grant: grants_pb2.Grant = await self._links.call(
                onward,
                f"the revocation of grant {rest}",
                lambda timeout: self._links.stub(onward).ForwardGrantRevoke(
                    federation_pb2.ForwardGrantRevokeRequest(request=signed), timeout=timeout
                ),
            )
        except (PeerRefusal, PeerUnavailable) as e:
            await log("grant-revoke.receipt", "denied", f"{e.reason}; peer:{onward.name}", None)
            raise
        if grant.id != rest:
            await log(
                "grant-revoke.receipt", "denied", f"{PeerNotOwner.reason}; peer:{onward.name}",
                None,
            )  # fmt: skip
            raise PeerNotOwner(
                f"Peer {onward.name} answered for grant {grant.id[:100]!r}, not {rest}.",
                metadata={"peer": onward.name},
            )
        ours = _as_ours(grant, onward, caller)
        await log(
            "grant-revoke.receipt", "allowed", f"peer:{onward.name}; grant:{rest}",
            ours.dataset[:200],
        )  # fmt: skip
        return ours

    async def grants_of(
        self,
        peer: Peer,
        *,
        department: str,
        route: Sequence[str],
        dataset: str,
        status: GrantStatus | None,
    ) -> list[Grant]:
        """Peer ``peer``'s department's grants on our ``dataset`` (only theirs; the
        department behind ``route`` when the peer asks for an exchange behind it)."""
        consumer = peer_department(peer, department, route)
        if not dataset or len(dataset) > 200:
            raise InvalidArgument("Name the dataset.", metadata={"field": "dataset"})
        grants = await self._grants.list(
            caller=consumer, dataset=dataset, status=status, now=self._clock.now()
        )
        return [g for g in grants if g.consumer == consumer]

    async def carried_grants_of(
        self,
        peer: Peer,
        *,
        department: str,
        route: Sequence[str],
        dataset: str,
        status: grants_pb2.GrantStatus.ValueType,
    ) -> list[grants_pb2.Grant]:
        """Peer ``peer``'s department's grants on ``<our peer>:<code>``, a dataset we
        carry requests of: asked of our peer for ``<peer>/<route>/<department>`` and
        named as we name things. Raises InvalidArgument, DatasetNotFound (we offer
        ``peer`` no such dataset), PeerUnavailable or our peer's refusal."""
        name = peer_department(peer, department, route)
        hop = await self._routes.next_hop(peer, dataset[:300], now=self._clock.now())
        if hop is None:
            raise DatasetNotFound(
                f"This exchange offers peer {peer.name} no dataset {dataset[:100]!r}."
            )
        onward, remote = hop
        reply: grants_pb2.ListGrantsResponse = await self._links.call(
            onward,
            f"the grants on {remote.code}",
            lambda timeout: self._links.stub(onward).ListForwardedGrants(
                federation_pb2.ListForwardedGrantsRequest(
                    department=department, dataset=remote.code, status=status,
                    route=[peer.name, *route],
                ),
                timeout=timeout,
            ),
        )  # fmt: skip
        return [_as_ours(g, onward, name) for g in reply.grants if g.dataset == remote.code]


def _as_ours(grant: grants_pb2.Grant, peer: Peer, consumer: str) -> grants_pb2.Grant:
    """The grant of peer ``peer`` as this exchange names things: ``<peer>:`` before the
    dataset and the id, ``<peer>/`` before the owner, and ``consumer`` (our department,
    or ``<peer>/<department>`` for a grant we carried) as the consumer."""
    ours = grants_pb2.Grant()
    ours.CopyFrom(grant)
    ours.id = f"{peer.name}:{grant.id}"
    ours.dataset = f"{peer.name}:{grant.dataset}"
    ours.owner = remote_department(peer.name, grant.owner)
    ours.consumer = consumer
    return ours
