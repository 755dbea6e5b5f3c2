"""Detached signatures in JWS shape, made with SM2/SM3, for what is signed beside ES256.

JOSE registers no SM2 algorithm, so no JOSE library verifies these; they are JWS-shaped
so that a verifier with an SM2 implementation needs nothing new to find the parts
(RFC 7515 compact serialisation, detached payload, Appendix F):

- the protected header is ``{"alg": "SM2SM3", "typ": ..., "x5c": [...]}``, the chain an
  SM2 signing certificate and any intermediates (the SM2 root excluded);
- the signing input is ``ASCII(BASE64URL(header) || "." || BASE64URL(payload))``;
- the signature is SM2 with SM3 over it, with the default distinguishing ID
  ``1234567812345678``, as fixed-width ``r || s`` (64 bytes), like ES256's.

``alg`` is a private name (RFC 7515 section 4.1.1 allows them); docs/keys.md says where SM2
goes and why an ES256 signature always stands beside this one.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tongban.signing.errors import CertificateInvalid, SignatureInvalid
from tongban.signing.jose import b64url, b64url_decode
from tongban.signing.sm2 import Sm2PrivateKey
from tongban.signing.sm2_certs import verify_sm2_certificate

__all__ = ["SM2_ALG", "sign_sm2_detached", "verify_sm2_detached"]

SM2_ALG = "SM2SM3"
_MAX_TOKEN = 64 * 1024


def sign_sm2_detached(
    payload: bytes,
    key: Sm2PrivateKey,
    chain: Sequence[x509.Certificate],
    headers: Mapping[str, object] | None = None,
) -> str:
    """A detached compact JWS-shaped signature of ``payload`` (``header..signature``) by
    ``key``, whose certificate is ``chain[0]``. Raises ValueError if ``headers`` sets
    ``alg`` or ``x5c``."""
    extra = dict(headers or {})
    if {"alg", "x5c"} & set(extra):
        raise ValueError("alg and x5c are set by sign_sm2_detached.")
    x5c = [
        base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode("ascii") for c in chain
    ]
    header = b64url(
        json.dumps({"alg": SM2_ALG, **extra, "x5c": x5c}, separators=(",", ":")).encode()
    )
    signature = key.sign_raw(f"{header}.{b64url(payload)}".encode("ascii"))
    return f"{header}..{b64url(signature)}"


def verify_sm2_detached(
    token: str, payload: bytes, *, roots: Sequence[x509.Certificate], now: datetime
) -> dict[str, object]:
    """Return the protected header of ``token`` once its SM2 signature over ``payload``
    verifies under an SM2 certificate (``x5c``) that one of the SM2 ``roots`` issued and
    that is valid at ``now``.

    Raises SignatureInvalid (malformed, another ``alg``, a bad signature) or
    CertificateInvalid (the chain)."""
    if not isinstance(token, str) or len(token) > _MAX_TOKEN or not token.isascii():
        raise SignatureInvalid("The SM2 signature is not a compact JWS-shaped token.")
    parts = token.split(".")
    if len(parts) != 3 or parts[1]:
        raise SignatureInvalid("The SM2 signature is not a detached compact token (h..s).")
    signature = b64url_decode(parts[2], "signature")
    try:
        header = json.loads(b64url_decode(parts[0], "header"))
    except (ValueError, UnicodeDecodeError) as e:
        raise SignatureInvalid(f"The SM2 signature's header is not JSON ({e}).") from None
    if not isinstance(header, dict) or header.get("alg") != SM2_ALG:
        raise SignatureInvalid(f"The signature's alg is not {SM2_ALG}.")
    chain = header.get("x5c")
    if not isinstance(chain, list) or not chain or not all(isinstance(c, str) for c in chain):
        raise SignatureInvalid("The SM2 signature carries no x5c certificate chain.")
    try:
        leaf = x509.load_der_x509_certificate(base64.b64decode(chain[0], validate=True))
    except (ValueError, binascii.Error) as e:
        raise CertificateInvalid("The x5c certificate of the SM2 signature is unreadable.") from e
    public = verify_sm2_certificate(leaf, roots, now)
    public.verify_raw(signature, f"{parts[0]}.{b64url(payload)}".encode("ascii"))
    return header
