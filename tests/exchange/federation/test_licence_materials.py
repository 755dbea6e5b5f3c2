"""The materials resolver and peers' licences (docs/federation.md): a county approval
service's material is satisfied by a business licence the applicant holds in the
province, fetched with purpose and case and logged on both sides, once the province's
issuer offers its licences to the county; the presentation is believed only after it
verifies with the province's trust list."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import grpc
import pytest

from tests.conftest import client_for
from tests.exchange.federation.conftest import add_peer, exchange_settings, link, parts
from tests.exchange.federation.test_catalogue import _HostilePeer
from tests.stories.restaurant import BUSINESS_LICENCE_CLAIMS, CASE_ID, COMPANY_USCC
from tongban.errors import TongbanError
from tongban.exchange.datadir import load_node_credentials, load_node_signing
from tongban.exchange.departments import DepartmentStore, Level
from tongban.exchange.identity import Caller
from tongban.exchange.licensing.feed import dataset_code
from tongban.exchange.node import Node
from tongban.licence import BUILTIN_REGISTRY, sign_trust_list
from tongban.v1 import federation_pb2_grpc, items_pb2

ITEM = items_pb2.ItemSpec(
    code="outdoor-sign-permit",
    name="户外招牌设置审批",
    legal_basis="《城市市容和环境卫生管理条例》第十一条",
    purpose="户外招牌设置审批",
    legal_limit_days=20,
    promised_limit_days=3,
    materials=[
        items_pb2.Material(
            code="business-licence", name="营业执照", required=True,
            licence=items_pb2.LicenceSource(licence_type="business-licence"),
        )
    ],
)  # fmt: skip


async def _log(node: Node, action_prefix: str) -> list[asyncpg.Record]:
    assert node.db is not None
    return await node.db.pool.fetch(
        "SELECT idx, caller, action, decision, reason, purpose, case_id FROM access_log"
        " WHERE action LIKE $1 ORDER BY idx",
        action_prefix + "%",
    )


async def test_a_material_is_satisfied_by_a_licence_held_in_the_province(
    province: Node, county: Node
) -> None:
    async with client_for(province, "samr", "SC-1") as samr:
        licence = await samr.issue_licence(
            "business-licence", BUSINESS_LICENCE_CLAIMS, case_id="DJ-1"
        )
    await link(province, county)
    async with client_for(county, "approval", "SP-0007") as approval:
        await approval.register_item(ITEM)
        # The province's samr does not offer its licences to the county yet.
        before = await approval.resolve_materials(ITEM.code, COMPANY_USCC, CASE_ID)
        [material] = before.materials
        assert (material.satisfied, material.reason) == (False, "LICENCE_NOT_FOUND")

        code = dataset_code("samr", BUILTIN_REGISTRY.get("business-licence"))
        await parts(province).offer.set_federation(
            "samr", code, federated=True, peers=(), known_peers={"county-a"}, officer=None,
            now=province.clock.now(),
        )  # fmt: skip
        after = await approval.resolve_materials(ITEM.code, COMPANY_USCC, CASE_ID)
    [material] = after.materials
    assert material.satisfied, material.message
    assert (material.source, material.reference) == ("licence", f"province/{licence.number}")
    assert json.loads(material.values_json)["uscc"] == COMPANY_USCC
    assert "held in peer exchange province" in material.message

    # Logged on both sides: the province decided for county-a/approval, the county logged
    # each request going out and each receipt with the province's index.
    decided = [r for r in await _log(province, "licence-fetch") if r["caller"] != "samr"]
    assert [(r["caller"], r["decision"], r["reason"]) for r in decided] == [
        ("county-a/approval", "denied", "LICENCE_NOT_FOUND"),
        ("county-a/approval", "allowed", decided[-1]["reason"]),
    ]
    assert (decided[-1]["purpose"], decided[-1]["case_id"]) == (ITEM.purpose, CASE_ID)
    receipts = await _log(county, "licence-fetch.receipt")
    assert [(r["decision"], r["reason"]) for r in receipts] == [
        ("denied", f"LICENCE_NOT_FOUND; peer:province; log:{decided[0]['idx']}"),
        ("allowed", f"peer:province; log:{decided[-1]['idx']}"),
    ]
    assert {r["caller"] for r in await _log(county, "licence-fetch.forward")} == {"approval"}


async def test_a_peer_licence_that_does_not_verify_is_not_used(
    province: Node, tmp_path: Path, database_url: str
) -> None:
    """A hostile city answers every licence fetch with an empty presentation, first with
    a trust list that is no trust list, then with a good (empty) one of its own root."""
    city = exchange_settings(tmp_path / "city", database_url)
    city_tls = load_node_credentials(city)
    city_signing = load_node_signing(city)
    hostile = _HostilePeer([])
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
        assert province.db is not None
        approval = Caller(await DepartmentStore(province.db.pool).get("approval"), "SP-1", b"")
        ask = {
            "purpose": ITEM.purpose, "case_id": CASE_ID, "disclose": (),
            "holder_id": COMPANY_USCC, "licence_type": "business-licence",
        }  # fmt: skip
        with pytest.raises(TongbanError) as bad_list:
            await parts(province).licence_fetch.fetch(approval, **ask)  # type: ignore[arg-type]
        assert bad_list.value.reason == "PEER_TRUST_LIST_INVALID"

        good_list = sign_trust_list(
            [], signer=city_signing.signer, chain=city_signing.chain, now=province.clock.now()
        )
        hostile.trust_list = good_list
        with pytest.raises(TongbanError) as bad_licence:
            await parts(province).licence_fetch.fetch(approval, **ask)  # type: ignore[arg-type]
        assert bad_licence.value.reason == "PEER_SIGNATURE_MISMATCH"
    finally:
        await server.stop(0)
    receipts = await _log(province, "licence-fetch.receipt")
    assert [r["reason"] for r in receipts] == [
        "PEER_TRUST_LIST_INVALID; peer:city",
        "LICENCE_FORMAT_INVALID; peer:city",  # why the presentation was not believed
    ]
