"""Peers over mutual TLS: two exchanges, each a real node with its own root CA and
database, linked as their operators link them; strangers, suspended peers, peers posing
as departments and departments posing as peers are refused, each with its reason."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import grpc
import pytest

from tests.exchange.federation.conftest import (
    add_peer,
    exchange_settings,
    link,
    parts,
    remove_peer,
    set_peer_status,
)
from tongban.client.errors import from_rpc_error
from tongban.exchange.datadir import (
    ca_certificate_pem,
    load_ca,
    load_node_credentials,
)
from tongban.exchange.departments import Level
from tongban.exchange.enrolment import bundle_dir
from tongban.exchange.federation.errors import PeerUnavailable
from tongban.exchange.federation.peers import PeerStatus
from tongban.exchange.node import Node
from tongban.signing.certs import certificate_pem, issue_department_tls_certificate
from tongban.signing.clock import SystemClock
from tongban.signing.keys import generate_private_key, private_key_pem
from tongban.v1 import federation_pb2, federation_pb2_grpc, node_pb2, node_pb2_grpc


def _channel(target: Node, key_pem: bytes, chain_pem: bytes) -> grpc.aio.Channel:
    """A channel to ``target`` that presents ``chain_pem`` and trusts ``target``'s root."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_certificate_pem(target.settings),
        private_key=key_pem,
        certificate_chain=chain_pem,
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{target.grpc_port}", credentials)


def _node_channel(caller: Node, target: Node) -> grpc.aio.Channel:
    """What ``caller``'s node presents when it calls ``target``: its node certificate."""
    own = load_node_credentials(caller.settings)
    return _channel(target, own.key_pem, own.cert_chain_pem)


async def _hello(channel: grpc.aio.Channel) -> federation_pb2.HelloResponse:
    stub = federation_pb2_grpc.PeerServiceStub(channel)
    return await stub.Hello(federation_pb2.HelloRequest(), timeout=10)


async def _hello_from(node: Node, peer_name: str) -> federation_pb2.HelloResponse:
    """A hello through ``node``'s own link to its peer ``peer_name``."""
    links = parts(node).links
    peer = await parts(node).trust.peer(peer_name)
    assert peer is not None
    return await links.call(
        peer,
        "a hello",
        lambda timeout: links.stub(peer).Hello(federation_pb2.HelloRequest(), timeout=timeout),
    )


async def _refusal(call: object) -> tuple[str, str]:
    """(status code name, reason) of an awaited call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    error = from_rpc_error(caught.value)
    return error.code.name, error.reason


async def test_linked_exchanges_call_each_other_as_peers(province: Node, county: Node) -> None:
    await link(province, county)
    # Each node's own links: its node certificate, trusting only the peer's root.
    hello = await _hello_from(county, "province")
    assert hello.peer == "county-a", "the province knows the county by its own name for it"
    assert hello.exchange == parts(province).trust.own_fingerprint.hex()
    async with _node_channel(province, county) as channel:
        assert (await _hello(channel)).peer == "province"


async def test_a_foreign_ca_is_refused_at_the_handshake_until_added(
    province: Node, tmp_path: Path, database_url: str
) -> None:
    # A third exchange nobody linked: its own root CA, and a node certificate from it.
    stranger = exchange_settings(tmp_path / "stranger", database_url)
    own = load_node_credentials(stranger)
    async with _channel(province, own.key_pem, own.cert_chain_pem) as channel:
        code, reason = await _refusal(_hello(channel))
    assert (code, reason) == ("UNAVAILABLE", "UNAVAILABLE"), "no status crosses a handshake"

    # Added as a peer, the same certificate is accepted at once, without a restart.
    class _Stranger:
        settings = stranger
        grpc_port = 1

    await add_peer(province, "stranger", _Stranger(), level=Level.CITY)  # type: ignore[arg-type]
    async with _channel(province, own.key_pem, own.cert_chain_pem) as channel:
        assert (await _hello(channel)).peer == "stranger"


async def test_a_suspended_peer_is_refused_on_open_and_new_connections(
    province: Node, county: Node
) -> None:
    await link(province, county)
    async with _node_channel(county, province) as open_before:
        assert (await _hello(open_before)).peer == "county-a"
        await set_peer_status(province, "county-a", PeerStatus.SUSPENDED)
        # A connection made before the suspension: refused at the call.
        assert await _refusal(_hello(open_before)) == ("PERMISSION_DENIED", "PEER_SUSPENDED")
    async with _node_channel(county, province) as new:
        # A new connection: refused at the handshake.
        assert await _refusal(_hello(new)) == ("UNAVAILABLE", "UNAVAILABLE")
    # The county's node sees its peer as unavailable, fast, with our reason code.
    parts(county).links.forget(set())  # its next call opens a new connection
    with pytest.raises(PeerUnavailable) as caught:
        await _hello_from(county, "province")
    assert caught.value.reason == "PEER_UNAVAILABLE"

    await set_peer_status(province, "county-a", PeerStatus.ACTIVE)
    async with _node_channel(county, province) as again:
        assert (await _hello(again)).peer == "county-a"
        await remove_peer(province, "county-a")
        assert await _refusal(_hello(again)) == ("NOT_FOUND", "PEER_UNKNOWN")


async def test_a_peer_node_never_reaches_department_methods(province: Node, county: Node) -> None:
    await link(province, county)
    async with _node_channel(county, province) as channel:
        who = node_pb2_grpc.NodeServiceStub(channel).WhoAmI(node_pb2.WhoAmIRequest(), timeout=10)
        assert await _refusal(who) == ("PERMISSION_DENIED", "PEER_NOT_A_DEPARTMENT")

    # The county's CA mints a certificate naming the province's samr: still the county's.
    ca = load_ca(county.settings, SystemClock().now())
    key = generate_private_key("P-256")
    forged = issue_department_tls_certificate(
        ca_cert=ca.cert,
        ca_key=ca.key,
        code="samr",
        name="市场监督管理局",
        public_key=key.public_key(),
        now=SystemClock().now(),
    )
    chain = certificate_pem(forged) + certificate_pem(ca.cert)
    async with _channel(province, private_key_pem(key), chain) as channel:
        who = node_pb2_grpc.NodeServiceStub(channel).WhoAmI(node_pb2.WhoAmIRequest(), timeout=10)
        assert await _refusal(who) == ("PERMISSION_DENIED", "PEER_NOT_A_DEPARTMENT")
        # Nor is it a peer node: it names no node.
        assert await _refusal(_hello(channel)) == ("PERMISSION_DENIED", "PEER_ONLY")


async def test_a_department_cannot_call_the_peer_service(province: Node) -> None:
    bundle = bundle_dir(province.settings, "samr")
    key, chain = (bundle / "tls.key").read_bytes(), (bundle / "tls.crt").read_bytes()
    async with _channel(province, key, chain) as channel:
        assert await _refusal(_hello(channel)) == ("PERMISSION_DENIED", "PEER_ONLY")
    # Nor can the exchange's own node certificate pose as a peer.
    async with _node_channel(province, province) as channel:
        assert await _refusal(_hello(channel)) == ("PERMISSION_DENIED", "PEER_ONLY")


async def test_the_node_role_only_reads_the_peer_registry(province: Node) -> None:
    assert province.db is not None
    statements = (
        "INSERT INTO peer (name, level, endpoint, ca_pem, ca_fingerprint) "
        "VALUES ('x', 'city', 'h:1', repeat('x', 200), decode(repeat('00', 32), 'hex'))",
        "UPDATE peer SET status = 'active'",
        "DELETE FROM peer",
    )
    async with province.db.pool.acquire() as conn:
        assert await conn.fetchval("SELECT current_user") == "tongban_node"
        for statement in statements:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
