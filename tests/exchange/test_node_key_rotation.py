"""`tongban key rotate node`: a new answer-signing key for the node, with the key in a file
or in a SoftHSM2 token; answers signed before still verify, a rotation cut short is
finished by running it again, and the node refuses to start halfway with a clear reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cli_helpers import atongban, cli_env
from tests.conftest import client_for, enrol_demo
from tests.stories.restaurant import COMPANY, COMPANY_USCC, ENTERPRISE
from tongban.client import Answer, verify_answer
from tongban.exchange.datadir import (
    NODE_KEY_LABEL,
    ca_certificate_pem,
    key_passphrase,
)
from tongban.exchange.errors import DataDirUnusable
from tongban.exchange.node import Node
from tongban.exchange.settings import Settings
from tongban.signing import (
    FixedClock,
    SystemClock,
    certificate_fingerprint,
    load_pem_certificates,
    load_private_key,
)
from tongban.signing.pkcs11 import Token
from tongban.signing.softhsm import SoftHsm


async def _signed_answer(node: Node, *, register: bool) -> Answer:
    async with client_for(node, "samr", "S-0001") as samr:
        if register:
            await samr.register_dataset(ENTERPRISE, publish=True)
            await samr.publish_records("samr.enterprise", [(COMPANY_USCC, COMPANY)])
        return await samr.query(
            "samr.enterprise", [COMPANY_USCC], fields=["name"], purpose="核验",
            case_id="ROT-1", sign=True,
        )  # fmt: skip


def _check(settings: Settings, answer: Answer) -> None:
    verify_answer(
        answer.signed_payload, answer.signature, ca_pem=ca_certificate_pem(settings),
        now=SystemClock().now(),
    )  # fmt: skip


def _signing_cert_sha256(settings: Settings) -> str:
    cert = load_pem_certificates((settings.data_dir / "node" / "sign.crt").read_bytes())[0]
    return certificate_fingerprint(cert).hex()


async def _rotate(settings: Settings, **env: str) -> dict[str, str]:
    done = await atongban(
        "key", "rotate", "node", "--data-dir", str(settings.data_dir), "--json",
        env=cli_env(TONGBAN_KEY_PASSPHRASE=key_passphrase(settings).decode(), **env),
    )  # fmt: skip
    assert done.code == 0, done.stdout + done.stderr
    result: dict[str, str] = done.json()
    return result


async def test_rotate_the_file_key(settings: Settings) -> None:
    async with Node(settings, clock=FixedClock(SystemClock().now())) as node:
        await enrol_demo(settings)
        before = await _signed_answer(node, register=True)
    old = _signing_cert_sha256(settings)
    rotated = await _rotate(settings)
    assert rotated["old_sha256"] == old
    assert rotated["new_sha256"] == _signing_cert_sha256(settings) != old
    assert (settings.data_dir / "node" / "retired" / f"sign-{old[:16]}.key").exists()
    async with Node(settings, clock=FixedClock(SystemClock().now())) as node:
        after = await _signed_answer(node, register=False)
    _check(settings, before)  # signed by the old key: still verifies (x5c)
    _check(settings, after)
    assert before.signature.split(".")[0] != after.signature.split(".")[0]  # another x5c


async def test_a_rotation_cut_short_is_refused_then_finished(settings: Settings) -> None:
    async with Node(settings, clock=FixedClock(SystemClock().now())) as node:
        await enrol_demo(settings)
    node_dir = settings.data_dir / "node"
    old = _signing_cert_sha256(settings)
    # Killed halfway: the new key moved into place, the new certificate not yet.
    rotated = await _rotate(settings)
    new_cert = (node_dir / "sign.crt").read_bytes()
    (node_dir / "sign.crt.next").write_bytes(new_cert)
    retired = node_dir / "retired" / f"sign-{old[:16]}.crt"
    (node_dir / "sign.crt").write_bytes(retired.read_bytes())
    with pytest.raises(DataDirUnusable, match="cut short"):
        await Node(settings).start()
    again = await _rotate(settings)
    assert again["new_sha256"] == rotated["new_sha256"] == _signing_cert_sha256(settings)
    assert not (node_dir / "sign.crt.next").exists()
    async with Node(settings, clock=FixedClock(SystemClock().now())) as node:
        _check(settings, await _signed_answer(node, register=True))


async def test_rotate_the_token_key(
    settings: Settings, softhsm: SoftHsm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = softhsm.new_token()
    (tmp_path / "pin").write_text(config.pin)
    env = {
        "TONGBAN_PKCS11_MODULE": str(config.module),
        "TONGBAN_PKCS11_TOKEN": config.token_label,
        "TONGBAN_PKCS11_PIN_FILE": str(tmp_path / "pin"),
        "SOFTHSM2_CONF": os.environ["SOFTHSM2_CONF"],
    }
    passphrase = key_passphrase(settings)
    with Token(config) as token:
        for label, name in ((NODE_KEY_LABEL, "sign.key"), ("log-checkpoint", "log.key")):
            token.import_key(label, load_private_key(settings.data_dir / "node" / name, passphrase))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    async with Node(settings, clock=FixedClock(SystemClock().now())) as node:
        await enrol_demo(settings)
        before = await _signed_answer(node, register=True)
    old = _signing_cert_sha256(settings)
    await _rotate(settings, **env)
    with Token(config) as token:
        labels = {key.label for key in token.key_pairs()}
    assert {NODE_KEY_LABEL, f"{NODE_KEY_LABEL}-retired-{old[:16]}"} <= labels
    assert f"{NODE_KEY_LABEL}-next" not in labels
    async with Node(settings, clock=FixedClock(SystemClock().now())) as node:
        after = await _signed_answer(node, register=False)
    _check(settings, before)
    _check(settings, after)
    assert _signing_cert_sha256(settings) != old
