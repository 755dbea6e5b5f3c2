"""Electronic licences (电子证照): types, issuance, status lists, QR, rendering, verification.

The public API is re-exported here. Rendering (``render_licence``, ``LicenceDocument``
...) is loaded on first use: it imports pyHanko and a CJK font parser, which verifiers
that never draw a PDF should not pay for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tongban.licence.errors import (
    CHECKS,
    Check,
    ClaimInvalid,
    DisclosureInvalid,
    LicenceCancelled,
    LicenceError,
    LicenceExpired,
    LicenceFormatInvalid,
    LicenceNotYetValid,
    LicenceNumberInvalid,
    LicenceRevoked,
    LicenceSuperseded,
    LicenceSuspended,
    LicenceTypeUnknown,
    PayloadTooLarge,
    SealRevoked,
    SignatureInvalid,
    SignerUntrusted,
    Sm2SealUntrusted,
    Sm2SignatureInvalid,
    StatusListFull,
    StatusUnavailable,
    StatusUrlUntrusted,
    TrustListExpired,
    TrustListUnavailable,
    VerificationFailed,
)
from tongban.licence.numbers import (
    LicenceNumber,
    check_licence_number,
    make_licence_number,
    parse_licence_number,
    random_serial,
)
from tongban.licence.qr import QR_PREFIX, QrClaims, VerifiedQr, encode_qr, qr_png, verify_qr
from tongban.licence.sdjwt import (
    IssuedSdJwt,
    StatusReference,
    VerifiedSdJwt,
    issue_sd_jwt,
    present,
    verify_sd_jwt,
)
from tongban.licence.sm2_seal import SM2_LICENCE_TYP, verify_sm2_licence_signature
from tongban.licence.status_cache import StatusListCache
from tongban.licence.status_list import (
    MIN_SIZE,
    IndexAllocator,
    LicenceStatus,
    StatusList,
    VerifiedStatusList,
    sign_status_list,
    verify_status_list,
    verify_status_list_token,
)
from tongban.licence.trust_list import (
    RevokedSeal,
    TrustList,
    TrustListCache,
    TrustListEntry,
    sign_trust_list,
    verify_trust_list,
)
from tongban.licence.types import (
    BUILTIN_REGISTRY,
    BUILTIN_TYPES,
    BUSINESS_LICENCE,
    FOOD_BUSINESS_PERMIT,
    ClaimField,
    LicenceType,
    LicenceTypeRegistry,
    default_expiry,
    split_claims,
    validate_claims,
)
from tongban.licence.verify import (
    StatusLookup,
    VerificationResult,
    claimed_status,
    verify_licence,
)

if TYPE_CHECKING:
    from tongban.licence.render import (
        LicenceDocument,
        LicenceTextUnsupported,
        LicenceTooLong,
        render_and_seal,
        render_and_seal_async,
        render_licence,
    )

_LAZY = frozenset(
    {
        "LicenceDocument",
        "LicenceTextUnsupported",
        "LicenceTooLong",
        "render_and_seal",
        "render_and_seal_async",
        "render_licence",
    }
)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'tongban.licence' has no attribute {name!r}")
    return getattr(importlib.import_module("tongban.licence.render"), name)


__all__ = [
    "BUILTIN_REGISTRY",
    "BUILTIN_TYPES",
    "BUSINESS_LICENCE",
    "CHECKS",
    "FOOD_BUSINESS_PERMIT",
    "MIN_SIZE",
    "QR_PREFIX",
    "SM2_LICENCE_TYP",
    "Check",
    "ClaimField",
    "ClaimInvalid",
    "DisclosureInvalid",
    "IndexAllocator",
    "IssuedSdJwt",
    "LicenceCancelled",
    "LicenceDocument",
    "LicenceError",
    "LicenceExpired",
    "LicenceFormatInvalid",
    "LicenceNotYetValid",
    "LicenceNumber",
    "LicenceNumberInvalid",
    "LicenceRevoked",
    "LicenceStatus",
    "LicenceSuperseded",
    "LicenceSuspended",
    "LicenceTextUnsupported",
    "LicenceTooLong",
    "LicenceType",
    "LicenceTypeRegistry",
    "LicenceTypeUnknown",
    "PayloadTooLarge",
    "QrClaims",
    "RevokedSeal",
    "SealRevoked",
    "SignatureInvalid",
    "SignerUntrusted",
    "Sm2SealUntrusted",
    "Sm2SignatureInvalid",
    "StatusList",
    "StatusListCache",
    "StatusListFull",
    "StatusLookup",
    "StatusReference",
    "StatusUnavailable",
    "StatusUrlUntrusted",
    "TrustList",
    "TrustListCache",
    "TrustListEntry",
    "TrustListExpired",
    "TrustListUnavailable",
    "VerificationFailed",
    "VerificationResult",
    "VerifiedQr",
    "VerifiedSdJwt",
    "VerifiedStatusList",
    "check_licence_number",
    "claimed_status",
    "default_expiry",
    "encode_qr",
    "issue_sd_jwt",
    "make_licence_number",
    "parse_licence_number",
    "present",
    "qr_png",
    "random_serial",
    "render_and_seal",
    "render_and_seal_async",
    "render_licence",
    "sign_status_list",
    "sign_trust_list",
    "split_claims",
    "validate_claims",
    "verify_licence",
    "verify_qr",
    "verify_sd_jwt",
    "verify_sm2_licence_signature",
    "verify_status_list",
    "verify_status_list_token",
    "verify_trust_list",
]
