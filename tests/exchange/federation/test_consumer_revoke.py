"""A consumer revokes its own grant at a peer's owner (docs/federation.md, "Grants across
exchanges", "Revoking from the consumer's side"): the county's approval service revokes
``province:<id>`` (one link) or ``city:province:<id>`` (carried by the city); the owner's
exchange revokes only a grant whose consumer is exactly that department, and the
revocation ends its queries and subscription batches as an owner's does. Another
department's grant, an unknown or malformed id, a replay, an altered or foreign signature
and a middle exchange that alters what it carries are refused with their reasons, and
nothing changes."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import timedelta

import grpc
import pytest

from tests.conftest import client_for
from tests.exchange.federation.conftest import parts
from tests.exchange.federation.test_forwarding import _share
from tests.exchange.federation.test_routed_subscriptions import SECOND_PERSON, _until_refused
from tests.exchange.federation.test_routing import DATASET, OFFICER, _log, _route
from tests.stories.restaurant import CASE_ID, OWNER, OWNER_ID, PURPOSE
from tongban.client import ExchangeClient, ExchangeError
from tongban.client.errors import from_rpc_error
from tongban.client.sharing import GrantStatus
from tongban.exchange.datadir import (
    NodeSigning,
    ca_certificate_pem,
    load_node_credentials,
    load_node_signing,
)
from tongban.exchange.federation.forwarding import sign_claims
from tongban.exchange.federation.grants import GRANT_REVOKE_TYPE, ForwardedGrantRevoke
from tongban.exchange.node import Node
from tongban.v1 import federation_pb2, federation_pb2_grpc

BASIS = "《行政许可法》第三十一条"
PERSON_ID = "330102198503120022"


async def _approved(consumer: ExchangeClient, owner: Node, dataset: str, prefix: str) -> str:
    """A grant of ``name`` on ``dataset`` asked by ``consumer`` and approved by the
    province's police; its id as the county names it."""
    expiry = owner.clock.now() + timedelta(days=30)
    asked = await consumer.request_grant(dataset, ["name"], PURPOSE, BASIS, expiry)
    async with client_for(owner, "police") as police:
        await police.decide_grant(asked.id.removeprefix(prefix), approve=True, reason="审批核验")
    return asked.id


async def _held(province: Node) -> list[tuple[str, GrantStatus]]:
    async with client_for(province, "police") as police:
        return [(g.consumer, g.status) for g in await police.list_grants(dataset="police.person")]


async def _refused(client: ExchangeClient, grant_id: str) -> tuple[str, str]:
    with pytest.raises(ExchangeError) as caught:
        await client.revoke_grant(grant_id, reason="不再需要")
    return caught.value.code.name, caught.value.reason


async def test_a_county_department_revokes_its_own_grant_at_the_province(
    province: Node, county: Node
) -> None:
    await _share(province, county)
    async with client_for(county, "approval", OFFICER) as approval:
        grant_id = await _approved(approval, province, "province:police.person", "province:")
        await approval.query(
            "province:police.person", [PERSON_ID], fields=["name"], purpose=PURPOSE,
            case_id=CASE_ID,
        )  # fmt: skip

    # Another department of the county, ids the province does not keep, malformed ids and
    # an unknown peer: refused, and the grant stays approved.
    async with client_for(county, "tax") as tax:
        assert await _refused(tax, grant_id) == ("NOT_FOUND", "GRANT_NOT_FOUND")
    async with client_for(county, "approval", OFFICER) as approval:
        for bad, expected in (
            (f"province:{uuid.uuid4()}", ("NOT_FOUND", "GRANT_NOT_FOUND")),
            ("province:not-a-uuid", ("NOT_FOUND", "GRANT_NOT_FOUND")),
            ("province:", ("INVALID_ARGUMENT", "INVALID_ARGUMENT")),
            ("province:a b;c", ("INVALID_ARGUMENT", "INVALID_ARGUMENT")),
            (f"nowhere:{grant_id.removeprefix('province:')}", ("NOT_FOUND", "PEER_UNKNOWN")),
        ):
            assert await _refused(approval, bad) == expected, bad
    assert await _held(province) == [("county-a/approval", GrantStatus.APPROVED)]

    # Its own consumer revokes it: named as the county names it, revoked at the province
    # by the county's officer, and the next query is decided without it.
    async with client_for(county, "approval", OFFICER) as approval:
        revoked = await approval.revoke_grant(grant_id, reason="审批已办结")
        assert (revoked.id, revoked.dataset, revoked.owner, revoked.consumer) == (
            grant_id, "province:police.person", "province/police", "approval",
        )  # fmt: skip
        assert (revoked.status, revoked.decision_reason, revoked.decided_by) == (
            GrantStatus.REVOKED, "审批已办结", OFFICER,
        )  # fmt: skip
        with pytest.raises(ExchangeError) as after:
            await approval.query(
                "province:police.person", [PERSON_ID], fields=["name"], purpose=PURPOSE,
                case_id=CASE_ID,
            )  # fmt: skip
        assert after.value.reason == "GRANT_REQUIRED"
        # Revoked once: a second revocation has nothing to end.
        assert await _refused(approval, grant_id) == ("FAILED_PRECONDITION", "GRANT_STATE_INVALID")
    assert await _held(province) == [("county-a/approval", GrantStatus.REVOKED)]


def _revoke(signing_of: Node, to: Node, grant: str, **changes: object) -> ForwardedGrantRevoke:
    now = signing_of.clock.now()
    fields: dict[str, object] = {
        "exchange": parts(signing_of).trust.own_fingerprint.hex(),
        "audience": parts(to).trust.own_fingerprint.hex(),
        "department": "approval",
        "officer": OFFICER,
        "grant": grant,
        "reason": "不再需要",
        "nonce": "0123456789abcdef0123456789abcdef",
        "issued_at": now,
        "expires_at": now + timedelta(seconds=60),
    }
    fields.update(changes)
    return ForwardedGrantRevoke(**fields)  # type: ignore[arg-type]


def _signed(request: ForwardedGrantRevoke, by: NodeSigning, typ: str = GRANT_REVOKE_TYPE) -> str:
    return sign_claims(request.payload(), by, typ)


async def _send(sender: Node, to: Node, token: str) -> tuple[str, str]:
    """Send revocation ``token`` to ``to`` over ``sender``'s node TLS identity."""
    own = load_node_credentials(sender.settings)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_certificate_pem(to.settings),
        private_key=own.key_pem,
        certificate_chain=own.cert_chain_pem,
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{to.grpc_port}", credentials) as channel:
        stub = federation_pb2_grpc.PeerServiceStub(channel)
        try:
            await stub.ForwardGrantRevoke(
                federation_pb2.ForwardGrantRevokeRequest(request=token), timeout=10
            )
        except grpc.aio.AioRpcError as e:
            error = from_rpc_error(e)
            return error.code.name, error.reason
    return "OK", ""


def _altered_payload(token: str, **changes: object) -> str:
    """``token`` with its payload changed and its signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    encoded = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{encoded}.{signature}"


async def test_bad_revocations_are_refused_with_their_reasons(province: Node, county: Node) -> None:
    await _share(province, county)
    async with client_for(county, "approval", OFFICER) as approval:
        grant_id = await _approved(approval, province, "province:police.person", "province:")
    ours = grant_id.removeprefix("province:")
    signing, province_signing = (
        load_node_signing(county.settings),
        load_node_signing(province.settings),
    )
    valid = _signed(_revoke(county, province, ours), signing)
    now = county.clock.now()
    denied, invalid = "PERMISSION_DENIED", "INVALID_ARGUMENT"
    for bad, expected in (
        # Another department's name over the same grant: not its grant.
        (_signed(_revoke(county, province, ours, department="tax", nonce="1" * 32), signing),
         ("NOT_FOUND", "GRANT_NOT_FOUND")),
        # The county's request with its department altered after signing.
        (_altered_payload(valid, department="tax"), (denied, "PEER_SIGNATURE_MISMATCH")),
        # Signed by the province's own node, not the calling peer's.
        (_signed(_revoke(county, province, ours, nonce="2" * 32), province_signing),
         (denied, "PEER_SIGNATURE_MISMATCH")),
        (_signed(_revoke(county, province, ours, nonce="3" * 32, audience="00" * 32), signing),
         (denied, "PEER_SIGNATURE_MISMATCH")),
        (_signed(_revoke(county, province, ours, nonce="4" * 32,
                         issued_at=now - timedelta(hours=2),
                         expires_at=now - timedelta(hours=1)), signing),
         (denied, "PEER_REQUEST_EXPIRED")),
        (_signed(_revoke(county, province, "a b;c", nonce="5" * 32), signing),
         (invalid, "PEER_REQUEST_INVALID")),
        (_signed(_revoke(county, province, str(uuid.uuid4()), nonce="6" * 32), signing),
         ("NOT_FOUND", "GRANT_NOT_FOUND")),
        # A grant request's type is not a revocation.
        (_signed(_revoke(county, province, ours, nonce="7" * 32), signing,
                 "tongban-forwarded-grant+jws"), (invalid, "PEER_REQUEST_INVALID")),
        ("garbage", (invalid, "PEER_REQUEST_INVALID")),
    ):  # fmt: skip
        assert await _send(county, province, bad) == expected, expected
    assert await _held(province) == [("county-a/approval", GrantStatus.APPROVED)]

    assert await _send(county, province, valid) == ("OK", "")
    # Replayed: refused before the grant is looked at.
    assert await _send(county, province, valid) == (denied, "PEER_REQUEST_REPLAYED")
    assert await _held(province) == [("county-a/approval", GrantStatus.REVOKED)]


async def test_a_revocation_through_the_city_ends_the_county_subscription(
    province: Node, city: Node, county: Node
) -> None:
    """Over two hops: the county's approval service revokes ``city:province:<id>`` while
    its subscription under that grant is open; the city carries the revocation and logs
    it, the province revokes it for ``city/county-a/approval``, and its next batch is
    refused as after an owner's revocation."""
    await _route(province, city, county)
    async with client_for(county, "approval", OFFICER) as approval:
        grant_id = await _approved(approval, province, DATASET, "city:province:")
        async with client_for(county, "tax") as tax:
            assert await _refused(tax, grant_id) == ("NOT_FOUND", "GRANT_NOT_FOUND")
        unknown = str(uuid.uuid4())
        assert await _refused(approval, f"city:province:{unknown}") == (
            "NOT_FOUND", "GRANT_NOT_FOUND",
        )  # fmt: skip
        assert await _refused(approval, f"city:nowhere:{uuid.uuid4()}") == (
            "NOT_FOUND", "PEER_UNKNOWN",
        )  # fmt: skip

        async def revoke_and_publish() -> None:
            revoked = await approval.revoke_grant(grant_id, reason="审批已办结")
            assert (revoked.id, revoked.status, revoked.owner) == (
                grant_id, GrantStatus.REVOKED, "city/province/police",
            )  # fmt: skip
            async with client_for(province, "police") as police:
                await police.publish_records("police.person", [(SECOND_PERSON, OWNER)])

        delivered, ended = await _until_refused(approval, DATASET, revoke_and_publish)
    assert delivered == [(OWNER_ID, {"name": OWNER["name"]})]
    assert (ended.code, ended.reason) == (grpc.StatusCode.PERMISSION_DENIED, "GRANT_REQUIRED")
    assert await _held(province) == [("city/county-a/approval", GrantStatus.REVOKED)]

    # The city logged what it carried and what came back, under the remote names.
    ours = grant_id.removeprefix("city:province:")
    carried = [
        (r["caller"], r["action"], r["decision"], r["reason"], r["officer"])
        for caller in ("county-a/tax", "county-a/approval")
        for r in await _log(city, caller)
        if r["action"].startswith("grant-revoke")
    ]
    assert carried == [
        ("county-a/tax", "grant-revoke.forward", "allowed", f"peer:province; grant:{ours}", None),
        ("county-a/tax", "grant-revoke.receipt", "denied", "GRANT_NOT_FOUND; peer:province", None),
        ("county-a/approval", "grant-revoke.forward", "allowed",
         f"peer:province; grant:{unknown}", OFFICER),
        ("county-a/approval", "grant-revoke.receipt", "denied",
         "GRANT_NOT_FOUND; peer:province", OFFICER),
        ("county-a/approval", "grant-revoke.forward", "denied", "PEER_UNKNOWN", OFFICER),
        ("county-a/approval", "grant-revoke.forward", "allowed",
         f"peer:province; grant:{ours}", OFFICER),
        ("county-a/approval", "grant-revoke.receipt", "allowed",
         f"peer:province; grant:{ours}", OFFICER),
    ]  # fmt: skip


async def test_a_middle_exchange_cannot_alter_a_revocation_it_carries(
    province: Node, city: Node, county: Node
) -> None:
    await _route(province, city, county)
    async with client_for(county, "approval", OFFICER) as approval:
        grant_id = await _approved(approval, province, DATASET, "city:province:")
    ours = grant_id.removeprefix("city:province:")
    county_signing, city_signing = (
        load_node_signing(county.settings),
        load_node_signing(city.settings),
    )
    token = _signed(_revoke(county, city, f"province:{ours}"), county_signing)

    def carried(nonce: str, **changes: object) -> str:
        asked: dict[str, object] = {"route": ("county-a",), "previous": token, "nonce": nonce}
        asked |= changes
        outer = _revoke(city, province, str(asked.pop("grant", ours)), **asked)
        return _signed(outer, city_signing)

    for nonce, change in (
        ("b" * 32, {"department": "tax"}),
        ("c" * 32, {"officer": "SP-0008"}),
        ("d" * 32, {"reason": "另一个理由"}),
        ("e" * 32, {"grant": str(uuid.uuid4())}),
    ):
        assert await _send(city, province, carried(nonce, **change)) == (
            "PERMISSION_DENIED", "PEER_REQUEST_ALTERED",
        ), change  # fmt: skip
    # A route naming another exchange behind the city names another department: not its
    # grant (the province trusts the city's names, and grants only to the name it gets).
    assert await _send(city, province, carried("f" * 32, route=("county-b",))) == (
        "NOT_FOUND", "GRANT_NOT_FOUND",
    )  # fmt: skip
    assert await _held(province) == [("city/county-a/approval", GrantStatus.APPROVED)]
    # Carried whole, it revokes; the city's own request replayed is refused.
    once = carried("1" * 32)
    assert await _send(city, province, once) == ("OK", "")
    assert await _send(city, province, once) == ("PERMISSION_DENIED", "PEER_REQUEST_REPLAYED")
    assert await _held(province) == [("city/county-a/approval", GrantStatus.REVOKED)]
