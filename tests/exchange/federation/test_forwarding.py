"""Queries across exchanges, one hop: a county department queries a province dataset
through its own node; the province's owner policy decides for ``county-a/<department>``;
both sides log, the county with the province's log index. Replays, signatures of another
exchange, stale requests and a province that is down are refused with their reasons
(docs/federation.md, "Forwarded queries")."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import asyncpg
import grpc
import pytest

from tests.conftest import client_for
from tests.exchange.federation.conftest import exchange_settings, link, parts
from tests.stories.restaurant import CASE_ID, COMPANY, COMPANY_USCC, ENTERPRISE, PERSON, PURPOSE
from tongban.client import ExchangeError
from tongban.client.errors import from_rpc_error
from tongban.exchange.datadir import ca_certificate_pem, load_node_credentials, load_node_signing
from tongban.exchange.federation.forwarding import ForwardedQuery, sign_request
from tongban.exchange.node import Node
from tongban.signing.clock import FixedClock
from tongban.v1 import federation_pb2, federation_pb2_grpc

OFFICER = "SP-0007"


async def _share(province: Node, county: Node) -> None:
    """Link the exchanges; the province's samr and police offer their datasets; the
    county has pulled them."""
    await link(province, county)
    async with client_for(province, "samr") as samr, client_for(province, "police") as police:
        await samr.register_dataset(ENTERPRISE, publish=True)
        await samr.publish_records("samr.enterprise", [(COMPANY_USCC, COMPANY)])
        await police.register_dataset(PERSON, publish=True)
    for owner, dataset in (("samr", "samr.enterprise"), ("police", "police.person")):
        await parts(province).offer.set_federation(
            owner, dataset, federated=True, peers=(), known_peers={"county-a"}, officer=None,
            now=province.clock.now(),
        )  # fmt: skip
    peer = await parts(county).trust.peer("province")
    assert peer is not None
    await parts(county).sync.pull(peer)


async def _log(
    node: Node, *, action: str | None = None, caller: str | None = None
) -> list[asyncpg.Record]:
    assert node.db is not None
    return await node.db.pool.fetch(
        """
        SELECT idx, caller, officer, action, dataset, fields, purpose, case_id, decision, reason
        FROM access_log WHERE ($1::text IS NULL OR action = $1)
          AND ($2::text IS NULL OR caller = $2) ORDER BY idx
        """,
        action,
        caller,
    )


async def test_the_owner_decides_for_the_remote_department_and_both_sides_log(
    province: Node, county: Node
) -> None:
    await _share(province, county)
    async with client_for(county, "approval", OFFICER) as approval:
        answer = await approval.query(
            "province:samr.enterprise",
            [COMPANY_USCC],
            fields=["name", "legal_representative"],
            purpose=PURPOSE,
            case_id=CASE_ID,
        )
        assert answer.dataset == "province:samr.enterprise"
        assert [(r.key, r.fields) for r in answer.records] == [
            (
                COMPANY_USCC,
                {"name": COMPANY["name"], "legal_representative": COMPANY["legal_representative"]},
            )
        ]
        # The owner's policy, applied to county-a/approval: no grant of the province's for
        # the citizen id, nor for conditional data.
        refusals = (
            ("province:samr.enterprise", ["legal_representative_id"], "PERSONAL_GRANT_REQUIRED"),
            ("province:police.person", ["name"], "GRANT_REQUIRED"),
        )
        for dataset, fields, reason in refusals:
            key = COMPANY_USCC if dataset.endswith("enterprise") else "330102198503120022"
            with pytest.raises(ExchangeError) as caught:
                await approval.query(
                    dataset, [key], fields=fields, purpose=PURPOSE, case_id=CASE_ID
                )
            assert (caught.value.code, caught.value.reason) == (
                grpc.StatusCode.PERMISSION_DENIED, reason,
            )  # fmt: skip
            assert caught.value.metadata["peer"] == "province"

    # The province logged each decision under the remote identity.
    decided = await _log(province, caller="county-a/approval")
    assert [(r["action"], r["decision"], r["reason"]) for r in decided] == [
        ("query", "allowed", "law:《企业信息公示暂行条例》第六条"),
        ("query", "denied", "PERSONAL_GRANT_REQUIRED"),
        ("query", "denied", "GRANT_REQUIRED"),
    ]
    assert {(r["officer"], r["purpose"], r["case_id"]) for r in decided} == {
        (OFFICER, PURPOSE, CASE_ID)
    }
    # The county logged each request going out and each answer coming back, with the
    # province's log index: each side can point at the other's entry.
    sent = await _log(county, action="query.forward")
    assert [(r["caller"], r["officer"], r["dataset"], r["decision"]) for r in sent] == [
        ("approval", OFFICER, "province:samr.enterprise", "allowed"),
        ("approval", OFFICER, "province:samr.enterprise", "allowed"),
        ("approval", OFFICER, "province:police.person", "allowed"),
    ]
    received = await _log(county, action="query.receipt")
    assert [(r["decision"], r["reason"]) for r in received] == [
        ("allowed", f"peer:province; log:{decided[0]['idx']}"),
        ("denied", f"PERSONAL_GRANT_REQUIRED; peer:province; log:{decided[1]['idx']}"),
        ("denied", f"GRANT_REQUIRED; peer:province; log:{decided[2]['idx']}"),
    ]


def _request(county: Node, province: Node, **changes: object) -> ForwardedQuery:
    now = county.clock.now()
    fields: dict[str, object] = {
        "exchange": parts(county).trust.own_fingerprint.hex(),
        "audience": parts(province).trust.own_fingerprint.hex(),
        "department": "approval",
        "officer": OFFICER,
        "purpose": PURPOSE,
        "case_id": CASE_ID,
        "dataset": "samr.enterprise",
        "fields": ("name",),
        "keys": (COMPANY_USCC,),
        "nonce": "0123456789abcdef0123456789abcdef",
        "issued_at": now,
        "expires_at": now + timedelta(seconds=60),
    }
    fields.update(changes)
    return ForwardedQuery(**fields)  # type: ignore[arg-type]


async def _forward(county: Node, province: Node, token: str) -> tuple[str, str]:
    """Send ``token`` to the province over the county node's own TLS identity; return
    (status, reason) ("OK", "") on success."""
    own = load_node_credentials(county.settings)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_certificate_pem(province.settings),
        private_key=own.key_pem,
        certificate_chain=own.cert_chain_pem,
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{province.grpc_port}", credentials) as channel:
        stub = federation_pb2_grpc.PeerServiceStub(channel)
        try:
            await stub.ForwardQuery(federation_pb2.ForwardQueryRequest(request=token), timeout=10)
        except grpc.aio.AioRpcError as e:
            error = from_rpc_error(e)
            return error.code.name, error.reason
    return "OK", ""


async def test_replays_foreign_signatures_and_stale_requests_are_refused(
    province: Node, county: Node, tmp_path: Path, database_url: str
) -> None:
    await _share(province, county)
    county_signing = load_node_signing(county.settings)
    token = sign_request(_request(county, province), county_signing)
    assert await _forward(county, province, token) == ("OK", "")
    assert await _forward(county, province, token) == ("PERMISSION_DENIED", "PEER_REQUEST_REPLAYED")

    # Signed by a node of another exchange, sent over the county's connection.
    stranger = load_node_signing(exchange_settings(tmp_path / "stranger", database_url))
    other = sign_request(_request(county, province, nonce="1" * 32), stranger)
    assert await _forward(county, province, other) == (
        "PERMISSION_DENIED",
        "PEER_SIGNATURE_MISMATCH",
    )
    # The county's own signature, but for another audience.
    elsewhere = sign_request(
        _request(county, province, nonce="2" * 32, audience="00" * 32), county_signing
    )
    assert await _forward(county, province, elsewhere) == (
        "PERMISSION_DENIED",
        "PEER_SIGNATURE_MISMATCH",
    )

    past = county.clock.now() - timedelta(minutes=10)
    stale = _request(
        county, province, nonce="3" * 32, issued_at=past, expires_at=past + timedelta(seconds=60)
    )
    assert await _forward(county, province, sign_request(stale, county_signing)) == (
        "PERMISSION_DENIED", "PEER_REQUEST_EXPIRED",
    )  # fmt: skip
    # A dataset not offered to the county does not exist for its departments.
    async with client_for(province, "samr") as samr:
        hidden = ENTERPRISE.__class__()
        hidden.CopyFrom(ENTERPRISE)
        hidden.code = "samr.branch"
        await samr.register_dataset(hidden, publish=True)
    unoffered = sign_request(
        _request(county, province, nonce="4" * 32, dataset="samr.branch"), county_signing
    )
    assert await _forward(county, province, unoffered) == ("NOT_FOUND", "DATASET_NOT_FOUND")
    assert await _forward(county, province, "not.a.jws") == (
        "INVALID_ARGUMENT",
        "PEER_REQUEST_INVALID",
    )

    refused = await _log(province)
    reasons = [r["reason"] for r in refused if r["decision"] == "denied"]
    assert reasons == [
        "PEER_REQUEST_REPLAYED",
        "PEER_SIGNATURE_MISMATCH",
        "PEER_SIGNATURE_MISMATCH",
        "PEER_REQUEST_EXPIRED",
        "DATASET_NOT_FOUND",
        "PEER_REQUEST_INVALID",
    ]


async def test_a_peer_that_is_down_fails_fast_and_local_service_carries_on(
    province: Node, county: Node
) -> None:
    await _share(province, county)
    await province.stop(grace=0)
    async with client_for(county, "approval", OFFICER) as approval:
        with pytest.raises(ExchangeError) as caught:
            await approval.query(
                "province:samr.enterprise", [COMPANY_USCC], fields=["name"],
                purpose=PURPOSE, case_id=CASE_ID,
            )  # fmt: skip
        assert (caught.value.code, caught.value.reason) == (
            grpc.StatusCode.UNAVAILABLE, "PEER_UNAVAILABLE",
        )  # fmt: skip
        # The county itself still serves its own departments.
        assert (await approval.who_am_i()).department == "approval"
    received = await _log(county, action="query.receipt")
    assert [(r["decision"], r["reason"]) for r in received] == [
        ("denied", "PEER_UNAVAILABLE; peer:province")
    ]


async def test_as_of_is_answered_by_the_owner(province: Node, county: Node) -> None:
    await _share(province, county)
    assert isinstance(province.clock, FixedClock)
    assert isinstance(county.clock, FixedClock)
    published = province.clock.now()
    province.clock.advance(timedelta(hours=1))  # an hour on, on both exchanges' clocks
    county.clock.advance(timedelta(hours=1))
    renamed = {**COMPANY, "name": "杭州味道餐饮集团有限公司"}
    async with client_for(province, "samr") as samr:
        await samr.publish_records("samr.enterprise", [(COMPANY_USCC, renamed)])
    async with client_for(county, "approval", OFFICER) as approval:
        ask = {"fields": ["name"], "purpose": PURPOSE, "case_id": CASE_ID}
        then = await approval.query(
            "province:samr.enterprise",
            [COMPANY_USCC],
            as_of=published + timedelta(minutes=30),
            **ask,  # type: ignore[arg-type]
        )
        current = await approval.query("province:samr.enterprise", [COMPANY_USCC], **ask)  # type: ignore[arg-type]
    assert [r.fields["name"] for r in then.records] == [COMPANY["name"]]
    assert [r.fields["name"] for r in current.records] == [renamed["name"]]
    assert (then.records[0].version, current.records[0].version) == (1, 2)
