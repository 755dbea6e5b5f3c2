"""Checkpoints signed with SM2/SM3 beside Ed25519: made by `tongban key sm2 checkpoint`,
ignored by Ed25519-only verifiers, checked by `audit verify` and by OpenSSL 3's CLI."""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cli_helpers import atongban, cli_env
from tests.conftest import client_for, enrol_demo
from tongban.exchange.audit.note import NoteInvalid, open_checkpoint, read_note
from tongban.exchange.audit.sm2_note import (
    parse_sm2_verifier_key,
    sm2_key_id,
    sm2_signature_status,
    sm2_verifier_key,
)
from tongban.exchange.audit.verify import verify_log
from tongban.exchange.datadir import key_passphrase, log_origin
from tongban.exchange.node import Node
from tongban.exchange.settings import Settings
from tongban.signing import FixedClock, SystemClock
from tongban.signing.sm2 import Sm2PrivateKey

OPENSSL = shutil.which("openssl")


async def _sm2_key(settings: Settings) -> str:
    env = cli_env(TONGBAN_KEY_PASSPHRASE=key_passphrase(settings).decode())
    made = await atongban("key", "sm2", "checkpoint", "--data-dir", str(settings.data_dir),
                          "--json", env=env)  # fmt: skip
    assert made.code == 0, made.stderr
    again = await atongban("key", "sm2", "checkpoint", "--data-dir", str(settings.data_dir),
                           "--json", env=env)  # fmt: skip
    assert again.json() == {**made.json(), "created": False}  # made once, shown after
    vkey: str = made.json()["verifier_key"]
    return vkey


async def test_checkpoints_carry_an_sm2_line_that_openssl_verifies(
    settings: Settings, tmp_path: Path
) -> None:
    vkey = await _sm2_key(settings)
    origin = log_origin(settings)
    name, public = parse_sm2_verifier_key(vkey)
    assert name == origin
    async with Node(settings, clock=FixedClock(SystemClock().now())) as node:
        await enrol_demo(settings)
        async with client_for(node, "tax", "SW-1") as tax:
            await tax.list_datasets()
        assert node.checkpointer is not None
        assert node.checkpointer.sm2_verifier_key == vkey
        row = await node.checkpointer.sign_now()
        assert node.db is not None
        report = await verify_log(
            node.db.pool, origin=origin, verifier=node.checkpointer.public_key,
            sm2_verifier=public,
        )  # fmt: skip
        assert report.sm2_checkpoints == report.checkpoints >= 1
        ed25519 = node.checkpointer.public_key

    # An Ed25519-only verifier (any C2SP client) still opens it: unknown keys are ignored.
    assert open_checkpoint(row.log_note, [(origin, ed25519)], origin=origin).size == row.size
    assert sm2_signature_status(row.log_note, origin, public) is True
    text, signatures = read_note(row.log_note)
    (sm2_line,) = [s for s in signatures if s.key_id == sm2_key_id(origin, public)]

    # Someone else's SM2 key over the same text does not pass for the log's.
    forged = Sm2PrivateKey.generate().sign(text.encode())
    bad = row.log_note.replace(
        sm2_line.line,
        f"\u2014 {origin} {base64.b64encode(sm2_line.key_id + forged).decode()}\n",
    )
    assert sm2_signature_status(bad, origin, public) is False
    assert sm2_signature_status(row.log_note, origin, Sm2PrivateKey.generate().public) is None

    if OPENSSL is None:
        pytest.skip("the openssl CLI is not installed")
    (tmp_path / "text").write_bytes(text.encode())
    (tmp_path / "sig").write_bytes(sm2_line.signature)
    (tmp_path / "pub.pem").write_bytes(public.pem())
    verified = await asyncio.to_thread(
        subprocess.run,
        [OPENSSL, "pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "pub.pem"),
         "-rawin", "-digest", "sm3", "-pkeyopt", "distid:1234567812345678",
         "-in", str(tmp_path / "text"), "-sigfile", str(tmp_path / "sig")],
        capture_output=True, check=False,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_sm2_verifier_keys_are_checked() -> None:
    key = Sm2PrivateKey.generate()
    vkey = sm2_verifier_key("log.example/a", key.public)
    assert parse_sm2_verifier_key(vkey) == ("log.example/a", key.public)
    name, key_id, encoded = vkey.split("+", 2)
    for bad in (
        "no-plus-signs",
        f"{name}+00000000+{encoded}",  # key ID that does not match
        f"{name}+{key_id}+{encoded[:-4]}AAA=",  # a point off the curve, or not canonical
        f"{name}+{key_id}+" + base64.b64encode(b"\x01" + bytes(32)).decode(),  # Ed25519
        f"bad name+{key_id}+{encoded}",
    ):
        with pytest.raises(NoteInvalid):
            parse_sm2_verifier_key(bad)
