"""The console's covert-case page (issue 14, finding 4), in a real browser: auditors see
the declaration in force of each covert case, and their look is logged; others are
refused."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from playwright.async_api import BrowserContext

from tests.conftest import client_for
from tests.web.test_console import _base, _login
from tongban.exchange.node import Node
from tongban.signing.clock import FixedClock

LAW = "《刑事诉讼法》第一百五十二条"


async def test_auditors_see_the_covert_cases_and_others_are_refused(
    node: Node, context: BrowserContext, artifacts: Path
) -> None:
    async with client_for(node, "police", "GA-9") as police:
        await police.declare_covert_case("GA-SECRET", node.clock.now() + timedelta(days=30), LAW)
        await police.declare_covert_case("GA-BRIEF", node.clock.now() + timedelta(hours=1), LAW)
    page = await _login(node, context, "audit", "JW-0001")
    await page.click("#nav-covert")
    assert page.url.endswith("/console/audit/covert")
    rows = await page.locator("#covert-cases tbody tr").all_text_contents()
    assert len(rows) == 2
    assert "GA-BRIEF" in rows[0]  # newest first
    assert "GA-SECRET" in rows[1]
    assert "police" in rows[1]
    assert "GA-9" in rows[1]
    assert LAW in rows[1]
    assert "保密中" in rows[1]
    await page.screenshot(path=artifacts / "audit-covert.png", full_page=True)

    # Filtered to another department: none.
    await page.fill("#covert-form input[name=department]", "tax")
    async with page.expect_navigation():  # the search is a form: wait for its page
        await page.click("#search")
    assert await page.locator("#no-cases").count() == 1

    # Once the short embargo ended it is listed only with "include ended", as ended.
    assert isinstance(node.clock, FixedClock)
    node.clock.advance(timedelta(hours=2))  # within the console session's lifetime
    await page.goto(_base(node) + "/console/audit/covert?lang=en")
    assert await page.text_content("h1") == "Covert cases"
    rows = await page.locator("#covert-cases tbody tr").all_text_contents()
    assert [("GA-SECRET" in r, "In force" in r) for r in rows] == [(True, True)]
    await page.check("#covert-form input[name=all]")
    async with page.expect_navigation():  # the search is a form: wait for its page
        await page.click("#search")
    rows = await page.locator("#covert-cases tbody tr").all_text_contents()
    assert [("GA-BRIEF" in r, "Ended" in r) for r in rows] == [(True, True), (False, False)]

    # Bad parameters: a message with a reason code, nothing logged.
    for query, reason in (
        ("page=%25%25%25", "PAGE_TOKEN_INVALID"),
        ("page=bm90LWEtdG9rZW4tYXQtYWxsLW5vdC1hdC1hbGw", "PAGE_TOKEN_INVALID"),
        ("department=" + "x" * 64, "INVALID_ARGUMENT"),
        ("department=%00", "INVALID_ARGUMENT"),
    ):
        response = await page.goto(f"{_base(node)}/console/audit/covert?{query}")
        assert response is not None
        assert response.status == 400, query
        assert reason in await page.content()
        assert "Traceback" not in await page.content()

    # Each look is in the log.
    assert node.db is not None
    looks = await node.db.pool.fetch(
        "SELECT officer, purpose FROM access_log WHERE action = 'audit.covert' ORDER BY idx"
    )
    assert [tuple(r) for r in looks] == [
        ("JW-0001", "covert cases"),
        ("JW-0001", "covert cases department=tax"),
        ("JW-0001", "covert cases"),
        ("JW-0001", "covert cases include_ended"),
    ]

    # A department without the auditor role is refused.
    other = await _login(node, context, "tax", "SW-0042")
    response = await other.goto(_base(node) + "/console/audit/covert")
    assert response is not None
    assert response.status == 403
    assert "AUDITOR_ROLE_REQUIRED" in await other.content()
