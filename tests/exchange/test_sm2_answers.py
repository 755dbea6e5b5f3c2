"""Signed answers carry an SM2/SM3 signature beside ES256 once `tongban key sm2 answers`
has set up the exchange's SM2 root and the node's SM2 key; it verifies with the client
and with OpenSSL, and fails for another payload, another root, or garbage."""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cli_helpers import atongban, cli_env
from tests.conftest import client_for, enrol_demo
from tests.stories.restaurant import COMPANY, COMPANY_USCC, ENTERPRISE
from tongban.client import verify_answer, verify_answer_sm2
from tongban.exchange.datadir import ca_certificate_pem, key_passphrase, sm2_ca_certificate_pem
from tongban.exchange.node import Node
from tongban.exchange.settings import Settings
from tongban.signing import (
    CertificateInvalid,
    FixedClock,
    SignatureInvalid,
    SystemClock,
    certificate_pem,
    load_pem_certificates,
)
from tongban.signing.sm2 import Sm2PrivateKey
from tongban.signing.sm2_certs import create_sm2_root_ca, sm2_public_key

OPENSSL = shutil.which("openssl")


async def test_answers_are_signed_with_sm2_beside_es256(settings: Settings, tmp_path: Path) -> None:
    env = cli_env(TONGBAN_KEY_PASSPHRASE=key_passphrase(settings).decode())
    args = ("key", "sm2", "answers", "--data-dir", str(settings.data_dir), "--json")
    made = await atongban(*args, env=env)
    assert made.code == 0, made.stderr
    assert made.json()["created"] is True
    assert (await atongban(*args, env=env)).json()["created"] is False
    async with Node(settings, clock=FixedClock(SystemClock().now())) as node:
        await enrol_demo(settings)
        async with client_for(node, "samr", "S-0001") as samr:
            await samr.register_dataset(ENTERPRISE, publish=True)
            await samr.publish_records("samr.enterprise", [(COMPANY_USCC, COMPANY)])
            answer = await samr.query(
                "samr.enterprise", [COMPANY_USCC], fields=["name"], purpose="核验",
                case_id="SM2-1", sign=True,
            )  # fmt: skip
            unsigned = await samr.query(
                "samr.enterprise", [COMPANY_USCC], fields=["name"], purpose="核验",
                case_id="SM2-1",
            )  # fmt: skip
    assert unsigned.signature_sm2 == ""
    now = SystemClock().now()
    sm2_root = sm2_ca_certificate_pem(settings)
    assert sm2_root is not None
    es256 = verify_answer(
        answer.signed_payload, answer.signature, ca_pem=ca_certificate_pem(settings), now=now
    )
    sm2 = verify_answer_sm2(
        answer.signed_payload, answer.signature_sm2, sm2_ca_pem=sm2_root, now=now
    )
    assert sm2 == es256
    assert sm2["records"][0]["fields"] == {"name": COMPANY["name"]}

    with pytest.raises(SignatureInvalid):
        verify_answer_sm2(
            answer.signed_payload + b" ", answer.signature_sm2, sm2_ca_pem=sm2_root, now=now
        )
    other_root = create_sm2_root_ca(common_name="Other", key=Sm2PrivateKey.generate(), now=now)
    with pytest.raises(CertificateInvalid):
        verify_answer_sm2(
            answer.signed_payload, answer.signature_sm2,
            sm2_ca_pem=certificate_pem(other_root), now=now,
        )  # fmt: skip
    for garbage in ("", "a.b.c", answer.signature, "x" * 70_000, answer.signature_sm2 + "A"):
        with pytest.raises((SignatureInvalid, CertificateInvalid)):
            verify_answer_sm2(answer.signed_payload, garbage, sm2_ca_pem=sm2_root, now=now)

    # As an outsider would: OpenSSL checks the SM2 signature over the JWS signing input.
    if OPENSSL is None:
        pytest.skip("the openssl CLI is not installed")
    header_b64, _, sig_b64 = answer.signature_sm2.split(".")
    payload_b64 = base64.urlsafe_b64encode(answer.signed_payload).rstrip(b"=").decode()
    raw = base64.urlsafe_b64decode(sig_b64 + "=" * (-len(sig_b64) % 4))
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    from asn1crypto import algos

    (tmp_path / "sig").write_bytes(algos.DSASignature({"r": r, "s": s}).dump())
    (tmp_path / "input").write_bytes(f"{header_b64}.{payload_b64}".encode())
    leaf = load_pem_certificates((settings.data_dir / "node" / "sign-sm2.crt").read_bytes())[0]
    (tmp_path / "pub.pem").write_bytes(sm2_public_key(leaf).pem())
    done = await asyncio.to_thread(
        subprocess.run,
        [OPENSSL, "pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "pub.pem"),
         "-rawin", "-digest", "sm3", "-pkeyopt", "distid:1234567812345678",
         "-in", str(tmp_path / "input"), "-sigfile", str(tmp_path / "sig")],
        capture_output=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
