"""The console's sessions, forms and uploads under attack (issue 14, findings 7 and 8),
each tried as an outside client would against a node started by the test: a cookie used
again after signing out, on this node and another; a sign-in form posted from another
site (over HTTP and by a real browser); the Secure flag behind a proxy that ends TLS; a
PDF whose page is 70 m wide; and uploads beyond the render queue."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import BrowserContext

from tongban.exchange.node import Node
from tongban.exchange.settings import Settings, load_settings
from tongban.exchange.web import LinkStore
from tongban.licence.uploads import RenderBusy, RenderSlots, UploadUnreadable, page_pixels
from tongban.signing.clock import FixedClock, SystemClock

_REASON = re.compile(r'<p class="muted"><code>([A-Z0-9_]+)</code></p>')
_MESSAGE = re.compile(r'id="message">([^<]+)</p>')
_EVIL = "http://evil.example"


def _base(node: Node) -> str:
    return f"http://127.0.0.1:{node.http_port}"


def _reason(body: str) -> str:
    found = _REASON.search(body)
    assert found is not None, body[-600:]
    return found[1]


def _message(body: str) -> str:
    found = _MESSAGE.search(body)
    assert found is not None, body[-600:]
    return found[1]


def _pdf(width: float, height: float, *, rotate: int = 0, crop: str = "", title: str = "") -> bytes:
    """A one-page PDF with an empty page of ``width`` x ``height`` points."""
    info = f"<< /Title ({title}) >>" if title else "<< >>"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {width} {height}] /Rotate {rotate}"
        f"{crop} /Resources << >> /Contents 4 0 R >>",
        "<< /Length 0 >>\nstream\n\nendstream",
        info,
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info 5 0 R >>\n"
        f"startxref\n{xref}\n%%EOF\n"
    ).encode()
    return out


def _upload_form(data: bytes) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", data, filename="licence.pdf", content_type="application/pdf")
    return form


@contextlib.asynccontextmanager
async def _client() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that keeps no cookies: each request says which cookie it sends."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        yield http


async def _link(node: Node, kind: str = "login", principal: str = "audit") -> str:
    assert node.db is not None
    officer = "JW-0001" if kind == "login" else None
    return await LinkStore(node.db.pool).issue(
        "login" if kind == "login" else "subject", principal, node.clock.now(), officer=officer
    )


async def _sign_in(
    http: aiohttp.ClientSession, node: Node, token: str, **headers: str
) -> aiohttp.ClientResponse:
    async with http.post(
        _base(node) + "/console/link/login",
        data={"token": token},
        headers=headers,
        allow_redirects=False,
    ) as response:
        await response.read()
        return response


@contextlib.asynccontextmanager
async def _node_with(settings: Settings, **changes: str) -> AsyncIterator[Node]:
    """Another node of the same exchange (same data dir and database), with ``changes``."""
    fields = ("data_dir", "database_url", "key_passphrase", "shutdown_grace_seconds")
    changed = load_settings(
        **{name: getattr(settings, name) for name in fields},
        grpc_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        **changes,
    )
    async with Node(changed, clock=FixedClock(SystemClock().now())) as running:
        yield running


# ---- finding 7: sessions -------------------------------------------------------------


async def test_signing_out_revokes_the_cookie_on_every_node(node: Node, settings: Settings) -> None:
    async with _node_with(settings, node_name="node-2") as other, _client() as http:
        token = await _link(node)
        signed_in = await _sign_in(http, node, token)
        assert signed_in.status == 303, signed_in
        cookie = signed_in.cookies["tongban_session"]
        assert cookie["httponly"]
        assert cookie["samesite"] == "Strict"
        assert not cookie["secure"]  # plain HTTP, no https public URL
        session = {"Cookie": f"tongban_session={cookie.value}"}

        # Only the token's SHA-256 is stored; the session works on both nodes.
        assert node.db is not None
        rows = await node.db.pool.fetch("SELECT token_hash, principal FROM web_session")
        assert [(r["token_hash"], r["principal"]) for r in rows] == [
            (hashlib.sha256(cookie.value.encode()).digest(), "audit")
        ]
        for where in (node, other):
            async with http.get(_base(where) + "/console/audit", headers=session) as page:
                assert page.status == 200, await page.text()

        # Sign out on the first node: the same cookie, sent again, opens nothing anywhere.
        async with http.post(
            _base(node) + "/console/logout", headers=session, allow_redirects=False
        ) as out:
            assert out.status == 303
            assert out.cookies["tongban_session"].value == ""
        for where in (node, other):
            async with http.get(_base(where) + "/console/audit", headers=session) as page:
                body = await page.text()
                assert page.status == 401, body
                assert _reason(body) == "LOGIN_REQUIRED"
        revoked = await node.db.pool.fetchval("SELECT revoked_at FROM web_session")
        assert revoked is not None


async def test_cookie_is_secure_when_the_public_url_is_https(settings: Settings) -> None:
    # The node speaks plain HTTP, as behind a proxy that ends TLS.
    async with (
        _node_with(settings, public_url="https://tongban.example") as proxied,
        _client() as http,
    ):
        # The browser's Origin is the public URL's, though the request reached
        # 127.0.0.1: accepted.
        signed_in = await _sign_in(
            http, proxied, await _link(proxied), Origin="https://tongban.example"
        )
        assert signed_in.status == 303
        assert signed_in.cookies["tongban_session"]["secure"]
        assert "Secure" in signed_in.headers["Set-Cookie"]
        async with http.get(_base(proxied) + "/console/?lang=en") as page:
            assert page.cookies["tongban_lang"]["secure"]


# ---- finding 7: forms from another site ----------------------------------------------


async def test_sign_in_form_from_another_site_is_refused(node: Node) -> None:
    assert node.db is not None
    async with _client() as http:
        token = await _link(node)
        for headers in (
            {"Origin": _EVIL},
            {"Origin": "null"},
            {"Origin": _EVIL, "Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "cross-site"},  # a browser that sent no Origin
            {"Sec-Fetch-Site": "same-site"},  # a sibling host of the same site
        ):
            refused = await _sign_in(http, node, token, **headers)
            assert refused.status == 403, headers
            assert "Set-Cookie" not in refused.headers, headers
            body = await refused.text()
            assert _reason(body) == "CROSS_SITE_REQUEST", headers
            assert "another site" in _message(body)
        # Nothing was written: the link is unspent and no session exists.
        assert await node.db.pool.fetchval("SELECT count(*) FROM web_session") == 0
        assert await node.db.pool.fetchval("SELECT count(*) FROM web_link WHERE used_at IS NULL")

        # The other state-changing forms are refused the same way.
        for path in ("/console/logout", "/console/audit/verify", "/console/verify"):
            async with http.post(_base(node) + path, headers={"Origin": _EVIL}) as response:
                assert response.status == 403, path
                assert _reason(await response.text()) == "CROSS_SITE_REQUEST", path

        # From the console's own page it works: its Origin, or a browser's same-origin
        # (which also covers "Origin: null" from a page under no-referrer).
        for own in (
            {"Origin": _base(node)},
            {"Origin": "null", "Sec-Fetch-Site": "same-origin"},
        ):
            signed_in = await _sign_in(http, node, token, **own)
            assert signed_in.status == 303, own
            assert "tongban_session" in signed_in.cookies
            token = await _link(node)
        # So does a client that sends neither header (curl), here with a new link.
        assert (await _sign_in(http, node, await _link(node))).status == 303


async def test_browser_on_another_site_cannot_sign_the_victim_in(
    node: Node, context: BrowserContext
) -> None:
    """Login CSRF as a browser does it: a page elsewhere auto-submits the attacker's own
    sign-in link to the console."""
    token = await _link(node)
    attack = (
        f'<form id="f" method="post" action="{_base(node)}/console/link/login">'
        f'<input type="hidden" name="token" value="{token}"></form>'
        "<script>document.getElementById('f').submit()</script>"
    )

    async def evil(request: web.Request) -> web.Response:
        return web.Response(text=attack, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", evil)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        page = await context.new_page()
        async with page.expect_navigation(url=f"{_base(node)}/console/link/login"):
            await page.goto(f"http://127.0.0.1:{port}/")
        assert "CROSS_SITE_REQUEST" in await page.content()
        assert "another site" in (await page.text_content("#message") or "")
        assert not [c for c in await context.cookies() if c["name"] == "tongban_session"]
    finally:
        await runner.cleanup()


# ---- finding 8: PDF uploads ----------------------------------------------------------


def _recording_pdftoppm(where: Path) -> Path:
    """A ``pdftoppm`` first in PATH that writes its arguments to ``calls`` and runs the
    real one: it shows whether, and how, the node rendered."""
    where.mkdir()
    script = where / "pdftoppm"
    script.write_text(f'#!/bin/sh\necho "$@" >> {where / "calls"}\nexec /usr/bin/pdftoppm "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return where / "calls"


async def test_huge_pdf_page_is_refused_before_it_is_rendered(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _recording_pdftoppm(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{calls.parent}:/usr/bin:/bin")
    async with _client() as http:
        huge = _pdf(200000, 200000)  # 70 m square: 3 * 10^11 pixels at 200 dpi
        async with http.post(_base(node) + "/console/verify", data=_upload_form(huge)) as answer:
            body = await answer.text()
        assert answer.status == 400, body
        assert _reason(body) == "UPLOAD_UNREADABLE"
        assert "too large" in _message(body)
        assert "70556 x 70556 mm" in _message(body)
        assert not calls.exists()  # pdftoppm never ran

        # An A4 page is rendered, told the exact area it may fill.
        a4 = _pdf(595, 842)
        async with http.post(_base(node) + "/console/verify", data=_upload_form(a4)) as answer:
            body = await answer.text()
        assert "No QR code" in body, body[-600:]
        assert "-W 1653 -H 2339" in calls.read_text()


def _pdfinfo(data: bytes, tmp_path: Path) -> bytes:
    source = tmp_path / "page.pdf"
    source.write_bytes(data)
    return subprocess.run(
        ["pdfinfo", "-f", "1", "-l", "1", str(source)], capture_output=True, check=True
    ).stdout


def test_page_size_is_read_from_the_crop_box_and_rotation(tmp_path: Path) -> None:
    assert page_pixels(_pdfinfo(_pdf(595, 842), tmp_path)) == (1653, 2339)
    assert page_pixels(_pdfinfo(_pdf(595, 842, rotate=90), tmp_path)) == (2339, 1653)
    # A huge MediaBox cropped to A4 renders as A4 (pdftoppm is given -cropbox).
    cropped = _pdf(200000, 200000, crop=" /CropBox [0 0 595 842]")
    assert page_pixels(_pdfinfo(cropped, tmp_path)) == (1653, 2339)
    # A title imitating pdfinfo's page line does not change the measure.
    spoof = _pdf(200000, 200000, title="x\nPage    1 size: 10 x 10 pts")
    with pytest.raises(UploadUnreadable, match="too large"):
        page_pixels(_pdfinfo(spoof, tmp_path))
    # A sliver: few pixels in all, but one side over 20,000.
    with pytest.raises(UploadUnreadable, match="too large"):
        page_pixels(_pdfinfo(_pdf(14400, 3), tmp_path))


async def test_uploads_beyond_the_render_queue_get_503(node: Node) -> None:
    assert node.console is not None
    renders = node.console.renders
    a4 = _pdf(595, 842)
    async with contextlib.AsyncExitStack() as held, _client() as http:
        # Both render slots taken, and every place in the queue.
        for _ in range(2):
            await held.enter_async_context(renders.slot())
        queued = asyncio.Event()

        async def wait_in_queue() -> None:
            with contextlib.suppress(RenderBusy):  # if this machine is slower than the wait
                async with renders.slot():
                    await queued.wait()

        waiting = [asyncio.create_task(wait_in_queue()) for _ in range(6)]
        await asyncio.sleep(0)  # each task takes its place in the queue
        with pytest.raises(RenderBusy):
            async with renders.slot():
                pass

        async with http.post(_base(node) + "/console/verify", data=_upload_form(a4)) as answer:
            body = await answer.text()
            assert answer.status == 503, body
            assert answer.headers["Retry-After"] == "10"
        assert _reason(body) == "RENDER_BUSY"
        assert "again in a few seconds" in _message(body)
        queued.set()
        await held.aclose()
        await asyncio.gather(*waiting)

        # Once the queue drains, the same upload is rendered.
        async with http.post(_base(node) + "/console/verify", data=_upload_form(a4)) as answer:
            assert "No QR code" in await answer.text()


async def test_render_slots_refuse_after_the_wait() -> None:
    slots = RenderSlots(running=1, waiting=1, wait=0.01)
    async with slots.slot():
        with pytest.raises(RenderBusy):
            async with slots.slot():
                pass
    async with slots.slot():  # freed again
        pass
