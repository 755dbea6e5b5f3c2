"""Fixtures shared by all tests: one real PostgreSQL per run, fresh databases per test,
initialised data dirs, and nodes started over real gRPC with real certificates."""

from __future__ import annotations

import os

# Before grpc is imported: its core logs each failed handshake (several tests make them).
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import contextlib
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest
import pytest_asyncio

from tests.kafka_broker import TansuBroker
from tongban.client import Bundle, ExchangeClient
from tongban.exchange.catalogue.subject_ids import uscc_check_character
from tongban.exchange.datadir import init_data_dir
from tongban.exchange.db import guard
from tongban.exchange.db.database import Database
from tongban.exchange.db.embedded import EmbeddedPostgres, temp_root
from tongban.exchange.enrolment import bundle_dir, enrol_demo_departments
from tongban.exchange.node import Node
from tongban.exchange.settings import Settings, load_settings
from tongban.signing.clock import FixedClock, SystemClock
from tongban.signing.softhsm import SoftHsm

# A task that acquires a pooled connection while it holds one fails the test at once
# (it can deadlock the node under load; see docs/architecture.md, "Connections").
guard.STRICT_POOL = True


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    """One embedded PostgreSQL for the whole run.

    Not under pytest's tmp dir: pytest keeps its root at mode 0700, and as root the server
    runs as another user who must be able to reach its data dir (``temp_root``: 0711).
    """
    root = temp_root("tongban-test-pg-")
    server = EmbeddedPostgres(root)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def admin_dsn(pg_server: EmbeddedPostgres) -> str:
    return pg_server.dsn("postgres")


@contextlib.asynccontextmanager
async def fresh_database(admin_dsn: str, prefix: str = "t_") -> AsyncIterator[str]:
    """A new, empty database in the run's PostgreSQL, dropped when the block ends."""
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    try:
        yield admin_dsn.replace("/postgres?", f"/{name}?")
    finally:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
        finally:
            await conn.close()


@pytest_asyncio.fixture
async def database_url(admin_dsn: str) -> AsyncIterator[str]:
    """A new, empty database for one test, dropped afterwards."""
    async with fresh_database(admin_dsn) as url:
        yield url


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """Settings for a node on a fresh database with an initialised data dir."""
    result = load_settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        grpc_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        key_passphrase="test passphrase",
        shutdown_grace_seconds=1.0,
    )
    init_data_dir(result, SystemClock().now())
    return result


async def enrol_demo(settings: Settings) -> None:
    """Enrol the story's departments not registered yet, as the operator does: with the
    schema owner's login, since the node's role only reads the registry."""
    async with await Database.open(settings, pool_size=1, owner=True) as owner:
        await enrol_demo_departments(owner, settings, SystemClock().now())


@pytest_asyncio.fixture
async def node(settings: Settings) -> AsyncIterator[Node]:
    """A running node with the story's departments enrolled; its clock is a FixedClock."""
    async with Node(settings, clock=FixedClock(SystemClock().now())) as running:
        await enrol_demo(settings)
        yield running


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[TansuBroker]:
    """One Kafka-protocol broker for the run (tests that stop a broker start their own)."""
    broker = TansuBroker()
    broker.start()
    yield broker
    broker.stop()


def kafka_settings(settings: Settings, bootstrap: str) -> Settings:
    """``settings`` in Kafka mode, with topics of their own so tests never share one."""
    return load_settings(
        **{name: getattr(settings, name) for name in _NODE_FIELDS},
        kafka_bootstrap=bootstrap,
        kafka_idempotence=False,  # Tansu has no InitProducerId
        kafka_topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
    )


_NODE_FIELDS = (
    "data_dir",
    "database_url",
    "grpc_listen",
    "http_listen",
    "key_passphrase",
    "shutdown_grace_seconds",
)


@pytest_asyncio.fixture(params=["embedded", "kafka"])
async def events_node(
    request: pytest.FixtureRequest, settings: Settings, kafka_broker: TansuBroker
) -> AsyncIterator[Node]:
    """A node like ``node``, once fed from PostgreSQL alone and once through Kafka."""
    if request.param == "kafka":
        settings = kafka_settings(settings, kafka_broker.bootstrap)
    async with Node(settings, clock=FixedClock(SystemClock().now())) as running:
        await enrol_demo(settings)
        yield running


def raw_channel(node: Node, code: str) -> grpc.aio.Channel:
    """A bare grpc.aio channel to ``node`` over mutual TLS as department ``code`` of the
    demo, for tests that call stubs (or hold connections) themselves."""
    bundle = Bundle.load(bundle_dir(node.settings, code))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=bundle.ca_pem,
        private_key=bundle.tls_key_pem,
        certificate_chain=bundle.tls_cert_pem,
    )
    return grpc.aio.secure_channel(
        f"127.0.0.1:{node.grpc_port}",
        credentials,
        options=[("grpc.ssl_target_name_override", bundle.server_name)],
    )


def client_for(node: Node, code: str, officer: str | None = None) -> ExchangeClient:
    """A client for department ``code`` of the demo, connected to ``node``."""
    bundle = Bundle.load(bundle_dir(node.settings, code))
    return ExchangeClient(bundle, target=f"127.0.0.1:{node.grpc_port}", officer_id=officer)


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    """This run's SoftHSM2 token directory (each test makes its own token in it)."""
    return SoftHsm(tmp_path_factory.mktemp("softhsm"))


def uscc(n: int) -> str:
    """A well-formed 统一社会信用代码, different for each ``n``."""
    first17 = f"91110108{n:09d}"
    return first17 + uscc_check_character(first17)
