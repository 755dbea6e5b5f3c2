"""SM2 certificates: issued here, read by cryptography, verified by us and by `openssl verify`."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tongban.signing import CertificateExpired, CertificateInvalid, certificate_pem
from tongban.signing.sm2 import SM3_WITH_SM2_OID, Sm2PrivateKey
from tongban.signing.sm2_certs import (
    create_sm2_root_ca,
    issue_sm2_seal_certificate,
    sm2_public_key,
    verify_sm2_certificate,
)

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl CLI is not installed")
NOW = datetime.now(UTC).replace(microsecond=0)


def _chain() -> tuple[Sm2PrivateKey, x509.Certificate, Sm2PrivateKey, x509.Certificate]:
    ca_key, seal_key = Sm2PrivateKey.generate(), Sm2PrivateKey.generate()
    root = create_sm2_root_ca(common_name="Tongban SM2 Root", key=ca_key, now=NOW)
    seal = issue_sm2_seal_certificate(
        ca_cert=root,
        ca_key=ca_key,
        code="samr",
        name="市场监督管理局",
        public_key=seal_key.public,
        now=NOW,
    )
    return ca_key, root, seal_key, seal


def test_profile_and_our_check() -> None:
    _, root, seal_key, seal = _chain()
    assert seal.signature_algorithm_oid.dotted_string == SM3_WITH_SM2_OID
    assert sm2_public_key(seal) == seal_key.public
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    san = seal.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:tongban:dept:samr"]
    usage = seal.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert usage.content_commitment
    assert not usage.key_cert_sign
    assert verify_sm2_certificate(seal, [root], NOW) == seal_key.public
    # Not yet valid, expired, the wrong root, a leaf posing as a root.
    with pytest.raises(CertificateExpired):
        verify_sm2_certificate(seal, [root], NOW - timedelta(days=1))
    with pytest.raises(CertificateExpired):
        verify_sm2_certificate(seal, [root], NOW + timedelta(days=1826))
    _, other_root, _, _ = _chain()
    with pytest.raises(CertificateInvalid, match="does not verify"):
        verify_sm2_certificate(seal, [other_root], NOW)
    with pytest.raises(CertificateInvalid, match="not issued"):
        verify_sm2_certificate(seal, [seal], NOW)


def test_tampered_certificate_fails() -> None:
    _, root, _, seal = _chain()
    der = bytearray(seal.public_bytes(serialization.Encoding.DER))
    der[der.index(b"samr") + 1] ^= 0x01  # OU=samr -> OU=s`mr
    forged = x509.load_der_x509_certificate(bytes(der))
    with pytest.raises(CertificateInvalid):
        verify_sm2_certificate(forged, [root], NOW)


def test_refusals_at_issue() -> None:
    ca_key, root, seal_key, _ = _chain()
    with pytest.raises(ValueError, match="Department code"):
        issue_sm2_seal_certificate(
            ca_cert=root, ca_key=ca_key, code="SAMR!", name="x", public_key=seal_key.public, now=NOW
        )
    with pytest.raises(ValueError, match="not the private key"):
        issue_sm2_seal_certificate(
            ca_cert=root,
            ca_key=seal_key,
            code="samr",
            name="x",
            public_key=seal_key.public,
            now=NOW,
        )
    with pytest.raises(CertificateExpired):
        issue_sm2_seal_certificate(
            ca_cert=root, ca_key=ca_key, code="samr", name="x", public_key=seal_key.public,
            now=NOW + timedelta(days=3651),
        )  # fmt: skip


@needs_openssl
def test_openssl_reads_and_verifies_them(tmp_path: Path) -> None:
    assert OPENSSL is not None
    _, root, _, seal = _chain()
    (tmp_path / "root.pem").write_bytes(certificate_pem(root))
    (tmp_path / "seal.pem").write_bytes(certificate_pem(seal))
    text = subprocess.run(
        [OPENSSL, "x509", "-in", str(tmp_path / "seal.pem"), "-noout", "-text"],
        capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    assert "SM2-with-SM3" in text
    assert "URI:urn:tongban:dept:samr" in text
    # OpenSSL 3.0 checks certificate signatures with an empty SM2 ID unless told the
    # standard one (GM/T 0015 uses 1234567812345678; docs/keys.md).
    verify = [OPENSSL, "verify", "-vfyopt", "distid:1234567812345678"]
    ok = subprocess.run(
        [*verify, "-CAfile", str(tmp_path / "root.pem"), str(tmp_path / "seal.pem")],
        capture_output=True, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip().endswith(b"seal.pem: OK")
    _, other_root, _, _ = _chain()
    (tmp_path / "other.pem").write_bytes(certificate_pem(other_root))
    bad = subprocess.run(
        [*verify, "-CAfile", str(tmp_path / "other.pem"), str(tmp_path / "seal.pem")],
        capture_output=True, check=False,
    )  # fmt: skip
    assert bad.returncode != 0
