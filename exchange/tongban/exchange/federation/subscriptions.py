"""Subscriptions across exchanges (docs/federation.md, "Subscriptions across exchanges").

A department subscribes to a peer's dataset through its own node
(``SubscriptionService/Subscribe`` with ``<peer>:<code>``). Its node signs the request
(JWS ``tongban-forwarded-subscription+jws``: the department, officer, the owner's code,
fields, purpose and where to resume, with a nonce and a time window) and opens
``PeerService/ForwardSubscribe`` at the owner's exchange, which decides for
``<peer>/<department>`` as for its own subscribers, keeps that subscription's
acknowledged position, logs each delivery and streams the events. Our node logs each
batch it passes on (``event.receipt``, per subject) and names the events as we name
things (dataset ``<peer>:<code>``, subscription ``<peer>:<id>``). Acknowledgements go to
the owner (``PeerService/ForwardAcknowledge``), so a subscriber that reconnects after the
link dropped, or after either exchange restarted, resumes after its acknowledged
position.

One link only: a dataset reached through a middle exchange is refused (later).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import grpc

from tongban.exchange.audit.log import AccessLog, SubjectHasher
from tongban.exchange.audit.recorder import AccessRecorder
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
from tongban.exchange.federation.links import PeerLinks, peer_error
from tongban.exchange.federation.offer import CatalogueOffer
from tongban.exchange.federation.peers import Peer
from tongban.exchange.federation.remote import RemoteCatalogue
from tongban.exchange.federation.trust import PeerTrust
from tongban.exchange.identity import Caller, RemoteCaller
from tongban.exchange.sharing.errors import DatasetNotFound
from tongban.signing.clock import Clock
from tongban.v1 import events_pb2, federation_pb2

__all__ = ["SUBSCRIPTION_TYPE", "ForwardedSubscription", "SubscriptionForwarding"]

SUBSCRIPTION_TYPE = "tongban-forwarded-subscription+jws"
_MAX_TEXT = 200
_MAX_FIELDS = 200
_MAX_POSITION = 2**62


@dataclass(frozen=True)
class ForwardedSubscription:
    """A subscription of a department of the calling exchange, as its node signed it."""

    exchange: str
    audience: str
    department: str
    officer: str | None
    dataset: str
    fields: tuple[str, ...]
    purpose: str
    after_position: int | None
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
            "after_position": self.after_position,
            "nonce": self.nonce,
            "issued_at": instant(self.issued_at),
            "expires_at": instant(self.expires_at),
        }


@dataclass(frozen=True)
class Admitted:
    """A forwarded subscription, checked: who asks, for what."""

    actor: RemoteCaller
    dataset: str
    fields: tuple[str, ...]
    purpose: str
    after_position: int | None


def _parse(claimed: Mapping[str, Any]) -> ForwardedSubscription:
    bad = PeerRequestInvalid("The forwarded subscription lacks a member or holds a malformed one.")
    try:
        texts = ("exchange", "audience", "department", "dataset", "purpose")
        officer, fields, after = claimed["officer"], claimed["fields"], claimed["after_position"]
        issued_at = datetime.fromisoformat(claimed["issued_at"])
        expires_at = datetime.fromisoformat(claimed["expires_at"])
        well_formed = (
            all(isinstance(claimed[k], str) and len(claimed[k]) <= _MAX_TEXT for k in texts)
            and isinstance(claimed["nonce"], str)
            and (officer is None or (isinstance(officer, str) and OFFICER.fullmatch(officer)))
            and DEPARTMENT.fullmatch(claimed["department"])
            and NONCE.fullmatch(claimed["nonce"])
            and isinstance(fields, list)
            and len(fields) <= _MAX_FIELDS
            and all(isinstance(f, str) for f in fields)
            and (after is None or (type(after) is int and -1 <= after <= _MAX_POSITION))
            and None not in (issued_at.tzinfo, expires_at.tzinfo)
        )
    except (KeyError, TypeError, ValueError) as e:
        raise bad from e
    if not well_formed:
        raise bad
    return ForwardedSubscription(
        exchange=claimed["exchange"], audience=claimed["audience"],
        department=claimed["department"], officer=officer, dataset=claimed["dataset"],
        fields=tuple(fields), purpose=claimed["purpose"], after_position=after,
        nonce=claimed["nonce"], issued_at=issued_at, expires_at=expires_at,
    )  # fmt: skip


class SubscriptionForwarding:
    """Both sides of a subscription across exchanges; see the module docstring."""

    def __init__(
        self,
        *,
        trust: PeerTrust,
        links: PeerLinks,
        remote: RemoteCatalogue,
        offer: CatalogueOffer,
        access_log: AccessLog,
        hasher: SubjectHasher,
        signing: NodeSigning,
        node_name: str,
        clock: Clock,
        request_seconds: float,
        first_use: Callable[[Peer, str, datetime], Awaitable[bool]],
        nonce: Callable[[], str] = lambda: secrets.token_hex(16),
    ) -> None:
        self._trust = trust
        self._links = links
        self._remote = remote
        self._offer = offer
        self._log = access_log
        self._recorder = AccessRecorder(node_name, hasher)
        self._signing = signing
        self._clock = clock
        self._lifetime = timedelta(seconds=request_seconds)
        self._first_use = first_use
        self._nonce = nonce

    # -- the calling side ---------------------------------------------------------------

    async def stream(
        self,
        caller: Caller,
        *,
        dataset: str,
        fields: Sequence[str],
        purpose: str,
        after_position: int | None,
    ) -> AsyncGenerator[events_pb2.EventBatch, None]:
        """The events of peer dataset ``<peer>:<code>`` for ``caller``, as the owner's
        exchange streams them, each batch logged here before it is passed on. Raises
        PeerUnknown, DatasetNotFound, InvalidArgument (a routed dataset), the owner's
        refusal, or PeerUnavailable when the link drops."""
        peer_name, _, code = dataset.partition(":")
        peer = await self._trust.active_peer(peer_name)
        if ":" in code:
            raise InvalidArgument(
                "A subscription is made at the owner's exchange over one link; this dataset "
                "is reached through a middle exchange.",
                metadata={"field": "dataset"},
            )
        now = self._clock.now()
        if await self._remote.get(peer, code, now=now) is None:
            raise DatasetNotFound(
                f"Peer {peer.name} offers no dataset {code[:100]!r}; check the remote catalogue."
            )
        request = ForwardedSubscription(
            exchange=self._trust.own_fingerprint.hex(), audience=peer.ca_fingerprint.hex(),
            department=caller.department.code, officer=caller.officer_id, dataset=code,
            fields=tuple(fields), purpose=purpose, after_position=after_position,
            nonce=self._nonce(), issued_at=now, expires_at=now + self._lifetime,
        )  # fmt: skip
        await self._record(caller, dataset, fields, purpose, [], "subscribe.forward", peer)
        token = sign_claims(request.payload(), self._signing, SUBSCRIPTION_TYPE)
        call = self._links.stub(peer).ForwardSubscribe(
            federation_pb2.ForwardSubscribeRequest(request=token)
        )
        try:
            async for batch in call:
                keys = [e.key for e in batch.events]
                await self._record(caller, dataset, fields, purpose, keys, "event.receipt", peer)
                for event in batch.events:
                    event.subscription_id = f"{peer.name}:{event.subscription_id}"
                    event.dataset = dataset
                yield batch
        except grpc.aio.AioRpcError as e:
            raise peer_error(peer, f"the events of {code}", e) from None
        finally:
            call.cancel()

    async def acknowledge(self, caller: Caller, subscription_id: str, position: int) -> int:
        """Acknowledge events of ``<peer>:<id>`` at the owner's exchange; return the
        position it keeps."""
        peer_name, _, remote_id = subscription_id.partition(":")
        peer = await self._trust.active_peer(peer_name)
        reply: events_pb2.AcknowledgeResponse = await self._links.call(
            peer,
            "an acknowledgement",
            lambda timeout: self._links.stub(peer).ForwardAcknowledge(
                federation_pb2.ForwardAcknowledgeRequest(
                    department=caller.department.code,
                    subscription_id=remote_id,
                    position=position,
                ),
                timeout=timeout,
            ),
        )
        return reply.acked_position

    async def _record(
        self, caller: Caller, dataset: str, fields: Sequence[str], purpose: str,
        keys: Sequence[str], action: str, peer: Peer,
    ) -> None:  # fmt: skip
        await self._log.append(
            self._recorder.entries(
                keys, at=self._clock.now(), department=caller.department.code,
                officer=caller.officer_id, action=action, decision="allowed",
                reason=f"peer:{peer.name}", dataset=dataset[:200], fields=fields,
                purpose=purpose, case_id="subscription",
            )
        )  # fmt: skip

    # -- the owner's side ---------------------------------------------------------------

    async def admit(self, peer: Peer, token: str) -> Admitted:
        """The subscription peer ``peer`` forwarded, checked: its node's signature for us,
        its window and nonce, and a dataset we offer that peer. Raises
        PeerSignatureMismatch, PeerRequestExpired, PeerRequestReplayed,
        PeerRequestInvalid or DatasetNotFound."""
        now = self._clock.now()
        claimed = verify_peer_signed(token, peer=peer, typ=SUBSCRIPTION_TYPE, now=now)
        request = _parse(claimed)
        await admit(
            request, peer=peer, own_exchange=self._trust.own_fingerprint, now=now,
            what="subscription request", first_use=self._first_use,
        )  # fmt: skip
        if await self._offer.offers(peer.name, request.dataset) is None:
            raise DatasetNotFound(
                f"This exchange offers peer {peer.name} no dataset {request.dataset[:100]!r}."
            )
        return Admitted(
            actor=RemoteCaller(remote_department(peer.name, request.department), request.officer),
            dataset=request.dataset,
            fields=request.fields,
            purpose=request.purpose,
            after_position=request.after_position,
        )

    @staticmethod
    def consumer(peer: Peer, department: str) -> str:
        """Our name for peer ``peer``'s department (InvalidArgument if it is none)."""
        return peer_department(peer, department)
