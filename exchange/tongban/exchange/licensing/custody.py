"""Custodial seals (统一电子印章系统): the departments' seal keys, and the exchange's
status-list key, held by the exchange in PostgreSQL.

Each key rests either as passphrase-encrypted PKCS#8 PEM (the node key passphrase, as for
the keys in the data dir) or, when the exchange has a PKCS#11 token, in the token under a
label (``key_label``; the row then holds no key at all), beside its certificate chain.
Every node of one exchange shares the database and the passphrase or token, so every node
can seal; the database alone reveals no key. Keys are kept in memory (or their token
handles) for ``CACHE_SECONDS`` and then read again, so a re-enrolled seal takes effect on
every node within that time.

With a token, every key enrolled from then on goes into it; ``move_to_token`` moves a key
enrolled before. The ``Seal`` hands out a ``Signer`` for JOSE, COSE and PAdES alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from tongban.exchange.licensing.errors import SealNotEnrolled
from tongban.licence import RevokedSeal
from tongban.signing import (
    DOCUMENT_SIGNING,
    KeyPassphraseWrong,
    LocalSigner,
    PrivateKey,
    PublicKey,
    Signer,
    TokenKeyExists,
    TokenUnavailable,
    certificate_fingerprint,
    certificate_pem,
    load_pem_certificates,
)
from tongban.signing.clock import Clock, SystemClock
from tongban.signing.pkcs11 import Token

__all__ = [
    "CACHE_SECONDS",
    "STATUS_LIST_HOLDER",
    "STATUS_LIST_URI_PREFIX",
    "Seal",
    "SealKey",
    "SealVault",
    "issue_status_list_certificate",
]

#: The holder name of the exchange's status-list key in ``seal_key``.
STATUS_LIST_HOLDER = "#status-list"
#: The URI SAN prefix of a status-list certificate: neither a department
#: (``urn:tongban:dept:``) nor a node (``urn:tongban:node:``), so the certificate can sign
#: nothing but status lists.
STATUS_LIST_URI_PREFIX = "urn:tongban:status-list:"
#: How long a decrypted key is reused before the vault reads it again.
CACHE_SECONDS = 30.0
#: Seal certificates listed per holder in the trust list (the trust list's own limit).
_MAX_TRUSTED_PER_HOLDER = 16

_CLOCK_SKEW = timedelta(minutes=5)
_INSERT = (
    "INSERT INTO seal_key"
    " (holder, key_pem, key_label, chain_pem, fingerprint, created_at, active_from)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (holder, fingerprint) DO NOTHING"
)
_KEYS = (
    "SELECT fingerprint, key_pem, key_label, chain_pem, active_from, created_at FROM seal_key"
    " WHERE holder = $1 AND revoked_at IS NULL ORDER BY active_from DESC, created_at DESC"
)


@dataclass(frozen=True)
class Seal:
    """A key held in custody and its certificate chain (leaf first, root excluded)."""

    holder: str
    signer: Signer
    chain: tuple[x509.Certificate, ...]

    @property
    def certificate(self) -> x509.Certificate:
        """The seal (or status-list) certificate."""
        return self.chain[0]

    @property
    def name(self) -> str:
        """The holder's name in the certificate (CN), e.g. 县市场监督管理局."""
        names = self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        value = names[0].value if names else self.holder
        return value if isinstance(value, str) else value.decode("utf-8", "replace")


def issue_status_list_certificate(
    *,
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    node_name: str,
    public_key: PublicKey,
    now: datetime,
    validity: timedelta = timedelta(days=825),
) -> x509.Certificate:
    """Return a certificate for signing status lists only: KeyUsage digitalSignature +
    contentCommitment and EKU documentSigning (so ``verify_status_list`` accepts it as a
    signing certificate), with the single URI SAN ``urn:tongban:status-list:<node>``,
    which no licence, seal, trust list or signed answer accepts. notAfter is clipped to
    the CA's.

    Raises ValueError if ``ca_key`` is not ``ca_cert``'s key.
    """
    if ca_key.public_key() != ca_cert.public_key():
        raise ValueError("ca_key is not the private key of ca_cert.")
    not_before = now - _CLOCK_SKEW
    not_after = min(now + validity, ca_cert.not_valid_after_utc)
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tongban Exchange"),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"{node_name} status lists"),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(STATUS_LIST_URI_PREFIX + node_name)]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([DOCUMENT_SIGNING]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


@dataclass(frozen=True)
class SealKey:
    """One of a holder's keys, as ``tongban seal list`` shows it."""

    holder: str
    fingerprint: bytes
    """SHA-256 of the seal certificate's DER."""
    key_label: str | None
    """Its label in the token, or None when it rests in the database."""
    active_from: datetime
    state: str
    """``active`` (signs now), ``next`` (signs from ``active_from``; already in the trust
    list), ``retired`` (replaced; its certificate stays trusted until it expires),
    ``revoked``."""
    not_after: datetime


def _self_signed(cert: x509.Certificate) -> bool:
    """A root: chains kept before issuing CAs end with one, and verifiers have it already."""
    return cert.issuer == cert.subject


class SealVault:
    """Keys in custody, in table ``seal_key`` (and in ``token`` when the exchange has one).

    A holder may have several keys (rotation, docs/keys.md): the one that signs is the
    not-revoked key with the latest ``active_from`` at or before now, or, before any has
    come due, the holder's first."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        passphrase: bytes,
        token: Token | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not passphrase:
            raise ValueError("The seal vault needs the node key passphrase.")
        self._pool = pool
        self._passphrase = passphrase
        self._token = token
        self._clock = clock or SystemClock()
        # holder -> (read at, monotonic; the seal; when a next key comes due, if one does)
        self._cache: dict[str, tuple[float, Seal, datetime | None]] = {}
        # Seal certificates already parsed, by fingerprint (a key's never changes).
        self._chains: dict[bytes, tuple[x509.Certificate, ...]] = {}

    async def enrol(
        self,
        holder: str,
        key: PrivateKey,
        chain: tuple[x509.Certificate, ...],
        now: datetime,
        *,
        replace: bool = True,
        active_from: datetime | None = None,
    ) -> bool:
        """Store ``key`` and ``chain`` for ``holder`` (a department code, or
        ``STATUS_LIST_HOLDER``) as a key that signs from ``active_from`` (default: now);
        return whether it was written. Earlier keys stay, retired, so what they signed keeps
        verifying. With a token the key is imported into it (sensitive, not extractable)
        and the row names its label. With ``replace`` False nothing is written if the
        holder has a key already (several nodes creating the status-list key at once agree
        on the first; a loser's copy in the token is left unused)."""
        if not chain or chain[0].public_key() != key.public_key():
            raise ValueError("The key does not belong to the first certificate of the chain.")
        fingerprint = certificate_fingerprint(chain[0])
        encrypted: bytes | None = None
        label: str | None = None
        if self._token is not None:
            label = _label(holder, fingerprint)
            try:
                self._token.import_key(label, key)
            except TokenKeyExists:  # this very certificate's key, enrolled before
                if self._token.signer(label).public_key() != key.public_key():
                    raise
        else:
            encrypted = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(self._passphrase),
            )
        pem = b"".join(certificate_pem(c) for c in chain)
        values = (holder, encrypted, label, pem, fingerprint, now, active_from or now)
        async with self._pool.acquire() as conn, conn.transaction():
            if not replace:
                # One holder's first key at a time, across nodes (xact-scoped lock).
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('seal_key:' || $1))", holder
                )
                if await conn.fetchval(
                    "SELECT EXISTS (SELECT FROM seal_key WHERE holder = $1)", holder
                ):
                    return False
            status = await conn.execute(_INSERT, *values)
        self._cache.pop(holder, None)
        return bool(status.endswith(" 1"))

    async def revoke(self, holder: str, fingerprint: bytes, reason: str, now: datetime) -> None:
        """Revoke one of ``holder``'s keys: it signs no more, leaves the trust list's seal
        certificates and is listed as revoked, so what it signed fails with SEAL_REVOKED.
        Raises SealNotEnrolled if the holder has no such unrevoked key."""
        status = await self._pool.execute(
            "UPDATE seal_key SET revoked_at = $3, revocation_reason = $4"
            " WHERE holder = $1 AND fingerprint = $2 AND revoked_at IS NULL",
            holder,
            fingerprint,
            now,
            reason,
        )
        self._cache.pop(holder, None)
        if status != "UPDATE 1":
            raise SealNotEnrolled(
                f"{holder!r} has no unrevoked seal whose certificate sha256 is "
                f"{fingerprint.hex()}; `tongban seal list` shows its keys.",
                metadata={"department": holder},
            )

    async def move_to_token(self, holder: str) -> list[str]:
        """Move ``holder``'s passphrase-encrypted keys into the token and drop them from the
        database; return the labels moved (empty if all were in the token already).
        Raises TokenUnavailable without a token, SealNotEnrolled for an unknown holder."""
        if self._token is None:
            raise TokenUnavailable(
                "No PKCS#11 token is configured: set TONGBAN_PKCS11_MODULE, "
                "TONGBAN_PKCS11_TOKEN and TONGBAN_PKCS11_PIN_FILE (docs/keys.md)."
            )
        rows = await self._rows(holder)
        moved: list[str] = []
        for row in rows:
            if row["key_label"] is not None:
                continue
            key = self._decrypt(holder, bytes(row["key_pem"]))
            label = _label(holder, bytes(row["fingerprint"]))
            try:
                self._token.import_key(label, key)
            except TokenKeyExists:  # a move interrupted after the import: finish it
                if self._token.signer(label).public_key() != key.public_key():
                    raise
            # Only the row still holding this very key is changed.
            await self._pool.execute(
                "UPDATE seal_key SET key_pem = NULL, key_label = $3"
                " WHERE holder = $1 AND fingerprint = $2 AND key_pem IS NOT NULL",
                holder,
                row["fingerprint"],
                label,
            )
            moved.append(label)
        self._cache.pop(holder, None)
        return moved

    async def _rows(self, holder: str) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._pool.fetch(_KEYS, holder)
        if rows:
            return rows
        if holder == STATUS_LIST_HOLDER:
            raise SealNotEnrolled(
                "The exchange has no status-list key yet; start a node on this database "
                "(it creates one) and try again."
            )
        raise SealNotEnrolled(
            f"The exchange holds no seal for department {holder!r}: it was registered "
            "before the seal service existed. Enrol one with `tongban seal enrol "
            f"{holder}`.",
            metadata={"department": holder},
        )

    def _decrypt(self, holder: str, pem: bytes) -> PrivateKey:
        try:
            key = serialization.load_pem_private_key(pem, self._passphrase)
        except ValueError as e:
            raise KeyPassphraseWrong(
                f"The seal key of {holder!r} in the database does not open with this node's "
                "key passphrase; every node of one exchange needs the same "
                "TONGBAN_KEY_PASSPHRASE."
            ) from e
        return key  # type: ignore[return-value]  # P-256 seal keys, as enrolled

    async def get(self, holder: str) -> Seal:
        """Return the seal ``holder`` signs with now; raises SealNotEnrolled if the exchange
        holds none (the message says which command enrols it), TokenUnavailable if its key
        is in a token this node has not been given."""
        now = self._clock.now()
        cached = self._cache.get(holder)
        if (
            cached is not None
            and time.monotonic() - cached[0] < CACHE_SECONDS
            and (cached[2] is None or now < cached[2])
        ):
            return cached[1]
        rows = await self._rows(holder)
        due = [row for row in rows if row["active_from"] <= now]
        row = due[0] if due else rows[-1]  # before any came due: the holder's first key
        upcoming = [r["active_from"] for r in rows if r["active_from"] > now]
        chain = tuple(load_pem_certificates(bytes(row["chain_pem"])))
        signer: Signer
        if row["key_label"] is None:
            signer = LocalSigner(self._decrypt(holder, bytes(row["key_pem"])))
        elif self._token is None:
            raise TokenUnavailable(
                f"The seal key of {holder!r} is in the exchange's PKCS#11 token (label "
                f"{row['key_label']!r}), and this node has no token configured: set "
                "TONGBAN_PKCS11_MODULE, TONGBAN_PKCS11_TOKEN and TONGBAN_PKCS11_PIN_FILE."
            )
        else:
            signer = self._token.signer(row["key_label"])
            if signer.public_key() != chain[0].public_key():
                raise TokenUnavailable(
                    f"The token's key {row['key_label']!r} is not the key of {holder!r}'s "
                    "seal certificate; re-enrol the seal (`tongban seal enrol`)."
                )
        seal = Seal(holder, signer, chain)
        self._cache[holder] = (time.monotonic(), seal, min(upcoming) if upcoming else None)
        return seal

    async def trust(
        self, now: datetime
    ) -> tuple[
        dict[str, tuple[x509.Certificate, ...]], list[RevokedSeal], tuple[x509.Certificate, ...]
    ]:
        """What the trust list says of the keys in custody, in one read:

        - the seal certificates verifiers should trust, by holder, newest first: every
          unrevoked key's (active, next, and retired ones not yet expired), at most 16;
        - every revoked department seal;
        - the issuing CA certificates between those seal certificates and the root (each
          once), so a verifier holding only the root and the list can build their paths.

        Certificates are parsed once per key and remembered (verification asks for this
        on every call)."""
        rows = await self._pool.fetch(
            "SELECT holder, fingerprint, chain_pem, revoked_at, revocation_reason"
            " FROM seal_key ORDER BY holder, active_from DESC, created_at DESC"
        )
        trusted: dict[str, list[x509.Certificate]] = {}
        revoked: list[RevokedSeal] = []
        issuers: dict[x509.Certificate, None] = {}
        for row in rows:
            holder, fingerprint = row["holder"], bytes(row["fingerprint"])
            if row["revoked_at"] is not None:
                if holder != STATUS_LIST_HOLDER:
                    revoked.append(
                        RevokedSeal(
                            holder, fingerprint, row["revoked_at"], row["revocation_reason"]
                        )
                    )
                continue
            chain = self._chains.get(fingerprint)
            if chain is None:
                chain = self._chains[fingerprint] = tuple(
                    load_pem_certificates(bytes(row["chain_pem"]))
                )
            listed = trusted.setdefault(holder, [])
            if chain[0].not_valid_after_utc > now and len(listed) < _MAX_TRUSTED_PER_HOLDER:
                listed.append(chain[0])
                issuers.update(dict.fromkeys(c for c in chain[1:] if not _self_signed(c)))
        trusted_certs = {h: tuple(certs) for h, certs in trusted.items() if certs}
        return trusted_certs, revoked, tuple(issuers)

    async def keys(self, holder: str | None = None) -> list[SealKey]:
        """Every key held (or ``holder``'s), with its state as of now."""
        now = self._clock.now()
        rows = await self._pool.fetch(
            "SELECT holder, fingerprint, key_label, chain_pem, active_from, revoked_at"
            " FROM seal_key WHERE $1::text IS NULL OR holder = $1"
            " ORDER BY holder, active_from DESC, created_at DESC",
            holder,
        )
        out: list[SealKey] = []
        signing: set[str] = set()
        for row in rows:
            who = row["holder"]
            if row["revoked_at"] is not None:
                state = "revoked"
            elif row["active_from"] > now:
                state = "next"
            elif who in signing:
                state = "retired"
            else:
                state = "active"
                signing.add(who)
            leaf = load_pem_certificates(bytes(row["chain_pem"]))[0]
            out.append(
                SealKey(
                    who,
                    bytes(row["fingerprint"]),
                    row["key_label"],
                    row["active_from"],
                    state,
                    leaf.not_valid_after_utc,
                )
            )
        return out


def _label(holder: str, fingerprint: bytes) -> str:
    """A seal key's label in the token: its holder and its certificate, so a re-enrolled
    seal never takes the label of the key it replaces."""
    return f"seal:{holder}:{fingerprint[:8].hex()}"
