"""A node's part in federation, composed: the peers' trust, links to peers, our offer,
the remote catalogues and peers as witnesses (docs/federation.md). The node starts it
with the database and stops it before closing the database."""

from __future__ import annotations

import asyncpg

from tongban.exchange.audit.log import AccessLog, SubjectHasher
from tongban.exchange.datadir import NodeSigning
from tongban.exchange.db.notify import ChangeListener
from tongban.exchange.federation.forwarding import Forwarding
from tongban.exchange.federation.grants import GrantForwarding
from tongban.exchange.federation.licence_fetch import LicenceFetchForwarding
from tongban.exchange.federation.licences import PeerLicences
from tongban.exchange.federation.links import PeerLinks
from tongban.exchange.federation.offer import CatalogueOffer
from tongban.exchange.federation.remote import RemoteCatalogue
from tongban.exchange.federation.routing import Routes
from tongban.exchange.federation.subscriptions import SubscriptionForwarding
from tongban.exchange.federation.sync import CatalogueSync
from tongban.exchange.federation.trust import PeerTrust
from tongban.exchange.federation.witnessing import PeerWitness, PeerWitnessTransport
from tongban.exchange.settings import Settings
from tongban.exchange.sharing.service import Sharing
from tongban.exchange.witness.keys import WitnessIdentity
from tongban.exchange.witness.shared_state import SharedWitnessState
from tongban.licence import BUILTIN_REGISTRY
from tongban.signing.certs import load_pem_certificates
from tongban.signing.clock import Clock

__all__ = ["FederationParts"]


class FederationParts:
    """Made before the change listener starts (its parts subscribe to it); then
    ``start()`` before the gRPC server, ``start_sync()`` once it serves, ``stop()``."""

    def __init__(
        self,
        *,
        settings: Settings,
        pool: asyncpg.Pool,
        listener: ChangeListener,
        sharing: Sharing,
        signing: NodeSigning,
        ca_pem: bytes,
        key_pem: bytes,
        chain_pem: bytes,
        clock: Clock,
        access_log: AccessLog,
        hasher: SubjectHasher,
        witness: WitnessIdentity | None = None,
    ) -> None:
        """``witness``: this exchange's witness key (``tongban witness init`` on the node's
        data dir), with which it witnesses its peers' logs; None: it does not."""
        self.trust = PeerTrust(
            pool, listener, load_pem_certificates(ca_pem)[0], key_pem=key_pem, chain_pem=chain_pem
        )
        self.links = PeerLinks(
            key_pem=key_pem, chain_pem=chain_pem, call_seconds=settings.peer_call_seconds
        )
        self.remote = RemoteCatalogue(pool)
        self.offer = CatalogueOffer(pool, sharing, signing, self.trust.own_fingerprint)
        self.routes = Routes(
            trust=self.trust, remote=self.remote, signing=signing, max_hops=settings.peer_max_hops
        )
        self.sync = CatalogueSync(
            trust=self.trust,
            links=self.links,
            remote=self.remote,
            offer=self.offer,
            routes=self.routes,
            listener=listener,
            clock=clock,
            interval=settings.peer_sync_seconds,
        )

        self.forwarding = Forwarding(
            pool=pool,
            trust=self.trust,
            links=self.links,
            remote=self.remote,
            offer=self.offer,
            routes=self.routes,
            sharing=sharing,
            access_log=access_log,
            hasher=hasher,
            signing=signing,
            node_name=settings.node_name,
            clock=clock,
            request_seconds=settings.peer_request_seconds,
        )
        sharing.forward = self.forwarding.query
        self.grants = GrantForwarding(
            trust=self.trust,
            links=self.links,
            remote=self.remote,
            offer=self.offer,
            routes=self.routes,
            grants=sharing.grants,
            access_log=access_log,
            signing=signing,
            node_name=settings.node_name,
            clock=clock,
            request_seconds=settings.peer_request_seconds,
            first_use=self.forwarding.first_use,
        )
        self.licences = PeerLicences(
            trust=self.trust, links=self.links, registry=BUILTIN_REGISTRY, clock=clock,
            cache_dir=settings.data_dir / "peers" / "trust-lists",
        )  # fmt: skip
        self.licence_fetch = LicenceFetchForwarding(
            trust=self.trust, links=self.links, licences=self.licences, access_log=access_log,
            hasher=hasher, signing=signing, node_name=settings.node_name, clock=clock,
            request_seconds=settings.peer_request_seconds, first_use=self.forwarding.first_use,
            offer=self.offer, registry=BUILTIN_REGISTRY,
        )  # fmt: skip
        self.subscriptions = SubscriptionForwarding(
            trust=self.trust, links=self.links, remote=self.remote, offer=self.offer,
            routes=self.routes, access_log=access_log, hasher=hasher, signing=signing,
            node_name=settings.node_name,
            clock=clock, request_seconds=settings.peer_request_seconds,
            first_use=self.forwarding.first_use,
        )  # fmt: skip
        # Peers as witnesses, both ways (docs/federation.md, "Peers as witnesses").
        self.witness = PeerWitness(
            witness, SharedWitnessState(pool, node_name=settings.node_name), clock
        )
        self.witness_transport = PeerWitnessTransport(self.trust, self.links)

    async def start(self) -> None:
        """Read the peers (the gRPC server's trust needs them)."""
        await self.trust.start()

    def start_sync(self) -> None:
        """Start pulling peers' catalogues and telling them of changes to ours."""
        self.sync.start()

    async def settled(self) -> None:
        """Return once the peer changes notified so far are applied."""
        await self.trust.settled()

    async def stop(self) -> None:
        await self.sync.stop()
        await self.links.close()
        await self.trust.stop()
