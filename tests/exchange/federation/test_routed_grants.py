"""Grant requests over two hops (docs/federation.md, "Grants across exchanges" and
"Routing over several hops"): the county's approval service asks for a grant on
``city:province:police.person``; the city carries the request as it carries queries and
logs it; the province checks the chain and records a pending request of
``city/county-a/approval``, which its owner decides; the county follows it through the
city and then queries under it. A middle exchange that alters the carried request, a
replay and too many hops are refused with nothing recorded."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from tests.conftest import client_for
from tests.exchange.federation.conftest import exchange_settings, parts
from tests.exchange.federation.test_routing import DATASET, OFFICER, _log, _route
from tests.stories.restaurant import CASE_ID, OWNER, OWNER_ID, PURPOSE
from tongban.client import ExchangeError
from tongban.client.errors import from_rpc_error
from tongban.client.sharing import GrantStatus
from tongban.exchange.datadir import (
    NodeSigning,
    ca_certificate_pem,
    load_node_credentials,
    load_node_signing,
)
from tongban.exchange.federation.forwarding import sign_claims
from tongban.exchange.federation.grants import GRANT_REQUEST_TYPE, ForwardedGrantRequest
from tongban.exchange.node import Node
from tongban.signing.certs import certificate_fingerprint
from tongban.v1 import federation_pb2, federation_pb2_grpc

BASIS = "《行政许可法》第三十一条"


async def test_a_county_grant_request_is_carried_by_the_city_and_decided_at_the_province(
    province: Node, city: Node, county: Node
) -> None:
    await _route(province, city, county)
    expiry = county.clock.now() + timedelta(days=90)
    async with client_for(county, "approval", OFFICER) as approval:
        with pytest.raises(ExchangeError) as refused:
            await approval.query(
                DATASET, [OWNER_ID], fields=["name"], purpose=PURPOSE, case_id=CASE_ID
            )
        assert refused.value.reason == "GRANT_REQUIRED"
        asked = await approval.request_grant(DATASET, ["name"], PURPOSE, BASIS, expiry)
        # As the county names things: the route's dataset, owner and grant, our department.
        assert (asked.dataset, asked.owner, asked.consumer) == (
            DATASET, "city/province/police", "approval",
        )  # fmt: skip
        assert asked.id.startswith("city:province:")
        assert asked.status is GrantStatus.PENDING
        assert asked.due_at > asked.requested_at  # the province's working-day deadline
        assert asked.requested_by == OFFICER
        followed = await approval.list_grants(dataset=DATASET)
        assert [(g.id, g.status) for g in followed] == [(asked.id, GrantStatus.PENDING)]

    # The province keeps it for the department its route names; its owner decides.
    async with client_for(province, "police") as police:
        pending = await police.list_grants(dataset="police.person")
        assert [(g.consumer, g.status, g.requested_fields, g.purpose) for g in pending] == [
            ("city/county-a/approval", GrantStatus.PENDING, ("name",), PURPOSE)
        ]
        assert pending[0].id == asked.id.removeprefix("city:province:")
        await police.decide_grant(pending[0].id, approve=True, reason="审批核验")

    async with client_for(county, "approval", OFFICER) as approval:
        followed = await approval.list_grants(dataset=DATASET)
        assert [(g.id, g.status, g.fields, g.owner) for g in followed] == [
            (asked.id, GrantStatus.APPROVED, ("name",), "city/province/police")
        ]
        answer = await approval.query(
            DATASET, [OWNER_ID], fields=["name"], purpose=PURPOSE, case_id=CASE_ID
        )
        assert [(r.key, r.fields) for r in answer.records] == [(OWNER_ID, {"name": OWNER["name"]})]
    # Another county department sees none of approval's grants.
    async with client_for(county, "tax") as tax:
        assert await tax.list_grants(dataset=DATASET) == []

    # The city logged what it carried, with the province's grant id in the receipt.
    carried = [r for r in await _log(city, "county-a/approval") if r["action"].startswith("grant")]
    assert [(r["action"], r["decision"], r["reason"], r["officer"]) for r in carried] == [
        ("grant.forward", "allowed", "peer:province", OFFICER),
        ("grant.receipt", "allowed", f"peer:province; grant:{pending[0].id}", OFFICER),
    ]
    assert {(r["dataset"], r["purpose"]) for r in carried} == {("province:police.person", PURPOSE)}


def _grant(signing_of: Node, to: Node, **changes: object) -> ForwardedGrantRequest:
    now = signing_of.clock.now()
    fields: dict[str, object] = {
        "exchange": parts(signing_of).trust.own_fingerprint.hex(),
        "audience": parts(to).trust.own_fingerprint.hex(),
        "department": "approval",
        "officer": OFFICER,
        "dataset": "province:police.person",
        "fields": ("name",),
        "purpose": PURPOSE,
        "legal_basis": BASIS,
        "expiry": now + timedelta(days=30),
        "nonce": "0123456789abcdef0123456789abcdef",
        "issued_at": now,
        "expires_at": now + timedelta(seconds=60),
    }
    fields.update(changes)
    return ForwardedGrantRequest(**fields)  # type: ignore[arg-type]


def _signed(request: ForwardedGrantRequest, by: NodeSigning) -> str:
    return sign_claims(request.payload(), by, GRANT_REQUEST_TYPE)


async def _send(sender: Node, to: Node, token: str) -> tuple[str, str]:
    """Send grant request ``token`` to ``to`` over ``sender``'s node TLS identity."""
    own = load_node_credentials(sender.settings)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_certificate_pem(to.settings),
        private_key=own.key_pem,
        certificate_chain=own.cert_chain_pem,
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{to.grpc_port}", credentials) as channel:
        stub = federation_pb2_grpc.PeerServiceStub(channel)
        try:
            await stub.ForwardGrantRequest(
                federation_pb2.ForwardGrantRequestRequest(request=token), timeout=10
            )
        except grpc.aio.AioRpcError as e:
            error = from_rpc_error(e)
            return error.code.name, error.reason
    return "OK", ""


async def test_altered_replayed_and_too_long_grant_routes_record_nothing(
    province: Node, city: Node, county: Node, tmp_path: Path, database_url: str
) -> None:
    await _route(province, city, county)
    county_signing, city_signing = (
        load_node_signing(county.settings),
        load_node_signing(city.settings),
    )
    original = _grant(county, city)

    def carried(previous: str, nonce: str, **changes: object) -> str:
        """The city's request to the province carrying ``previous``."""
        outer = _grant(
            city, province, dataset="police.person", route=("county-a",), previous=previous,
            nonce=nonce, **({"expiry": original.expiry} | changes),
        )  # fmt: skip
        return _signed(outer, city_signing)

    # The city alters what the carried request asked: other fields, a later expiry,
    # another department. Each is refused before anything is recorded.
    later = original.expiry + timedelta(days=1)
    token = _signed(original, county_signing)
    for nonce, change in (
        ("b" * 32, {"fields": ("name", "gender")}),
        ("c" * 32, {"expiry": later}),
        ("d" * 32, {"department": "tax"}),
        ("e" * 32, {"legal_basis": "另一条"}),
    ):
        assert await _send(city, province, carried(token, nonce, **change)) == (
            "PERMISSION_DENIED", "PEER_REQUEST_ALTERED",
        ), change  # fmt: skip

    # A replay at the middle hop: the city carries the first, refuses the second; and
    # the province refuses the city's carried request sent twice.
    assert await _send(county, city, token) == ("OK", "")
    assert await _send(county, city, token) == ("PERMISSION_DENIED", "PEER_REQUEST_REPLAYED")
    once = carried(token, "f" * 32)
    assert await _send(city, province, once) == ("OK", "")
    assert await _send(city, province, once) == ("PERMISSION_DENIED", "PEER_REQUEST_REPLAYED")

    # Too many hops: four links between exchanges, the province answers at most three.
    far = [load_node_signing(exchange_settings(tmp_path / f"far{i}", database_url)) for i in (1, 2)]
    far_fp = [certificate_fingerprint(s.chain[-1]).hex() for s in far]
    county_fp = parts(county).trust.own_fingerprint.hex()
    e3 = _signed(
        _grant(county, city, exchange=far_fp[1], audience=far_fp[0],
               dataset="b:c:province:police.person", nonce="1" * 32, expiry=original.expiry),
        far[1],
    )  # fmt: skip
    e2 = _signed(
        _grant(county, city, exchange=far_fp[0], audience=county_fp,
               dataset="c:province:police.person", route=("f2",), previous=e3, nonce="2" * 32,
               expiry=original.expiry),
        far[0],
    )  # fmt: skip
    e1 = _signed(
        _grant(county, city, route=("f1", "f2"), previous=e2, nonce="3" * 32,
               expiry=original.expiry),
        county_signing,
    )  # fmt: skip
    # At the city: the county's request has already crossed two links behind it.
    assert await _send(county, city, e1) == ("FAILED_PRECONDITION", "PEER_TOO_MANY_HOPS")
    outer = _grant(
        city, province, dataset="police.person", route=("county-a", "f1", "f2"), previous=e1,
        nonce="4" * 32, expiry=original.expiry,
    )  # fmt: skip
    assert await _send(city, province, _signed(outer, city_signing)) == (
        "FAILED_PRECONDITION", "PEER_TOO_MANY_HOPS",
    )  # fmt: skip

    # Only the two requests that were carried whole are recorded at the province.
    async with client_for(province, "police") as police:
        recorded = await police.list_grants(dataset="police.person")
    assert [g.consumer for g in recorded] == ["city/county-a/approval"] * 2
    # The city logged what it carried, and the one refusal it made itself (under the
    # name the refused request's route gives).
    logged = [
        (r["caller"], r["action"], r["decision"], r["reason"])
        for caller in ("county-a/approval", "county-a/f1/f2/approval")
        for r in await _log(city, caller)
        if r["action"].startswith("grant")
    ]
    assert logged == [
        ("county-a/approval", "grant.forward", "allowed", "peer:province"),
        ("county-a/approval", "grant.receipt", "allowed", logged[1][3]),
        ("county-a/f1/f2/approval", "grant.forward", "denied", "PEER_TOO_MANY_HOPS"),
    ]
    assert logged[1][3].removeprefix("peer:province; grant:") in {g.id for g in recorded}
