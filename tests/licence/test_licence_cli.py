"""``tongban licence ...`` and ``tongban seal ...`` as departments and verifiers run them,
against a live node."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.cli_helpers import atongban, cli_env
from tests.conftest import client_for, enrol_demo
from tests.stories.restaurant import BUSINESS_LICENCE_CLAIMS, COMPANY_USCC
from tongban.client import Bundle
from tongban.exchange.enrolment import bundle_dir
from tongban.exchange.node import Node
from tongban.exchange.settings import Settings
from tongban.licence import issue_sd_jwt
from tongban.signing import LocalSigner, load_pem_certificates
from tongban.signing.clock import FixedClock, SystemClock


def _claims_file(tmp_path: Path) -> Path:
    path = tmp_path / "claims.json"
    claims = {k: (v if isinstance(v, str) else str(v)) for k, v in BUSINESS_LICENCE_CLAIMS.items()}
    path.write_text(json.dumps(claims, ensure_ascii=False), encoding="utf-8")
    return path


async def test_issue_get_revoke_and_verify_from_the_command_line(
    node: Node, tmp_path: Path
) -> None:
    endpoint = f"127.0.0.1:{node.grpc_port}"
    url = f"http://127.0.0.1:{node.http_port}"
    cache = tmp_path / "verifier"
    ca = node.settings.data_dir / "ca" / "ca.crt"

    def dept(code: str) -> list[str]:
        return ["--as", str(bundle_dir(node.settings, code)), "--endpoint", endpoint]

    types = await atongban("licence", "types", "--json")
    assert [t["code"] for t in types.json()["types"]] == [
        "business-licence",
        "food-business-permit",
    ]
    issued = await atongban(
        "licence", "issue", "business-licence", "--claims", str(_claims_file(tmp_path)),
        "--case", "DJ-1", *dept("samr"), "--json",
    )  # fmt: skip
    assert issued.code == 0, issued.stdout + issued.stderr
    number = issued.json()["licence"]["number"]

    for fmt in ("sd-jwt", "qr", "qr-png", "pdf"):
        out = tmp_path / f"licence.{fmt}"
        got = await atongban(
            "licence", "get", number, "--format", fmt, "--out", str(out), *dept("samr"), "--json"
        )
        assert got.code == 0, got.stdout + got.stderr
        assert out.stat().st_size > 0
    assert (tmp_path / "licence.qr").read_text().startswith("TB1:")
    assert (tmp_path / "licence.pdf").read_bytes().startswith(b"%PDF")
    assert (tmp_path / "licence.qr-png").read_bytes().startswith(b"\x89PNG")

    listed = await atongban("licence", "list", "--holder", COMPANY_USCC, *dept("tax"), "--json")
    assert [item["number"] for item in listed.json()["licences"]] == [number]

    # A verifier with only the root CA and the node's address.
    qr = (tmp_path / "licence.qr").read_text().strip()
    offline_first = await atongban(
        "licence", "verify", "--qr", qr, "--offline", "--ca", str(ca), "--cache-dir", str(cache),
        "--json",
    )  # fmt: skip
    assert offline_first.code == 1
    assert offline_first.json()["reason"] == "TRUST_LIST_UNAVAILABLE"
    refreshed = await atongban(
        "licence", "trust-list", "--refresh", "--url", url, "--ca", str(ca),
        "--cache-dir", str(cache), "--json",
    )  # fmt: skip
    assert refreshed.code == 0, refreshed.stdout + refreshed.stderr
    assert set(refreshed.json()["departments"]) == {"samr", "approval"}
    online = await atongban(
        "licence", "verify", str(tmp_path / "licence.sd-jwt"), "--cache-dir", str(cache), "--json"
    )
    assert online.code == 0, online.stdout + online.stderr
    assert online.json()["status"] == "valid"
    offline = await atongban(
        "licence", "verify", "--qr", qr, "--offline", "--cache-dir", str(cache), "--json"
    )
    assert (offline.code, offline.json()["status"]) == (0, "valid")
    from_png = await atongban(
        "licence", "verify", str(tmp_path / "licence.qr-png"), "--offline",
        "--cache-dir", str(cache), "--json",
    )  # fmt: skip
    assert from_png.json()["licence_number"] == number
    # The PDF itself: its QR code is read from the rendered page.
    from_pdf = await atongban(
        "licence", "verify", str(tmp_path / "licence.pdf"), "--offline",
        "--cache-dir", str(cache), "--json",
    )  # fmt: skip
    assert (from_pdf.code, from_pdf.json()["licence_number"]) == (0, number)
    not_a_licence = tmp_path / "notes.txt"
    not_a_licence.write_text("hello", encoding="utf-8")
    unreadable = await atongban("licence", "verify", str(not_a_licence), "--json")
    assert (unreadable.code, unreadable.json()["reason"]) == (1, "UPLOAD_UNREADABLE")

    revoked = await atongban(
        "licence", "revoke", number, "--reason", "吊销", *dept("samr"), "--json"
    )
    assert revoked.json()["licence"]["status"] == "revoked"
    stale = await atongban(
        "licence", "verify", "--qr", qr, "--offline", "--cache-dir", str(cache), "--json"
    )
    assert stale.code == 0  # the cached status list predates the revocation
    now_revoked = await atongban("licence", "verify", "--qr", qr, "--cache-dir", str(cache))
    assert now_revoked.code == 1
    assert "LICENCE_REVOKED" in now_revoked.stdout
    offline_after = await atongban(
        "licence", "verify", "--qr", qr, "--offline", "--cache-dir", str(cache), "--json"
    )
    assert offline_after.json()["reason"] == "LICENCE_REVOKED"

    wrong = await atongban("licence", "verify", "--qr", "XX:1", "--cache-dir", str(cache), "--json")
    assert (wrong.code, wrong.json()["check"]) == (1, "format")
    missing = await atongban("licence", "get", "YYZZ-SAMR-2026-000001X", *dept("samr"), "--json")
    assert missing.code == 1
    assert missing.json()["reason"] == "LICENCE_NUMBER_INVALID"


async def test_operator_list_and_seals_from_the_command_line(node: Node, tmp_path: Path) -> None:
    endpoint = f"127.0.0.1:{node.grpc_port}"
    samr = ["--as", str(bundle_dir(node.settings, "samr")), "--endpoint", endpoint]
    issued = await atongban(
        "licence", "issue", "business-licence", "--claims", str(_claims_file(tmp_path)), *samr,
        "--json",
    )  # fmt: skip
    number = issued.json()["licence"]["number"]
    assert node.settings.database_url is not None
    env = cli_env(
        TONGBAN_DATABASE_URL=node.settings.database_url.get_secret_value(),
        TONGBAN_KEY_PASSPHRASE="test passphrase",
    )
    data_dir = ["--data-dir", str(node.settings.data_dir)]
    listed = await atongban("licence", "list", *data_dir, "--json", env=env)
    assert listed.code == 0, listed.stdout + listed.stderr
    assert [item["number"] for item in listed.json()["licences"]] == [number]

    pdf = tmp_path / "licence.pdf"
    await atongban("licence", "get", number, "--format", "pdf", "--out", str(pdf), *samr)
    checked = await atongban("seal", "verify", str(pdf), *data_dir, "--json", env=env)
    assert checked.code == 0, checked.stdout + checked.stderr
    assert [s["department"] for s in checked.json()["seals"]] == ["samr"]

    sealed = tmp_path / "sealed.pdf"
    approval = ["--as", str(bundle_dir(node.settings, "approval")), "--endpoint", endpoint]
    again = await atongban("seal", "pdf", str(pdf), str(sealed), *approval)
    assert again.code == 0, again.stdout + again.stderr
    both = await atongban("seal", "verify", str(sealed), *data_dir, "--json", env=env)
    assert [s["department"] for s in both.json()["seals"]] == ["samr", "approval"]

    tampered = tmp_path / "tampered.pdf"
    data = sealed.read_bytes()
    assert data.count(b"/Producer (Tongban)") == 1
    tampered.write_bytes(data.replace(b"/Producer (Tongban)", b"/Producer (Tongbam)"))
    broken = await atongban("seal", "verify", str(tampered), *data_dir, "--json", env=env)
    assert broken.code == 1
    assert (broken.json()["verified"], broken.json()["check"]) == (False, "integrity")

    enrolled = await atongban("seal", "enrol", "tax", *data_dir, "--json", env=env)
    assert enrolled.code == 0, enrolled.stdout + enrolled.stderr
    unknown = await atongban("seal", "enrol", "nobody", *data_dir, "--json", env=env)
    assert unknown.json()["reason"] == "DEPARTMENT_NOT_FOUND"


# -- a verifier fetches nothing a licence chooses (issue 14, finding 6) ---------------


@contextlib.asynccontextmanager
async def _bait_server(
    redirect_to: str | None = None,
) -> AsyncIterator[tuple[str, list[str]]]:
    """A local HTTP server recording every request it gets (an internal admin endpoint a
    forged licence would point a verifier at); with ``redirect_to``, it answers every
    request with a redirect there."""
    seen: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        if redirect_to is not None:
            raise web.HTTPFound(redirect_to + request.path_qs)
        return web.Response(text="deleted")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    finally:
        await runner.cleanup()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _payload(jwt: str) -> dict[str, Any]:
    part = jwt.split(".")[1]
    payload: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return payload


async def _issue_sd_jwt(node: Node) -> str:
    async with client_for(node, "samr", "SC-1") as samr:
        licence = await samr.issue_licence("business-licence", BUSINESS_LICENCE_CLAIMS)
    return licence.sd_jwt


def _verifier(node: Node, cache: Path) -> list[str]:
    return [
        "--url", f"http://127.0.0.1:{node.http_port}",
        "--ca", str(node.settings.data_dir / "ca" / "ca.crt"),
        "--cache-dir", str(cache), "--json",
    ]  # fmt: skip


async def test_a_forged_licence_makes_the_verifier_fetch_nothing(
    node: Node, tmp_path: Path
) -> None:
    issued = await _issue_sd_jwt(node)
    jwt, rest = issued.split("~", 1)
    header, payload_b64, signature = jwt.split(".")
    async with _bait_server() as (bait, seen):
        payload = _payload(jwt)
        payload["status"]["status_list"]["uri"] = bait + "/internal-admin/delete?id=1"
        forged_payload = _b64url(json.dumps(payload, ensure_ascii=False).encode())
        assert forged_payload != payload_b64
        forged = tmp_path / "forged.sd-jwt"
        forged.write_text(f"{header}.{forged_payload}.{signature}~{rest}", encoding="ascii")

        result = await atongban("licence", "verify", str(forged), *_verifier(node, tmp_path))

    assert result.code == 1, result.stdout + result.stderr
    answer = result.json()
    assert (answer["check"], answer["reason"]) == ("signature", "LICENCE_SIGNATURE_INVALID")
    assert seen == [], "the forged licence's status URL was requested"


async def test_a_status_url_the_trust_list_does_not_name_is_not_fetched(
    node: Node, tmp_path: Path
) -> None:
    issued = _payload((await _issue_sd_jwt(node)).split("~", 1)[0])
    # Validly sealed by samr (its bundle holds the same seal key as the exchange's
    # custody), but naming a status list somewhere else.
    bundle = Bundle.load(bundle_dir(node.settings, "samr"))
    key = serialization.load_pem_private_key(bundle.seal_key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    chain = [c for c in load_pem_certificates(bundle.seal_cert_pem) if c.issuer != c.subject]
    registered = {"iss", "iat", "nbf", "exp", "vct", "sub", "status", "_sd", "_sd_alg"}
    async with _bait_server() as (bait, seen):
        elsewhere = issue_sd_jwt(
            {k: v for k, v in issued.items() if k not in registered},
            {},
            signer=LocalSigner(key),
            chain=chain,
            vct=issued["vct"],
            iss=issued["iss"],
            sub=issued["sub"],
            nbf=datetime.fromtimestamp(issued["nbf"], UTC),
            exp=None,
            now=datetime.now(UTC),
            status_idx=issued["status"]["status_list"]["idx"],
            status_uri=bait + "/status-lists/1",
        )
        licence = tmp_path / "elsewhere.sd-jwt"
        licence.write_text(elsewhere.serialization, encoding="ascii")

        online = await atongban("licence", "verify", str(licence), *_verifier(node, tmp_path))
        offline = await atongban(
            "licence", "verify", str(licence), "--offline", "--cache-dir", str(tmp_path),
            "--json",
        )  # fmt: skip

    for result in (online, offline):
        assert result.code == 1, result.stdout + result.stderr
        answer = result.json()
        assert (answer["check"], answer["reason"]) == ("status", "STATUS_URL_UNTRUSTED")
        assert answer["status"] == "unknown"
        assert answer["licence_number"] == issued["licence_number"]  # the signature held
    assert seen == [], "a status URL outside the trust list's base was requested"
    listed = await atongban("licence", "trust-list", "--cache-dir", str(tmp_path), "--json")
    base = f"http://localhost:{node.http_port}/status-lists/"
    assert listed.json()["departments"]["samr"]["status_base_urls"] == [base]


async def test_status_lists_are_not_fetched_through_redirects(
    settings: Settings, tmp_path: Path
) -> None:
    async with (
        _bait_server() as (bait, seen),
        _bait_server(redirect_to=bait) as (front, redirected),
    ):
        # The exchange's public URL is a front that redirects to another host.
        fronted = settings.model_copy(update={"public_url": front})
        async with Node(fronted, clock=FixedClock(SystemClock().now())) as running:
            assert running.db is not None
            await enrol_demo(fronted)
            licence = tmp_path / "licence.sd-jwt"
            licence.write_text(await _issue_sd_jwt(running), encoding="ascii")
            result = await atongban(
                "licence", "verify", str(licence), *_verifier(running, tmp_path)
            )
    assert result.code == 1, result.stdout + result.stderr
    answer = result.json()
    assert (answer["check"], answer["reason"]) == ("status", "STATUS_UNAVAILABLE")
    assert "redirect" in answer["message"]
    assert [path.split("/")[1] for path in redirected] == ["status-lists"]
    assert seen == [], "the redirect was followed"
