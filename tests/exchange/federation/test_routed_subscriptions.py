"""Subscriptions over two hops (docs/federation.md, "Subscriptions across exchanges" and
"Routing over several hops"): the county's approval service subscribes to
``city:province:samr.enterprise``; the city carries the stream, relays each batch with
only the asked fields and logs it; the province decides every batch for
``city/county-a/approval`` and keeps its acknowledged position, which the county's
acknowledgement reaches through the city. The subscription resumes after the province
restarts. A middle exchange that alters the carried subscription, a replay and too many
hops are refused with nothing recorded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import asyncpg
import grpc
import pytest

from tests.conftest import client_for
from tests.exchange.federation.conftest import exchange_settings, parts
from tests.exchange.federation.test_routing import OFFICER, _route
from tests.stories.restaurant import COMPANY, COMPANY_USCC, ENTERPRISE, OWNER, OWNER_ID, PURPOSE
from tongban.client import ExchangeClient, ExchangeError
from tongban.client.errors import from_rpc_error
from tongban.exchange.datadir import (
    NodeSigning,
    ca_certificate_pem,
    load_node_credentials,
    load_node_signing,
)
from tongban.exchange.federation.forwarding import sign_claims
from tongban.exchange.federation.subscriptions import SUBSCRIPTION_TYPE, ForwardedSubscription
from tongban.exchange.node import Node
from tongban.exchange.settings import load_settings
from tongban.signing.certs import certificate_fingerprint
from tongban.signing.clock import FixedClock
from tongban.v1 import events_pb2, federation_pb2, federation_pb2_grpc

DATASET = "city:province:samr.enterprise"
SECOND_USCC = "91330106MA2B3C4D5D"
SECOND_PERSON = "330102199001010012"
BASIS = "《行政许可法》第三十一条"


async def _route_enterprise(province: Node, city: Node, county: Node) -> None:
    """The three exchanges linked as in test_routing.py, and the province's samr
    offering its (unconditional) enterprise dataset too; the city and the county pulled."""
    await _route(province, city, county)
    async with client_for(province, "samr") as samr:
        await samr.register_dataset(ENTERPRISE, publish=True)
        await samr.publish_records("samr.enterprise", [(COMPANY_USCC, COMPANY)])
    await parts(province).offer.set_federation(
        "samr", "samr.enterprise", federated=True, peers=(), known_peers={"city"},
        officer=None, now=province.clock.now(),
    )  # fmt: skip
    for at, name in ((city, "province"), (county, "city")):
        peer = await parts(at).trust.peer(name)
        assert peer is not None
        await parts(at).sync.pull(peer)


async def _first_event(client: ExchangeClient) -> tuple[str, int, str, str, dict[str, object]]:
    async for event in client.subscribe(DATASET, fields=["name"], purpose=PURPOSE):
        return event.subscription_id, event.position, event.key, event.dataset, event.fields
    raise AssertionError("the stream ended without an event")


async def _first_event_once_back(client: ExchangeClient) -> tuple[str, int, str]:
    """``_first_event`` as a subscriber retries it while the links' reconnect backoff
    lasts after the province came back (bounded: 30 s)."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        try:
            subscription, position, key, _, _ = await _first_event(client)
        except ExchangeError as e:
            if e.reason != "PEER_UNAVAILABLE" or asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)
            continue
        return subscription, position, key


async def _until_refused(
    client: ExchangeClient, dataset: str, after_first: Callable[[], Awaitable[None]]
) -> tuple[list[tuple[str, dict[str, object]]], ExchangeError]:
    """The events of a subscription to ``dataset`` (key and fields) until it is refused,
    and the refusal; ``after_first`` runs once the first event arrived."""
    delivered: list[tuple[str, dict[str, object]]] = []
    try:
        async for event in client.subscribe(dataset, fields=["name"], purpose=PURPOSE):
            delivered.append((event.key, event.fields))
            if len(delivered) == 1:
                await after_first()
    except ExchangeError as e:
        return delivered, e
    raise AssertionError("the stream ended without a refusal")


async def _log(node: Node, caller: str) -> list[asyncpg.Record]:
    assert node.db is not None
    return await node.db.pool.fetch(
        "SELECT caller, action, dataset, fields, decision, reason FROM access_log"
        " WHERE caller = $1 AND action IN ('subscribe.forward', 'event.receipt', 'event')"
        " ORDER BY idx",
        caller,
    )


async def _subscriptions(node: Node) -> list[tuple[str, str, int]]:
    assert node.db is not None
    rows = await node.db.pool.fetch(
        "SELECT consumer, dataset, acked_position FROM subscription ORDER BY consumer"
    )
    return [(r["consumer"], r["dataset"], r["acked_position"]) for r in rows]


async def test_a_county_subscription_is_carried_by_the_city_and_survives_a_province_restart(
    province: Node, city: Node, county: Node
) -> None:
    await _route_enterprise(province, city, county)
    async with client_for(county, "approval", OFFICER) as approval:
        subscription, position, key, dataset, fields = await _first_event(approval)
        # Named by the route at the county, with only the asked field.
        assert subscription.startswith("city:province:")
        assert (position, key, dataset, fields) == (
            0, COMPANY_USCC, DATASET, {"name": COMPANY["name"]},
        )  # fmt: skip
        # The acknowledgement goes through the city to the province, which keeps it.
        assert await approval.acknowledge(subscription, 0) == 0
    # Another county department cannot move approval's position: the province answers
    # only for the name the route gives.
    async with client_for(county, "tax") as tax:
        with pytest.raises(ExchangeError) as foreign:
            await tax.acknowledge(subscription, 0)
        assert (foreign.value.code, foreign.value.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT",
        )  # fmt: skip
    assert await _subscriptions(province) == [("city/county-a/approval", "samr.enterprise", 0)]
    assert await _subscriptions(city) == []  # the city keeps no subscription of its own

    # Logged at all three: the province decided for the route's name, the city carried
    # and relayed, the county forwarded and received.
    decided = await _log(province, "city/county-a/approval")
    assert [(r["action"], r["dataset"], r["reason"]) for r in decided] == [
        ("event", "samr.enterprise", None)
    ]
    carried = await _log(city, "county-a/approval")
    assert [(r["action"], r["dataset"], r["reason"]) for r in carried] == [
        ("subscribe.forward", "province:samr.enterprise", "peer:province"),
        ("event.receipt", "province:samr.enterprise", "peer:province"),
    ]
    asked = await _log(county, "approval")
    assert [(r["action"], r["dataset"], r["reason"]) for r in asked] == [
        ("subscribe.forward", DATASET, "peer:city"),
        ("event.receipt", DATASET, "peer:city"),
    ]
    assert {tuple(r["fields"]) for r in carried + asked} == {("name",)}

    # The province stops: the county fails fast, logged nowhere as delivered.
    port = province.grpc_port
    await province.stop(grace=0)
    async with client_for(county, "approval", OFFICER) as approval:
        with pytest.raises(ExchangeError) as down:
            await _first_event(approval)
        assert (down.value.code, down.value.reason) == (
            grpc.StatusCode.UNAVAILABLE, "PEER_UNAVAILABLE",
        )  # fmt: skip
    assert city.db is not None
    # The city logged the end of the stream it could not carry on.
    ended = await city.db.pool.fetch(
        "SELECT caller, reason FROM access_log WHERE action = 'subscribe.receipt'"
    )
    assert [tuple(r) for r in ended] == [("county-a/approval", "PEER_UNAVAILABLE; peer:province")]
    # It comes back on its address with an event published since: the county resumes
    # after the position it acknowledged, through the city.
    settings = province.settings
    assert settings.database_url is not None
    again = load_settings(
        data_dir=settings.data_dir,
        database_url=settings.database_url.get_secret_value(),
        key_passphrase="test passphrase",
        grpc_listen=f"127.0.0.1:{port}",
        http_listen="127.0.0.1:0",
    )
    async with Node(again, clock=FixedClock(province.clock.now())) as restarted:
        async with client_for(restarted, "samr") as samr:
            second = {**COMPANY, "uscc": SECOND_USCC, "name": "杭州另一家餐饮有限公司"}
            await samr.publish_records("samr.enterprise", [(SECOND_USCC, second)])
        async with client_for(county, "approval", OFFICER) as approval:
            subscription_again, position, key = await _first_event_once_back(approval)
            assert await approval.acknowledge(subscription_again, position) == 1
        assert subscription_again == subscription
        assert (position, key) == (1, SECOND_USCC)
        assert await _subscriptions(restarted) == [("city/county-a/approval", "samr.enterprise", 1)]


def _subscription(signing_of: Node, to: Node, **changes: object) -> ForwardedSubscription:
    now = signing_of.clock.now()
    fields: dict[str, object] = {
        "exchange": parts(signing_of).trust.own_fingerprint.hex(),
        "audience": parts(to).trust.own_fingerprint.hex(),
        "department": "approval",
        "officer": OFFICER,
        "dataset": "province:samr.enterprise",
        "fields": ("name",),
        "purpose": PURPOSE,
        "after_position": None,
        "nonce": "0123456789abcdef0123456789abcdef",
        "issued_at": now,
        "expires_at": now + timedelta(seconds=60),
    }
    fields.update(changes)
    return ForwardedSubscription(**fields)  # type: ignore[arg-type]


def _signed(request: ForwardedSubscription, by: NodeSigning) -> str:
    return sign_claims(request.payload(), by, SUBSCRIPTION_TYPE)


async def _send(sender: Node, to: Node, token: str) -> tuple[str, str]:
    """Open subscription ``token`` at ``to`` over ``sender``'s node TLS identity: OK once
    its first batch arrives, or the refusal."""
    own = load_node_credentials(sender.settings)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_certificate_pem(to.settings),
        private_key=own.key_pem,
        certificate_chain=own.cert_chain_pem,
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{to.grpc_port}", credentials) as channel:
        stub = federation_pb2_grpc.PeerServiceStub(channel)
        call = stub.ForwardSubscribe(federation_pb2.ForwardSubscribeRequest(request=token))
        try:
            batches: AsyncIterator[events_pb2.EventBatch] = aiter(call)
            await anext(batches)
        except grpc.aio.AioRpcError as e:
            error = from_rpc_error(e)
            return error.code.name, error.reason
        finally:
            call.cancel()
    return "OK", ""


async def test_altered_replayed_and_too_long_subscription_routes_record_nothing(
    province: Node, city: Node, county: Node, tmp_path: Path, database_url: str
) -> None:
    await _route_enterprise(province, city, county)
    county_signing, city_signing = (
        load_node_signing(county.settings),
        load_node_signing(city.settings),
    )
    token = _signed(_subscription(county, city), county_signing)

    def carried(previous: str, nonce: str, **changes: object) -> str:
        """The city's subscription at the province carrying ``previous``."""
        outer = _subscription(
            city, province, dataset="samr.enterprise", route=("county-a",), previous=previous,
            nonce=nonce, **changes,
        )  # fmt: skip
        return _signed(outer, city_signing)

    # The city alters what the carried subscription asked: more fields, another
    # department, another position. Refused before anything is recorded or streamed.
    for nonce, change in (
        ("b" * 32, {"fields": ("name", "legal_representative")}),
        ("c" * 32, {"department": "tax"}),
        ("d" * 32, {"after_position": -1}),
    ):
        assert await _send(city, province, carried(token, nonce, **change)) == (
            "PERMISSION_DENIED", "PEER_REQUEST_ALTERED",
        ), change  # fmt: skip
    assert await _subscriptions(province) == []

    # A replay at the middle hop: carried once, refused the second time.
    assert await _send(county, city, token) == ("OK", "")
    assert await _send(county, city, token) == ("PERMISSION_DENIED", "PEER_REQUEST_REPLAYED")

    # Too many hops: the county's subscription has already crossed two links behind it.
    far = [load_node_signing(exchange_settings(tmp_path / f"far{i}", database_url)) for i in (1, 2)]
    far_fp = [certificate_fingerprint(s.chain[-1]).hex() for s in far]
    county_fp = parts(county).trust.own_fingerprint.hex()
    e3 = _signed(
        _subscription(county, city, exchange=far_fp[1], audience=far_fp[0],
                      dataset="b:c:province:samr.enterprise", nonce="1" * 32),
        far[1],
    )  # fmt: skip
    e2 = _signed(
        _subscription(county, city, exchange=far_fp[0], audience=county_fp,
                      dataset="c:province:samr.enterprise", route=("f2",), previous=e3,
                      nonce="2" * 32),
        far[0],
    )  # fmt: skip
    e1 = _signed(
        _subscription(county, city, route=("f1", "f2"), previous=e2, nonce="3" * 32),
        county_signing,
    )
    assert await _send(county, city, e1) == ("FAILED_PRECONDITION", "PEER_TOO_MANY_HOPS")
    outer = _subscription(
        city, province, dataset="samr.enterprise", route=("county-a", "f1", "f2"), previous=e1,
        nonce="4" * 32,
    )  # fmt: skip
    assert await _send(city, province, _signed(outer, city_signing)) == (
        "FAILED_PRECONDITION", "PEER_TOO_MANY_HOPS",
    )  # fmt: skip

    # Only the subscription carried whole is held at the province; the city logged what
    # it carried and the refusal it made itself.
    assert await _subscriptions(province) == [("city/county-a/approval", "samr.enterprise", -1)]
    assert [(r["action"], r["decision"]) for r in await _log(city, "county-a/approval")] == [
        ("subscribe.forward", "allowed"), ("event.receipt", "allowed"),
    ]  # fmt: skip
    assert [
        (r["action"], r["decision"], r["reason"])
        for r in await _log(city, "county-a/f1/f2/approval")
    ] == [("subscribe.forward", "denied", "PEER_TOO_MANY_HOPS")]


async def test_the_province_decides_every_batch_for_the_county_department(
    province: Node, city: Node, county: Node
) -> None:
    """A conditional dataset over two hops: refused without a grant, delivered under the
    grant the county asked for through the city, and ended by the province once its
    owner revokes that grant."""
    await _route(province, city, county)
    person = "city:province:police.person"
    expiry = county.clock.now() + timedelta(days=30)
    async with client_for(county, "approval", OFFICER) as approval:
        with pytest.raises(ExchangeError) as refused:
            await anext(aiter(approval.subscribe(person, fields=["name"], purpose=PURPOSE)))
        assert (refused.value.code, refused.value.reason) == (
            grpc.StatusCode.PERMISSION_DENIED, "GRANT_REQUIRED",
        )  # fmt: skip
        asked = await approval.request_grant(person, ["name"], PURPOSE, BASIS, expiry)
        grant_id = asked.id.removeprefix("city:province:")
        async with client_for(province, "police") as police:
            await police.decide_grant(grant_id, approve=True, reason="审批核验")

        async def revoke_and_publish() -> None:
            async with client_for(province, "police") as police:
                await police.revoke_grant(grant_id, reason="审批已办结")
                # The next batch is decided again, for the route's name: refused.
                await police.publish_records("police.person", [(SECOND_PERSON, OWNER)])

        delivered, ended = await _until_refused(approval, person, revoke_and_publish)
    assert delivered == [(OWNER_ID, {"name": OWNER["name"]})]
    assert (ended.code, ended.reason) == (grpc.StatusCode.PERMISSION_DENIED, "GRANT_REQUIRED")
    # The province refused the first subscription and the batch after the revocation for
    # the route's name, and delivered the one between.
    assert province.db is not None
    decided = await province.db.pool.fetch(
        "SELECT action, decision FROM access_log WHERE caller = 'city/county-a/approval'"
        " AND dataset = 'police.person' ORDER BY idx"
    )
    assert [(r["action"], r["decision"]) for r in decided] == [
        ("subscribe", "denied"), ("event", "allowed"), ("subscribe", "denied"),
    ]  # fmt: skip
    # The city kept each refusal that ended a stream it carried.
    assert city.db is not None
    ended_at_city = await city.db.pool.fetch(
        "SELECT reason FROM access_log WHERE caller = 'county-a/approval'"
        " AND action = 'subscribe.receipt' ORDER BY idx"
    )
    assert [r["reason"] for r in ended_at_city] == ["GRANT_REQUIRED; peer:province"] * 2
