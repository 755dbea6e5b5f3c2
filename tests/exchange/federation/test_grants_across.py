"""Grant requests across exchanges (docs/federation.md, "Grants across exchanges"): a
county department asks the province's owner for a grant through its own node; the
province records it as a pending request of ``county-a/approval``, due in its working
days; its owner decides as for a local request; the county follows it and then queries.
Replays, another exchange's signature and datasets not offered are refused with their
reasons (over two hops: test_routed_grants.py)."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest

from tests.conftest import client_for
from tests.exchange.federation.conftest import parts
from tests.exchange.federation.test_forwarding import OFFICER, _share
from tests.stories.restaurant import CASE_ID, PURPOSE
from tongban.client import ExchangeError
from tongban.client.errors import from_rpc_error
from tongban.client.sharing import GrantStatus
from tongban.exchange.datadir import ca_certificate_pem, load_node_credentials, load_node_signing
from tongban.exchange.federation.forwarding import sign_claims
from tongban.exchange.federation.grants import GRANT_REQUEST_TYPE, ForwardedGrantRequest
from tongban.exchange.node import Node
from tongban.v1 import federation_pb2, federation_pb2_grpc

PERSON_ID = "330102198503120022"
BASIS = "《行政许可法》第三十一条"


async def test_a_county_department_asks_the_province_owner_for_a_grant(
    province: Node, county: Node
) -> None:
    await _share(province, county)
    expiry = county.clock.now() + timedelta(days=90)
    async with client_for(county, "approval", OFFICER) as approval:
        with pytest.raises(ExchangeError) as refused:
            await approval.query(
                "province:police.person", [PERSON_ID], fields=["name"], purpose=PURPOSE,
                case_id=CASE_ID,
            )  # fmt: skip
        assert refused.value.reason == "GRANT_REQUIRED"
        asked = await approval.request_grant(
            "province:police.person", ["name"], PURPOSE, BASIS, expiry
        )
        # As the county names things: the peer's dataset, owner and grant, our department.
        assert (asked.dataset, asked.owner, asked.consumer) == (
            "province:police.person", "province/police", "approval",
        )  # fmt: skip
        assert asked.id.startswith("province:")
        assert asked.status is GrantStatus.PENDING
        assert asked.due_at > asked.requested_at  # the province's working-day deadline
        assert asked.requested_by == OFFICER

    # The province keeps it as any other request, for county-a/approval, and its owner
    # decides it as a local one.
    async with client_for(province, "police") as police:
        pending = await police.list_grants(dataset="police.person")
        assert [(g.consumer, g.status, g.requested_fields) for g in pending] == [
            ("county-a/approval", GrantStatus.PENDING, ("name",))
        ]
        assert pending[0].id == asked.id.removeprefix("province:")
        await police.decide_grant(pending[0].id, approve=True, reason="审批核验")

    async with client_for(county, "approval", OFFICER) as approval:
        followed = await approval.list_grants(dataset="province:police.person")
        assert [(g.id, g.status, g.fields) for g in followed] == [
            (asked.id, GrantStatus.APPROVED, ("name",))
        ]
        answer = await approval.query(
            "province:police.person", [PERSON_ID], fields=["name"], purpose=PURPOSE,
            case_id=CASE_ID,
        )  # fmt: skip
        assert answer.dataset == "province:police.person"
        # Another department of the county sees none of approval's grants.
    async with client_for(county, "tax") as tax:
        assert await tax.list_grants(dataset="province:police.person") == []


def _grant_request(county: Node, province: Node, **changes: object) -> ForwardedGrantRequest:
    now = county.clock.now()
    fields: dict[str, object] = {
        "exchange": parts(county).trust.own_fingerprint.hex(),
        "audience": parts(province).trust.own_fingerprint.hex(),
        "department": "approval",
        "officer": OFFICER,
        "dataset": "police.person",
        "fields": ("name",),
        "purpose": PURPOSE,
        "legal_basis": BASIS,
        "expiry": now + timedelta(days=30),
        "nonce": "fedcba9876543210fedcba9876543210",
        "issued_at": now,
        "expires_at": now + timedelta(seconds=60),
    }
    fields.update(changes)
    return ForwardedGrantRequest(**fields)  # type: ignore[arg-type]


async def _send(county: Node, province: Node, token: str) -> tuple[str, str]:
    own = load_node_credentials(county.settings)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_certificate_pem(province.settings),
        private_key=own.key_pem, certificate_chain=own.cert_chain_pem,
    )  # fmt: skip
    async with grpc.aio.secure_channel(f"127.0.0.1:{province.grpc_port}", credentials) as channel:
        stub = federation_pb2_grpc.PeerServiceStub(channel)
        try:
            await stub.ForwardGrantRequest(
                federation_pb2.ForwardGrantRequestRequest(request=token), timeout=10
            )
        except grpc.aio.AioRpcError as e:
            error = from_rpc_error(e)
            return error.code.name, error.reason
    return "OK", ""


async def test_bad_grant_requests_are_refused_with_their_reasons(
    province: Node, county: Node
) -> None:
    await _share(province, county)
    signing = load_node_signing(county.settings)
    province_signing = load_node_signing(province.settings)

    def token(**changes: object) -> str:
        return sign_claims(
            _grant_request(county, province, **changes).payload(), signing, GRANT_REQUEST_TYPE
        )

    first = token()
    assert await _send(county, province, first) == ("OK", "")
    now = county.clock.now()
    denied, invalid = "PERMISSION_DENIED", "INVALID_ARGUMENT"
    stale = {"issued_at": now - timedelta(hours=2), "expires_at": now - timedelta(hours=1)}
    cases = (
        (first, (denied, "PEER_REQUEST_REPLAYED")),
        (token(nonce="1" * 32, dataset="samr.nothing"), ("NOT_FOUND", "DATASET_NOT_FOUND")),
        (token(nonce="2" * 32, **stale), (denied, "PEER_REQUEST_EXPIRED")),
        (token(nonce="3" * 32, audience="00" * 32), (denied, "PEER_SIGNATURE_MISMATCH")),
        (token(nonce="4" * 32, fields=("no_such_field",)), (invalid, "INVALID_ARGUMENT")),
        (token(nonce="5" * 32, department="Not A Code"), (invalid, "PEER_REQUEST_INVALID")),
        # Signed by the province's own node: not the calling peer's.
        (sign_claims(_grant_request(county, province, nonce="6" * 32).payload(),
                     province_signing, GRANT_REQUEST_TYPE), (denied, "PEER_SIGNATURE_MISMATCH")),
        # A forwarded query's type is not a grant request.
        (sign_claims(_grant_request(county, province, nonce="7" * 32).payload(), signing,
                     "tongban-forwarded-query+jws"), (invalid, "PEER_REQUEST_INVALID")),
        ("garbage", (invalid, "PEER_REQUEST_INVALID")),
    )  # fmt: skip
    for bad, expected in cases:
        assert await _send(county, province, bad) == expected, expected
    # Only the first one was recorded.
    async with client_for(province, "police") as police:
        assert [g.consumer for g in await police.list_grants(dataset="police.person")] == [
            "county-a/approval"
        ]

    # On the county's side: an unknown peer, and a route the province does not offer
    # (routed grant requests: test_routed_grants.py).
    async with client_for(county, "approval", OFFICER) as approval:
        for dataset, reason in (
            ("nowhere:police.person", "PEER_UNKNOWN"),
            ("province:city:police.person", "DATASET_NOT_FOUND"),
            ("province:samr.nothing", "DATASET_NOT_FOUND"),
        ):
            with pytest.raises(ExchangeError) as caught:
                await approval.request_grant(
                    dataset, ["name"], PURPOSE, BASIS, now + timedelta(days=9)
                )
            assert caught.value.reason == reason, dataset
