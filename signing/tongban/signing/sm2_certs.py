"""X.509 with SM2 (GM/T 0015): an SM2 root, SM2 seal certificates under it, and their check.

``cryptography`` parses such certificates but can neither sign nor verify SM3withSM2, so the
to-be-signed part is assembled here: names and extensions are encoded by ``cryptography``
(the same objects ``certs.py`` uses, so the profiles cannot drift apart), the signature is
GmSSL's, and the DER envelope is written with ``asn1crypto``'s primitives. The result loads
as a ``cryptography.x509.Certificate`` and verifies with ``openssl verify``.

Profiles match the P-256 ones: the root may sign end-entity certificates only; a seal
certificate names its department in OU and in the SAN ``urn:tongban:dept:<code>``, with
digitalSignature + contentCommitment and id-kp-documentSigning.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from asn1crypto import core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tongban.signing.certs import (
    DEPT_URI_PREFIX,
    DOCUMENT_SIGNING,
    NODE_URI_PREFIX,
    check_code,
    exchange_name,
    key_usage,
    leaf_validity,
    seal_subject,
)
from tongban.signing.errors import CertificateExpired, CertificateInvalid, SignatureInvalid
from tongban.signing.sm2 import SM3_WITH_SM2_OID, Sm2PrivateKey, Sm2PublicKey

__all__ = [
    "create_sm2_root_ca",
    "issue_sm2_node_signing_certificate",
    "issue_sm2_seal_certificate",
    "sm2_public_key",
    "verify_sm2_certificate",
]

_CLOCK_SKEW = timedelta(minutes=5)


def _tlv(tag: int, body: bytes) -> bytes:
    """One DER element: tag, definite length, ``body``."""
    if len(body) < 0x80:
        return bytes([tag, len(body)]) + body
    size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


# AlgorithmIdentifier { SM3withSM2 } with its parameters absent, as OpenSSL writes it.
_SM3_WITH_SM2 = _tlv(0x30, bytes(core.ObjectIdentifier(SM3_WITH_SM2_OID).dump()))


def _time(moment: datetime) -> bytes:
    # RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050.
    moment = moment.astimezone(UTC).replace(microsecond=0)
    if moment.year < 2050:
        return bytes(core.UTCTime(moment).dump())
    return bytes(core.GeneralizedTime(moment).dump())


def _extension(value: x509.ExtensionType, *, critical: bool) -> bytes:
    body = core.ObjectIdentifier(value.oid.dotted_string).dump()
    if critical:
        body += core.Boolean(True).dump()
    body += core.OctetString(value.public_bytes()).dump()
    return _tlv(0x30, body)


def _certificate(
    *,
    issuer: x509.Name,
    issuer_key: Sm2PrivateKey,
    subject: x509.Name,
    public_key: Sm2PublicKey,
    not_before: datetime,
    not_after: datetime,
    extensions: Sequence[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    # Serial: 159 random bits, positive and at most 20 octets (RFC 5280 4.1.2.2).
    serial = secrets.randbits(159) | (1 << 158)
    tbs = _tlv(
        0x30,
        _tlv(0xA0, core.Integer(2).dump())  # v3
        + core.Integer(serial).dump()
        + _SM3_WITH_SM2
        + issuer.public_bytes()
        + _tlv(0x30, _time(not_before) + _time(not_after))
        + subject.public_bytes()
        + public_key.spki_der()
        + _tlv(0xA3, _tlv(0x30, b"".join(_extension(v, critical=c) for v, c in extensions))),
    )
    signature = issuer_key.sign(tbs)
    der = _tlv(0x30, tbs + _SM3_WITH_SM2 + _tlv(0x03, b"\x00" + signature))
    return x509.load_der_x509_certificate(der)


def sm2_public_key(cert: x509.Certificate) -> Sm2PublicKey:
    """Return the SM2 public key of ``cert``; raises CertificateInvalid if it holds another."""
    der = cert.public_bytes(serialization.Encoding.DER)
    spki = asn1_x509.Certificate.load(der)["tbs_certificate"]["subject_public_key_info"]
    try:
        return Sm2PublicKey.from_spki_der(bytes(spki.dump()))
    except ValueError as e:
        raise CertificateInvalid(
            f"The certificate {cert.subject.rfc4514_string()} holds no SM2 key: {e}"
        ) from e


def _key_id(public_key: Sm2PublicKey) -> bytes:
    # RFC 5280 4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits (an identifier only).
    return hashlib.sha1(b"\x04" + public_key.point, usedforsecurity=False).digest()


def create_sm2_root_ca(
    *,
    common_name: str,
    key: Sm2PrivateKey,
    now: datetime,
    validity: timedelta = timedelta(days=3650),
) -> x509.Certificate:
    """Return a self-signed SM2 root (O=Tongban Exchange, CN=``common_name``) that may sign
    end-entity certificates only (path length 0). Raises ValueError for an empty or
    over-long ``common_name``."""
    name = exchange_name(common_name)
    return _certificate(
        issuer=name,
        issuer_key=key,
        subject=name,
        public_key=key.public,
        not_before=now - _CLOCK_SKEW,
        not_after=now + validity,
        extensions=[
            (x509.BasicConstraints(ca=True, path_length=0), True),
            (key_usage(ca=True), True),
            (x509.SubjectKeyIdentifier(_key_id(key.public)), False),
        ],
    )


def issue_sm2_node_signing_certificate(
    *,
    ca_cert: x509.Certificate,
    ca_key: Sm2PrivateKey,
    node_name: str,
    public_key: Sm2PublicKey,
    now: datetime,
    validity: timedelta = timedelta(days=825),
) -> x509.Certificate:
    """Return the SM2 certificate a node signs its answers with beside ES256: the profile of
    ``certs.issue_node_signing_certificate`` (CN and SAN ``urn:tongban:node:<name>``,
    digitalSignature + contentCommitment, documentSigning), signed by the SM2 CA."""
    return _leaf(
        ca_cert=ca_cert,
        ca_key=ca_key,
        code=node_name,
        subject=exchange_name(node_name),
        uri=NODE_URI_PREFIX + node_name,
        public_key=public_key,
        now=now,
        validity=validity,
    )


def issue_sm2_seal_certificate(
    *,
    ca_cert: x509.Certificate,
    ca_key: Sm2PrivateKey,
    code: str,
    name: str,
    public_key: Sm2PublicKey,
    now: datetime,
    validity: timedelta = timedelta(days=1825),
) -> x509.Certificate:
    """Return an SM2 seal certificate for department ``code``, signed by the SM2 CA, with
    the profile of ``certs.issue_seal_certificate``. notAfter is clipped to the CA's.

    Raises ValueError for a malformed ``code`` or a CA key that does not match ``ca_cert``;
    CertificateExpired if the CA has expired.
    """
    return _leaf(
        ca_cert=ca_cert,
        ca_key=ca_key,
        code=code,
        subject=seal_subject(code, name),
        uri=DEPT_URI_PREFIX + code,
        public_key=public_key,
        now=now,
        validity=validity,
    )


def _leaf(
    *,
    ca_cert: x509.Certificate,
    ca_key: Sm2PrivateKey,
    code: str,
    subject: x509.Name,
    uri: str,
    public_key: Sm2PublicKey,
    now: datetime,
    validity: timedelta,
) -> x509.Certificate:
    check_code(code, "Department code" if uri.startswith(DEPT_URI_PREFIX) else "Node name")
    if sm2_public_key(ca_cert) != ca_key.public:
        raise ValueError("ca_key is not the private key of ca_cert.")
    not_before, not_after = leaf_validity(ca_cert, now, validity)
    return _certificate(
        issuer=ca_cert.subject,
        issuer_key=ca_key,
        subject=subject,
        public_key=public_key,
        not_before=not_before,
        not_after=not_after,
        extensions=[
            (x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), False),
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (key_usage(digital_signature=True, content_commitment=True), True),
            (x509.ExtendedKeyUsage([DOCUMENT_SIGNING]), False),
            (x509.AuthorityKeyIdentifier(_key_id(ca_key.public), None, None), False),
            (x509.SubjectKeyIdentifier(_key_id(public_key)), False),
        ],
    )


def verify_sm2_certificate(
    leaf: x509.Certificate, roots: Sequence[x509.Certificate], now: datetime
) -> Sm2PublicKey:
    """Check that ``leaf`` is an SM2 seal certificate signed by one of the SM2 ``roots``,
    valid at ``now``; return its key.

    Raises CertificateExpired outside either certificate's validity, and CertificateInvalid
    if no root issued it, a signature does not verify, or the leaf is not a seal
    certificate.
    """
    who = leaf.subject.rfc4514_string()
    for cert in (leaf, *roots):
        if cert.signature_algorithm_oid.dotted_string != SM3_WITH_SM2_OID:
            raise CertificateInvalid(
                f"The certificate {cert.subject.rfc4514_string()} is not signed with SM3withSM2."
            )
    issuers = [root for root in roots if root.subject == leaf.issuer]
    if not issuers:
        raise CertificateInvalid(f"The certificate {who} was not issued by a trusted SM2 root.")
    for root in issuers:
        try:
            sm2_public_key(root).verify(leaf.signature, leaf.tbs_certificate_bytes)
            sm2_public_key(root).verify(root.signature, root.tbs_certificate_bytes)
        except SignatureInvalid:
            continue
        for cert in (leaf, root):
            if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
                raise CertificateExpired(
                    f"The certificate {cert.subject.rfc4514_string()} is valid from "
                    f"{cert.not_valid_before_utc.isoformat()} to "
                    f"{cert.not_valid_after_utc.isoformat()}, not at {now.isoformat()}."
                )
        try:
            basic = root.extensions.get_extension_for_class(x509.BasicConstraints).value
            usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound as e:
            raise CertificateInvalid(f"The certificate chain of {who} lacks {e.oid}.") from e
        if not basic.ca:
            raise CertificateInvalid(f"The issuer of {who} is not a CA.")
        if DOCUMENT_SIGNING not in usage:
            raise CertificateInvalid(f"The certificate {who} is not for document signing.")
        return sm2_public_key(leaf)
    raise CertificateInvalid(
        f"The signature on the certificate {who} does not verify under any trusted SM2 root."
    )
