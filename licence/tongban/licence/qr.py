"""The offline QR code of an electronic licence (电子证照): a seal-signed summary that a
verifier can check with no network, given the trust list and the exchange root.

The text is ``TB1:`` + base45(zlib(COSE_Sign1)), the construction of the EU Digital COVID
Certificate: COSE_Sign1 (ES256) is compact, zlib trims the CBOR a little, and base45 uses
only characters a QR code stores in alphanumeric mode. The COSE payload is a CWT-style
claims map:

=========  ==============================================================
key        claim
=========  ==============================================================
1 (iss)    issuing department code (the seal certificate's department)
2 (sub)    holder id: unified social credit code or citizen id number
4 (exp)    expiry, seconds since 1970 (not valid at or after it)
5 (nbf)    start of validity, seconds since 1970
65535      status: ``{"status_list": {"idx": index, "uri": list URI}}``
           (the Token Status List draft's CWT ``status`` claim)
"lno"      licence number
"lty"      licence type code
"hnm"      holder name
=========  ==============================================================

The signing certificate is named by ``kid``: the first 8 bytes of the SHA-256 of its DER.
Eight bytes can collide (by chance or by design), so a verifier tries every trusted
certificate with that ``kid`` rather than the first one found.
"""

from __future__ import annotations

import functools
import hashlib
import io
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import cbor2
import segno
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tongban.licence._inflate import inflate_capped
from tongban.licence.base45 import b45decode, b45encode
from tongban.licence.errors import (
    LicenceExpired,
    LicenceFormatInvalid,
    LicenceNotYetValid,
    PayloadTooLarge,
    SignatureInvalid,
    SignerUntrusted,
)
from tongban.licence.status_list import LicenceStatus, require_valid
from tongban.signing.certs import department_code, verify_certificate
from tongban.signing.cose import (
    CoseFormatInvalid,
    CoseSign1,
    decode_cbor,
    decode_cose,
    sign_cose,
    verify_cose,
)
from tongban.signing.errors import CertificateInvalid
from tongban.signing.errors import SignatureInvalid as CoseSignatureInvalid
from tongban.signing.keys import Signer

__all__ = [
    "KID_BYTES",
    "MAX_INFLATED_BYTES",
    "MAX_QR_CHARS",
    "QR_PREFIX",
    "QrClaims",
    "StatusLookup",
    "VerifiedQr",
    "certificate_kid",
    "encode_qr",
    "qr_png",
    "unverified_qr_claims",
    "verify_qr",
]

#: Every licence QR text starts with this; the digit is the format version.
QR_PREFIX = "TB1:"
#: The most characters a QR code holds in alphanumeric mode (version 40, level L);
#: longer text cannot have come from one.
MAX_QR_CHARS = 4296
#: The cap on the inflated COSE message; a real one is a few hundred bytes.
MAX_INFLATED_BYTES = 64 * 1024
#: Length of the ``kid``: a truncated SHA-256 of the signing certificate's DER.
KID_BYTES = 8

#: Looks up a licence's status: given the status list URI and index, return the
#: status value (``LicenceStatus``), or None if the list is not at hand.
StatusLookup = Callable[[str, int], int | None]

_ISS, _SUB, _EXP, _NBF, _STATUS = 1, 2, 4, 5, 65535
_NUMBER, _TYPE, _NAME = "lno", "lty", "hnm"
_KEYS: frozenset[int | str] = frozenset({_ISS, _SUB, _EXP, _NBF, _STATUS, _NUMBER, _TYPE, _NAME})
_TEXT_FIELDS = (
    "licence_number",
    "licence_type",
    "holder_id",
    "holder_name",
    "issuer",
    "status_uri",
)
_NUMBER_FIELDS = ("not_before", "expires", "status_index")
# The exact types of the claims as cbor2 decodes them, in from_cbor's order.
_CLAIM_TYPES = (str, str, str, str, str, str, int, int, int)


@dataclass(frozen=True)
class QrClaims:
    """What a licence QR code asserts, signed by the issuing department's seal."""

    licence_number: str
    """The licence number printed on the licence."""
    licence_type: str
    """The licence type code (e.g. a business licence)."""
    holder_id: str
    """The holder's unified social credit code (organisations) or citizen id number."""
    holder_name: str
    """The holder's name as on the licence."""
    issuer: str
    """The issuing department's code; must match the seal certificate's department."""
    not_before: int
    """Start of validity, seconds since 1970 (UTC)."""
    expires: int
    """End of validity, seconds since 1970 (UTC); the licence is invalid from then on."""
    status_uri: str
    """URI of the status list holding this licence's revocation status."""
    status_index: int
    """This licence's index in that status list."""

    def __post_init__(self) -> None:
        """Raises ValueError for an empty or non-text text field, a negative or non-int
        number, or ``not_before`` not before ``expires``."""
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"QrClaims.{name} must be a non-empty string.")
        for name in _NUMBER_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"QrClaims.{name} must be a non-negative integer.")
        if self.not_before >= self.expires:
            raise ValueError(
                f"QrClaims.not_before ({self.not_before}) must be before expires ({self.expires})."
            )

    def to_cbor(self) -> bytes:
        """Return the claims as the canonical CBOR map signed inside the QR code."""
        return cbor2.dumps(
            {
                _ISS: self.issuer,
                _SUB: self.holder_id,
                _EXP: self.expires,
                _NBF: self.not_before,
                _STATUS: {"status_list": {"idx": self.status_index, "uri": self.status_uri}},
                _NUMBER: self.licence_number,
                _TYPE: self.licence_type,
                _NAME: self.holder_name,
            },
            canonical=True,
        )

    @classmethod
    def from_cbor(cls, data: bytes) -> QrClaims:
        """Return the claims in CBOR map ``data``.

        Raises LicenceFormatInvalid if ``data`` is not strict CBOR, lacks a claim, holds
        a claim not listed above (so a future restriction is never silently ignored), or
        a claim of the wrong type.
        """
        try:
            item = decode_cbor(data)
        except CoseFormatInvalid as e:
            raise LicenceFormatInvalid(f"The QR claims are not valid CBOR: {e.message}") from e
        if not isinstance(item, Mapping):
            raise LicenceFormatInvalid("The QR claims are not a CBOR map.")
        keys = set(item)
        if bool in set(map(type, keys)):
            # true == 1 in Python; the claim keys are integers and text only.
            raise LicenceFormatInvalid("The QR claims use a boolean as a claim key.")
        if keys != _KEYS:
            missing, unknown = _KEYS - keys, keys - _KEYS
            raise LicenceFormatInvalid(
                "The QR claims do not match format TB1 "
                f"(missing {sorted(map(str, missing))}, unknown {sorted(map(str, unknown))})."
            )
        status = item[_STATUS]
        entry = status.get("status_list") if isinstance(status, Mapping) else None
        if not isinstance(entry, Mapping) or set(entry) != {"idx", "uri"} or len(status) != 1:
            raise LicenceFormatInvalid(
                'The QR status claim must be {"status_list": {"idx": ..., "uri": ...}}.'
            )
        values = (
            item[_NUMBER], item[_TYPE], item[_SUB], item[_NAME], item[_ISS], entry["uri"],
            item[_NBF], item[_EXP], entry["idx"],
        )  # fmt: skip
        try:
            if tuple(map(type, values)) != _CLAIM_TYPES:  # else _typed names the wrong one
                values = (
                    _typed(item, _NUMBER, str), _typed(item, _TYPE, str),
                    _typed(item, _SUB, str), _typed(item, _NAME, str),
                    _typed(item, _ISS, str), _typed(entry, "uri", str),
                    _typed(item, _NBF, int), _typed(item, _EXP, int),
                    _typed(entry, "idx", int),
                )  # fmt: skip
            number, kind, holder, name, issuer, uri, nbf, exp, index = values
            return cls(
                licence_number=number,
                licence_type=kind,
                holder_id=holder,
                holder_name=name,
                issuer=issuer,
                not_before=nbf,
                expires=exp,
                status_uri=uri,
                status_index=index,
            )
        except (TypeError, ValueError) as e:
            raise LicenceFormatInvalid(f"The QR claims are malformed: {e}") from e


_T = TypeVar("_T")


def _typed(claims: Mapping[object, object], key: int | str, kind: type[_T]) -> _T:
    value = claims[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"claim {key!r} must be {kind.__name__}, not {type(value).__name__}")
    return value


@dataclass(frozen=True)
class VerifiedQr:
    """A licence QR code that passed every check."""

    claims: QrClaims
    """The signed claims."""
    certificate: x509.Certificate
    """The trusted seal certificate whose key signed them."""
    status: LicenceStatus | None
    """The status found (always VALID), or None if no status lookup was given."""


@functools.lru_cache(maxsize=1024)
def certificate_kid(certificate: x509.Certificate) -> bytes:
    """Return the QR ``kid`` of ``certificate``: the first 8 bytes of the SHA-256 of its
    DER encoding."""
    der = certificate.public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).digest()[:KID_BYTES]


def encode_qr(claims: QrClaims, signer: Signer, certificate: x509.Certificate) -> str:
    """Return the QR text (``TB1:`` + base45(zlib(COSE_Sign1))) of ``claims``, signed by
    ``signer`` whose seal certificate is ``certificate``.

    Raises ValueError if the signer is not ES256 or does not hold the certificate's key,
    if the certificate's department is not ``claims.issuer``, or if the text would not
    fit in a QR code; CertificateInvalid if the certificate names no department;
    SigningError if the signer fails.
    """
    if certificate.public_key() != signer.public_key():
        raise ValueError("The signer's key is not the key of the given seal certificate.")
    department = department_code(certificate)
    if department != claims.issuer:
        raise ValueError(
            f"The seal certificate belongs to department {department!r}, "
            f"but the claims name issuer {claims.issuer!r}; verifiers would refuse the QR code."
        )
    message = sign_cose(claims.to_cbor(), signer, kid=certificate_kid(certificate))
    text = QR_PREFIX + b45encode(zlib.compress(message, 9))
    if len(text) > MAX_QR_CHARS:
        raise ValueError(
            f"The QR text is {len(text)} characters, more than a QR code holds "
            f"({MAX_QR_CHARS}); shorten the claims."
        )
    return text


def _at(seconds: int) -> str:
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        return f"{seconds} (seconds since 1970)"


# Path validation costs more than the signature check, and a verifier sees the same few
# seal certificates again and again. A certificate that validated at one instant validates
# at any instant inside its own and its issuers' validity (nothing else in path
# validation depends on the time), so the result is reused only inside that window.
# Hashing a certificate hashes its DER, so the last key is compared first (a tuple
# comparison, element by element, is an identity check when the objects are the same).
_SEAL_CACHE_SIZE = 256
_SealKey = tuple[x509.Certificate, tuple[x509.Certificate, ...], tuple[x509.Certificate, ...]]
_seal_cache: dict[_SealKey, tuple[datetime, datetime, str]] = {}
_seal_last: tuple[_SealKey, tuple[datetime, datetime, str]] | None = None
_seal_cache_lock = threading.Lock()


def _seal_department(
    certificate: x509.Certificate,
    roots: Sequence[x509.Certificate],
    intermediates: tuple[x509.Certificate, ...],
    now: datetime,
) -> str:
    """Return the department of seal ``certificate`` once it validates to ``roots`` (via
    ``intermediates``) at ``now`` for usage "seal"; raises CertificateInvalid."""
    global _seal_last
    key = (certificate, tuple(roots), intermediates)
    last = _seal_last
    hit = last[1] if last is not None and last[0] == key else _seal_cache.get(key)
    if hit is not None and hit[0] <= now <= hit[1]:
        _seal_last = (key, hit)
        return hit[2]
    chain = verify_certificate(
        certificate, roots=roots, intermediates=intermediates, now=now, usage="seal"
    )
    department = department_code(certificate)
    window = (
        max(c.not_valid_before_utc for c in chain),
        min(c.not_valid_after_utc for c in chain),
        department,
    )
    with _seal_cache_lock:
        if len(_seal_cache) >= _SEAL_CACHE_SIZE:
            _seal_cache.pop(next(iter(_seal_cache)))  # the oldest entry
        _seal_cache[key] = window
    _seal_last = (key, window)
    return department


# Parsing the key costs a tenth of the check, and hashing a certificate (as an
# lru_cache would) hashes its DER; keyed by identity instead, each entry holding its
# certificate so that the id cannot be reused while the entry lives.
_KEY_CACHE_SIZE = 256
_public_keys: dict[int, tuple[x509.Certificate, object]] = {}


def _public_key(certificate: x509.Certificate) -> object:
    found = _public_keys.get(id(certificate))
    if found is not None and found[0] is certificate:
        return found[1]
    key = certificate.public_key()
    if len(_public_keys) >= _KEY_CACHE_SIZE:
        _public_keys.clear()
    _public_keys[id(certificate)] = (certificate, key)
    return key


def _signer_certificate(
    claims: QrClaims,
    signed_by: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    intermediates: tuple[x509.Certificate, ...],
    now: datetime,
) -> x509.Certificate:
    """Return the first of ``signed_by`` that is a seal certificate of ``claims.issuer``
    chaining to ``roots``; raises SignerUntrusted if none is."""
    problems: list[str] = []
    for certificate in signed_by:
        try:
            department = _seal_department(certificate, roots, intermediates, now)
        except CertificateInvalid as e:
            problems.append(e.message)
            continue
        if department == claims.issuer:
            return certificate
        problems.append(
            f"the seal belongs to department {department!r}, but the licence names issuer "
            f"{claims.issuer!r}"
        )
    raise SignerUntrusted(
        f"The QR code's signing certificate is not a trusted seal of {claims.issuer!r}: "
        + "; ".join(problems)
    )


def _check_status(claims: QrClaims, lookup: StatusLookup) -> LicenceStatus:
    value = lookup(claims.status_uri, claims.status_index)
    return require_valid(value, claims.licence_number, claims.status_uri, claims.status_index)


def _open(text: str) -> CoseSign1:
    """The COSE_Sign1 message in QR ``text``, within the caps; raise LicenceFormatInvalid
    or PayloadTooLarge (see ``verify_qr``)."""
    if not text.startswith(QR_PREFIX):
        raise LicenceFormatInvalid(
            f"The QR text does not start with {QR_PREFIX!r}, so it is not a Tongban licence QR "
            "code (or is from an unsupported format version)."
        )
    if len(text) > MAX_QR_CHARS:
        raise PayloadTooLarge(
            f"The QR text is {len(text)} characters, more than any QR code holds ({MAX_QR_CHARS})."
        )
    cose = inflate_capped(b45decode(text[len(QR_PREFIX) :]), MAX_INFLATED_BYTES, "The QR payload")
    try:
        return decode_cose(cose)
    except CoseFormatInvalid as e:
        raise LicenceFormatInvalid(f"The QR payload is not a valid COSE_Sign1: {e.message}") from e


def unverified_qr_claims(text: str) -> QrClaims:
    """Return the claims QR ``text`` carries WITHOUT checking its signature or anything
    else: for a caller that prefetches what verification will need (the status), never
    for a decision. Parsed within the same caps as ``verify_qr``.

    Raises LicenceFormatInvalid or PayloadTooLarge as ``verify_qr`` does for the format.
    """
    return QrClaims.from_cbor(_open(text).payload)


def verify_qr(
    text: str,
    *,
    certificates: Sequence[x509.Certificate | tuple[bytes, x509.Certificate]],
    roots: Sequence[x509.Certificate],
    now: datetime,
    status: StatusLookup | None = None,
    intermediates: Sequence[x509.Certificate] = (),
) -> VerifiedQr:
    """Return the claims of licence QR ``text`` once every check passes: format; an
    ES256 signature by one of ``certificates`` (the trust list's seal certificates)
    with the message's ``kid``; that certificate a seal chaining to ``roots`` and of the
    department the claims name as issuer; ``now`` within validity; and, if ``status`` is
    given, the licence's status VALID. ``intermediates`` (the trust list's issuing CA
    certificates) help build that chain; they are not trusted themselves.

    A certificate's ``kid`` is ``certificate_kid(certificate)``; where the trust list
    publishes a ``kid`` with each certificate, pass ``(kid, certificate)`` pairs instead.
    Every certificate with the message's ``kid`` is tried, since kids can collide.

    Raises LicenceFormatInvalid if the prefix is not ``TB1:``, the text is not base45,
    zlib or COSE_Sign1 (truncated included) or the claims are malformed; PayloadTooLarge
    if the text exceeds a QR code's capacity or inflates beyond ``MAX_INFLATED_BYTES``;
    SignerUntrusted if no trusted certificate has the ``kid``, or none whose signature
    verifies chains to ``roots`` as a seal of the claimed issuer; SignatureInvalid if
    the signature verifies under none of them; LicenceNotYetValid / LicenceExpired
    outside validity; LicenceRevoked / LicenceSuspended / StatusUnavailable from the
    status lookup; ValueError for a naive ``now``.
    """
    if now.tzinfo is None:
        raise ValueError("verify_qr needs a timezone-aware `now`.")
    message = _open(text)

    candidates = [
        entry[1] if isinstance(entry, tuple) else entry
        for entry in certificates
        if (entry[0] if isinstance(entry, tuple) else certificate_kid(entry)) == message.kid
    ]
    if not candidates:
        raise SignerUntrusted(
            f"No certificate in the trust list has kid {message.kid.hex()}; the signer is "
            "unknown (refresh the trust list if the department's seal is new).",
            metadata={"kid": message.kid.hex()},
        )
    signed_by = []
    for certificate in candidates:
        key = _public_key(certificate)
        if not isinstance(key, ec.EllipticCurvePublicKey):
            continue  # cannot have made an ES256 signature
        try:
            verify_cose(message, key)
        except CoseSignatureInvalid:
            continue
        signed_by.append(certificate)
    if not signed_by:
        raise SignatureInvalid(
            f"The QR signature does not verify under any of the {len(candidates)} trusted "
            f"certificates with kid {message.kid.hex()}; the QR code was altered or forged.",
            metadata={"kid": message.kid.hex()},
        )

    claims = QrClaims.from_cbor(message.payload)
    certificate = _signer_certificate(claims, signed_by, roots, tuple(intermediates), now)

    t = now.timestamp()
    if t < claims.not_before:
        raise LicenceNotYetValid(
            f"Licence {claims.licence_number} is not valid until {_at(claims.not_before)} "
            f"(checked at {now.isoformat()})."
        )
    if t >= claims.expires:
        raise LicenceExpired(
            f"Licence {claims.licence_number} expired at {_at(claims.expires)} "
            f"(checked at {now.isoformat()})."
        )
    found = _check_status(claims, status) if status is not None else None
    return VerifiedQr(claims=claims, certificate=certificate, status=found)


def qr_png(text: str, scale: int = 4) -> bytes:
    """Return a PNG image of ``text`` as a QR code (error correction at least M, raised
    when it costs no extra size; 4-module quiet zone), ``scale`` pixels per module.

    Raises ValueError if ``scale`` is below 1 or the text does not fit in a QR code.
    """
    if scale < 1:
        raise ValueError(f"The QR scale must be at least 1 pixel per module, not {scale}.")
    try:
        code = segno.make_qr(text, error="m")
    except segno.DataOverflowError as e:
        raise ValueError(f"The text ({len(text)} characters) does not fit in a QR code.") from e
    out = io.BytesIO()
    code.save(out, kind="png", scale=scale, border=4)
    return out.getvalue()
