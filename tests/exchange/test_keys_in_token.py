"""A node whose signing keys live only in a PKCS#11 token (SoftHSM2): with the key files
gone from the data dir, it signs answers and checkpoints through the token, and refuses
to start when the token lacks a key or holds the wrong one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import client_for
from tests.softhsm import SoftHsm
from tests.stories.restaurant import COMPANY, COMPANY_USCC, ENTERPRISE
from tongban.client import verify_answer
from tongban.exchange.audit.verify import verify_log
from tongban.exchange.datadir import (
    CHECKPOINT_KEY_LABEL,
    NODE_KEY_LABEL,
    ca_certificate_pem,
    key_passphrase,
    log_origin,
)
from tongban.exchange.enrolment import enrol_demo_departments
from tongban.exchange.errors import DataDirUnusable
from tongban.exchange.node import Node
from tongban.exchange.settings import Settings
from tongban.signing import TokenKeyMissing, generate_private_key, load_private_key
from tongban.signing.clock import FixedClock, SystemClock
from tongban.signing.pkcs11 import Token, TokenConfig


@pytest.fixture
def token(
    softhsm: SoftHsm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> TokenConfig:
    config = softhsm.new_token()
    (tmp_path / "pin").write_text(config.pin)
    monkeypatch.setenv("TONGBAN_PKCS11_MODULE", str(config.module))
    monkeypatch.setenv("TONGBAN_PKCS11_TOKEN", config.token_label)
    monkeypatch.setenv("TONGBAN_PKCS11_PIN_FILE", str(tmp_path / "pin"))
    return config


def _move_keys_into(config: TokenConfig, settings: Settings) -> None:
    passphrase = key_passphrase(settings)
    with Token(config) as token:
        for label, name in ((NODE_KEY_LABEL, "sign.key"), (CHECKPOINT_KEY_LABEL, "log.key")):
            path = settings.data_dir / "node" / name
            token.import_key(label, load_private_key(path, passphrase))
            path.unlink()


async def test_answers_and_checkpoints_are_signed_by_the_token(
    settings: Settings, token: TokenConfig
) -> None:
    _move_keys_into(token, settings)
    async with Node(settings, clock=FixedClock(SystemClock().now())) as node:
        assert node.db is not None
        await enrol_demo_departments(node.db, settings, SystemClock().now())
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
