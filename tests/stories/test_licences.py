"""The licence parts of DESIGN.md's story, over real gRPC, HTTP and PostgreSQL:

1. samr issues the company's electronic business licence under its seal;
3. the approval service resolves the food business permit's materials with nothing
   submitted: the business licence fetched electronically, the registration and the
   legal representative's identity (under a grant) from shared data;
4. the bureau issues the food business permit with a QR code and a sealed PDF, and the
   regulator's supervision system learns of it by subscription;
5. a bank reads the QR back from the rendered PDF (pdftoppm + zxing) and verifies it
   offline: valid, issued by the bureau, not revoked;
6. the regulator revokes the permit; the bank's next online check says revoked, and its
   offline check says revoked once its cached status list is refreshed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import timedelta
from functools import partial
from pathlib import Path

import aiohttp
import pytest
import zxingcpp
from PIL import Image

from tests.conftest import client_for
from tests.stories.restaurant import (
    BUSINESS_LICENCE_CLAIMS,
    CASE_ID,
    COMPANY,
    COMPANY_USCC,
    ENTERPRISE,
    FOOD_BUSINESS_PERMIT_ITEM,
    FOOD_PERMIT_CLAIMS,
    OWNER,
    OWNER_ID,
    PERSON,
    PURPOSE,
    SERVICE_ITEM,
)
from tongban.cli.story_data import (
    grant_licence_representative,
    grant_representative_ids,
)
from tongban.client import ExchangeError
from tongban.exchange.datadir import ca_certificate_pem
from tongban.exchange.node import Node
from tongban.licence import (
    BUILTIN_REGISTRY,
    StatusListCache,
    TrustListCache,
    verify_licence,
)
from tongban.signing import load_pem_certificates, verify_sealed_pdf_async


async def _shared_data(node: Node) -> None:
    async with client_for(node, "samr", "SC-0001") as samr:
        await samr.register_dataset(ENTERPRISE, publish=True)
        await samr.publish_records("samr.enterprise", [(COMPANY_USCC, COMPANY)])
    await grant_representative_ids(partial(client_for, node), node.clock.now())
    async with client_for(node, "police", "GA-0001") as police:
        await police.register_dataset(PERSON, publish=True)
        await police.publish_records("police.person", [(OWNER_ID, OWNER)])


async def _grant_identity(node: Node) -> None:
    async with client_for(node, "approval", "SP-0007") as approval:
        grant = await approval.request_grant(
            "police.person",
            ["name", "gender"],
            PURPOSE,
            "《食品经营许可和备案管理办法》第十二条",
            node.clock.now() + timedelta(days=180),
        )
    async with client_for(node, "police", "GA-0002") as police:
        await police.decide_grant(grant.id, approve=True, reason="办理食品经营许可需核验身份")


async def _step_1(node: Node) -> str:
    async with client_for(node, "samr", "SC-0001") as samr:
        licence = await samr.issue_licence(
            "business-licence", BUSINESS_LICENCE_CLAIMS, case_id="DJ-2026-0001", reason="设立登记"
        )
    assert licence.issuer == "samr"
    assert licence.status == "valid"
    # The legal representative on the licence is personal: approval needs samr's grant.
    await grant_licence_representative(partial(client_for, node), node.clock.now())
    return licence.number


async def test_step_1_samr_issues_the_business_licence(node: Node) -> None:
    number = await _step_1(node)
    async with client_for(node, "samr") as samr:
        got = await samr.get_licence(number)
        result = await samr.verify_licence(got.sd_jwt)
    assert result.verified
    assert result.issuer == "samr"
    assert json.loads(result.claims_json)["name"] == COMPANY["name"]


async def test_step_3_materials_resolve_with_nothing_submitted(node: Node) -> None:
    await _shared_data(node)
    number = await _step_1(node)
    async with client_for(node, "approval", "SP-0007") as approval:
        # The bureau registers the item it handles in the item catalogue (事项目录).
        item = await approval.register_item(FOOD_BUSINESS_PERMIT_ITEM)
        before = await approval.resolve_materials(SERVICE_ITEM, COMPANY_USCC, CASE_ID)
    assert (item.department, item.version) == ("approval", 1)
    assert before.item_version == 1
    # Without a grant the identity is still paper, and says why.
    identity = next(m for m in before.materials if m.code == "legal-representative-identity")
    assert (identity.satisfied, identity.source, identity.reason) == (
        False,
        "submit",
        "GRANT_REQUIRED",
    )
    assert before.to_submit == 1

    await _grant_identity(node)
    async with client_for(node, "approval", "SP-0007") as approval:
        resolved = await approval.resolve_materials(SERVICE_ITEM, COMPANY_USCC, CASE_ID)
        with pytest.raises(ExchangeError) as unknown_item:
            await approval.resolve_materials("fishing-permit", COMPANY_USCC, CASE_ID)
    assert resolved.to_submit == 0
    by_code = {m.code: m for m in resolved.materials}
    assert by_code["business-licence"].source == "licence"
    assert by_code["business-licence"].reference == number
    assert json.loads(by_code["business-licence"].values_json)["legal_representative"] == "王晓明"
    assert by_code["registration"].source == "shared-data"
    assert by_code["legal-representative-identity"].reference.startswith("police.person v1")
    assert json.loads(by_code["legal-representative-identity"].values_json) == {
        "name": "王晓明",
        "gender": "男",
    }
    assert unknown_item.value.reason == "SERVICE_ITEM_UNKNOWN"
    assert node.db is not None
    fetches = await node.db.pool.fetchval(
        "SELECT count(*) FROM access_log WHERE action = 'licence-fetch' AND caller = 'approval'"
        " AND case_id = $1 AND decision = 'allowed'",
        CASE_ID,
    )
    assert fetches == 2  # each resolution fetched the licence, and each fetch is logged


async def _step_4(node: Node, tmp_path: Path) -> tuple[str, Path]:
    async with client_for(node, "regulator", "JG-0003") as regulator:
        stream = regulator.subscribe(
            "approval.licence_food_business_permit",
            fields=["licence_number", "licence_status", "operator_name"],
            purpose="事中事后监管",
        )
        async with client_for(node, "approval", "SP-0007") as approval:
            permit = await approval.issue_licence(
                "food-business-permit", FOOD_PERMIT_CLAIMS, case_id=CASE_ID, reason="准予许可"
            )
            pdf = await approval.render_licence(permit.number)
        event = await asyncio.wait_for(anext(stream), 15)
        await stream.aclose()  # type: ignore[attr-defined]  # an async generator
    assert event.key == COMPANY_USCC
    assert event.fields["licence_number"] == permit.number
    path = tmp_path / "permit.pdf"
    path.write_bytes(pdf)
    return permit.number, path


async def test_step_4_the_bureau_issues_the_permit_with_qr_and_sealed_pdf(
    node: Node, tmp_path: Path
) -> None:
    number, path = await _step_4(node, tmp_path)
    roots = load_pem_certificates(ca_certificate_pem(node.settings))
    report = await verify_sealed_pdf_async(path.read_bytes(), roots=roots, now=node.clock.now())
    assert [s.department_code for s in report.seals] == ["approval"]
    assert report.covers_whole_document
    assert report.seals[0].signer_name == "县行政审批服务局"
    assert number.startswith("JY-APPROVAL-")


def _qr_from_pdf(path: Path) -> str:
    prefix = path.with_suffix("")
    subprocess.run(
        ["pdftoppm", "-r", "200", "-png", "-singlefile", str(path), str(prefix)],
        check=True,
        capture_output=True,
    )
    with Image.open(prefix.with_suffix(".png")) as image:
        texts = [r.text for r in zxingcpp.read_barcodes(image)]
    assert len(texts) == 1, texts
    return str(texts[0])


async def test_steps_5_and_6_a_bank_verifies_offline_then_sees_the_revocation(
    node: Node, tmp_path: Path
) -> None:
    number, path = await _step_4(node, tmp_path)
    qr = await asyncio.to_thread(_qr_from_pdf, path)
    assert qr.startswith("TB1:")

    # The bank: the exchange root CA, and (while online once) the trust list and the
    # permit's status list in its cache. Then nothing but the cache.
    roots = load_pem_certificates(ca_certificate_pem(node.settings))
    base = f"http://127.0.0.1:{node.http_port}"
    trust = TrustListCache(tmp_path / "bank" / "trust-list.jwt")
    statuses = StatusListCache(tmp_path / "bank" / "status-lists")
    now = node.clock.now()

    async def refresh(uri: str) -> None:
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/trust-list") as response:
                trust_list = trust.store(await response.text(), roots=roots, now=now)
            async with http.get(uri) as response:
                statuses.store(
                    await response.text(),
                    uri=uri,
                    roots=roots,
                    trusted=trust_list.status_list_certificates_for("approval"),
                    now=now,
                )

    async with client_for(node, "approval") as approval:
        status_uri = (await approval.get_licence(number)).status_uri
    await refresh(status_uri)

    def offline() -> tuple[bool, str, str, str]:
        trust_list = trust.load(roots=roots, now=now)

        def lookup(issuer: str, uri: str, index: int) -> int | None:
            trusted = trust_list.status_list_certificates_for(issuer)
            found = statuses.load(uri, roots=roots, trusted=trusted, now=now)
            return None if found is None else found.get(index)

        result = verify_licence(
            qr, roots=roots, trust_list=trust_list, registry=BUILTIN_REGISTRY, now=now,
            status=lookup,
        )  # fmt: skip
        return result.verified, result.status, result.issuer, result.reason

    # Step 5: valid, issued by the bureau, not revoked — offline.
    assert offline() == (True, "valid", "approval", "")

    # Step 6: the regulator revokes after an inspection.
    async with client_for(node, "regulator", "JG-0003") as regulator:
        await regulator.change_licence_status(number, "revoke", "监督检查不符合要求，依法吊销")
    async with client_for(node, "tax") as bank_online:  # any caller: the node's Verify
        online = await bank_online.verify_licence(qr)
    assert (online.verified, online.status, online.reason) == (False, "revoked", "LICENCE_REVOKED")
    async with aiohttp.ClientSession() as http, http.post(base + "/verify", json={"qr": qr}) as r:
        assert (await r.json())["status"] == "revoked"
    # Offline, the cached list still predates the revocation until it is refreshed.
    assert offline()[0] is True
    await refresh(status_uri)
    assert offline() == (False, "revoked", "approval", "LICENCE_REVOKED")
