"""Electronic licences as SD-JWT VCs: RFC 9901 (SD-JWT) with the SD-JWT VC profile
(draft-ietf-oauth-sd-jwt-vc), signed with a department's seal key.

The format, so that tools we did not write can check it:

- The issuer-signed JWT is a compact JWS with protected header ``alg`` "ES256", ``typ``
  "dc+sd-jwt" and ``x5c``: the issuing department's seal certificate chain as standard
  base64 DER (RFC 7515 section 4.1.6), **leaf first, root excluded**. The root is left
  out because a verifier must never take it from the token: it trusts only the exchange
  root CA certificates it was configured with, and the chain must validate to one of
  them for usage "seal" (EKU documentSigning). A token that does include the root still
  verifies, since trust comes only from the configured roots.
- Claims: ``iss`` is the department URI ``urn:tongban:dept:<code>``, which must equal the
  ``uniformResourceIdentifier`` SAN of the leaf certificate (as SD-JWT VC requires for
  ``x5c``); ``iat``, ``nbf`` and, unless the licence is open-ended (长期), ``exp`` as
  integer NumericDates; ``vct`` (the licence type URI); ``sub`` (the holder id);
  ``status`` ``{"status_list": {"idx", "uri"}}`` (a Token Status List reference);
  ``_sd_alg`` "sha-256"; the always-disclosed licence claims in clear; and ``_sd``, the
  sorted digests of the selectively disclosable claims plus optional decoys. None of the
  registered claims is ever selectively disclosable.
- A disclosure is base64url of the JSON array ``[salt, name, value]`` (UTF-8), the salt
  128 random bits in base64url; its digest is base64url(SHA-256(the ASCII disclosure
  string)), unpadded. Only flat, top-level object properties are made selectively
  disclosable; nested or array-element disclosures are never issued and are refused.
- Serialization: ``<issuer-signed JWT>~<disclosure>~...~<disclosure>~``.

There is no key binding (KB-JWT): holder binding is out of scope, so an SD-JWT here is a
bearer credential and whoever holds it can present it; a presentation that carries a
KB-JWT is refused rather than half-checked. Relying parties who need to know that the
presenter is the holder compare ``sub`` with an identity they established themselves.

Time: ``nbf`` and ``exp`` are checked with ``DEFAULT_LEEWAY`` (60 s) either way for clock
skew. The seal certificate chain is validated at the verification time, so a licence
verifies only while its seal certificate is valid: an issuer re-issues (re-seals)
long-lived licences before rotating its seal certificate.

Status checking (revoked, suspended) is the caller's job with the returned
``StatusReference``; this module only reads the reference.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tongban.licence._jose import (
    ALGORITHM,
    MAX_CHAIN_LENGTH,
    MAX_JSON_DEPTH,
    b64url,
    check_algorithm,
    decode_header,
    dumps_compact,
    encode_x5c,
    json_depth,
    loads_strict,
    sha256_b64url,
    unb64url,
    verified_signer,
    verify_signature,
)
from tongban.licence.errors import (
    ClaimInvalid,
    DisclosureInvalid,
    LicenceExpired,
    LicenceFormatInvalid,
    LicenceNotYetValid,
    SignerUntrusted,
)
from tongban.signing import DEPT_URI_PREFIX, CertificateInvalid, Signer, department_code, sign_jws

__all__ = [
    "DEFAULT_LEEWAY",
    "MAX_DIGESTS",
    "MAX_DISCLOSURES",
    "MAX_SD_JWT_LENGTH",
    "SD_ALG",
    "TYP",
    "IssuedSdJwt",
    "StatusReference",
    "VerifiedSdJwt",
    "issue_sd_jwt",
    "present",
    "unverified_status",
    "verify_sd_jwt",
]

#: The JWS ``typ`` of an SD-JWT VC (the older "vc+sd-jwt" is refused).
TYP = "dc+sd-jwt"
#: The only ``_sd_alg`` issued or accepted.
SD_ALG = "sha-256"
#: Clock skew allowed either way when checking ``nbf`` and ``exp``.
DEFAULT_LEEWAY = timedelta(seconds=60)
#: Longest serialization accepted, in characters (a licence with a long business scope
#: and a two-certificate chain is about 8 KiB).
MAX_SD_JWT_LENGTH = 64 * 1024
#: Most disclosures one SD-JWT may carry.
MAX_DISCLOSURES = 64
#: Most digests in ``_sd`` (disclosures plus decoys).
MAX_DIGESTS = 256

_SALT_BYTES = 16  # 128 bits, as RFC 9901 section 4.2.1 recommends
_DECOY_BYTES = 32
# Registered claims that are set by this module and never selectively disclosed
# (SD-JWT VC section 3.2.2: iss, nbf, exp, cnf, vct, vct#integrity, status), plus the
# SD-JWT structure names.
_REGISTERED = frozenset({"iss", "iat", "nbf", "exp", "vct", "sub", "status", "_sd_alg"})
_RESERVED = _REGISTERED | {"_sd", "...", "cnf", "vct#integrity"}
_MAX_DATE = 253402300799  # 9999-12-31T23:59:59Z


@dataclass(frozen=True)
class StatusReference:
    """Where the licence's status lives: bit(s) ``idx`` of the status list at ``uri``
    (the ``status.status_list`` claim of the Token Status List draft)."""

    idx: int
    """The licence's index in the status list."""
    uri: str
    """The URI of the status list token."""


@dataclass(frozen=True)
class IssuedSdJwt:
    """A freshly issued SD-JWT VC."""

    serialization: str
    """``<jwt>~<disclosure>~...~`` with every disclosure: what the holder keeps."""
    jwt: str
    """The issuer-signed JWT alone (compact JWS)."""
    disclosures: Mapping[str, str]
    """Each selectively disclosable claim's disclosure string, by claim name."""
    digests: Mapping[str, str]
    """Each selectively disclosable claim's ``_sd`` digest, by claim name."""


@dataclass(frozen=True)
class VerifiedSdJwt:
    """An SD-JWT VC whose signature, signer, disclosures and validity period checked out.
    Its status (revoked or not) has not been checked: use ``status``."""

    issuer: str
    """``iss``: ``urn:tongban:dept:<department>``."""
    department: str
    """The issuing department's code, from its seal certificate."""
    vct: str
    """The licence type URI."""
    subject: str
    """``sub``: the holder id."""
    issued_at: datetime
    not_before: datetime
    expires_at: datetime | None
    """None for an open-ended (长期) licence."""
    status: StatusReference
    clear_claims: Mapping[str, object]
    """The licence claims signed in clear (registered claims such as ``iss`` and the
    ``_sd`` machinery are not included; they are the fields above)."""
    disclosed_claims: Mapping[str, object]
    """The selectively disclosable claims the presenter chose to disclose."""
    certificate: x509.Certificate
    """The issuing department's seal certificate (the ``x5c`` leaf)."""
    payload: bytes = field(repr=False)
    """The exact signed bytes of the issuer-signed JWT payload."""

    @property
    def claims(self) -> Mapping[str, object]:
        """Every licence claim the verifier may read: clear and disclosed together."""
        return MappingProxyType({**self.clear_claims, **self.disclosed_claims})


def _aware(value: datetime, name: str) -> int:
    if value.tzinfo is None:
        raise ValueError(f"{name} must be a timezone-aware datetime.")
    return int(value.timestamp())


def _check_claim_names(clear: Mapping[str, object], disclosable: Mapping[str, object]) -> None:
    for name in (*clear, *disclosable):
        if not isinstance(name, str) or not name:
            raise ValueError(f"Claim names must be non-empty strings, not {name!r}.")
        if name in _RESERVED:
            raise ValueError(
                f"Claim {name!r} is set by issue_sd_jwt (or reserved by SD-JWT) and cannot "
                "be passed as a licence claim."
            )
    both = sorted(set(clear) & set(disclosable))
    if both:
        raise ValueError(f"Claims {both} are given both in clear and as disclosable.")


def _salt_for(
    name: str, salts: Mapping[str, str] | None, random_bytes: Callable[[int], bytes]
) -> str:
    if salts is None:
        raw = random_bytes(_SALT_BYTES)
        if len(raw) != _SALT_BYTES:
            raise ValueError(f"random_bytes returned {len(raw)} bytes, not {_SALT_BYTES}.")
        return b64url(raw)
    salt = salts[name]
    decoded = unb64url(salt) if isinstance(salt, str) else None
    if decoded is None or len(decoded) < _SALT_BYTES:
        raise ValueError(
            f"The salt for {name!r} must be canonical base64url of at least {_SALT_BYTES * 8} bits."
        )
    return salt


def _signer_matches(signer: Signer, cert: x509.Certificate) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return signer.public_key().public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)


def issue_sd_jwt(
    claims_clear: Mapping[str, object],
    claims_disclosable: Mapping[str, object],
    *,
    signer: Signer,
    chain: Sequence[x509.Certificate],
    vct: str,
    iss: str,
    sub: str,
    nbf: datetime,
    exp: datetime | None,
    now: datetime,
    status_idx: int,
    status_uri: str,
    salts: Mapping[str, str] | None = None,
    decoys: int = 0,
    random_bytes: Callable[[int], bytes] = secrets.token_bytes,
) -> IssuedSdJwt:
    """Return a new SD-JWT VC signed by ``signer`` (the department's seal key), holding
    ``claims_clear`` in clear and ``claims_disclosable`` as disclosures.

    ``chain`` is the seal certificate chain, leaf first, without the root; ``iss`` must be
    ``urn:tongban:dept:<code>`` for the leaf's department. ``iat`` is ``now``; ``exp``
    None makes an open-ended licence. Claim values must be JSON (strings, numbers,
    booleans, lists, objects): normalise them first (``tongban.licence.types``).
    ``salts`` fixes the salt of each disclosable claim (tests); otherwise salts, and the
    ``decoys`` decoy digests, come from ``random_bytes``.

    Raises ValueError for naive datetimes, ``exp`` not after ``nbf``, an empty chain or
    one over 4 certificates, a signer that is not ES256 or does not match the leaf, an
    ``iss`` that is not the leaf's department, a reserved or duplicated claim name, a
    value with nested ``_sd``/``...`` keys or deeper than 15 levels, missing or weak
    salts, or a result over the caps (``MAX_DISCLOSURES``, ``MAX_DIGESTS``,
    ``MAX_SD_JWT_LENGTH``); TypeError for a claim value JSON cannot hold; SigningError if
    the signer fails.
    """
    iat, not_before = _aware(now, "now"), _aware(nbf, "nbf")
    expires = None if exp is None else _aware(exp, "exp")
    if expires is not None and expires <= not_before:
        raise ValueError("exp must be after nbf.")
    if signer.algorithm != ALGORITHM:
        raise ValueError(f"Licences are signed with {ALGORITHM}, not {signer.algorithm}.")
    if not 1 <= len(chain) <= MAX_CHAIN_LENGTH:
        raise ValueError(
            f"chain must hold the seal certificate and at most {MAX_CHAIN_LENGTH - 1} more."
        )
    if not _signer_matches(signer, chain[0]):
        raise ValueError("The signer's key is not the key of the first certificate in chain.")
    try:
        expected_iss = DEPT_URI_PREFIX + department_code(chain[0])
    except CertificateInvalid as e:
        raise ValueError(f"The seal certificate names no department: {e.message}") from e
    if iss != expected_iss:
        raise ValueError(f"iss is {iss!r} but the seal certificate is for {expected_iss!r}.")
    for name, text in (("vct", vct), ("sub", sub), ("status_uri", status_uri)):
        if not isinstance(text, str) or not text:
            raise ValueError(f"{name} must be a non-empty string.")
    if isinstance(status_idx, bool) or not isinstance(status_idx, int) or status_idx < 0:
        raise ValueError("status_idx must be a non-negative integer.")
    _check_claim_names(claims_clear, claims_disclosable)
    for name, value in (*claims_clear.items(), *claims_disclosable.items()):
        if _has_sd_markers(value) or json_depth(value) >= MAX_JSON_DEPTH:
            raise ValueError(
                f"Claim {name!r} holds '_sd' or '...' keys or nests deeper than "
                f"{MAX_JSON_DEPTH - 1} levels, which verifiers refuse."
            )
    if len(claims_disclosable) > MAX_DISCLOSURES:
        raise ValueError(f"At most {MAX_DISCLOSURES} claims may be selectively disclosable.")
    if decoys < 0 or len(claims_disclosable) + decoys > MAX_DIGESTS:
        raise ValueError(f"decoys must be >= 0 and leave at most {MAX_DIGESTS} digests.")
    if salts is not None and set(salts) != set(claims_disclosable):
        raise ValueError("salts must name exactly the selectively disclosable claims.")

    disclosures: dict[str, str] = {}
    digests: dict[str, str] = {}
    for name, value in claims_disclosable.items():
        salt = _salt_for(name, salts, random_bytes)
        disclosure = b64url(dumps_compact([salt, name, value]).encode("utf-8"))
        disclosures[name] = disclosure
        digests[name] = sha256_b64url(disclosure)
    decoy_digests = [
        b64url(hashlib.sha256(random_bytes(_DECOY_BYTES)).digest()) for _ in range(decoys)
    ]

    payload: dict[str, object] = {"iss": iss, "iat": iat, "nbf": not_before}
    if expires is not None:
        payload["exp"] = expires
    payload |= {
        "vct": vct,
        "sub": sub,
        "status": {"status_list": {"idx": status_idx, "uri": status_uri}},
    }
    payload.update(claims_clear)
    # Sorted, so the order reveals neither the claims' order nor which digests are decoys.
    payload["_sd"] = sorted([*digests.values(), *decoy_digests])
    payload["_sd_alg"] = SD_ALG

    jwt = sign_jws(
        dumps_compact(payload).encode("utf-8"),
        signer,
        headers={"typ": TYP, "x5c": encode_x5c(chain)},
    )
    serialization_ = "".join([jwt, "~", *(d + "~" for d in disclosures.values())])
    if len(serialization_) > MAX_SD_JWT_LENGTH:
        raise ValueError(
            f"The SD-JWT is {len(serialization_)} characters, over the "
            f"{MAX_SD_JWT_LENGTH} a verifier accepts; shorten the claims."
        )
    return IssuedSdJwt(
        serialization=serialization_,
        jwt=jwt,
        disclosures=MappingProxyType(disclosures),
        digests=MappingProxyType(digests),
    )


def _split(text: str) -> tuple[str, list[str]]:
    """Return the issuer-signed JWT and the disclosure strings of an SD-JWT."""
    if not isinstance(text, str) or len(text) > MAX_SD_JWT_LENGTH:
        raise LicenceFormatInvalid(
            f"The SD-JWT is not text of at most {MAX_SD_JWT_LENGTH} characters."
        )
    if not text.isascii():
        raise LicenceFormatInvalid("The SD-JWT contains non-ASCII characters.")
    parts = text.split("~")
    if len(parts) < 2:
        raise LicenceFormatInvalid(
            "This is not an SD-JWT: it has no '~' after the issuer-signed JWT."
        )
    if parts[-1]:
        raise LicenceFormatInvalid(
            "The SD-JWT carries a key-binding JWT after its last '~' (or lacks the final "
            "'~'); Tongban licences have no holder binding, so present them without one."
        )
    disclosures = parts[1:-1]
    if len(disclosures) > MAX_DISCLOSURES:
        raise LicenceFormatInvalid(
            f"The SD-JWT carries {len(disclosures)} disclosures; at most {MAX_DISCLOSURES} "
            "are accepted."
        )
    if any(not d for d in disclosures):
        raise LicenceFormatInvalid("The SD-JWT has an empty disclosure ('~~').")
    return parts[0], disclosures


def _decode_disclosure(disclosure: str) -> tuple[str, object]:
    """Return the claim name and value of one disclosure."""
    raw = unb64url(disclosure)
    try:
        decoded = loads_strict(raw) if raw is not None else None
    except ValueError as e:
        raise DisclosureInvalid(f"A disclosure is not valid JSON ({e}).") from e
    if not (
        isinstance(decoded, list)
        and len(decoded) == 3
        and isinstance(decoded[0], str)
        and isinstance(decoded[1], str)
    ):
        raise DisclosureInvalid(
            "A disclosure is not base64url of a JSON array [salt, claim name, value] "
            "(array-element disclosures are not supported)."
        )
    _salt, name, value = decoded
    if name in ("_sd", "..."):
        raise DisclosureInvalid(
            f"A disclosure names the reserved claim {name!r}.", metadata={"claim": name}
        )
    return name, value


def _unverified_payload(jwt: str) -> dict[str, object]:
    parts = jwt.split(".")
    raw = unb64url(parts[1]) if len(parts) == 3 else None
    try:
        payload = loads_strict(raw) if raw is not None else None
    except ValueError as e:
        raise LicenceFormatInvalid(f"The SD-JWT payload is not valid JSON ({e}).") from e
    if not isinstance(payload, dict):
        raise LicenceFormatInvalid("The SD-JWT payload is not base64url of a JSON object.")
    return payload


def present(sd_jwt: str, disclose: Collection[str]) -> str:
    """Return a presentation of ``sd_jwt`` that keeps only the disclosures of the claims
    named in ``disclose`` (in their original order). Naming a claim that is signed in
    clear is allowed and changes nothing: clear claims are always shown.

    Nothing is verified here (the holder presents its own credential); the verifier does.

    Raises ClaimInvalid (problem ``not_in_licence``) for a name that is neither a
    disclosable nor a clear claim of the licence; LicenceFormatInvalid if ``sd_jwt`` is
    not an SD-JWT VC (serialization, header ``typ``, payload); DisclosureInvalid if a
    disclosure is malformed or two disclose the same claim; TypeError if ``disclose``
    is a single string.
    """
    if isinstance(disclose, str):
        raise TypeError("disclose is a collection of claim names, not one string.")
    jwt, disclosures = _split(sd_jwt)
    if decode_header(jwt, "licence").get("typ") != TYP:
        raise LicenceFormatInvalid(f"The credential's typ is not {TYP!r}: it is not an SD-JWT VC.")
    clear = set(_unverified_payload(jwt)) - _RESERVED
    names = [_decode_disclosure(d)[0] for d in disclosures]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DisclosureInvalid(
            f"The SD-JWT discloses {duplicates} more than once.",
            metadata={"claim": duplicates[0]},
        )
    wanted = set(disclose)
    missing = wanted - set(names)
    unknown = sorted(missing - clear)
    if unknown:
        raise ClaimInvalid(
            f"The licence has no claim {unknown[0]!r} to disclose; it holds "
            f"{sorted(set(names) | clear)}.",
            metadata={"claim": unknown[0], "problem": "not_in_licence"},
        )
    kept = [d for d, name in zip(disclosures, names, strict=True) if name in wanted]
    return "".join([jwt, "~", *(d + "~" for d in kept)])


def _optional_date(payload: Mapping[str, object], name: str) -> int | None:
    if name not in payload:
        return None
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_DATE:
        raise LicenceFormatInvalid(
            f"The licence claim {name!r} is not an integer NumericDate (seconds since 1970)."
        )
    return value


def _required_date(payload: Mapping[str, object], name: str) -> int:
    value = _optional_date(payload, name)
    if value is None:
        raise LicenceFormatInvalid(f"The licence has no {name!r} claim.")
    return value


def _text_claim(payload: Mapping[str, object], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise LicenceFormatInvalid(f"The licence claim {name!r} is missing or not a string.")
    return value


def _status(payload: Mapping[str, object]) -> StatusReference:
    status = payload.get("status")
    ref = status.get("status_list") if isinstance(status, dict) else None
    idx = ref.get("idx") if isinstance(ref, dict) else None
    uri = ref.get("uri") if isinstance(ref, dict) else None
    if (
        isinstance(idx, bool)
        or not isinstance(idx, int)
        or idx < 0
        or not isinstance(uri, str)
        or not uri
    ):
        raise LicenceFormatInvalid(
            'The licence claim \'status\' is not {"status_list": {"idx": <integer >= 0>, '
            '"uri": <string>}}.'
        )
    return StatusReference(idx=idx, uri=uri)


def _sd_digests(payload: Mapping[str, object]) -> frozenset[str]:
    if payload.get("_sd_alg") != SD_ALG:
        raise LicenceFormatInvalid(
            f"The licence's _sd_alg is {payload.get('_sd_alg')!r}; only {SD_ALG!r} is accepted."
        )
    digests = payload.get("_sd", [])
    if not isinstance(digests, list) or not all(isinstance(d, str) for d in digests):
        raise LicenceFormatInvalid("The licence's _sd is not a list of digest strings.")
    if len(digests) > MAX_DIGESTS:
        raise LicenceFormatInvalid(
            f"The licence's _sd holds {len(digests)} digests; at most {MAX_DIGESTS} are accepted."
        )
    if len(set(digests)) != len(digests):
        raise DisclosureInvalid("A digest appears more than once in the licence's _sd.")
    return frozenset(digests)


def _has_sd_markers(value: object) -> bool:
    """Whether a JSON value holds nested SD-JWT structure (``_sd`` or ``...`` keys)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "_sd" in item or "..." in item:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _disclosed(
    disclosures: Sequence[str], digests: frozenset[str], clear: Mapping[str, object]
) -> dict[str, object]:
    """Return the claims disclosed by ``disclosures``, each checked against ``digests``
    (RFC 9901 section 7.1, for top-level object properties)."""
    seen: set[str] = set()
    out: dict[str, object] = {}
    for disclosure in disclosures:
        digest = sha256_b64url(disclosure)
        if digest in seen:
            raise DisclosureInvalid("The same disclosure is presented more than once.")
        seen.add(digest)
        name, value = _decode_disclosure(disclosure)
        if digest not in digests:
            raise DisclosureInvalid(
                f"The disclosure of {name!r} matches no digest the issuer signed: it was "
                "altered or belongs to another licence.",
                metadata={"claim": name},
            )
        if name in clear or name in _RESERVED:
            raise DisclosureInvalid(
                f"A disclosure claims {name!r}, which is signed in clear or may not be "
                "selectively disclosed.",
                metadata={"claim": name},
            )
        if name in out:
            raise DisclosureInvalid(f"Two disclosures claim {name!r}.", metadata={"claim": name})
        if _has_sd_markers(value):
            raise DisclosureInvalid(
                f"The disclosed value of {name!r} holds nested selective disclosures, "
                "which Tongban licences never use.",
                metadata={"claim": name},
            )
        out[name] = value
    return out


@functools.lru_cache(maxsize=256)
def _department_of(cert: x509.Certificate) -> str:
    # Reading the SAN costs as much as the rest of verification; seals repeat.
    return department_code(cert)


def _at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def unverified_status(text: str) -> StatusReference:
    """Return the status reference SD-JWT ``text`` claims WITHOUT checking its signature
    or anything else: for a caller that prefetches what verification will need, never for
    a decision. Parsed within the same caps as ``verify_sd_jwt`` (length, canonical
    base64url, strict JSON of bounded depth).

    Raises LicenceFormatInvalid if the text or its payload is malformed or has no status.
    """
    jwt, _ = _split(text)
    parts = jwt.split(".")
    raw = unb64url(parts[1]) if len(parts) == 3 else None
    try:
        payload = loads_strict(raw) if raw is not None else None
    except ValueError as e:
        raise LicenceFormatInvalid(f"The licence payload is not valid JSON ({e}).") from e
    if not isinstance(payload, dict):
        raise LicenceFormatInvalid("The licence payload is not a base64url JSON object.")
    return _status(payload)


def verify_sd_jwt(
    text: str,
    *,
    roots: Sequence[x509.Certificate],
    trusted: Collection[x509.Certificate] | None = None,
    now: datetime,
    expected_vct: str | None = None,
    leeway: timedelta = DEFAULT_LEEWAY,
) -> VerifiedSdJwt:
    """Return the verified claims of SD-JWT VC ``text`` (an issued SD-JWT or a
    presentation of one): its clear claims, the claims its disclosures reveal, and its
    status reference.

    Checks, in order: the serialization and header (``typ`` "dc+sd-jwt", ``alg`` ES256,
    no key-binding JWT, within the caps); the ``x5c`` chain validates to one of ``roots``
    at ``now`` for usage "seal"; the leaf is one of ``trusted`` (the trust list's seal
    certificates) when given; the signature; ``iss`` is the leaf's department URI; the
    registered claims (and no ``cnf``: holder binding is not supported), and ``vct``
    equals ``expected_vct`` when given; every disclosure matches exactly one ``_sd``
    digest; ``nbf`` and ``exp`` hold at ``now`` give or take ``leeway``.

    Raises LicenceFormatInvalid (malformed, wrong ``typ`` or ``vct``, missing claims, a
    KB-JWT or ``cnf``, over the caps); SignatureInvalid (alg not ES256, bad signature);
    SignerUntrusted (chain does not validate, leaf not in ``trusted``, ``iss`` not the
    leaf's department); DisclosureInvalid (a disclosure unknown, repeated, malformed,
    naming a clear or reserved claim, or a digest repeated in ``_sd``);
    LicenceNotYetValid / LicenceExpired; ValueError for a naive ``now``.
    """
    if now.tzinfo is None:
        raise ValueError("verify_sd_jwt needs a timezone-aware `now`.")
    jwt, disclosures = _split(text)
    header = decode_header(jwt, "licence")
    if header.get("typ") != TYP:
        raise LicenceFormatInvalid(
            f"The licence's typ is {header.get('typ')!r}, not {TYP!r}: it is not an SD-JWT VC."
        )
    check_algorithm(header, "licence")
    leaf = verified_signer(header, roots=roots, now=now, what="licence")
    if trusted is not None and leaf not in trusted:
        raise SignerUntrusted(
            f"The licence's seal certificate ({leaf.subject.rfc4514_string()}) is not on the "
            "trust list; refresh the trust list, or the issuer's certificate was withdrawn.",
            metadata={"signer": leaf.subject.rfc4514_string()[:200]},
        )
    payload_bytes = verify_signature(jwt, leaf, "licence")
    try:
        payload = loads_strict(payload_bytes)
    except ValueError as e:
        raise LicenceFormatInvalid(f"The licence payload is not valid JSON ({e}).") from e
    if not isinstance(payload, dict):
        raise LicenceFormatInvalid("The licence payload is not a JSON object.")

    try:
        department = _department_of(leaf)
    except CertificateInvalid as e:
        raise SignerUntrusted(f"The licence's seal certificate is unusable: {e.message}") from e
    iss = payload.get("iss")
    if iss != DEPT_URI_PREFIX + department:
        raise SignerUntrusted(
            f"The licence claims issuer {iss!r} but is sealed by department {department!r}; "
            "a department may only issue in its own name.",
            metadata={"department": department},
        )
    issued_at = _required_date(payload, "iat")
    not_before = _required_date(payload, "nbf")
    expires = _optional_date(payload, "exp")
    vct = _text_claim(payload, "vct")
    subject = _text_claim(payload, "sub")
    status = _status(payload)
    if expected_vct is not None and vct != expected_vct:
        raise LicenceFormatInvalid(
            f"The licence is of type {vct!r}, not the expected {expected_vct!r}.",
            metadata={"vct": vct[:200]},
        )
    if "cnf" in payload:
        raise LicenceFormatInvalid(
            "The licence is bound to a holder key ('cnf'), but Tongban verifies no key "
            "binding; it cannot be accepted here."
        )
    digests = _sd_digests(payload)
    clear = {k: v for k, v in payload.items() if k not in _RESERVED}
    if _has_sd_markers(clear):
        raise DisclosureInvalid(
            "A clear claim holds nested selective disclosures, which Tongban licences never use."
        )
    disclosed = _disclosed(disclosures, digests, payload)

    t, slack = now.timestamp(), leeway.total_seconds()
    if t + slack < not_before:
        raise LicenceNotYetValid(
            f"The licence is not valid before {_at(not_before).isoformat()} (checked at "
            f"{now.isoformat()}).",
            metadata={"not_before": _at(not_before).isoformat()},
        )
    if expires is not None and t - slack >= expires:
        raise LicenceExpired(
            f"The licence expired at {_at(expires).isoformat()} (checked at "
            f"{now.isoformat()}); the holder needs a renewed licence.",
            metadata={"expires_at": _at(expires).isoformat()},
        )
    return VerifiedSdJwt(
        issuer=str(iss),
        department=department,
        vct=vct,
        subject=subject,
        issued_at=_at(issued_at),
        not_before=_at(not_before),
        expires_at=None if expires is None else _at(expires),
        status=status,
        clear_claims=MappingProxyType(clear),
        disclosed_claims=MappingProxyType(disclosed),
        certificate=leaf,
        payload=payload_bytes,
    )
