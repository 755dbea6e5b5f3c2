"""Licences across exchanges: a licence the province issued verifies in the county (SD-JWT
over gRPC, QR on the console's verify page, the sealed PDF with the CLI), with the
province's trust list fetched over the peer service and checked against the province's
root in the county's registry; a revocation in the province is seen in the county once
its cached status list is older than STATUS_REFRESH, or than the ttl the issuing exchange
chose (TONGBAN_STATUS_LIST_TTL_SECONDS). Bad peers: a trust list with a bad
signature or of another root, a licence of an exchange that is not a peer, a status
address the issuing exchange's trust list does not name (docs/federation.md, "Licences
across exchanges")."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.cli_helpers import atongban
from tests.conftest import client_for
from tests.exchange.federation.conftest import add_peer, county_node, link, parts
from tests.stories.restaurant import BUSINESS_LICENCE_CLAIMS
from tongban.client import Bundle, Licence
from tongban.exchange.departments import Level
from tongban.exchange.enrolment import bundle_dir
from tongban.exchange.federation.errors import PeerTrustListInvalid
from tongban.exchange.federation.licences import (
    STATUS_REFRESH,
    STATUS_REFRESH_MIN,
    status_fresh_until,
)
from tongban.exchange.node import Node
from tongban.licence import StatusList, VerifiedStatusList, issue_sd_jwt
from tongban.licence.sdjwt import unverified_status
from tongban.signing import LocalSigner, load_pem_certificates
from tongban.signing.clock import FixedClock


async def _issue(province: Node) -> Licence:
    async with client_for(province, "samr", "SC-1") as samr:
        return await samr.issue_licence("business-licence", BUSINESS_LICENCE_CLAIMS)


@contextlib.asynccontextmanager
async def _bait_server() -> AsyncIterator[tuple[str, list[str]]]:
    """A local HTTP server recording every request (where a forged status address points)."""
    seen: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
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


async def test_a_province_licence_verifies_in_the_county_and_its_revocation_is_seen(
    province: Node, county: Node, tmp_path: Path
) -> None:
    licence = await _issue(province)
    # Not yet a peer: the county knows no seal of the province.
    async with client_for(county, "approval") as approval:
        stranger = await approval.verify_licence(licence.sd_jwt)
    assert (stranger.verified, stranger.reason, stranger.exchange) == (
        False,
        "SIGNER_UNTRUSTED",
        "",
    )

    await link(province, county)
    async with client_for(county, "approval") as approval:
        result = await approval.verify_licence(licence.sd_jwt)
        assert result.verified, result.message
        assert (result.exchange, result.issuer, result.status) == ("province", "samr", "valid")
        assert "issued by province/samr" in result.message
        assert result.licence_number == licence.number

        # The QR text, on the county's console verify page: the issuer is the
        # province's samr, never the county's own.
        base = f"http://127.0.0.1:{county.http_port}"
        async with (
            aiohttp.ClientSession() as http,
            http.get(base + "/console/verify", params={"qr": licence.qr}) as page,
        ):
            html = await page.text()
        assert page.status == 200, html
        assert 'data-outcome="valid"' in html
        assert '<dd id="exchange">province</dd>' in html
        assert "(province/samr)" in html

        # The sealed PDF, with the CLI asking the county's node.
        async with client_for(province, "samr") as samr:
            pdf = tmp_path / "licence.pdf"
            pdf.write_bytes(await samr.render_licence(licence.number))
        checked = await atongban(
            "licence", "verify", str(pdf), "--as", str(bundle_dir(county.settings, "approval")),
            "--endpoint", f"127.0.0.1:{county.grpc_port}", "--json",
        )  # fmt: skip
        assert checked.code == 0, checked.stdout + checked.stderr
        assert (checked.json()["exchange"], checked.json()["issuer"]) == ("province", "samr")

        async with client_for(province, "samr") as samr:
            await samr.change_licence_status(licence.number, "revoke", "吊销")
        # The county's status list of the province is at most STATUS_REFRESH old ...
        cached = await approval.verify_licence(licence.sd_jwt)
        assert (cached.verified, cached.status) == (True, "valid")
        # ... and fetched again once older.
        assert isinstance(county.clock, FixedClock)
        county.clock.advance(STATUS_REFRESH + timedelta(seconds=1))
        revoked = await approval.verify_licence(licence.qr)
    assert (revoked.verified, revoked.reason, revoked.status) == (
        False,
        "LICENCE_REVOKED",
        "revoked",
    )
    assert revoked.exchange == "province"


async def test_a_revocation_is_seen_once_the_issuing_exchanges_ttl_has_passed(
    county: Node, city_database_url: str, tmp_path: Path
) -> None:
    """The city signs its status lists with a 1 s ttl (its setting): the county, which
    keeps running, reads a revocation there once its clock is a second on, long before
    STATUS_REFRESH."""
    async with county_node(
        tmp_path, city_database_url, name="city", status_list_ttl_seconds=1
    ) as city:
        await add_peer(county, "city", city, level=Level.CITY, parent=True)
        await add_peer(city, "county-a", county, level=Level.COUNTY)
        async with client_for(city, "samr", "SC-1") as samr:
            licence = await samr.issue_licence("business-licence", BUSINESS_LICENCE_CLAIMS)

        # The city serves its lists with its ttl, as the claim and as max-age.
        path = urlsplit(unverified_status(licence.sd_jwt).uri).path
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{city.http_port}{path}") as response,
        ):
            token = await response.text()
        assert response.status == 200, token
        assert response.headers["Cache-Control"] == "max-age=1"
        assert _payload(token)["ttl"] == 1

        async with client_for(county, "approval") as approval:
            valid = await approval.verify_licence(licence.sd_jwt)
            assert valid.verified, valid.message
            assert (valid.exchange, valid.status) == ("city", "valid")
            async with client_for(city, "samr", "SC-1") as samr:
                await samr.change_licence_status(licence.number, "revoke", "吊销")
            # Within the city's ttl the county uses the list it holds ...
            held = await approval.verify_licence(licence.sd_jwt)
            assert (held.verified, held.status) == (True, "valid")
            # ... and fetches it again after it, without a restart.
            assert isinstance(county.clock, FixedClock)
            county.clock.advance(timedelta(seconds=2))
            assert timedelta(seconds=2) < STATUS_REFRESH
            revoked = await approval.verify_licence(licence.qr)
        assert (revoked.verified, revoked.reason, revoked.status, revoked.exchange) == (
            False, "LICENCE_REVOKED", "revoked", "city",
        )  # fmt: skip


_AT = datetime(2026, 1, 1, tzinfo=UTC)


def _verified(ttl: timedelta | None, *, exp: timedelta = timedelta(days=1)) -> VerifiedStatusList:
    return VerifiedStatusList(StatusList(8), issued_at=_AT, expires_at=_AT + exp, ttl=ttl)


@pytest.mark.parametrize(
    ("ttl", "exp", "kept"),
    [
        (timedelta(seconds=30), timedelta(days=1), timedelta(seconds=30)),  # the issuer's ttl
        (None, timedelta(days=1), STATUS_REFRESH),  # no ttl: as before
        (timedelta(hours=12), timedelta(days=1), STATUS_REFRESH),  # capped
        (timedelta(0), timedelta(days=1), STATUS_REFRESH_MIN),  # not fetched on every use
        (timedelta(seconds=120), timedelta(seconds=60), timedelta(seconds=60)),  # never past exp
    ],
)
def test_a_peers_status_list_is_kept_for_its_ttl_within_bounds(
    ttl: timedelta | None, exp: timedelta, kept: timedelta
) -> None:
    assert status_fresh_until(_verified(ttl, exp=exp), _AT) == _AT + kept


async def test_a_peer_trust_list_must_verify_under_that_peers_root(
    province: Node, county: Node
) -> None:
    await link(province, county)
    peer = await parts(county).trust.peer("province")
    assert peer is not None
    licences = parts(county).licences
    fetched = await licences.refresh(peer)  # PeerService/GetTrustList
    assert fetched.issuer == province.settings.node_name
    assert set(fetched.entries) >= {"samr"}

    head, body, signature = fetched.token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    with pytest.raises(PeerTrustListInvalid) as bad_signature:
        licences.accept(peer, f"{head}.{body}.{flipped}")
    assert bad_signature.value.reason == "PEER_TRUST_LIST_INVALID"
    assert bad_signature.value.metadata["cause"] == "LICENCE_SIGNATURE_INVALID"

    # A good list, but of another root (the county's own): not the province's.
    assert county.licensing is not None
    own = await county.licensing.trust.trust_list()
    with pytest.raises(PeerTrustListInvalid) as other_root:
        licences.accept(peer, own.token)
    assert other_root.value.metadata["cause"] == "SIGNER_UNTRUSTED"


async def test_a_status_address_the_issuing_exchange_does_not_name_is_not_fetched(
    province: Node, county: Node
) -> None:
    await link(province, county)
    issued = await _issue(province)
    claims = issued.sd_jwt.split("~", 1)[0]
    # Validly sealed by the province's samr (its bundle holds the custodial seal key),
    # naming a status list somewhere else.
    bundle = Bundle.load(bundle_dir(province.settings, "samr"))
    key = serialization.load_pem_private_key(bundle.seal_key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    chain = [c for c in load_pem_certificates(bundle.seal_cert_pem) if c.issuer != c.subject]
    payload = _payload(claims)
    registered = {"iss", "iat", "nbf", "exp", "vct", "sub", "status", "_sd", "_sd_alg"}
    async with _bait_server() as (bait, seen):
        elsewhere = issue_sd_jwt(
            {k: v for k, v in payload.items() if k not in registered},
            {},
            signer=LocalSigner(key),
            chain=chain,
            vct=str(payload["vct"]),
            iss=str(payload["iss"]),
            sub=str(payload["sub"]),
            nbf=province.clock.now() - timedelta(minutes=1),
            exp=None,
            now=province.clock.now(),
            status_idx=unverified_status(issued.sd_jwt).idx,
            status_uri=bait + "/status-lists/1",
        )
        async with client_for(county, "approval") as approval:
            result = await approval.verify_licence(elsewhere.serialization)
    assert (result.verified, result.check, result.reason) == (
        False,
        "status",
        "STATUS_URL_UNTRUSTED",
    )
    assert (result.exchange, result.licence_number) == ("province", issued.number)
    assert seen == [], "a status address outside the province's trust list was requested"


def _payload(jwt: str) -> dict[str, object]:
    part = jwt.split(".")[1]
    data = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    assert isinstance(data, dict)
    return data


async def test_a_node_restarted_while_the_peer_is_down_keeps_its_trust_list(
    province: Node, county: Node
) -> None:
    licence = await _issue(province)
    await link(province, county)
    async with client_for(county, "approval") as approval:
        assert (await approval.verify_licence(licence.sd_jwt)).verified
    kept = county.settings.data_dir / "peers" / "trust-lists" / "province.jwt"
    assert kept.is_file()
    await province.stop(grace=0)
    # Another node of the county, started now: nothing in memory, the province unreachable.
    # It vouches for the province's seal from the list kept on disk; only the status, which
    # lives at the province, cannot be had.
    async with Node(county.settings, clock=FixedClock(county.clock.now())) as restarted:
        async with client_for(restarted, "approval") as approval:
            result = await approval.verify_licence(licence.sd_jwt)
        assert (result.exchange, result.issuer) == ("province", "samr")
        assert (result.check, result.reason) == ("status", "STATUS_UNAVAILABLE")
        # A kept list altered on disk is not believed: the signer is then unknown.
        kept.write_text(kept.read_text().replace(".", ".x", 1))
    async with Node(county.settings, clock=FixedClock(county.clock.now())) as again:
        async with client_for(again, "approval") as approval:
            forged = await approval.verify_licence(licence.sd_jwt)
        assert forged.reason == "TRUST_LIST_UNAVAILABLE"


async def test_a_province_sealed_pdf_verifies_in_the_county_naming_the_province(
    province: Node, county: Node
) -> None:
    licence = await _issue(province)
    async with client_for(province, "samr") as samr:
        pdf = await samr.render_licence(licence.number)
    async with client_for(county, "approval") as approval:
        stranger = await approval.verify_pdf(pdf)
        assert (stranger.verified, stranger.reason, stranger.exchange) == (
            False, "SEAL_UNTRUSTED", "",
        )  # fmt: skip
    await link(province, county)
    async with client_for(county, "approval") as approval:
        checked = await approval.verify_pdf(pdf)
        assert checked.verified, checked.message
        assert checked.exchange == "province"
        assert [s.department for s in checked.seals] == ["samr"]
        assert "Sealed in peer exchange province." in checked.message
        # A changed byte inside the sealed range is broken under any root.
        at = pdf.index(b"/Contents") - 40
        tampered = pdf[:at] + bytes([pdf[at] ^ 0x01]) + pdf[at + 1 :]
        broken = await approval.verify_pdf(tampered)
        assert not broken.verified
        assert broken.exchange == ""
