"""Revocation and suspension of licences: the IETF Token Status List
(draft-ietf-oauth-status-list), as a signed JWT.

Each licence is given a random index in a list of 2-bit statuses (0 valid, 1 revoked,
2 suspended). The list is packed least-significant-bits first within each byte,
compressed with DEFLATE in the zlib format, base64url-encoded without padding (``lst``),
and signed by the issuing department's seal as a ``statuslist+jwt`` with the
certificate chain in ``x5c``. Lists hold at least ``MIN_SIZE`` entries, so one fetch
reveals little about which licence is being checked (herd privacy), and indices are
random, so they leak neither issue order nor issue volume.
"""

from __future__ import annotations

import base64
import binascii
import json
import random
import zlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntEnum

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tongban.licence._inflate import inflate_capped
from tongban.licence.errors import (
    LicenceFormatInvalid,
    LicenceRevoked,
    LicenceSuspended,
    PayloadTooLarge,
    SignatureInvalid,
    SignerUntrusted,
    StatusListFull,
    StatusUnavailable,
)
from tongban.signing.certs import department_code, verify_certificate
from tongban.signing.errors import CertificateInvalid
from tongban.signing.errors import SignatureInvalid as JwsSignatureInvalid
from tongban.signing.jose import sign_jwt, verify_jws
from tongban.signing.keys import Signer

__all__ = [
    "MAX_COMPRESSED_BYTES",
    "MAX_LIST_BYTES",
    "MIN_SIZE",
    "STATUS_LIST_TYP",
    "IndexAllocator",
    "LicenceStatus",
    "StatusList",
    "VerifiedStatusList",
    "require_valid",
    "sign_status_list",
    "verify_status_list",
    "verify_status_list_token",
]

#: The smallest list we publish: 2**17 entries, 32 KiB at 2 bits before compression.
MIN_SIZE = 131_072
#: The JWT ``typ`` of a status list token.
STATUS_LIST_TYP = "statuslist+jwt"
#: The largest compressed ``lst`` accepted (bytes after base64url decoding).
MAX_COMPRESSED_BYTES = 1024 * 1024
#: The largest decompressed list accepted: 4 MiB, 16 Mi entries at 2 bits (128 times
#: ``MIN_SIZE``), far beyond any department's licence count.
MAX_LIST_BYTES = 4 * 1024 * 1024

_BITS = (1, 2, 4, 8)
_DEFAULT_BITS = 2
# The compressed cap, base64url-encoded twice (lst in the payload, payload in the JWS),
# plus room for a header with an x5c chain.
_MAX_TOKEN_CHARS = MAX_COMPRESSED_BYTES * 16 // 9 + 64 * 1024
_MAX_CHAIN = 4
# Random probes before falling back to an exact pick; with half the list free, 32 misses
# in a row happen once in 4 billion allocations.
_PROBES = 32
_BLOCK = 4096


class LicenceStatus(IntEnum):
    """Status values of the Token Status List draft (section 7.1)."""

    VALID = 0
    INVALID = 1
    """Revoked; irreversible."""
    SUSPENDED = 2
    """Temporarily invalid; reversible."""


def require_valid(value: int | None, number: str, uri: str, index: int) -> LicenceStatus:
    """``LicenceStatus.VALID`` if ``value`` (licence ``number``'s entry at ``index`` of the
    list at ``uri``, None when that list is not at hand) says the licence is valid; else
    raise what it means: LicenceRevoked, LicenceSuspended, or StatusUnavailable (no list,
    or a value with no meaning for licences: fail closed). The one reading of a status
    value, for the QR and the SD-JWT paths alike."""
    where = f"index {index} of {uri}"
    if value is None:
        raise StatusUnavailable(
            f"The status of licence {number} ({where}) is not at hand; fetch the status "
            "list while online and check again."
        )
    if value == LicenceStatus.INVALID:
        raise LicenceRevoked(f"Licence {number} has been revoked ({where}).")
    if value == LicenceStatus.SUSPENDED:
        raise LicenceSuspended(f"Licence {number} is suspended ({where}).")
    if value != LicenceStatus.VALID:
        raise StatusUnavailable(
            f"The status list gives licence {number} the status {value}, which has no "
            "meaning for licences."
        )
    return LicenceStatus.VALID


def _check_bits(bits: int) -> None:
    if bits not in _BITS:
        raise ValueError(f"A status list has 1, 2, 4 or 8 bits per entry, not {bits!r}.")


class StatusList:
    """A mutable array of ``bits``-bit statuses, packed as the draft specifies."""

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __init__(self, size: int = MIN_SIZE, *, bits: int = _DEFAULT_BITS) -> None:
        """Make a list of at least ``size`` entries (rounded up to fill whole bytes), all
        VALID. Raises ValueError if ``size`` < 1 or ``bits`` is not 1, 2, 4 or 8."""
        _check_bits(bits)
        if size < 1:
            raise ValueError(f"A status list needs at least one entry, not {size}.")
        self._bits = bits
        self._data = bytearray(-(-size * bits // 8))

    @classmethod
    def from_bytes(cls, data: bytes, *, bits: int) -> StatusList:
        """Return the list whose packed (uncompressed) bytes are ``data``.

        Raises ValueError if ``data`` is empty or ``bits`` is not 1, 2, 4 or 8.
        """
        _check_bits(bits)
        if not data:
            raise ValueError("A status list needs at least one byte.")
        status_list = cls(1, bits=bits)
        status_list._data = bytearray(data)
        return status_list

    @property
    def bits(self) -> int:
        """Bits per entry: 1, 2, 4 or 8."""
        return self._bits

    def __len__(self) -> int:
        return len(self._data) * 8 // self._bits

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StatusList):
            return NotImplemented
        return self._bits == other._bits and self._data == other._data

    def __repr__(self) -> str:
        return f"StatusList(size={len(self)}, bits={self._bits})"

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"Status index {index} is outside the list (size {len(self)}).")
        byte, slot = divmod(index * self._bits, 8)
        return byte, slot

    def __getitem__(self, index: int) -> int:
        """Return the status at ``index``; raises IndexError if out of range."""
        byte, shift = self._locate(index)
        return (self._data[byte] >> shift) & ((1 << self._bits) - 1)

    def get(self, index: int) -> int | None:
        """Return the status at ``index``, or None if the list has no such index."""
        return self[index] if 0 <= index < len(self) else None

    def set(self, index: int, status: int) -> None:
        """Set the status at ``index``. Raises IndexError if out of range and ValueError
        if ``status`` does not fit in ``bits`` bits."""
        mask = (1 << self._bits) - 1
        if isinstance(status, bool) or not 0 <= status <= mask:
            raise ValueError(f"Status {status!r} does not fit in {self._bits} bits.")
        byte, shift = self._locate(index)
        self._data[byte] = (self._data[byte] & ~(mask << shift)) | (status << shift)

    def to_bytes(self) -> bytes:
        """Return the packed, uncompressed bytes."""
        return bytes(self._data)

    def encode(self) -> str:
        """Return ``lst``: the packed bytes, zlib-compressed (level 9), base64url without
        padding."""
        return _b64(zlib.compress(self._data, 9))

    @classmethod
    def decode(cls, lst: str, *, bits: int) -> StatusList:
        """Return the list encoded as ``lst`` with ``bits`` bits per entry.

        Raises LicenceFormatInvalid if ``lst`` is not canonical base64url, not a complete
        zlib stream, has trailing data or inflates to nothing; PayloadTooLarge if it is
        over ``MAX_COMPRESSED_BYTES`` or inflates beyond ``MAX_LIST_BYTES``; ValueError
        for bad ``bits``.
        """
        _check_bits(bits)
        if len(lst) > MAX_COMPRESSED_BYTES * 4 // 3 + 4:
            raise PayloadTooLarge(
                f"The status list lst is {len(lst)} characters, over the "
                f"{MAX_COMPRESSED_BYTES}-byte compressed cap."
            )
        compressed = _unb64(lst)
        if len(compressed) > MAX_COMPRESSED_BYTES:
            raise PayloadTooLarge(
                f"The status list lst is {len(compressed)} bytes compressed, over the "
                f"{MAX_COMPRESSED_BYTES}-byte cap."
            )
        raw = inflate_capped(compressed, MAX_LIST_BYTES, "The status list lst")
        if not raw:
            raise LicenceFormatInvalid("The status list is empty.")
        return cls.from_bytes(raw, bits=bits)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    # Canonical form only: the stdlib decoder ignores trailing bits, which would let one
    # signed list have several spellings.
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as e:
        raise LicenceFormatInvalid("The status list lst is not base64url.") from e
    if _b64(data) != text:
        raise LicenceFormatInvalid("The status list lst is not canonical unpadded base64url.")
    return data


class IndexAllocator:
    """Hands out random unused indices of one status list.

    The caller owns the record of indices in use (the licence registry); it passes them
    in, and each ``allocate`` marks its pick as used so repeated calls never collide.
    """

    def __init__(self, size: int = MIN_SIZE, used: Iterable[int] = ()) -> None:
        """Track a list of ``size`` entries of which ``used`` are taken.

        Raises ValueError if ``size`` < 1 or a used index is outside the list.
        """
        if size < 1:
            raise ValueError(f"A status list needs at least one entry, not {size}.")
        self._used = bytearray(size)
        for index in used:
            if not 0 <= index < size:
                raise ValueError(f"Used index {index} is outside the list (size {size}).")
            self._used[index] = 1
        self._free = self._used.count(0)

    @property
    def size(self) -> int:
        """The number of entries in the list."""
        return len(self._used)

    @property
    def free(self) -> int:
        """The number of entries not yet allocated."""
        return self._free

    def allocate(self, rng: random.Random) -> int:
        """Return an index chosen uniformly at random among the free ones, and mark it
        used. Pass ``secrets.SystemRandom()`` in production, a seeded
        ``random.Random`` in tests.

        Raises StatusListFull if every index is in use.
        """
        if self._free == 0:
            raise StatusListFull(
                f"All {self.size} indices of the status list are in use; start a new "
                "status list for further licences."
            )
        # Uniform over free indices either way: a probe that lands on a free index is a
        # uniform pick among them, and so is the exact k-th-free fallback.
        for _ in range(_PROBES):
            index = rng.randrange(self.size)
            if not self._used[index]:
                break
        else:
            index = self._nth_free(rng.randrange(self._free))
        self._used[index] = 1
        self._free -= 1
        return index

    def _nth_free(self, n: int) -> int:
        """Return the index of the ``n``-th (from 0) free entry."""
        start = 0
        # Skip whole blocks by counting in C, then walk one block.
        while (block_free := self._used.count(0, start, start + _BLOCK)) <= n:
            n -= block_free
            start += _BLOCK
        index = self._used.find(0, start)
        for _ in range(n):
            index = self._used.find(0, index + 1)
        return index


def sign_status_list(
    status_list: StatusList,
    *,
    uri: str,
    signer: Signer,
    chain: Sequence[x509.Certificate],
    now: datetime,
    ttl: timedelta,
    lifetime: timedelta,
) -> str:
    """Return a Status List Token: a JWT (``typ`` statuslist+jwt, ES256, ``x5c`` =
    ``chain``, leaf first) with claims ``sub`` = ``uri``, ``iat`` = ``now``, ``exp`` =
    ``now + lifetime``, ``ttl`` (seconds a verifier may cache it) and ``status_list``.

    Raises ValueError if the list has fewer than ``MIN_SIZE`` entries, ``uri`` is empty,
    the chain is empty or its leaf does not hold the signer's key, the signer is not
    ES256, ``now`` is naive, or ``ttl`` is not positive and at most ``lifetime``;
    SigningError if the signer fails.
    """
    if len(status_list) < MIN_SIZE:
        raise ValueError(
            f"The status list has {len(status_list)} entries; publish at least {MIN_SIZE} "
            "so that fetching it does not reveal which licence is being checked."
        )
    if not uri:
        raise ValueError("The status list URI must not be empty.")
    if signer.algorithm != "ES256":
        raise ValueError(f"Status lists are signed with ES256, not {signer.algorithm!r}.")
    if not chain:
        raise ValueError("The certificate chain (x5c) must hold at least the signer's certificate.")
    if chain[0].public_key() != signer.public_key():
        raise ValueError("The first certificate of the chain does not hold the signer's key.")
    if now.tzinfo is None:
        raise ValueError("sign_status_list needs a timezone-aware `now`.")
    if not timedelta(0) < ttl <= lifetime:
        raise ValueError(f"ttl ({ttl}) must be positive and no longer than lifetime ({lifetime}).")
    issued = int(now.timestamp())
    claims = {
        "sub": uri,
        "iat": issued,
        "exp": issued + int(lifetime.total_seconds()),
        "ttl": int(ttl.total_seconds()),
        "status_list": {"bits": status_list.bits, "lst": status_list.encode()},
    }
    x5c = [
        base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")
        for cert in chain
    ]
    return sign_jwt(claims, signer, headers={"typ": STATUS_LIST_TYP, "x5c": x5c})


def _header(token: str) -> Mapping[str, object]:
    parts = token.split(".")
    if len(parts) != 3:
        raise LicenceFormatInvalid(
            f"The status list token has {len(parts)} dot-separated parts, not 3; it is not a JWT."
        )
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (binascii.Error, ValueError) as e:  # ValueError covers JSON and UTF-8 errors
        raise LicenceFormatInvalid("The status list token header is not base64url JSON.") from e
    if not isinstance(header, dict):
        raise LicenceFormatInvalid("The status list token header is not a JSON object.")
    return header


def _chain(header: Mapping[str, object]) -> list[x509.Certificate]:
    x5c = header.get("x5c")
    if not isinstance(x5c, list) or not 1 <= len(x5c) <= _MAX_CHAIN:
        raise LicenceFormatInvalid(
            f"The status list token header needs an x5c chain of 1 to {_MAX_CHAIN} certificates."
        )
    chain: list[x509.Certificate] = []
    for entry in x5c:
        if not isinstance(entry, str):
            raise LicenceFormatInvalid("An x5c entry is not a string.")
        try:
            chain.append(x509.load_der_x509_certificate(base64.b64decode(entry, validate=True)))
        except (binascii.Error, ValueError) as e:
            raise LicenceFormatInvalid("An x5c entry is not a base64 DER certificate.") from e
    return chain


def _int_claim(claims: Mapping[str, object], name: str) -> int:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LicenceFormatInvalid(
            f"The status list token claim {name!r} is missing or not a whole number of seconds."
        )
    return value


def _instant(seconds: int, name: str, now: datetime) -> datetime:
    try:
        return datetime.fromtimestamp(seconds, now.tzinfo)
    except (OverflowError, OSError, ValueError) as e:
        raise LicenceFormatInvalid(
            f"The status list token claim {name!r} is not a time a calendar can hold."
        ) from e


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


@dataclass(frozen=True)
class VerifiedStatusList:
    """A Status List Token that verified: its list and its time claims."""

    status_list: StatusList
    issued_at: datetime
    """``iat``."""
    expires_at: datetime
    """``exp``: the list is not to be used from then on."""
    ttl: timedelta | None
    """``ttl``: how long the issuer lets a verifier use the list before fetching it again;
    None if the token has no ``ttl`` claim (the verifier then decides)."""


def verify_status_list(
    token: str,
    *,
    uri: str,
    roots: Sequence[x509.Certificate],
    now: datetime,
    issuer: str | None = None,
    trusted: Collection[x509.Certificate] | None = None,
) -> StatusList:
    """Return the status list carried by Status List Token ``token`` once it checks out,
    as ``verify_status_list_token`` checks it (which see, for what it raises)."""
    return verify_status_list_token(
        token, uri=uri, roots=roots, now=now, issuer=issuer, trusted=trusted
    ).status_list


def verify_status_list_token(
    token: str,
    *,
    uri: str,
    roots: Sequence[x509.Certificate],
    now: datetime,
    issuer: str | None = None,
    trusted: Collection[x509.Certificate] | None = None,
) -> VerifiedStatusList:
    """Return Status List Token ``token``'s list, ``iat``, ``exp`` and ``ttl`` once it
    checks out:
    ``typ`` statuslist+jwt; ES256 signature by the ``x5c`` leaf; the leaf a seal
    certificate chaining to ``roots`` (and of department ``issuer``, if given; one of
    ``trusted``, the trust list's status-list certificates, if given); ``sub`` equal to
    ``uri``; ``now`` before ``exp``.

    Raises LicenceFormatInvalid for a malformed token, wrong ``typ``, missing claims,
    times past the calendar or a malformed ``lst``; PayloadTooLarge if the token or list
    exceeds the size caps; SignerUntrusted if the leaf does not chain to ``roots``, is not
    a seal certificate, belongs to another department or is not one of ``trusted``;
    SignatureInvalid if the signature does not verify;
    StatusUnavailable if ``sub`` names another list or the token has expired; ValueError
    for a naive ``now``.
    """
    if now.tzinfo is None:
        raise ValueError("verify_status_list_token needs a timezone-aware `now`.")
    if len(token) > _MAX_TOKEN_CHARS:
        raise PayloadTooLarge(
            f"The status list token is {len(token)} characters, over the "
            f"{_MAX_TOKEN_CHARS}-character cap."
        )
    header = _header(token)
    if header.get("typ") != STATUS_LIST_TYP:
        raise LicenceFormatInvalid(
            f"The token has typ {header.get('typ')!r}, not {STATUS_LIST_TYP!r}; it is not a "
            "status list token."
        )
    leaf, *intermediates = _chain(header)
    try:
        verify_certificate(leaf, roots=roots, intermediates=intermediates, now=now, usage="seal")
        department = department_code(leaf) if issuer is not None else None
    except CertificateInvalid as e:
        raise SignerUntrusted(
            f"The status list signer is not trusted: {e.message}", metadata={"cause": e.reason}
        ) from e
    if department != issuer:
        raise SignerUntrusted(
            f"The status list is signed by department {department!r}, not by the licence "
            f"issuer {issuer!r}."
        )
    if trusted is not None and leaf not in trusted:
        raise SignerUntrusted(
            f"The status list signer ({leaf.subject.rfc4514_string()}) is not a status-list "
            "certificate on the trust list; refresh the trust list.",
            metadata={"signer": leaf.subject.rfc4514_string()[:200]},
        )
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignatureInvalid("The status list signer's certificate does not hold an ES256 key.")
    try:
        verified = verify_jws(token, key, algorithms=("ES256",))
    except JwsSignatureInvalid as e:
        raise SignatureInvalid(f"The status list token does not verify: {e.message}") from e

    try:
        claims = json.loads(verified.payload, parse_constant=_reject_constant)
    except ValueError as e:
        raise LicenceFormatInvalid("The status list token payload is not JSON.") from e
    if not isinstance(claims, dict):
        raise LicenceFormatInvalid("The status list token payload is not a JSON object.")
    if claims.get("sub") != uri:
        raise StatusUnavailable(
            f"The status list token is for {claims.get('sub')!r}, not the requested {uri!r}."
        )
    iat = _int_claim(claims, "iat")
    exp = _int_claim(claims, "exp")
    ttl = timedelta(seconds=_int_claim(claims, "ttl")) if "ttl" in claims else None
    if now.timestamp() >= exp:
        raise StatusUnavailable(
            f"The status list {uri} expired at {datetime.fromtimestamp(exp, now.tzinfo)} "
            f"(checked at {now.isoformat()}); fetch a fresh one."
        )
    body = claims.get("status_list")
    if not isinstance(body, dict):
        raise LicenceFormatInvalid("The status list token has no status_list object.")
    bits, lst = body.get("bits"), body.get("lst")
    if isinstance(bits, bool) or bits not in _BITS or not isinstance(lst, str):
        raise LicenceFormatInvalid(
            "The status_list claim needs bits (1, 2, 4 or 8) and lst (a string)."
        )
    assert isinstance(bits, int)
    return VerifiedStatusList(
        StatusList.decode(lst, bits=bits),
        issued_at=_instant(iat, "iat", now),
        expires_at=_instant(exp, "exp", now),
        ttl=ttl,
    )
