from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from tongban.signing import (
    KeyAlgorithm,
    KeyFileInvalid,
    KeyFileMissing,
    KeyPassphraseWrong,
    LocalSigner,
    generate_private_key,
    load_private_key,
    private_key_pem,
    public_key_fingerprint,
    save_private_key,
)

PASSPHRASE = b"correct horse battery staple"
ALGORITHMS: list[KeyAlgorithm] = ["P-256", "Ed25519"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write_encrypted(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSPHRASE),
        )
    )


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_save_load_round_trip(tmp_path: Path, algorithm: KeyAlgorithm) -> None:
    key = generate_private_key(algorithm)
    path = tmp_path / "keys" / "nested" / "dept.key"
    save_private_key(path, key, PASSPHRASE)

    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert _mode(path.parent.parent) == 0o700
    loaded = load_private_key(path, PASSPHRASE)
    assert private_key_pem(loaded) == private_key_pem(key)


def test_save_overwrites_atomically_without_leftovers(tmp_path: Path) -> None:
    path = tmp_path / "dept.key"
    save_private_key(path, generate_private_key(), PASSPHRASE)
    second = generate_private_key("Ed25519")
    save_private_key(path, second, PASSPHRASE)
    assert [p.name for p in tmp_path.iterdir()] == ["dept.key"]
    assert _mode(path) == 0o600
    assert private_key_pem(load_private_key(path, PASSPHRASE)) == private_key_pem(second)


def test_save_refuses_empty_passphrase(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty passphrase"):
        save_private_key(tmp_path / "k", generate_private_key(), b"")
    assert not (tmp_path / "k").exists()


def test_wrong_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "dept.key"
    save_private_key(path, generate_private_key(), PASSPHRASE)
    with pytest.raises(KeyPassphraseWrong) as info:
        load_private_key(path, b"not it")
    assert info.value.reason == "KEY_PASSPHRASE_WRONG"
    assert info.value.status == "FAILED_PRECONDITION"
    assert str(path) in info.value.message
    with pytest.raises(KeyPassphraseWrong):
        load_private_key(path, b"")


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileMissing) as info:
        load_private_key(tmp_path / "absent.key", PASSPHRASE)
    assert info.value.reason == "KEY_FILE_MISSING"


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"this is not a key\n",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ],
)
def test_garbage_key_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(KeyFileInvalid) as info:
        load_private_key(path, PASSPHRASE)
    assert info.value.reason == "KEY_FILE_INVALID"


def test_unencrypted_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.key"
    path.write_bytes(private_key_pem(generate_private_key()))
    with pytest.raises(KeyFileInvalid, match="PRIVATE KEY block"):
        load_private_key(path, PASSPHRASE)


def test_rsa_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rsa.key"
    _write_encrypted(path, rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(
        KeyFileInvalid, match="RSA-2048 key, but Tongban only uses P-256 and Ed25519"
    ):
        load_private_key(path, PASSPHRASE)


def test_p384_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p384.key"
    _write_encrypted(path, ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(KeyFileInvalid, match="secp384r1"):
        load_private_key(path, PASSPHRASE)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileInvalid, match="could not be read"):
        load_private_key(tmp_path, PASSPHRASE)


def test_private_key_pem_is_plain_pkcs8() -> None:
    key = generate_private_key()
    pem = private_key_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert serialization.load_pem_private_key(pem, password=None).public_key() == key.public_key()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_public_key_fingerprint_is_sha256_of_spki(algorithm: KeyAlgorithm) -> None:
    public_key = generate_private_key(algorithm).public_key()
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert public_key_fingerprint(public_key) == hashlib.sha256(der).digest()


def test_local_signer_es256_signature_is_raw_r_s() -> None:
    key = generate_private_key("P-256")
    signer = LocalSigner(key)
    assert signer.algorithm == "ES256"
    assert signer.private_key is key
    signature = signer.sign(b"data")
    assert len(signature) == 64
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    public_key = signer.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(der, b"data", ec.ECDSA(hashes.SHA256()))


def test_local_signer_eddsa() -> None:
    signer = LocalSigner(generate_private_key("Ed25519"))
    assert signer.algorithm == "EdDSA"
    signature = signer.sign(b"data")
    assert len(signature) == 64
    public_key = signer.public_key()
    assert isinstance(public_key, ed25519.Ed25519PublicKey)
    public_key.verify(signature, b"data")


def test_local_signer_refuses_other_curves() -> None:
    with pytest.raises(ValueError, match="secp384r1"):
        LocalSigner(ec.generate_private_key(ec.SECP384R1()))
