"""Departments' SM2 seals (docs/keys.md, "A department's SM2 seal"): a department that
chooses one has each licence's SD-JWT signed with SM2/SM3 beside its ES256 seal.

The operator enrols and revokes them (``tongban seal sm2``, the schema owner's login); the
node only reads them (table ``sm2_seal_key``, migration 0028). The newest unrevoked,
unexpired key of a department signs. The trust list names every unrevoked, unexpired SM2
seal certificate, so a verifier trusts one only while the list does."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from cryptography import x509

from tongban.exchange.licensing.custody import CACHE_SECONDS
from tongban.exchange.licensing.errors import SealNotEnrolled
from tongban.licence import SM2_LICENCE_TYP
from tongban.signing import Clock, SystemClock
from tongban.signing.certs import certificate_fingerprint, certificate_pem, load_pem_certificates
from tongban.signing.sm2 import Sm2PrivateKey
from tongban.signing.sm2_certs import sm2_public_key
from tongban.signing.sm2_jws import sign_sm2_detached

__all__ = ["Sm2Seal", "Sm2SealKey", "Sm2Seals"]

_MAX_LISTED = 16


@dataclass(frozen=True)
class Sm2Seal:
    """A department's SM2 seal key with its certificate."""

    holder: str
    key: Sm2PrivateKey
    chain: tuple[x509.Certificate, ...]

    def sign_sd_jwt(self, sd_jwt: str) -> str:
        """The SM2 signature of ``sd_jwt``'s issuer-signed JWT (what comes before the first
        ``~``): a detached JWS-shaped token (``signing/sm2_jws.py``). It stays valid for
        every presentation of the licence, since those keep the issuer-signed JWT."""
        issuer_jwt = sd_jwt.split("~", 1)[0]
        return sign_sm2_detached(
            issuer_jwt.encode("ascii"), self.key, self.chain, headers={"typ": SM2_LICENCE_TYP}
        )


@dataclass(frozen=True)
class Sm2SealKey:
    """One enrolled SM2 seal key, as ``tongban seal sm2 --list`` shows it."""

    holder: str
    fingerprint: bytes
    certificate: x509.Certificate
    created_at: datetime
    revoked_at: datetime | None
    state: str
    """``signing`` (the newest usable), ``retired`` (an older one, still listed),
    ``revoked`` or ``expired``."""


class Sm2Seals:
    """The SM2 seals of an exchange's departments, over table ``sm2_seal_key``."""

    def __init__(self, pool: asyncpg.Pool, passphrase: bytes, clock: Clock | None = None) -> None:
        if not passphrase:
            raise ValueError("The SM2 seals need the node key passphrase.")
        self._pool = pool
        self._passphrase = passphrase
        self._clock = clock or SystemClock()
        # holder -> (read at, monotonic; the seal or None)
        self._cache: dict[str, tuple[float, Sm2Seal | None]] = {}
        self._keys: dict[bytes, Sm2PrivateKey] = {}  # decrypted once per key

    async def current(self, holder: str) -> Sm2Seal | None:
        """The SM2 seal that signs ``holder``'s licences now, or None if it has chosen
        none (or every one is revoked or expired). Read again after 30 seconds, so an
        enrolment or a revocation reaches every node within that."""
        cached = self._cache.get(holder)
        if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        now = self._clock.now()
        row = await self._pool.fetchrow(
            "SELECT fingerprint, key_pem, chain_pem FROM sm2_seal_key"
            " WHERE holder = $1 AND revoked_at IS NULL"
            " ORDER BY created_at DESC LIMIT 1",
            holder,
        )
        seal = None
        if row is not None:
            chain = tuple(load_pem_certificates(bytes(row["chain_pem"])))
            if chain[0].not_valid_before_utc <= now <= chain[0].not_valid_after_utc:
                fingerprint = bytes(row["fingerprint"])
                key = self._keys.get(fingerprint)
                if key is None:
                    key = Sm2PrivateKey.from_encrypted_pem(bytes(row["key_pem"]), self._passphrase)
                    self._keys[fingerprint] = key
                seal = Sm2Seal(holder, key, chain)
        self._cache[holder] = (time.monotonic(), seal)
        return seal

    async def listed(self, now: datetime) -> dict[str, tuple[x509.Certificate, ...]]:
        """The SM2 seal certificates verifiers should trust, by department, newest first:
        every unrevoked one not yet expired (at most 16 per department)."""
        rows = await self._pool.fetch(
            "SELECT holder, chain_pem FROM sm2_seal_key WHERE revoked_at IS NULL"
            " ORDER BY holder, created_at DESC"
        )
        listed: dict[str, list[x509.Certificate]] = {}
        for row in rows:
            cert = load_pem_certificates(bytes(row["chain_pem"]))[0]
            certs = listed.setdefault(row["holder"], [])
            if now <= cert.not_valid_after_utc and len(certs) < _MAX_LISTED:
                certs.append(cert)
        return {h: tuple(c) for h, c in listed.items() if c}

    async def keys(self, holder: str | None = None) -> list[Sm2SealKey]:
        """Every enrolled SM2 seal key (``holder``'s only, if given), newest first, with its
        state now."""
        now = self._clock.now()
        rows = await self._pool.fetch(
            "SELECT holder, fingerprint, chain_pem, created_at, revoked_at FROM sm2_seal_key"
            " WHERE $1::text IS NULL OR holder = $1 ORDER BY holder, created_at DESC",
            holder,
        )
        out, signing = [], set()
        for row in rows:
            cert = load_pem_certificates(bytes(row["chain_pem"]))[0]
            if row["revoked_at"] is not None:
                state = "revoked"
            elif now > cert.not_valid_after_utc:
                state = "expired"
            elif row["holder"] in signing:
                state = "retired"
            else:
                state = "signing"
                signing.add(row["holder"])
            out.append(
                Sm2SealKey(row["holder"], bytes(row["fingerprint"]), cert, row["created_at"],
                           row["revoked_at"], state)
            )  # fmt: skip
        return out

    async def enrol(
        self, holder: str, key: Sm2PrivateKey, certificate: x509.Certificate, now: datetime
    ) -> bytes:
        """Store ``key`` with its ``certificate`` as ``holder``'s newest SM2 seal; return
        the certificate's fingerprint. Needs the schema owner's login. Raises ValueError
        if the key is not the certificate's."""
        if sm2_public_key(certificate) != key.public:
            raise ValueError("The SM2 key does not belong to the certificate.")
        fingerprint = certificate_fingerprint(certificate)
        await self._pool.execute(
            "INSERT INTO sm2_seal_key (fingerprint, holder, key_pem, chain_pem, created_at)"
            " VALUES ($1, $2, $3, $4, $5)",
            fingerprint, holder, key.encrypted_pem(self._passphrase),
            certificate_pem(certificate), now,
        )  # fmt: skip
        self._cache.pop(holder, None)
        return fingerprint

    async def revoke(self, holder: str, fingerprint: bytes, reason: str, now: datetime) -> None:
        """Revoke ``holder``'s SM2 seal key ``fingerprint``: it signs no more, and the trust
        list stops naming it. Needs the schema owner's login. Raises SealNotEnrolled if
        ``holder`` has no such unrevoked key."""
        done = await self._pool.execute(
            "UPDATE sm2_seal_key SET revoked_at = $3, revocation_reason = $4"
            " WHERE holder = $1 AND fingerprint = $2 AND revoked_at IS NULL",
            holder, fingerprint, now, reason,
        )  # fmt: skip
        if done != "UPDATE 1":
            raise SealNotEnrolled(
                f"{holder} has no unrevoked SM2 seal with certificate sha256 "
                f"{fingerprint.hex()}; `tongban seal sm2 {holder} --list` shows its keys."
            )
        self._cache.pop(holder, None)
