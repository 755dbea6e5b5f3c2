"""Unusual access in the access log, for auditors (电子监察).

Four rules, each a plain count against a threshold, so an auditor can check a finding by
hand from the log:

- ``volume_jump``: a department made far more accesses on a day than it usually does;
- ``many_subjects``: one officer touched very many different people's records in a day;
- ``out_of_hours``: an officer accessed data outside working hours;
- ``denial_burst``: a department was refused many times in a few minutes (probing).
  Refusals the node merges into one entry (``auth.refused``, ``call.refused``: at most
  one per certificate or department and second) count as the refusals the entry names.

``evaluate`` applies the rules to plain rows and is pure; ``find_anomalies`` reads the
rows of a period from ``access_log`` and calls it. Days and working hours are those of the
offices' time zone (a fixed UTC offset, +8 by default), never the server's or the
database session's. Every decision counts, allowed or denied: an attempt is an access
worth seeing. Entries written before the Merkle log (``access_log_v0``) are not read.
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Literal

import asyncpg

from tongban.exchange.audit.refusals import refusals_in
from tongban.exchange.catalogue.calendar import WorkingCalendar
from tongban.exchange.errors import InvalidArgument

__all__ = [
    "EARLIEST",
    "LATEST",
    "MAX_PERIOD",
    "AccessRow",
    "Anomaly",
    "AnomalyKind",
    "AnomalyRules",
    "check_instant",
    "evaluate",
    "find_anomalies",
]

MAX_PERIOD = timedelta(days=31)
"""The longest period ``find_anomalies`` reads at once (it holds the period's rows)."""

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
"""The instants a period may start or end at: the log holds nothing outside, and the
baseline and office-day arithmetic stays far from the ends of ``datetime``."""

AnomalyKind = Literal["volume_jump", "many_subjects", "out_of_hours", "denial_burst"]

_ONE_DAY = timedelta(days=1)


def check_instant(at: datetime, field: str) -> datetime:
    """``at``, if a period may start or end there; else InvalidArgument naming ``field``."""
    if not EARLIEST <= at <= LATEST:
        raise InvalidArgument(
            f"{field} must lie between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}.",
            metadata={"field": field},
        )
    return at


@dataclass(frozen=True)
class AccessRow:
    """The columns of one access-log entry that the rules look at.

    Raises ``ValueError`` if ``at`` is naive.
    """

    at: datetime
    caller: str
    officer: str | None
    subject_hmac: bytes | None
    decision: str
    count: int = 1
    """How many accesses the entry stands for: more than 1 only for an entry of merged
    refusals (``refusals.refusals_in``), which ``denial_burst`` counts as that many."""

    def __post_init__(self) -> None:
        if self.at.utcoffset() is None:
            raise ValueError(f"access times must be timezone-aware, not {self.at}")
        if self.count < 1:
            raise ValueError(f"an entry stands for at least one access, not {self.count}")


@dataclass(frozen=True)
class Anomaly:
    """One finding: what was seen, by whom, how much, and against what."""

    kind: AnomalyKind
    department: str
    """The calling department's code."""
    officer: str | None
    """The officer (``many_subjects``, ``out_of_hours``), or None: for the department-wide
    rules, and for accesses whose caller sent no officer id."""
    detail: str
    """One sentence saying what was seen, with local (office) dates and times."""
    count: int
    """Accesses on the day (``volume_jump``), distinct subjects (``many_subjects``),
    accesses outside working hours (``out_of_hours``) or refusals in the burst (an entry
    of merged refusals counting as the refusals it names)."""
    baseline: float
    """What ``count`` was compared with: the mean daily count over the baseline days for
    ``volume_jump``, the rule's threshold for the other kinds."""
    first_at: datetime
    """The earliest access in the period that the finding covers."""


@dataclass(frozen=True)
class AnomalyRules:
    """Thresholds of the four rules. Raises ``ValueError`` for values that make no sense."""

    baseline_days: int = 7
    """``volume_jump`` compares a day with the mean of this many days before it."""
    volume_factor: float = 3.0
    """``volume_jump``: a day is a jump at this many times the mean daily count or more.
    A department with no accesses in the baseline days (mean 0, e.g. a new department)
    is never a jump: there is nothing to jump from."""
    volume_min: int = 50
    """``volume_jump``: a day with fewer accesses than this is never a jump."""
    subjects_per_officer_day: int = 100
    """``many_subjects``: an officer touching this many distinct subjects in a day."""
    work_start: time = time(8, 0)
    """Working hours start (office time); an access before it is out of hours."""
    work_end: time = time(18, 30)
    """Working hours end (office time); an access after it is out of hours."""
    out_of_hours_min: int = 5
    """``out_of_hours``: an officer with this many out-of-hours accesses in the period."""
    denials_in_burst: int = 10
    """``denial_burst``: this many denials of one department within ``burst_window``."""
    burst_window: timedelta = timedelta(minutes=5)
    """``denial_burst``: the window, half-open: denials exactly this far apart are not in
    one window."""
    office_utc_offset_hours: int = 8
    """The offices' UTC offset, which decides local dates and working hours."""
    calendar: WorkingCalendar = field(default_factory=WorkingCalendar)
    """Which days are working days; by default Monday to Friday. Give it the holidays and
    makeup workdays (调休) so that they are judged as days off and working days."""

    def __post_init__(self) -> None:
        for name in (
            "baseline_days",
            "volume_min",
            "subjects_per_officer_day",
            "out_of_hours_min",
            "denials_in_burst",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}")
        if not self.volume_factor > 1:
            raise ValueError(f"volume_factor must be more than 1, not {self.volume_factor!r}")
        if self.work_start.tzinfo is not None or self.work_end.tzinfo is not None:
            raise ValueError("work_start and work_end are office times, without a tzinfo")
        if not self.work_start < self.work_end:
            raise ValueError(f"work_start {self.work_start} must be before work_end")
        if self.burst_window <= timedelta(0):
            raise ValueError(f"burst_window must be positive, not {self.burst_window}")
        if not -12 <= self.office_utc_offset_hours <= 14:
            raise ValueError(
                f"office_utc_offset_hours must be from -12 to 14, "
                f"not {self.office_utc_offset_hours!r}"
            )

    @property
    def office_tz(self) -> timezone:
        """The offices' time zone as a fixed offset."""
        return timezone(timedelta(hours=self.office_utc_offset_hours))


def evaluate(
    rows: Sequence[AccessRow],
    *,
    start: datetime,
    end: datetime,
    history: Mapping[tuple[str, date], int],
    rules: AnomalyRules,
) -> list[Anomaly]:
    """Return the anomalies among ``rows``, sorted by (first_at, kind, department, officer).

    ``rows`` are the accesses of [start, end), in any order. ``history`` counts the
    accesses before ``start`` per (department, office date), from the office midnight
    ``rules.baseline_days`` days before start's office date up to ``start``; missing keys
    count as 0. If ``start`` is not an office midnight, the part of its day before
    ``start`` is in ``history``, so ``volume_jump`` counts that day whole, while
    ``many_subjects`` sees only the part inside the period.

    Raises ``ValueError`` if ``start`` or ``end`` is naive, ``start`` is not before
    ``end``, or a row lies outside [start, end).
    """
    _require_aware(start, end)
    if start >= end:
        raise ValueError(f"the period must start before it ends: {start} to {end}")
    for row in rows:
        if not start <= row.at < end:
            raise ValueError(f"a row at {row.at} lies outside the period {start} to {end}")
    tz = rules.office_tz
    local = [(row, row.at.astimezone(tz)) for row in rows]
    found = [
        *_volume_jumps(local, history, rules),
        *_many_subjects(local, rules),
        *_out_of_hours(local, rules),
        *_denial_bursts(rows, rules),
    ]
    found.sort(
        key=lambda a: (a.first_at, a.kind, a.department, a.officer is not None, a.officer or "")
    )
    return found


async def find_anomalies(
    pool: asyncpg.Pool,
    *,
    start: datetime,
    end: datetime,
    rules: AnomalyRules = AnomalyRules(),
) -> list[Anomaly]:
    """Return the anomalies in the access log for [start, end), as ``evaluate`` does.

    Reads the period's entries and, for ``volume_jump``, the daily counts of the
    ``rules.baseline_days`` office days before it, in one read-only snapshot.

    Raises ``ValueError`` if ``start`` or ``end`` is naive, and ``InvalidArgument`` if
    ``start`` is not before ``end`` or the period is longer than 31 days.
    """
    _require_aware(start, end)
    check_instant(start, "from")
    check_instant(end, "to")
    if start >= end:
        raise InvalidArgument(
            f"The period must start before it ends; got {start.isoformat()} to {end.isoformat()}."
        )
    if end - start > MAX_PERIOD:
        raise InvalidArgument(
            f"The period may be at most {MAX_PERIOD.days} days long (it is "
            f"{_days(end - start)} days); look at it in shorter periods."
        )
    tz = rules.office_tz
    first_day = start.astimezone(tz).date() - timedelta(days=rules.baseline_days)
    history_from = datetime.combine(first_day, time(), tzinfo=tz)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        records = await conn.fetch(
            "SELECT at, caller, officer, subject_hmac, decision, action, purpose"
            " FROM access_log_searchable WHERE at >= $1 AND at < $2",
            start,
            end,
        )
        # The office date of an instant: its UTC wall-clock time plus the office offset.
        # (Not AT TIME ZONE '+08': PostgreSQL reads POSIX offsets with the sign inverted.)
        counts = await conn.fetch(
            "SELECT caller, (timezone('UTC', at) + make_interval(hours => $3))::date AS day,"
            " count(*) AS n FROM access_log_searchable WHERE at >= $1 AND at < $2 GROUP BY 1, 2",
            history_from,
            start,
            rules.office_utc_offset_hours,
        )
    rows = [
        AccessRow(
            at=r["at"],
            caller=r["caller"],
            officer=r["officer"],
            subject_hmac=r["subject_hmac"],
            decision=r["decision"],
            count=refusals_in(r["action"], r["purpose"]),
        )
        for r in records
    ]
    history = {(r["caller"], r["day"]): r["n"] for r in counts}
    return evaluate(rows, start=start, end=end, history=history, rules=rules)


_Local = Sequence[tuple[AccessRow, datetime]]


def _volume_jumps(
    local: _Local, history: Mapping[tuple[str, date], int], rules: AnomalyRules
) -> list[Anomaly]:
    daily: Counter[tuple[str, date]] = Counter(history)
    first: dict[tuple[str, date], datetime] = {}
    for row, at in local:
        key = (row.caller, at.date())
        daily[key] += 1
        if key not in first or row.at < first[key]:
            first[key] = row.at
    found = []
    n = rules.baseline_days
    for (department, day), first_at in first.items():
        count = daily[(department, day)]
        total = sum(daily[(department, day - k * _ONE_DAY)] for k in range(1, n + 1))
        # Compared as count·n ≥ factor·total, so a count exactly at the threshold is not
        # lost to rounding of the mean.
        if total == 0 or count < rules.volume_min or count * n < rules.volume_factor * total:
            continue
        mean = total / n
        found.append(
            Anomaly(
                kind="volume_jump",
                department=department,
                officer=None,
                detail=(
                    f"{department} made {count} accesses on {day}, {count / mean:.1f}"
                    f"\N{MULTIPLICATION SIGN} its daily average of {_number(mean)} over the "
                    f"previous {n} days."
                ),
                count=count,
                baseline=mean,
                first_at=first_at,
            )
        )
    return found


def _many_subjects(local: _Local, rules: AnomalyRules) -> list[Anomaly]:
    subjects: defaultdict[tuple[str, str | None, date], set[bytes]] = defaultdict(set)
    first: dict[tuple[str, str | None, date], datetime] = {}
    for row, at in local:
        if row.subject_hmac is None:
            continue
        key = (row.caller, row.officer, at.date())
        subjects[key].add(row.subject_hmac)
        if key not in first or row.at < first[key]:
            first[key] = row.at
    limit = rules.subjects_per_officer_day
    return [
        Anomaly(
            kind="many_subjects",
            department=department,
            officer=officer,
            detail=(
                f"{_who(department, officer)} accessed {len(seen)} distinct subjects on {day},"
                f" at or above the limit of {limit} a day."
            ),
            count=len(seen),
            baseline=float(limit),
            first_at=first[(department, officer, day)],
        )
        for (department, officer, day), seen in subjects.items()
        if len(seen) >= limit
    ]


def _out_of_hours(local: _Local, rules: AnomalyRules) -> list[Anomaly]:
    times: defaultdict[tuple[str, str | None], list[datetime]] = defaultdict(list)
    tz = rules.office_tz
    for row, at in local:
        clock = at.time()
        if (
            not rules.calendar.is_working_day(at.date())
            or clock < rules.work_start
            or clock > rules.work_end
        ):
            times[(row.caller, row.officer)].append(row.at)
    hours = f"{rules.work_start:%H:%M} to {rules.work_end:%H:%M} on working days"
    found = []
    for (department, officer), ats in times.items():
        if len(ats) < rules.out_of_hours_min:
            continue
        first_at = min(ats)
        first_local, last_local = first_at.astimezone(tz), max(ats).astimezone(tz)
        found.append(
            Anomaly(
                kind="out_of_hours",
                department=department,
                officer=officer,
                detail=(
                    f"{_who(department, officer)} made {len(ats)} accesses outside working "
                    f"hours ({hours}, {_utc_label(rules)}) between "
                    f"{first_local:%Y-%m-%d %H:%M} and {last_local:%Y-%m-%d %H:%M}."
                ),
                count=len(ats),
                baseline=float(rules.out_of_hours_min),
                first_at=first_at,
            )
        )
    return found


def _denial_bursts(rows: Sequence[AccessRow], rules: AnomalyRules) -> list[Anomaly]:
    denials: defaultdict[str, list[tuple[datetime, int]]] = defaultdict(list)
    for row in rows:
        if row.decision == "denied":
            denials[row.caller].append((row.at, row.count))
    tz = rules.office_tz
    need, window = rules.denials_in_burst, rules.burst_window
    found = []
    for department, timed in denials.items():
        timed.sort()
        ats = [at for at, _ in timed]
        # Refusals up to each entry: refusals in entries i..j = before[j + 1] - before[i].
        before = [0, *itertools.accumulate(n for _, n in timed)]
        # Each denial j ends a window [ats[j] - window, ats[j]]; its earliest member i is
        # the first denial less than `window` before it. Windows holding `need` or more
        # refusals that share a denial are one burst.
        bursts: list[list[int]] = []  # [first index, last index]
        for j, at in enumerate(ats):
            i = bisect.bisect_right(ats, at - window, 0, j)
            if before[j + 1] - before[i] < need:
                continue
            if bursts and i <= bursts[-1][1]:
                bursts[-1][1] = j
            else:
                bursts.append([i, j])
        for i, j in bursts:
            count = before[j + 1] - before[i]
            first_local, last_local = ats[i].astimezone(tz), ats[j].astimezone(tz)
            found.append(
                Anomaly(
                    kind="denial_burst",
                    department=department,
                    officer=None,
                    detail=(
                        f"{department} was denied {count} times between "
                        f"{first_local:%Y-%m-%d %H:%M:%S} and {last_local:%Y-%m-%d %H:%M:%S} "
                        f"({_utc_label(rules)}), at least {need} within "
                        f"{_duration(window)}."
                    ),
                    count=count,
                    baseline=float(need),
                    first_at=ats[i],
                )
            )
    return found


def _require_aware(*instants: datetime) -> None:
    for instant in instants:
        if instant.utcoffset() is None:
            raise ValueError(f"start and end must be timezone-aware, not {instant}")


def _who(department: str, officer: str | None) -> str:
    if officer is None:
        return f"{department} (accesses without an officer id)"
    return f"officer {officer!r} of {department}"


def _number(value: float) -> str:
    """A count or mean for people: 40 rather than 40.0, else one decimal."""
    return str(int(value)) if value == int(value) else f"{value:.1f}"


def _days(span: timedelta) -> str:
    return _number(round(span / _ONE_DAY, 1))


def _duration(span: timedelta) -> str:
    seconds = span.total_seconds()
    if seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{_number(seconds)} seconds"


def _utc_label(rules: AnomalyRules) -> str:
    return f"UTC{rules.office_utc_offset_hours:+d}"
