"""A node whose signing keys live only in a PKCS#11 token (SoftHSM2): with the key files
gone from the data dir, it signs answers and checkpoints through the token, and refuses
to start when the token lacks a key or holds the wrong one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cli_helpers import atongban, cli_env
from tests.conftest import client_for, enrol_demo
from tests.stories.restaurant import BUSINESS_LICENCE_CLAIMS, COMPANY, COMPANY_USCC, ENTERPRISE
from tongban.client import ExchangeError, verify_answer
from tongban.exchange.audit.verify import verify_log
from tongban.exchange.datadir import (
    CHECKPOINT_KEY_LABEL,
    NODE_KEY_LABEL,
    ca_certificate_pem,
    key_passphrase,
    log_origin,
)
from tongban.exchange.errors import DataDirUnusable
from tongban.exchange.node import Node
from tongban.exchange.settings import Settings
from tongban.signing import TokenKeyMissing, generate_private_key, load_private_key
from tongban.signing.clock import FixedClock, SystemClock
from tongban.signing.pkcs11 import Token, TokenConfig
from tongban.signing.softhsm import SoftHsm


@pytest.fixture
def token(softhsm: SoftHsm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TokenConfig:
    config = softhsm.new_token()
    (tmp_path / "pin").write_text(config.pin)
    monkeypatch.setenv("TONGBAN_PKCS11_MODULE", str(config.module))
    monkeypatch.setenv("TONGBAN_PKCS11_TOKEN", config.token_label)
    monkeypatch.setenv("TONGBAN_PKCS11_PIN_FILE", str(tmp_path / "pin"))
    return config


def _node_env(settings: Settings) -> dict[str, str]:
    """The environment a CLI command needs to reach this node's database and token."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name.startswith(("TONGBAN_PKCS11_", "SOFTHSM2_"))
    }
    assert settings.database_url is not None
    env["TONGBAN_DATABASE_URL"] = settings.database_url.get_secret_value()
    env["TONGBAN_KEY_PASSPHRASE"] = key_passphrase(settings).decode()
    return env


def _move_keys_into(config: TokenConfig, settings: Settings, *, keep_files: bool = False) -> None:
    passphrase = key_passphrase(settings)
    with Token(config) as token:
        for label, name in ((NODE_KEY_LABEL, "sign.key"), (CHECKPOINT_KEY_LABEL, "log.key")):
            path = settings.data_dir / "node" / name
            token.import_key(label, load_private_key(path, passphrase))
            if not keep_files:
                path.unlink()


async def test_answers_and_checkpoints_are_signed_by_the_token(
    settings: Settings, token: TokenConfig
) -> None:
    _move_keys_into(token, settings)
    async with Node(settings, clock=FixedClock(SystemClock().now())) as node:
        assert node.db is not None
        await enrol_demo(settings)
        async with client_for(node, "samr", "S-0001") as samr:
            await samr.register_dataset(ENTERPRISE, publish=True)
            await samr.publish_records("samr.enterprise", [(COMPANY_USCC, COMPANY)])
            answer = await samr.query(
                "samr.enterprise",
                [COMPANY_USCC],
                fields=["name"],
                purpose="核验",
                case_id="SL-0001",
                sign=True,
            )
        signed = verify_answer(
            answer.signed_payload,
            answer.signature,
            ca_pem=ca_certificate_pem(settings),
            now=SystemClock().now(),
        )
        assert signed["records"][0]["fields"] == {"name": COMPANY["name"]}
        assert node.checkpointer is not None
        await node.checkpointer.sign_now()
        report = await verify_log(
            node.db.pool, origin=log_origin(settings), verifier=node.checkpointer.public_key
        )
        assert report.checkpoints >= 1
    # Nothing was written back to disk: the keys are the token's alone.
    assert not (settings.data_dir / "node" / "sign.key").exists()
    assert not (settings.data_dir / "node" / "log.key").exists()


async def test_a_token_without_the_keys_stops_the_start(
    settings: Settings, token: TokenConfig
) -> None:
    with pytest.raises(TokenKeyMissing, match="tongban key import node-sign"):
        await Node(settings).start()
    with Token(token) as held:
        held.import_key(NODE_KEY_LABEL, generate_private_key("P-256"))  # not the certificate's
    with pytest.raises(DataDirUnusable, match="is not the key of"):
        await Node(settings).start()


async def _licence_round_trip(node: Node) -> None:
    """Issue, verify online (QR and SD-JWT), render the sealed PDF and check its seal."""
    async with client_for(node, "samr", "SC-0001") as samr:
        licence = await samr.issue_licence(
            "business-licence", BUSINESS_LICENCE_CLAIMS, case_id="DJ-2026-1", reason="设立登记"
        )
        assert (await samr.verify_licence(licence.qr)).verified
        assert (await samr.verify_licence(licence.sd_jwt)).verified
        pdf = await samr.render_licence(licence.number)
        report = await samr.verify_pdf(pdf)
        assert report.verified, report
        resealed = await samr.verify_pdf(await samr.seal_pdf(pdf, reason="复核"))
        assert resealed.verified, resealed


async def _key_homes(node: Node) -> dict[str, str | None]:
    assert node.db is not None
    rows = await node.db.pool.fetch("SELECT holder, key_pem, key_label FROM seal_key")
    for row in rows:
        assert (row["key_pem"] is None) != (row["key_label"] is None)
    return {row["holder"]: row["key_label"] for row in rows}


async def test_seal_keys_enrolled_with_a_token_live_in_it(
    settings: Settings, token: TokenConfig
) -> None:
    _move_keys_into(token, settings)
    async with Node(settings, clock=FixedClock(SystemClock().now())) as node:
        assert node.db is not None
        await enrol_demo(settings)
        homes = await _key_homes(node)
        assert homes["#status-list"] is not None
        assert homes["samr"] is not None
        assert all(label is not None for label in homes.values()), homes
        await _licence_round_trip(node)
    with Token(token) as held:
        labels = {key.label for key in held.key_pairs()}
    assert set(homes.values()) <= labels


async def test_a_node_without_the_token_says_where_the_seal_is(
    settings: Settings, token: TokenConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seals enrolled into the token; then a node configured without it.
    _move_keys_into(token, settings, keep_files=True)
    async with Node(settings, clock=FixedClock(SystemClock().now())) as node:
        assert node.db is not None
        await enrol_demo(settings)
    monkeypatch.delenv("TONGBAN_PKCS11_MODULE")
    async with (
        Node(settings, clock=FixedClock(SystemClock().now())) as node,
        client_for(node, "samr", "SC-0001") as samr,
    ):
        with pytest.raises(ExchangeError) as refused:
            await samr.seal_pdf(b"%PDF-1.7 not really", reason="x")
    assert refused.value.reason == "TOKEN_UNAVAILABLE"
    assert "PKCS#11 token" in refused.value.message


async def test_seal_keys_held_before_move_into_the_token(
    settings: Settings, token: TokenConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TONGBAN_PKCS11_MODULE")
    async with Node(settings, clock=FixedClock(SystemClock().now())) as node:
        assert node.db is not None
        await enrol_demo(settings)
        assert set((await _key_homes(node)).values()) == {None}
    monkeypatch.setenv("TONGBAN_PKCS11_MODULE", str(token.module))
    moved = await atongban("seal", "move-to-token", "--data-dir", str(settings.data_dir), "--json",
                           env=cli_env(**_node_env(settings)))  # fmt: skip
    assert moved.code == 0, moved.stderr
    again = await atongban("seal", "move-to-token", "--data-dir", str(settings.data_dir), "--json",
                           env=cli_env(**_node_env(settings)))  # fmt: skip
    assert again.json()["keys"] == moved.json()["keys"]  # idempotent
    _move_keys_into(token, settings)
    async with Node(settings, clock=FixedClock(SystemClock().now())) as node:
        homes = await _key_homes(node)
        assert None not in homes.values()
        assert {holder: [label] for holder, label in homes.items()} == moved.json()["keys"]
        await _licence_round_trip(node)
