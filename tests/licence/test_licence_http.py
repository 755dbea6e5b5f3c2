"""The node's public licence endpoints: /trust-list, /status-lists/{id} and /verify, and
bad input to verification over gRPC and HTTP (a specific result, never a crash)."""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

import aiohttp
import pytest

from tests.conftest import client_for
from tests.stories.restaurant import BUSINESS_LICENCE_CLAIMS, COMPANY_USCC, FOOD_PERMIT_CLAIMS
from tongban.exchange.datadir import ca_certificate_pem
from tongban.exchange.node import Node
from tongban.licence import (
    MIN_SIZE,
    LicenceStatus,
    verify_status_list,
    verify_trust_list,
)
from tongban.licence.base45 import b45encode
from tongban.signing import load_pem_certificates


def _base(node: Node) -> str:
    return f"http://127.0.0.1:{node.http_port}"


async def _issue(node: Node) -> Any:
    async with client_for(node, "samr", "SC-1") as samr:
        return await samr.issue_licence("business-licence", BUSINESS_LICENCE_CLAIMS)


async def test_trust_list_and_status_list_are_served_signed(node: Node) -> None:
    licence = await _issue(node)
    roots = load_pem_certificates(ca_certificate_pem(node.settings))
    now = node.clock.now()
    async with aiohttp.ClientSession() as http:
        async with http.get(_base(node) + "/trust-list") as response:
            assert response.status == 200
            trust_list = verify_trust_list(await response.text(), roots=roots, now=now)
        assert set(trust_list.entries) == {"samr", "approval"}  # the issuing departments
        status_certs = trust_list.status_list_certificates_for("samr")
        assert len(status_certs) == 1
        assert trust_list.expires_at - now > trust_list.next_update - now  # expiry well ahead

        path = "/status-lists/" + licence.status_uri.rsplit("/", 1)[1]
        async with http.get(_base(node) + path) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "application/statuslist+jwt"
            assert response.headers["Cache-Control"] == "max-age=300"
            token = await response.text()
        status_list = verify_status_list(
            token, uri=licence.status_uri, roots=roots, now=now, trusted=status_certs
        )
        assert len(status_list) >= MIN_SIZE
        assert status_list[licence.status_index] == LicenceStatus.VALID
        # A department's seal certificate is not a status-list signer.
        seal = trust_list.certificates_for("samr")
        with pytest.raises(Exception, match="status-list certificate") as untrusted:
            verify_status_list(token, uri=licence.status_uri, roots=roots, now=now, trusted=seal)
        assert getattr(untrusted.value, "reason", "") == "SIGNER_UNTRUSTED"

        async with client_for(node, "samr") as samr:
            await samr.change_licence_status(licence.number, "revoke", "吊销")
        async with http.get(_base(node) + path) as response:
            fresh = await response.text()
        assert fresh != token  # re-signed on change
        revoked = verify_status_list(
            fresh, uri=licence.status_uri, roots=roots, now=now, trusted=status_certs
        )
        assert revoked[licence.status_index] == LicenceStatus.INVALID
        async with http.get(_base(node) + "/status-lists/999") as response:
            assert response.status == 404
            assert (await response.json())["reason"] == "STATUS_LIST_NOT_FOUND"


async def test_verify_endpoint(node: Node) -> None:
    async with client_for(node, "approval") as approval:
        permit = await approval.issue_licence("food-business-permit", FOOD_PERMIT_CLAIMS)
    async with aiohttp.ClientSession() as http:
        async with http.post(_base(node) + "/verify", json={"qr": permit.qr}) as response:
            assert response.status == 200
            body = await response.json()
        assert body["verified"] is True
        assert body["status"] == "valid"
        assert (body["issuer"], body["holder_id"]) == ("approval", COMPANY_USCC)
        assert body["licence_number"] == permit.number
        async with http.get(_base(node) + "/verify", params={"qr": permit.qr}) as response:
            assert (await response.json())["verified"] is True


def _bomb_qr(size: int) -> str:
    return "TB1:" + b45encode(zlib.compress(b"\0" * size, 9))


@pytest.mark.parametrize(
    ("text", "reason", "check"),
    [
        ("XB1:NCFOXN%TS3DH", "LICENCE_FORMAT_INVALID", "format"),  # wrong prefix
        ("TB1:NCFOXN%TS3DH3ZSUZK+", "LICENCE_FORMAT_INVALID", "format"),  # not zlib
        (_bomb_qr(3_000_000), "PAYLOAD_TOO_LARGE", "format"),  # inflates past the cap
        ("eyJhbGciOiJFUzI1NiJ9.e30.c2ln~", "LICENCE_FORMAT_INVALID", "format"),
    ],
)
async def test_bad_qr_texts_get_specific_results(
    node: Node, text: str, reason: str, check: str
) -> None:
    async with client_for(node, "tax") as tax:
        result = await tax.verify_licence(text)
    assert (result.verified, result.reason, result.check) == (False, reason, check)
    async with (
        aiohttp.ClientSession() as http,
        http.post(_base(node) + "/verify", json={"qr": text}) as response,
    ):
        assert response.status == 200
        body = await response.json()
    assert (body["verified"], body["reason"], body["check"]) == (False, reason, check)


async def test_tampered_and_truncated_licences(node: Node) -> None:
    licence = await _issue(node)
    jwt, disclosure, _ = licence.sd_jwt.split("~")
    header, payload, signature = jwt.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["name"] = "冒名公司"
    forged_payload = (
        base64.urlsafe_b64encode(json.dumps(claims, ensure_ascii=False).encode())
        .rstrip(b"=")
        .decode()
    )
    decoded = json.loads(base64.urlsafe_b64decode(disclosure + "=" * (-len(disclosure) % 4)))
    decoded[2] = "李四"
    forged_disclosure = (
        base64.urlsafe_b64encode(json.dumps(decoded, ensure_ascii=False).encode())
        .rstrip(b"=")
        .decode()
    )
    cases = {
        "tampered claim": (f"{header}.{forged_payload}.{signature}~{disclosure}~", "signature"),
        "tampered disclosure": (f"{jwt}~{forged_disclosure}~", "disclosure"),
        "truncated QR": (licence.qr[:-20], "format"),
    }
    async with client_for(node, "tax") as tax:
        for name, (text, check) in cases.items():
            result = await tax.verify_licence(text)
            assert not result.verified, name
            assert result.check == check, (name, result.reason, result.message)
        with pytest.raises(Exception, match="Give the licence") as empty:
            await tax.verify_licence("  ")
        assert getattr(empty.value, "reason", "") == "INVALID_ARGUMENT"
        huge = await tax.verify_licence(_bomb_qr(100_000_000))  # inflates to 100 MB
        assert (huge.verified, huge.reason) == (False, "PAYLOAD_TOO_LARGE")


async def test_verify_endpoint_refuses_bad_requests_without_a_trace(node: Node) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(_base(node) + "/verify", data=b"not json") as response:
            assert response.status == 400
            assert (await response.json())["reason"] == "INVALID_ARGUMENT"
        async with http.post(_base(node) + "/verify", json={"qr": ""}) as response:
            assert response.status == 400
        big = {"qr": _bomb_qr(100_000_000)}  # 100 MB inflated: the body alone is too big
        async with http.post(_base(node) + "/verify", json=big) as response:
            assert response.status == 413
            body = await response.json()
            assert body["reason"] == "PAYLOAD_TOO_LARGE"
            assert "Traceback" not in json.dumps(body)
        async with http.get(_base(node) + "/healthz") as response:
            assert response.status == 200  # still serving
