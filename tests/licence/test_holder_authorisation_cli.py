"""授权用证 from the command line (issue 14, finding 3): an operator makes the holder's
one-time code with ``tongban subject authorise``; a department fetches the licence's
personal claims with it over gRPC once, and is refused on reuse, after expiry, as
another department or for another purpose; the holder's subject view in the console
shows the code, its use and the refusals."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta

import aiohttp
import asyncpg

from tests.cli_helpers import atongban, cli_env
from tests.conftest import client_for
from tests.stories.restaurant import BUSINESS_LICENCE_CLAIMS, COMPANY_USCC
from tongban.client import ExchangeError
from tongban.exchange.audit.log import SubjectHasher
from tongban.exchange.datadir import load_log_key
from tongban.exchange.node import Node
from tongban.exchange.web import LinkStore
from tongban.signing.clock import FixedClock

PURPOSE = "纳税信用评价"
INVALID = "PERMISSION_DENIED AUTHORISATION_INVALID"


def _table(page: str, table_id: str) -> list[str]:
    """The text of each body row of table ``table_id`` on ``page``."""
    found = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', page, re.S)
    assert found is not None, page[-800:]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", found[1], re.S)
    return [html.unescape(re.sub(r"<[^>]+>", " ", row)) for row in rows]


async def test_a_code_made_with_the_cli_opens_the_personal_claims_once(node: Node) -> None:
    async with client_for(node, "samr", "SC-0001") as samr:
        licence = await samr.issue_licence(
            "business-licence", BUSINESS_LICENCE_CLAIMS, case_id="DJ-2026-1", reason="设立登记"
        )
    url = node.settings.database_url
    assert url is not None
    env = cli_env(
        TONGBAN_DATABASE_URL=url.get_secret_value(), TONGBAN_KEY_PASSPHRASE="test passphrase"
    )

    async def authorise(case_id: str) -> dict[str, str]:
        made = await atongban(
            "subject", "authorise", COMPANY_USCC, "--department", "tax", "--purpose", PURPOSE,
            "--case", case_id, "--licence-type", "business-licence", "--hours", "1",
            "--data-dir", str(node.settings.data_dir), "--json", env=env,
        )  # fmt: skip
        assert made.code == 0, made.stdout + made.stderr
        answer: dict[str, str] = made.json()
        assert (answer["department"], answer["purpose"], answer["case_id"]) == (
            "tax",
            PURPOSE,
            case_id,
        )
        return answer

    async def fetch(department: str, purpose: str, case_id: str, code: str) -> str:
        """The legal representative disclosed, or the refusal's status and reason."""
        async with client_for(node, department, "X-1") as client:
            try:
                got = await client.fetch_licence(
                    number=licence.number, purpose=purpose, case_id=case_id,
                    disclose=["legal_representative"], authorisation=code,
                )  # fmt: skip
            except ExchangeError as e:
                return f"{e.code.name} {e.reason}"
            return str(json.loads(got.claims_json)["legal_representative"])

    used = await authorise("NS-9")
    code = used["code"]
    assert await fetch("hrss", PURPOSE, "NS-9", code) == INVALID
    assert await fetch("tax", "随便", "NS-9", code) == INVALID
    assert (
        await fetch("tax", PURPOSE, "NS-9", code) == BUSINESS_LICENCE_CLAIMS["legal_representative"]
    )
    assert await fetch("tax", PURPOSE, "NS-9", code) == INVALID  # spent
    # Without a code the policy's own reason stands.
    assert await fetch("tax", PURPOSE, "NS-9", "") == "PERMISSION_DENIED PERSONAL_GRANT_REQUIRED"

    expired = await authorise("NS-10")
    assert isinstance(node.clock, FixedClock)
    node.clock.advance(timedelta(hours=2))  # past the code's hour
    assert await fetch("tax", PURPOSE, "NS-10", expired["code"]) == INVALID

    # The log: the operator made both codes; tax's fetches, allowed once, denied otherwise.
    assert node.db is not None
    rows: list[asyncpg.Record] = await node.db.pool.fetch(
        "SELECT caller, action, decision, reason, case_id FROM access_log"
        " WHERE subject_hmac = $1 AND action IN ('licence-authorise', 'licence-fetch')"
        " ORDER BY idx",
        SubjectHasher(load_log_key(node.settings))(COMPANY_USCC),
    )
    assert [tuple(r) for r in rows] == [
        ("operator", "licence-authorise", "allowed", f"authorisation:{used['id']} for tax", "NS-9"),
        ("hrss", "licence-fetch", "denied", "AUTHORISATION_INVALID", "NS-9"),
        ("tax", "licence-fetch", "denied", "AUTHORISATION_INVALID", "NS-9"),
        ("tax", "licence-fetch", "allowed", f"authorisation:{used['id']}", "NS-9"),
        ("tax", "licence-fetch", "denied", "AUTHORISATION_INVALID", "NS-9"),
        ("tax", "licence-fetch", "denied", "PERSONAL_GRANT_REQUIRED", "NS-9"),
        (
            "operator",
            "licence-authorise",
            "allowed",
            f"authorisation:{expired['id']} for tax",
            "NS-10",
        ),
        ("tax", "licence-fetch", "denied", "AUTHORISATION_INVALID", "NS-10"),
    ]

    # The holder signs in to the console's subject view and sees the codes and their use.
    token = await LinkStore(node.db.pool).issue("subject", COMPANY_USCC, node.clock.now())
    base = f"http://127.0.0.1:{node.http_port}"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.post(
            base + "/console/link/subject", data={"token": token}, allow_redirects=False
        ) as signed_in:
            assert signed_in.status == 303
            cookie = signed_in.cookies["tongban_session"].value
        async with http.get(
            base + "/console/subject",
            params={"lang": "en"},
            headers={"Cookie": f"tongban_session={cookie}"},
        ) as view:
            assert view.status == 200
            page = await view.text()
    codes = _table(page, "authorisations")
    assert [("NS-10" in r, "Expired" in r) for r in codes] == [(True, True), (False, False)]
    assert "NS-9" in codes[1]
    assert f"Used ({licence.number})" in codes[1]
    accesses = _table(page, "accesses")
    assert any(
        "县税务局" in row and f"authorisation:{used['id']}" in row and "NS-9" in row
        for row in accesses
    ), accesses
    assert sum("AUTHORISATION_INVALID" in row for row in accesses) == 4
