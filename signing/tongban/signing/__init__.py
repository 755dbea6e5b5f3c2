"""Keys, signers, X.509 for the exchange CA, JWS/JWT, and the injected clock.

Everything public is re-exported here; import from ``tongban.signing``.
"""

from __future__ import annotations

from tongban.signing.certs import (
    DEPT_URI_PREFIX,
    DOCUMENT_SIGNING,
    NODE_URI_PREFIX,
    CertUsage,
    certificate_fingerprint,
    certificate_pem,
    create_root_ca,
    department_code,
    issue_department_tls_certificate,
    issue_node_signing_certificate,
    issue_node_tls_certificate,
    issue_seal_certificate,
    load_pem_certificates,
    save_certificate,
    verify_certificate,
)
from tongban.signing.clock import Clock, FixedClock, SystemClock
from tongban.signing.errors import (
    CertificateExpired,
    CertificateInvalid,
    KeyFileInvalid,
    KeyFileMissing,
    KeyPassphraseWrong,
    SignatureInvalid,
    SigningError,
)
from tongban.signing.jose import VerifiedJWS, sign_jws, sign_jwt, verify_jws, verify_jwt
from tongban.signing.keys import (
    KeyAlgorithm,
    LocalSigner,
    PrivateKey,
    PublicKey,
    Signer,
    generate_private_key,
    load_private_key,
    private_key_pem,
    public_key_fingerprint,
    save_private_key,
)

__all__ = [
    "DEPT_URI_PREFIX",
    "DOCUMENT_SIGNING",
    "NODE_URI_PREFIX",
    "CertUsage",
    "CertificateExpired",
    "CertificateInvalid",
    "Clock",
    "FixedClock",
    "KeyAlgorithm",
    "KeyFileInvalid",
    "KeyFileMissing",
    "KeyPassphraseWrong",
    "LocalSigner",
    "PrivateKey",
    "PublicKey",
    "SignatureInvalid",
    "Signer",
    "SigningError",
    "SystemClock",
    "VerifiedJWS",
    "certificate_fingerprint",
    "certificate_pem",
    "create_root_ca",
    "department_code",
    "generate_private_key",
    "issue_department_tls_certificate",
    "issue_node_signing_certificate",
    "issue_node_tls_certificate",
    "issue_seal_certificate",
    "load_pem_certificates",
    "load_private_key",
    "private_key_pem",
    "public_key_fingerprint",
    "save_certificate",
    "save_private_key",
    "sign_jws",
    "sign_jwt",
    "verify_certificate",
    "verify_jws",
    "verify_jwt",
]
