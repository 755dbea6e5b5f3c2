"""Putting keys into custody: a department's seal at enrolment (or later, for departments
registered before the seal service), and the exchange's status-list key at node start."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg
from cryptography.hazmat.primitives import serialization

from tongban.exchange.datadir import ensure_sm2_root, key_passphrase, load_ca
from tongban.exchange.departments import DepartmentStore
from tongban.exchange.errors import DepartmentNotFound
from tongban.exchange.licensing.custody import (
    STATUS_LIST_HOLDER,
    SealVault,
    issue_status_list_certificate,
)
from tongban.exchange.licensing.sm2_seals import Sm2Seals
from tongban.exchange.settings import Settings
from tongban.signing import (
    PrivateKey,
    certificate_fingerprint,
    generate_private_key,
    issue_seal_certificate,
    load_pem_certificates,
)
from tongban.signing.clock import Clock
from tongban.signing.pkcs11 import Token
from tongban.signing.sm2 import Sm2PrivateKey
from tongban.signing.sm2_certs import issue_sm2_seal_certificate

__all__ = [
    "custody_seal_from_pem",
    "enrol_seal",
    "enrol_sm2_seal",
    "ensure_status_key",
    "rotate_seal",
    "sm2_seals_for",
    "vault_for",
]


async def custody_seal_from_pem(
    vault: SealVault, code: str, key_pem: bytes, cert_pem: bytes, now: datetime
) -> None:
    """Take department ``code``'s seal (unencrypted PKCS#8 PEM and its certificate, as a
    freshly issued bundle holds them) into custody."""
    key = serialization.load_pem_private_key(key_pem, None)
    chain = tuple(load_pem_certificates(cert_pem))
    await vault.enrol(code, key, chain, now)  # type: ignore[arg-type]  # P-256 seal keys


async def enrol_seal(
    vault: SealVault,
    pool: asyncpg.Pool,
    settings: Settings,
    code: str,
    now: datetime,
    *,
    active_from: datetime | None = None,
) -> bytes:
    """Issue department ``code`` a new seal key and certificate from the exchange CA, take
    it into custody, signing from ``active_from`` (default: now), and register its
    fingerprint; return the fingerprint. For departments registered before the seal
    service (``SEAL_NOT_ENROLLED``) and for seal rotation (``rotate_seal``).

    Raises DepartmentNotFound, or a data dir / key error."""
    department = await DepartmentStore(pool).find(code)
    if department is None:
        raise DepartmentNotFound(f"No department {code!r} is registered.")
    ca = load_ca(settings, now)
    key: PrivateKey = generate_private_key("P-256")
    cert = issue_seal_certificate(
        ca_cert=ca.cert,
        ca_key=ca.key,
        code=code,
        name=department.name,
        public_key=key.public_key(),
        now=now,
    )
    await vault.enrol(code, key, (cert, *ca.intermediates), now, active_from=active_from)
    fingerprint = certificate_fingerprint(cert)
    await pool.execute(
        "UPDATE department SET seal_fingerprint = $2 WHERE code = $1", code, fingerprint
    )
    return fingerprint


async def rotate_seal(
    vault: SealVault,
    pool: asyncpg.Pool,
    settings: Settings,
    code: str,
    now: datetime,
    overlap: timedelta,
) -> tuple[bytes, datetime]:
    """Rotate department ``code``'s seal without downtime: a new key and certificate that
    the trust list names at once and that signs from ``now + overlap``, so verifiers that
    refresh within the overlap know it before the first licence it seals. The old key
    signs until then and is retired after, not deleted: its certificate stays trusted until
    it expires. Return the new certificate's fingerprint and when it takes over.

    One INSERT makes the rotation; a process killed before it leaves the old seal alone
    (with a token, an unused key there), after it the rotation is done.

    Raises ValueError for a negative overlap, DepartmentNotFound, SealNotEnrolled if the
    department has no seal to rotate (enrol one instead)."""
    if overlap < timedelta(0):
        raise ValueError("The overlap cannot be negative.")
    if await DepartmentStore(pool).find(code) is None:
        raise DepartmentNotFound(f"No department {code!r} is registered.")
    await vault.get(code)  # SealNotEnrolled: nothing to rotate
    takes_over = now + overlap
    fingerprint = await enrol_seal(vault, pool, settings, code, now, active_from=takes_over)
    return fingerprint, takes_over


async def ensure_status_key(vault: SealVault, settings: Settings, now: datetime) -> None:
    """Create the exchange's status-list key and certificate if the database has none
    (the first node to start makes it; the others find it)."""
    if await vault.keys(STATUS_LIST_HOLDER):
        return
    ca = load_ca(settings, now)
    key = generate_private_key("P-256")
    cert = issue_status_list_certificate(
        ca_cert=ca.cert,
        ca_key=ca.key,
        node_name=settings.node_name,
        public_key=key.public_key(),
        now=now,
    )
    await vault.enrol(STATUS_LIST_HOLDER, key, (cert, *ca.intermediates), now, replace=False)


def vault_for(
    pool: asyncpg.Pool,
    settings: Settings,
    token: Token | None = None,
    clock: Clock | None = None,
) -> SealVault:
    """The seal vault over ``pool``, opened with the node key passphrase and, when the
    exchange has one, its PKCS#11 ``token`` (where every key enrolled from now on goes);
    ``clock`` decides which of a holder's keys signs (the node's clock)."""
    return SealVault(pool, key_passphrase(settings), token, clock)


def sm2_seals_for(pool: asyncpg.Pool, settings: Settings, clock: Clock | None = None) -> Sm2Seals:
    """The departments' SM2 seals over ``pool``, opened with the node key passphrase."""
    return Sm2Seals(pool, key_passphrase(settings), clock)


async def enrol_sm2_seal(
    seals: Sm2Seals, pool: asyncpg.Pool, settings: Settings, code: str, now: datetime
) -> bytes:
    """Give department ``code`` a new SM2 seal: a key made here, certified by the
    exchange's SM2 root (made now if the data dir has none), stored encrypted with the
    node key passphrase; it signs the department's licences beside its ES256 seal from
    the nodes' next read (within 30 seconds). Return its certificate's fingerprint.

    Raises DepartmentNotFound, or a data dir / key error."""
    department = await DepartmentStore(pool).find(code)
    if department is None:
        raise DepartmentNotFound(f"No department {code!r} is registered.")
    root, root_key = ensure_sm2_root(settings, now)
    key = Sm2PrivateKey.generate()
    cert = issue_sm2_seal_certificate(
        ca_cert=root, ca_key=root_key, code=code, name=department.name,
        public_key=key.public, now=now,
    )  # fmt: skip
    return await seals.enrol(code, key, cert, now)
