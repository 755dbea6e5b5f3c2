"""Keys, signers, X.509 for the exchange CA, JWS/JWT, COSE, PDF seals, and the injected
clock.

Everything public is re-exported here; import from ``tongban.signing``. COSE and the PDF
seals (``cose``, ``pades``) are loaded on first use: pyHanko takes half a second to
import, which commands that never seal a PDF should not pay.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
    TokenKeyExists,
    TokenKeyMissing,
    TokenPinWrong,
    TokenUnavailable,
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

if TYPE_CHECKING:
    from tongban.signing.cose import (
        COSE_SIGN1_TAG,
        CoseFormatInvalid,
        CoseSign1,
        decode_cbor,
        decode_cose,
        sign_cose,
        verify_cose,
    )
    from tongban.signing.pades import (
        DocumentInvalid,
        SealBroken,
        SealError,
        SealInfo,
        SealingFailed,
        SealMissing,
        SealReport,
        SealUntrusted,
        TimestampUnavailable,
        seal_pdf,
        seal_pdf_async,
        verify_sealed_pdf,
        verify_sealed_pdf_async,
    )

_LAZY = {
    **dict.fromkeys(
        (
            "COSE_SIGN1_TAG",
            "CoseFormatInvalid",
            "CoseSign1",
            "decode_cbor",
            "decode_cose",
            "sign_cose",
            "verify_cose",
        ),
        "tongban.signing.cose",
    ),
    **dict.fromkeys(
        (
            "DocumentInvalid",
            "SealBroken",
            "SealError",
            "SealInfo",
            "SealMissing",
            "SealReport",
            "SealUntrusted",
            "SealingFailed",
            "TimestampUnavailable",
            "seal_pdf",
            "seal_pdf_async",
            "verify_sealed_pdf",
            "verify_sealed_pdf_async",
        ),
        "tongban.signing.pades",
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tongban.signing' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "COSE_SIGN1_TAG",
    "DEPT_URI_PREFIX",
    "DOCUMENT_SIGNING",
    "NODE_URI_PREFIX",
    "CertUsage",
    "CertificateExpired",
    "CertificateInvalid",
    "Clock",
    "CoseFormatInvalid",
    "CoseSign1",
    "DocumentInvalid",
    "FixedClock",
    "KeyAlgorithm",
    "KeyFileInvalid",
    "KeyFileMissing",
    "KeyPassphraseWrong",
    "LocalSigner",
    "PrivateKey",
    "PublicKey",
    "SealBroken",
    "SealError",
    "SealInfo",
    "SealMissing",
    "SealReport",
    "SealUntrusted",
    "SealingFailed",
    "SignatureInvalid",
    "Signer",
    "SigningError",
    "SystemClock",
    "TimestampUnavailable",
    "TokenKeyExists",
    "TokenKeyMissing",
    "TokenPinWrong",
    "TokenUnavailable",
    "VerifiedJWS",
    "certificate_fingerprint",
    "certificate_pem",
    "create_root_ca",
    "decode_cbor",
    "decode_cose",
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
    "seal_pdf",
    "seal_pdf_async",
    "sign_cose",
    "sign_jws",
    "sign_jwt",
    "verify_certificate",
    "verify_cose",
    "verify_jws",
    "verify_jwt",
    "verify_sealed_pdf",
    "verify_sealed_pdf_async",
]
