"""Two exchanges for federation tests: each a real node with its own data dir, root CA
and database. The run's one embedded PostgreSQL holds both databases (a second database
per test for the second exchange); nothing else is shared (docs/federation.md, "Tests")."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest_asyncio

from tests.conftest import fresh_database
from tongban.exchange.datadir import ca_certificate_pem, init_data_dir
from tongban.exchange.departments import Level
from tongban.exchange.enrolment import enrol_demo_departments
from tongban.exchange.federation.peers import PeerStatus, PeerStore, check_peer_ca
from tongban.exchange.federation.wiring import FederationParts
from tongban.exchange.node import Node
from tongban.exchange.settings import Settings, load_settings
from tongban.signing.certs import load_pem_certificates
from tongban.signing.clock import FixedClock, SystemClock


@pytest_asyncio.fixture
async def county_database_url(admin_dsn: str) -> AsyncIterator[str]:
    """The second exchange's database, in the same PostgreSQL server, dropped afterwards."""
    async with fresh_database(admin_dsn) as url:
        yield url


def exchange_settings(data_dir: Path, database_url: str, **extra: object) -> Settings:
    """Settings of a node of its own exchange: its data dir, root CA and database."""
    result = load_settings(
        data_dir=data_dir,
        database_url=database_url,
        grpc_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        key_passphrase="test passphrase",
        shutdown_grace_seconds=1.0,
        **extra,
    )
    init_data_dir(result, SystemClock().now())
    return result


@pytest_asyncio.fixture
async def province(node: Node) -> Node:
    """The province's exchange: the usual test node, with the story's departments."""
    return node


@pytest_asyncio.fixture
async def city_database_url(admin_dsn: str) -> AsyncIterator[str]:
    """A third exchange's database, for routing over two hops."""
    async with fresh_database(admin_dsn) as url:
        yield url


@contextlib.asynccontextmanager
async def county_node(
    tmp_path: Path, database_url: str, *, name: str = "county", **extra: object
) -> AsyncIterator[Node]:
    """The county's exchange (or another, ``name``): another root CA, data dir and
    database, the same demo department codes (a code is unique only within its exchange)."""
    settings = exchange_settings(tmp_path / name, database_url, **extra)
    async with Node(settings, clock=FixedClock(SystemClock().now())) as running:
        async with owner_pool(running) as pool:
            # The operator's enrolment, with the schema owner's login (as `tongban dept`).
            await enrol_demo_departments(_Owner(pool), settings, SystemClock().now())  # type: ignore[arg-type]
        yield running


@pytest_asyncio.fixture
async def county(tmp_path: Path, county_database_url: str) -> AsyncIterator[Node]:
    async with county_node(tmp_path, county_database_url) as running:
        yield running


@pytest_asyncio.fixture
async def city(tmp_path: Path, city_database_url: str) -> AsyncIterator[Node]:
    """The city's exchange, between the county and the province."""
    async with county_node(tmp_path, city_database_url, name="city") as running:
        yield running


async def add_peer(
    at: Node,
    name: str,
    other: Node,
    *,
    level: Level,
    parent: bool = False,
) -> None:
    """At exchange ``at``, add ``other`` as peer ``name``, as the operator's CLI does (with
    the owner's login), and wait until ``at`` has applied it."""
    ca = check_peer_ca(
        ca_certificate_pem(other.settings),
        own_root=load_pem_certificates(ca_certificate_pem(at.settings))[0],
        now=SystemClock().now(),
    )
    async with owner_pool(at) as pool:
        await PeerStore(pool).add(
            name=name,
            ca=ca,
            endpoint=f"127.0.0.1:{other.grpc_port}",
            level=level,
            is_parent=parent,
        )
    await at.caches_settled()


async def set_peer_status(at: Node, name: str, status: PeerStatus) -> None:
    async with owner_pool(at) as pool:
        await PeerStore(pool).set_status(name, status)
    await at.caches_settled()


async def remove_peer(at: Node, name: str) -> None:
    async with owner_pool(at) as pool:
        await PeerStore(pool).remove(name)
    await at.caches_settled()


def owner_pool(node: Node) -> asyncpg.Pool:
    """A pool on the node's database with the schema owner's login (the test's DSN)."""
    assert node.settings.database_url is not None
    return asyncpg.create_pool(
        node.settings.database_url.get_secret_value(), min_size=1, max_size=1
    )


class _Owner:
    """What enrolment needs of a ``Database``: a pool (here the owner's)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool


def parts(node: Node) -> FederationParts:
    """The node's federation parts (set once it started)."""
    assert node.federation is not None
    return node.federation


async def link(province: Node, county: Node) -> None:
    """Peer the two exchanges both ways: the county names the province ``province`` (its
    parent), the province names the county ``county-a``."""
    await add_peer(county, "province", province, level=Level.PROVINCE, parent=True)
    await add_peer(province, "county-a", county, level=Level.COUNTY)
