"""X.509 for the exchange CA: issuing department, node and seal certificates, and
verifying them for one stated usage.

The CA key must be P-256: cryptography's verifier applies the WebPKI profile, which does
not accept Ed25519 signatures on certificates. Leaf keys may be P-256 or Ed25519.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from tongban.signing.errors import CertificateExpired, CertificateInvalid
from tongban.signing.files import write_atomic
from tongban.signing.keys import PrivateKey, PublicKey

__all__ = [
    "DEPT_URI_PREFIX",
    "DOCUMENT_SIGNING",
    "NODE_URI_PREFIX",
    "CertUsage",
    "certificate_fingerprint",
    "certificate_pem",
    "check_code",
    "create_issuing_ca",
    "create_root_ca",
    "department_code",
    "exchange_name",
    "issue_department_tls_certificate",
    "issue_node_signing_certificate",
    "issue_node_tls_certificate",
    "issue_seal_certificate",
    "key_usage",
    "leaf_validity",
    "load_pem_certificates",
    "save_certificate",
    "seal_subject",
    "verify_certificate",
]

DEPT_URI_PREFIX = "urn:tongban:dept:"
NODE_URI_PREFIX = "urn:tongban:node:"
#: id-kp-documentSigning (RFC 9336).
DOCUMENT_SIGNING = ObjectIdentifier("1.3.6.1.5.5.7.3.36")
CertUsage = Literal["tls-client", "tls-server", "seal"]

_CODE = re.compile(r"[a-z][a-z0-9-]{1,62}")
_EXCHANGE_ORG = "Tongban Exchange"
# Back-date notBefore so a peer whose clock runs a little behind accepts a new cert.
_CLOCK_SKEW = timedelta(minutes=5)


def key_usage(
    *, digital_signature: bool = False, content_commitment: bool = False, ca: bool = False
) -> x509.KeyUsage:
    """The KeyUsage of Tongban's profiles: a CA signs certificates and CRLs; a leaf signs."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=content_commitment,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def seal_subject(code: str, name: str) -> x509.Name:
    """A seal certificate's subject: CN=name (shown on the seal), O=name, OU=code (the
    stable machine identity)."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, code),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )


def exchange_name(common_name: str) -> x509.Name:
    """The name of one of the exchange's own certificates: O=Tongban Exchange, CN=``common_name``
    (ValueError if it is empty or longer than 64 characters)."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _EXCHANGE_ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _hash_for(key: PrivateKey) -> hashes.SHA256 | None:
    return hashes.SHA256() if isinstance(key, ec.EllipticCurvePrivateKey) else None


def _require_ca_key(key: PrivateKey) -> None:
    if not (isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)):
        raise TypeError(
            "The exchange CA key must be P-256: certificates signed with Ed25519 fail "
            "WebPKI verification."
        )


def check_code(code: str, what: str) -> None:
    """Raise ValueError unless ``code`` is a department code or node name (2-63 of a-z,
    0-9 and '-', starting with a letter); ``what`` names it in the message."""
    if not _CODE.fullmatch(code):
        raise ValueError(
            f"{what} {code!r} is not valid: use 2-63 characters a-z, 0-9 and '-', "
            "starting with a letter."
        )


def create_root_ca(
    *,
    common_name: str,
    key: PrivateKey,
    now: datetime,
    validity: timedelta = timedelta(days=3650),
    path_length: int = 0,
) -> x509.Certificate:
    """Return a self-signed root certificate (O=Tongban Exchange, CN=``common_name``).

    ``path_length`` 0 (the default, and every root made before issuing CAs existed) lets
    it sign end-entity certificates only; 1 lets it sign one level of issuing CA
    (``create_issuing_ca``), so the root key can stay offline.

    Raises TypeError if ``key`` is not P-256 (Ed25519-signed certificates fail WebPKI
    verification); ValueError if ``common_name`` is empty or longer than 64 characters,
    or ``path_length`` is not 0 or 1.
    """
    _require_ca_key(key)
    if path_length not in (0, 1):
        raise ValueError(f"A root's path length is 0 or 1, not {path_length}.")
    name = exchange_name(common_name)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, _hash_for(key))
    )


def create_issuing_ca(
    *,
    root_cert: x509.Certificate,
    root_key: PrivateKey,
    common_name: str,
    public_key: PublicKey,
    now: datetime,
    validity: timedelta = timedelta(days=1825),
) -> x509.Certificate:
    """Return an issuing (intermediate) CA certificate signed by the root: O=Tongban
    Exchange, CN=``common_name``, path length 0 (it signs end-entity certificates only),
    keyCertSign + cRLSign. notAfter is clipped to the root's.

    Raises ValueError if the root cannot sign a CA (path length 0, made before issuing
    CAs), ``root_key`` is not its key, or the name equals the root's; TypeError for a key
    that is not P-256; CertificateExpired if the root has expired.
    """
    _require_ca_key(root_key)
    if not (
        isinstance(public_key, ec.EllipticCurvePublicKey)
        and isinstance(public_key.curve, ec.SECP256R1)
    ):
        raise TypeError("An issuing CA key must be P-256, like the root's.")
    if root_key.public_key() != root_cert.public_key():
        raise ValueError("root_key is not the private key of root_cert.")
    constraints = root_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    if not constraints.ca or constraints.path_length == 0:
        raise ValueError(
            f"The root {root_cert.subject.rfc4514_string()} has path length 0, so it may sign "
            "end-entity certificates only, not an issuing CA."
        )
    name = exchange_name(common_name)
    if name == root_cert.subject:
        raise ValueError("An issuing CA needs a name of its own, not the root's.")
    not_before, not_after = leaf_validity(root_cert, now, validity)
    root_ski = root_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(root_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(ca=True), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(root_key, _hash_for(root_key))
    )


def leaf_validity(
    ca_cert: x509.Certificate, now: datetime, validity: timedelta
) -> tuple[datetime, datetime]:
    """A leaf's notBefore (back-dated for peers whose clocks run behind) and notAfter,
    clipped to the CA's: a certificate cannot outlive its issuer, and verifiers would
    reject the tail anyway. Raises CertificateExpired if the CA has expired."""
    not_before = now - _CLOCK_SKEW
    not_after = min(now + validity, ca_cert.not_valid_after_utc)
    if not_after <= not_before:
        raise CertificateExpired(
            f"The CA certificate {ca_cert.subject.rfc4514_string()} expired at "
            f"{ca_cert.not_valid_after_utc.isoformat()}; renew the CA before issuing."
        )
    return not_before, not_after


def _issue(
    *,
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    subject: x509.Name,
    public_key: PublicKey,
    san: list[x509.GeneralName],
    key_usage: x509.KeyUsage,
    eku: list[ObjectIdentifier],
    now: datetime,
    validity: timedelta,
) -> x509.Certificate:
    _require_ca_key(ca_key)
    if ca_key.public_key() != ca_cert.public_key():
        raise ValueError("ca_key is not the private key of ca_cert.")
    not_before, not_after = leaf_validity(ca_cert, now, validity)
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(aki, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(ca_key, _hash_for(ca_key))
    )


def issue_department_tls_certificate(
    *,
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    code: str,
    name: str,
    public_key: PublicKey,
    now: datetime,
    validity: timedelta = timedelta(days=825),
) -> x509.Certificate:
    """Return a TLS client certificate for department ``code`` (subject CN=code, O=name;
    SAN ``urn:tongban:dept:<code>`` only; EKU clientAuth). notAfter is clipped to the
    CA's notAfter.

    Raises ValueError for a malformed ``code`` or a CA key that does not match
    ``ca_cert``, TypeError for a CA key that is not P-256; CertificateExpired if the CA
    has expired.
    """
    check_code(code, "Department code")
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
            x509.NameAttribute(NameOID.COMMON_NAME, code),
        ]
    )
    return _issue(
        ca_cert=ca_cert,
        ca_key=ca_key,
        subject=subject,
        public_key=public_key,
        san=[x509.UniformResourceIdentifier(DEPT_URI_PREFIX + code)],
        key_usage=key_usage(digital_signature=True),
        eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
        now=now,
        validity=validity,
    )


def issue_node_tls_certificate(
    *,
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    node_name: str,
    public_key: PublicKey,
    hostnames: Sequence[str],
    ip_addresses: Sequence[str],
    now: datetime,
    validity: timedelta = timedelta(days=825),
) -> x509.Certificate:
    """Return a TLS server-and-client certificate for exchange node ``node_name``
    (subject CN=node_name, O=Tongban Exchange; SAN the DNS names, IP addresses and
    ``urn:tongban:node:<node_name>``; EKU serverAuth and clientAuth). notAfter is
    clipped to the CA's notAfter.

    Raises ValueError for a malformed node name or IP address or a CA key that does not
    match ``ca_cert``, TypeError for a CA key that is not P-256; CertificateExpired if
    the CA has expired.
    """
    check_code(node_name, "Node name")
    san: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    san += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    san.append(x509.UniformResourceIdentifier(NODE_URI_PREFIX + node_name))
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _EXCHANGE_ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, node_name),
        ]
    )
    return _issue(
        ca_cert=ca_cert,
        ca_key=ca_key,
        subject=subject,
        public_key=public_key,
        san=san,
        key_usage=key_usage(digital_signature=True),
        eku=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        now=now,
        validity=validity,
    )


def issue_seal_certificate(
    *,
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    code: str,
    name: str,
    public_key: PublicKey,
    now: datetime,
    validity: timedelta = timedelta(days=1825),
) -> x509.Certificate:
    """Return a seal certificate for signing licences and sealing documents on behalf of
    department ``code``.

    Subject: CN=name (the holder shown on the seal), O=name (the organisation, as in the
    department's TLS certificate), OU=code (the stable machine identity). SAN
    ``urn:tongban:dept:<code>``; KeyUsage digitalSignature + contentCommitment (critical);
    EKU documentSigning. notAfter is clipped to the CA's notAfter.

    Raises ValueError for a malformed ``code`` or a CA key that does not match
    ``ca_cert``, TypeError for a CA key that is not P-256; CertificateExpired if the CA
    has expired.
    """
    check_code(code, "Department code")
    return _issue(
        ca_cert=ca_cert,
        ca_key=ca_key,
        subject=seal_subject(code, name),
        public_key=public_key,
        san=[x509.UniformResourceIdentifier(DEPT_URI_PREFIX + code)],
        key_usage=key_usage(digital_signature=True, content_commitment=True),
        eku=[DOCUMENT_SIGNING],
        now=now,
        validity=validity,
    )


def issue_node_signing_certificate(
    *,
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    node_name: str,
    public_key: PublicKey,
    now: datetime,
    validity: timedelta = timedelta(days=825),
) -> x509.Certificate:
    """Return the certificate an exchange node signs its answers with (signed query
    responses, later checkpoints). Kept apart from the node's TLS key so that no key
    serves two protocols.

    Subject CN=node_name, O=Tongban Exchange; SAN ``urn:tongban:node:<node_name>``;
    KeyUsage digitalSignature + contentCommitment (critical); EKU documentSigning, so it
    verifies with ``usage="seal"``. Raises as ``issue_node_tls_certificate`` does.
    """
    check_code(node_name, "Node name")
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _EXCHANGE_ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, node_name),
        ]
    )
    return _issue(
        ca_cert=ca_cert,
        ca_key=ca_key,
        subject=subject,
        public_key=public_key,
        san=[x509.UniformResourceIdentifier(NODE_URI_PREFIX + node_name)],
        key_usage=key_usage(digital_signature=True, content_commitment=True),
        eku=[DOCUMENT_SIGNING],
        now=now,
        validity=validity,
    )


def department_code(cert: x509.Certificate) -> str:
    """Return the department code from the certificate's single ``urn:tongban:dept:``
    URI SAN.

    Raises CertificateInvalid if there is none, more than one, or the code is malformed.
    """
    who = cert.subject.rfc4514_string()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as e:
        raise CertificateInvalid(
            f"The certificate {who} has no subjectAltName, so it names no department; use "
            "a department certificate issued by the exchange CA."
        ) from e
    except (ValueError, x509.DuplicateExtension) as e:
        raise CertificateInvalid(f"The certificate {who} has malformed extensions.") from e
    uris = [
        uri.removeprefix(DEPT_URI_PREFIX)
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.startswith(DEPT_URI_PREFIX)
    ]
    if len(uris) != 1:
        raise CertificateInvalid(
            f"The certificate {who} names {len(uris)} departments ({DEPT_URI_PREFIX}… URIs) "
            "but exactly one is required; use a department certificate issued by the "
            "exchange CA."
        )
    if not _CODE.fullmatch(uris[0]):
        raise CertificateInvalid(
            f"The certificate {who} names a malformed department code {uris[0]!r}; use a "
            "department certificate issued by the exchange CA."
        )
    return uris[0]


def certificate_fingerprint(cert: x509.Certificate) -> bytes:
    """Return the SHA-256 digest (32 bytes) of the certificate's DER encoding."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


def load_pem_certificates(data: bytes) -> list[x509.Certificate]:
    """Return every certificate in PEM ``data``, in order.

    Raises CertificateInvalid if ``data`` holds no certificate or a malformed one.
    """
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise CertificateInvalid(
            "The data is not a PEM certificate list (expected one or more "
            "'-----BEGIN CERTIFICATE-----' blocks)."
        ) from e


def certificate_pem(cert: x509.Certificate) -> bytes:
    """Return ``cert`` as one PEM block."""
    return cert.public_bytes(serialization.Encoding.PEM)


def save_certificate(path: Path, certs: Sequence[x509.Certificate]) -> None:
    """Write ``certs`` (leaf first, for a chain) to ``path`` as PEM, atomically, mode 0644.

    Raises ValueError if ``certs`` is empty.
    """
    if not certs:
        raise ValueError("Refusing to write an empty certificate file.")
    write_atomic(path, b"".join(map(certificate_pem, certs)), mode=0o644, dir_mode=0o755)


def _check_validity(cert: x509.Certificate, now: datetime, what: str) -> None:
    if now < cert.not_valid_before_utc:
        raise CertificateExpired(
            f"The {what} {cert.subject.rfc4514_string()} is not valid until "
            f"{cert.not_valid_before_utc.isoformat()} (checked at {now.isoformat()}); "
            "check the clocks of both machines."
        )
    if now > cert.not_valid_after_utc:
        raise CertificateExpired(
            f"The {what} {cert.subject.rfc4514_string()} expired at "
            f"{cert.not_valid_after_utc.isoformat()} (checked at {now.isoformat()}); "
            "renew it."
        )


def _require_eku(oid: ObjectIdentifier, usage: str) -> ExtensionPolicy:
    def check(_policy: Policy, _cert: x509.Certificate, eku: x509.ExtendedKeyUsage) -> None:
        if oid not in eku:
            raise ValueError(f"extendedKeyUsage lacks {oid.dotted_string} needed for {usage}")

    return ExtensionPolicy.webpki_defaults_ee().require_present(
        x509.ExtendedKeyUsage, Criticality.AGNOSTIC, check
    )


def _seal_key_usage(_policy: Policy, _cert: x509.Certificate, ku: x509.KeyUsage) -> None:
    # Replaces the WebPKI default KeyUsage check, so repeat its keyCertSign rule.
    if not (ku.digital_signature and ku.content_commitment) or ku.key_cert_sign:
        raise ValueError("keyUsage must assert digitalSignature and contentCommitment only")


def _ee_policy(usage: CertUsage) -> ExtensionPolicy | None:
    """Return the end-entity policy for ``usage``; None means the client-verifier default,
    which already requires EKU clientAuth."""
    if usage == "tls-client":
        return None
    if usage == "tls-server":
        return _require_eku(ExtendedKeyUsageOID.SERVER_AUTH, "tls-server")
    if usage == "seal":
        return _require_eku(DOCUMENT_SIGNING, "seal").require_present(
            x509.KeyUsage, Criticality.CRITICAL, _seal_key_usage
        )
    raise ValueError(f"Unknown certificate usage {usage!r}.")


def verify_certificate(
    leaf: x509.Certificate,
    *,
    roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate] = (),
    now: datetime,
    usage: CertUsage,
) -> list[x509.Certificate]:
    """Return the validated chain (leaf first, root last) for ``leaf`` used as ``usage``.

    Raises CertificateExpired if the leaf (or every candidate issuer) is outside its
    validity period at ``now``; CertificateInvalid if ``roots`` is empty, the chain does
    not reach a root, or the leaf was not issued for ``usage``; ValueError for a naive
    ``now`` or an unknown usage.
    """
    if now.tzinfo is None:
        raise ValueError("verify_certificate needs a timezone-aware `now`.")
    ee_policy = _ee_policy(usage)
    if not roots:
        raise CertificateInvalid(
            "No trusted root certificates are configured, so no certificate can be "
            "accepted; configure the exchange CA certificate."
        )
    _check_validity(leaf, now, "certificate")
    # Name an expired issuer too; the verifier would only say "candidates exhausted".
    issuers = [c for c in (*intermediates, *roots) if c.subject == leaf.issuer]
    if issuers and all(
        not (c.not_valid_before_utc <= now <= c.not_valid_after_utc) for c in issuers
    ):
        _check_validity(issuers[0], now, "issuing CA certificate")

    builder = PolicyBuilder().store(Store(list(roots))).time(now)
    if ee_policy is not None:
        builder = builder.extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy
        )
    try:
        verified = builder.build_client_verifier().verify(leaf, list(intermediates))
    except VerificationError as e:
        raise CertificateInvalid(
            f"The certificate {leaf.subject.rfc4514_string()} is not valid for {usage} "
            f"under the configured roots ({e}); check it was issued by this exchange's CA "
            "for this purpose."
        ) from e
    return verified.chain
