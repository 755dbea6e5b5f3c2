"""A data subject's view names accesses made through peers (docs/federation.md, "The
subject view through peers"): at the owner's exchange, a query by a peer's department
shows as that department of that peer exchange; at the caller's exchange, its own
department's forwarded query names the peer's dataset."""

from __future__ import annotations

import html

import aiohttp

from tests.conftest import client_for
from tests.exchange.federation.test_forwarding import OFFICER, _share
from tests.stories.restaurant import CASE_ID, COMPANY_USCC, PURPOSE
from tongban.exchange.node import Node
from tongban.exchange.web.sessions import LinkStore


async def _subject_page(node: Node, subject: str) -> str:
    """The subject view as the subject sees it, signed in with a one-time link."""
    assert node.db is not None
    token = await LinkStore(node.db.pool).issue("subject", subject, node.clock.now())
    base = f"http://127.0.0.1:{node.http_port}"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.post(
            base + "/console/link/subject", data={"token": token}, allow_redirects=False
        ) as opened:
            assert opened.status == 303, await opened.text()
            cookie = opened.cookies["tongban_session"].value
        async with http.get(
            base + "/console/subject?lang=en", headers={"Cookie": f"tongban_session={cookie}"}
        ) as page:
            assert page.status == 200
            return html.unescape(await page.text())


async def test_the_subject_view_names_the_peer_exchange(province: Node, county: Node) -> None:
    await _share(province, county)
    async with client_for(county, "approval", OFFICER) as approval:
        await approval.query(
            "province:samr.enterprise", [COMPANY_USCC], fields=["name"], purpose=PURPOSE,
            case_id=CASE_ID,
        )  # fmt: skip
    at_owner = await _subject_page(province, COMPANY_USCC)
    assert "approval (a department of peer exchange county-a, asking through its node)" in (
        at_owner
    )
    assert CASE_ID in at_owner
    at_caller = await _subject_page(county, COMPANY_USCC)
    assert "province:samr.enterprise" in at_caller
