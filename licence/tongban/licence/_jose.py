"""JOSE plumbing shared by the licence formats (SD-JWT VC, trust lists): canonical
base64url, strict JSON, ``x5c`` chains and signature checks that raise the licence
errors (so callers learn which check failed).

Private: import the public functions of ``tongban.licence.sdjwt`` and
``tongban.licence.trust_list`` instead.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import re
import string
import threading
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning

from tongban.licence.errors import (
    LicenceFormatInvalid,
    SignatureInvalid,
    SignerUntrusted,
)
from tongban.signing import (
    CertificateInvalid,
    verify_certificate,
)

#: The only JWS algorithm licence formats accept.
ALGORITHM = "ES256"
#: At most this many certificates in an ``x5c`` header (leaf and intermediates).
MAX_CHAIN_LENGTH = 4
#: Deepest JSON nesting a claim value may have; deeper input is refused, not recursed.
MAX_JSON_DEPTH = 16

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_B64URL_VALUE = {
    c: v
    for v, c in enumerate(string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_")
}
# Bits of the last character that fall beyond the data, by length mod 4: they must be 0.
_SPARE_BITS = {0: 0, 2: 0b1111, 3: 0b11}


def b64url(data: bytes) -> str:
    """Return ``data`` as base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(segment: str) -> bytes | None:
    """Return the bytes of canonical unpadded base64url ``segment``, or None if it is not
    exactly that (stray characters, padding, or non-zero trailing bits would let several
    strings stand for one value)."""
    spare = _SPARE_BITS.get(len(segment) % 4)
    if spare is None or not _B64URL.fullmatch(segment):
        return None
    if segment and _B64URL_VALUE[segment[-1]] & spare:
        return None
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error:  # unreachable after the checks above; kept to fail closed
        return None


def sha256_b64url(text: str) -> str:
    """Return base64url(SHA-256(ASCII ``text``)): the SD-JWT digest of a disclosure."""
    return b64url(hashlib.sha256(text.encode("ascii")).digest())


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate member name {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def loads_strict(data: bytes) -> object:
    """Return the JSON value in UTF-8 ``data``, refusing duplicate member names (RFC 7519
    section 4 lets parsers differ there, so two verifiers could read two meanings),
    NaN/Infinity, and nesting deeper than ``MAX_JSON_DEPTH``.

    Raises ValueError for anything that is not such JSON.
    """
    try:
        value = _DECODER.decode(data.decode("utf-8"))
    except RecursionError as e:  # a deeply nested array exhausts the parser's stack
        raise ValueError("JSON nested too deeply") from e
    if json_depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def json_depth(value: object) -> int:
    """Return the nesting depth of a parsed JSON value (a scalar is 0, ``[]`` is 1)."""
    depth, level = 0, [value]
    while level:
        depth += 1
        children: list[object] = []
        for item in level:
            if isinstance(item, dict):
                children.extend(item.values())
            elif isinstance(item, list):
                children.extend(item)
        level = [c for c in children if isinstance(c, dict | list)]
    return depth if isinstance(value, dict | list) else 0


def dumps_compact(value: object) -> str:
    """Return ``value`` as compact JSON text, non-ASCII kept as UTF-8 (RFC 8259).

    Raises TypeError for a value JSON cannot hold, ValueError for NaN or Infinity.
    """
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode_x5c(chain: Sequence[x509.Certificate]) -> list[str]:
    """Return ``chain`` as an ``x5c`` header value: standard base64 (with padding, not
    base64url; RFC 7515 section 4.1.6) of each DER certificate, in the given order."""
    return list(_x5c(tuple(chain)))


@functools.lru_cache(maxsize=256)
def _x5c(chain: tuple[x509.Certificate, ...]) -> tuple[str, ...]:
    # Issuers sign with the same few chains over and over; DER-encoding them each time
    # costs as much as the signature.
    return tuple(
        base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")
        for cert in chain
    )


def decode_header(jws: str, what: str) -> dict[str, object]:
    """Return the protected header of compact JWS ``jws`` without checking anything else.

    Raises LicenceFormatInvalid if ``jws`` is not three dot-separated parts whose first is
    canonical base64url of a JSON object.
    """
    parts = jws.split(".")
    if len(parts) != 3:
        raise LicenceFormatInvalid(
            f"The {what} is not a compact JWS (it has {len(parts)} dot-separated parts, not 3)."
        )
    raw = unb64url(parts[0])
    try:
        header = loads_strict(raw) if raw is not None else None
    except ValueError as e:
        raise LicenceFormatInvalid(f"The {what} header is not valid JSON ({e}).") from e
    if not isinstance(header, dict):
        raise LicenceFormatInvalid(
            f"The {what} header is not canonical base64url of a JSON object."
        )
    if "crit" in header:
        # RFC 7515 section 4.1.11: unknown critical extensions must be refused; we know none.
        raise LicenceFormatInvalid(
            f"The {what} header lists critical extensions ('crit'), which Tongban does not support."
        )
    return header


def check_algorithm(header: dict[str, object], what: str) -> None:
    """Raise SignatureInvalid unless the header's ``alg`` is ES256."""
    if header.get("alg") != ALGORITHM:
        raise SignatureInvalid(
            f"The {what} is signed with alg {header.get('alg')!r}; only {ALGORITHM} is accepted."
        )


def load_b64_certificate(item: object) -> x509.Certificate | None:
    """Return the certificate in canonical standard-base64 DER ``item``, else None
    (also for a certificate whose names, extensions or key cannot be parsed)."""
    if not isinstance(item, str):
        return None
    try:
        der = base64.b64decode(item, validate=True)
        if base64.b64encode(der).decode("ascii") != item:
            return None
        cert = x509.load_der_x509_certificate(der)
        # cryptography parses these on first use: read them now, so that a damaged
        # certificate is refused here, not met as a ValueError deep in verification.
        cert.subject.rfc4514_string()
        cert.issuer.rfc4514_string()
        _ = cert.extensions, cert.signature_hash_algorithm
        cert.public_key()
    except (  # binascii.Error is a ValueError
        ValueError,
        UnsupportedAlgorithm,
        x509.InvalidVersion,
        x509.DuplicateExtension,
        x509.UnsupportedGeneralNameType,
        CryptographyDeprecationWarning,  # raised where warnings are errors (the tests)
    ):
        return None
    # RFC 5280 serials are positive; cryptography only warns (for now) when loading others.
    return cert if cert.serial_number > 0 else None


def _parse_x5c(header: dict[str, object], what: str) -> tuple[x509.Certificate, ...]:
    x5c = header.get("x5c")
    if not isinstance(x5c, list) or not 1 <= len(x5c) <= MAX_CHAIN_LENGTH:
        raise LicenceFormatInvalid(
            f"The {what} header needs 'x5c': a list of 1 to {MAX_CHAIN_LENGTH} base64 DER "
            "certificates, signer first."
        )
    certs = []
    for position, item in enumerate(x5c, start=1):
        cert = load_b64_certificate(item)
        if cert is None:
            raise LicenceFormatInvalid(
                f"Certificate {position} of the {what} 'x5c' header is not canonical "
                "base64 of a DER certificate."
            )
        certs.append(cert)
    return tuple(certs)


# Chain validation costs more than the ES256 check itself, and a verifier sees the same
# few seal certificates over and over. A chain that validated at one instant validates at
# any other instant inside the validity periods of all its certificates (nothing else in
# path validation depends on the time), so the result is kept with that window and
# reused only inside it.
_CHAIN_CACHE_SIZE = 256
_chain_cache: OrderedDict[
    tuple[tuple[str, ...], tuple[x509.Certificate, ...]], tuple[datetime, datetime]
] = OrderedDict()
_chain_cache_lock = threading.Lock()


def verified_signer(
    header: dict[str, object],
    *,
    roots: Sequence[x509.Certificate],
    now: datetime,
    what: str,
) -> x509.Certificate:
    """Return the leaf certificate of the header's ``x5c`` once the chain validates to one
    of ``roots`` at ``now`` for usage "seal" (documentSigning, contentCommitment).

    Raises LicenceFormatInvalid if ``x5c`` is missing or malformed; SignerUntrusted if the
    chain does not validate (no roots, another CA, expired, wrong usage).
    """
    certs = _parse_x5c(header, what)
    x5c = header["x5c"]
    assert isinstance(x5c, list)
    key = (tuple(str(s) for s in x5c), tuple(roots))
    with _chain_cache_lock:
        window = _chain_cache.get(key)
        if window is not None:
            _chain_cache.move_to_end(key)
    if window is not None and window[0] <= now <= window[1]:
        return certs[0]
    try:
        chain = verify_certificate(
            certs[0], roots=roots, intermediates=certs[1:], now=now, usage="seal"
        )
    except CertificateInvalid as e:  # includes CertificateExpired
        raise SignerUntrusted(
            f"The {what} signer's certificate is not trusted: {e.message}",
            metadata={"signer": certs[0].subject.rfc4514_string()[:200]},
        ) from e
    window = (
        max(c.not_valid_before_utc for c in chain),
        min(c.not_valid_after_utc for c in chain),
    )
    with _chain_cache_lock:
        _chain_cache[key] = window
        _chain_cache.move_to_end(key)
        while len(_chain_cache) > _CHAIN_CACHE_SIZE:
            _chain_cache.popitem(last=False)
    return certs[0]


@functools.lru_cache(maxsize=256)
def _p256_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey | None:
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    return None


def verify_signature(jws: str, cert: x509.Certificate, what: str) -> bytes:
    """Return the payload of compact JWS ``jws`` once its ES256 signature checks out under
    the public key of ``cert``. The caller has checked the header (``alg`` ES256, no
    ``crit``; see ``decode_header`` and ``check_algorithm``); this is RFC 7515 section 5.2
    for ES256 done directly (the JOSE library's generic path costs as much as the
    signature check itself).

    Raises SignatureInvalid if the key is not P-256 or the signature does not verify;
    LicenceFormatInvalid if the payload or signature is not canonical base64url.
    """
    key = _p256_key(cert)
    if key is None:
        raise SignatureInvalid(
            f"The {what} signer's certificate does not hold a P-256 key, so it cannot have "
            f"made an {ALGORITHM} signature."
        )
    header, dot, rest = jws.partition(".")
    payload_b64, dot2, signature_b64 = rest.partition(".")
    payload = unb64url(payload_b64)
    signature = unb64url(signature_b64)
    if not (dot and dot2) or payload is None or "." in signature_b64:
        raise LicenceFormatInvalid(f"The {what} is not a compact JWS with a base64url payload.")
    if signature is None or len(signature) != 64:
        raise SignatureInvalid(
            f"The {what} signature is not a 64-byte ES256 signature (r || s, base64url)."
        )
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    try:
        key.verify(der, f"{header}.{payload_b64}".encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SignatureInvalid(
            f"The {what} signature does not verify with its signer's certificate: it was "
            "altered or made with another key."
        ) from None
    return payload
