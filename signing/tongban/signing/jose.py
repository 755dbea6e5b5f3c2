"""Compact JWS and JWT with ES256 and EdDSA.

Signing goes through the ``Signer`` seam (so an HSM can sign later); verification goes
through joserfc. Every verification failure raises ``SignatureInvalid``; nothing here
returns a bool.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import ClassVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwa import EdDSAAlgorithm, ESAlgorithm, JWSAlgModel
from joserfc.jwk import ECKey, OKPKey

from tongban.signing.errors import SignatureInvalid, SigningError
from tongban.signing.keys import PublicKey, Signer

__all__ = [
    "VerifiedJWS",
    "b64url",
    "b64url_decode",
    "sign_jws",
    "sign_jwt",
    "verify_jws",
    "verify_jwt",
]

_ALGORITHMS = frozenset({"ES256", "EdDSA"})
_SIGNATURE_BYTES = 64  # ES256 r||s and Ed25519 are both 64 bytes
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class _EdDSA(EdDSAAlgorithm):
    # joserfc warns that RFC 9864 deprecates the polymorphic "EdDSA" name in favour of
    # "Ed25519"; we only ever pair it with Ed25519 keys, so the ambiguity cannot arise.
    security_warning = None  # type: ignore[assignment]


class _Registry(jws.JWSRegistry):
    """Exactly our two algorithms (so "none", HS* and RS* do not exist here), and size
    limits raised to fit an ``x5c`` chain in the header and a gRPC-sized payload."""

    algorithms: ClassVar[dict[str, JWSAlgModel]] = {  # type: ignore[misc]
        "ES256": ESAlgorithm("ES256", "P-256", 256),
        "EdDSA": _EdDSA(),
    }
    recommended: ClassVar[list[str]] = []  # type: ignore[misc]
    max_header_length = 16 * 1024
    max_payload_length = 4 * 1024 * 1024


@dataclass(frozen=True)
class VerifiedJWS:
    """A JWS whose signature has been checked."""

    payload: bytes
    """The signed bytes (for a detached JWS, the payload passed in)."""
    header: Mapping[str, object]
    """The protected header, read-only."""


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str, what: str) -> bytes:
    """Decode one part of a compact token; SignatureInvalid unless it is canonical
    base64url (``what`` names the part in the message)."""
    # Require canonical base64url: the stdlib decoder skips stray characters and ignores
    # trailing bits, which would let one signature stand for many distinct token strings.
    try:
        if _B64URL.fullmatch(segment):
            raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
            if b64url(raw) == segment:
                return raw
    except binascii.Error:
        pass
    raise SignatureInvalid(f"The JWS {what} is not canonical base64url; the token is malformed.")


def _check_algorithms(algorithms: Collection[str]) -> None:
    unknown = set(algorithms) - _ALGORITHMS
    if not algorithms or unknown:
        raise ValueError(
            f"algorithms must be a non-empty subset of {sorted(_ALGORITHMS)}, got "
            f"{sorted(algorithms)}."
        )


def sign_jws(
    payload: bytes,
    signer: Signer,
    *,
    headers: Mapping[str, object] | None = None,
    detached: bool = False,
) -> str:
    """Return a compact JWS of ``payload`` signed by ``signer``, with ``alg`` from the
    signer and ``headers`` (e.g. kid, typ, x5c) added to the protected header. With
    ``detached``, the payload part is left empty (RFC 7515 Appendix F).

    Raises ValueError if ``headers`` sets ``alg`` or ``b64`` or holds an ill-typed
    registered header, or if the header (16 KiB) or attached payload (4 MiB, encoded) is
    too large; SigningError if the signer returns a malformed signature.
    """
    alg = signer.algorithm
    if alg not in _ALGORITHMS:
        raise ValueError(f"Signer algorithm {alg!r} is not one of {sorted(_ALGORITHMS)}.")
    extra = dict(headers or {})
    for name in ("alg", "b64"):
        if name in extra:
            raise ValueError(f"The {name!r} header is set by sign_jws and cannot be passed in.")
    header: dict[str, object] = {"alg": alg, **extra}
    try:
        _Registry(strict_check_header=False).check_header(header)
    except JoseError as e:
        raise ValueError(f"Invalid JWS header: {e}") from e

    header_part = b64url(json.dumps(header, separators=(",", ":")).encode())
    payload_part = b64url(payload)
    # Refuse to make tokens that verify_jws would refuse for size.
    if len(header_part) > _Registry.max_header_length:
        raise ValueError(f"The JWS header exceeds {_Registry.max_header_length} bytes encoded.")
    if not detached and len(payload_part) > _Registry.max_payload_length:
        raise ValueError(
            f"The payload exceeds {_Registry.max_payload_length} bytes encoded; use detached=True."
        )
    signing_input = f"{header_part}.{payload_part}"
    signature = signer.sign(signing_input.encode("ascii"))
    if len(signature) != _SIGNATURE_BYTES:
        raise SigningError(
            f"The {alg} signer returned a {len(signature)}-byte signature, not the "
            f"{_SIGNATURE_BYTES}-byte JOSE form; fix the signer (ES256 needs raw r||s, not DER)."
        )
    return ".".join((header_part, "" if detached else payload_part, b64url(signature)))


def _jose_key(public_key: PublicKey) -> ECKey | OKPKey:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _imported(der, isinstance(public_key, ec.EllipticCurvePublicKey))


@functools.lru_cache(maxsize=256)
def _imported(der: bytes, elliptic: bool) -> ECKey | OKPKey:
    # A verifier sees the same few keys again and again (peers' nodes, seals), and joserfc
    # parses a key anew on each import: ~30 of the ~140 µs an ES256 verify_jws took.
    # Its key objects are only read when verifying.
    return ECKey.import_key(der) if elliptic else OKPKey.import_key(der)


def verify_jws(
    token: str,
    public_key: PublicKey,
    *,
    algorithms: Collection[str] = ("ES256", "EdDSA"),
    detached_payload: bytes | None = None,
) -> VerifiedJWS:
    """Return the payload and protected header of compact JWS ``token`` once its
    signature checks out under ``public_key`` with one of ``algorithms``. Pass
    ``detached_payload`` for a detached JWS (whose payload part must then be empty).

    Raises SignatureInvalid if the token is malformed, uses an algorithm not allowed
    (``none`` never is), does not match the key type, or the signature is wrong;
    ValueError if ``algorithms`` is empty or names an algorithm other than ES256/EdDSA.
    """
    _check_algorithms(algorithms)
    parts = token.split(".")
    if len(parts) != 3:
        raise SignatureInvalid(
            f"The JWS has {len(parts)} dot-separated parts instead of 3; it is not a compact JWS."
        )
    try:
        header = json.loads(b64url_decode(parts[0], "header"))
    except ValueError as e:  # includes UnicodeDecodeError and JSONDecodeError
        raise SignatureInvalid("The JWS header is not valid JSON; the token is malformed.") from e
    b64url_decode(parts[2], "signature")  # only checked for canonical form; joserfc verifies it
    if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
        raise SignatureInvalid("The JWS header has no 'alg'; the token is malformed.")
    if header["alg"] not in algorithms:
        raise SignatureInvalid(
            f"The JWS uses alg {header['alg']!r}, which is not allowed here (allowed: "
            f"{sorted(algorithms)})."
        )
    if "b64" in header:
        raise SignatureInvalid(
            "The JWS uses the unencoded-payload option (b64), which Tongban does not accept; "
            "sign with a base64url payload."
        )
    if detached_payload is None:
        payload = b64url_decode(parts[1], "payload")
    elif parts[1]:
        raise SignatureInvalid("Expected a detached JWS, but the token carries a payload.")
    else:
        payload = detached_payload

    try:
        jws.deserialize_compact(
            token,
            _jose_key(public_key),
            registry=_Registry(algorithms=list(algorithms), strict_check_header=False),
            payload=detached_payload,
        )
    except JoseError as e:
        raise SignatureInvalid(
            f"The JWS failed verification with the given {header['alg']} key "
            f"({e.error}: {e.description or 'the signature does not match'})."
        ) from e
    return VerifiedJWS(payload=payload, header=MappingProxyType(header))


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"Claim datetime {value!r} is naive; pass an aware one.")
        return int(value.timestamp())
    raise TypeError(f"Claim value of type {type(value).__name__} is not JSON-serialisable.")


def sign_jwt(
    claims: Mapping[str, object],
    signer: Signer,
    *,
    headers: Mapping[str, object] | None = None,
) -> str:
    """Return a compact JWT of ``claims`` signed by ``signer`` (header ``typ`` "JWT"
    unless ``headers`` overrides it). Aware datetimes become NumericDate (seconds).

    Raises TypeError for a claim that is not JSON-serialisable, ValueError for a naive
    datetime or a bad header, SigningError if the signer misbehaves.
    """
    payload = json.dumps(dict(claims), separators=(",", ":"), default=_json_default)
    return sign_jws(payload.encode(), signer, headers={"typ": "JWT", **(headers or {})})


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _at(timestamp: float) -> str:
    try:
        return datetime.fromtimestamp(timestamp, UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        return f"{timestamp} (seconds since 1970)"


def _numeric_date(claims: Mapping[str, object], name: str) -> float | None:
    if name not in claims:
        return None
    value = claims[name]
    try:
        if not isinstance(value, bool) and isinstance(value, int | float):
            seconds = float(value)
            if math.isfinite(seconds):
                return seconds
    except OverflowError:  # an integer too large for a float
        pass
    raise SignatureInvalid(f"The JWT claim {name!r} is not a NumericDate (seconds since 1970).")


def verify_jwt(
    token: str,
    public_key: PublicKey,
    *,
    now: datetime,
    algorithms: Collection[str] = ("ES256", "EdDSA"),
    leeway: timedelta = timedelta(seconds=60),
) -> Mapping[str, object]:
    """Return the claims of JWT ``token`` once its signature checks out (as in
    ``verify_jws``) and, when present, ``exp`` and ``nbf`` hold at ``now`` give or take
    ``leeway``.

    Raises SignatureInvalid for any failed check (the message says which: signature,
    "expired at …", "not valid before …", claims not a JSON object); ValueError for a
    naive ``now``.
    """
    if now.tzinfo is None:
        raise ValueError("verify_jwt needs a timezone-aware `now`.")
    verified = verify_jws(token, public_key, algorithms=algorithms)
    try:
        claims = json.loads(verified.payload, parse_constant=_reject_constant)
    except ValueError as e:
        raise SignatureInvalid("The JWT payload is not valid JSON.") from e
    if not isinstance(claims, dict):
        raise SignatureInvalid("The JWT payload is not a JSON object of claims.")

    t, slack = now.timestamp(), leeway.total_seconds()
    exp, nbf = _numeric_date(claims, "exp"), _numeric_date(claims, "nbf")
    if exp is not None and t - slack >= exp:  # RFC 7519: valid only *before* exp
        raise SignatureInvalid(
            f"The JWT expired at {_at(exp)} (checked at {now.isoformat()} with "
            f"{slack:g}s leeway); obtain a new token."
        )
    if nbf is not None and t + slack < nbf:
        raise SignatureInvalid(
            f"The JWT is not valid before {_at(nbf)} (checked at {now.isoformat()} with "
            f"{slack:g}s leeway); check the clocks of both machines."
        )
    return MappingProxyType(claims)
