"""The web console in a real browser (Debian's chromium via Playwright) against a node
started by the test: verifying licences from uploaded PDFs, the audit pages behind a
login, the subject view with a covert case embargoed, and bad input of every kind."""

from __future__ import annotations

import asyncio
import io
import zlib
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from PIL import Image
from playwright.async_api import BrowserContext, FilePayload, Page

from tests.cli_helpers import cli_env, tongban
from tests.conftest import client_for
from tests.stories.restaurant import FOOD_PERMIT_CLAIMS, OWNER_ID
from tests.stories.test_audit import _accesses_to_owner
from tongban.exchange.node import Node
from tongban.exchange.web import LinkStore
from tongban.licence.base45 import b45decode, b45encode
from tongban.licence.qr import qr_png
from tongban.v1 import items_pb2


def _base(node: Node) -> str:
    return f"http://127.0.0.1:{node.http_port}"


def _pdf_of(png: bytes) -> bytes:
    out = io.BytesIO()
    with Image.open(io.BytesIO(png)) as image:
        image.convert("RGB").save(out, format="PDF", resolution=100)
    return out.getvalue()


def _forged(qr: str) -> str:
    """The QR text with one bit of its COSE signature flipped."""
    raw = bytearray(zlib.decompress(b45decode(qr[4:])))
    raw[-1] ^= 0x01
    return "TB1:" + b45encode(zlib.compress(bytes(raw), 9))


async def _login(node: Node, context: BrowserContext, code: str, officer: str) -> Page:
    assert node.db is not None
    token = await LinkStore(node.db.pool).issue("login", code, node.clock.now(), officer=officer)
    page = await context.new_page()
    await page.goto(f"{_base(node)}/console/link/login?token={token}")
    await page.click("#continue")
    return page


async def _upload(page: Page, node: Node, name: str, mime: str, data: bytes) -> None:
    await page.goto(_base(node) + "/console/verify")
    await page.set_input_files("#file", files=[FilePayload(name=name, mimeType=mime, buffer=data)])
    await page.click("#verify")
    await page.wait_for_load_state()


async def test_verify_valid_revoked_and_forged_licence_pdfs(
    node: Node, page: Page, artifacts: Path
) -> None:
    async with client_for(node, "approval", "SP-0007") as approval:
        permit = await approval.issue_licence("food-business-permit", FOOD_PERMIT_CLAIMS)
        pdf = await approval.render_licence(permit.number)

    await _upload(page, node, "permit.pdf", "application/pdf", pdf)
    assert await page.get_attribute("#outcome", "data-outcome") == "valid"
    assert await page.text_content("#outcome") == "有效"
    assert "县行政审批服务局" in (await page.text_content("#issuer") or "")
    assert permit.number in await page.content()
    await page.screenshot(path=artifacts / "verify-valid.png", full_page=True)

    async with client_for(node, "regulator", "JG-0003") as regulator:
        await regulator.change_licence_status(permit.number, "revoke", "监督检查不符合要求")
    await _upload(page, node, "permit.pdf", "application/pdf", pdf)
    assert await page.get_attribute("#outcome", "data-outcome") == "revoked"
    assert "status" in (await page.text_content("#check") or "")
    await page.screenshot(path=artifacts / "verify-revoked.png", full_page=True)

    forged = _pdf_of(qr_png(_forged(permit.qr), scale=6))
    await _upload(page, node, "forged.pdf", "application/pdf", forged)
    assert await page.get_attribute("#outcome", "data-outcome") == "forged"
    assert "signature" in (await page.text_content("#check") or "")
    await page.screenshot(path=artifacts / "verify-forged.png", full_page=True)

    # English on request; the pasted QR text path works too.
    await page.goto(_base(node) + "/console/verify?lang=en")
    await page.fill("#qr", permit.qr)
    await page.keyboard.press("Tab")  # keyboard reachable: the file field, then the button
    await page.click("#verify")
    assert await page.text_content("#outcome") == "Revoked"


async def test_bad_uploads_get_a_message_and_the_node_keeps_serving(
    node: Node, page: Page, artifacts: Path
) -> None:
    await _upload(page, node, "notes.txt", "text/plain", b"hello, not a licence")
    assert "not a licence PDF" in (await page.text_content("#message") or "")
    await page.screenshot(path=artifacts / "verify-not-a-pdf.png", full_page=True)

    blank = io.BytesIO()
    Image.new("RGB", (300, 300), "white").save(blank, format="PNG")
    await _upload(page, node, "blank.png", "image/png", blank.getvalue())
    assert "No QR code" in (await page.text_content("#message") or "")

    await _upload(page, node, "broken.pdf", "application/pdf", b"%PDF-1.7\n garbage \x00\xff")
    assert "could not be opened" in (await page.text_content("#message") or "")

    big = b"%PDF-1.7\n" + b"0" * (50 * 1024 * 1024)
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(big), filename="big.pdf", content_type="application/pdf")
    async with aiohttp.ClientSession() as http:
        async with http.post(_base(node) + "/console/verify", data=form) as response:
            assert response.status == 413
            body = await response.text()
        assert "10 MB" in body
        assert "Traceback" not in body
        async with http.get(_base(node) + "/healthz") as response:
            assert response.status == 200
    await page.goto(_base(node) + "/console/verify")
    assert await page.title()


async def test_audit_pages_refuse_without_login(node: Node, page: Page, artifacts: Path) -> None:
    for path in ("/console/audit", "/console/audit/entry/0", "/console/audit/export.csv"):
        response = await page.goto(_base(node) + path)
        assert response is not None
        assert response.status == 401
        assert "需要登录" in (await page.text_content("#message") or "")
    await page.screenshot(path=artifacts / "audit-refused.png", full_page=True)
    response = await page.goto(_base(node) + "/console/subject")
    assert response is not None
    assert response.status == 401


async def test_auditor_searches_the_log_opens_a_proof_and_verifies_it(
    node: Node, context: BrowserContext, artifacts: Path
) -> None:
    await _accesses_to_owner(node)
    page = await _login(node, context, "audit", "JW-0001")
    assert page.url.endswith("/console/audit")
    await page.fill("#f-subject", OWNER_ID)
    async with page.expect_navigation():  # the search is a form: wait for its page
        await page.click("#search")
    rows = await page.locator("#entries tbody tr").all_text_contents()
    assert any("SW-9" in r and "拒绝" in r for r in rows)
    assert any("GA-1" in r for r in rows)
    await page.screenshot(path=artifacts / "audit-search.png", full_page=True)

    await page.locator("#entries tbody tr a").first.click()
    assert "已核验" in (await page.text_content("#proved") or "")
    assert "— " in (await page.text_content("#checkpoint") or "")  # a signed note
    await page.screenshot(path=artifacts / "audit-entry.png", full_page=True)

    # The auditor's looks are in the log themselves.
    assert node.db is not None
    looks = await node.db.pool.fetch(
        "SELECT action, officer FROM access_log WHERE caller = 'audit' ORDER BY idx"
    )
    assert {(r["action"], r["officer"]) for r in looks} >= {
        ("audit.search", "JW-0001"),
        ("audit.entry", "JW-0001"),
    }

    # Export of the current search.
    base = _base(node)
    csv_response = await page.request.get(f"{base}/console/audit/export.csv?subject={OWNER_ID}")
    assert csv_response.status == 200
    csv_text = (await csv_response.body()).decode("utf-8-sig")
    assert csv_text.splitlines()[0].startswith("index,at,node,caller")
    assert "SW-9" in csv_text
    jsonl = await page.request.get(f"{base}/console/audit/export.jsonl?case=GA-1")
    assert '"case_id": "GA-1"' in await jsonl.text()

    # Malformed parameters: a message on the page.
    response = await page.goto(f"{base}/console/audit?from=yesterday&decision=maybe")
    assert response is not None
    assert response.status == 400
    assert "decision" in (await page.text_content("#message") or "")
    response = await page.goto(f"{base}/console/audit?from=not-a-date")
    assert response is not None
    assert response.status == 400
    response = await page.goto(f"{base}/console/audit?caller=tax&page=%%%")
    assert response is not None
    assert response.status == 400
    response = await page.goto(f"{base}/console/audit/entry/99999")
    assert response is not None
    assert response.status == 400

    # Verify the log, with progress.
    await page.goto(f"{base}/console/audit/verify")
    await page.click("#start-verify")
    await page.wait_for_selector("#verify-text[data-state='ok']", timeout=30_000)
    assert "日志完整" in (await page.text_content("#verify-text") or "")
    await page.screenshot(path=artifacts / "audit-verify.png", full_page=True)

    await page.goto(f"{base}/console/audit/anomalies")
    await page.screenshot(path=artifacts / "audit-anomalies.png", full_page=True)
    await page.goto(f"{base}/console/audit/volume")
    assert await page.locator("#volume-chart polyline").count() >= 3
    await page.screenshot(path=artifacts / "audit-volume.png", full_page=True)
    await page.set_viewport_size({"width": 390, "height": 844})  # a phone
    await page.goto(f"{base}/console/audit?subject={OWNER_ID}&lang=en")
    await page.screenshot(path=artifacts / "audit-search-phone-en.png", full_page=True)
    await page.close()


async def test_non_auditor_sees_the_catalogue_not_the_log(
    node: Node, context: BrowserContext, artifacts: Path
) -> None:
    await _accesses_to_owner(node)  # publishes the story's datasets
    page = await _login(node, context, "tax", "SW-0042")
    assert page.url.endswith("/console/catalogue")
    codes = await page.locator("#datasets h2 code").all_text_contents()
    assert {"samr.enterprise", "police.person"} <= set(codes)
    # Which personal fields are shared by law, and which only under a grant.
    enterprise = page.locator("#datasets li", has_text="samr.enterprise")
    marks = await enterprise.locator("small.personal").all_text_contents()
    assert marks == [
        "(个人信息: 依法共享 《企业信息公示暂行条例》第六条)",
        "(个人信息: 仅凭授权共享)",
    ]
    await page.screenshot(path=artifacts / "catalogue.png", full_page=True)
    response = await page.goto(_base(node) + "/console/audit")
    assert response is not None
    assert response.status == 403
    await page.close()


async def test_subject_view_shows_the_story_and_hides_the_embargoed_case(
    node: Node, page: Page, artifacts: Path
) -> None:
    await _accesses_to_owner(node)
    async with client_for(node, "police", "GA-9") as police:
        await police.declare_covert_case(
            "GA-SECRET", node.clock.now() + timedelta(days=30), "《刑事诉讼法》第一百五十二条"
        )
    # 进度查询: a case of the subject's, opened by the approval bureau.
    async with client_for(node, "approval", "SP-1") as approval:
        await approval.register_item(
            items_pb2.ItemSpec(
                code="hukou-move", name="户口迁移", legal_basis="《户口登记条例》第十条",
                purpose="户口迁移审批", legal_limit_days=20, promised_limit_days=5,
                materials=[
                    items_pb2.Material(
                        code="application", name="申请书", required=True,
                        submitted=items_pb2.SubmittedSource(),
                    )
                ],
            )
        )  # fmt: skip
        opened = await approval.open_case("hukou-move", OWNER_ID, reason="材料齐全")
    settings = node.settings
    env = cli_env(
        TONGBAN_DATABASE_URL=settings.database_url.get_secret_value()
        if settings.database_url
        else "",
        TONGBAN_KEY_PASSPHRASE="test passphrase",
    )
    made = await asyncio.to_thread(
        tongban, "subject", "link", OWNER_ID, "--data-dir", str(settings.data_dir), "--json",
        env=env,
    )  # fmt: skip
    assert made.code == 0, made.stderr
    url = urlsplit(made.json()["url"])
    link = f"{_base(node)}{url.path}?{url.query}"

    await page.goto(link)
    await page.click("#continue")
    assert page.url.endswith("/console/subject")
    rows = await page.locator("#accesses tbody tr").all_text_contents()
    text = " ".join(rows)
    assert "县税务局" in text
    assert "SW-9" in text
    assert "GA-1" in text
    assert "GA-SECRET" not in text
    cases = " ".join(await page.locator("#cases tbody tr").all_text_contents())
    assert opened.number in cases
    assert "受理 (accepted)" in cases
    assert "1" in (await page.text_content("#withheld") or "")
    await page.screenshot(path=artifacts / "subject.png", full_page=True)
    assert node.db is not None
    assert (
        await node.db.pool.fetchval("SELECT count(*) FROM access_log WHERE action = 'subject.view'")
        == 1
    )
    # 授权用证: the holder makes a one-time code for one department, purpose and case.
    await page.select_option("#authorise-form select[name=department]", "tax")
    await page.fill("#authorise-form input[name=purpose]", "个人所得税汇算")
    await page.fill("#authorise-form input[name=case_id]", "GS-2026-7")
    await page.click("#make-code")
    code = await page.text_content("#made-code") or ""
    assert len(code) == 14
    assert code.count("-") == 2
    listed = " ".join(await page.locator("#authorisations tbody tr").all_text_contents())
    assert "GS-2026-7" in listed
    assert "未使用" in listed
    authorised = await node.db.pool.fetchrow(
        "SELECT caller, purpose, case_id FROM access_log WHERE action = 'licence-authorise'"
    )
    assert authorised is not None
    assert tuple(authorised) == ("subject", "个人所得税汇算", "GS-2026-7")
    await page.screenshot(path=artifacts / "subject-authorise.png", full_page=True)

    # The link works once; a forged one is refused with a message.
    await page.context.clear_cookies()
    await page.goto(link)
    await page.click("#continue")
    assert "already used" in (await page.text_content("#message") or "")
    await page.goto(_base(node) + "/console/link/subject?token=forged-token-0123456789")
    await page.click("#continue")
    assert "not valid" in (await page.text_content("#message") or "")
    await page.screenshot(path=artifacts / "subject-forged-link.png", full_page=True)
    await page.context.add_cookies(
        [{"name": "tongban_session", "value": "e30.AAAA", "url": _base(node) + "/console"}]
    )
    response = await page.goto(_base(node) + "/console/subject")
    assert response is not None
    assert response.status == 401
