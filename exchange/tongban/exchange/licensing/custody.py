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
from tongban.signing.pkcs11 import Token

__all__ = [
    "CACHE_SECONDS",
    "STATUS_LIST_HOLDER",
    "STATUS_LIST_URI_PREFIX",
    "Seal",
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

_CLOCK_SKEW = timedelta(minutes=5)
_INSERT = (
    "INSERT INTO seal_key (holder, key_pem, key_label, chain_pem, fingerprint, created_at)"
    " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (holder) "
)
_UPSERT = _INSERT + (
    "DO UPDATE SET key_pem = EXCLUDED.key_pem, key_label = EXCLUDED.key_label,"
    " chain_pem = EXCLUDED.chain_pem, fingerprint = EXCLUDED.fingerprint,"
    " created_at = EXCLUDED.created_at"
)
_INSERT_NEW = _INSERT + "DO NOTHING"


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


class SealVault:
    """Keys in custody, in table ``seal_key`` (and in ``token`` when the exchange has one)."""

    def __init__(self, pool: asyncpg.Pool, passphrase: bytes, token: Token | None = None) -> None:
        if not passphrase:
            raise ValueError("The seal vault needs the node key passphrase.")
        self._pool = pool
        self._passphrase = passphrase
        self._token = token
        self._cache: dict[str, tuple[float, Seal]] = {}

    async def enrol(
        self,
        holder: str,
        key: PrivateKey,
        chain: tuple[x509.Certificate, ...],
        now: datetime,
        *,
        replace: bool = True,
    ) -> bool:
        """Store ``key`` and ``chain`` for ``holder`` (a department code, or
        ``STATUS_LIST_HOLDER``); return whether they were written. With a token the key is
        imported into it (sensitive, not extractable) and the row names its label. With
        ``replace`` False an existing key is kept (several nodes creating the status-list
        key at once agree on the first; a loser's copy in the token is left unused)."""
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
        status = await self._pool.execute(
            _UPSERT if replace else _INSERT_NEW, holder, encrypted, label, pem, fingerprint, now
        )
        self._cache.pop(holder, None)
        return bool(status.endswith(" 1"))

    async def move_to_token(self, holder: str) -> str | None:
        """Move ``holder``'s passphrase-encrypted key into the token and drop it from the
        database; return its label, or None if it was in the token already. Raises
        TokenUnavailable without a token, SealNotEnrolled for an unknown holder."""
        if self._token is None:
            raise TokenUnavailable(
                "No PKCS#11 token is configured: set TONGBAN_PKCS11_MODULE, "
                "TONGBAN_PKCS11_TOKEN and TONGBAN_PKCS11_PIN_FILE (docs/keys.md)."
            )
        row = await self._row(holder)
        if row["key_label"] is not None:
            return None
        key = self._decrypt(holder, bytes(row["key_pem"]))
        chain = tuple(load_pem_certificates(bytes(row["chain_pem"])))
        label = _label(holder, certificate_fingerprint(chain[0]))
        try:
            self._token.import_key(label, key)
        except TokenKeyExists:  # a move interrupted after the import: finish it
            if self._token.signer(label).public_key() != key.public_key():
                raise
        # Only the row still holding this very key is changed (a re-enrolment since wins).
        await self._pool.execute(
            "UPDATE seal_key SET key_pem = NULL, key_label = $2 WHERE holder = $1 AND key_pem = $3",
            holder,
            label,
            row["key_pem"],
        )
        self._cache.pop(holder, None)
        return label

    async def _row(self, holder: str) -> asyncpg.Record:
        row = await self._pool.fetchrow(
            "SELECT key_pem, key_label, chain_pem FROM seal_key WHERE holder = $1", holder
        )
        if row is not None:
            return row
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
        """Return the seal of ``holder``; raises SealNotEnrolled if the exchange holds
        none (the message says which command enrols it), TokenUnavailable if its key is in
        a token this node has not been given."""
        cached = self._cache.get(holder)
        if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        row = await self._row(holder)
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
        self._cache[holder] = (time.monotonic(), seal)
        return seal

    async def chains(self) -> dict[str, tuple[x509.Certificate, ...]]:
        """Return the certificate chain of every key in custody, by holder."""
        rows = await self._pool.fetch("SELECT holder, chain_pem FROM seal_key ORDER BY holder")
        return {
            row["holder"]: tuple(load_pem_certificates(bytes(row["chain_pem"]))) for row in rows
        }

    async def holders(self) -> list[tuple[str, str | None]]:
        """Every holder with the label of its key in the token (None: in the database)."""
        rows = await self._pool.fetch("SELECT holder, key_label FROM seal_key ORDER BY holder")
        return [(row["holder"], row["key_label"]) for row in rows]


def _label(holder: str, fingerprint: bytes) -> str:
    """A seal key's label in the token: its holder and its certificate, so a re-enrolled
    seal never takes the label of the key it replaces."""
    return f"seal:{holder}:{fingerprint[:8].hex()}"
