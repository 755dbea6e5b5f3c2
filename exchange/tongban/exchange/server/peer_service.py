"""``tongban.v1.PeerService``: what peer exchanges' nodes call, and
``tongban.v1.FederationService``: what our departments call about federation
(docs/federation.md).

PeerService methods run only for a client certificate the interceptor attributed to an
active peer (``current_peer``); no department ever reaches them, and no peer reaches
FederationService.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from tongban.exchange.audit.checkpoints import Checkpointer
from tongban.exchange.audit.store import MAX_INDEX, AuditStore
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.federation.forwarding import Forwarding
from tongban.exchange.federation.grants import GrantForwarding
from tongban.exchange.federation.licence_fetch import LicenceFetchForwarding
from tongban.exchange.federation.offer import CatalogueOffer
from tongban.exchange.federation.remote import RemoteCatalogue
from tongban.exchange.federation.subscriptions import (
    CarriedSubscription,
    SubscriptionForwarding,
)
from tongban.exchange.federation.sync import CatalogueSync
from tongban.exchange.federation.trail import PeerLogEntryRefused, may_see, relay_log_entry
from tongban.exchange.federation.trust import PeerTrust
from tongban.exchange.federation.witnessing import PeerWitness
from tongban.exchange.server.audit_service import entry_message
from tongban.exchange.server.caller import current_caller, current_peer
from tongban.exchange.server.events_service import SubscriptionService
from tongban.exchange.server.sharing_services import dataset_message, grant_message, grant_status
from tongban.exchange.server.timestamps import timestamp
from tongban.licence import TrustList
from tongban.signing.clock import Clock
from tongban.v1 import audit_pb2, events_pb2, federation_pb2, federation_pb2_grpc, grants_pb2

__all__ = ["FederationService", "PeerService"]

Context = grpc.aio.ServicerContext[Any, Any]


class PeerService(federation_pb2_grpc.PeerServiceServicer):
    def __init__(
        self, node_name: str, trust: PeerTrust, offer: CatalogueOffer, sync: CatalogueSync,
        clock: Clock, forwarding: Forwarding, trust_list: Callable[[], Awaitable[TrustList]],
        log_store: AuditStore, checkpoints: Checkpointer, witness: PeerWitness,
        grants: GrantForwarding, licence_fetch: LicenceFetchForwarding,
        subscriptions: SubscriptionForwarding, streams: SubscriptionService,
    ) -> None:  # fmt: skip
        self._subscriptions = subscriptions
        self._streams = streams
        self._licence_fetch = licence_fetch
        self._grants = grants
        self._witness = witness
        self._trust = trust
        self._log_store = log_store
        self._checkpoints = checkpoints
        self._forwarding = forwarding
        self._trust_list = trust_list
        self._node_name = node_name
        self._exchange = trust.own_fingerprint.hex()
        self._offer = offer
        self._sync = sync
        self._clock = clock

    async def Hello(
        self, request: federation_pb2.HelloRequest, context: Context
    ) -> federation_pb2.HelloResponse:
        return federation_pb2.HelloResponse(
            peer=current_peer().name,
            exchange=self._exchange,
            node=self._node_name,
            server_time=timestamp(self._clock.now()),
        )

    async def ListEntries(
        self, request: federation_pb2.ListEntriesRequest, context: Context
    ) -> federation_pb2.ListEntriesResponse:
        peer = current_peer()
        entries = await self._offer.entries_for(peer.name)
        entries += await self._forwarding.routes.relayed_for(peer, now=self._clock.now())
        return federation_pb2.ListEntriesResponse(
            entries=entries, offered_at=timestamp(self._clock.now())
        )

    async def CatalogueChanged(
        self, request: federation_pb2.CatalogueChangedRequest, context: Context
    ) -> federation_pb2.CatalogueChangedResponse:
        self._sync.poke(current_peer().name)
        return federation_pb2.CatalogueChangedResponse()

    async def ForwardQuery(
        self, request: federation_pb2.ForwardQueryRequest, context: Context
    ) -> federation_pb2.ForwardQueryResponse:
        return await self._forwarding.answer(current_peer(), request.request)

    async def GetTrustList(
        self, request: federation_pb2.GetTrustListRequest, context: Context
    ) -> federation_pb2.GetTrustListResponse:
        current_peer()  # a peer's node only, as for every method here
        trust_list = await self._trust_list()
        return federation_pb2.GetTrustListResponse(trust_list=trust_list.token)

    async def GetLogEntry(
        self, request: federation_pb2.GetLogEntryRequest, context: Context
    ) -> audit_pb2.EntryWithProof:
        peer = current_peer()
        if request.index > MAX_INDEX:
            raise InvalidArgument(
                f"index is {request.index:,}; the log's indices stop at {MAX_INDEX:,}.",
                metadata={"field": "index"},
            )
        entry = await self._log_store.entry(request.index)
        if not may_see(entry.caller, peer.name):
            raise PeerLogEntryRefused(
                f"Entry {request.index} of our access log was not made for a request of "
                f"exchange {peer.name}; a peer sees only the entries of its own requests.",
                metadata={"index": str(request.index)},
            )
        checkpoint = await self._checkpoints.latest()
        if checkpoint.size <= entry.index:
            checkpoint = await self._checkpoints.sign_now()  # on demand, as GetEntry
        proof = await self._log_store.inclusion(entry.index, checkpoint.size)
        return audit_pb2.EntryWithProof(
            entry=entry_message(entry),
            checkpoint=audit_pb2.Checkpoint(
                size=checkpoint.size,
                root=checkpoint.root,
                note=checkpoint.note,
                signed_at=timestamp(checkpoint.signed_at),
                verifier_key=self._checkpoints.verifier_key,
            ),
            inclusion_proof=proof,
        )

    async def GetRoutedLogEntry(
        self, request: federation_pb2.GetRoutedLogEntryRequest, context: Context
    ) -> federation_pb2.RoutedLogEntry:
        return await relay_log_entry(
            store=self._log_store,
            find_peer=self._trust.peer,
            links=self._forwarding.links,
            asker=current_peer().name,
            route=list(request.route),
            index=request.index,
            case_id=request.case_id,
        )

    async def AddCheckpoint(
        self, request: federation_pb2.AddCheckpointRequest, context: Context
    ) -> federation_pb2.AddCheckpointResponse:
        line = await self._witness.add_checkpoint(current_peer(), request.body)
        return federation_pb2.AddCheckpointResponse(cosignatures=line)

    async def ForwardGrantRequest(
        self, request: federation_pb2.ForwardGrantRequestRequest, context: Context
    ) -> grants_pb2.Grant:
        grant = await self._grants.answer(current_peer(), request.request)
        if isinstance(grant, grants_pb2.Grant):  # carried on: the next exchange's, renamed
            return grant
        return grant_message(grant, self._clock.now())

    async def ForwardGrantRevoke(
        self, request: federation_pb2.ForwardGrantRevokeRequest, context: Context
    ) -> grants_pb2.Grant:
        grant = await self._grants.answer_revoke(current_peer(), request.request)
        if isinstance(grant, grants_pb2.Grant):  # carried on: the next exchange's, renamed
            return grant
        return grant_message(grant, self._clock.now())

    async def ListForwardedGrants(
        self, request: federation_pb2.ListForwardedGrantsRequest, context: Context
    ) -> grants_pb2.ListGrantsResponse:
        peer = current_peer()
        status = (
            grant_status(request.status)
            if request.status != grants_pb2.GRANT_STATUS_UNSPECIFIED
            else None
        )
        route = list(request.route)
        if ":" in request.dataset:  # a dataset we carry requests of: its owner's grants
            return grants_pb2.ListGrantsResponse(
                grants=await self._grants.carried_grants_of(
                    peer, department=request.department, route=route,
                    dataset=request.dataset, status=request.status,
                )
            )  # fmt: skip
        grants = await self._grants.grants_of(
            peer, department=request.department, route=route, dataset=request.dataset,
            status=status,
        )  # fmt: skip
        now = self._clock.now()
        return grants_pb2.ListGrantsResponse(grants=[grant_message(g, now) for g in grants])

    async def ForwardLicenceFetch(
        self, request: federation_pb2.ForwardLicenceFetchRequest, context: Context
    ) -> federation_pb2.ForwardLicenceFetchResponse:
        return await self._licence_fetch.answer(current_peer(), request.request)

    async def ForwardSubscribe(
        self, request: federation_pb2.ForwardSubscribeRequest, context: Context
    ) -> AsyncIterator[events_pb2.EventBatch]:
        admitted = await self._subscriptions.admit(current_peer(), request.request)
        if isinstance(admitted, CarriedSubscription):  # a peer's dataset: carried on
            streamed = self._subscriptions.carry(admitted)
        else:
            streamed = self._streams.stream(
                admitted.actor,
                admitted.dataset,
                admitted.fields,
                admitted.purpose,
                admitted.after_position,
            )
        async with contextlib.aclosing(streamed) as batches:
            async for batch in batches:
                yield batch

    async def ForwardAcknowledge(
        self, request: federation_pb2.ForwardAcknowledgeRequest, context: Context
    ) -> events_pb2.AcknowledgeResponse:
        peer, route = current_peer(), list(request.route)
        if ":" in request.subscription_id:  # a subscription we carry: acknowledged there
            acked = await self._subscriptions.acknowledge_carried(
                peer, request.department, route, request.subscription_id, request.position
            )
            return events_pb2.AcknowledgeResponse(acked_position=acked)
        consumer = self._subscriptions.consumer(peer, request.department, route)
        return await self._streams.acknowledge(consumer, request.subscription_id, request.position)

    async def ListForwardedSubscriptions(
        self, request: federation_pb2.ListForwardedSubscriptionsRequest, context: Context
    ) -> events_pb2.ListSubscriptionsResponse:
        listed = await self._subscriptions.listing(current_peer(), request.request)
        if isinstance(listed, str):  # kept here, for that department only
            listed = await self._streams.subscriptions_of(listed)
        return events_pb2.ListSubscriptionsResponse(subscriptions=listed)


class FederationService(federation_pb2_grpc.FederationServiceServicer):
    def __init__(
        self, trust: PeerTrust, offer: CatalogueOffer, remote: RemoteCatalogue, clock: Clock
    ) -> None:
        self._trust = trust
        self._offer = offer
        self._remote = remote
        self._clock = clock

    async def SetFederation(
        self, request: federation_pb2.SetFederationRequest, context: Context
    ) -> federation_pb2.Federation:
        caller = current_caller()
        done = await self._offer.set_federation(
            caller.department.code,
            request.code,
            federated=request.federated,
            peers=list(request.peers),
            known_peers={p.name for p in self._trust.peers()},
            officer=caller.officer_id,
            now=self._clock.now(),
        )
        return federation_pb2.Federation(
            code=done.code, federated=done.federated, peers=list(done.peers)
        )

    async def ListRemoteDatasets(
        self, request: federation_pb2.ListRemoteDatasetsRequest, context: Context
    ) -> federation_pb2.ListRemoteDatasetsResponse:
        current_caller()  # any department of ours may read the remote catalogue
        peers = [p for p in self._trust.peers() if p.active and request.peer in ("", p.name)]
        stored = await self._remote.list(peers, now=self._clock.now())
        return federation_pb2.ListRemoteDatasetsResponse(
            datasets=[
                federation_pb2.RemoteDataset(
                    code=s.remote.remote_code,
                    peer=s.remote.peer,
                    peer_level=s.peer_level,
                    owner=s.remote.remote_owner,
                    version=s.remote.entry.version,
                    spec=dataset_message(s.remote.entry).spec,
                    received_at=timestamp(s.received_at),
                    signed_entry=s.remote.signed,
                )
                for s in stored
            ]
        )
