"""The catalogue across exchanges: an owner's federated dataset reaches the peer as a
remote dataset with its origin, by the peer's pull that our notice triggers; updates and
withdrawals follow; a peer offering what it does not own is refused and nothing of its
offer is kept (docs/federation.md, "Catalogue across exchanges")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from tests.conftest import client_for
from tests.exchange.federation.conftest import (
    add_peer,
    county_node,
    exchange_settings,
    link,
    parts,
)
from tests.stories.restaurant import ENTERPRISE, PERSON
from tongban.client import Bundle
from tongban.client.errors import from_rpc_error
from tongban.errors import TongbanError
from tongban.exchange.datadir import NodeSigning, load_node_credentials, load_node_signing
from tongban.exchange.departments import Level
from tongban.exchange.enrolment import bundle_dir
from tongban.exchange.federation.entries import sign_entry, verify_entry
from tongban.exchange.federation.peers import PeerStore
from tongban.exchange.node import Node
from tongban.exchange.sharing.model import DatasetEntry
from tongban.signing.certs import certificate_fingerprint, load_pem_certificates
from tongban.v1 import (
    audit_pb2,
    catalogue_pb2,
    events_pb2,
    federation_pb2,
    federation_pb2_grpc,
    grants_pb2,
    values_pb2,
)

WAIT = 30.0
"""How long a notice may take to reach the peer's catalogue before the test gives up (the
peer's own timer is an hour here, so only the notice can make it in time)."""


@pytest_asyncio.fixture
async def county(tmp_path: Path, county_database_url: str) -> AsyncIterator[Node]:
    async with county_node(tmp_path, county_database_url, peer_sync_seconds=3600) as running:
        yield running


def federation_stub(node: Node, code: str) -> tuple[grpc.aio.Channel, object]:
    bundle = Bundle.load(bundle_dir(node.settings, code))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=bundle.ca_pem,
        private_key=bundle.tls_key_pem,
        certificate_chain=bundle.tls_cert_pem,
    )
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{node.grpc_port}",
        credentials,
        options=[("grpc.ssl_target_name_override", bundle.server_name)],
    )
    return channel, federation_pb2_grpc.FederationServiceStub(channel)


async def federate(
    node: Node, code: str, dataset: str, *, on: bool = True, peers: Sequence[str] = ()
) -> federation_pb2.Federation:
    channel, stub = federation_stub(node, code)
    async with channel:
        try:
            return await stub.SetFederation(  # type: ignore[attr-defined, no-any-return]
                federation_pb2.SetFederationRequest(code=dataset, federated=on, peers=peers),
                timeout=10,
            )
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from e


async def remote(node: Node, code: str = "tax") -> dict[str, federation_pb2.RemoteDataset]:
    channel, stub = federation_stub(node, code)
    async with channel:
        answer = await stub.ListRemoteDatasets(  # type: ignore[attr-defined]
            federation_pb2.ListRemoteDatasetsRequest(), timeout=10
        )
    return {d.code: d for d in answer.datasets}


async def until(
    node: Node, condition: Callable[[dict[str, federation_pb2.RemoteDataset]], bool]
) -> dict[str, federation_pb2.RemoteDataset]:
    """The node's remote catalogue once ``condition(catalogue)`` holds (within WAIT)."""
    async with asyncio.timeout(WAIT):
        while True:
            seen = await remote(node)
            if condition(seen):
                return seen
            await asyncio.sleep(0.1)


async def test_a_federated_dataset_reaches_the_peer_and_follows_its_owner(
    province: Node, county: Node
) -> None:
    await link(province, county)
    async with client_for(province, "samr") as samr, client_for(province, "police") as police:
        await samr.register_dataset(ENTERPRISE, publish=True)
        await police.register_dataset(PERSON, publish=True)
    assert await remote(county) == {}, "nothing is offered until its owner says so"

    done = await federate(province, "samr", "samr.enterprise")
    assert (done.federated, list(done.peers)) == (True, [])
    seen = await until(county, lambda c: "province:samr.enterprise" in c)
    shown = seen["province:samr.enterprise"]
    assert (shown.peer, shown.peer_level, shown.owner) == ("province", "province", "province/samr")
    assert shown.spec.code == "samr.enterprise"
    assert shown.version == 1
    assert shown.spec.share_class == catalogue_pb2.SHARE_CLASS_UNCONDITIONAL
    assert [b.law for b in shown.spec.personal_bases] == ["企业信息公示暂行条例"]
    assert [f.name for f in shown.spec.fields] == [f.name for f in ENTERPRISE.fields]
    # The signed entry is kept as received: anyone with the province's root can check it.
    province_root = load_pem_certificates(load_node_credentials(province.settings).ca_pem)[0]
    checked = verify_entry(
        shown.signed_entry, peer="province", peer_root=province_root, now=province.clock.now()
    )
    assert checked.payload["exchange"] == certificate_fingerprint(province_root).hex()

    # An update (a new version) follows.
    wider = catalogue_pb2.DatasetSpec()
    wider.CopyFrom(ENTERPRISE)
    wider.fields.add(name="phone", type=values_pb2.FIELD_TYPE_STRING, description="联系电话")
    async with client_for(province, "samr") as samr:
        await samr.register_dataset(wider, publish=True)
    await until(county, lambda c: c["province:samr.enterprise"].version == 2)

    # Offered to named peers only; a peer not configured is refused.
    with pytest.raises(TongbanError) as caught:
        await federate(province, "police", "police.person", peers=["nowhere"])
    assert caught.value.reason == "PEER_UNKNOWN"
    await federate(province, "police", "police.person", peers=["county-a"])
    seen = await until(county, lambda c: "province:police.person" in c)
    assert seen["province:police.person"].spec.conditions == PERSON.conditions

    # Withdrawals: federation turned off, or the dataset unpublished.
    await federate(province, "samr", "samr.enterprise", on=False)
    async with client_for(province, "police") as police:
        await police.set_published("police.person", False)
    await until(county, lambda c: c == {})


async def test_only_the_owner_federates_its_dataset(province: Node) -> None:
    async with client_for(province, "samr") as samr:
        await samr.register_dataset(ENTERPRISE, publish=True)
    for code, dataset, reason in (
        ("tax", "samr.enterprise", "NOT_OWNER"),
        ("samr", "samr.nothing", "DATASET_NOT_FOUND"),
    ):
        with pytest.raises(TongbanError) as caught:
            await federate(province, code, dataset)
        assert caught.value.reason == reason


class _HostilePeer(federation_pb2_grpc.PeerServiceServicer):
    """A peer exchange's node that offers what it wants: an adversary, not our service."""

    def __init__(self, entries: Sequence[str]) -> None:
        self.entries = list(entries)
        self.trust_list = "not.a.trust-list"

    async def Hello(self, request: object, context: object) -> federation_pb2.HelloResponse:
        return federation_pb2.HelloResponse(peer="whoever")

    async def ListEntries(
        self, request: object, context: object
    ) -> federation_pb2.ListEntriesResponse:
        return federation_pb2.ListEntriesResponse(entries=self.entries)

    async def CatalogueChanged(
        self, request: object, context: object
    ) -> federation_pb2.CatalogueChangedResponse:
        return federation_pb2.CatalogueChangedResponse()

    async def ForwardQuery(
        self, request: object, context: object
    ) -> federation_pb2.ForwardQueryResponse:
        return federation_pb2.ForwardQueryResponse()

    async def ForwardGrantRequest(self, request: object, context: object) -> grants_pb2.Grant:
        return grants_pb2.Grant()

    async def ListForwardedGrants(
        self, request: object, context: object
    ) -> grants_pb2.ListGrantsResponse:
        return grants_pb2.ListGrantsResponse()

    async def ForwardGrantRevoke(self, request: object, context: object) -> grants_pb2.Grant:
        return grants_pb2.Grant()

    async def ListForwardedSubscriptions(
        self, request: object, context: object
    ) -> events_pb2.ListSubscriptionsResponse:
        return events_pb2.ListSubscriptionsResponse()

    async def ForwardLicenceFetch(
        self, request: object, context: object
    ) -> federation_pb2.ForwardLicenceFetchResponse:
        return federation_pb2.ForwardLicenceFetchResponse()

    async def ForwardSubscribe(
        self, request: object, context: object
    ) -> AsyncIterator[events_pb2.EventBatch]:
        yield events_pb2.EventBatch()

    async def ForwardAcknowledge(
        self, request: object, context: object
    ) -> events_pb2.AcknowledgeResponse:
        return events_pb2.AcknowledgeResponse()

    async def GetRoutedLogEntry(
        self, request: object, context: object
    ) -> federation_pb2.RoutedLogEntry:
        return federation_pb2.RoutedLogEntry()

    async def GetTrustList(
        self, request: object, context: object
    ) -> federation_pb2.GetTrustListResponse:
        return federation_pb2.GetTrustListResponse(trust_list=self.trust_list)

    async def GetLogEntry(self, request: object, context: object) -> audit_pb2.EntryWithProof:
        return audit_pb2.EntryWithProof()

    async def AddCheckpoint(
        self, request: object, context: object
    ) -> federation_pb2.AddCheckpointResponse:
        return federation_pb2.AddCheckpointResponse(cosignatures="not a cosignature\n")


async def test_a_peer_offering_what_it_does_not_own_is_refused(
    province: Node, tmp_path: Path, database_url: str
) -> None:
    # The city's exchange: its own root and node keys; its "node" serves a hostile offer.
    city = exchange_settings(tmp_path / "city", database_url)
    city_tls = load_node_credentials(city)
    city_signing = load_node_signing(city)
    city_exchange = certificate_fingerprint(load_pem_certificates(city_tls.ca_pem)[0])
    province_signing = load_node_signing(province.settings)

    async with client_for(province, "samr") as samr:
        await samr.register_dataset(ENTERPRISE, publish=True)
    assert province.sharing is not None
    entry = await province.sharing.current_entry("samr.enterprise")
    assert entry is not None

    def signed(by: NodeSigning, offered: DatasetEntry, exchange: bytes) -> str:
        return sign_entry(offered, exchange=exchange, signer=by.signer, chain=by.chain)

    own_entry = signed(city_signing, entry, city_exchange)  # the city's samr.enterprise
    hostile = _HostilePeer([own_entry])
    server = grpc.aio.server()
    federation_pb2_grpc.add_PeerServiceServicer_to_server(hostile, server)
    port = server.add_secure_port(
        "127.0.0.1:0",
        grpc.ssl_server_credentials(
            [(city_tls.key_pem, city_tls.cert_chain_pem)],
            root_certificates=load_node_credentials(province.settings).ca_pem,
            require_client_auth=True,
        ),
    )
    await server.start()
    try:

        class _City:
            settings = city
            grpc_port = port

        await add_peer(province, "city", _City(), level=Level.CITY)  # type: ignore[arg-type]
        peer = await parts(province).trust.peer("city")
        assert peer is not None
        await parts(province).sync.pull(peer)  # an honest offer of the city's own dataset
        assert set(await remote(province)) == {"city:samr.enterprise"}

        province_exchange = parts(province).trust.own_fingerprint
        refused = (
            # The province's own entry, relayed by the city as if it offered it.
            ("PEER_NOT_OWNER", signed(province_signing, entry, province_exchange)),
            # samr's dataset claimed for police.
            ("PEER_NOT_OWNER", signed(city_signing, replace(entry, owner="police"), city_exchange)),
            # Signed by another exchange's node, naming the city's exchange.
            ("PEER_SIGNATURE_INVALID", signed(province_signing, entry, city_exchange)),
        )
        for reason, bad in refused:
            hostile.entries = [own_entry, bad]
            with pytest.raises(TongbanError) as caught:
                await parts(province).sync.pull(peer)
            assert caught.value.reason == reason
            # Nothing of a refused offer is kept: the last good pull stands, and the
            # refusal is the peer's last pull error (`tongban peer list`).
            assert set(await remote(province)) == {"city:samr.enterprise"}
            assert province.db is not None
            stored = await PeerStore(province.db.pool).get("city")
            assert stored.sync is not None
            assert stored.sync.error_reason == reason
    finally:
        await server.stop(0)
