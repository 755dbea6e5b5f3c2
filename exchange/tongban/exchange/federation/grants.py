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

One link only: a dataset reached through a middle exchange is refused (later).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tongban.exchange.datadir import NodeSigning
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.federation.errors import (
    PeerRequestInvalid,
)
from tongban.exchange.federation.forwarding import (
    DEPARTMENT,
    NONCE,
    OFFICER,
    admit,
    instant,
    peer_department,
    remote_department,
    sign_claims,
    verify_peer_signed,
)
from tongban.exchange.federation.links import PeerLinks
from tongban.exchange.federation.offer import CatalogueOffer
from tongban.exchange.federation.peers import Peer
from tongban.exchange.federation.remote import RemoteCatalogue
from tongban.exchange.federation.trust import PeerTrust
from tongban.exchange.identity import Caller
from tongban.exchange.sharing.errors import DatasetNotFound
from tongban.exchange.sharing.grants import GrantStore
from tongban.exchange.sharing.model import Grant, GrantStatus
from tongban.signing.clock import Clock
from tongban.v1 import federation_pb2, grants_pb2

__all__ = ["GRANT_REQUEST_TYPE", "ForwardedGrantRequest", "GrantForwarding"]

GRANT_REQUEST_TYPE = "tongban-forwarded-grant+jws"
_MAX_FIELDS = 200
_MAX_TEXT = 2000


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

    def payload(self) -> dict[str, object]:
        return {
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
    try:
        request = _members(claimed)
    except (KeyError, TypeError, ValueError) as e:
        raise PeerRequestInvalid(
            "The forwarded grant request lacks a member or holds a malformed one."
        ) from e
    if request is None:
        raise PeerRequestInvalid(
            "The forwarded grant request lacks a member or holds a malformed one."
        )
    return request


def _members(claimed: Mapping[str, Any]) -> ForwardedGrantRequest | None:
    """None for a malformed member; KeyError, TypeError or ValueError for a missing or
    unreadable one."""
    texts = ("exchange", "audience", "department", "dataset", "purpose", "legal_basis")
    officer, fields = claimed["officer"], claimed["fields"]
    expiry, issued_at, expires_at = (
        datetime.fromisoformat(claimed[k]) for k in ("expiry", "issued_at", "expires_at")
    )
    well_formed = (
        all(isinstance(claimed[k], str) and len(claimed[k]) <= _MAX_TEXT for k in texts)
        and isinstance(claimed["nonce"], str)
        and (officer is None or (isinstance(officer, str) and OFFICER.fullmatch(officer)))
        and DEPARTMENT.fullmatch(claimed["department"])
        and NONCE.fullmatch(claimed["nonce"])
        and isinstance(fields, list)
        and len(fields) <= _MAX_FIELDS
        and all(isinstance(f, str) for f in fields)
        and None not in (expiry.tzinfo, issued_at.tzinfo, expires_at.tzinfo)
    )
    if not well_formed:
        return None
    return ForwardedGrantRequest(
        exchange=claimed["exchange"],
        audience=claimed["audience"],
        department=claimed["department"],
        officer=officer,
        dataset=claimed["dataset"],
        fields=tuple(fields),
        purpose=claimed["purpose"],
        legal_basis=claimed["legal_basis"],
        expiry=expiry,
        nonce=claimed["nonce"],
        issued_at=issued_at,
        expires_at=expires_at,
    )


class GrantForwarding:
    """Both sides of a grant request across exchanges; see the module docstring."""

    def __init__(
        self,
        *,
        trust: PeerTrust,
        links: PeerLinks,
        remote: RemoteCatalogue,
        offer: CatalogueOffer,
        grants: GrantStore,
        signing: NodeSigning,
        clock: Clock,
        request_seconds: float,
        first_use: Callable[[Peer, str, datetime], Awaitable[bool]],
        nonce: Callable[[], str] = lambda: secrets.token_hex(16),
    ) -> None:
        """``first_use(peer, nonce, expires_at)`` records a signed request's nonce and
        says whether the peer used it before (``Forwarding.first_use``: one nonce table
        for every kind of signed request)."""
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
        peer_name, _, code = dataset.partition(":")
        peer = await self._trust.active_peer(peer_name)
        if ":" in code:
            raise InvalidArgument(
                "A grant is asked of the owner's exchange over one link; this dataset is "
                "reached through a middle exchange, whose operator can relay the request.",
                metadata={"field": "dataset"},
            )
        return peer, code

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
        ``<peer>:<id>``). Raises PeerUnknown, DatasetNotFound, PeerUnavailable, or the
        owner's refusal (InvalidArgument for a dataset no grant opens, a bad field...)."""
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
        return _as_ours(grant, peer, caller)

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
            grants=[_as_ours(g, peer, caller) for g in reply.grants if g.dataset == code]
        )

    # -- the owner's side ---------------------------------------------------------------

    async def answer(self, peer: Peer, token: str) -> Grant:
        """Record the pending grant request peer ``peer`` forwarded, for
        ``<peer>/<department>``; return it. Raises PeerSignatureMismatch,
        PeerRequestExpired, PeerRequestReplayed, PeerRequestInvalid, DatasetNotFound (not
        offered to that peer) or the grant store's InvalidArgument."""
        now = self._clock.now()
        claimed = verify_peer_signed(token, peer=peer, typ=GRANT_REQUEST_TYPE, now=now)
        request = _parse(claimed)
        await admit(
            request, peer=peer, own_exchange=self._trust.own_fingerprint, now=now,
            what="grant request", first_use=self._first_use,
        )  # fmt: skip
        entry = await self._offer.offers(peer.name, request.dataset)
        if entry is None:
            raise DatasetNotFound(
                f"This exchange offers peer {peer.name} no dataset {request.dataset[:100]!r}."
            )
        return await self._grants.request(
            entry=entry,
            consumer=remote_department(peer.name, request.department),
            fields=request.fields,
            purpose=request.purpose,
            legal_basis=request.legal_basis,
            expiry=request.expiry,
            officer=request.officer,
            now=now,
        )

    async def grants_of(
        self, peer: Peer, *, department: str, dataset: str, status: GrantStatus | None
    ) -> list[Grant]:
        """Peer ``peer``'s department's grants on our ``dataset`` (only theirs)."""
        consumer = peer_department(peer, department)
        if not dataset or len(dataset) > 200:
            raise InvalidArgument("Name the dataset.", metadata={"field": "dataset"})
        grants = await self._grants.list(
            caller=consumer, dataset=dataset, status=status, now=self._clock.now()
        )
        return [g for g in grants if g.consumer == consumer]


def _as_ours(grant: grants_pb2.Grant, peer: Peer, caller: Caller) -> grants_pb2.Grant:
    """The owner's grant as this exchange names things: ``<peer>:`` before the dataset
    and the id, ``<peer>/`` before the owner, and our department as the consumer."""
    ours = grants_pb2.Grant()
    ours.CopyFrom(grant)
    ours.id = f"{peer.name}:{grant.id}"
    ours.dataset = f"{peer.name}:{grant.dataset}"
    ours.owner = remote_department(peer.name, grant.owner)
    ours.consumer = caller.department.code
    return ours
