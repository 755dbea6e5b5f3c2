"""The overdue report (电子监察): how many open cases each department has past their
promised date (超承诺时限, 黄牌) and past their legal date (超法定时限, 红牌), and a page
at a time, which.

Measured at ``now`` over the open cases (``closed_at IS NULL``: 受理 and 补正), with the
severities of ``CaseClock.overdue``: past the promised date only when
``promised_due_at < now <= legal_due_at``, past the legal date when ``legal_due_at < now``.

A case in 补正 (correction) is never counted overdue here: its clock is stopped, and the
working days it spends there are added to its due dates only when it returns to 受理, so
the dates stored for it are not yet the ones it will be held to. The report counts such
cases apart (``in_correction``) instead. ``GetCase`` shows a case in 补正 with its dates
moved on by the days so far, so a case already late when 补正 was asked for reads as
overdue there while this report lists it as in correction; it comes back into the report,
with its moved dates, when it returns to 受理.

Both queries use the partial index ``service_case_open_due`` (department,
promised_due_at) WHERE closed_at IS NULL; a legal-date page adds the redundant
``promised_due_at < now`` (the table's CHECK holds legal >= promised) so that the index
narrows it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from tongban.exchange.errors import InvalidArgument
from tongban.exchange.licensing.cases import Overdue

__all__ = [
    "MAX_PAGE",
    "DepartmentOverdue",
    "OverdueCase",
    "OverdueReport",
    "overdue_cases",
    "overdue_report",
    "parse_position",
    "position",
]

MAX_PAGE = 1000
"""The most cases one page of ``overdue_cases`` holds."""

_POSITION_SEPARATOR = "|"


@dataclass(frozen=True)
class DepartmentOverdue:
    """One department's open cases at the report's instant."""

    department: str
    open: int
    """Open cases: in 受理 or 补正."""
    in_correction: int
    """Of those, in 补正: the clock stopped, never counted overdue."""
    past_promised: int
    """In 受理, past the promised date and within the legal one (超承诺时限, 黄牌)."""
    past_legal: int
    """In 受理, past the legal date (超法定时限, 红牌)."""


@dataclass(frozen=True)
class OverdueReport:
    """The overdue report at ``now``: one row per department with open cases, by code."""

    now: datetime
    departments: tuple[DepartmentOverdue, ...]

    @property
    def open(self) -> int:
        return sum(d.open for d in self.departments)

    @property
    def in_correction(self) -> int:
        return sum(d.in_correction for d in self.departments)

    @property
    def past_promised(self) -> int:
        return sum(d.past_promised for d in self.departments)

    @property
    def past_legal(self) -> int:
        return sum(d.past_legal for d in self.departments)


@dataclass(frozen=True)
class OverdueCase:
    """An overdue case as the report lists it."""

    number: str
    department: str
    item: str
    item_version: int
    applicant: str
    opened_at: datetime
    promised_due_at: datetime
    legal_due_at: datetime
    severity: Overdue

    @property
    def due_at(self) -> datetime:
        """The date the case is past: the promised one (黄牌) or the legal one (红牌)."""
        return self.legal_due_at if self.severity is Overdue.LEGAL else self.promised_due_at

    @property
    def position(self) -> str:
        """Where the next page starts: pass it as ``after`` to ``overdue_cases``."""
        return position(self.due_at, self.number)


_REPORT = """
    SELECT department,
           count(*) AS open,
           count(*) FILTER (WHERE state = 'correction') AS in_correction,
           count(*) FILTER (WHERE state = 'accepted' AND promised_due_at < $1
                            AND legal_due_at >= $1) AS past_promised,
           count(*) FILTER (WHERE state = 'accepted' AND legal_due_at < $1) AS past_legal
    FROM service_case
    WHERE closed_at IS NULL {department}
    GROUP BY department
    ORDER BY department
"""


async def overdue_report(
    pool: asyncpg.Pool, *, now: datetime, department: str | None = None
) -> OverdueReport:
    """The open cases per department at ``now`` (an aware instant): how many are open, in
    补正, past the promised date only, and past the legal date; only ``department``'s if
    given. A department without open cases has no row. Raises nothing of its own
    (asyncpg's errors pass through)."""
    if department is None:
        rows = await pool.fetch(_REPORT.format(department=""), now)
    else:
        rows = await pool.fetch(_REPORT.format(department="AND department = $2"), now, department)
    return OverdueReport(
        now=now,
        departments=tuple(
            DepartmentOverdue(
                department=r["department"],
                open=r["open"],
                in_correction=r["in_correction"],
                past_promised=r["past_promised"],
                past_legal=r["past_legal"],
            )
            for r in rows
        ),
    )


def position(at: datetime, number: str) -> str:
    """The position of a case in a list ordered by an instant, then by number: where the
    next page starts (keyset pagination)."""
    return f"{at.isoformat()}{_POSITION_SEPARATOR}{number}"


def parse_position(after: str, *, listing: str, attribute: str) -> tuple[datetime, str]:
    """The instant and case number of a ``position``; raises InvalidArgument (field
    ``after``) naming ``listing`` and the ``attribute`` that holds positions."""
    at_text, separator, number = after.partition(_POSITION_SEPARATOR)
    try:
        at: datetime | None = datetime.fromisoformat(at_text)
    except ValueError:
        at = None
    if not separator or not number or at is None or at.tzinfo is None:
        raise InvalidArgument(
            f"{after[:80]!r} is not a position in {listing}; pass the position of the last "
            f"case of the previous page ({attribute}), or none for the first.",
            metadata={"field": "after"},
        )
    return at, number


async def overdue_cases(
    pool: asyncpg.Pool,
    *,
    now: datetime,
    department: str | None,
    severity: Overdue,
    limit: int,
    after: str | None = None,
) -> list[OverdueCase]:
    """A page of the open cases in 受理 with ``severity`` at ``now``: past the promised
    date only (``Overdue.PROMISED``, ordered by promised date) or past the legal date
    (``Overdue.LEGAL``, ordered by legal date), then by number; ``department``'s only if
    given. At most ``limit`` cases, after the case whose ``position`` is ``after``.
    Cases in 补正 are not listed (their clock is stopped).

    Raises InvalidArgument for ``Overdue.NONE``, a limit outside 1..``MAX_PAGE`` or an
    ``after`` that is not a position.
    """
    if severity is Overdue.NONE:
        raise InvalidArgument(
            "The overdue list is of cases past their promised date or past their legal date; "
            "ask for one of the two.",
            metadata={"field": "severity"},
        )
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidArgument(
            f"A page holds 1 to {MAX_PAGE} cases (asked for {limit}).",
            metadata={"field": "limit"},
        )
    due = "legal_due_at" if severity is Overdue.LEGAL else "promised_due_at"
    where = [
        "closed_at IS NULL",
        "state = 'accepted'",
        "promised_due_at < $1",
        "legal_due_at < $1" if severity is Overdue.LEGAL else "legal_due_at >= $1",
    ]
    args: list[object] = [now, limit]
    if department is not None:
        args.append(department)
        where.append(f"department = ${len(args)}")
    if after is not None:
        at, number = parse_position(
            after, listing="the overdue list", attribute="OverdueCase.position"
        )
        args += [at, number]
        where.append(f"({due}, number) > (${len(args) - 1}, ${len(args)})")
    rows = await pool.fetch(
        "SELECT number, department, item, item_version, applicant, opened_at,"  # noqa: S608
        " promised_due_at, legal_due_at FROM service_case"
        f" WHERE {' AND '.join(where)} ORDER BY {due}, number LIMIT $2",
        *args,
    )
    return [
        OverdueCase(
            number=r["number"],
            department=r["department"],
            item=r["item"],
            item_version=r["item_version"],
            applicant=r["applicant"],
            opened_at=r["opened_at"],
            promised_due_at=r["promised_due_at"],
            legal_due_at=r["legal_due_at"],
            severity=severity,
        )
        for r in rows
    ]
