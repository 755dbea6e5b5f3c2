"""``tongban key generate|list|import`` as an operator runs them, against a SoftHSM2 token."""

from __future__ import annotations

from pathlib import Path

from tests.cli_helpers import cli_env, tongban
from tongban.signing import load_private_key, public_key_fingerprint
from tongban.signing.pkcs11 import Token, TokenConfig
from tongban.signing.softhsm import SoftHsm


def _env(config: TokenConfig, pin_file: Path, **extra: str) -> dict[str, str]:
    pin_file.write_text(config.pin + "\n")
    token = {
        "TONGBAN_PKCS11_MODULE": str(config.module),
        "TONGBAN_PKCS11_TOKEN": config.token_label,
        "TONGBAN_PKCS11_PIN_FILE": str(pin_file),
    }
    return cli_env(**{**token, **extra})


def test_generate_and_list(softhsm: SoftHsm, tmp_path: Path) -> None:
    config = softhsm.new_token()
    env = _env(config, tmp_path / "pin")
    made = tongban("key", "generate", "seal-samr", "--json", env=env)
    assert made.code == 0, made.stderr
    assert made.json()["key"]["algorithm"] == "P-256"
    edwards = tongban("key", "generate", "checkpoint", "--algorithm", "Ed25519", "--json", env=env)
    assert edwards.code == 0, edwards.stderr
    listed = tongban("key", "list", "--json", env=env).json()
    assert [k["label"] for k in listed["keys"]] == ["checkpoint", "seal-samr"]
    assert listed["keys"][1]["fingerprint"] == made.json()["key"]["fingerprint"]
    human = tongban("key", "list", env=env)
    assert "seal-samr  P-256  sha256 " in human.stdout
    again = tongban("key", "generate", "seal-samr", "--json", env=env)
    assert again.code == 1
    assert again.json()["reason"] == "TOKEN_KEY_EXISTS"


def test_import_a_data_dir_key(softhsm: SoftHsm, tmp_path: Path) -> None:
    config = softhsm.new_token()
    data_dir = tmp_path / "data"
    assert tongban("init", "--data-dir", str(data_dir)).code == 0
    key_file = data_dir / "node" / "sign.key"
    env = _env(config, tmp_path / "pin")
    wrong = tongban(
        "key", "import", "node", str(key_file), "--data-dir", str(data_dir), "--json",
        env={**env, "TONGBAN_KEY_PASSPHRASE": "not the passphrase"},
    )  # fmt: skip
    assert wrong.code == 1
    assert wrong.json()["reason"] == "KEY_PASSPHRASE_WRONG"
    assert tongban("key", "list", "--json", env=env).json()["keys"] == []  # nothing half-done
    done = tongban("key", "import", "node", str(key_file), "--data-dir", str(data_dir), env=env)
    assert done.code == 0, done.stderr
    assert "still holds the key" in done.stdout
    passphrase = (data_dir / "secrets" / "key-passphrase").read_bytes().strip()
    original = load_private_key(key_file, passphrase)
    fingerprint = public_key_fingerprint(original.public_key()).hex()
    assert fingerprint in done.stdout
    with Token(config) as token:
        assert token.signer("node").public_key() == original.public_key()


def test_refusals_are_one_sentence_and_an_exit_code(softhsm: SoftHsm, tmp_path: Path) -> None:
    config = softhsm.new_token()
    cases = {
        "TOKEN_PIN_WRONG": _env(
            TokenConfig(config.module, config.token_label, "999999"), tmp_path / "p1"
        ),
        "TOKEN_UNAVAILABLE": _env(
            config, tmp_path / "p2", TONGBAN_PKCS11_MODULE=str(tmp_path / "none.so")
        ),
    }
    cases_no_token = _env(config, tmp_path / "p3", TONGBAN_PKCS11_TOKEN="nobody")
    for reason, env in [
        *cases.items(),
        ("TOKEN_UNAVAILABLE", cases_no_token),
        ("TOKEN_UNAVAILABLE", cli_env()),
    ]:
        json_out = tongban("key", "list", "--json", env=env)
        assert json_out.code == 1
        assert json_out.json()["reason"] == reason
        human = tongban("key", "list", env=env)
        assert human.code == 1
        assert human.stderr.startswith("tongban: ")
        assert "Traceback" not in human.stderr
