"""A department's subscriptions held at peers, in ``ListSubscriptions`` (docs/federation.md,
"Subscriptions across exchanges", "Listing them"): the county's approval service sees its
local subscription and the ones the province keeps for it, named as the county names
things, with the acknowledged position; over one link and through the city. Each owner
answers only that department's own. An owner that is down is named as not listed while
the rest is listed. A middle exchange that alters a listing it carries, a replay and a
malformed listing are refused with their reasons."""

from __future__ import annotations

from datetime import timedelta

import grpc

from tests.cli_helpers import atongban
from tests.conftest import client_for
from tests.exchange.federation.conftest import parts
from tests.exchange.federation.test_forwarding import OFFICER, _share
from tests.exchange.federation.test_routed_subscriptions import _route_enterprise
from tests.stories.restaurant import COMPANY, COMPANY_USCC, ENTERPRISE, PURPOSE
from tongban.client import ExchangeClient, SubscriptionListing
from tongban.client.errors import from_rpc_error
from tongban.exchange.datadir import (
    NodeSigning,
    ca_certificate_pem,
    load_node_credentials,
    load_node_signing,
)
from tongban.exchange.enrolment import bundle_dir
from tongban.exchange.federation.forwarding import sign_claims
from tongban.exchange.federation.subscriptions import (
    SUBSCRIPTION_LIST_TYPE,
    ForwardedSubscriptionList,
)
from tongban.exchange.node import Node
from tongban.v1 import federation_pb2, federation_pb2_grpc


async def _subscribed(client: ExchangeClient, dataset: str) -> str:
    """Subscribe to ``dataset``, acknowledge its first event; the subscription's id."""
    async for event in client.subscribe(dataset, fields=["name"], purpose=PURPOSE):
        await client.acknowledge(event.subscription_id, event.position)
        return event.subscription_id
    raise AssertionError("the stream ended without an event")


def _shown(listing: SubscriptionListing) -> list[tuple[str, str, tuple[str, ...], int]]:
    return [(s.id, s.dataset, s.fields, s.acked_position) for s in listing.subscriptions]


async def test_the_county_lists_its_subscriptions_held_at_the_province(
    province: Node, county: Node
) -> None:
    await _share(province, county)
    async with client_for(county, "samr") as samr:  # a local dataset of the county's own
        await samr.register_dataset(ENTERPRISE, publish=True)
        await samr.publish_records("samr.enterprise", [(COMPANY_USCC, COMPANY)])
    async with client_for(county, "approval", OFFICER) as approval:
        local = await _subscribed(approval, "samr.enterprise")
        remote = await _subscribed(approval, "province:samr.enterprise")
        listed = await approval.subscription_listing()
        assert remote.startswith("province:")
        assert _shown(listed) == [
            (local, "samr.enterprise", ("name",), 0),
            (remote, "province:samr.enterprise", ("name",), 0),
        ]
        assert listed.unlisted == ()
        assert await approval.list_subscriptions() == list(listed.subscriptions)
    # The province answers each department for its own only.
    async with client_for(county, "tax") as tax:
        assert await tax.subscription_listing() == SubscriptionListing((), ())

    # The province is down: the local one is listed, the province named as not asked.
    await province.stop(grace=0)
    async with client_for(county, "approval", OFFICER) as approval:
        listed = await approval.subscription_listing()
    assert _shown(listed) == [(local, "samr.enterprise", ("name",), 0)]
    assert [(u.peer, u.reason) for u in listed.unlisted] == [("province", "PEER_UNAVAILABLE")]
    # And so says the command line.
    shown = await atongban(
        "subscription", "list", "--as", str(bundle_dir(county.settings, "approval")),
        "--endpoint", f"127.0.0.1:{county.grpc_port}", "--json",
    )  # fmt: skip
    assert shown.code == 0, shown.stderr
    assert [r["dataset"] for r in shown.json()["subscriptions"]] == ["samr.enterprise"]
    assert [(u["peer"], u["reason"]) for u in shown.json()["unlisted"]] == [
        ("province", "PEER_UNAVAILABLE")
    ]


def _listing(signing_of: Node, to: Node, **changes: object) -> ForwardedSubscriptionList:
    now = signing_of.clock.now()
    fields: dict[str, object] = {
        "exchange": parts(signing_of).trust.own_fingerprint.hex(),
        "audience": parts(to).trust.own_fingerprint.hex(),
        "department": "approval",
        "officer": OFFICER,
        "held": "province:*",
        "nonce": "0123456789abcdef0123456789abcdef",
        "issued_at": now,
        "expires_at": now + timedelta(seconds=60),
    }
    fields.update(changes)
    return ForwardedSubscriptionList(**fields)  # type: ignore[arg-type]


def _signed(request: ForwardedSubscriptionList, by: NodeSigning) -> str:
    return sign_claims(request.payload(), by, SUBSCRIPTION_LIST_TYPE)


async def _send(sender: Node, to: Node, token: str) -> tuple[str, str] | list[str]:
    """Send listing ``token`` to ``to`` over ``sender``'s node TLS identity: the ids
    listed, or the refusal."""
    own = load_node_credentials(sender.settings)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_certificate_pem(to.settings),
        private_key=own.key_pem,
        certificate_chain=own.cert_chain_pem,
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{to.grpc_port}", credentials) as channel:
        stub = federation_pb2_grpc.PeerServiceStub(channel)
        try:
            reply = await stub.ListForwardedSubscriptions(
                federation_pb2.ListForwardedSubscriptionsRequest(request=token), timeout=10
            )
        except grpc.aio.AioRpcError as e:
            error = from_rpc_error(e)
            return error.code.name, error.reason
    return [s.id for s in reply.subscriptions]


async def test_the_county_lists_its_subscriptions_through_the_city(
    province: Node, city: Node, county: Node
) -> None:
    await _route_enterprise(province, city, county)
    dataset = "city:province:samr.enterprise"
    async with client_for(county, "approval", OFFICER) as approval:
        held = await _subscribed(approval, dataset)
        listed = await approval.subscription_listing()
    assert held.startswith("city:province:")
    assert _shown(listed) == [(held, dataset, ("name",), 0)]
    assert listed.unlisted == ()
    async with client_for(county, "tax") as tax:
        assert await tax.subscription_listing() == SubscriptionListing((), ())

    # Sent by hand: the county's listing carried by the city, then what a middle
    # exchange must not do.
    county_signing, city_signing = (
        load_node_signing(county.settings),
        load_node_signing(city.settings),
    )
    token = _signed(_listing(county, city), county_signing)
    assert await _send(county, city, token) == [held.removeprefix("city:")]
    assert await _send(county, city, token) == ("PERMISSION_DENIED", "PEER_REQUEST_REPLAYED")
    bad = _signed(_listing(county, city, held="province:*:x", nonce="1" * 32), county_signing)
    assert await _send(county, city, bad) == ("INVALID_ARGUMENT", "PEER_REQUEST_INVALID")
    # A listing of what the county keeps, by way of the city: a route never loops.
    back = _signed(_listing(county, city, held="county-a:*", nonce="2" * 32), county_signing)
    assert await _send(county, city, back) == ("FAILED_PRECONDITION", "PEER_ROUTE_LOOP")

    def carried(nonce: str, **changes: object) -> str:
        asked: dict[str, object] = {
            "held": "*", "route": ("county-a",), "previous": token, "nonce": nonce,
        }  # fmt: skip
        return _signed(_listing(city, province, **(asked | changes)), city_signing)

    for nonce, change in (("b" * 32, {"department": "tax"}), ("c" * 32, {"officer": "x-1"})):
        assert await _send(city, province, carried(nonce, **change)) == (
            "PERMISSION_DENIED", "PEER_REQUEST_ALTERED",
        ), change  # fmt: skip
    assert await _send(city, province, carried("d" * 32)) == [held.removeprefix("city:province:")]

    # The province is down: the city still answers for itself (nothing), and the county
    # names the province, by its route, as not listed.
    await province.stop(grace=0)
    async with client_for(county, "approval", OFFICER) as approval:
        listed = await approval.subscription_listing()
    assert _shown(listed) == []
    assert [(u.peer, u.reason) for u in listed.unlisted] == [("city:province", "PEER_UNAVAILABLE")]
