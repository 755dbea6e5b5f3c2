"""Electronic supervision (电子监察): the supervision report per department and month, and
the record of which materials of a case were obtained electronically.

The report's rows are the cases **opened** in a month (where the offices are), per
handling department; every case belongs to exactly one row. Each figure is defined in
docs/supervision.md; in short, at the report's instant ``now``:

- ``overdue_promised`` / ``overdue_legal``: open cases in 受理 past the promised date only
  / past the legal date (as ``case_report``: a case in 补正 is not overdue);
- ``decided_late`` / ``decided_past_legal``: decided (办结) after the promised / the legal
  date; ``decided_within_promised``: decided by the promised date;
- ``corrected_repeatedly``: cases sent to 补正 more than once;
- ``decided_same_day``: decided on the day they were opened (即办件);
- ``resolved``: decided cases with a materials resolution recorded before the decision;
  of those, ``fully_online``: every required material obtained electronically (全程网办);
  ``materials_required`` / ``materials_electronic``: their required materials, and of
  those the ones obtained electronically (免提交);
- the sums of calendar days from opening to decision, to the promised date and to the
  legal date, over the decided cases (their averages).

One set-based statement (``_REPORT``) computes them all; the department filter and the
month range use the index ``service_case_department_opened``, the repeated 补正 the
partial index ``service_case_history_corrections`` (migration 0016).

The materials record: ``record_resolution`` stores, for a case of the caller's department
that is still open, each material's code, whether it is required and its source
(``licence``, ``shared-data`` or ``submit``), replacing an earlier resolution of the case.
Nothing else of the resolution is kept: its references and values name the applicant.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import asyncpg

from tongban.exchange.departments import DepartmentStore
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.identity import Caller
from tongban.exchange.licensing.case_overdue import readable
from tongban.exchange.licensing.cases import is_case_number, normal_applicant

__all__ = [
    "MAX_MONTHS",
    "RECENT_DAYS",
    "RecentDecisions",
    "ResolvedMaterial",
    "SupervisionReader",
    "SupervisionReport",
    "SupervisionRow",
    "month_range",
    "months_between",
    "parse_month",
    "readable",
    "recent_decisions",
    "record_resolution",
    "supervision_report",
]

MAX_MONTHS = 120
"""The longest month range one report covers."""
RECENT_DAYS = 30
"""The window of decisions /metrics measures the within-limit share over."""

_MONTH = re.compile(r"^([0-9]{4})-(0[1-9]|1[0-2])$")
_DAY = 86_400.0


def parse_month(text: str, *, field: str) -> date:
    """The first day of the month ``text`` names (``YYYY-MM``). Raises InvalidArgument
    naming ``field`` for anything else."""
    found = _MONTH.match(text.strip())
    if found is None or int(found[1]) < 1970:
        raise InvalidArgument(
            f"{text[:40]!r} is not a month; give it as YYYY-MM (e.g. 2026-03), 1970 or later.",
            metadata={"field": field},
        )
    return date(int(found[1]), int(found[2]), 1)


def month_range(
    from_month: str, to_month: str, *, fields: tuple[str, str] = ("from_month", "to_month")
) -> tuple[date | None, date | None]:
    """The first days of the months ``from_month`` and ``to_month`` name (``YYYY-MM``; ""
    for an open end). Raises InvalidArgument naming the field (``fields``) for a malformed
    month, a range that ends before it starts or one over ``MAX_MONTHS``."""
    first = parse_month(from_month, field=fields[0]) if from_month.strip() else None
    last = parse_month(to_month, field=fields[1]) if to_month.strip() else None
    if first is not None and last is not None:
        months = months_between(first, last)
        if months < 1:
            raise InvalidArgument(
                f"The report's range ends ({to_month}) before it starts ({from_month}).",
                metadata={"field": fields[1]},
            )
        if months > MAX_MONTHS:
            raise InvalidArgument(
                f"A report covers at most {MAX_MONTHS} months (asked for {months}).",
                metadata={"field": fields[0]},
            )
    return first, last


def months_between(first: date, last: date) -> int:
    """How many months ``first`` through ``last`` span (both counted)."""
    return (last.year - first.year) * 12 + last.month - first.month + 1


def _next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


@dataclass(frozen=True)
class SupervisionRow:
    """The figures of one department's cases opened in one month."""

    department: str
    month: str
    """``YYYY-MM``, where the offices are."""
    opened: int
    decided: int
    decided_within_promised: int
    decided_late: int
    """Decided after the promised date (those after the legal date included)."""
    decided_past_legal: int
    overdue_promised: int
    """Open, in 受理, past the promised date and within the legal one at the report's now."""
    overdue_legal: int
    """Open, in 受理, past the legal date at the report's now."""
    in_correction: int
    corrected_repeatedly: int
    """Sent to 补正 more than once."""
    decided_same_day: int
    """Decided on the day they were opened (即办件)."""
    resolved: int
    """Decided, with a materials resolution recorded before the decision."""
    fully_online: int
    """Of ``resolved``, every required material obtained electronically (全程网办)."""
    materials_required: int
    materials_electronic: int
    days_taken: float
    """Sum over the decided cases of calendar days from opening to decision."""
    days_promised: float
    """Sum over the decided cases of calendar days from opening to the promised date."""
    days_legal: float
    """Sum over the decided cases of calendar days from opening to the legal date."""

    @staticmethod
    def _share(part: int, whole: int) -> float | None:
        return part / whole if whole else None

    @property
    def within_promised_share(self) -> float | None:
        """Decided within the promised limit / decided; None with nothing decided."""
        return self._share(self.decided_within_promised, self.decided)

    @property
    def immediate_share(self) -> float | None:
        """即办件率: decided the day opened / decided; None with nothing decided."""
        return self._share(self.decided_same_day, self.decided)

    @property
    def fully_online_share(self) -> float | None:
        """全程网办率: fully online / resolved; None with no resolved case."""
        return self._share(self.fully_online, self.resolved)

    @property
    def no_submission_share(self) -> float | None:
        """免提交率: required materials obtained electronically / required materials."""
        return self._share(self.materials_electronic, self.materials_required)

    def _average(self, days: float) -> float | None:
        return days / self.decided if self.decided else None

    @property
    def average_days(self) -> float | None:
        return self._average(self.days_taken)

    @property
    def average_promised_days(self) -> float | None:
        return self._average(self.days_promised)

    @property
    def average_legal_days(self) -> float | None:
        return self._average(self.days_legal)


@dataclass(frozen=True)
class SupervisionReport:
    """The report at ``now``: rows by department, then month."""

    now: datetime
    rows: tuple[SupervisionRow, ...]


_REPORT = """
    WITH repeated AS (
        SELECT case_number FROM service_case_history
        WHERE to_state = 'correction'
        GROUP BY case_number HAVING count(*) > 1
    )
    SELECT c.department,
           -- Grouped by the month's first instant; formatted once per row of the result.
           date_trunc('month', (c.opened_at AT TIME ZONE 'UTC') + $2::interval) AS month,
           count(*) AS opened,
           count(c.decided_at) AS decided,
           count(*) FILTER (WHERE c.decided_at <= c.promised_due_at) AS decided_within_promised,
           count(*) FILTER (WHERE c.decided_at > c.promised_due_at) AS decided_late,
           count(*) FILTER (WHERE c.decided_at > c.legal_due_at) AS decided_past_legal,
           count(*) FILTER (WHERE c.state = 'accepted' AND c.promised_due_at < $1
                            AND c.legal_due_at >= $1) AS overdue_promised,
           count(*) FILTER (WHERE c.state = 'accepted' AND c.legal_due_at < $1)
               AS overdue_legal,
           count(*) FILTER (WHERE c.state = 'correction') AS in_correction,
           count(repeated.case_number) AS corrected_repeatedly,
           count(*) FILTER (
               WHERE ((c.decided_at AT TIME ZONE 'UTC') + $2::interval)::date
                   = ((c.opened_at AT TIME ZONE 'UTC') + $2::interval)::date
           ) AS decided_same_day,
           count(r.case_number) AS resolved,
           count(*) FILTER (WHERE r.electronic_count = r.required_count) AS fully_online,
           coalesce(sum(r.required_count), 0) AS materials_required,
           coalesce(sum(r.electronic_count), 0) AS materials_electronic,
           -- date_part is double precision (extract is numeric, several times slower).
           coalesce(sum(date_part('epoch', c.decided_at - c.opened_at)), 0) AS taken_s,
           coalesce(sum(date_part('epoch', c.promised_due_at - c.opened_at))
                    FILTER (WHERE c.decided_at IS NOT NULL), 0) AS promised_s,
           coalesce(sum(date_part('epoch', c.legal_due_at - c.opened_at))
                    FILTER (WHERE c.decided_at IS NOT NULL), 0) AS legal_s
    FROM service_case c
    LEFT JOIN repeated ON repeated.case_number = c.number
    -- Only a resolution recorded before the decision counts (and only for decided cases).
    LEFT JOIN service_case_resolution r
        ON r.case_number = c.number AND r.resolved_at <= c.decided_at
    WHERE true {where}
    GROUP BY 1, 2
    ORDER BY 1, 2
"""


async def supervision_report(
    pool: asyncpg.Pool,
    *,
    now: datetime,
    offset: timedelta,
    department: str | None = None,
    first_month: date | None = None,
    last_month: date | None = None,
) -> SupervisionReport:
    """The supervision figures at ``now`` of the cases opened from ``first_month`` through
    ``last_month`` (first days of months; either open-ended when None), months counted
    where the offices are (``offset`` east of UTC), of ``department`` only if given. A
    department and month without cases has no row. Raises nothing of its own."""
    zone = timezone(offset)
    args: list[object] = [now, offset]
    where = []
    if department is not None:
        args.append(department)
        where.append(f"AND c.department = ${len(args)}")
    if first_month is not None:
        args.append(datetime(first_month.year, first_month.month, 1, tzinfo=zone))
        where.append(f"AND c.opened_at >= ${len(args)}")
    if last_month is not None:
        after = _next_month(last_month)
        args.append(datetime(after.year, after.month, 1, tzinfo=zone))
        where.append(f"AND c.opened_at < ${len(args)}")
    rows = await pool.fetch(_REPORT.format(where=" ".join(where)), *args)
    return SupervisionReport(
        now=now,
        rows=tuple(
            SupervisionRow(
                department=r["department"],
                month=r["month"].strftime("%Y-%m"),
                opened=r["opened"],
                decided=r["decided"],
                decided_within_promised=r["decided_within_promised"],
                decided_late=r["decided_late"],
                decided_past_legal=r["decided_past_legal"],
                overdue_promised=r["overdue_promised"],
                overdue_legal=r["overdue_legal"],
                in_correction=r["in_correction"],
                corrected_repeatedly=r["corrected_repeatedly"],
                decided_same_day=r["decided_same_day"],
                resolved=r["resolved"],
                fully_online=r["fully_online"],
                materials_required=int(r["materials_required"]),
                materials_electronic=int(r["materials_electronic"]),
                days_taken=float(r["taken_s"]) / _DAY,
                days_promised=float(r["promised_s"]) / _DAY,
                days_legal=float(r["legal_s"]) / _DAY,
            )
            for r in rows
        ),
    )


@dataclass(frozen=True)
class RecentDecisions:
    """A department's cases decided in a recent window (for /metrics)."""

    department: str
    decided: int
    within_promised: int


async def recent_decisions(
    pool: asyncpg.Pool, *, now: datetime, days: int = RECENT_DAYS
) -> list[RecentDecisions]:
    """Per department, the cases decided in the ``days`` before ``now`` and of those the
    ones decided by their promised date (index ``service_case_decided``)."""
    rows = await pool.fetch(
        "SELECT department, count(*) AS decided,"
        " count(*) FILTER (WHERE decided_at <= promised_due_at) AS within_promised"
        " FROM service_case WHERE decided_at > $1 AND decided_at <= $2"
        " GROUP BY department ORDER BY department",
        now - timedelta(days=days),
        now,
    )
    return [RecentDecisions(r["department"], r["decided"], r["within_promised"]) for r in rows]


# ---- the materials record ---------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedMaterial:
    """What the record keeps of one material's resolution."""

    code: str
    required: bool
    source: str
    """``licence``, ``shared-data`` or ``submit``."""


_RECORD = """
    INSERT INTO service_case_resolution
        (case_number, item_version, resolved_at, materials, sources, required)
    SELECT number, $5, $6, $7::text[], $8::text[], $9::boolean[]
    FROM service_case
    WHERE number = $1 AND department = $2 AND item = $3 AND applicant = $4
      AND closed_at IS NULL
    ON CONFLICT (case_number) DO UPDATE
        SET item_version = EXCLUDED.item_version, resolved_at = EXCLUDED.resolved_at,
            materials = EXCLUDED.materials, sources = EXCLUDED.sources,
            required = EXCLUDED.required
    RETURNING case_number
"""


async def record_resolution(
    pool: asyncpg.Pool,
    *,
    department: str,
    case_id: str,
    item: str,
    item_version: int,
    applicant: str,
    materials: Sequence[ResolvedMaterial],
    now: datetime,
) -> bool:
    """Record ``materials`` as the resolution of case ``case_id`` at ``now``, replacing an
    earlier one, when ``case_id`` is the number of an open case (受理 or 补正) of
    ``department`` for ``item`` and ``applicant``; otherwise (a case id of the
    department's own system, another department's case, a decided one) record nothing.
    Returns whether it recorded. Raises InvalidSubjectId for a malformed applicant."""
    if not materials or not is_case_number(case_id):
        return False
    row = await pool.fetchrow(
        _RECORD,
        case_id,
        department,
        item,
        normal_applicant(applicant),
        item_version,
        now,
        [m.code for m in materials],
        [m.source for m in materials],
        [m.required for m in materials],
    )
    return row is not None


# ---- who reads the report ---------------------------------------------------------------


class SupervisionReader:
    """The supervision report through ``pool`` for callers allowed to read it: a
    department its own cases', one with the auditor role any department's or all."""

    def __init__(self, pool: asyncpg.Pool, *, offset: timedelta) -> None:
        self._pool = pool
        self._offset = offset
        self._departments = DepartmentStore(pool)

    async def report(
        self, caller: Caller, department: str, from_month: str, to_month: str, *, now: datetime
    ) -> SupervisionReport:
        """The report at ``now`` of the department ``caller`` asked for ("" for its own,
        or for an auditor every one's), of the cases opened from ``from_month`` through
        ``to_month`` (``YYYY-MM``; "" leaves that end open).

        Raises CaseNotPermitted (another department's, without the auditor role),
        DepartmentNotFound (an auditor naming no registered department), InvalidArgument
        (a malformed month, ``from_month`` after ``to_month``, over ``MAX_MONTHS``)."""
        scope = readable(caller.department, department, "the supervision report")
        first, last = month_range(from_month, to_month)
        if scope is not None and scope != caller.department.code:
            await self._departments.get(scope)  # DepartmentNotFound
        return await supervision_report(
            self._pool,
            now=now,
            offset=self._offset,
            department=scope,
            first_month=first,
            last_month=last,
        )
