"""``tongban witness`` as an operator runs it: init, key, serve (a process of its own,
stopped by signal), status; a node collecting its cosignatures; the witness's state
surviving a restart; its key in a PKCS#11 token."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.cli_helpers import TONGBAN, atongban, cli_env
from tests.exchange.witness.test_node_witnessing import (
    grow,
    kept_size,
    log_vkey,
    outcomes,
    until_kept,
    verify,
)
from tests.exchange.witness.toylog import ToyLog
from tongban.exchange.audit.cosignature import WitnessKey, open_cosignatures
from tongban.exchange.audit.note import key_hash
from tongban.exchange.datadir import log_origin
from tongban.exchange.node import Node
from tongban.exchange.settings import Settings, load_settings
from tongban.signing.clock import FixedClock, SystemClock
from tongban.signing.pkcs11 import TokenConfig
from tongban.signing.softhsm import SoftHsm

pytestmark = pytest.mark.slow


class ServedWitness:
    """``tongban witness serve --json`` in a process of its own."""

    def __init__(self, data_dir: Path, env: dict[str, str], *logs: str) -> None:
        args = [TONGBAN, "witness", "serve", "--json", "--data-dir", str(data_dir)]
        args += ["--listen", "127.0.0.1:0", *(f"--log={vkey}" for vkey in logs)]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"witness serve exited: {self.proc.communicate(timeout=30)}"
        self.ready: dict[str, Any] = json.loads(line)
        self.url: str = self.ready["url"]

    def stop(self) -> tuple[int, list[dict[str, Any]]]:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        return self.proc.returncode, [json.loads(x) for x in out.splitlines() if x.strip()]


def _witness_env(**extra: str) -> dict[str, str]:
    return cli_env(TONGBAN_KEY_PASSPHRASE="witness passphrase", **extra)


def _node_settings(settings: Settings, witnesses: str) -> Settings:
    return load_settings(
        data_dir=settings.data_dir,
        database_url=settings.database_url,
        grpc_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        key_passphrase="test passphrase",
        shutdown_grace_seconds=1.0,
        witnesses=witnesses,
    )


async def test_a_witness_process_cosigns_and_keeps_its_state_across_restarts(
    settings: Settings, tmp_path: Path
) -> None:
    home = tmp_path / "witness"
    env = _witness_env()
    made = await atongban(
        "witness", "init", "--name", "witness.example/cli", "--data-dir", str(home), "--json",
        env=env,
    )  # fmt: skip
    assert made.code == 0, made.stderr
    vkey = made.json()["verifier_key"]
    assert WitnessKey.parse(vkey).name == "witness.example/cli"
    shown = await atongban("witness", "key", "--data-dir", str(home), env=env)
    assert shown.stdout.strip() == vkey
    never = await atongban("witness", "status", "--data-dir", str(home), "--json", env=env)
    assert (never.code, never.json()["reason"]) == (1, "WITNESS_NOT_INITIALISED")
    no_log = await atongban("witness", "serve", "--data-dir", str(home), "--json", env=env)
    assert (no_log.code, no_log.json()["reason"]) == (1, "CONFIG_INVALID")

    served = ServedWitness(home, env, log_vkey(settings))
    try:
        assert served.ready["witness"] == vkey
        assert served.ready["logs"] == [log_origin(settings)]
        node_settings = _node_settings(settings, f"{vkey}@{served.url}")
        async with Node(node_settings, clock=FixedClock(SystemClock().now())) as node:
            first = await grow(node, 4)
            await until_kept(node, WitnessKey.parse(vkey), first)
    finally:
        code, events = served.stop()
    assert code == 0
    assert events[-1] == {"ok": True, "event": "stopped"}

    status = await atongban("witness", "status", "--data-dir", str(home), "--json", env=env)
    assert status.code == 0, status.stderr
    [record] = status.json()["logs"]
    assert (record["origin"], record["size"]) == (log_origin(settings), first)

    # A new witness process on the same data dir: it remembers, so the node (restarted,
    # knowing what it kept) goes on from there without a 409.
    again = ServedWitness(home, env, log_vkey(settings))
    try:
        node_settings = _node_settings(settings, f"{vkey}@{again.url}")
        async with Node(node_settings, clock=FixedClock(SystemClock().now())) as node:
            witness = WitnessKey.parse(vkey)
            second = await grow(node, 3)
            await until_kept(node, witness, second)
            assert outcomes(node, witness, "resync") == 0
            assert outcomes(node, witness, "cosigned") == 1
            assert await kept_size(node, witness) == second
    finally:
        assert again.stop()[0] == 0
    passed = await verify(
        settings, "--witnesses", "1", TONGBAN_WITNESSES=f"{vkey}@http://127.0.0.1:1"
    )
    assert passed.code == 0, passed.stdout + passed.stderr
    assert passed.json()["witnessed"]["size"] == second


async def test_the_witness_key_can_live_in_a_pkcs11_token(softhsm: SoftHsm, tmp_path: Path) -> None:
    config: TokenConfig = softhsm.new_token()
    (tmp_path / "pin").write_text(config.pin)
    env = _witness_env(
        TONGBAN_PKCS11_MODULE=str(config.module),
        TONGBAN_PKCS11_TOKEN=config.token_label,
        TONGBAN_PKCS11_PIN_FILE=str(tmp_path / "pin"),
    )
    home = tmp_path / "witness"
    made = await atongban(
        "witness", "init", "--name", "witness.example/hsm", "--data-dir", str(home), "--json",
        env=env,
    )  # fmt: skip
    assert made.code == 0, made.stderr
    assert "witness-cosign" in made.json()["key"]
    assert not (home / "witness" / "witness.key").exists()
    witness = WitnessKey.parse(made.json()["verifier_key"])
    # Without the token, the witness cannot sign, and says why.
    without = await atongban(
        "witness", "key", "--data-dir", str(home), "--json", env=_witness_env()
    )
    assert (without.code, without.json()["reason"]) == (1, "TOKEN_UNAVAILABLE")

    log = ToyLog("tongban.example/hsm-test/access-log", Ed25519PrivateKey.generate()).grow(3)
    served = ServedWitness(home, env, log.vkey)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{served.url}/add-checkpoint", data=log.request(0)) as answer,
        ):
            assert answer.status == 200
            lines = await answer.text()
    finally:
        assert served.stop()[0] == 0
    found = open_cosignatures(
        log.checkpoint() + lines,
        [witness],
        log_keys=[(log.origin, key_hash(log.origin, log.key.public_key()))],
    )
    assert [c.witness for c in found.valid] == [witness]
