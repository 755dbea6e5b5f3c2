"""One exchange node: gRPC (mutual TLS) and HTTP listeners over one database.

``Node.start()`` opens the database (starting embedded PostgreSQL if needed), applies
migrations, and binds both listeners; ``Node.stop()`` stops accepting, lets in-flight calls
finish within the grace period, and closes the database (stopping an embedded server that
no other process uses). Use ``async with Node(settings) as node``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import get_args

import asyncpg
import grpc
from aiohttp import web
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tongban.errors import TongbanError
from tongban.exchange.audit.anomalies import AnomalyKind, find_anomalies
from tongban.exchange.audit.checkpoints import Checkpointer
from tongban.exchange.audit.integrator import Integrator
from tongban.exchange.audit.log import AccessLog, SubjectHasher
from tongban.exchange.audit.recorder import AccessRecorder
from tongban.exchange.audit.refusals import (
    AUTH_REFUSED,
    CALL_REFUSED,
    RefusalTally,
    auth_refusal_purpose,
    call_refusal_purpose,
)
from tongban.exchange.audit.store import AuditStore
from tongban.exchange.catalogue.calendar import WorkingCalendar
from tongban.exchange.datadir import (
    ca_certificate_pem,
    ensure_node_keys,
    issuing_certificates,
    load_kafka_payload_keys,
    load_log_key,
    load_log_signer,
    load_log_sm2_signer,
    load_node_credentials,
    load_node_signing,
    load_notify_secret,
    log_origin,
    open_token,
    sm2_roots,
)
from tongban.exchange.db.database import Database
from tongban.exchange.db.notify import ChangeListener
from tongban.exchange.db.trouble import DRIVER_ERRORS
from tongban.exchange.departments import DepartmentStore
from tongban.exchange.errors import AddressInUse, DatabaseUnavailable
from tongban.exchange.fairness import CpuShare
from tongban.exchange.federation.peers import PeerStore
from tongban.exchange.federation.trail import CaseTrail, CaseTrails
from tongban.exchange.federation.wiring import FederationParts
from tongban.exchange.http import Admission, build_http_app
from tongban.exchange.identity import Caller
from tongban.exchange.kafka.connection import kafka_connection
from tongban.exchange.kafka.feed import KafkaFeed
from tongban.exchange.kafka.relay import OutboxRelay
from tongban.exchange.kafka.topics import KafkaTopics
from tongban.exchange.licensing.case_feed import CaseFeed
from tongban.exchange.licensing.case_report import overdue_report
from tongban.exchange.licensing.case_store import CaseStore
from tongban.exchange.licensing.cases import CaseClock
from tongban.exchange.licensing.feed import LicenceFeed
from tongban.exchange.licensing.follow_through import FollowThrough
from tongban.exchange.licensing.issuance import StatusAction
from tongban.exchange.licensing.item_store import ServiceItemStore
from tongban.exchange.licensing.notices import CaseNotices
from tongban.exchange.licensing.notifiers import notifier_from_setting
from tongban.exchange.licensing.package_store import PackageStore
from tongban.exchange.licensing.ratings import RatingStore
from tongban.exchange.licensing.service import Licensing
from tongban.exchange.licensing.setup import ensure_status_key, sm2_seals_for, vault_for
from tongban.exchange.licensing.status import StatusLists
from tongban.exchange.licensing.supervision import RECENT_DAYS, recent_decisions
from tongban.exchange.metrics import NodeMetrics
from tongban.exchange.server.audit_service import AuditService
from tongban.exchange.server.auth import Authenticator
from tongban.exchange.server.cases_service import CaseService
from tongban.exchange.server.events_service import SubscriptionService
from tongban.exchange.server.interceptor import ExchangeInterceptor
from tongban.exchange.server.items_service import ServiceItemService
from tongban.exchange.server.licence_service import LicenceService, SealService
from tongban.exchange.server.limits import CallLimiter
from tongban.exchange.server.node_service import NodeService
from tongban.exchange.server.packages_service import PackageService
from tongban.exchange.server.peer_service import FederationService, PeerService
from tongban.exchange.server.ratings_service import RatingService
from tongban.exchange.server.sharing_services import (
    CatalogueService,
    GrantService,
    QueryService,
    RecordService,
)
from tongban.exchange.server.supervision_service import SupervisionService
from tongban.exchange.settings import Settings
from tongban.exchange.sharing.events import EventFeed, EventStore, EventWaker, PostgresFeed
from tongban.exchange.sharing.service import Sharing
from tongban.exchange.sharing.storage import storage_usage
from tongban.exchange.web import WebConsole
from tongban.exchange.witness.collector import Cosigner, parse_witness_endpoints
from tongban.exchange.witness.keys import find_witness
from tongban.licence import BUILTIN_REGISTRY
from tongban.signing.certs import (
    certificate_fingerprint,
    department_code,
    load_pem_certificates,
)
from tongban.signing.clock import Clock, SystemClock
from tongban.signing.pkcs11 import Token
from tongban.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    cases_pb2,
    cases_pb2_grpc,
    catalogue_pb2,
    catalogue_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    federation_pb2,
    federation_pb2_grpc,
    grants_pb2,
    grants_pb2_grpc,
    items_pb2,
    items_pb2_grpc,
    licence_pb2,
    licence_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
    packages_pb2,
    packages_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    ratings_pb2,
    ratings_pb2_grpc,
    records_pb2,
    records_pb2_grpc,
    supervision_pb2,
    supervision_pb2_grpc,
)

__all__ = ["Node"]

_log = logging.getLogger(__name__)

FOLLOW_SWEEP_SECONDS = 60.0
"""How often the node looks for deferred materials whose days ran out."""

_MAX_MESSAGE = 16 * 1024 * 1024
ANOMALY_KINDS = get_args(AnomalyKind)


class Node:
    """An exchange node; see the module docstring for its lifecycle."""

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.metrics = NodeMetrics()
        self.db: Database | None = None
        self._auth: Authenticator | None = None
        self._changes: ChangeListener | None = None
        self.access_log: AccessLog | None = None
        self.checkpointer: Checkpointer | None = None
        self.integrator: Integrator | None = None
        self.cosigner: Cosigner | None = None
        self._hasher: SubjectHasher | None = None
        self._anomalies_at: datetime | None = None
        self._supervision_at: datetime | None = None
        self._waker: EventWaker | None = None
        self._events: EventStore | None = None
        self._feed: EventFeed | None = None
        self.relay: OutboxRelay | None = None
        self.sharing: Sharing | None = None
        self.licensing: Licensing | None = None
        self._grpc: grpc.aio.Server | None = None
        self._http: web.AppRunner | None = None
        self.admission: Admission | None = None
        self.console: WebConsole | None = None
        self.cases: CaseStore | None = None
        self.packages: PackageStore | None = None
        self.notices: CaseNotices | None = None
        self.follow_through: FollowThrough | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._auth_refusals: RefusalTally[tuple[bytes, str]] | None = None
        self._call_refusals: RefusalTally[tuple[str, str]] | None = None
        self.ratings: RatingStore | None = None
        self._token: Token | None = None
        self.federation: FederationParts | None = None
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.grpc_port = 0
        self.http_port = 0
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        """Open the database and bind the listeners; on failure, undo what was started."""
        # With a PKCS#11 token configured, the node's signing keys are the token's.
        self._token = await asyncio.to_thread(open_token)
        try:
            ensure_node_keys(self.settings, self.clock.now(), keys_in_token=self._token is not None)
            credentials = load_node_credentials(self.settings)
        except BaseException:
            if self._token is not None:
                self._token.close()
            raise
        try:
            node_signing = load_node_signing(self.settings, self._token)
            log_signer = load_log_signer(self.settings, self._token)
            self.db = await Database.open(self.settings)
            self._changes = ChangeListener(self.db.pool)
            self._auth = Authenticator(self.db.pool, self._changes, self.clock)
            # Everything that subscribes to notifications does so before the listener starts.
            self._waker = EventWaker(self._changes)
            self._events = EventStore(self.db.pool)
            self._feed = self._event_feed(self.db.pool, self._changes, self._events, self._waker)
            self._hasher = SubjectHasher(load_log_key(self.settings))
            self.access_log = AccessLog(
                self.db.log_pool, on_written=self.metrics.access_log_entries.inc
            )
            self.sharing = Sharing(
                self.db.pool,
                self._changes,
                self.access_log,
                self._hasher,
                node_signing,
                self.clock,
                self.settings.node_name,
                WorkingCalendar(
                    frozenset(self.settings.holidays), frozenset(self.settings.makeup_workdays)
                ),
                self.settings.grant_answer_days,
                timezone(timedelta(hours=self.settings.working_utc_offset_hours)),
                on_decision=self.metrics.count_decision,
                max_pending_grants=self.settings.dept_max_pending_grants,
            )
            self.federation = FederationParts(
                settings=self.settings,
                pool=self.db.pool,
                listener=self._changes,
                sharing=self.sharing,
                signing=node_signing,
                ca_pem=credentials.ca_pem,
                key_pem=credentials.key_pem,
                chain_pem=credentials.cert_chain_pem,
                clock=self.clock,
                access_log=self.access_log,
                hasher=self._hasher,
                # This exchange witnesses its peers' logs once its operator made a witness
                # key on the node's data dir (docs/federation.md, "Peers as witnesses").
                witness=find_witness(self.settings, self._token),
            )
            vault = vault_for(self.db.pool, self.settings, self._token, self.clock)
            await ensure_status_key(vault, self.settings, self.clock.now())
            self.licensing = Licensing(
                self.db.pool,
                vault=vault,
                # The base URL is known once the HTTP listener is bound (_start_http).
                status_lists=StatusLists(
                    self.db.pool,
                    vault,
                    "http://localhost",
                    ttl=timedelta(seconds=self.settings.status_list_ttl_seconds),
                ),
                registry=BUILTIN_REGISTRY,
                feed=LicenceFeed(self.sharing.datasets),
                records=self.sharing.records,
                access_log=self.access_log,
                hasher=self._hasher,
                node_signing=node_signing,
                roots=load_pem_certificates(ca_certificate_pem(self.settings)),
                clock=self.clock,
                node_name=self.settings.node_name,
                decide=self.sharing.decide,
                published_intermediates=functools.partial(issuing_certificates, self.settings),
                sm2_seals=sm2_seals_for(self.db.pool, self.settings, self.clock),
                sm2_roots=functools.partial(sm2_roots, self.settings),
            )
            # The seals the trust list names are read again only when one changes.
            self.licensing.trust.watch(self._changes)
            # Licences of peer exchanges, with their trust lists (docs/federation.md).
            self.licensing.trust.peers = self.federation.licences.verify
            self.licensing.peer_roots = self.federation.trust.active_roots
            # Licences held in peers, for the materials resolver, both ways.
            self.federation.licence_fetch.approval_fetch = self.licensing.approval_fetch
            self.licensing.peer_licences = self.federation.licence_fetch.fetch
            # One integrator per exchange folds sequenced entries into the tree: every
            # node runs one, and the one holding its lock does the work.
            self.integrator = Integrator(self.db.pool, grown=self.access_log.grown)
            self.checkpointer = Checkpointer(
                self.db.pool,
                log_signer,
                log_origin(self.settings),
                self.clock,
                signer=self.settings.node_name,
                interval=self.settings.checkpoint_interval_seconds,
                sm2=load_log_sm2_signer(self.settings),
                # After `tongban key rotate checkpoint`: the new key, from the file or token.
                reload=lambda: load_log_signer(self.settings, self._token),
                integrator=self.integrator,
            )
            await self._changes.start()
            await self.federation.start()
            await self.access_log.start()
            await self.integrator.start()
            await self.checkpointer.start(self.integrator.integrated)
            witnesses = parse_witness_endpoints(self.settings.witnesses)
            if witnesses:  # docs/audit-log.md, "Witnesses"
                self.cosigner = Cosigner(
                    self.db.pool,
                    self.checkpointer,
                    witnesses,
                    self.clock,
                    node_name=self.settings.node_name,
                    peer_transport=self.federation.witness_transport,
                    on_outcome=self.metrics.count_witness,
                    on_cosigned=self.metrics.witness_cosigned,
                )
                await self.cosigner.start()
            if self.relay is not None:
                await self.relay.start()
            await self._start_grpc(
                credentials.key_pem, credentials.cert_chain_pem, credentials.ca_pem
            )
            await self._start_http()
        except BaseException:
            await self._close()
            raise
        self.metrics.up.set(1)
        _log.info(
            "node %s serving gRPC on %s:%d and HTTP on %s:%d (%s)",
            self.settings.node_name,
            self.settings.grpc_listen.host,
            self.grpc_port,
            self.settings.http_listen.host,
            self.http_port,
            self.db.where,
        )

    def _event_feed(
        self, pool: asyncpg.Pool, changes: ChangeListener, store: EventStore, waker: EventWaker
    ) -> EventFeed:
        """PostgreSQL alone by default; with Kafka configured, a relay and a Kafka feed."""
        bootstrap = self.settings.kafka_bootstrap
        if bootstrap is None:
            return PostgresFeed(store, waker)
        connection = kafka_connection(self.settings, f"tongban-{self.settings.node_name}")
        keys = load_kafka_payload_keys(self.settings)
        topics = KafkaTopics(
            connection,
            self.settings.kafka_topic_prefix,
            self.settings.kafka_partitions,
            self.settings.kafka_replication,
        )
        self.relay = OutboxRelay(
            pool,
            changes,
            topics,
            self.clock,
            connection=connection,
            keys=keys,
            idempotence=self.settings.kafka_idempotence,
            on_published=self.metrics.relay_published.inc,
            on_error=self.metrics.relay_errors.inc,
        )
        return KafkaFeed(
            store,
            waker,
            topics,
            connection=connection,
            keys=keys,
            on_rejected=lambda kind: self.metrics.kafka_rejected.labels(kind).inc(),
        )

    def _auth_refusal_logger(self) -> Callable[[bytes, TongbanError], Awaitable[None]]:
        """Log refused authentications in the access log, so they feed the anomaly report:
        caller = the department the certificate names (or "unknown"), purpose = how many
        refusals the entry stands for and the certificate's SHA-256 fingerprint. At most
        one entry per certificate and reason a second, yet every refusal counted: the rest
        of a second's refusals are written when the second ends, or when the node stops
        (``RefusalTally``)."""
        log = self.access_log
        assert log is not None
        recorder = AccessRecorder(self.settings.node_name)

        async def write(key: tuple[bytes, str], count: int) -> None:
            cert_pem, reason = key
            fingerprint, department = _certificate_names(cert_pem)
            await log.append(
                [
                    recorder.entry(
                        at=self.clock.now(),
                        department=department,
                        officer=None,
                        action=AUTH_REFUSED,
                        purpose=auth_refusal_purpose(count, fingerprint),
                        decision="denied",
                        reason=reason,
                    )
                ]
            )

        tally: RefusalTally[tuple[bytes, str]] = RefusalTally(write)
        self._auth_refusals = tally

        async def log_refusal(cert_pem: bytes, error: TongbanError) -> None:
            await tally.refused((cert_pem, error.reason))

        return log_refusal

    def _call_limiter(self) -> CallLimiter:
        """Each department's limits on its calls, refusals counted and logged."""
        log = self.access_log
        assert log is not None
        recorder = AccessRecorder(self.settings.node_name)

        # The latest refused call of each (department, reason): its entry names it.
        latest: dict[tuple[str, str], tuple[Caller, str]] = {}

        async def write(key: tuple[str, str], count: int) -> None:
            caller, method = latest[key]
            await log.append(
                [
                    recorder.entry(
                        at=self.clock.now(),
                        department=caller.department.code,
                        officer=caller.officer_id,
                        action=CALL_REFUSED,
                        purpose=call_refusal_purpose(count, method),
                        decision="denied",
                        reason=key[1],
                    )
                ]
            )

        tally: RefusalTally[tuple[str, str]] = RefusalTally(write)
        self._call_refusals = tally

        async def log_refusal(caller: Caller, method: str, reason: str, _count: int) -> None:
            key = (caller.department.code, reason)
            latest[key] = (caller, method)
            await tally.refused(key)

        return CallLimiter(
            concurrent=self.settings.dept_max_concurrent_calls,
            per_second=self.settings.dept_calls_per_second,
            subscriptions=self.settings.dept_max_subscriptions,
            on_refused=log_refusal,
            count_refused=lambda department, reason: self.metrics.calls_refused.labels(
                department, reason
            ).inc(),
        )

    async def _start_grpc(self, key_pem: bytes, chain_pem: bytes, ca_pem: bytes) -> None:
        assert self._auth is not None
        # One limiter and one loop share for the gRPC calls and the HTTP requests alike.
        admission = self.admission = Admission(self._call_limiter(), CpuShare())
        server = grpc.aio.server(
            interceptors=[
                ExchangeInterceptor(
                    self._auth,
                    self.metrics,
                    admission.limiter,
                    on_auth_refused=self._auth_refusal_logger(),
                    share=admission.share,
                    peers=self.federation.trust if self.federation is not None else None,
                )
            ],
            options=[
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
                ("grpc.max_send_message_length", _MAX_MESSAGE),
                # Several worker processes of one host share the port (serve --workers).
                ("grpc.so_reuseport", 1 if self.settings.reuse_port else 0),
                # Connections that hold nothing are closed: idle ones, and new ones that
                # never finish their handshakes (docs/deploy.md, "Connections").
                ("grpc.max_connection_idle_ms", int(self.settings.grpc_idle_seconds * 1000)),
                (
                    "grpc.server_handshake_timeout_ms",
                    int(self.settings.grpc_handshake_seconds * 1000),
                ),
            ],
        )
        assert self.sharing is not None
        assert self.db is not None
        node_pb2_grpc.add_NodeServiceServicer_to_server(
            NodeService(
                self.settings.node_name,
                self.clock,
                self.db.pool,
                self.settings.dept_max_stored_bytes,
            ),
            server,
        )
        catalogue_pb2_grpc.add_CatalogueServiceServicer_to_server(
            CatalogueService(self.sharing, self.clock), server
        )
        records_pb2_grpc.add_RecordServiceServicer_to_server(RecordService(self.sharing), server)
        grants_pb2_grpc.add_GrantServiceServicer_to_server(
            GrantService(
                self.sharing,
                self.clock,
                self.federation.grants if self.federation is not None else None,
            ),
            server,
        )
        query_pb2_grpc.add_QueryServiceServicer_to_server(QueryService(self.sharing), server)
        assert self.checkpointer is not None
        assert self.access_log is not None
        assert self.db is not None
        assert self._hasher is not None
        assert self._events is not None
        assert self._feed is not None
        subscriptions = SubscriptionService(
            self.sharing,
            self._events,
            self._feed,
            self.clock,
            self.federation.subscriptions if self.federation is not None else None,
        )
        events_pb2_grpc.add_SubscriptionServiceServicer_to_server(subscriptions, server)
        audit_pb2_grpc.add_AuditServiceServicer_to_server(
            AuditService(
                AuditStore(self.db.pool),
                self.checkpointer,
                self.access_log,
                self._hasher,
                self.clock,
                self.settings.node_name,
                covert_max_days=self.settings.covert_max_days,
            ),
            server,
        )
        assert self.licensing is not None
        items = self.items = ServiceItemStore(
            self.db.pool, self.sharing.datasets, self.licensing.registry, self._hasher.page_tokens()
        )
        items_pb2_grpc.add_ServiceItemServiceServicer_to_server(
            ServiceItemService(items, self.clock), server
        )
        case_clock = CaseClock(
            WorkingCalendar(
                frozenset(self.settings.holidays), frozenset(self.settings.makeup_workdays)
            ),
            timezone(timedelta(hours=self.settings.working_utc_offset_hours)),
        )
        case_feed = CaseFeed(self.sharing.datasets)
        packages = self.packages = PackageStore(
            self.db.pool,
            items,
            self.sharing.records,
            case_feed,
            self.access_log,
            self._hasher,
            self.settings.node_name,
        )
        notifier = notifier_from_setting(
            self.settings.case_notify,
            secret=load_notify_secret(self.settings) if self.settings.case_notify else b"",
        )
        ratings = self.ratings = RatingStore(
            self.db.pool, self.access_log, self._hasher, case_clock, self.settings.node_name
        )
        if notifier is not None:
            self.notices = CaseNotices(notifier, items, ratings=ratings)
            self.notices.start()
        cases = self.cases = CaseStore(
            self.db.pool,
            items,
            self.access_log,
            self._hasher,
            case_clock,
            self.settings.node_name,
            records=self.sharing.records,
            feed=case_feed,
            packages=packages,
            notices=self.notices,
        )
        cases.start()
        follow = self.follow_through = FollowThrough(
            self.db.pool,
            items,
            self.access_log,
            self._hasher,
            case_clock,
            self.settings.node_name,
            records=self.sharing.records,
            feed=case_feed,
            load_case=cases.load,
            suspend=self._suspend_for_breach,
        )
        self._sweeper = asyncio.get_running_loop().create_task(
            self._sweep_follow_through(follow), name="follow-through"
        )
        cases_pb2_grpc.add_CaseServiceServicer_to_server(
            CaseService(
                cases,
                self.clock,
                pool=self.db.pool,
                access_log=self.access_log,
                tokens=self._hasher.page_tokens(),  # the same tokens on every node
                node_name=self.settings.node_name,
                follow_through=follow,
            ),
            server,
        )
        packages_pb2_grpc.add_PackageServiceServicer_to_server(
            PackageService(packages, self.clock), server
        )
        ratings_pb2_grpc.add_RatingServiceServicer_to_server(
            RatingService(ratings, self.clock, pool=self.db.pool), server
        )
        licence_pb2_grpc.add_LicenceServiceServicer_to_server(
            LicenceService(
                self.licensing, self.sharing, items, self.clock, cases_pool=self.db.pool
            ),
            server,
        )
        supervision_pb2_grpc.add_SupervisionServiceServicer_to_server(
            SupervisionService(
                self.db.pool,
                self.clock,
                offset=timedelta(hours=self.settings.working_utc_offset_hours),
                access_log=self.access_log,
                tokens=self._hasher.page_tokens(),  # the same tokens on every node
                node_name=self.settings.node_name,
            ),
            server,
        )
        licence_pb2_grpc.add_SealServiceServicer_to_server(
            SealService(self.licensing, self.clock), server
        )
        assert self.federation is not None
        federation_pb2_grpc.add_PeerServiceServicer_to_server(
            PeerService(
                self.settings.node_name,
                self.federation.trust,
                self.federation.offer,
                self.federation.sync,
                self.clock,
                self.federation.forwarding,
                self.licensing.trust.trust_list,
                AuditStore(self.db.pool),
                self.checkpointer,
                self.federation.witness,
                self.federation.grants,
                self.federation.licence_fetch,
                self.federation.subscriptions,
                subscriptions,
            ),
            server,
        )
        federation_pb2_grpc.add_FederationServiceServicer_to_server(
            FederationService(
                self.federation.trust, self.federation.offer, self.federation.remote, self.clock
            ),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        services = (
            *(
                module.DESCRIPTOR.services_by_name[name].full_name
                for module, name in (
                    (node_pb2, "NodeService"),
                    (catalogue_pb2, "CatalogueService"),
                    (records_pb2, "RecordService"),
                    (grants_pb2, "GrantService"),
                    (query_pb2, "QueryService"),
                    (audit_pb2, "AuditService"),
                    (events_pb2, "SubscriptionService"),
                    (licence_pb2, "LicenceService"),
                    (licence_pb2, "SealService"),
                    (items_pb2, "ServiceItemService"),
                    (cases_pb2, "CaseService"),
                    (packages_pb2, "PackageService"),
                    (ratings_pb2, "RatingService"),
                    (supervision_pb2, "SupervisionService"),
                    (federation_pb2, "PeerService"),
                    (federation_pb2, "FederationService"),
                )
            ),
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(services, server)
        # Client certificates of our root or an active peer's, following the peer
        # registry without a restart (docs/federation.md, "Mutual TLS between nodes").
        credentials = self.federation.trust.server_credentials()
        address = str(self.settings.grpc_listen)
        try:
            port = server.add_secure_port(address, credentials)
        except RuntimeError as e:
            raise AddressInUse(
                f"Cannot listen for gRPC on {address}: the address is in use or not local; "
                "choose another with --grpc-listen."
            ) from e
        if port == 0:
            raise AddressInUse(f"Cannot listen for gRPC on {address}; choose another address.")
        await server.start()
        self._grpc = server
        self.grpc_port = port
        for service in services[:-1]:
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self.federation.start_sync()
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)

    async def _start_http(self) -> None:
        assert self.db is not None
        console = None
        if (
            self.licensing is not None
            and self.sharing is not None
            and self.access_log is not None
            and self._hasher is not None
            and self.checkpointer is not None
        ):
            console = WebConsole(
                pool=self.db.pool,
                licensing=self.licensing,
                sharing=self.sharing,
                access_log=self.access_log,
                hasher=self._hasher,
                checkpointer=self.checkpointer,
                log_origin=log_origin(self.settings),
                log_verifier=self.checkpointer.public_key,
                clock=self.clock,
                node_name=self.settings.node_name,
                public_url=self.settings.public_url,
                cases=self.cases,
                packages=self.packages,
                items=self.items,
                ratings=self.ratings,
                working_offset=timedelta(hours=self.settings.working_utc_offset_hours),
                trails=self._follow_trail if self.federation is not None else None,
                metrics=self.metrics,
            )
        self.console = console
        app = build_http_app(
            self.db,
            self.metrics,
            self.settings.node_name,
            before_scrape=[
                self._count_overdue,
                self._count_anomalies,
                self._measure_events,
                self._measure_supervision,
                self._measure_storage,
            ],
            licensing=self.licensing,
            console=console,
            admission=self.admission,
        )
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            # Idle connections, and those whose request headers never finish, are closed.
            keepalive_timeout=self.settings.http_idle_seconds,
        )
        await runner.setup()
        self._http = runner
        listen = self.settings.http_listen
        site = web.TCPSite(runner, listen.host, listen.port, reuse_port=self.settings.reuse_port)
        try:
            await site.start()
        except OSError as e:
            raise AddressInUse(
                f"Cannot listen for HTTP on {listen}: {e.strerror}; choose another with "
                "--http-listen."
            ) from e
        # aiohttp exposes the bound port only on its server: asyncio's or uvloop's, each
        # with ``sockets``.
        sockets: Sequence[socket.socket] = getattr(site._server, "sockets", ())
        self.http_port = sockets[0].getsockname()[1]
        if self.licensing is not None:
            self.licensing.status_lists.base_url = self.settings.public_url or (
                f"http://{self.settings.node_hostnames[0]}:{self.http_port}"
            )
        if self.ratings is not None:  # the rating links of decisions' notices
            self.ratings.base_url = self.settings.public_url or (
                f"http://{self.settings.node_hostnames[0]}:{self.http_port}"
            )

    async def _follow_trail(self, case_id: str) -> CaseTrail:
        """The case followed across exchanges, with this node's peer links."""
        assert self.db is not None
        assert self.federation is not None
        return await CaseTrails(
            AuditStore(self.db.pool), PeerStore(self.db.pool), self.federation.links
        ).follow(case_id)

    async def _count_overdue(self) -> None:
        assert self.sharing is not None
        try:
            overdue = await self.sharing.grants.overdue_count(self.clock.now())
        except DRIVER_ERRORS as e:
            raise DatabaseUnavailable("Cannot count overdue grants.") from e
        self.metrics.grants_overdue.set(overdue)

    async def _count_anomalies(self) -> None:
        """Refresh the anomaly gauges from the last 24 hours, at most once a minute."""
        assert self.db is not None
        now = self.clock.now()
        if self._anomalies_at is not None and now - self._anomalies_at < timedelta(minutes=1):
            return
        try:
            found = await find_anomalies(self.db.pool, start=now - timedelta(days=1), end=now)
        except DRIVER_ERRORS as e:
            raise DatabaseUnavailable("Cannot read the access log for anomalies.") from e
        self._anomalies_at = now
        for kind in ANOMALY_KINDS:
            self.metrics.audit_anomalies.labels(kind).set(sum(a.kind == kind for a in found))

    async def _measure_supervision(self) -> None:
        """Refresh the supervision gauges (overdue cases, recent within-limit share), at
        most once a minute: computed here, never on a request."""
        assert self.db is not None
        now = self.clock.now()
        if self._supervision_at is not None and now - self._supervision_at < timedelta(minutes=1):
            return
        try:
            overdue = await overdue_report(self.db.pool, now=now)
            recent = await recent_decisions(self.db.pool, now=now, days=RECENT_DAYS)
        except DRIVER_ERRORS as e:
            raise DatabaseUnavailable("Cannot read the cases for the supervision gauges.") from e
        self.metrics.set_supervision(
            {d.department: (d.past_promised, d.past_legal) for d in overdue.departments},
            {r.department: r.within_promised / r.decided for r in recent if r.decided},
        )
        self._supervision_at = now

    async def _measure_storage(self) -> None:
        """Refresh the storage gauges: what each department's datasets hold, beside its
        quota (one row per department, read on each scrape)."""
        assert self.db is not None
        try:
            usage = await storage_usage(self.db.pool)
        except DRIVER_ERRORS as e:
            raise DatabaseUnavailable("Cannot read what the departments store.") from e
        default = self.settings.dept_max_stored_bytes
        self.metrics.set_storage(
            {u.department: (u.stored_bytes, u.quota_or(default)) for u in usage}
        )

    async def _measure_events(self) -> None:
        """Refresh the subscription lag gauges and, in Kafka mode, the relay backlog."""
        assert self._events is not None
        try:
            subscriptions = await self._events.of_consumer(None)
            unpublished = await self._events.unpublished() if self.relay is not None else 0
        except DRIVER_ERRORS as e:
            raise DatabaseUnavailable("Cannot read the subscriptions' lag.") from e
        # One series per consumer and dataset, the worst of its subscriptions: /metrics
        # is unauthenticated, so it names no subscription, and its size does not grow
        # with the number of subscriptions (bounded per department as well).
        worst: dict[tuple[str, str], tuple[float, float]] = {}
        for sub in subscriptions:
            events, seconds = worst.get((sub.consumer, sub.dataset), (0, 0))
            worst[sub.consumer, sub.dataset] = (
                max(events, sub.lag_events),
                max(seconds, sub.lag_seconds),
            )
        self.metrics.subscription_lag_events.clear()
        self.metrics.subscription_lag_seconds.clear()
        for labels, (events, seconds) in worst.items():
            self.metrics.subscription_lag_events.labels(*labels).set(events)
            self.metrics.subscription_lag_seconds.labels(*labels).set(seconds)
        self.metrics.outbox_unpublished.set(unpublished)

    async def stop(self, grace: float | None = None) -> None:
        """Drain and stop; idempotent."""
        if self._stopped.is_set():
            return
        self.metrics.up.set(0)
        await self._health.enter_graceful_shutdown()
        if self._grpc is not None:
            wait = self.settings.shutdown_grace_seconds if grace is None else grace
            await self._grpc.stop(wait)
        await self._close()
        self._stopped.set()
        _log.info("node %s stopped", self.settings.node_name)

    async def _close(self) -> None:
        if self._http is not None:
            await self._http.cleanup()
            self._http = None
        if self._grpc is not None:
            await self._grpc.stop(0)
            self._grpc = None
        if self._auth_refusals is not None:  # no refusal can come now: write the pending
            await self._auth_refusals.close()
            self._auth_refusals = None
        if self._call_refusals is not None:
            await self._call_refusals.close()
            self._call_refusals = None
        if self.relay is not None:
            await self.relay.stop()
            self.relay = None
        if self.cosigner is not None:  # before the peer links it may ask through
            await self.cosigner.stop()
            self.cosigner = None
        if self.federation is not None:
            await self.federation.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self.cases is not None:
            await self.cases.stop()  # before the access log: it commits with it
        if self.notices is not None:
            await self.notices.aclose()
            self.notices = None
        if self.access_log is not None:
            await self.access_log.stop()
        if self.integrator is not None:  # integrates what is left, if it leads
            await self.integrator.stop()
            self.integrator = None
        if self.checkpointer is not None:
            await self.checkpointer.stop()
            self.checkpointer = None
        self.access_log = None
        if self._changes is not None:
            await self._changes.stop()
            self._changes = None
        self._auth = None
        self.licensing = None
        if self.db is not None:
            await self.db.close()
        if self._token is not None:
            self._token.close()
            self._token = None

    async def _suspend_for_breach(self, department: str, number: str, reason: str) -> None:
        """Suspend licence ``number`` as its issuing ``department`` (a 容缺 or 告知承诺
        breach under the item's on_breach rule)."""
        assert self.db is not None
        assert self.licensing is not None
        found = await DepartmentStore(self.db.pool).find(department)
        if found is None:
            return
        caller = Caller(department=found, officer_id=None, cert_fingerprint=b"")
        await self.licensing.issuance.change_status(caller, number, StatusAction.SUSPEND, reason)

    async def _sweep_follow_through(self, follow: FollowThrough) -> None:
        """Mark deferrals whose days ran out as breaches, every FOLLOW_SWEEP_SECONDS."""
        while True:
            try:
                await follow.sweep(self.clock.now())
            except Exception:  # noqa: BLE001 - logged; the next sweep tries again
                _log.exception("follow-through sweep failed")
            await asyncio.sleep(FOLLOW_SWEEP_SECONDS)

    async def caches_settled(self) -> None:
        """Return once this node has seen every change committed before the call (a
        department suspended, a grant revoked by another connection or node)."""
        if self._changes is not None:
            await self._changes.barrier()
        if self.federation is not None:
            await self.federation.settled()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _certificate_names(cert_pem: bytes) -> tuple[str, str]:
    """The certificate's SHA-256 fingerprint (hex) and the department it names, as far as
    they can be read ("unreadable" / "unknown" otherwise)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return "unreadable", "unknown"
    fingerprint = certificate_fingerprint(cert).hex()
    try:
        return fingerprint, department_code(cert)
    except TongbanError:
        return fingerprint, "unknown"
