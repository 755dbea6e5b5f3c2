"""Authentication over real gRPC with real certificates: who gets through, who does not."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import asyncpg
import grpc
import pytest
from cryptography import x509

from tests.exchange.conftest import bundle_path
from tongban.client import Bundle, ExchangeClient, ExchangeError
from tongban.exchange.datadir import load_ca
from tongban.exchange.db.database import Database
from tongban.exchange.departments import DepartmentStore, Level, Status
from tongban.exchange.node import Node
from tongban.exchange.settings import Settings
from tongban.signing.certs import (
    certificate_fingerprint,
    certificate_pem,
    create_root_ca,
    issue_department_tls_certificate,
    load_pem_certificates,
)
from tongban.signing.clock import FixedClock, SystemClock
from tongban.signing.keys import generate_private_key, private_key_pem


def _target(node: Node) -> str:
    return f"127.0.0.1:{node.grpc_port}"


def _raw_channel(
    node: Node, bundle: Bundle, *, client_certificate: bool = True
) -> grpc.aio.Channel:
    """A plain gRPC channel (no typed client), to send what the client would refuse to."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=bundle.ca_pem,
        private_key=bundle.tls_key_pem if client_certificate else None,
        certificate_chain=bundle.tls_cert_pem if client_certificate else None,
    )
    return grpc.aio.secure_channel(
        _target(node), credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    )


def _with_cert(bundle: Bundle, cert: x509.Certificate, key_pem: bytes) -> Bundle:
    return Bundle(
        department=bundle.department,
        name=bundle.name,
        endpoint=bundle.endpoint,
        server_name=bundle.server_name,
        ca_pem=bundle.ca_pem,
        # the bundle's issuing CA after the new leaf, as a department's client sends it
        tls_cert_pem=b"".join(
            map(certificate_pem, [cert, *load_pem_certificates(bundle.tls_cert_pem)[1:]])
        ),
        tls_key_pem=key_pem,
        seal_cert_pem=bundle.seal_cert_pem,
        seal_key_pem=bundle.seal_key_pem,
    )


async def _call(bundle: Bundle, node: Node, officer: str | None = None) -> ExchangeError:
    async with ExchangeClient(bundle, target=_target(node), officer_id=officer, timeout=5) as c:
        with pytest.raises(ExchangeError) as caught:
            await c.who_am_i()
    return caught.value


def _fingerprint(bundle: Bundle) -> str:
    return certificate_fingerprint(x509.load_pem_x509_certificate(bundle.tls_cert_pem)).hex()


_REFUSALS = re.compile(r"([0-9]+) refusals? of certificate sha256:([0-9a-f]{64})")


async def _refusals(pool: asyncpg.Pool) -> list[tuple[str, str, str, int, str]]:
    """The log's auth.refused entries: (caller, decision, reason, count, fingerprint)."""
    rows = await pool.fetch(
        "SELECT caller, decision, reason, purpose FROM access_log"
        " WHERE action = 'auth.refused' ORDER BY idx"
    )
    found = []
    for row in rows:
        parts = _REFUSALS.fullmatch(row["purpose"])
        assert parts is not None, row["purpose"]
        found.append((row["caller"], row["decision"], row["reason"], int(parts[1]), parts[2]))
    return found


async def _until_refusals_total(pool: asyncpg.Pool, total: int) -> None:
    """Wait (at most 30 s) until the auth.refused entries count ``total`` refusals."""
    async with asyncio.timeout(30):
        while sum(r[3] for r in await _refusals(pool)) < total:
            await asyncio.sleep(0.05)


async def test_registered_department_is_known_by_its_certificate(
    node: Node, settings: Settings
) -> None:
    bundle = Bundle.load(bundle_path(settings, "samr"))
    async with ExchangeClient(bundle, target=_target(node), officer_id="A-0001") as client:
        me = await client.who_am_i()
    assert me.department == "samr"
    assert me.name == "县市场监督管理局"
    assert me.level == "county"
    assert me.officer_id == "A-0001"
    assert me.node == settings.node_name


async def test_auditor_role_is_reported(node: Node, settings: Settings) -> None:
    async with ExchangeClient(
        Bundle.load(bundle_path(settings, "audit")), target=_target(node)
    ) as client:
        me = await client.who_am_i()
    assert me.roles == ("auditor",)


async def test_certificate_from_a_foreign_ca_fails_the_handshake(
    node: Node, settings: Settings
) -> None:
    now = SystemClock().now()
    ca_key = generate_private_key()
    ca = create_root_ca(common_name="Foreign", key=ca_key, now=now)
    key = generate_private_key()
    cert = issue_department_tls_certificate(
        ca_cert=ca, ca_key=ca_key, code="samr", name="x", public_key=key.public_key(), now=now
    )
    bundle = _with_cert(Bundle.load(bundle_path(settings, "samr")), cert, private_key_pem(key))
    error = await _call(bundle, node)
    assert error.code is grpc.StatusCode.UNAVAILABLE


async def test_expired_certificate_fails_the_handshake(node: Node, settings: Settings) -> None:
    bundle = _bundle_with_new_cert(settings, "samr", like="samr", days_ago=30, days=1)
    error = await _call(bundle, node)
    assert error.code is grpc.StatusCode.UNAVAILABLE


async def test_no_client_certificate_fails_the_handshake(node: Node, settings: Settings) -> None:
    bundle = Bundle.load(bundle_path(settings, "samr"))
    async with _raw_channel(node, bundle, client_certificate=False) as channel:
        from tongban.v1 import node_pb2, node_pb2_grpc

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await node_pb2_grpc.NodeServiceStub(channel).WhoAmI(node_pb2.WhoAmIRequest(), timeout=5)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_suspended_department_is_refused_until_reactivated(
    node: Node, settings: Settings
) -> None:
    assert node.db is not None
    bundle = Bundle.load(bundle_path(settings, "tax"))
    async with (
        await Database.open(settings, pool_size=1, owner=True) as owner,  # the operator's
        ExchangeClient(bundle, target=_target(node)) as client,
    ):
        store = DepartmentStore(owner.pool)
        await client.who_am_i()  # cached as active now
        await store.set_status("tax", Status.SUSPENDED)
        # The cache entry is dropped by NOTIFY; poll briefly for the notification to land.
        for _ in range(50):
            try:
                await client.who_am_i()
            except ExchangeError as e:
                error = e
                break
        else:
            pytest.fail("a suspended department kept being served")
        assert error.code is grpc.StatusCode.PERMISSION_DENIED
        assert error.reason == "DEPARTMENT_SUSPENDED"
        assert error.metadata == {"department": "tax"}
        # The refusal is in the access log at once, with the certificate's fingerprint.
        assert await _refusals(node.db.pool) == [
            ("tax", "denied", "DEPARTMENT_SUSPENDED", 1, _fingerprint(bundle))
        ]
        await store.set_status("tax", Status.ACTIVE)
        for _ in range(50):
            try:
                await client.who_am_i()
                break
            except ExchangeError:
                continue
        else:
            pytest.fail("a reactivated department stayed refused")


def _bundle_with_new_cert(
    settings: Settings, code: str, *, like: str, days_ago: int = 0, days: int = 825
) -> Bundle:
    """``like``'s bundle with a fresh certificate for ``code`` from the exchange's own CA."""
    ca = load_ca(settings, SystemClock().now())
    key = generate_private_key()
    cert = issue_department_tls_certificate(
        ca_cert=ca.cert,
        ca_key=ca.key,
        code=code,
        name="部门",
        public_key=key.public_key(),
        now=SystemClock().now() - timedelta(days=days_ago),
        validity=timedelta(days=days),
    )
    return _with_cert(Bundle.load(bundle_path(settings, like)), cert, private_key_pem(key))


async def test_valid_certificate_of_an_unregistered_department_is_refused(
    node: Node, settings: Settings
) -> None:
    ghost = _bundle_with_new_cert(settings, "ghost", like="samr")
    error = await _call(ghost, node)
    assert error.code is grpc.StatusCode.UNAUTHENTICATED
    assert error.reason == "DEPARTMENT_UNKNOWN"
    assert node.db is not None
    # The first refusal is in the access log at once, with the certificate's fingerprint.
    fingerprint = _fingerprint(ghost)
    assert await _refusals(node.db.pool) == [
        ("ghost", "denied", "DEPARTMENT_UNKNOWN", 1, fingerprint)
    ]
    # A burst of the same refusal is merged into an entry a second, and the tail of the
    # burst is written when its second ends, though no refusal comes after it
    # (issue 14, finding 13b: 6 refusals used to leave one entry saying "1 refusal").
    for _ in range(5):
        assert (await _call(ghost, node)).reason == "DEPARTMENT_UNKNOWN"
    await _until_refusals_total(node.db.pool, 6)
    entries = await _refusals(node.db.pool)
    assert sum(count for *_, count, _ in entries) == 6
    assert {entry[:3] + entry[4:] for entry in entries} == {
        ("ghost", "denied", "DEPARTMENT_UNKNOWN", fingerprint)
    }


async def test_refusals_still_pending_are_written_when_the_node_stops(
    settings: Settings, database_url: str
) -> None:
    # A certificate of the exchange's CA for a department no one registered.
    ca = load_ca(settings, SystemClock().now())
    key = generate_private_key()
    cert = issue_department_tls_certificate(
        ca_cert=ca.cert, ca_key=ca.key, code="ghost", name="部门",
        public_key=key.public_key(), now=SystemClock().now(),
    )  # fmt: skip
    key_pem = private_key_pem(key)
    cert_pem = b"".join(map(certificate_pem, [cert, *ca.intermediates]))
    ghost = Bundle(
        department="ghost", name="部门", endpoint="", server_name="localhost",
        ca_pem=certificate_pem(ca.root), tls_cert_pem=cert_pem, tls_key_pem=key_pem,
        seal_cert_pem=cert_pem, seal_key_pem=key_pem,
    )  # fmt: skip
    async with Node(settings, clock=FixedClock(SystemClock().now())) as node:
        for _ in range(6):
            assert (await _call(ghost, node)).reason == "DEPARTMENT_UNKNOWN"
    # Stopped at once: what its second had not yet written was written at shutdown.
    async with asyncpg.create_pool(database_url, min_size=1, max_size=1) as pool:
        entries = await _refusals(pool)
    assert sum(count for *_, count, _ in entries) == 6
    assert {entry[4] for entry in entries} == {_fingerprint(ghost)}


async def test_a_replaced_certificate_is_no_longer_accepted(node: Node, settings: Settings) -> None:
    """Another valid certificate for a registered code is not the registered one."""
    error = await _call(_bundle_with_new_cert(settings, "police", like="police"), node)
    assert error.code is grpc.StatusCode.UNAUTHENTICATED
    assert error.reason == "CERTIFICATE_NOT_REGISTERED"


async def test_node_clock_past_certificate_expiry_refuses(node: Node, settings: Settings) -> None:
    """The node checks validity with its own (injected) clock too, not only TLS."""
    assert isinstance(node.clock, FixedClock)
    node.clock.advance(timedelta(days=3000))
    error = await _call(Bundle.load(bundle_path(settings, "samr")), node)
    assert error.code is grpc.StatusCode.UNAUTHENTICATED
    assert error.reason == "CERTIFICATE_EXPIRED"


@pytest.mark.parametrize("officer", ["x" * 65, "-leading", "with space"])
async def test_malformed_officer_id_is_refused_by_the_node(
    node: Node, settings: Settings, officer: str
) -> None:
    """Sent raw (the typed client refuses these before sending), the node refuses them."""
    from tongban.v1 import node_pb2, node_pb2_grpc

    bundle = Bundle.load(bundle_path(settings, "samr"))
    async with _raw_channel(node, bundle) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await node_pb2_grpc.NodeServiceStub(channel).WhoAmI(
                node_pb2.WhoAmIRequest(), timeout=5, metadata=(("x-tongban-officer", officer),)
            )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("officer", ["x" * 65, "with space", "张三"])
async def test_client_refuses_a_malformed_officer_id_before_sending(
    node: Node, settings: Settings, officer: str
) -> None:
    with pytest.raises(ExchangeError) as caught:
        ExchangeClient(Bundle.load(bundle_path(settings, "samr")), officer_id=officer)
    assert caught.value.reason == "INVALID_ARGUMENT"


async def test_health_and_reflection_are_served(node: Node, settings: Settings) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    bundle = Bundle.load(bundle_path(settings, "samr"))
    async with _raw_channel(node, bundle) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="tongban.v1.NodeService"), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = set()
        async for reply in stream:
            names |= {s.name for s in reply.list_services_response.service}
    assert "tongban.v1.NodeService" in names


async def test_department_added_while_serving_can_call_at_once(
    node: Node, settings: Settings, tmp_path: object
) -> None:
    from tongban.exchange.enrolment import enrol_department

    async with await Database.open(settings, pool_size=1, owner=True) as owner:
        _, path = await enrol_department(
            owner,
            settings,
            code="samr-town",
            name="镇市场监管所",
            level=Level.TOWNSHIP,
            parent=None,
            roles=[],
            out=None,
            now=SystemClock().now(),
        )
    async with ExchangeClient(Bundle.load(path), target=_target(node)) as client:
        assert (await client.who_am_i()).department == "samr-town"


async def test_a_bundle_with_a_garbled_certificate_fails_cleanly(
    node: Node, settings: Settings
) -> None:
    real = Bundle.load(bundle_path(settings, "samr"))
    garbled = Bundle(
        department=real.department,
        name=real.name,
        endpoint=real.endpoint,
        server_name=real.server_name,
        ca_pem=real.ca_pem,
        tls_cert_pem=b"-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n",
        tls_key_pem=real.tls_key_pem,
        seal_cert_pem=real.seal_cert_pem,
        seal_key_pem=real.seal_key_pem,
    )
    error = await _call(garbled, node)
    assert error.code is grpc.StatusCode.UNAVAILABLE
    # The node keeps serving others.
    async with ExchangeClient(real, target=_target(node)) as client:
        assert (await client.who_am_i()).department == "samr"
