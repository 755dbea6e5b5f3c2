"""The peer registry: other Tongban exchanges this one links to (docs/federation.md).

The rules (name format, what a peer's root CA must be) are plain functions; ``PeerStore``
is the asyncpg layer over the ``peer`` table. Adding, suspending and removing peers is the
operator's (the CLI, with the schema owner's login); a node only reads the table.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from tongban.exchange.audit.note import NoteInvalid, parse_verifier_key
from tongban.exchange.departments import Level
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.federation.errors import (
    PeerCaInvalid,
    PeerExists,
    PeerIsSelf,
    PeerUnknown,
)
from tongban.exchange.settings import parse_listen_address
from tongban.signing.certs import certificate_fingerprint, certificate_pem
from tongban.signing.errors import CertificateInvalid

__all__ = [
    "Peer",
    "PeerStatus",
    "PeerStore",
    "PeerSync",
    "check_peer_ca",
    "peer_ca",
    "validate_endpoint",
    "validate_peer_name",
]

_NAME = re.compile(r"[a-z][a-z0-9-]{1,62}")


class PeerStatus(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


@dataclass(frozen=True)
class PeerSync:
    """The last catalogue pull from a peer."""

    attempted_at: datetime
    synced_at: datetime | None
    error_reason: str | None
    error_message: str | None

    def to_dict(self) -> dict[str, object]:
        return {
            "attempted_at": self.attempted_at.isoformat(),
            "synced_at": self.synced_at.isoformat() if self.synced_at else None,
            "error_reason": self.error_reason,
            "error_message": self.error_message,
        }


@dataclass(frozen=True)
class Peer:
    name: str
    level: Level
    is_parent: bool
    endpoint: str
    ca_pem: bytes
    ca_fingerprint: bytes
    status: PeerStatus
    created_at: datetime
    updated_at: datetime
    sync: PeerSync | None = None
    log_key: str | None = None
    """The verifier key of the peer's access log, set out of band (``peer log-key``)."""

    @property
    def active(self) -> bool:
        return self.status is PeerStatus.ACTIVE

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "level": self.level.value,
            "parent": self.is_parent,
            "endpoint": self.endpoint,
            "ca_fingerprint": self.ca_fingerprint.hex(),
            "status": self.status.value,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "sync": self.sync.to_dict() if self.sync else None,
            "log_key": self.log_key,
        }


def validate_peer_name(name: str) -> str:
    """Return ``name`` if it is a valid peer name; raise InvalidArgument."""
    if not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"Peer name {name[:80]!r} is not valid: use 2-63 lowercase letters, digits and "
            "'-', starting with a letter (for example province or city-b)."
        )
    return name


def validate_endpoint(endpoint: str) -> str:
    """Return ``HOST:PORT`` normalised; raise InvalidArgument."""
    try:
        address = parse_listen_address(endpoint)
    except ValueError as e:
        raise InvalidArgument(f"Peer endpoint {endpoint[:80]!r} is not HOST:PORT ({e}).") from e
    if address.port == 0:
        raise InvalidArgument("A peer endpoint needs its port (HOST:PORT, port 1-65535).")
    return str(address)


def check_peer_ca(pem: bytes, *, own_root: x509.Certificate, now: datetime) -> x509.Certificate:
    """Return the peer's root CA certificate from ``pem``.

    Raises PeerCaInvalid unless ``pem`` holds exactly one self-signed CA certificate valid
    at ``now``; PeerIsSelf if it is this exchange's own root.
    """
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise PeerCaInvalid(
            "The peer's CA file is not a PEM certificate; ask the peer's operator for the "
            "output of `tongban ca export`."
        ) from e
    if len(certs) != 1:
        raise PeerCaInvalid(
            f"The peer's CA file holds {len(certs)} certificates; give its root CA only."
        )
    cert = certs[0]
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError) as e:
        raise PeerCaInvalid("The peer's certificate is not a CA certificate.") from e
    if not constraints.ca or cert.issuer != cert.subject:
        raise PeerCaInvalid(
            "The peer's certificate is not a self-signed root CA; give its exchange's root."
        )
    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, ValueError, TypeError) as e:
        raise PeerCaInvalid("The peer's root CA certificate has a bad self-signature.") from e
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise PeerCaInvalid(
            f"The peer's root CA is valid from {cert.not_valid_before_utc.isoformat()} to "
            f"{cert.not_valid_after_utc.isoformat()}, not now; ask for its current root."
        )
    if certificate_fingerprint(cert) == certificate_fingerprint(own_root):
        raise PeerIsSelf("That CA is this exchange's own root; a peer is another exchange.")
    return cert


_COLUMNS = (
    "p.name, p.level, p.is_parent, p.endpoint, p.ca_pem, p.ca_fingerprint, p.status, "
    "p.created_at, p.updated_at, s.attempted_at, s.synced_at, s.error_reason, s.error_message, "
    "p.log_key"
)
_FROM = "peer p LEFT JOIN peer_sync s ON s.peer = p.name"


def _row(row: asyncpg.Record) -> Peer:
    sync = None
    if row["attempted_at"] is not None:
        sync = PeerSync(
            row["attempted_at"], row["synced_at"], row["error_reason"], row["error_message"]
        )
    return Peer(
        name=row["name"],
        level=Level(row["level"]),
        is_parent=row["is_parent"],
        endpoint=row["endpoint"],
        ca_pem=row["ca_pem"].encode("ascii"),
        ca_fingerprint=bytes(row["ca_fingerprint"]),
        status=PeerStatus(row["status"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        sync=sync,
        log_key=row["log_key"],
    )


class PeerStore:
    """Reads (and, with the owner's login, writes) the ``peer`` table."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def list(self) -> list[Peer]:
        rows = await self._pool.fetch(f"SELECT {_COLUMNS} FROM {_FROM} ORDER BY p.name")  # noqa: S608 - fixed
        return [_row(row) for row in rows]

    async def find(self, name: str) -> Peer | None:
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM {_FROM} WHERE p.name = $1", name)  # noqa: S608
        return None if row is None else _row(row)

    async def get(self, name: str) -> Peer:
        """Return the peer; raise PeerUnknown."""
        found = await self.find(name)
        if found is None:
            raise PeerUnknown(f"No peer {name[:80]!r} is configured; see `tongban peer list`.")
        return found

    async def add(
        self,
        *,
        name: str,
        ca: x509.Certificate,
        endpoint: str,
        level: Level,
        is_parent: bool,
    ) -> Peer:
        """Add a peer (``ca`` checked by ``check_peer_ca``); raise PeerExists or
        InvalidArgument."""
        validate_peer_name(name)
        endpoint = validate_endpoint(endpoint)
        try:
            await self._pool.execute(
                """
                INSERT INTO peer (name, level, is_parent, endpoint, ca_pem, ca_fingerprint)
                VALUES ($1, $2, $3, $4, $5, $6)
                """,
                name,
                level.value,
                is_parent,
                endpoint,
                certificate_pem(ca).decode("ascii"),
                certificate_fingerprint(ca),
            )
        except asyncpg.UniqueViolationError as e:
            if e.constraint_name == "peer_pkey":
                raise PeerExists(f"A peer named {name!r} is already configured.") from e
            if e.constraint_name == "peer_one_parent":
                raise PeerExists(
                    "Another peer is already this exchange's parent; an exchange has one."
                ) from e
            raise PeerExists("A peer with that root CA is already configured.") from e
        return await self.get(name)

    async def set_status(self, name: str, status: PeerStatus) -> Peer:
        """Suspend or re-activate a peer; every node applies it at once. Raises PeerUnknown."""
        done = await self._pool.fetchval(
            "UPDATE peer SET status = $2, updated_at = now() WHERE name = $1 RETURNING name",
            name,
            status.value,
        )
        if done is None:
            raise PeerUnknown(f"No peer {name[:80]!r} is configured; see `tongban peer list`.")
        return await self.get(name)

    async def set_log_key(self, name: str, log_key: str) -> Peer:
        """Pin the verifier key of peer ``name``'s access log (``log_key`` as its
        ``tongban audit key`` prints it). Raises InvalidArgument for a key that is not a
        verifier key, PeerUnknown."""
        try:
            parse_verifier_key(log_key)
        except NoteInvalid as e:
            raise InvalidArgument(
                f"{log_key[:80]!r} is not a log verifier key ({e.message}); give what the "
                "peer's operator's `tongban audit key` prints.",
                metadata={"field": "log_key"},
            ) from e
        done = await self._pool.fetchval(
            "UPDATE peer SET log_key = $2, updated_at = now() WHERE name = $1 RETURNING name",
            name,
            log_key,
        )
        if done is None:
            raise PeerUnknown(f"No peer {name[:80]!r} is configured; see `tongban peer list`.")
        return await self.get(name)

    async def remove(self, name: str) -> None:
        """Forget a peer and the catalogue entries it offered; raise PeerUnknown."""
        done = await self._pool.fetchval("DELETE FROM peer WHERE name = $1 RETURNING name", name)
        if done is None:
            raise PeerUnknown(f"No peer {name[:80]!r} is configured; see `tongban peer list`.")


def peer_ca(peer: Peer) -> x509.Certificate:
    """The peer's root CA certificate (stored as checked at ``add``; parsed once)."""
    try:
        return _root(peer.ca_pem)
    except ValueError as e:  # pragma: no cover - the table holds what add checked
        raise CertificateInvalid(f"The stored root CA of peer {peer.name} is unreadable.") from e


@functools.lru_cache(maxsize=64)
def _root(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)
