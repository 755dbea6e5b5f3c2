"""The trust list: which seal certificates may issue licences, per department.

A trust list is a compact JWS signed by an exchange node's signing key (the node signing
certificate: EKU documentSigning, URI SAN ``urn:tongban:node:<name>``), so a verifier
that trusts only the exchange root CA can learn, offline, which departments' seal
certificates are current. Header: ``alg`` ES256, ``typ`` "tongban-trust-list+jwt",
``x5c`` the node's chain (leaf first, root excluded). Payload::

    {"iss": "urn:tongban:node:<name>", "iat": ..., "next_update": ..., "exp": ...,
     "departments": {"<code>": {"seal_certificates": ["<base64 DER>", ...],
                                "status_list_certificates": ["<base64 DER>", ...]}},
     "status_base_urls": {"<code>": ["https://tongban.example/status-lists/", ...]}}

``exp`` lies well ahead (30 days by default) so verification keeps working offline for a
long time; ``next_update`` comes sooner (1 day) and says when to fetch a fresh list.
Dropping a certificate from the list withdraws it once verifiers have refreshed: within
``next_update`` for verifiers that are online, at worst ``exp``.

A department seal certificate is listed only under the department its SAN names; a
department's status lists may be signed by its seal key or by a node key, so status-list
certificates are not tied to the department.

``status_base_urls`` names, per department, the URL prefixes its status lists are served
under; a verifier fetches a status list only from a URI under one of them
(``TrustList.check_status_url``), so a licence cannot make it request an address of the
licence's choosing. It is a top-level claim rather than a key of each department's entry
because verifiers before it refuse an entry with unknown keys but ignore unknown
top-level claims; a list without it (from an older node) names no base, and status lists
are then fetched from nowhere (``STATUS_URL_UNTRUSTED``) until a fresh list is fetched.

``revoked_seal_certificates`` names, per department, seal certificates that were revoked
(``{"<code>": [{"sha256": "<hex of the DER's SHA-256>", "revoked_at": ..., "reason":
"..."}]}``): a revoked certificate is no longer among ``seal_certificates``, and what it
signed fails with SEAL_REVOKED instead of the plain SIGNER_UNTRUSTED of a seal never
listed. A top-level claim for the same reason as ``status_base_urls``.

``intermediates`` lists the exchange's issuing CA certificates (base64 DER) that sit
between the listed certificates and the root, so a verifier holding only the root can
build their paths (a QR code carries no chain). They are not trust anchors: a path
through one must still end at a root the verifier holds. Top-level for the same reason.

``sm2_seal_certificates`` names, per department, the SM2 seal certificates (base64 DER)
whose SM2 signatures beside the department's SD-JWT licences are current (docs/keys.md,
"A department's SM2 seal"); a department without one is not a key. Top-level for the same
reason as ``status_base_urls``.

``TrustListCache`` keeps the last good list on disk for verifiers that go offline.
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tongban.licence._jose import (
    ALGORITHM,
    MAX_CHAIN_LENGTH,
    check_algorithm,
    decode_header,
    dumps_compact,
    encode_x5c,
    load_b64_certificate,
    loads_strict,
    verified_signer,
    verify_signature,
)
from tongban.licence.errors import (
    LicenceFormatInvalid,
    SignerUntrusted,
    StatusUrlUntrusted,
    TrustListExpired,
    TrustListUnavailable,
    VerificationFailed,
)
from tongban.signing import (
    DEPT_URI_PREFIX,
    NODE_URI_PREFIX,
    CertificateInvalid,
    Signer,
    department_code,
    sign_jws,
)
from tongban.signing.files import write_atomic
from tongban.signing.sm2_certs import sm2_public_key

__all__ = [
    "DEFAULT_LIFETIME",
    "DEFAULT_REFRESH",
    "MAX_TRUST_LIST_LENGTH",
    "TYP",
    "RevokedSeal",
    "TrustList",
    "TrustListCache",
    "TrustListEntry",
    "sign_trust_list",
    "verify_trust_list",
]

#: The JWS ``typ`` of a trust list.
TYP = "tongban-trust-list+jwt"
#: How long a trust list stays valid by default.
DEFAULT_LIFETIME = timedelta(days=30)
#: How soon verifiers should fetch a fresh list by default.
DEFAULT_REFRESH = timedelta(days=1)
#: Longest trust list token accepted, in characters (about 1,500 certificates).
MAX_TRUST_LIST_LENGTH = 1024 * 1024

_MAX_CERTIFICATES_PER_LIST = 16  # per department and kind
_MAX_REVOKED_PER_DEPARTMENT = 256
_MAX_REASON = 500
_KID_BYTES = 8  # a QR kid: the first 8 bytes of the certificate's SHA-256
_MAX_DATE = 253402300799  # 9999-12-31T23:59:59Z
_CODE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_DEPT_CODE = re.compile(r"[a-z][a-z0-9-]{1,62}")  # as tongban.signing department codes
_MAX_URL = 2048
# A status-list base: http(s), a host name or bracketed IP, an optional port, and a path
# of plain segments ending in "/". No user info, query, fragment, percent-escapes or dot
# segments, so that the prefix test of check_status_url means what it says.
_SEGMENT = r"[A-Za-z0-9_~-][A-Za-z0-9._~-]*"
_BASE_URL = re.compile(
    r"https?://(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
    rf"/(?:{_SEGMENT}/)*"
)
# What may follow the base in a status-list URI: plain segments (no "..", "?", "#", "%").
_BELOW_BASE = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")


@dataclass(frozen=True)
class RevokedSeal:
    """A department's seal certificate that was revoked."""

    department: str
    fingerprint: bytes
    """SHA-256 of the certificate's DER."""
    revoked_at: datetime
    reason: str


@dataclass(frozen=True)
class TrustListEntry:
    """What one department is trusted for."""

    department: str
    """The department code (``samr``)."""
    seal_certificates: tuple[x509.Certificate, ...]
    """Seal certificates that may issue this department's licences."""
    status_list_certificates: tuple[x509.Certificate, ...] = ()
    """Certificates that may sign this department's status lists."""
    status_base_urls: tuple[str, ...] = ()
    """URL prefixes (``https://tongban.example/status-lists/``, ending in "/") that this
    department's status lists are served under; a verifier fetches a status list only
    from a URI under one of them."""


@dataclass(frozen=True)
class TrustList:
    """A verified trust list."""

    issuer: str
    """The signing node's name."""
    issued_at: datetime
    next_update: datetime
    """When to fetch a fresh list."""
    expires_at: datetime
    """After this the list must not be used."""
    entries: Mapping[str, TrustListEntry]
    """By department code."""
    signer: x509.Certificate
    """The node signing certificate (the ``x5c`` leaf)."""
    token: str = field(repr=False)
    """The exact signed token, to store or forward."""
    revoked: Mapping[bytes, RevokedSeal] = field(default_factory=dict)
    """Revoked seal certificates, by SHA-256 fingerprint."""
    intermediates: tuple[x509.Certificate, ...] = ()
    """Issuing CA certificates to build the listed certificates' paths with (untrusted
    until a path through one ends at a root)."""
    sm2_seals: Mapping[str, tuple[x509.Certificate, ...]] = field(default_factory=dict)
    """Current SM2 seal certificates, by department code."""

    def revoked_seal(self, fingerprint_prefix: bytes) -> RevokedSeal | None:
        """The revoked seal whose fingerprint starts with ``fingerprint_prefix`` (a whole
        SHA-256, or a QR ``kid``'s first 8 bytes), or None."""
        if len(fingerprint_prefix) < _KID_BYTES:
            return None
        found = self.revoked.get(fingerprint_prefix)
        if found is not None:
            return found
        return next((r for f, r in self.revoked.items() if f.startswith(fingerprint_prefix)), None)

    def certificates_for(self, dept: str) -> tuple[x509.Certificate, ...]:
        """Return the seal certificates trusted to issue department ``dept``'s licences
        (empty if the department is not listed, so nothing of it verifies)."""
        entry = self.entries.get(dept)
        return entry.seal_certificates if entry else ()

    def status_list_certificates_for(self, dept: str) -> tuple[x509.Certificate, ...]:
        """Return the certificates trusted to sign department ``dept``'s status lists
        (empty if none are listed)."""
        entry = self.entries.get(dept)
        return entry.status_list_certificates if entry else ()

    def check_status_url(self, dept: str, uri: str) -> str:
        """Return ``uri`` if it is under one of the status-list base URLs listed for
        department ``dept``: it starts with the base and continues with plain path
        segments only (no query, fragment, percent-escape or dot segment).

        Raises StatusUrlUntrusted otherwise, also when the department lists no base.
        """
        entry = self.entries.get(dept)
        bases = entry.status_base_urls if entry else ()
        if len(uri) <= _MAX_URL:
            for base in bases:
                if uri.startswith(base) and _BELOW_BASE.fullmatch(uri[len(base) :]):
                    return uri
        raise StatusUrlUntrusted(
            f"The licence's status list address {uri[:200]} is not under an address the "
            f"trust list names for {dept} ({', '.join(bases) or 'none'}), so it was not "
            "fetched; refresh the trust list from the exchange, and if this persists the "
            "licence's status cannot be checked with this exchange's trust list.",
            metadata={"uri": uri[:200], "department": dept[:64]},
        )

    def all_seal_certificates(self) -> frozenset[x509.Certificate]:
        """Return every listed seal certificate: the ``trusted`` set for
        ``verify_sd_jwt``."""
        return frozenset(c for e in self.entries.values() for c in e.seal_certificates)

    def all_status_list_certificates(self) -> frozenset[x509.Certificate]:
        """Return every listed status-list signing certificate."""
        return frozenset(c for e in self.entries.values() for c in e.status_list_certificates)

    def needs_refresh(self, now: datetime) -> bool:
        """Return whether ``now`` is at or past ``next_update`` (time to fetch a new
        list; this one stays usable until ``expires_at``)."""
        return now >= self.next_update


def _node_name(cert: x509.Certificate) -> str | None:
    """Return the node name of a node certificate (one ``urn:tongban:node:`` URI SAN and
    no department URI), else None."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    nodes = [u.removeprefix(NODE_URI_PREFIX) for u in uris if u.startswith(NODE_URI_PREFIX)]
    if len(nodes) != 1 or any(u.startswith(DEPT_URI_PREFIX) for u in uris):
        return None
    return nodes[0] if nodes[0] and set(nodes[0]) <= _CODE_CHARS else None


def _der_b64(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")


def _check_entry(entry: TrustListEntry) -> None:
    if not _DEPT_CODE.fullmatch(entry.department):
        raise ValueError(f"{entry.department[:64]!r} is not a department code.")
    for cert in entry.seal_certificates:
        try:
            code = department_code(cert)
        except CertificateInvalid as e:
            raise ValueError(f"A seal certificate listed for {entry.department!r}: {e}") from e
        if code != entry.department:
            raise ValueError(
                f"A seal certificate of department {code!r} is listed under "
                f"{entry.department!r}; list each certificate under its own department."
            )
    for kind, certs in (
        ("seal", entry.seal_certificates),
        ("status-list", entry.status_list_certificates),
    ):
        if len(certs) > _MAX_CERTIFICATES_PER_LIST:
            raise ValueError(
                f"Department {entry.department!r} lists {len(certs)} {kind} certificates; "
                f"at most {_MAX_CERTIFICATES_PER_LIST} are allowed."
            )
    if len(entry.status_base_urls) > _MAX_CERTIFICATES_PER_LIST:
        raise ValueError(
            f"Department {entry.department!r} lists {len(entry.status_base_urls)} status-list "
            f"base URLs; at most {_MAX_CERTIFICATES_PER_LIST} are allowed."
        )
    for base in entry.status_base_urls:
        if not isinstance(base, str) or len(base) > _MAX_URL or not _BASE_URL.fullmatch(base):
            raise ValueError(
                f"The status-list base URL {str(base)[:200]!r} of {entry.department!r} is not "
                "an http(s) URL of a host and plain path segments ending in '/'."
            )


def sign_trust_list(
    entries: Sequence[TrustListEntry],
    *,
    revoked: Sequence[RevokedSeal] = (),
    intermediates: Sequence[x509.Certificate] = (),
    sm2_seals: Mapping[str, Sequence[x509.Certificate]] | None = None,
    signer: Signer,
    chain: Sequence[x509.Certificate],
    now: datetime,
    lifetime: timedelta = DEFAULT_LIFETIME,
    refresh: timedelta = DEFAULT_REFRESH,
) -> str:
    """Return a trust list token listing ``entries``, signed by ``signer`` (the node's
    signing key) with ``chain`` (its node signing certificate first, root excluded) in
    ``x5c``. ``iat`` is ``now``, ``next_update`` ``now + refresh``, ``exp``
    ``now + lifetime`` clipped to the signing certificate's notAfter (past which no one
    could verify it).

    Raises ValueError for a naive ``now``; ``refresh`` not positive and shorter than
    ``lifetime``; an empty chain or one over 4 certificates; a signer that is not ES256
    or does not match ``chain[0]``; a leaf that is not a node certificate; a malformed
    department code or one listed twice; a seal certificate listed under a department
    other than its own; more than 16 certificates of one kind, or 16 status-list base
    URLs, for a department; a base URL that is not http(s) and ending in "/"; or more
    than 16 ``intermediates``, or one that is not a CA certificate; more than 16
    ``sm2_seals`` of a department, or one listed under another department.
    Raises SigningError if the signer fails.
    """
    if now.tzinfo is None:
        raise ValueError("sign_trust_list needs a timezone-aware `now`.")
    if not timedelta(0) < refresh < lifetime:
        raise ValueError("refresh must be positive and shorter than lifetime.")
    if signer.algorithm != ALGORITHM:
        raise ValueError(f"Trust lists are signed with {ALGORITHM}, not {signer.algorithm}.")
    if not 1 <= len(chain) <= MAX_CHAIN_LENGTH:
        raise ValueError(
            f"chain must hold the node signing certificate and at most {MAX_CHAIN_LENGTH - 1} more."
        )
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if signer.public_key().public_bytes(*spki) != chain[0].public_key().public_bytes(*spki):
        raise ValueError("The signer's key is not the key of the first certificate in chain.")
    node = _node_name(chain[0])
    if node is None:
        raise ValueError(
            "Trust lists are signed with a node signing certificate (one urn:tongban:node: "
            "URI); the first certificate in chain is not one."
        )
    departments: dict[str, object] = {}
    bases: dict[str, list[str]] = {}
    for entry in entries:
        if entry.department in departments:
            raise ValueError(f"Department {entry.department!r} is listed twice.")
        _check_entry(entry)
        departments[entry.department] = {
            "seal_certificates": [_der_b64(c) for c in entry.seal_certificates],
            "status_list_certificates": [_der_b64(c) for c in entry.status_list_certificates],
        }
        if entry.status_base_urls:
            bases[entry.department] = list(entry.status_base_urls)
    expires = min(now + lifetime, chain[0].not_valid_after_utc)
    payload = {
        "iss": NODE_URI_PREFIX + node,
        "iat": int(now.timestamp()),
        "next_update": int(min(now + refresh, expires).timestamp()),
        "exp": int(expires.timestamp()),
        "departments": departments,
    }
    if bases:
        payload["status_base_urls"] = bases
    if revoked:
        payload["revoked_seal_certificates"] = _revoked_claim(revoked)
    if intermediates:
        if len(intermediates) > _MAX_CERTIFICATES_PER_LIST or not all(map(_is_ca, intermediates)):
            raise ValueError(
                f"intermediates must be at most {_MAX_CERTIFICATES_PER_LIST} CA certificates."
            )
        payload["intermediates"] = [_der_b64(c) for c in intermediates]
    if sm2_seals:
        for dept, certs in sm2_seals.items():
            _check_sm2_seals(dept, tuple(certs), ValueError)
        payload["sm2_seal_certificates"] = {
            dept: [_der_b64(c) for c in certs] for dept, certs in sm2_seals.items() if certs
        }
    return sign_jws(
        dumps_compact(payload).encode("utf-8"),
        signer,
        headers={"typ": TYP, "x5c": encode_x5c(chain)},
    )


def _revoked_claim(revoked: Sequence[RevokedSeal]) -> dict[str, list[dict[str, object]]]:
    claim: dict[str, list[dict[str, object]]] = {}
    for seal in revoked:
        if not _DEPT_CODE.fullmatch(seal.department):
            raise ValueError(f"Revoked seal of a malformed department code {seal.department!r}.")
        if len(seal.fingerprint) != 32 or not 1 <= len(seal.reason) <= _MAX_REASON:
            raise ValueError(
                "A revoked seal needs a SHA-256 fingerprint and a 1-500 character reason."
            )
        claim.setdefault(seal.department, []).append(
            {"sha256": seal.fingerprint.hex(), "revoked_at": int(seal.revoked_at.timestamp()),
             "reason": seal.reason}
        )  # fmt: skip
    if any(len(v) > _MAX_REVOKED_PER_DEPARTMENT for v in claim.values()):
        raise ValueError(f"At most {_MAX_REVOKED_PER_DEPARTMENT} revoked seals per department.")
    return claim


def _revoked(payload: Mapping[str, object]) -> dict[bytes, RevokedSeal]:
    claim = payload.get("revoked_seal_certificates", {})
    bad = LicenceFormatInvalid(
        "The trust list's 'revoked_seal_certificates' is not an object of department codes "
        "to lists of {sha256, revoked_at, reason}."
    )
    if not isinstance(claim, dict):
        raise bad
    out: dict[bytes, RevokedSeal] = {}
    for dept, seals in claim.items():
        if not _DEPT_CODE.fullmatch(dept) or not isinstance(seals, list):
            raise bad
        if len(seals) > _MAX_REVOKED_PER_DEPARTMENT:
            raise bad
        for seal in seals:
            if not isinstance(seal, dict) or set(seal) != {"sha256", "revoked_at", "reason"}:
                raise bad
            digest, reason = seal["sha256"], seal["reason"]
            if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise bad
            if not isinstance(reason, str) or not 1 <= len(reason) <= _MAX_REASON:
                raise bad
            at = _date(seal, "revoked_at")
            fingerprint = bytes.fromhex(digest)
            out[fingerprint] = RevokedSeal(dept, fingerprint, at, reason)
    return out


def _date(payload: Mapping[str, object], name: str) -> datetime:
    value = payload.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_DATE:
        raise LicenceFormatInvalid(
            f"The trust list claim {name!r} is missing or not an integer NumericDate."
        )
    return datetime.fromtimestamp(value, UTC)


def _certificates(value: object, dept: str, kind: str) -> tuple[x509.Certificate, ...]:
    if not isinstance(value, list) or len(value) > _MAX_CERTIFICATES_PER_LIST:
        raise LicenceFormatInvalid(
            f"The trust list's {kind} for {dept!r} is not a list of at most "
            f"{_MAX_CERTIFICATES_PER_LIST} certificates."
        )
    certs = []
    for item in value:
        cert = load_b64_certificate(item)
        if cert is None:
            raise LicenceFormatInvalid(
                f"The trust list's {kind} for {dept!r} holds an entry that is not base64 DER."
            )
        certs.append(cert)
    return tuple(certs)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        return False


def _check_sm2_seals(
    dept: str, certs: tuple[x509.Certificate, ...], error: type[Exception]
) -> None:
    if not _DEPT_CODE.fullmatch(dept) or len(certs) > _MAX_CERTIFICATES_PER_LIST:
        raise error(
            f"The SM2 seals of {dept[:64]!r} are not a department's list of at most "
            f"{_MAX_CERTIFICATES_PER_LIST} certificates."
        )
    for cert in certs:
        try:
            owner = department_code(cert)
        except CertificateInvalid:
            owner = None
        if owner != dept:
            raise error(f"An SM2 seal certificate listed under {dept!r} is not a seal of it.")


def _sm2_seals(payload: Mapping[str, object]) -> dict[str, tuple[x509.Certificate, ...]]:
    value = payload.get("sm2_seal_certificates", {})
    if not isinstance(value, dict):
        raise LicenceFormatInvalid(
            "The trust list's 'sm2_seal_certificates' is not an object of department codes "
            "to certificate lists."
        )
    out = {}
    for dept, certs in value.items():
        if not isinstance(certs, list) or len(certs) > _MAX_CERTIFICATES_PER_LIST:
            raise LicenceFormatInvalid(
                f"The trust list's SM2 seal certificates for {dept[:64]!r} are not a list of "
                f"at most {_MAX_CERTIFICATES_PER_LIST} certificates."
            )
        parsed = tuple(_sm2_certificate(item, dept[:64]) for item in certs)
        _check_sm2_seals(dept, parsed, LicenceFormatInvalid)
        out[dept] = parsed
    return out


def _sm2_certificate(item: object, dept: str) -> x509.Certificate:
    """An SM2 certificate in canonical base64 DER (``cryptography`` parses it but cannot
    use its key or signature algorithm, so those are read with the SM2 code)."""
    bad = LicenceFormatInvalid(
        f"The trust list's SM2 seal certificates for {dept!r} hold an entry that is not a "
        "base64 DER SM2 certificate."
    )
    if not isinstance(item, str):
        raise bad
    try:
        der = base64.b64decode(item, validate=True)
        if base64.b64encode(der).decode("ascii") != item:
            raise bad
        cert = x509.load_der_x509_certificate(der)
        cert.subject.rfc4514_string()
        _ = cert.extensions
        sm2_public_key(cert)
    except (ValueError, CertificateInvalid, x509.DuplicateExtension,
            x509.UnsupportedGeneralNameType) as e:  # fmt: skip
        raise bad from e
    return cert


def _intermediates(payload: Mapping[str, object]) -> tuple[x509.Certificate, ...]:
    certs = _certificates(payload.get("intermediates", []), "the exchange", "intermediates")
    if not all(map(_is_ca, certs)):
        raise LicenceFormatInvalid(
            "The trust list's 'intermediates' holds a certificate that is not a CA's."
        )
    return certs


def _base_urls(
    payload: Mapping[str, object], departments: Mapping[str, object]
) -> dict[str, tuple[str, ...]]:
    value = payload.get("status_base_urls", {})
    if not isinstance(value, dict) or not set(value) <= set(departments):
        raise LicenceFormatInvalid(
            "The trust list's 'status_base_urls' is not an object keyed by listed departments."
        )
    out = {}
    for dept, bases in value.items():
        if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            raise LicenceFormatInvalid(
                f"The trust list's status-list base URLs for {dept[:64]!r} are not a list of "
                "strings."
            )
        out[dept] = tuple(bases)
    return out


def _entries(payload: Mapping[str, object]) -> dict[str, TrustListEntry]:
    departments = payload.get("departments")
    if not isinstance(departments, dict):
        raise LicenceFormatInvalid("The trust list has no 'departments' object.")
    base_urls = _base_urls(payload, departments)
    out: dict[str, TrustListEntry] = {}
    for dept, value in departments.items():
        if not isinstance(value, dict) or set(value) != {
            "seal_certificates",
            "status_list_certificates",
        }:
            raise LicenceFormatInvalid(
                f"The trust list entry for {dept[:64]!r} is not an object with exactly "
                "'seal_certificates' and 'status_list_certificates'."
            )
        entry = TrustListEntry(
            department=dept,
            seal_certificates=_certificates(value["seal_certificates"], dept, "seal certificates"),
            status_list_certificates=_certificates(
                value["status_list_certificates"], dept, "status-list certificates"
            ),
            status_base_urls=base_urls.get(dept, ()),
        )
        try:
            _check_entry(entry)
        except ValueError as e:
            raise LicenceFormatInvalid(f"The trust list is inconsistent: {e}") from e
        out[dept] = entry
    return out


def verify_trust_list(token: str, *, roots: Sequence[x509.Certificate], now: datetime) -> TrustList:
    """Return the trust list in ``token`` once it checks out: ``typ`` and ``alg``, the
    ``x5c`` chain validates to one of ``roots`` at ``now`` for usage "seal" and its leaf
    is a node signing certificate, the signature, ``iss`` names that node, and ``now`` is
    before ``exp``.

    Raises LicenceFormatInvalid (malformed, wrong ``typ``, a seal certificate listed
    under another department); SignatureInvalid (alg not ES256, bad signature);
    SignerUntrusted (chain does not validate, signer not a node, ``iss`` not the signer);
    TrustListExpired at or past ``exp``; ValueError for a naive ``now``.
    """
    if now.tzinfo is None:
        raise ValueError("verify_trust_list needs a timezone-aware `now`.")
    if not isinstance(token, str) or len(token) > MAX_TRUST_LIST_LENGTH or not token.isascii():
        raise LicenceFormatInvalid(
            f"The trust list is not ASCII text of at most {MAX_TRUST_LIST_LENGTH} characters."
        )
    header = decode_header(token, "trust list")
    if header.get("typ") != TYP:
        raise LicenceFormatInvalid(
            f"The token's typ is {header.get('typ')!r}, not {TYP!r}: it is not a trust list."
        )
    check_algorithm(header, "trust list")
    leaf = verified_signer(header, roots=roots, now=now, what="trust list")
    node = _node_name(leaf)
    if node is None:
        raise SignerUntrusted(
            f"The trust list is signed by {leaf.subject.rfc4514_string()}, which is not an "
            "exchange node; only nodes sign trust lists.",
            metadata={"signer": leaf.subject.rfc4514_string()[:200]},
        )
    payload_bytes = verify_signature(token, leaf, "trust list")
    try:
        payload = loads_strict(payload_bytes)
    except ValueError as e:
        raise LicenceFormatInvalid(f"The trust list payload is not valid JSON ({e}).") from e
    if not isinstance(payload, dict):
        raise LicenceFormatInvalid("The trust list payload is not a JSON object.")
    if payload.get("iss") != NODE_URI_PREFIX + node:
        raise SignerUntrusted(
            f"The trust list claims issuer {payload.get('iss')!r} but is signed by node {node!r}.",
            metadata={"node": node},
        )
    issued_at, next_update = _date(payload, "iat"), _date(payload, "next_update")
    expires_at = _date(payload, "exp")
    if not issued_at <= next_update <= expires_at:
        raise LicenceFormatInvalid("The trust list's iat, next_update and exp are out of order.")
    entries = _entries(payload)
    revoked = _revoked(payload)
    intermediates = _intermediates(payload)
    sm2_seals = _sm2_seals(payload)
    if now >= expires_at:
        raise TrustListExpired(
            f"The trust list expired at {expires_at.isoformat()} (checked at "
            f"{now.isoformat()}); fetch a fresh one from the exchange.",
            metadata={"expires_at": expires_at.isoformat()},
        )
    return TrustList(
        issuer=node,
        issued_at=issued_at,
        next_update=next_update,
        expires_at=expires_at,
        entries=MappingProxyType(entries),
        signer=leaf,
        token=token,
        revoked=MappingProxyType(revoked),
        intermediates=intermediates,
        sm2_seals=MappingProxyType(sm2_seals),
    )


class TrustListCache:
    """The last good trust list, kept in one file so that verification keeps working
    offline until the list's ``exp``.

    The file holds the token as received; it is verified again when read (so a file
    altered on disk is refused), and written atomically (readers see the old list or the
    new one). A verified list is remembered in memory while the file is unchanged.
    """

    def __init__(self, path: Path) -> None:
        """Use ``path`` (created with its parent directories on the first ``store``)."""
        self._path = path
        self._lock = threading.Lock()
        self._memo: tuple[str, tuple[x509.Certificate, ...], TrustList] | None = None

    @property
    def path(self) -> Path:
        """The cache file."""
        return self._path

    def _read(self) -> str | None:
        try:
            with self._path.open("rb") as f:
                data = f.read(MAX_TRUST_LIST_LENGTH + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise TrustListUnavailable(
                f"The cached trust list {self._path} could not be read ({e.strerror}); "
                "check its owner and mode."
            ) from e
        try:
            return data.decode("ascii")
        except UnicodeDecodeError as e:
            raise LicenceFormatInvalid(
                f"The cached trust list {self._path} is not a trust list token."
            ) from e

    def _verify(self, token: str, roots: Sequence[x509.Certificate], now: datetime) -> TrustList:
        key = tuple(roots)
        with self._lock:
            memo = self._memo
        if memo is not None and memo[0] == token and memo[1] == key:
            trust_list = memo[2]
            if now >= trust_list.expires_at:
                raise TrustListExpired(
                    f"The cached trust list expired at {trust_list.expires_at.isoformat()}; "
                    "fetch a fresh one from the exchange.",
                    metadata={"expires_at": trust_list.expires_at.isoformat()},
                )
            # The signer's chain may have expired since; this re-check is cached and cheap.
            verified_signer(
                decode_header(token, "trust list"), roots=roots, now=now, what="trust list"
            )
            return trust_list
        trust_list = verify_trust_list(token, roots=roots, now=now)
        with self._lock:
            self._memo = (token, key, trust_list)
        return trust_list

    def load(self, *, roots: Sequence[x509.Certificate], now: datetime) -> TrustList:
        """Return the cached trust list, verified at ``now`` against ``roots``.

        Raises TrustListUnavailable if none has been stored or the file cannot be read;
        TrustListExpired once it is past its ``exp``; otherwise what
        ``verify_trust_list`` raises if the file does not verify.
        """
        token = self._read()
        if token is None:
            raise TrustListUnavailable(
                f"No trust list has been cached at {self._path}; fetch one from the exchange "
                "while online."
            )
        return self._verify(token, roots, now)

    def store(self, token: str, *, roots: Sequence[x509.Certificate], now: datetime) -> TrustList:
        """Verify ``token`` and keep it unless the cached list is newer, and return the
        list now in effect. An older list (smaller ``iat``) never replaces a newer one
        still valid, so a lagging or replayed answer cannot roll the cache back.

        Raises what ``verify_trust_list`` raises for ``token`` (nothing is written then).
        """
        offered = verify_trust_list(token, roots=roots, now=now)
        current_token = self._read_quietly()
        if current_token is not None and current_token != token:
            try:
                current = self._verify(current_token, roots, now)
            except VerificationFailed:  # expired, damaged or no longer trusted: replace it
                current = None
            if current is not None and current.issued_at > offered.issued_at:
                return current
        write_atomic(self._path, token.encode("ascii"), mode=0o644, dir_mode=0o755)
        with self._lock:
            self._memo = (token, tuple(roots), offered)
        return offered

    def _read_quietly(self) -> str | None:
        try:
            return self._read()
        except (TrustListUnavailable, LicenceFormatInvalid):
            return None
