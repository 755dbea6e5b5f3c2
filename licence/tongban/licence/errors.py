"""Errors raised by ``tongban.licence``; each has a stable ``reason`` code.

A failed verification always says which check failed: every ``VerificationFailed``
carries ``check`` (one of ``CHECKS``), so a verifier can show "signature", "status" or
"validity" rather than a bare "invalid".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from tongban.errors import TongbanError

__all__ = [
    "CHECKS",
    "Check",
    "ClaimInvalid",
    "DisclosureInvalid",
    "LicenceCancelled",
    "LicenceError",
    "LicenceExpired",
    "LicenceFormatInvalid",
    "LicenceNotYetValid",
    "LicenceNumberInvalid",
    "LicenceRevoked",
    "LicenceSuperseded",
    "LicenceSuspended",
    "LicenceTypeUnknown",
    "PayloadTooLarge",
    "SealRevoked",
    "SignatureInvalid",
    "SignerUntrusted",
    "Sm2SealUntrusted",
    "Sm2SignatureInvalid",
    "StatusListFull",
    "StatusUnavailable",
    "StatusUrlUntrusted",
    "TrustListExpired",
    "TrustListUnavailable",
    "VerificationFailed",
]

Check = Literal[
    "format", "signature", "issuer", "disclosure", "validity", "status", "trust-list", "sm2"
]
CHECKS: tuple[Check, ...] = (
    "format",
    "signature",
    "issuer",
    "disclosure",
    "validity",
    "status",
    "trust-list",
    "sm2",
)


class LicenceError(TongbanError):
    """Base of licence errors that are not verification results (bad requests, unknown
    types)."""

    reason = "LICENCE_ERROR"
    status = "INVALID_ARGUMENT"


class LicenceTypeUnknown(LicenceError):
    reason = "LICENCE_TYPE_UNKNOWN"
    status = "NOT_FOUND"


class LicenceNumberInvalid(LicenceError):
    reason = "LICENCE_NUMBER_INVALID"
    status = "INVALID_ARGUMENT"


class VerificationFailed(TongbanError):
    """A licence, presentation, QR code, status list or trust list did not verify.

    ``check`` names the failed check; subclasses fix it.
    """

    reason = "VERIFICATION_FAILED"
    status = "FAILED_PRECONDITION"
    check: Check = "format"

    def __init__(self, message: str, *, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message, metadata={"check": self.check, **(metadata or {})})


class LicenceFormatInvalid(VerificationFailed):
    """Not parseable: wrong prefix, bad base45/base64url, truncated, malformed CBOR/JSON,
    wrong ``typ``, missing claims."""

    reason = "LICENCE_FORMAT_INVALID"
    status = "INVALID_ARGUMENT"
    check = "format"


class PayloadTooLarge(VerificationFailed):
    """A compressed payload inflates beyond the cap (a decompression bomb)."""

    reason = "PAYLOAD_TOO_LARGE"
    status = "INVALID_ARGUMENT"
    check = "format"


class SignatureInvalid(VerificationFailed):
    reason = "LICENCE_SIGNATURE_INVALID"
    check = "signature"


class SignerUntrusted(VerificationFailed):
    """The signing certificate is not in the trust list, does not chain to the exchange
    root, or is not a seal certificate of the claimed issuer."""

    reason = "SIGNER_UNTRUSTED"
    check = "issuer"


class SealRevoked(SignerUntrusted):
    """The seal certificate that signed the licence was revoked (the trust list names it
    as revoked): what it signed no longer verifies."""

    reason = "SEAL_REVOKED"


class Sm2SignatureInvalid(VerificationFailed):
    """The SM2 signature beside an SD-JWT licence is malformed, does not verify, or is
    not the issuer's (docs/keys.md, "A department's SM2 seal")."""

    reason = "SM2_SIGNATURE_INVALID"
    check = "sm2"


class Sm2SealUntrusted(VerificationFailed):
    """The SM2 seal certificate is not from the exchange's SM2 root, not the licence
    issuer's, or not (or no longer) in the trust list."""

    reason = "SM2_SEAL_UNTRUSTED"
    check = "sm2"


class DisclosureInvalid(VerificationFailed):
    reason = "DISCLOSURE_INVALID"
    check = "disclosure"


class LicenceExpired(VerificationFailed):
    reason = "LICENCE_EXPIRED"
    check = "validity"


class LicenceNotYetValid(VerificationFailed):
    reason = "LICENCE_NOT_YET_VALID"
    check = "validity"


class LicenceRevoked(VerificationFailed):
    reason = "LICENCE_REVOKED"
    check = "status"


class LicenceSuspended(VerificationFailed):
    reason = "LICENCE_SUSPENDED"
    check = "status"


class LicenceCancelled(VerificationFailed):
    """The holder gave the licence up, or it was withdrawn after the business ended
    (注销). Status lists carry it as INVALID; only the issuing registry knows why."""

    reason = "LICENCE_CANCELLED"
    check = "status"


class LicenceSuperseded(VerificationFailed):
    """A newer version of the licence (amended or renewed) replaced this one."""

    reason = "LICENCE_SUPERSEDED"
    check = "status"


class StatusUnavailable(VerificationFailed):
    """The status list could not be fetched or verified, or is past its expiry."""

    reason = "STATUS_UNAVAILABLE"
    status = "UNAVAILABLE"
    check = "status"


class StatusUrlUntrusted(VerificationFailed):
    """The licence names a status list at an address that is not under a base URL the
    trust list gives for its issuer, so the list was not fetched (a licence must not make
    a verifier request an address of its choosing)."""

    reason = "STATUS_URL_UNTRUSTED"
    check = "status"


class TrustListExpired(VerificationFailed):
    reason = "TRUST_LIST_EXPIRED"
    check = "trust-list"


class ClaimInvalid(LicenceError):
    """A licence claim is missing, unknown to the licence type, of the wrong type or too
    long, or names a claim the credential does not hold. ``metadata`` carries ``claim``
    (the field name) and ``problem`` (``missing``, ``unknown``, ``type``, ``length``,
    ``value``, ``holder_id`` or ``not_in_licence``)."""

    reason = "LICENCE_CLAIM_INVALID"
    status = "INVALID_ARGUMENT"


class TrustListUnavailable(VerificationFailed):
    """No trust list is at hand (none was ever cached, or the cache cannot be read), so no
    licence signer can be trusted."""

    reason = "TRUST_LIST_UNAVAILABLE"
    status = "UNAVAILABLE"
    check = "trust-list"


class StatusListFull(LicenceError):
    """Every index of a status list is allocated; new licences need a new list."""

    reason = "STATUS_LIST_FULL"
    status = "RESOURCE_EXHAUSTED"
