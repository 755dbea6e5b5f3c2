"""Covert cases: a department with the ``covert`` role keeps the accesses of one of its
cases (an investigation) out of the subject view until an end date.

The checks of a declaration are a pure function (``check_declaration``). ``CovertCases``
stores a declaration together with its access-log entry, in one transaction, and lists
declarations for auditors. The ``covert_case`` table is append-only (migration 0012):
declaring a case again adds a row, and the latest row of a case (view
``covert_case_current``) is the one in force. See docs/audit-log.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import asyncpg

from tongban.errors import TongbanError
from tongban.exchange.audit.log import AccessEntry, AccessLog
from tongban.exchange.audit.recorder import AccessRecorder
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.pagetokens import PageTokens

__all__ = [
    "ACTION",
    "COVERT_ROLE",
    "CovertCase",
    "CovertCases",
    "CovertRoleRequired",
    "Declaration",
    "check_declaration",
    "declaration_entry",
]

COVERT_ROLE = "covert"
ACTION = "covert.declare"
MAX_CASE_ID = 64
MAX_BASIS = 500
MAX_PAGE = 1000
_LIST = "audit.covert"  # the page tokens' scope
_REASON_LIMIT = 200  # as the log's other free texts
_COLUMNS = "id, caller, case_id, until, legal_basis, declared_at, declared_by"


class CovertRoleRequired(TongbanError):
    """A department without the covert role tried to declare a covert case."""

    reason = "COVERT_ROLE_REQUIRED"
    status = "PERMISSION_DENIED"


@dataclass(frozen=True)
class Declaration:
    """A checked declaration: the case, the end of its embargo and the law relied on."""

    case_id: str
    until: datetime
    legal_basis: str

    def log_reason(self) -> str:
        """The declaration's log entry ``reason``: the end date and the basis, cut to fit."""
        text = f"until {_utc(self.until)}; basis: {self.legal_basis}"
        return text[:_REASON_LIMIT]


def check_declaration(
    *, case_id: str, until: datetime | None, legal_basis: str, now: datetime, max_days: int
) -> Declaration:
    """The declaration, with surrounding blanks removed; raises InvalidArgument if the case
    id, the end (after ``now``, at most ``max_days`` days later) or the basis is not valid."""
    case_id = case_id.strip()
    if not 1 <= len(case_id) <= MAX_CASE_ID or not case_id.isprintable():
        raise InvalidArgument(
            f"Name the case (办件编号): 1-{MAX_CASE_ID} printable characters.",
            metadata={"field": "case_id"},
        )
    if until is None:
        raise InvalidArgument("Give the end of the embargo.", metadata={"field": "until"})
    if until <= now:
        raise InvalidArgument("The embargo must end in the future.", metadata={"field": "until"})
    # Counted in days from now, so no date is special (29 February included).
    latest = now + timedelta(days=max_days)
    if until > latest:
        raise InvalidArgument(
            f"An embargo may last at most {max_days} days (until {_utc(latest)}); declare "
            "the case again before it ends to extend it.",
            metadata={"field": "until", "max_days": str(max_days)},
        )
    basis = legal_basis.strip()
    if not 1 <= len(basis) <= MAX_BASIS:
        raise InvalidArgument(
            f"A covert case must cite its legal basis (1-{MAX_BASIS} characters).",
            metadata={"field": "legal_basis"},
        )
    return Declaration(case_id, until, basis)


def declaration_entry(
    *,
    department: str,
    officer: str | None,
    case_id: str,
    node: str,
    now: datetime,
    decision: Literal["allowed", "denied"],
    reason: str,
) -> AccessEntry:
    """The log entry of a declaration: ``reason`` is ``Declaration.log_reason()`` when
    allowed, the refusal's reason code when denied."""
    return AccessRecorder(node).entry(
        at=now,
        department=department,
        officer=officer,
        action=ACTION,
        case_id=case_id.strip() or None,
        decision=decision,
        reason=reason,
    )


@dataclass(frozen=True)
class CovertCase:
    """One declaration of a covert case (the latest of its case, as listed)."""

    id: int
    department: str
    case_id: str
    until: datetime
    legal_basis: str
    declared_at: datetime
    declared_by: str | None

    def in_force(self, now: datetime) -> bool:
        """Whether its embargo still runs at ``now``."""
        return self.until > now

    def to_dict(self, now: datetime) -> dict[str, object]:
        return {
            "department": self.department,
            "case_id": self.case_id,
            "until": self.until.isoformat(),
            "legal_basis": self.legal_basis,
            "declared_at": self.declared_at.isoformat(),
            "declared_by": self.declared_by,
            "in_force": self.in_force(now),
        }


def _case(row: asyncpg.Record) -> CovertCase:
    return CovertCase(
        id=row["id"],
        department=row["caller"],
        case_id=row["case_id"],
        until=row["until"],
        legal_basis=row["legal_basis"],
        declared_at=row["declared_at"],
        declared_by=row["declared_by"],
    )


def _utc(at: datetime) -> str:
    return f"{at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


class CovertCases:
    """Declarations in ``covert_case`` through ``pool``; ``tokens`` sign the listing's page
    tokens (default: valid in this process only)."""

    def __init__(self, pool: asyncpg.Pool, tokens: PageTokens | None = None) -> None:
        self._pool = pool
        self._tokens = tokens or PageTokens.ephemeral()

    async def declare(
        self,
        declaration: Declaration,
        *,
        department: str,
        officer: str | None,
        node: str,
        now: datetime,
        log: AccessLog,
    ) -> CovertCase:
        """Store ``declaration`` for ``department`` and append its log entry in the same
        transaction: both are committed, or neither. Raises AuditUnavailable."""
        async with self._pool.acquire() as conn, log.transaction(conn) as tx:
            # Declarations of one case are stored in the order their entries join the log,
            # so the one in force (the latest row) is the latest in the log too.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                f"covert_case {department} {declaration.case_id}",
            )
            row = await conn.fetchrow(
                f"""
                INSERT INTO covert_case
                    (caller, case_id, until, legal_basis, declared_at, declared_by)
                VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_COLUMNS}
                """,  # noqa: S608 - fixed names
                department,
                declaration.case_id,
                declaration.until,
                declaration.legal_basis,
                now,
                officer,
            )
            tx.record(
                [
                    declaration_entry(
                        department=department,
                        officer=officer,
                        case_id=declaration.case_id,
                        node=node,
                        now=now,
                        decision="allowed",
                        reason=declaration.log_reason(),
                    )
                ]
            )
        assert row is not None  # INSERT ... RETURNING
        return _case(row)

    async def list_cases(
        self,
        *,
        now: datetime,
        department: str | None = None,
        include_ended: bool = False,
        page_size: int = 100,
        page_token: str = "",
    ) -> tuple[list[CovertCase], str]:
        """The declaration in force of each covert case (newest first), of ``department``
        or of all; those whose embargo ended only with ``include_ended``. Returns the page
        and the next page token. Raises InvalidArgument (page size) or PageTokenInvalid."""
        if not 0 <= page_size <= MAX_PAGE:
            raise InvalidArgument(
                f"page_size must be 1 to {MAX_PAGE:,} (0 means 100).",
                metadata={"field": "page_size"},
            )
        size = page_size or 100
        position = self._tokens.open(_LIST, page_token)
        clauses = ["id < $1"]
        args: list[object] = [2**63 - 1 if position is None else int(position)]
        if department:
            args.append(department)
            clauses.append(f"caller = ${len(args)}")
        if not include_ended:
            args.append(now)
            clauses.append(f"until > ${len(args)}")
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM covert_case_current WHERE {' AND '.join(clauses)}"  # noqa: S608 - fixed names
            f" ORDER BY id DESC LIMIT {size + 1}",
            *args,
        )
        cases = [_case(row) for row in rows[:size]]
        more = len(rows) > size
        return cases, (self._tokens.issue(_LIST, str(cases[-1].id)) if more else "")
