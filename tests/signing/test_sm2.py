"""SM2/SM3: the standard's test vectors, and interoperability both ways with OpenSSL 3's CLI."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tongban.signing import KeyFileInvalid, KeyFileMissing, KeyPassphraseWrong, SignatureInvalid
from tongban.signing.sm2 import (
    DEFAULT_SIGNER_ID,
    Sm2PrivateKey,
    Sm2PublicKey,
    load_sm2_private_key,
    save_sm2_private_key,
    sm3,
)

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl CLI is not installed")
DISTID = "distid:" + DEFAULT_SIGNER_ID.decode()

# GM/T 0003.5-2012 (GB/T 32918.5-2017) Annex A, signature example on the recommended curve.
VECTOR_D = "3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8"
VECTOR_X = "09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020"
VECTOR_Y = "CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13"
VECTOR_R = "F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3"
VECTOR_S = "B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA"
VECTOR_M = b"message digest"


def _openssl(*args: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    assert OPENSSL is not None
    return subprocess.run([OPENSSL, *args], input=data, capture_output=True, check=False)


def test_sm3_vectors_of_gbt_32905() -> None:
    assert sm3(b"abc").hex() == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    assert (
        sm3(b"abcd" * 16).hex()
        == "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"
    )


def test_standard_key_and_signature_vector() -> None:
    key = Sm2PrivateKey.from_secret(bytes.fromhex(VECTOR_D))
    assert key.public.point == bytes.fromhex(VECTOR_X + VECTOR_Y)
    raw = bytes.fromhex(VECTOR_R + VECTOR_S)
    key.public.verify_raw(raw, VECTOR_M)
    with pytest.raises(SignatureInvalid):
        key.public.verify_raw(raw, VECTOR_M, signer_id=b"ALICE123@YAHOO.COM")
    with pytest.raises(SignatureInvalid):
        key.public.verify_raw(raw, b"message digesT")
    # Our own signature over the same message verifies, and is randomised.
    assert key.sign(VECTOR_M) != key.sign(VECTOR_M)
    key.public.verify(key.sign(VECTOR_M), VECTOR_M)


def test_round_trips_and_tampering() -> None:
    key = Sm2PrivateKey.generate()
    data = b"\x00" * 300
    key.public.verify(key.sign(data), data)
    raw = key.sign_raw(data)
    assert len(raw) == 64
    key.public.verify_raw(raw, data)
    other = Sm2PrivateKey.generate()
    with pytest.raises(SignatureInvalid):
        other.public.verify(key.sign(data), data)
    with pytest.raises(SignatureInvalid):
        key.public.verify(key.sign(data, signer_id=b"someone else"), data)
    for garbage in (b"", b"\x30\x00", b"\x30" + bytes(70), bytes(range(72))):
        with pytest.raises(SignatureInvalid):
            key.public.verify(garbage, data)
    with pytest.raises(SignatureInvalid, match="64 bytes"):
        key.public.verify_raw(raw[:63], data)
    assert Sm2PublicKey.from_spki_der(key.public.spki_der()) == key.public
    assert Sm2PublicKey.from_pem(key.public.pem()) == key.public
    assert Sm2PrivateKey.from_pkcs8_der(key.pkcs8_der()) == key
    assert Sm2PrivateKey.from_secret(key.secret) == key


def test_bad_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="not on the SM2 curve"):
        Sm2PublicKey(bytes(63) + b"\x01")
    with pytest.raises(ValueError, match="64 bytes"):
        Sm2PublicKey(bytes(65))
    with pytest.raises(ValueError, match="scalar"):
        Sm2PrivateKey.from_secret(bytes(32))
    p256 = ec.generate_private_key(ec.SECP256R1())
    spki = p256.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="not on the SM2 curve"):
        Sm2PublicKey.from_spki_der(spki)
    pkcs8 = p256.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="not on the SM2 curve"):
        Sm2PrivateKey.from_pkcs8_der(pkcs8)
    with pytest.raises(ValueError, match="PUBLIC KEY"):
        Sm2PublicKey.from_pem(b"nothing here")


def test_key_files(tmp_path: Path) -> None:
    key = Sm2PrivateKey.generate()
    path = tmp_path / "keys" / "seal.key"
    save_sm2_private_key(path, key, b"correct horse")
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_sm2_private_key(path, b"correct horse") == key
    with pytest.raises(KeyPassphraseWrong):
        load_sm2_private_key(path, b"wrong")
    with pytest.raises(KeyPassphraseWrong):
        load_sm2_private_key(path, b"")
    with pytest.raises(KeyFileMissing):
        load_sm2_private_key(tmp_path / "absent.key", b"x")
    (tmp_path / "plain.key").write_bytes(key.public.pem())
    with pytest.raises(KeyFileInvalid):
        load_sm2_private_key(tmp_path / "plain.key", b"x")
    with pytest.raises(ValueError, match="empty passphrase"):
        key.encrypted_pem(b"")


@needs_openssl
def test_openssl_verifies_what_tongban_signs(tmp_path: Path) -> None:
    key = Sm2PrivateKey.generate()
    message = b"tongban checkpoint body\n" * 20
    (tmp_path / "pub.pem").write_bytes(key.public.pem())
    (tmp_path / "msg").write_bytes(message)
    (tmp_path / "sig").write_bytes(key.sign(message))
    args = ["pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "pub.pem"), "-rawin"]
    args += ["-digest", "sm3", "-pkeyopt", DISTID, "-in", str(tmp_path / "msg")]
    ok = _openssl(*args, "-sigfile", str(tmp_path / "sig"))
    assert ok.returncode == 0, ok.stderr
    assert b"Signature Verified Successfully" in ok.stdout
    (tmp_path / "msg").write_bytes(message + b"x")
    assert _openssl(*args, "-sigfile", str(tmp_path / "sig")).returncode != 0


@needs_openssl
def test_tongban_verifies_what_openssl_signs(tmp_path: Path) -> None:
    key_pem = tmp_path / "k.pem"
    assert _openssl("genpkey", "-algorithm", "SM2", "-out", str(key_pem)).returncode == 0
    pub = _openssl("pkey", "-in", str(key_pem), "-pubout")
    assert pub.returncode == 0, pub.stderr
    public = Sm2PublicKey.from_pem(pub.stdout)
    message = b"signed by openssl"
    (tmp_path / "msg").write_bytes(message)
    signed = _openssl(
        "pkeyutl", "-sign", "-inkey", str(key_pem), "-rawin", "-digest", "sm3",
        "-pkeyopt", DISTID, "-in", str(tmp_path / "msg"),
    )  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    public.verify(signed.stdout, message)
    with pytest.raises(SignatureInvalid):
        public.verify(signed.stdout, message, signer_id=b"")


@needs_openssl
def test_key_files_are_openssl_key_files(tmp_path: Path) -> None:
    # OpenSSL reads the encrypted PKCS#8 we write ...
    key = Sm2PrivateKey.generate()
    save_sm2_private_key(tmp_path / "ours.pem", key, b"pass phrase")
    out = _openssl(
        "pkey", "-in", str(tmp_path / "ours.pem"), "-passin", "pass:pass phrase", "-pubout"
    )
    assert out.returncode == 0, out.stderr
    assert Sm2PublicKey.from_pem(out.stdout) == key.public
    # ... and we read what OpenSSL encrypts.
    plain = tmp_path / "theirs-plain.pem"
    assert _openssl("genpkey", "-algorithm", "SM2", "-out", str(plain)).returncode == 0
    theirs = tmp_path / "theirs.pem"
    enc = _openssl(
        "pkey", "-in", str(plain), "-aes256", "-passout", "pass:secret", "-out", str(theirs)
    )
    assert enc.returncode == 0, enc.stderr
    loaded = load_sm2_private_key(theirs, b"secret")
    pub = _openssl("pkey", "-in", str(plain), "-pubout")
    assert Sm2PublicKey.from_pem(pub.stdout) == loaded.public
