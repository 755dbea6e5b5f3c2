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

Over several hops (``city:province:samr.enterprise``) a middle exchange carries the
stream as it carries queries: it checks the signed subscription, decides only whether it
carries it (``Routes.onward``), logs ``subscribe.forward``, opens its own
``ForwardSubscribe`` at the next exchange embedding the one it got (``previous``), and
relays each batch, with only the asked fields, logging it per subject
(``event.receipt``). The owner checks the chain with ``forwarding.verify_chain`` and
serves the department its route names (``city/county-a/approval``). Acknowledgements are
carried the same way (``PeerService/ForwardAcknowledge`` with a route).

``ListSubscriptions`` shows a department's subscriptions held at peers too: its node asks
each owner exchange it reaches (every active peer, and every route its remote catalogue
names) with a signed, read-only request (JWS ``tongban-forwarded-subscription-list+jws``,
``PeerService/ListForwardedSubscriptions``), carried by middle exchanges as
acknowledgements are; each owner answers only that department path's own. An owner that
cannot be asked is named in the answer (``unlisted``) instead of failing the listing.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import grpc

from tongban.errors import TongbanError
from tongban.exchange.audit.log import AccessLog, SubjectHasher
from tongban.exchange.audit.recorder import AccessRecorder, Outcome
from tongban.exchange.datadir import NodeSigning
from tongban.exchange.federation.entries import RemoteEntry
from tongban.exchange.federation.errors import (
    PeerRequestInvalid,
    PeerRouteLoop,
    PeerTooManyHops,
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
from tongban.exchange.federation.links import PeerLinks, peer_error
from tongban.exchange.federation.offer import CatalogueOffer
from tongban.exchange.federation.peers import Peer
from tongban.exchange.federation.remote import RemoteCatalogue
from tongban.exchange.federation.routing import Routes
from tongban.exchange.federation.trust import PeerTrust
from tongban.exchange.identity import Caller, RemoteCaller
from tongban.exchange.sharing.errors import DatasetNotFound
from tongban.signing.clock import Clock
from tongban.v1 import events_pb2, federation_pb2

__all__ = [
    "SUBSCRIPTION",
    "SUBSCRIPTION_LIST",
    "SUBSCRIPTION_LIST_TYPE",
    "SUBSCRIPTION_TYPE",
    "Admitted",
    "CarriedSubscription",
    "ForwardedSubscription",
    "ForwardedSubscriptionList",
    "SubscriptionForwarding",
]

SUBSCRIPTION_TYPE = "tongban-forwarded-subscription+jws"
SUBSCRIPTION_LIST_TYPE = "tongban-forwarded-subscription-list+jws"
HELD = re.compile(r"(?:[a-z][a-z0-9-]{1,62}:){0,8}\*")
"""Where a listing's subscriptions are kept, in the receiver's names: ``*`` (there), or
``province:*`` (at its peer ``province``)."""
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
    route: tuple[str, ...] = ()
    """For a subscription a middle exchange carries on: its names of the exchanges
    behind it, nearest first; the department is of the last one."""
    previous: str | None = None
    """For a carried subscription: the signed request it carries on, as received."""

    @property
    def department_path(self) -> tuple[str, ...]:
        """The route and the department: ``("county-a", "approval")``."""
        return (*self.route, self.department)

    def carries(self, embedded: ForwardedSubscription) -> bool:
        """The same officer, fields, purpose and position to resume after."""
        return (self.officer, self.fields, self.purpose, self.after_position) == (
            embedded.officer, embedded.fields, embedded.purpose, embedded.after_position,
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
            "after_position": self.after_position,
            "nonce": self.nonce,
            "issued_at": instant(self.issued_at),
            "expires_at": instant(self.expires_at),
        }


@dataclass(frozen=True)
class Admitted:
    """A forwarded subscription to one of our datasets, checked: who asks, for what."""

    actor: RemoteCaller
    dataset: str
    fields: tuple[str, ...]
    purpose: str
    after_position: int | None


@dataclass(frozen=True)
class CarriedSubscription:
    """A forwarded subscription to a dataset we reach through a peer of ours, checked,
    and the decision to carry it: from whom, the request as received, and where to."""

    peer: Peer
    token: str
    request: ForwardedSubscription
    caller: str
    """Our name for the department that asks (``county-a/approval``)."""
    onward: Peer
    remote: RemoteEntry


def _parse(claimed: Mapping[str, Any]) -> ForwardedSubscription:
    bad = PeerRequestInvalid("The forwarded subscription lacks a member or holds a malformed one.")
    try:
        members = carried_members(claimed, max_text=_MAX_TEXT)
        fields, after = claimed["fields"], claimed["after_position"]
        well_formed = (
            all(
                isinstance(claimed[k], str) and len(claimed[k]) <= _MAX_TEXT
                for k in ("dataset", "purpose")
            )
            and isinstance(fields, list)
            and len(fields) <= _MAX_FIELDS
            and all(isinstance(f, str) for f in fields)
            and (after is None or (type(after) is int and -1 <= after <= _MAX_POSITION))
        )
    except (KeyError, TypeError, ValueError) as e:
        raise bad from e
    if not well_formed:
        raise bad
    return ForwardedSubscription(
        **members, dataset=claimed["dataset"], fields=tuple(fields),
        purpose=claimed["purpose"], after_position=after,
    )  # fmt: skip


SUBSCRIPTION = RequestKind(SUBSCRIPTION_TYPE, _parse)
"""Forwarded subscriptions, as a middle exchange carries them."""


@dataclass(frozen=True)
class ForwardedSubscriptionList:
    """A department of the calling exchange asking which subscriptions are kept for it,
    as its node signed it (read-only)."""

    exchange: str
    audience: str
    department: str
    officer: str | None
    held: str
    """Where, in the receiver's names: ``*`` (at the receiver), ``province:*`` (at its
    peer ``province``)."""
    nonce: str
    issued_at: datetime
    expires_at: datetime
    route: tuple[str, ...] = ()
    previous: str | None = None

    @property
    def dataset(self) -> str:
        """What ``verify_chain`` follows from hop to hop, as it follows a dataset's name:
        where the subscriptions are kept, behind one more name at each exchange further
        from the owner."""
        return self.held

    @property
    def department_path(self) -> tuple[str, ...]:
        return (*self.route, self.department)

    def carries(self, embedded: ForwardedSubscriptionList) -> bool:
        """The same officer."""
        return self.officer == embedded.officer

    def payload(self) -> dict[str, object]:
        return carried_payload(self) | {
            "v": 1,
            "exchange": self.exchange,
            "audience": self.audience,
            "department": self.department,
            "officer": self.officer,
            "held": self.held,
            "nonce": self.nonce,
            "issued_at": instant(self.issued_at),
            "expires_at": instant(self.expires_at),
        }


def _parse_listing(claimed: Mapping[str, Any]) -> ForwardedSubscriptionList:
    bad = PeerRequestInvalid("The subscription listing lacks a member or holds a malformed one.")
    try:
        members = carried_members(claimed, max_text=_MAX_TEXT)
        held = claimed["held"]
        well_formed = isinstance(held, str) and HELD.fullmatch(held)
    except (KeyError, TypeError, ValueError) as e:
        raise bad from e
    if not well_formed:
        raise bad
    return ForwardedSubscriptionList(**members, held=held)


SUBSCRIPTION_LIST = RequestKind(SUBSCRIPTION_LIST_TYPE, _parse_listing)
"""Signed listings of a department's subscriptions, as a middle exchange carries them."""


class SubscriptionForwarding:
    """Both sides of a subscription across exchanges; see the module docstring."""

    def __init__(
        self,
        *,
        trust: PeerTrust,
        links: PeerLinks,
        remote: RemoteCatalogue,
        offer: CatalogueOffer,
        routes: Routes,
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
        self._routes = routes
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
        exchange streams them, each batch logged here before it is passed on;
        ``<code>`` may itself be ``<peer's peer>:<code>``, carried by the peer. Raises
        PeerUnknown, DatasetNotFound, the refusal of the owner or of an exchange on the
        way, or PeerUnavailable when a link drops."""
        peer_name, _, code = dataset.partition(":")
        peer = await self._trust.active_peer(peer_name)
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

    async def held_at_peers(
        self, caller: Caller
    ) -> tuple[list[events_pb2.Subscription], list[events_pb2.UnlistedPeer]]:
        """The caller's subscriptions kept at owner exchanges we reach (every active peer,
        and every route our remote catalogue names), asked at all of them at once, named
        as we name things (``province:<id>``, ``city:province:<code>``); and the owners
        that could not be asked, with the reason. Raises nothing for an owner that is
        down or refuses: a listing is never failed by a peer."""
        now = self._clock.now()
        active = [p for p in self._trust.peers() if p.active]
        owners: set[tuple[str, ...]] = {(p.name,) for p in active}
        for stored in await self._remote.list(active, now=now):
            owners.add((stored.remote.peer, *stored.remote.route))
        asked = await asyncio.gather(
            *(self._held_at(caller, owner, now) for owner in sorted(owners))
        )
        held = [s for found in asked if isinstance(found, list) for s in found]
        unlisted = [found for found in asked if isinstance(found, events_pb2.UnlistedPeer)]
        return held, unlisted

    async def _held_at(
        self, caller: Caller, owner: tuple[str, ...], now: datetime
    ) -> list[events_pb2.Subscription] | events_pb2.UnlistedPeer:
        """The caller's subscriptions at the owner exchange ``owner`` (our route to it),
        or why it could not be asked."""
        try:
            peer = await self._trust.active_peer(owner[0])
            request = ForwardedSubscriptionList(
                exchange=self._trust.own_fingerprint.hex(), audience=peer.ca_fingerprint.hex(),
                department=caller.department.code, officer=caller.officer_id,
                held=":".join((*owner[1:], "*")), nonce=self._nonce(), issued_at=now,
                expires_at=now + self._lifetime,
            )  # fmt: skip
            reply = await self._list_at(peer, request)
        except TongbanError as e:
            return events_pb2.UnlistedPeer(peer=":".join(owner), reason=e.reason, message=e.message)
        return reply

    async def _list_at(
        self, peer: Peer, request: ForwardedSubscriptionList
    ) -> list[events_pb2.Subscription]:
        """Ask ``peer`` for the subscriptions ``request`` names, signed by us; return them
        as we name things."""
        token = sign_claims(request.payload(), self._signing, SUBSCRIPTION_LIST_TYPE)
        reply: events_pb2.ListSubscriptionsResponse = await self._links.call(
            peer,
            "the subscriptions it keeps",
            lambda timeout: self._links.stub(peer).ListForwardedSubscriptions(
                federation_pb2.ListForwardedSubscriptionsRequest(request=token), timeout=timeout
            ),
        )
        listed = []
        for subscription in reply.subscriptions:
            subscription.id = f"{peer.name}:{subscription.id}"
            subscription.dataset = f"{peer.name}:{subscription.dataset}"
            listed.append(subscription)
        return listed

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

    # -- the owner's side, or a middle exchange's --------------------------------------

    async def admit(self, peer: Peer, token: str) -> Admitted | CarriedSubscription:
        """The subscription peer ``peer`` forwarded, checked: its node's signature for us,
        the chain of requests it carries (``forwarding.verify_chain``), its window and
        nonce, and a dataset we offer that peer: one of ours (``Admitted``), or one we
        reach through a peer of ours and carry there (``CarriedSubscription``, once
        ``Routes.onward`` allows it; a refusal is logged). Raises PeerSignatureMismatch,
        PeerRequestAltered, PeerRequestExpired, PeerRequestReplayed, PeerRequestInvalid,
        PeerTooManyHops, PeerRouteLoop or DatasetNotFound."""
        now = self._clock.now()
        request, chain = await receive(
            token, kind=SUBSCRIPTION, peer=peer, own_exchange=self._trust.own_fingerprint,
            now=now, max_hops=self._routes.max_hops, what="subscription request",
            first_use=self._first_use,
        )  # fmt: skip
        caller = remote_department(peer.name, *request.department_path)
        if ":" in request.dataset:
            try:
                onward, remote = await self._routes.onward(
                    peer, request.dataset,
                    passed=[request.exchange, *(r.exchange for r in chain)], now=now,
                )  # fmt: skip
            except TongbanError as e:
                await self._carried(request, caller, [], "subscribe.forward", "denied", e.reason)
                raise
            return CarriedSubscription(peer, token, request, caller, onward, remote)
        if await self._offer.offers(peer.name, request.dataset) is None:
            raise DatasetNotFound(
                f"This exchange offers peer {peer.name} no dataset {request.dataset[:100]!r}."
            )
        return Admitted(
            actor=RemoteCaller(caller, request.officer),
            dataset=request.dataset,
            fields=request.fields,
            purpose=request.purpose,
            after_position=request.after_position,
        )

    async def carry(
        self, carried: CarriedSubscription
    ) -> AsyncGenerator[events_pb2.EventBatch, None]:
        """Carry a subscription on to the exchange that offered us its dataset, signed by
        us and embedding the one we got, and relay its events: each batch with only the
        asked fields, logged per subject under the remote identity before it is passed on,
        named as we name things (dataset ``<peer>:<code>``, subscription ``<peer>:<id>``).
        Raises the next exchange's refusal, or PeerUnavailable when the link drops (either
        logged as a denied ``subscribe.receipt``)."""
        request, onward = carried.request, carried.onward
        await self._carried(
            request, carried.caller, [], "subscribe.forward", "allowed", f"peer:{onward.name}"
        )
        now = self._clock.now()
        onward_request = carry_on(
            request, token=carried.token, sender=carried.peer, onward=onward,
            own_exchange=self._trust.own_fingerprint, nonce=self._nonce(), now=now,
            lifetime=self._lifetime, dataset=carried.remote.code,
        )  # fmt: skip
        signed = sign_claims(onward_request.payload(), self._signing, SUBSCRIPTION_TYPE)
        call = self._links.stub(onward).ForwardSubscribe(
            federation_pb2.ForwardSubscribeRequest(request=signed)
        )
        fields = set(request.fields)
        try:
            async for batch in call:
                keys = [e.key for e in batch.events]
                await self._carried(
                    request, carried.caller, keys, "event.receipt", "allowed",
                    f"peer:{onward.name}",
                )  # fmt: skip
                for event in batch.events:
                    # Only what was asked travels on (minimum fields), whatever came back.
                    for name in [n for n in event.fields if n not in fields]:
                        del event.fields[name]
                    event.subscription_id = f"{onward.name}:{event.subscription_id}"
                    event.dataset = request.dataset
                yield batch
        except grpc.aio.AioRpcError as e:
            # The next exchange's refusal (or its being unreachable) ends the stream; we
            # keep it as a receipt, as for a carried query.
            error = peer_error(onward, f"the events of {carried.remote.code}", e)
            await self._carried(
                request, carried.caller, [], "subscribe.receipt", "denied",
                f"{error.reason}; peer:{onward.name}",
            )  # fmt: skip
            raise error from None
        finally:
            call.cancel()

    async def _carried(
        self, request: ForwardedSubscription, caller: str, keys: Sequence[str], action: str,
        decision: Outcome, reason: str,
    ) -> None:  # fmt: skip
        await self._log.append(
            self._recorder.entries(
                keys, at=self._clock.now(), department=caller, officer=request.officer,
                action=action, decision=decision, reason=reason,
                dataset=request.dataset[:200], fields=request.fields,
                purpose=request.purpose, case_id="subscription",
            )
        )  # fmt: skip

    async def listing(self, peer: Peer, token: str) -> str | list[events_pb2.Subscription]:
        """Peer ``peer``'s signed listing, checked (its node's signature, the chain it
        carries, window and nonce): our name for the department whose subscriptions we keep
        to list (``county-a/approval``, ``city/county-a/approval``), or, for those a peer
        of ours keeps (``<peer>:*``), the list we carried the request there for, as we
        name things. Raises PeerSignatureMismatch, PeerRequestAltered,
        PeerRequestExpired, PeerRequestReplayed, PeerRequestInvalid, PeerTooManyHops,
        PeerRouteLoop, PeerUnknown, or, carried, the next exchange's refusal or
        PeerUnavailable."""
        now = self._clock.now()
        request, chain = await receive(
            token, kind=SUBSCRIPTION_LIST, peer=peer, own_exchange=self._trust.own_fingerprint,
            now=now, max_hops=self._routes.max_hops, what="subscription listing",
            first_use=self._first_use,
        )  # fmt: skip
        if request.held == "*":
            return remote_department(peer.name, *request.department_path)
        name, _, rest = request.held.partition(":")
        onward = await self._routes.towards(
            peer, name, passed=[request.exchange, *(r.exchange for r in chain)]
        )
        carried = carry_on(
            request, token=token, sender=peer, onward=onward,
            own_exchange=self._trust.own_fingerprint, nonce=self._nonce(), now=now,
            lifetime=self._lifetime, held=rest,
        )  # fmt: skip
        return await self._list_at(onward, carried)

    def consumer(self, peer: Peer, department: str, route: Sequence[str] = ()) -> str:
        """Our name for peer ``peer``'s department, behind ``route`` when the peer asks
        for an exchange behind it (InvalidArgument if it is none)."""
        return peer_department(peer, department, route)

    async def acknowledge_carried(
        self, peer: Peer, department: str, route: Sequence[str], subscription_id: str,
        position: int,
    ) -> int:  # fmt: skip
        """Carry peer ``peer``'s department's acknowledgement of ``<our peer>:<id>`` (a
        subscription we carry) on to our peer, for ``<peer>/<route>/<department>``;
        return the position it keeps. Raises InvalidArgument, PeerUnknown,
        PeerTooManyHops, PeerRouteLoop, PeerUnavailable or our peer's refusal (only the
        owner knows whose subscription it is, and answers only for that name)."""
        self.consumer(peer, department, route)
        name, _, remote_id = subscription_id.partition(":")
        onward = await self._trust.active_peer(name[:100])
        if onward.name == peer.name:
            raise PeerRouteLoop(
                "The acknowledgement would go back to the exchange it came from; a route "
                "never loops."
            )
        if len(route) + 2 > self._routes.max_hops:
            raise PeerTooManyHops(
                f"Carried on, the acknowledgement would cross {len(route) + 2} links between "
                f"exchanges; this exchange carries at most {self._routes.max_hops}.",
                metadata={"max_hops": str(self._routes.max_hops)},
            )
        reply: events_pb2.AcknowledgeResponse = await self._links.call(
            onward,
            "an acknowledgement",
            lambda timeout: self._links.stub(onward).ForwardAcknowledge(
                federation_pb2.ForwardAcknowledgeRequest(
                    department=department, subscription_id=remote_id, position=position,
                    route=[peer.name, *route],
                ),
                timeout=timeout,
            ),
        )  # fmt: skip
        return reply.acked_position
