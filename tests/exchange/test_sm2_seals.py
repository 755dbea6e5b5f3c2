"""A department's SM2 seal (docs/keys.md, "A department's SM2 seal"): chosen with
`tongban seal sm2 DEPT`, it signs each of the department's SD-JWT licences beside the ES256
seal; the signature verifies at the node, with the CLI as a verifier holding only the roots
and the trust list, and with OpenSSL; a forged, swapped or revoked one fails the `sm2`
check; departments without one are unchanged."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from asn1crypto import algos
from cryptography.hazmat.primitives import hashes

from tests.cli_helpers import atongban, cli_env
from tests.conftest import client_for
from tests.stories.restaurant import BUSINESS_LICENCE_CLAIMS
from tongban.client import Licence
from tongban.exchange.datadir import key_passphrase
from tongban.exchange.enrolment import bundle_dir
from tongban.exchange.node import Node
from tongban.licence import present, verify_sm2_licence_signature
from tongban.signing import SystemClock, load_pem_certificates
from tongban.signing.sm2_certs import sm2_public_key

OPENSSL = shutil.which("openssl")
SAMR = "samr"
SHA256 = hashes.SHA256()


def _env(node: Node) -> dict[str, str]:
    settings = node.settings
    assert settings.database_url is not None
    return cli_env(
        TONGBAN_DATABASE_URL=settings.database_url.get_secret_value(),
        TONGBAN_KEY_PASSPHRASE=key_passphrase(settings).decode(),
    )


async def _cli(node: Node, *args: str) -> tuple[int, dict[str, object], str]:
    done = await atongban(
        *args, "--data-dir", str(node.settings.data_dir), "--json", env=_env(node)
    )
    body = json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}
    await node.caches_settled()  # the node has seen what the command changed (seals)
    return done.code, body, done.stdout + done.stderr


async def _issue(node: Node, case: str) -> Licence:
    async with client_for(node, SAMR, "SC-0001") as samr:
        return await samr.issue_licence(
            "business-licence", BUSINESS_LICENCE_CLAIMS, case_id=case, reason="设立登记"
        )


async def _verify(node: Node, text: str, sm2: str) -> tuple[bool, str, str, bool]:
    async with client_for(node, SAMR, "SC-0001") as samr:
        result = await samr.verify_licence(text, sd_jwt_sm2=sm2)
    return result.verified, result.check, result.reason, result.sm2_verified


async def test_an_sm2_seal_signs_beside_es256_and_verifies_everywhere(
    node: Node, tmp_path: Path
) -> None:
    assert node.licensing is not None
    code, enrolled, err = await _cli(node, "seal", "sm2", SAMR)
    assert code == 0, err
    sha256 = str(enrolled["sha256"])
    licence = await _issue(node, "SM2-1")
    assert licence.sd_jwt_sm2.count(".") == 2
    assert licence.sd_jwt_sm2.split(".")[1] == ""  # detached

    # The node: ES256 and SM2 both.
    assert await _verify(node, licence.sd_jwt, licence.sd_jwt_sm2) == (True, "", "", True)
    assert await _verify(node, licence.sd_jwt, "") == (True, "", "", False)
    # The trust list names the SM2 seal, under its department only.
    trust_list = await node.licensing.trust.trust_list()
    assert set(trust_list.sm2_seals) == {SAMR}
    assert [c.fingerprint(SHA256).hex() for c in trust_list.sm2_seals[SAMR]] == [sha256]
    # A presentation keeps the issuer-signed JWT, so the signature holds for it too.
    presentation = present(licence.sd_jwt, disclose=[])
    sm2_roots = load_pem_certificates((node.settings.data_dir / "ca" / "sm2-ca.crt").read_bytes())
    leaf = verify_sm2_licence_signature(
        presentation, licence.sd_jwt_sm2, sm2_roots=sm2_roots, trust_list=trust_list,
        now=SystemClock().now(),
    )  # fmt: skip
    assert leaf.fingerprint(SHA256).hex() == sha256

    # A verifier with the roots and the trust list only (the CLI without --as), given the
    # two files as `tongban licence get` writes them.
    sd_jwt_file, sm2_file = tmp_path / "licence.sd-jwt", tmp_path / "licence.sm2"
    for fmt, out in (("sd-jwt", sd_jwt_file), ("sd-jwt-sm2", sm2_file)):
        got = await atongban(
            "licence", "get", licence.number, "--format", fmt, "--out", str(out),
            "--as", str(bundle_dir(node.settings, SAMR)),
            "--endpoint", f"127.0.0.1:{node.grpc_port}",
        )  # fmt: skip
        assert got.code == 0, got.stdout + got.stderr
    assert sm2_file.read_text() == licence.sd_jwt_sm2
    cache = tmp_path / "verifier"
    verified = await atongban(
        "licence", "verify", str(sd_jwt_file), "--sm2", f"@{sm2_file}",
        "--url", f"http://127.0.0.1:{node.http_port}",
        "--ca", str(node.settings.data_dir / "ca" / "ca.crt"),
        "--sm2-ca", str(node.settings.data_dir / "ca" / "sm2-ca.crt"),
        "--cache-dir", str(cache), "--json",
    )  # fmt: skip
    assert verified.code == 0, verified.stdout + verified.stderr
    assert verified.json()["sm2_verified"] is True

    # OpenSSL, as an outsider: SM2/SM3 with the default ID over the JWS signing input.
    if OPENSSL is None:
        pytest.skip("the openssl CLI is not installed")
    header_b64, _, sig_b64 = licence.sd_jwt_sm2.split(".")
    issuer_jwt = licence.sd_jwt.split("~", 1)[0].encode()
    payload_b64 = base64.urlsafe_b64encode(issuer_jwt).rstrip(b"=").decode()
    raw = base64.urlsafe_b64decode(sig_b64 + "=" * (-len(sig_b64) % 4))
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    (tmp_path / "sig").write_bytes(algos.DSASignature({"r": r, "s": s}).dump())
    (tmp_path / "input").write_bytes(f"{header_b64}.{payload_b64}".encode())
    (tmp_path / "pub.pem").write_bytes(sm2_public_key(leaf).pem())
    done = await asyncio.to_thread(
        subprocess.run,
        [OPENSSL, "pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "pub.pem"),
         "-rawin", "-digest", "sm3", "-pkeyopt", "distid:1234567812345678",
         "-in", str(tmp_path / "input"), "-sigfile", str(tmp_path / "sig")],
        capture_output=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


async def test_bad_sm2_signatures_fail_the_sm2_check(node: Node) -> None:
    code, _, err = await _cli(node, "seal", "sm2", SAMR)
    assert code == 0, err
    first, second = await _issue(node, "SM2-A"), await _issue(node, "SM2-B")
    # Another licence's signature, garbage, a one-character change, and one beside a QR code.
    swapped = await _verify(node, first.sd_jwt, second.sd_jwt_sm2)
    assert swapped == (False, "sm2", "SM2_SIGNATURE_INVALID", False)
    for garbage in ("x", "a.b.c", "..", first.sd_jwt_sm2[:-2] + "AA", "é" * 10):
        verified, check, reason, _ = await _verify(node, first.sd_jwt, garbage)
        assert (verified, check) == (False, "sm2"), garbage
        assert reason == "SM2_SIGNATURE_INVALID", garbage
    assert (await _verify(node, first.qr, first.sd_jwt_sm2))[:3] == (
        False, "sm2", "SM2_SIGNATURE_INVALID",
    )  # fmt: skip
    # An ES256 failure is reported as such, whatever the SM2 signature.
    tampered = first.sd_jwt.replace(".", ".x", 1)
    verified, check, _, _ = await _verify(node, tampered, first.sd_jwt_sm2)
    assert not verified
    assert check != "sm2"


async def test_a_revoked_sm2_seal_is_no_longer_trusted(node: Node) -> None:
    code, enrolled, err = await _cli(node, "seal", "sm2", SAMR)
    assert code == 0, err
    licence = await _issue(node, "SM2-R")
    code, listed, err = await _cli(node, "seal", "sm2", "--list")
    assert code == 0, err
    rows = listed["sm2_seals"]
    assert isinstance(rows, list)
    assert [(r["department"], r["state"]) for r in rows] == [(SAMR, "signing")]
    code, _, err = await _cli(
        node, "seal", "sm2", SAMR, "--revoke", str(enrolled["sha256"]), "--reason", "密钥泄露"
    )
    assert code == 0, err
    assert await _verify(node, licence.sd_jwt, licence.sd_jwt_sm2) == (
        False, "sm2", "SM2_SEAL_UNTRUSTED", False,
    )  # fmt: skip
    # ES256 alone still verifies the licence: the SM2 seal was an addition.
    assert (await _verify(node, licence.sd_jwt, ""))[0]


async def test_departments_without_an_sm2_seal_and_bad_commands(node: Node) -> None:
    # No SM2 seal chosen: no SM2 signature, and the trust list names none.
    licence = await _issue(node, "SM2-N")
    assert licence.sd_jwt_sm2 == ""
    got = await atongban(
        "licence", "get", licence.number, "--format", "sd-jwt-sm2",
        "--as", str(bundle_dir(node.settings, SAMR)), "--endpoint", f"127.0.0.1:{node.grpc_port}",
    )  # fmt: skip
    assert got.code == 1
    assert "has no SM2 signature" in got.stderr
    assert node.licensing is not None
    assert dict((await node.licensing.trust.trust_list()).sm2_seals) == {}
    for args, reason in (
        (("seal", "sm2", "nobody"), "DEPARTMENT_NOT_FOUND"),
        (("seal", "sm2"), "INVALID_ARGUMENT"),
        (("seal", "sm2", SAMR, "--revoke", "abc", "--reason", "x"), "INVALID_ARGUMENT"),
        (("seal", "sm2", SAMR, "--revoke", "00" * 32), "INVALID_ARGUMENT"),
        (("seal", "sm2", SAMR, "--revoke", "00" * 32, "--reason", "x"), "SEAL_NOT_ENROLLED"),
    ):
        code, _, err = await _cli(node, *args)
        assert code != 0, args
        assert reason in err, (args, err)
        assert "Traceback" not in err
