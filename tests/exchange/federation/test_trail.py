"""One trail per case: the county's entries of a case and, for its forwarded query, the
province's entry with its inclusion proof under the province's signed checkpoint,
checked against the province's log key as pinned in the county's registry. A peer shows
only the entries of the asker's own requests, and a refusal is reported as such
(docs/federation.md, "One trail per case")."""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import urlencode

import aiohttp

from tests.cli_helpers import atongban, cli_env
from tests.conftest import client_for
from tests.exchange.federation.conftest import owner_pool, parts
from tests.exchange.federation.test_forwarding import OFFICER, _share
from tests.stories.restaurant import CASE_ID, COMPANY_USCC, PURPOSE
from tongban.exchange.audit.recorder import AccessRecorder
from tongban.exchange.audit.store import AuditStore, SearchFilters
from tongban.exchange.federation.peers import PeerStore
from tongban.exchange.federation.trail import CaseTrails
from tongban.exchange.node import Node
from tongban.exchange.web.sessions import LinkStore


def _trails(node: Node) -> CaseTrails:
    assert node.db is not None
    return CaseTrails(AuditStore(node.db.pool), PeerStore(node.db.pool), parts(node).links)


async def test_the_trail_checks_the_province_entry_of_a_forwarded_query(
    province: Node, county: Node, tmp_path: Path
) -> None:
    await _share(province, county)
    async with client_for(county, "approval", OFFICER) as approval:
        await approval.query(
            "province:samr.enterprise", [COMPANY_USCC], fields=["name"], purpose=PURPOSE,
            case_id=CASE_ID,
        )  # fmt: skip

    unpinned = await _trails(county).follow(CASE_ID)
    assert [(r.peer, r.state, r.reason) for r in unpinned.remote] == [
        ("province", "no-key", "PEER_LOG_KEY_UNSET")
    ]

    assert province.checkpointer is not None
    async with owner_pool(county) as pool:
        await PeerStore(pool).set_log_key("province", province.checkpointer.verifier_key)
    trail = await _trails(county).follow(CASE_ID)
    assert {e.action for e in trail.local} >= {"query.forward", "query.receipt"}
    [remote] = trail.remote
    assert (remote.peer, remote.state) == ("province", "verified"), remote.message
    assert remote.entry is not None
    assert (remote.entry.caller, remote.entry.case_id, remote.entry.action) == (
        "county-a/approval",
        CASE_ID,
        "query",
    )
    assert remote.entry.decision == "allowed"

    # Checked against the pinned key only: under another key, the same answer fails.
    assert county.checkpointer is not None
    async with owner_pool(county) as pool:
        await PeerStore(pool).set_log_key("province", county.checkpointer.verifier_key)
    [wrong_key] = (await _trails(county).follow(CASE_ID)).remote
    assert (wrong_key.state, wrong_key.reason) == ("invalid", "PEER_LOG_PROOF_INVALID")
    async with owner_pool(county) as pool:
        await PeerStore(pool).set_log_key("province", province.checkpointer.verifier_key)

    # The auditor's command, on the county's data dir and database.
    assert county.settings.database_url is not None
    env = cli_env(
        TONGBAN_DATABASE_URL=county.settings.database_url.get_secret_value(),
        TONGBAN_KEY_PASSPHRASE="test passphrase",
    )
    done = await atongban(
        "audit", "trail", CASE_ID, "--data-dir", str(county.settings.data_dir), "--json",
        env=env,
    )  # fmt: skip
    assert done.code == 0, done.stdout + done.stderr
    [shown] = done.json()["remote"]
    assert (shown["state"], shown["entry"]["caller"]) == ("verified", "county-a/approval")


async def test_a_peer_that_refuses_its_entry_is_reported(province: Node, county: Node) -> None:
    await _share(province, county)
    assert province.checkpointer is not None
    assert province.db is not None
    assert county.access_log is not None
    async with owner_pool(county) as pool:
        await PeerStore(pool).set_log_key("province", province.checkpointer.verifier_key)
    # An entry of the province's own: its police querying its samr's dataset.
    async with client_for(province, "police", OFFICER) as police:
        await police.query(
            "samr.enterprise", [COMPANY_USCC], fields=["name"], purpose=PURPOSE, case_id="P-1"
        )
    [own, *_] = (await AuditStore(province.db.pool).search(SearchFilters(caller="police")))[0]
    # A receipt naming that entry, which was not made for a request of the county.
    await county.access_log.append(
        [
            AccessRecorder(county.settings.node_name).entry(
                at=county.clock.now(), department="approval", officer=OFFICER,
                action="query.receipt", dataset="province:samr.enterprise",
                purpose=PURPOSE, case_id="AP-REFUSED", reason=f"peer:province; log:{own.index}",
            )
        ]
    )  # fmt: skip
    trail = await _trails(county).follow("AP-REFUSED")
    assert [(r.peer, r.index, r.state, r.reason) for r in trail.remote] == [
        ("province", own.index, "refused", "PEER_LOG_ENTRY_REFUSED")
    ]


async def _console(node: Node, path: str) -> tuple[int, str]:
    """``path`` of the console as the exchange's auditor sees it (signed in by link)."""
    assert node.db is not None
    token = await LinkStore(node.db.pool).issue(
        "login", "audit", node.clock.now(), officer="JW-0001"
    )
    base = f"http://127.0.0.1:{node.http_port}"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.post(
            base + "/console/link/login", data={"token": token}, allow_redirects=False
        ) as opened:
            assert opened.status == 303, await opened.text()
            cookie = opened.cookies["tongban_session"].value
        async with http.get(base + path, headers={"Cookie": f"tongban_session={cookie}"}) as got:
            return got.status, html.unescape(await got.text())


async def test_the_console_trail_page_checks_the_peer_entry(province: Node, county: Node) -> None:
    await _share(province, county)
    async with client_for(county, "approval", OFFICER) as approval:
        await approval.query(
            "province:samr.enterprise", [COMPANY_USCC], fields=["name"], purpose=PURPOSE,
            case_id=CASE_ID,
        )  # fmt: skip
    page = f"/console/audit/trail?lang=en&{urlencode({'case': CASE_ID})}"
    status, unpinned = await _console(county, page)
    assert status == 200
    assert '<tr data-state="no-key"><td>province</td>' in unpinned
    assert province.checkpointer is not None
    async with owner_pool(county) as pool:
        await PeerStore(pool).set_log_key("province", province.checkpointer.verifier_key)
    status, pinned = await _console(county, page)
    assert status == 200
    assert '<tr data-state="verified"><td>province</td>' in pinned
    assert "county-a/approval" in pinned  # the province's entry names the remote caller
    assert "query.forward" in pinned  # and ours are there too
    # Looking is logged, as every auditor's look is.
    assert county.db is not None
    looked = await county.db.pool.fetch(
        "SELECT purpose FROM access_log WHERE action = 'audit.trail' ORDER BY idx"
    )
    assert [r["purpose"] for r in looked] == [f"trail case={CASE_ID}"] * 2
    # A malformed case id is a clear refusal, not an error page.
    status, refused = await _console(county, "/console/audit/trail?lang=en&case=" + "x" * 65)
    assert status == 400
    assert "'case' is not a case id" in refused
