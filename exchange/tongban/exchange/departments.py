"""The department registry (部门): who may call the exchange, known by certificate.

The rules (code format, level hierarchy) are plain functions; ``DepartmentStore`` is the
thin asyncpg layer over the ``department`` table.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from tongban.exchange.errors import (
    DepartmentExists,
    DepartmentNotFound,
    InvalidArgument,
)

__all__ = [
    "CallLimits",
    "Department",
    "DepartmentStore",
    "Level",
    "Status",
    "validate_code",
    "validate_name",
    "validate_parent",
]

CODE_PATTERN = re.compile(r"^[a-z][a-z0-9-]{1,62}$")
#: ``auditor``: reads the access log (AuditService). ``covert``: may declare its own cases
#: covert, hiding their accesses from the subject view for a while (docs/audit-log.md).
ROLES = frozenset({"auditor", "covert"})


class Level(enum.StrEnum):
    """Administrative level, highest first."""

    PROVINCE = "province"
    CITY = "city"
    COUNTY = "county"
    TOWNSHIP = "township"

    @property
    def rank(self) -> int:
        return list(Level).index(self)


class Status(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


@dataclass(frozen=True)
class CallLimits:
    """A department's own limits on its calls; None takes the node's default."""

    concurrent: int | None = None
    """Calls in progress at once (unary and client-streaming; not subscriptions)."""
    per_second: float | None = None
    """Calls started per second, sustained (a burst of one second's worth is allowed)."""
    subscriptions: int | None = None
    """Open subscriptions (Subscribe and Export streams)."""

    def __post_init__(self) -> None:
        if self.concurrent is not None and not 1 <= self.concurrent <= 100_000:
            raise InvalidArgument(
                "The concurrent-call limit must be between 1 and 100,000.",
                metadata={"field": "concurrent"},
            )
        if self.per_second is not None and not 0 < self.per_second <= 1_000_000:
            raise InvalidArgument(
                "The calls-per-second limit must be above 0 and at most 1,000,000.",
                metadata={"field": "per_second"},
            )
        if self.subscriptions is not None and not 0 <= self.subscriptions <= 100_000:
            raise InvalidArgument(
                "The subscription limit must be between 0 and 100,000.",
                metadata={"field": "subscriptions"},
            )

    def to_dict(self) -> dict[str, object]:
        return {
            "concurrent": self.concurrent,
            "per_second": self.per_second,
            "subscriptions": self.subscriptions,
        }


@dataclass(frozen=True)
class Department:
    code: str
    name: str
    level: Level
    parent: str | None
    roles: frozenset[str]
    status: Status
    tls_fingerprint: bytes
    seal_fingerprint: bytes | None
    created_at: datetime
    updated_at: datetime
    limits: CallLimits = CallLimits()
    max_stored_bytes: int | None = None
    """Its own storage quota (migration 0035); None: the node's default."""

    def to_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "name": self.name,
            "level": self.level.value,
            "parent": self.parent,
            "roles": sorted(self.roles),
            "status": self.status.value,
            "tls_fingerprint": self.tls_fingerprint.hex(),
            "seal_fingerprint": self.seal_fingerprint.hex() if self.seal_fingerprint else None,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "limits": self.limits.to_dict(),
            "max_stored_bytes": self.max_stored_bytes,
        }


def validate_code(code: str) -> str:
    """Return ``code`` if it is a valid department code; raise InvalidArgument."""
    if not CODE_PATTERN.match(code):
        raise InvalidArgument(
            f"Department code {code[:80]!r} is not valid: use 2-63 lowercase letters, digits "
            "and '-', starting with a letter (for example samr-county)."
        )
    return code


def validate_name(name: str) -> str:
    """Return the NFC-normalised name; raise InvalidArgument if empty, too long or unprintable."""
    normalised = unicodedata.normalize("NFC", name.strip())
    if not 1 <= len(normalised) <= 200:
        raise InvalidArgument("A department name must have 1 to 200 characters.")
    if any(unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Co", "Cn"} for ch in normalised):
        raise InvalidArgument(
            "A department name may not contain control, format or unassigned characters."
        )
    return normalised


def validate_parent(level: Level, parent: Department | None) -> None:
    """Raise InvalidArgument unless ``parent`` is above ``level`` (or absent)."""
    if parent is None:
        return
    if parent.level.rank >= level.rank:
        raise InvalidArgument(
            f"Parent {parent.code} is at {parent.level.value} level, which is not above "
            f"{level.value}; choose a parent at a higher level."
        )


def validate_roles(roles: Sequence[str]) -> frozenset[str]:
    unknown = set(roles) - ROLES
    if unknown:
        raise InvalidArgument(
            f"Unknown role {sorted(unknown)[0]!r}; known roles: {', '.join(sorted(ROLES))}."
        )
    return frozenset(roles)


_COLUMNS = (
    "code, name, level, parent, roles, status, tls_fingerprint, seal_fingerprint, "
    "created_at, updated_at, max_concurrent_calls, calls_per_second, max_subscriptions, "
    "max_stored_bytes"
)


def _row(row: asyncpg.Record) -> Department:
    return Department(
        code=row["code"],
        name=row["name"],
        level=Level(row["level"]),
        parent=row["parent"],
        roles=frozenset(row["roles"]),
        status=Status(row["status"]),
        tls_fingerprint=bytes(row["tls_fingerprint"]),
        seal_fingerprint=bytes(row["seal_fingerprint"]) if row["seal_fingerprint"] else None,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        limits=CallLimits(
            row["max_concurrent_calls"], row["calls_per_second"], row["max_subscriptions"]
        ),
        max_stored_bytes=row["max_stored_bytes"],
    )


class DepartmentStore:
    """Reads and writes the ``department`` table through the given pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, code: str) -> Department:
        """Return the department; raise DepartmentNotFound."""
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM department WHERE code = $1", code)  # noqa: S608 - fixed column list
        if row is None:
            raise DepartmentNotFound(f"No department {code!r} is registered.")
        return _row(row)

    async def find(self, code: str) -> Department | None:
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM department WHERE code = $1", code)  # noqa: S608
        return None if row is None else _row(row)

    async def list(self) -> list[Department]:
        rows = await self._pool.fetch(f"SELECT {_COLUMNS} FROM department ORDER BY code")  # noqa: S608
        return [_row(row) for row in rows]

    async def add(
        self,
        *,
        code: str,
        name: str,
        level: Level,
        parent: str | None,
        roles: Sequence[str],
        tls_fingerprint: bytes,
        seal_fingerprint: bytes | None,
    ) -> Department:
        """Register a department; raise DepartmentExists, DepartmentNotFound (parent) or
        InvalidArgument."""
        validate_code(code)
        name = validate_name(name)
        role_set = validate_roles(roles)
        async with self._pool.acquire() as conn, conn.transaction():
            parent_dept = None
            if parent is not None:
                row = await conn.fetchrow(
                    f"SELECT {_COLUMNS} FROM department WHERE code = $1 FOR SHARE",  # noqa: S608
                    parent,
                )
                if row is None:
                    raise DepartmentNotFound(
                        f"Parent department {parent!r} is not registered; add it first."
                    )
                parent_dept = _row(row)
            validate_parent(level, parent_dept)
            try:
                row = await conn.fetchrow(
                    f"""
                    INSERT INTO department
                        (code, name, level, parent, roles, tls_fingerprint, seal_fingerprint)
                    VALUES ($1, $2, $3, $4, $5, $6, $7)
                    RETURNING {_COLUMNS}
                    """,  # noqa: S608
                    code,
                    name,
                    level.value,
                    parent,
                    sorted(role_set),
                    tls_fingerprint,
                    seal_fingerprint,
                )
            except asyncpg.UniqueViolationError as e:
                if e.constraint_name == "department_pkey":
                    raise DepartmentExists(f"Department {code!r} is already registered.") from e
                raise DepartmentExists(
                    "That certificate is already registered to another department."
                ) from e
        assert row is not None
        return _row(row)

    async def set_limits(self, code: str, limits: CallLimits) -> Department:
        """Set a department's own call limits (None: the node's default); every node
        applies them at once (the registry notifies its change). Raises
        DepartmentNotFound."""
        row = await self._pool.fetchrow(
            f"""
            UPDATE department SET max_concurrent_calls = $2, calls_per_second = $3,
                max_subscriptions = $4, updated_at = now()
            WHERE code = $1 RETURNING {_COLUMNS}
            """,  # noqa: S608
            code,
            limits.concurrent,
            limits.per_second,
            limits.subscriptions,
        )
        if row is None:
            raise DepartmentNotFound(f"No department {code!r} is registered.")
        return _row(row)

    async def set_storage_quota(self, code: str, quota: int | None) -> Department:
        """Set what a department's datasets may hold, in bytes (None: the node's
        default). Writes check it from then on, on every node; a lower quota than the
        datasets hold refuses their next writes, and removes nothing. Raises
        DepartmentNotFound."""
        if quota is not None and not 0 <= quota < 2**63:
            raise InvalidArgument(
                "The storage quota must be between 0 and 8 EiB.", metadata={"field": "stored"}
            )
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE department SET max_stored_bytes = $2, updated_at = now()"  # noqa: S608
                f" WHERE code = $1 RETURNING {_COLUMNS}",
                code,
                quota,
            )
            if row is None:
                raise DepartmentNotFound(f"No department {code!r} is registered.")
            # The headroom its datasets were granted under the old quota goes, so that
            # their next writes are checked against the new one.
            await conn.execute(
                "UPDATE dataset_stream SET headroom_until = 0"
                " WHERE dataset IN (SELECT code FROM dataset WHERE owner = $1)",
                code,
            )
        return _row(row)

    async def set_roles(self, code: str, roles: Sequence[str]) -> Department:
        """Set a department's roles (``auditor``, ``covert``); every node applies them at
        once (the registry notifies its change). Raises InvalidArgument for an unknown
        role, DepartmentNotFound."""
        role_set = validate_roles(roles)
        row = await self._pool.fetchrow(
            f"""
            UPDATE department SET roles = $2, updated_at = now()
            WHERE code = $1 RETURNING {_COLUMNS}
            """,  # noqa: S608
            code,
            sorted(role_set),
        )
        if row is None:
            raise DepartmentNotFound(f"No department {code!r} is registered.")
        return _row(row)

    async def set_status(self, code: str, status: Status) -> Department:
        """Set a department's status; raise DepartmentNotFound."""
        row = await self._pool.fetchrow(
            f"""
            UPDATE department SET status = $2, updated_at = now()
            WHERE code = $1 RETURNING {_COLUMNS}
            """,  # noqa: S608
            code,
            status.value,
        )
        if row is None:
            raise DepartmentNotFound(f"No department {code!r} is registered.")
        return _row(row)
