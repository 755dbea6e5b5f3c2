"""Seal rotation without downtime, as an operator runs it (`tongban key rotate|revoke|seals`)
against a running node: the trust list names the new seal during the overlap, the old one
signs until the new one takes over, what the old one signed keeps verifying, and a revoked
seal makes what it signed fail with SEAL_REVOKED."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.cli_helpers import atongban, cli_env
from tests.conftest import client_for
from tests.stories.restaurant import BUSINESS_LICENCE_CLAIMS
from tongban.exchange.datadir import key_passphrase
from tongban.exchange.node import Node
from tongban.signing import FixedClock, certificate_fingerprint

SAMR = "samr"


def _env(node: Node) -> dict[str, str]:
    settings = node.settings
    assert settings.database_url is not None
    return cli_env(
        TONGBAN_DATABASE_URL=settings.database_url.get_secret_value(),
        TONGBAN_KEY_PASSPHRASE=key_passphrase(settings).decode(),
    )


async def _cli(node: Node, *args: str) -> dict[str, object]:
    done = await atongban(
        *args, "--data-dir", str(node.settings.data_dir), "--json", env=_env(node)
    )
    assert done.code == 0, done.stdout + done.stderr
    await node.caches_settled()  # the node has seen what the command changed (seals)
    result: dict[str, object] = done.json()
    return result


async def _issue(node: Node) -> tuple[str, str, bytes]:
    """Issue a business licence; return its QR, SD-JWT and its seal's certificate sha256."""
    async with client_for(node, SAMR, "SC-0001") as samr:
        licence = await samr.issue_licence(
            "business-licence", BUSINESS_LICENCE_CLAIMS, case_id="DJ-ROT", reason="设立登记"
        )
    assert node.licensing is not None
    seal = await node.licensing.vault.get(SAMR)
    return licence.qr, licence.sd_jwt, certificate_fingerprint(seal.certificate)


async def _verify(node: Node, text: str) -> tuple[bool, str]:
    async with client_for(node, SAMR, "SC-0001") as samr:
        result = await samr.verify_licence(text)
    return result.verified, result.reason


async def test_rotation_overlaps_then_takes_over(node: Node) -> None:
    assert isinstance(node.clock, FixedClock)
    assert node.licensing is not None
    old_qr, old_sd, old_seal = await _issue(node)
    rotated = await _cli(node, "key", "rotate", "seal", SAMR, "--overlap", "2")
    new_seal = bytes.fromhex(str(rotated["seal_sha256"]))
    takes_over = datetime.fromisoformat(str(rotated["signs_from"]))
    # During the overlap: both in the trust list, the old key still signs.
    listed = (await node.licensing.trust.trust_list()).certificates_for(SAMR)
    assert {certificate_fingerprint(c) for c in listed} == {old_seal, new_seal}
    node.clock.set(takes_over - timedelta(minutes=1))
    _, _, signer = await _issue(node)
    assert signer == old_seal
    listed_seals = (await _cli(node, "key", "seals", SAMR))["seals"]
    assert isinstance(listed_seals, list)
    states = {s["sha256"]: s["state"] for s in listed_seals}
    assert states == {old_seal.hex(): "active", new_seal.hex(): "next"}
    # After it: the new key signs; what the old one signed still verifies.
    node.clock.set(takes_over + timedelta(minutes=1))
    new_qr, new_sd, signer = await _issue(node)
    assert signer == new_seal
    for text in (old_qr, old_sd, new_qr, new_sd):
        assert await _verify(node, text) == (True, "")
    # (The CLI reads the wall clock; the node's clock has moved on: ask the node's vault.)
    states = {k.fingerprint: k.state for k in await node.licensing.vault.keys(SAMR)}
    assert states == {old_seal: "retired", new_seal: "active"}

    # Revoking the old key: what it signed fails with a reason; the new key's still holds.
    await _cli(node, "key", "revoke", "seal", SAMR, old_seal.hex(), "--reason", "私钥疑似泄露")
    for text in (old_qr, old_sd):
        verified, reason = await _verify(node, text)
        assert (verified, reason) == (False, "SEAL_REVOKED")
    for text in (new_qr, new_sd):
        assert await _verify(node, text) == (True, "")
    trust_list = await node.licensing.trust.trust_list()
    assert {certificate_fingerprint(c) for c in trust_list.certificates_for(SAMR)} == {new_seal}
    assert trust_list.revoked_seal(old_seal) is not None


async def test_bad_rotation_requests(node: Node) -> None:
    env = _env(node)
    data = ("--data-dir", str(node.settings.data_dir), "--json")
    cases = [
        (("key", "rotate", "seal", "nobody"), "DEPARTMENT_NOT_FOUND"),
        (("key", "rotate", "seal", SAMR, "--overlap", "-1"), "INVALID_ARGUMENT"),
        (("key", "revoke", "seal", SAMR, "abc", "--reason", "x"), "INVALID_ARGUMENT"),
        (("key", "revoke", "seal", SAMR, "00" * 32, "--reason", "x"), "SEAL_NOT_ENROLLED"),
        (("key", "revoke", "seal", SAMR, "00" * 32, "--reason", " "), "INVALID_ARGUMENT"),
    ]
    for args, reason in cases:
        done = await atongban(*args, *data, env=env)
        assert done.code == 1, (args, done.stdout, done.stderr)
        assert done.json()["reason"] == reason, (args, done.stdout)
    assert node.licensing is not None
    assert len(await node.licensing.vault.keys(SAMR)) == 1  # nothing half-written


async def test_the_seals_are_read_once_until_one_changes(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verification asks for the trust list on every call; the seals it names are read
    from the database once, and again after a change another session makes (here the
    operator's CLI revoking a seal), notified to every node: from then on, what the
    revoked seal signed fails."""
    assert node.licensing is not None
    vault = node.licensing.vault
    reads = 0
    read = vault.trust

    async def counted(now: datetime) -> Any:
        nonlocal reads
        reads += 1
        return await read(now)

    monkeypatch.setattr(vault, "trust", counted)
    qr, _, seal = await _issue(node)
    for _ in range(5):
        assert await _verify(node, qr) == (True, "")
    assert reads == 1
    await _cli(node, "key", "revoke", "seal", SAMR, seal.hex(), "--reason", "私钥疑似泄露")
    # samr's only seal: the list now names no seal of samr's at all.
    assert await _verify(node, qr) == (False, "SIGNER_UNTRUSTED")
    assert reads == 2
