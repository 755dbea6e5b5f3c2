"""Verifying a licence as a relying party does: one entry point for an SD-JWT VC (or a
presentation of one) and for the offline QR text, returning a ``VerificationResult``
rather than raising, so that a forged, expired or revoked licence is an answer with the
failed check named, never a crash.

Checks, in order (each failure names its ``check`` and ``reason``):

1. ``format``: the text is an SD-JWT (``<jwt>~...~``) or a ``TB1:`` QR text; it parses
   within the caps (a QR payload that would inflate past 64 KiB is refused unread);
2. ``signature`` / ``issuer``: the signature verifies under a seal certificate that
   chains to the exchange root and is on the trust list (every certificate with the QR's
   ``kid`` is tried); the claimed issuer is the certificate's department;
3. ``disclosure`` (SD-JWT): every disclosure matches a signed digest;
4. ``validity``: not before ``nbf``, not at or after ``exp``;
5. ``format``: the licence type (``vct``/``lty``) is one the verifier knows;
6. ``status``: the status list bit (0 valid, 1 revoked, 2 suspended), looked up by the
   caller's ``StatusLookup``; a lookup may raise a more precise ``VerificationFailed``
   (the issuing registry knows a licence was cancelled or superseded, or the list's
   address is not one the trust list names: ``STATUS_URL_UNTRUSTED``).

The lookup is called only once checks 1-5 passed, so it never sees an address from a
forged licence. A verifier that fetches status lists over the network verifies first with
``status=None``, fetches from the result's ``status_reference`` only if it verified and
``TrustList.check_status_url`` accepts the address, then verifies again with its lookup.

The trust list must be current (``TrustList`` is returned only by a verification that
checked its expiry); an expired cached list is the caller's ``TrustListExpired``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal

from cryptography import x509

from tongban.licence._jose import decode_header
from tongban.licence.errors import (
    LicenceError,
    LicenceFormatInvalid,
    SealRevoked,
    SignerUntrusted,
    VerificationFailed,
)
from tongban.licence.qr import QR_PREFIX, certificate_kid, unverified_qr_claims, verify_qr
from tongban.licence.sdjwt import StatusReference, unverified_status, verify_sd_jwt
from tongban.licence.status_list import LicenceStatus, require_valid
from tongban.licence.trust_list import TrustList
from tongban.licence.types import LicenceTypeRegistry

__all__ = [
    "LicenceFormat",
    "StatusLookup",
    "VerificationResult",
    "claimed_status",
    "failure",
    "verify_licence",
]

LicenceFormat = Literal["sd-jwt", "qr", "unknown"]
#: Given the issuing department, the status list URI and the index, return the status
#: value, or None if the list is not at hand. May raise ``VerificationFailed``.
StatusLookup = Callable[[str, str, int], int | None]

_STATUS_NAMES = {
    LicenceStatus.VALID: "valid",
    LicenceStatus.INVALID: "revoked",
    LicenceStatus.SUSPENDED: "suspended",
}
_STATUS_BY_REASON = {
    "LICENCE_REVOKED": "revoked",
    "LICENCE_SUSPENDED": "suspended",
    "LICENCE_CANCELLED": "cancelled",
    "LICENCE_SUPERSEDED": "superseded",
    "STATUS_UNAVAILABLE": "unknown",
    "STATUS_URL_UNTRUSTED": "unknown",
}


@dataclass(frozen=True)
class VerificationResult:
    """What a verifier learns. ``verified`` is True only if every check passed (and the
    status was checked, unless the caller asked for no status check)."""

    verified: bool
    format: LicenceFormat
    message: str
    """One sentence: what was verified, or what failed and what to do."""
    check: str = ""
    """The failed check (``format``, ``signature``, ``issuer``, ``disclosure``,
    ``validity``, ``status``, ``trust-list``), empty when verified."""
    reason: str = ""
    """The stable reason code of the failure, empty when verified."""
    licence_number: str = ""
    licence_type: str = ""
    """The licence type code."""
    issuer: str = ""
    """The issuing department's code."""
    holder_id: str = ""
    holder_name: str = ""
    claims: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    """The verified claims: the clear and disclosed claims of an SD-JWT; the QR's few."""
    status: str = "unchecked"
    """``valid``, ``revoked``, ``suspended``, ``cancelled``, ``superseded``, ``unknown``
    (status list unavailable) or ``unchecked``."""
    not_before: datetime | None = None
    expires: datetime | None = None
    status_reference: StatusReference | None = None
    """Where the licence's status lives, as signed: set once the signature verified (also
    when a later check failed), None before. Not in ``to_dict``."""
    sm2_verified: bool = False
    """Whether an SM2 signature given beside the SD-JWT verified (docs/keys.md, "A
    department's SM2 seal"); False when none was given."""
    exchange: str = ""
    """The exchange that issued the licence, by this exchange's name for that peer
    (docs/federation.md, "Licences across exchanges"); empty when issued here. The
    issuer is then the department ``issuer`` of that exchange (``<exchange>/<issuer>``)."""

    def to_dict(self) -> dict[str, Any]:
        """Return the result as JSON-ready data (instants as RFC 3339 strings)."""
        return {
            "verified": self.verified,
            "format": self.format,
            "check": self.check,
            "reason": self.reason,
            "message": self.message,
            "licence_number": self.licence_number,
            "licence_type": self.licence_type,
            "issuer": self.issuer,
            "exchange": self.exchange,
            "holder_id": self.holder_id,
            "holder_name": self.holder_name,
            "claims": dict(self.claims),
            "status": self.status,
            "not_before": self.not_before.isoformat() if self.not_before else None,
            "expires": self.expires.isoformat() if self.expires else None,
            "sm2_verified": self.sm2_verified,
        }


def failure(
    error: VerificationFailed | LicenceError, fmt: LicenceFormat, **known: Any
) -> VerificationResult:
    """Return the unverified result for ``error`` (its check, reason and message)."""
    check = error.metadata.get("check", "format")
    return VerificationResult(
        verified=False,
        format=fmt,
        message=error.message,
        check=check,
        reason=error.reason,
        status=_STATUS_BY_REASON.get(error.reason, known.pop("status", "unchecked")),
        **known,
    )


def _hex(value: object) -> bytes | None:
    try:
        return bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _x5c_fingerprint(text: str) -> bytes | None:
    """SHA-256 of the x5c leaf an SD-JWT names (unverified: only to explain a refusal)."""
    try:
        header = decode_header(text.split("~", 1)[0], "licence")
        chain = header.get("x5c")
        if not isinstance(chain, list) or not chain or not isinstance(chain[0], str):
            return None
        return hashlib.sha256(base64.b64decode(chain[0], validate=True)).digest()
    except (VerificationFailed, LicenceError, ValueError, binascii.Error):
        return None


def _if_revoked(
    error: VerificationFailed, trust_list: TrustList, fingerprint: bytes | None
) -> VerificationFailed:
    """``error``, or SealRevoked when the untrusted signer is a seal the trust list names
    as revoked (so the verifier learns why, not just that it is unknown)."""
    seal = trust_list.revoked_seal(fingerprint) if fingerprint else None
    if seal is None:
        return error
    return SealRevoked(
        f"The seal of {seal.department} that signed this licence (certificate sha256 "
        f"{seal.fingerprint.hex()[:16]}…) was revoked on {seal.revoked_at.date().isoformat()}: "
        f"{seal.reason}. Ask the holder for a licence re-issued under the current seal.",
        metadata={
            "check": "issuer",
            "department": seal.department,
            "seal_sha256": seal.fingerprint.hex(),
            "revoked_at": seal.revoked_at.isoformat(),
        },
    )


def _status(lookup: StatusLookup | None, issuer: str, uri: str, index: int, number: str) -> str:
    if lookup is None:
        return "unchecked"
    return _STATUS_NAMES[require_valid(lookup(issuer, uri, index), number, uri, index)]


_kids_memo: tuple[TrustList, list[tuple[bytes, x509.Certificate]]] | None = None


def _kids(trust_list: TrustList) -> list[tuple[bytes, x509.Certificate]]:
    """The (kid, certificate) pairs of the trust list's seals, computed once per list."""
    global _kids_memo  # one entry: a verifier uses one trust list at a time
    memo = _kids_memo
    if memo is not None and memo[0] is trust_list:
        return memo[1]
    pairs = [(certificate_kid(c), c) for c in trust_list.all_seal_certificates()]
    _kids_memo = (trust_list, pairs)
    return pairs


def _named(exchange: str, department: str) -> str:
    """``<exchange>/<department>`` for a peer's department, else the department."""
    return f"{exchange}/{department}" if exchange else department


def _at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def claimed_status(text: str) -> StatusReference | None:
    """Return the status reference licence ``text`` (SD-JWT or QR) claims, read WITHOUT
    verifying anything, or None if the text is malformed or claims none: for a verifier
    that looks statuses up in a registry of its own before it calls ``verify_licence``,
    which decides whether to believe the claim. Never fetch the URI it names: anyone can
    write one (use ``VerificationResult.status_reference`` after verifying instead).

    Parsed within the caps verification uses, so a compression bomb or deeply nested
    payload is refused, never expanded; never raises.
    """
    text = text.strip()
    try:
        if text.startswith(QR_PREFIX):
            claims = unverified_qr_claims(text)
            return StatusReference(idx=claims.status_index, uri=claims.status_uri)
        return unverified_status(text)
    except VerificationFailed:  # verification reports what is wrong with the text
        return None


def verify_licence(
    text: str,
    *,
    roots: Sequence[x509.Certificate],
    trust_list: TrustList,
    registry: LicenceTypeRegistry,
    now: datetime,
    status: StatusLookup | None,
    exchange: str = "",
) -> VerificationResult:
    """Return the result of verifying ``text`` (an SD-JWT VC or presentation, or a
    ``TB1:`` QR text) at ``now`` against the exchange ``roots`` and ``trust_list``,
    checking its status with ``status`` (None: no status check, status "unchecked").
    ``exchange`` names the issuing exchange when ``roots`` and ``trust_list`` are a
    peer's (the result's ``exchange``, and ``<exchange>/<issuer>`` in its message).

    Never raises for bad input; raises ValueError only for a naive ``now``.
    """
    if now.tzinfo is None:
        raise ValueError("verify_licence needs a timezone-aware `now`.")
    result = _verify(text, roots, trust_list, registry, now, status, exchange)
    return dataclasses.replace(result, exchange=exchange) if exchange else result


def _verify(
    text: str,
    roots: Sequence[x509.Certificate],
    trust_list: TrustList,
    registry: LicenceTypeRegistry,
    now: datetime,
    status: StatusLookup | None,
    exchange: str,
) -> VerificationResult:
    text = text.strip() if isinstance(text, str) else text
    if not isinstance(text, str) or not text:
        return failure(LicenceFormatInvalid("No licence text was given."), "unknown")
    if text.startswith(QR_PREFIX):
        return _verify_qr(text, roots, trust_list, registry, now, status, exchange)
    if "~" in text and "." in text.split("~", 1)[0]:
        return _verify_sd_jwt(text, roots, trust_list, registry, now, status, exchange)
    return failure(
        LicenceFormatInvalid(
            f"This is neither a licence QR text (starting {QR_PREFIX!r}) nor an SD-JWT "
            "licence (<jwt>~<disclosure>~...~); check what was scanned or pasted."
        ),
        "unknown",
    )


def _verify_qr(
    text: str,
    roots: Sequence[x509.Certificate],
    trust_list: TrustList,
    registry: LicenceTypeRegistry,
    now: datetime,
    lookup: StatusLookup | None,
    exchange: str,
) -> VerificationResult:
    certificates = _kids(trust_list)
    try:
        verified = verify_qr(
            text,
            certificates=certificates,
            roots=roots,
            now=now,
            intermediates=trust_list.intermediates,
        )
    except VerificationFailed as e:
        kid = e.metadata.get("kid") if isinstance(e, SignerUntrusted) else None
        return failure(_if_revoked(e, trust_list, _hex(kid)), "qr")
    claims = verified.claims
    known: dict[str, Any] = {
        "licence_number": claims.licence_number,
        "licence_type": claims.licence_type,
        "issuer": claims.issuer,
        "holder_id": claims.holder_id,
        "holder_name": claims.holder_name,
        "claims": MappingProxyType({"holder_name": claims.holder_name}),
        "not_before": _at(claims.not_before),
        "expires": _at(claims.expires),
        "status_reference": StatusReference(idx=claims.status_index, uri=claims.status_uri),
    }
    try:
        licence_type = registry.get(claims.licence_type)
        if claims.issuer not in licence_type.issuers:
            raise LicenceFormatInvalid(
                f"Department {claims.issuer!r} does not issue {licence_type.name_en} "
                f"({licence_type.name_zh}) licences, yet sealed this one.",
                metadata={"check": "issuer"},
            )
        found = _status(
            lookup, claims.issuer, claims.status_uri, claims.status_index, claims.licence_number
        )
    except (VerificationFailed, LicenceError) as e:
        return failure(e, "qr", **known)
    return VerificationResult(
        verified=True,
        format="qr",
        message=(
            f"{licence_type.name_zh} {claims.licence_number} of {claims.holder_name}, issued by "
            f"{_named(exchange, claims.issuer)}: signature, issuer and validity verified; "
            f"status {found}."
        ),
        status=found,
        **known,
    )


def _verify_sd_jwt(
    text: str,
    roots: Sequence[x509.Certificate],
    trust_list: TrustList,
    registry: LicenceTypeRegistry,
    now: datetime,
    lookup: StatusLookup | None,
    exchange: str,
) -> VerificationResult:
    try:
        verified = verify_sd_jwt(
            text, roots=roots, trusted=trust_list.all_seal_certificates(), now=now
        )
    except VerificationFailed as e:
        leaf = _x5c_fingerprint(text) if isinstance(e, SignerUntrusted) else None
        return failure(_if_revoked(e, trust_list, leaf), "sd-jwt")
    claims = {**verified.clear_claims, **verified.disclosed_claims}
    number = claims.get("licence_number")
    known: dict[str, Any] = {
        "licence_number": number if isinstance(number, str) else "",
        "issuer": verified.department,
        "holder_id": verified.subject,
        "claims": MappingProxyType(claims),
        "not_before": verified.not_before,
        "expires": verified.expires_at,
        "status_reference": verified.status,
    }
    try:
        licence_type = registry.by_vct(verified.vct)
        known["licence_type"] = licence_type.code
        name = next(
            (
                claims[c.name]
                for c in licence_type.claims
                if c.type == "string" and not c.holder_id and c.name in claims
            ),
            "",
        )
        known["holder_name"] = name if isinstance(name, str) else ""
        if verified.department not in licence_type.issuers:
            raise LicenceFormatInvalid(
                f"Department {verified.department!r} does not issue {licence_type.name_en} "
                f"({licence_type.name_zh}) licences, yet sealed this one.",
                metadata={"check": "issuer"},
            )
        found = _status(
            lookup,
            verified.department,
            verified.status.uri,
            verified.status.idx,
            known["licence_number"] or "(unnumbered)",
        )
    except (VerificationFailed, LicenceError) as e:
        return failure(e, "sd-jwt", **known)
    return VerificationResult(
        verified=True,
        format="sd-jwt",
        message=(
            f"{licence_type.name_zh} {known['licence_number']} of {known['holder_name']}, "
            f"issued by {_named(exchange, verified.department)}: signature, issuer, "
            f"disclosures and validity verified; status {found}."
        ),
        status=found,
        **known,
    )
