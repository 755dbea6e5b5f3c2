from __future__ import annotations

import hashlib
import ipaddress
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tongban.signing import (
    DOCUMENT_SIGNING,
    CertificateExpired,
    CertificateInvalid,
    PrivateKey,
    certificate_fingerprint,
    certificate_pem,
    create_root_ca,
    department_code,
    generate_private_key,
    issue_department_tls_certificate,
    issue_node_tls_certificate,
    issue_seal_certificate,
    load_pem_certificates,
    save_certificate,
    verify_certificate,
)

NOW = datetime(2025, 6, 1, 8, 0, tzinfo=UTC)
CA_KEY = generate_private_key()
CA = create_root_ca(common_name="Test Exchange Root", key=CA_KEY, now=NOW)
DEPT_NAME = "市市场监督管理局"


def _dept(code: str = "market-supervision", *, key: PrivateKey | None = None) -> x509.Certificate:
    key = key or generate_private_key()
    return issue_department_tls_certificate(
        ca_cert=CA, ca_key=CA_KEY, code=code, name=DEPT_NAME, public_key=key.public_key(), now=NOW
    )


def _seal() -> x509.Certificate:
    return issue_seal_certificate(
        ca_cert=CA,
        ca_key=CA_KEY,
        code="market-supervision",
        name=DEPT_NAME,
        public_key=generate_private_key("Ed25519").public_key(),
        now=NOW,
    )


def _node() -> x509.Certificate:
    return issue_node_tls_certificate(
        ca_cert=CA,
        ca_key=CA_KEY,
        node_name="node-1",
        public_key=generate_private_key().public_key(),
        hostnames=["exchange.gov.example", "localhost"],
        ip_addresses=["127.0.0.1", "::1"],
        now=NOW,
    )


def test_root_ca_profile() -> None:
    assert CA.subject == CA.issuer
    assert CA.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
        "Tongban Exchange"
    )
    bc = CA.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca
    assert bc.value.path_length == 0
    ku = CA.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign
    assert ku.value.crl_sign
    assert not ku.value.digital_signature
    assert CA.serial_number.bit_length() <= 159
    assert CA.not_valid_after_utc == NOW + timedelta(days=3650)


def test_root_ca_refuses_ed25519_key() -> None:
    with pytest.raises(TypeError, match="P-256"):
        create_root_ca(common_name="x", key=generate_private_key("Ed25519"), now=NOW)


@pytest.mark.parametrize("key_algorithm", ["P-256", "Ed25519"])
def test_department_cert_chains_to_root(key_algorithm: str) -> None:
    leaf = _dept(key=generate_private_key("Ed25519" if key_algorithm == "Ed25519" else "P-256"))
    chain = verify_certificate(leaf, roots=[CA], now=NOW, usage="tls-client")
    assert chain == [leaf, CA]
    assert department_code(leaf) == "market-supervision"


def test_department_cert_profile() -> None:
    leaf = _dept()
    org = leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0]
    assert org.value == DEPT_NAME
    utf8 = DEPT_NAME.encode()
    assert b"\x0c" + bytes([len(utf8)]) + utf8 in leaf.public_bytes(serialization.Encoding.DER)
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "market-supervision"
    )
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier("urn:tongban:dept:market-supervision")]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature
    assert not ku.value.key_encipherment
    assert leaf.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert leaf.not_valid_after_utc == NOW + timedelta(days=825)
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = CA.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest


def test_cert_from_another_root_is_refused() -> None:
    other_key = generate_private_key()
    other = create_root_ca(common_name="Rogue Root", key=other_key, now=NOW)
    leaf = issue_department_tls_certificate(
        ca_cert=other,
        ca_key=other_key,
        code="market-supervision",
        name=DEPT_NAME,
        public_key=generate_private_key().public_key(),
        now=NOW,
    )
    with pytest.raises(CertificateInvalid) as info:
        verify_certificate(leaf, roots=[CA], now=NOW, usage="tls-client")
    assert type(info.value) is CertificateInvalid
    assert info.value.status == "UNAUTHENTICATED"


def test_empty_roots_fail_closed() -> None:
    with pytest.raises(CertificateInvalid, match="No trusted root"):
        verify_certificate(_dept(), roots=[], now=NOW, usage="tls-client")


def test_expired_certificate() -> None:
    leaf = _dept()
    later = NOW + timedelta(days=826)
    with pytest.raises(CertificateExpired, match="expired at") as info:
        verify_certificate(leaf, roots=[CA], now=later, usage="tls-client")
    assert leaf.not_valid_after_utc.isoformat() in info.value.message
    assert info.value.reason == "CERTIFICATE_EXPIRED"


def test_not_yet_valid_certificate() -> None:
    leaf = _dept()
    with pytest.raises(CertificateExpired, match="not valid until"):
        verify_certificate(leaf, roots=[CA], now=NOW - timedelta(days=1), usage="tls-client")


def test_seal_certificate_usage() -> None:
    seal = _seal()
    assert verify_certificate(seal, roots=[CA], now=NOW, usage="seal") == [seal, CA]
    assert department_code(seal) == "market-supervision"
    ku = seal.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature
    assert ku.value.content_commitment
    assert not ku.value.key_encipherment
    eku = seal.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert not eku.critical
    assert list(eku.value) == [DOCUMENT_SIGNING]
    assert seal.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == (
        "market-supervision"
    )
    with pytest.raises(CertificateInvalid):
        verify_certificate(seal, roots=[CA], now=NOW, usage="tls-client")
    with pytest.raises(CertificateInvalid):
        verify_certificate(seal, roots=[CA], now=NOW, usage="tls-server")


def test_tls_certificates_are_not_seals() -> None:
    with pytest.raises(CertificateInvalid, match="seal"):
        verify_certificate(_dept(), roots=[CA], now=NOW, usage="seal")
    with pytest.raises(CertificateInvalid, match="seal"):
        verify_certificate(_node(), roots=[CA], now=NOW, usage="seal")


def test_department_cert_is_not_a_server_cert() -> None:
    with pytest.raises(CertificateInvalid, match="tls-server"):
        verify_certificate(_dept(), roots=[CA], now=NOW, usage="tls-server")


def test_node_certificate() -> None:
    node = _node()
    for usage in ("tls-server", "tls-client"):
        assert verify_certificate(node, roots=[CA], now=NOW, usage=usage) == [node, CA]
    san = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["exchange.gov.example", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:tongban:node:node-1"]
    eku = node.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    with pytest.raises(CertificateInvalid, match="0 departments"):
        department_code(node)


def test_node_certificate_rejects_bad_ip() -> None:
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6"):
        issue_node_tls_certificate(
            ca_cert=CA,
            ca_key=CA_KEY,
            node_name="node-1",
            public_key=generate_private_key().public_key(),
            hostnames=[],
            ip_addresses=["300.1.1.1"],
            now=NOW,
        )


def _hand_made(san: list[x509.GeneralName] | None) -> x509.Certificate:
    key = generate_private_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hand-made")]))
        .issuer_name(CA.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(CA_KEY, hashes.SHA256())


@pytest.mark.parametrize(
    ("san", "match"),
    [
        (None, "no subjectAltName"),
        ([x509.DNSName("example.org")], "0 departments"),
        (
            [
                x509.UniformResourceIdentifier("urn:tongban:dept:one"),
                x509.UniformResourceIdentifier("urn:tongban:dept:two"),
            ],
            "2 departments",
        ),
        ([x509.UniformResourceIdentifier("urn:tongban:dept:Bad_Code")], "malformed"),
    ],
)
def test_department_code_requires_exactly_one_valid_uri(
    san: list[x509.GeneralName] | None, match: str
) -> None:
    with pytest.raises(CertificateInvalid, match=match):
        department_code(_hand_made(san))


@pytest.mark.parametrize("code", ["", "a", "A-dept", "1dept", "dept_x", "dept.x", "d" * 64])
def test_bad_code_is_refused(code: str) -> None:
    with pytest.raises(ValueError, match="is not valid"):
        _dept(code)


def test_longest_code_is_accepted() -> None:
    assert department_code(_dept("d" * 63)) == "d" * 63


def test_not_after_is_clipped_to_the_ca() -> None:
    leaf = issue_department_tls_certificate(
        ca_cert=CA,
        ca_key=CA_KEY,
        code="market-supervision",
        name=DEPT_NAME,
        public_key=generate_private_key().public_key(),
        now=NOW + timedelta(days=3600),
    )
    assert leaf.not_valid_after_utc == CA.not_valid_after_utc
    assert verify_certificate(leaf, roots=[CA], now=NOW + timedelta(days=3640), usage="tls-client")


def test_issuing_from_an_expired_ca_is_refused() -> None:
    with pytest.raises(CertificateExpired, match="renew the CA"):
        issue_seal_certificate(
            ca_cert=CA,
            ca_key=CA_KEY,
            code="market-supervision",
            name=DEPT_NAME,
            public_key=generate_private_key().public_key(),
            now=NOW + timedelta(days=3651),
        )


def test_ca_key_must_match_ca_cert() -> None:
    with pytest.raises(ValueError, match="not the private key"):
        issue_department_tls_certificate(
            ca_cert=CA,
            ca_key=generate_private_key(),
            code="market-supervision",
            name=DEPT_NAME,
            public_key=generate_private_key().public_key(),
            now=NOW,
        )


def test_pem_round_trip_and_save(tmp_path: Path) -> None:
    leaf = _dept()
    path = tmp_path / "certs" / "dept.pem"
    save_certificate(path, [leaf, CA])
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.read_bytes() == certificate_pem(leaf) + certificate_pem(CA)
    assert load_pem_certificates(path.read_bytes()) == [leaf, CA]
    with pytest.raises(ValueError, match="empty"):
        save_certificate(path, [])


@pytest.mark.parametrize("data", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\n!!\n"])
def test_load_pem_certificates_refuses_garbage(data: bytes) -> None:
    with pytest.raises(CertificateInvalid, match="not a PEM certificate"):
        load_pem_certificates(data)


def test_certificate_fingerprint() -> None:
    assert (
        certificate_fingerprint(CA)
        == hashlib.sha256(CA.public_bytes(serialization.Encoding.DER)).digest()
    )
    assert certificate_fingerprint(CA) == CA.fingerprint(hashes.SHA256())


def test_expired_issuer_is_reported_as_expired() -> None:
    short_key = generate_private_key()
    short_ca = create_root_ca(
        common_name="Short Root", key=short_key, now=NOW, validity=timedelta(days=1)
    )
    # Hand-made: our issuers clip notAfter to the CA, so only a foreign leaf outlives it.
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "long-lived")]))
        .issuer_name(short_ca.subject)
        .public_key(generate_private_key().public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=30))
        .sign(short_key, hashes.SHA256())
    )
    with pytest.raises(CertificateExpired, match="issuing CA certificate CN=Short Root"):
        verify_certificate(leaf, roots=[short_ca], now=NOW + timedelta(days=2), usage="seal")


def test_node_signing_certificate_verifies_as_seal_not_as_tls() -> None:
    from datetime import UTC, datetime

    from tongban.signing import (
        CertificateInvalid,
        create_root_ca,
        generate_private_key,
        issue_node_signing_certificate,
        verify_certificate,
    )

    now = datetime(2026, 6, 1, tzinfo=UTC)
    ca_key = generate_private_key()
    ca = create_root_ca(common_name="Root", key=ca_key, now=now)
    key = generate_private_key()
    cert = issue_node_signing_certificate(
        ca_cert=ca, ca_key=ca_key, node_name="node-1", public_key=key.public_key(), now=now
    )
    chain = verify_certificate(cert, roots=[ca], now=now, usage="seal")
    assert chain[0] == cert
    with pytest.raises(CertificateInvalid):
        verify_certificate(cert, roots=[ca], now=now, usage="tls-client")
