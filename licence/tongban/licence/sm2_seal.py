"""The SM2 signature beside an SD-JWT licence (docs/keys.md, "A department's SM2 seal").

A department that chose an SM2 seal has each licence's issuer-signed JWT (the SD-JWT up to
its first ``~``) signed with SM2/SM3 as well: a detached JWS-shaped token
(``tongban.signing.sm2_jws``) with ``typ`` ``tongban-licence-sm2+jws`` and the SM2 seal
certificate in ``x5c``. JOSE has no SM2 algorithm, so the ES256 signature stays the one
every verifier checks; this one is checked here, by a verifier that holds the exchange's
SM2 root, or by OpenSSL (``pkeyutl -verify -rawin -digest sm3`` with the default ID).

Disclosures are bound by their digests inside the issuer-signed JWT, so the signature
holds for every presentation made from the licence.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tongban.licence._jose import loads_strict, unb64url
from tongban.licence.errors import Sm2SealUntrusted, Sm2SignatureInvalid
from tongban.licence.trust_list import TrustList
from tongban.signing import DEPT_URI_PREFIX, CertificateInvalid
from tongban.signing import SignatureInvalid as SigningSignatureInvalid
from tongban.signing.certs import department_code
from tongban.signing.sm2_jws import verify_sm2_detached

__all__ = ["SM2_LICENCE_TYP", "verify_sm2_licence_signature"]

SM2_LICENCE_TYP = "tongban-licence-sm2+jws"
_MAX_JWT = 64 * 1024
_SHA256 = hashes.SHA256()


def _issuer(issuer_jwt: str) -> str:
    """The department the issuer-signed JWT's ``iss`` names (read unverified: the ES256
    check of the same JWT is the caller's)."""
    parts = issuer_jwt.split(".")
    payload = unb64url(parts[1]) if len(parts) == 3 else None
    try:
        claims = loads_strict(payload) if payload is not None else None
    except ValueError:
        claims = None
    iss = claims.get("iss") if isinstance(claims, dict) else None
    if not isinstance(iss, str) or not iss.startswith(DEPT_URI_PREFIX):
        raise Sm2SignatureInvalid(
            "The licence is not an SD-JWT whose issuer is a department; an SM2 signature "
            "goes only beside an SD-JWT licence."
        )
    return iss.removeprefix(DEPT_URI_PREFIX)


def verify_sm2_licence_signature(
    sd_jwt: str,
    signature: str,
    *,
    sm2_roots: Sequence[x509.Certificate],
    trust_list: TrustList,
    now: datetime,
) -> x509.Certificate:
    """Return the SM2 seal certificate once ``signature`` checks out as the SM2 signature
    of ``sd_jwt``'s issuer-signed JWT: an SM2/SM3 signature (default ID) by a certificate
    the exchange's SM2 root issued, valid at ``now``, a seal of the department the JWT's
    ``iss`` names, and listed in ``trust_list`` among that department's SM2 seals.

    Raises Sm2SignatureInvalid (not an SD-JWT of a department, malformed, another
    ``typ``, a bad signature) or Sm2SealUntrusted (no SM2 root, a
    certificate of another root, another department's, or one the trust list does not
    name)."""
    if not isinstance(sd_jwt, str) or not sd_jwt.isascii() or len(sd_jwt) > _MAX_JWT:
        raise Sm2SignatureInvalid("The licence is not an SD-JWT (ASCII, at most 64 KiB).")
    issuer_jwt = sd_jwt.split("~", 1)[0]
    department = _issuer(issuer_jwt)
    if not sm2_roots:
        raise Sm2SealUntrusted(
            "This verifier holds no SM2 root, so no SM2 signature can be trusted; the "
            "exchange's is ca/sm2-ca.crt (made by `tongban seal sm2` or `tongban key sm2`)."
        )
    try:
        header = verify_sm2_detached(
            signature, issuer_jwt.encode("ascii"), roots=sm2_roots, now=now
        )
    except SigningSignatureInvalid as e:
        raise Sm2SignatureInvalid(
            f"The SM2 signature does not verify over this licence: {e.message}"
        ) from e
    except CertificateInvalid as e:  # includes CertificateExpired
        raise Sm2SealUntrusted(f"The SM2 seal certificate is not trusted: {e.message}") from e
    if header.get("typ") != SM2_LICENCE_TYP:
        raise Sm2SignatureInvalid(
            f"The SM2 signature's typ is {str(header.get('typ'))[:64]!r}, not "
            f"{SM2_LICENCE_TYP!r}: it was not made for a licence."
        )
    chain = header.get("x5c")
    assert isinstance(chain, list)  # verify_sm2_detached checked it
    leaf = x509.load_der_x509_certificate(base64.b64decode(chain[0], validate=True))
    try:
        owner = department_code(leaf)
    except CertificateInvalid as e:
        raise Sm2SealUntrusted(f"The SM2 certificate is not a seal: {e.message}") from e
    if owner != department:
        raise Sm2SealUntrusted(
            f"The SM2 seal belongs to {owner!r}, but the licence was issued by {department!r}."
        )
    if leaf not in trust_list.sm2_seals.get(department, ()):
        raise Sm2SealUntrusted(
            f"The trust list does not name this SM2 seal of {department!r} (sha256 "
            f"{leaf.fingerprint(_SHA256).hex()[:16]}…): it was revoked, or the list is older "
            "than the seal; refresh the trust list."
        )
    return leaf
