"""Routing over two hops: the county reaches the province's dataset through the city.
Three real exchanges, each its own root CA, data dir and database. The city re-offers the
province's entry; a county query is carried hop by hop, the province decides for
``city/county-a/approval`` and every exchange logs; the county's trail checks each hop's
entry. Loops, too many hops, an altered carried request, a replay at the middle hop and a
province that is down each get their reason (docs/federation.md, "Routing over several
hops")."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path

import asyncpg
import grpc
import pytest

from tests.conftest import client_for
from tests.exchange.federation.conftest import add_peer, exchange_settings, owner_pool, parts
from tests.stories.restaurant import CASE_ID, OWNER, OWNER_ID, PERSON, PURPOSE
from tongban.client import ExchangeError, verify_answer
from tongban.client.errors import from_rpc_error
from tongban.exchange.audit.store import AuditStore
from tongban.exchange.catalogue.canonical import canonical_json
from tongban.exchange.datadir import (
    NodeSigning,
    ca_certificate_pem,
    load_node_credentials,
    load_node_signing,
)
from tongban.exchange.departments import Level
from tongban.exchange.federation.forwarding import ForwardedQuery, sign_request
from tongban.exchange.federation.peers import PeerStore
from tongban.exchange.federation.trail import CaseTrails
from tongban.exchange.node import Node
from tongban.signing.certs import certificate_fingerprint
from tongban.v1 import federation_pb2, federation_pb2_grpc

OFFICER = "SP-0007"
DATASET = "city:province:police.person"


async def _route(province: Node, city: Node, county: Node) -> None:
    """County -> city -> province, each the parent of the one below; the province's
    police offers its (conditional) person dataset to its peers; the city and then the
    county have pulled."""
    await add_peer(city, "province", province, level=Level.PROVINCE, parent=True)
    await add_peer(province, "city", city, level=Level.CITY)
    await add_peer(county, "city", city, level=Level.CITY, parent=True)
    await add_peer(city, "county-a", county, level=Level.COUNTY)
    async with client_for(province, "police") as police:
        await police.register_dataset(PERSON, publish=True)
        await police.publish_records("police.person", [(OWNER_ID, OWNER)])
    await parts(province).offer.set_federation(
        "police", "police.person", federated=True, peers=(), known_peers={"city"},
        officer=None, now=province.clock.now(),
    )  # fmt: skip
    for at, name in ((city, "province"), (county, "city")):
        peer = await parts(at).trust.peer(name)
        assert peer is not None
        await parts(at).sync.pull(peer)


async def _log(node: Node, caller: str) -> list[asyncpg.Record]:
    assert node.db is not None
    return await node.db.pool.fetch(
        """
        SELECT idx, caller, officer, action, dataset, purpose, case_id, decision, reason
        FROM access_log WHERE caller = $1 ORDER BY idx
        """,
        caller,
    )


async def test_a_county_query_is_carried_by_the_city_and_decided_by_the_province(
    province: Node, city: Node, county: Node
) -> None:
    await _route(province, city, county)
    # The county sees the province's dataset under its route, owned by city/province/police.
    async with client_for(county, "approval", OFFICER) as approval:
        peers = [p for p in parts(county).trust.peers() if p.active]
        remote = await parts(county).remote.list(peers, now=county.clock.now())
        assert [(r.remote.remote_code, r.remote.remote_owner) for r in remote] == [
            (DATASET, "city/province/police")
        ]

        # No grant: the province's policy refuses, and the refusal travels back.
        with pytest.raises(ExchangeError) as caught:
            await approval.query(
                DATASET, [OWNER_ID], fields=["name"], purpose=PURPOSE, case_id=CASE_ID
            )
        assert (caught.value.code, caught.value.reason) == (
            grpc.StatusCode.PERMISSION_DENIED, "GRANT_REQUIRED",
        )  # fmt: skip
        assert caught.value.metadata["peer"] == "city"

        # The province's police grants the county's approval service its name only.
        assert province.sharing is not None
        entry = await province.sharing.current_entry("police.person")
        assert entry is not None
        now = province.clock.now()
        pending = await province.sharing.grants.request(
            entry=entry, consumer="city/county-a/approval", fields=["name", "gender"],
            purpose=PURPOSE, legal_basis="《行政许可法》第三十一条",
            expiry=now + timedelta(days=30), officer=OFFICER, now=now,
        )  # fmt: skip
        async with client_for(province, "police") as police:
            await police.decide_grant(
                str(pending.id), approve=True, fields=["name"], reason="审批核验"
            )

        answer = await approval.query(
            DATASET, [OWNER_ID], fields=["name"], purpose=PURPOSE, case_id=CASE_ID
        )
        assert [(r.key, r.fields) for r in answer.records] == [(OWNER_ID, {"name": OWNER["name"]})]
        # Fields beyond the grant stay refused by the owner.
        with pytest.raises(ExchangeError) as beyond:
            await approval.query(
                DATASET, [OWNER_ID], fields=["name", "gender"], purpose=PURPOSE, case_id=CASE_ID
            )
        assert beyond.value.code is grpc.StatusCode.PERMISSION_DENIED

    # Every exchange logged each request; the province decided for the original department.
    decided = await _log(province, "city/county-a/approval")
    assert [(r["action"], r["decision"]) for r in decided] == [
        ("query", "denied"), ("query", "allowed"), ("query", "denied"),
    ]  # fmt: skip
    assert decided[0]["reason"] == "GRANT_REQUIRED"
    assert {(r["officer"], r["purpose"], r["case_id"]) for r in decided} == {
        (OFFICER, PURPOSE, CASE_ID)
    }
    carried = await _log(city, "county-a/approval")
    assert [(r["action"], r["decision"], r["reason"]) for r in carried[:4]] == [
        ("query.forward", "allowed", "peer:province"),
        ("query.receipt", "denied", f"GRANT_REQUIRED; peer:province; log:{decided[0]['idx']}"),
        ("query.forward", "allowed", "peer:province"),
        ("query.receipt", "allowed", f"peer:province; log:{decided[1]['idx']}"),
    ]
    assert {r["dataset"] for r in carried} == {"province:police.person"}
    asked = await _log(county, "approval")
    assert [(r["action"], r["decision"], r["reason"]) for r in asked[:4]] == [
        ("query.forward", "allowed", "peer:city"),
        ("query.receipt", "denied", f"GRANT_REQUIRED; peer:city; log:{carried[1]['idx']}"),
        ("query.forward", "allowed", "peer:city"),
        ("query.receipt", "allowed", f"peer:city; log:{carried[3]['idx']}"),
    ]

    # The auditor at the county follows the case across all three exchanges: each hop's
    # entry checked under that hop's signed checkpoint with the key pinned for it.
    assert city.checkpointer is not None
    assert province.checkpointer is not None
    async with owner_pool(county) as pool:
        await PeerStore(pool).set_log_key("city", city.checkpointer.verifier_key)
    async with owner_pool(city) as pool:
        await PeerStore(pool).set_log_key("province", province.checkpointer.verifier_key)
    assert county.db is not None
    trail = await CaseTrails(
        AuditStore(county.db.pool), PeerStore(county.db.pool), parts(county).links
    ).follow(CASE_ID)
    shown = [(r.peer, r.state, r.entry.caller if r.entry else None) for r in trail.remote]
    assert (
        shown
        == [
            ("city", "verified", "county-a/approval"),
            ("city:province", "verified", "city/county-a/approval"),
        ]
        * 3
    ), [r.message for r in trail.remote]
    assert [r.entry.decision for r in trail.remote if r.entry] == [
        "denied", "denied", "allowed", "allowed", "denied", "denied",
    ]  # fmt: skip


def _ask(signing_of: Node, to: Node, **changes: object) -> ForwardedQuery:
    now = signing_of.clock.now()
    fields: dict[str, object] = {
        "exchange": parts(signing_of).trust.own_fingerprint.hex(),
        "audience": parts(to).trust.own_fingerprint.hex(),
        "department": "approval",
        "officer": OFFICER,
        "purpose": PURPOSE,
        "case_id": CASE_ID,
        "dataset": "province:police.person",
        "fields": ("name",),
        "keys": (OWNER_ID,),
        "nonce": "0123456789abcdef0123456789abcdef",
        "issued_at": now,
        "expires_at": now + timedelta(seconds=60),
    }
    fields.update(changes)
    return ForwardedQuery(**fields)  # type: ignore[arg-type]


async def _send(sender: Node, to: Node, token: str) -> tuple[str, str]:
    """Send ``token`` to ``to`` over ``sender``'s node TLS identity: (status, reason)."""
    own = load_node_credentials(sender.settings)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_certificate_pem(to.settings),
        private_key=own.key_pem,
        certificate_chain=own.cert_chain_pem,
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{to.grpc_port}", credentials) as channel:
        stub = federation_pb2_grpc.PeerServiceStub(channel)
        try:
            await stub.ForwardQuery(federation_pb2.ForwardQueryRequest(request=token), timeout=10)
        except grpc.aio.AioRpcError as e:
            error = from_rpc_error(e)
            return error.code.name, error.reason
    return "OK", ""


def _carry(by: NodeSigning, city: Node, province: Node, previous: str, **changes: object) -> str:
    """The city's request to the province carrying ``previous``."""
    outer = _ask(
        city, province, dataset="police.person", route=("county-a",), previous=previous,
        nonce=changes.pop("nonce", "a" * 32), **changes,
    )  # fmt: skip
    return sign_request(outer, by)


async def test_a_signed_answer_travels_two_hops_and_verifies_under_the_owner_root(
    province: Node, city: Node, county: Node
) -> None:
    await _route(province, city, county)
    assert province.sharing is not None
    entry = await province.sharing.current_entry("police.person")
    assert entry is not None
    now = province.clock.now()
    pending = await province.sharing.grants.request(
        entry=entry, consumer="city/county-a/approval", fields=["name"], purpose=PURPOSE,
        legal_basis="《行政许可法》第三十一条", expiry=now + timedelta(days=30),
        officer=OFFICER, now=now,
    )  # fmt: skip
    async with client_for(province, "police") as police:
        await police.decide_grant(str(pending.id), approve=True, fields=["name"], reason="核验")
    async with client_for(county, "approval", OFFICER) as approval:
        answer = await approval.query(
            DATASET, [OWNER_ID], fields=["name"], purpose=PURPOSE, case_id=CASE_ID, sign=True
        )
    # The root the county gives is the province's (from the owner's entry the city
    # relayed), though the county is no peer of the province.
    assert answer.signer_root == ca_certificate_pem(province.settings)
    signed = verify_answer(
        answer.signed_payload, answer.signature, ca_pem=answer.signer_root,
        now=county.clock.now(),
    )  # fmt: skip
    assert signed["caller"] == "city/county-a/approval"
    assert [r["fields"] for r in signed["records"]] == [{"name": OWNER["name"]}]


async def test_hostile_and_broken_routes_are_refused_with_their_reasons(
    province: Node, city: Node, county: Node, tmp_path: Path, database_url: str
) -> None:
    await _route(province, city, county)
    county_signing, city_signing = (
        load_node_signing(county.settings),
        load_node_signing(city.settings),
    )
    original = sign_request(_ask(county, city), county_signing)

    # A replay at the middle hop: the city carries the first, refuses the second.
    assert await _send(county, city, original) == ("PERMISSION_DENIED", "GRANT_REQUIRED")
    assert await _send(county, city, original) == ("PERMISSION_DENIED", "PEER_REQUEST_REPLAYED")

    # The city alters what the carried request asked (another department): refused.
    altered = _carry(city_signing, city, province, original, nonce="b" * 32, department="tax")
    assert await _send(city, province, altered) == ("PERMISSION_DENIED", "PEER_REQUEST_ALTERED")
    # The city alters the carried request itself: its signature no longer holds.
    header, payload, signature = original.split(".")
    claimed = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claimed["officer"] = "SOMEONE-ELSE"
    forged = base64.urlsafe_b64encode(canonical_json(claimed)).rstrip(b"=").decode()
    tampered = f"{header}.{forged}.{signature}"
    assert await _send(
        city, province, _carry(city_signing, city, province, tampered, nonce="c" * 32,
                               officer="SOMEONE-ELSE"),
    ) == ("PERMISSION_DENIED", "PEER_SIGNATURE_MISMATCH")  # fmt: skip

    # A loop: the carried request was made by the province itself.
    province_signing = load_node_signing(province.settings)
    own = sign_request(_ask(province, city, nonce="d" * 32), province_signing)
    looped = _carry(city_signing, city, province, own, nonce="e" * 32)
    assert await _send(city, province, looped) == ("FAILED_PRECONDITION", "PEER_ROUTE_LOOP")

    # Too many hops: four links between exchanges, the province answers at most three.
    far = [load_node_signing(exchange_settings(tmp_path / f"far{i}", database_url)) for i in (1, 2)]
    far_fp = [_fingerprint(s) for s in far]
    county_fp = parts(county).trust.own_fingerprint.hex()
    e3 = sign_request(
        _ask(
            county, city, exchange=far_fp[1], audience=far_fp[0],
            dataset="b:c:province:police.person", nonce="1" * 32,
        ),
        far[1],
    )  # fmt: skip
    e2 = sign_request(
        _ask(
            county, city, exchange=far_fp[0], audience=county_fp,
            dataset="c:province:police.person", route=("f2",), previous=e3, nonce="2" * 32,
        ),
        far[0],
    )  # fmt: skip
    e1 = sign_request(
        _ask(county, city, route=("f1", "f2"), previous=e2, nonce="3" * 32,
             dataset="province:police.person"),
        county_signing,
    )  # fmt: skip
    outer = _ask(
        city, province, dataset="police.person", route=("county-a", "f1", "f2"), previous=e1,
        nonce="4" * 32,
    )  # fmt: skip
    assert await _send(city, province, sign_request(outer, city_signing)) == (
        "FAILED_PRECONDITION", "PEER_TOO_MANY_HOPS",
    )  # fmt: skip

    # Each refusal is in the province's log (the forged chain under the city's name).
    assert province.db is not None
    reasons = await province.db.pool.fetch(
        "SELECT reason FROM access_log WHERE caller LIKE 'city/%' AND decision = 'denied'"
    )
    assert {r["reason"] for r in reasons} >= {
        "PEER_REQUEST_ALTERED", "PEER_SIGNATURE_MISMATCH", "PEER_ROUTE_LOOP", "PEER_TOO_MANY_HOPS",
    }  # fmt: skip


def _fingerprint(signing: NodeSigning) -> str:
    return certificate_fingerprint(signing.chain[-1]).hex()


async def test_a_province_down_mid_route_fails_fast_with_peer_unavailable(
    province: Node, city: Node, county: Node
) -> None:
    await _route(province, city, county)
    await province.stop(grace=0)
    async with client_for(county, "approval", OFFICER) as approval:
        with pytest.raises(ExchangeError) as caught:
            await approval.query(
                DATASET, [OWNER_ID], fields=["name"], purpose=PURPOSE, case_id=CASE_ID
            )
        assert (caught.value.code, caught.value.reason) == (
            grpc.StatusCode.UNAVAILABLE, "PEER_UNAVAILABLE",
        )  # fmt: skip
    carried = await _log(city, "county-a/approval")
    assert [(r["action"], r["decision"], r["reason"]) for r in carried] == [
        ("query.forward", "allowed", "peer:province"),
        ("query.receipt", "denied", "PEER_UNAVAILABLE; peer:province"),
    ]
    asked = await _log(county, "approval")
    assert [(r["action"], r["reason"]) for r in asked] == [
        ("query.forward", "peer:city"),
        ("query.receipt", f"PEER_UNAVAILABLE; peer:city; log:{carried[1]['idx']}"),
    ]
