"""Anomalies in the access log: each rule at and around its thresholds, office time
(UTC+8) against UTC, and one run against a real database written through ``AccessLog``."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta, timezone

import asyncpg
import pytest
import pytest_asyncio

from tongban.exchange.audit.anomalies import (
    AccessRow,
    Anomaly,
    AnomalyRules,
    evaluate,
    find_anomalies,
)
from tongban.exchange.audit.log import AccessEntry, AccessLog
from tongban.exchange.audit.recorder import AccessRecorder
from tongban.exchange.audit.refusals import AUTH_REFUSED, auth_refusal_purpose
from tongban.exchange.catalogue.calendar import WorkingCalendar
from tongban.exchange.db.migrate import apply_migrations
from tongban.exchange.errors import InvalidArgument

OFFICE = timezone(timedelta(hours=8))
RULES = AnomalyRules()
# 2026-11-16 to 2026-11-29: two weeks, Monday to Sunday.
MON, TUE, WED, FRI, SAT, SUN = (date(2026, 11, d) for d in (23, 24, 25, 27, 28, 29))


def office(day: date, hour: int, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute, second, micro), tzinfo=OFFICE)


def midnight(day: date) -> datetime:
    return office(day, 0)


def subject(name: str | int) -> bytes:
    return hashlib.sha256(str(name).encode()).digest()


def row(
    at: datetime,
    caller: str = "tax",
    officer: str | None = "li",
    subject_hmac: bytes | None = b"",
    decision: str = "allowed",
) -> AccessRow:
    return AccessRow(
        at=at,
        caller=caller,
        officer=officer,
        subject_hmac=subject(at.isoformat()) if subject_hmac == b"" else subject_hmac,
        decision=decision,
    )


def spread(first: datetime, count: int, step: timedelta = timedelta(seconds=1)) -> list[datetime]:
    return [first + i * step for i in range(count)]


def run(
    rows: Iterable[AccessRow],
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    history: Mapping[tuple[str, date], int] | None = None,
    rules: AnomalyRules = RULES,
    kind: str | None = None,
) -> list[Anomaly]:
    """Evaluate over the week of MON (office time) unless told otherwise."""
    found = evaluate(
        list(rows),
        start=start or midnight(MON),
        end=end or midnight(MON + timedelta(days=7)),
        history=history or {},
        rules=rules,
    )
    return [a for a in found if kind is None or a.kind == kind]


def week_of(department: str, per_day: int, last: date = MON) -> dict[tuple[str, date], int]:
    """History: ``per_day`` accesses on each of the 7 days before ``last``."""
    return {(department, last - timedelta(days=k)): per_day for k in range(1, 8)}


# volume_jump


def test_a_day_at_three_times_the_mean_and_fifty_accesses_is_a_jump() -> None:
    rows = [row(t) for t in spread(office(MON, 10), 60)]
    [jump] = run(rows, history=week_of("tax", 20), kind="volume_jump")
    assert (jump.department, jump.officer, jump.count, jump.baseline) == ("tax", None, 60, 20.0)
    assert jump.first_at == office(MON, 10)
    assert jump.detail == (
        "tax made 60 accesses on 2026-11-23, 3.0\N{MULTIPLICATION SIGN} its daily average "
        "of 20 over the previous 7 days."
    )


def test_a_day_just_below_three_times_the_mean_is_not_a_jump() -> None:
    rows = [row(t) for t in spread(office(MON, 10), 59)]
    assert run(rows, history=week_of("tax", 20), kind="volume_jump") == []


def test_a_jump_needs_fifty_accesses_that_day() -> None:
    history = week_of("tax", 1)
    assert run([row(t) for t in spread(office(MON, 10), 49)], history=history) == []
    [jump] = run([row(t) for t in spread(office(MON, 10), 50)], history=history)
    assert (jump.kind, jump.count, jump.baseline) == ("volume_jump", 50, 1.0)


def test_days_without_accesses_count_as_zero_in_the_mean() -> None:
    # 35 accesses on one of the 7 days: the mean is 5, not 35.
    [jump] = run(
        [row(t) for t in spread(office(MON, 10), 50)],
        history={("tax", MON - timedelta(days=1)): 35},
        kind="volume_jump",
    )
    assert jump.baseline == 5.0
    assert "10.0\N{MULTIPLICATION SIGN} its daily average of 5" in jump.detail


def test_a_department_without_history_is_not_a_jump() -> None:
    rows = [row(t) for t in spread(office(MON, 10), 500)]
    # History of another department, and of tax older than the 7 days, does not count.
    history = {**week_of("land", 10), ("tax", MON - timedelta(days=8)): 1000}
    assert run(rows, history=history, kind="volume_jump") == []


def test_days_inside_the_period_are_the_baseline_of_later_days() -> None:
    # No history; 21 accesses on Monday make Tuesday's mean 3, so 50 on Tuesday is a jump.
    # Tuesday's accesses are at 00:30 office time, still Monday in UTC.
    monday = [row(t, officer=None) for t in spread(office(MON, 10), 21)]
    tuesday = [row(t, officer=None) for t in spread(office(TUE, 0, 30), 50)]
    [jump] = run([*monday, *tuesday], kind="volume_jump")
    assert (jump.count, jump.baseline, jump.first_at) == (50, 3.0, office(TUE, 0, 30))
    assert jump.first_at.astimezone(UTC).date() == MON
    assert "on 2026-11-24" in jump.detail


def test_a_start_inside_a_day_counts_that_day_whole() -> None:
    # History holds Monday's morning (before start); the period adds its afternoon.
    history = {**week_of("tax", 10), ("tax", MON): 30}
    rows = [row(t) for t in spread(office(MON, 14), 30)]
    [jump] = run(rows, start=office(MON, 12), history=history, kind="volume_jump")
    assert (jump.count, jump.baseline, jump.first_at) == (60, 10.0, office(MON, 14))


# many_subjects


def test_an_officer_touching_a_hundred_subjects_in_a_day_is_flagged() -> None:
    rows = [row(t, subject_hmac=subject(i)) for i, t in enumerate(spread(office(MON, 9), 100))]
    [found] = run(rows, kind="many_subjects")
    assert (found.department, found.officer, found.count, found.baseline) == (
        "tax",
        "li",
        100,
        100.0,
    )
    assert found.first_at == office(MON, 9)
    assert found.detail == (
        "officer 'li' of tax accessed 100 distinct subjects on 2026-11-23, at or above the "
        "limit of 100 a day."
    )


def test_ninety_nine_distinct_subjects_are_not_flagged_however_often_touched() -> None:
    rows = [row(t, subject_hmac=subject(i % 99)) for i, t in enumerate(spread(office(MON, 9), 300))]
    rows += [row(office(MON, 11), subject_hmac=None)]  # no subject: not a subject touched
    assert run(rows, kind="many_subjects") == []


def test_subjects_are_counted_per_caller_and_officer() -> None:
    times = spread(office(MON, 9), 50)
    rows = [
        *(row(t, officer="li", subject_hmac=subject(i)) for i, t in enumerate(times)),
        *(row(t, officer="wang", subject_hmac=subject(i + 50)) for i, t in enumerate(times)),
        *(row(t, caller="land", subject_hmac=subject(i + 50)) for i, t in enumerate(times)),
    ]
    assert run(rows, kind="many_subjects") == []


def test_accesses_without_an_officer_are_grouped_together() -> None:
    rows = [
        row(t, officer=None, subject_hmac=subject(i))
        for i, t in enumerate(spread(office(MON, 9), 100, timedelta(minutes=1)))
    ]
    [found] = run(rows, kind="many_subjects")
    assert (found.officer, found.count) == (None, 100)
    assert found.detail.startswith("tax (accesses without an officer id) accessed 100")


def test_subjects_are_counted_per_office_day() -> None:
    # 50 late on Monday and 50 early on Tuesday (office time) are the same UTC day, but
    # two office days; 50 before 08:00 and 50 after 09:00 on Monday are two UTC days, one
    # office day.
    split = [
        *(row(t, subject_hmac=subject(f"a{i}")) for i, t in enumerate(spread(office(MON, 23), 50))),
        *(row(t, subject_hmac=subject(f"b{i}")) for i, t in enumerate(spread(office(TUE, 1), 50))),
    ]
    assert {r.at.astimezone(UTC).date() for r in split} == {MON}
    assert run(split, kind="many_subjects") == []
    same_day = [
        *(row(t, subject_hmac=subject(f"a{i}")) for i, t in enumerate(spread(office(MON, 7), 50))),
        *(row(t, subject_hmac=subject(f"b{i}")) for i, t in enumerate(spread(office(MON, 9), 50))),
    ]
    assert {r.at.astimezone(UTC).date() for r in same_day} == {MON - timedelta(days=1), MON}
    [found] = run(same_day, kind="many_subjects")
    assert (found.count, found.first_at) == (100, office(MON, 7))


# out_of_hours

ONE_IS_ENOUGH = AnomalyRules(out_of_hours_min=1)


@pytest.mark.parametrize(
    ("at", "out_of_hours"),
    [
        (office(MON, 7, 59, 59, 999_999), True),
        (office(MON, 8), False),
        (office(MON, 12), False),
        (office(MON, 18, 30), False),
        (office(MON, 18, 30, 0, 1), True),
        (office(MON, 23, 59), True),
        (office(FRI, 18), False),
        (office(SAT, 10), True),
        (office(SUN, 15), True),
        # Office time is UTC+8: 23:00 UTC is 07:00 the next day, 01:00 UTC is 09:00.
        (datetime(2026, 11, 23, 23, 0, tzinfo=UTC), True),
        (datetime(2026, 11, 24, 1, 0, tzinfo=UTC), False),
        # 10:30 UTC on a Friday is 18:30 in the office; 17:00 UTC is already Saturday.
        (datetime(2026, 11, 27, 10, 30, tzinfo=UTC), False),
        (datetime(2026, 11, 27, 10, 31, tzinfo=UTC), True),
        (datetime(2026, 11, 27, 17, 0, tzinfo=UTC), True),
        # 23:30 UTC on a Sunday is Monday 07:30 in the office; 00:30 UTC is 08:30.
        (datetime(2026, 11, 29, 23, 30, tzinfo=UTC), True),
        (datetime(2026, 11, 30, 0, 30, tzinfo=UTC), False),
    ],
)
def test_working_hours_are_weekdays_from_eight_to_half_past_six_office_time(
    at: datetime, out_of_hours: bool
) -> None:
    found = run(
        [row(at)],
        end=midnight(MON + timedelta(days=14)),
        rules=ONE_IS_ENOUGH,
        kind="out_of_hours",
    )
    assert bool(found) is out_of_hours


def test_holidays_and_makeup_workdays_come_from_the_calendar() -> None:
    rules = AnomalyRules(
        out_of_hours_min=1,
        calendar=WorkingCalendar(holidays=frozenset({WED}), makeup_workdays=frozenset({SAT})),
    )
    [found] = run([row(office(WED, 10)), row(office(SAT, 10))], rules=rules, kind="out_of_hours")
    assert (found.count, found.first_at) == (1, office(WED, 10))


def test_an_officer_with_five_accesses_out_of_hours_is_flagged_once() -> None:
    off = [office(SAT, 10), office(MON, 7), office(TUE, 22), office(WED, 6), office(SUN, 3)]
    inside = [office(MON, 9), office(TUE, 18, 30), office(FRI, 8)]
    assert run([row(t) for t in off[1:] + inside], kind="out_of_hours") == []
    [found] = run([row(t) for t in off + inside], kind="out_of_hours")
    assert (found.department, found.officer, found.count, found.baseline) == (
        "tax",
        "li",
        5,
        5.0,
    )
    assert found.first_at == office(MON, 7)
    assert found.detail == (
        "officer 'li' of tax made 5 accesses outside working hours (08:00 to 18:30 on "
        "working days, UTC+8) between 2026-11-23 07:00 and 2026-11-29 03:00."
    )


def test_out_of_hours_accesses_are_counted_per_caller_and_officer() -> None:
    times = spread(office(SAT, 10), 4)
    rows = [
        *(row(t, officer="li") for t in times),
        *(row(t, officer="wang") for t in times),
        *(row(t, caller="land", officer="li") for t in times),
        *(row(t, officer=None) for t in spread(office(SUN, 10), 5)),
    ]
    [found] = run(rows, kind="out_of_hours")
    assert (found.department, found.officer, found.count) == ("tax", None, 5)


# denial_burst


def denials(first: datetime, count: int, step: timedelta, caller: str = "tax") -> list[AccessRow]:
    return [row(t, caller=caller, decision="denied") for t in spread(first, count, step)]


def test_ten_denials_within_five_minutes_are_a_burst() -> None:
    [burst] = run(denials(office(MON, 10), 10, timedelta(seconds=30)), kind="denial_burst")
    assert (burst.department, burst.officer, burst.count, burst.baseline) == (
        "tax",
        None,
        10,
        10.0,
    )
    assert burst.first_at == office(MON, 10)
    assert burst.detail == (
        "tax was denied 10 times between 2026-11-23 10:00:00 and 2026-11-23 10:04:30 "
        "(UTC+8), at least 10 within 5 minutes."
    )


def test_nine_denials_are_not_a_burst() -> None:
    assert run(denials(office(MON, 10), 9, timedelta(seconds=1)), kind="denial_burst") == []


def test_the_window_is_half_open() -> None:
    # Ten denials, the first and last exactly 5 minutes apart: no window holds all ten.
    exact = [*denials(office(MON, 10), 9, timedelta(seconds=1))]
    exact.append(row(office(MON, 10, 5), decision="denied"))
    assert run(exact, kind="denial_burst") == []
    exact[-1] = row(office(MON, 10, 4, 59, 999_999), decision="denied")
    [burst] = run(exact, kind="denial_burst")
    assert burst.count == 10


def test_overlapping_windows_are_one_burst() -> None:
    # One denial every 30 s for 7 minutes: windows starting at each of the first six
    # denials hold ten; together they are one burst of fifteen.
    [burst] = run(denials(office(MON, 10), 15, timedelta(seconds=30)), kind="denial_burst")
    assert (burst.count, burst.first_at) == (15, office(MON, 10))
    assert "between 2026-11-23 10:00:00 and 2026-11-23 10:07:00" in burst.detail


def test_separate_bursts_are_reported_separately() -> None:
    rows = [
        *denials(office(MON, 10), 10, timedelta(seconds=10)),
        *denials(office(MON, 10, 20), 12, timedelta(seconds=10)),
    ]
    found = run(rows, kind="denial_burst")
    assert [(b.count, b.first_at) for b in found] == [
        (10, office(MON, 10)),
        (12, office(MON, 10, 20)),
    ]


def test_only_one_departments_denials_make_its_burst() -> None:
    step = timedelta(seconds=5)
    rows = [
        *denials(office(MON, 10), 5, step),
        *denials(office(MON, 10), 5, step, caller="land"),
        *(row(t) for t in spread(office(MON, 10), 20)),  # allowed: not denials
    ]
    assert run(rows, kind="denial_burst") == []


def test_an_entry_of_merged_refusals_counts_as_the_refusals_it_names() -> None:
    # The node writes a burst of refused authentications as one entry for the first
    # refusal and one for the rest of the second: 10 refusals are 2 entries.
    merged = [
        AccessRow(office(MON, 10), "ghost", None, None, "denied"),
        AccessRow(office(MON, 10, 0, 1), "ghost", None, None, "denied", count=9),
    ]
    [burst] = run(merged, kind="denial_burst")
    assert (burst.department, burst.count, burst.first_at) == ("ghost", 10, office(MON, 10))
    assert "denied 10 times" in burst.detail
    assert run([merged[0], replace(merged[1], count=8)], kind="denial_burst") == []
    with pytest.raises(ValueError, match="at least one"):
        AccessRow(office(MON, 10), "ghost", None, None, "denied", count=0)


def test_a_burst_may_cross_midnight() -> None:
    [burst] = run(denials(office(MON, 23, 58), 12, timedelta(seconds=20)), kind="denial_burst")
    assert (burst.count, burst.first_at) == (12, office(MON, 23, 58))


# all rules together, and misuse


def test_results_are_sorted_by_first_access_then_kind() -> None:
    late_burst = denials(office(TUE, 15), 10, timedelta(seconds=1), caller="health")
    early_out_of_hours = [row(office(SAT, h), caller="land") for h in range(1, 6)]
    # One officer's 100 subjects on Monday from 09:00 are also tax's volume jump.
    busy = [row(t, subject_hmac=subject(i)) for i, t in enumerate(spread(office(MON, 9), 100))]
    found = run([*late_burst, *early_out_of_hours, *busy], history=week_of("tax", 5))
    assert [(a.first_at, a.kind, a.department) for a in found] == [
        (office(MON, 9), "many_subjects", "tax"),
        (office(MON, 9), "volume_jump", "tax"),
        (office(TUE, 15), "denial_burst", "health"),
        (office(SAT, 1), "out_of_hours", "land"),
    ]


def test_nothing_unusual_finds_nothing() -> None:
    rows = [row(t) for t in spread(office(MON, 10), 30, timedelta(minutes=5))]
    assert run(rows, history=week_of("tax", 30)) == []
    assert run([]) == []


def test_naive_times_and_rows_outside_the_period_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        AccessRow(datetime(2026, 11, 23, 10), "tax", None, None, "allowed")  # noqa: DTZ001
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate(
            [],
            start=datetime(2026, 11, 23),  # noqa: DTZ001
            end=midnight(TUE),
            history={},
            rules=RULES,
        )
    with pytest.raises(ValueError, match="start before it ends"):
        evaluate([], start=midnight(TUE), end=midnight(MON), history={}, rules=RULES)
    with pytest.raises(ValueError, match="outside the period"):
        evaluate(
            [row(midnight(TUE))], start=midnight(MON), end=midnight(TUE), history={}, rules=RULES
        )


@pytest.mark.parametrize(
    "change",
    [
        {"baseline_days": 0},
        {"volume_min": 0},
        {"volume_factor": 1.0},
        {"work_start": time(19)},
        {"burst_window": timedelta(0)},
        {"office_utc_offset_hours": 15},
        {"denials_in_burst": True},
    ],
)
def test_rules_that_make_no_sense_are_refused(change: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must"):
        AnomalyRules(**change)  # type: ignore[arg-type]


# against PostgreSQL


@pytest_asyncio.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as created:
        async with created.acquire() as conn:
            await apply_migrations(conn)
        yield created


def entry(
    at: datetime,
    caller: str,
    officer: str | None,
    subject_name: str | None,
    decision: str = "allowed",
) -> AccessEntry:
    return AccessEntry(
        at=at,
        node="node-1",
        caller=caller,
        officer=officer,
        action="query",
        dataset="household",
        fields=("name",),
        purpose="anomaly test",
        case_id=None,
        subject_hmac=None if subject_name is None else subject(subject_name),
        decision="denied" if decision == "denied" else "allowed",
        reason="NO_GRANT" if decision == "denied" else None,
    )


async def write(pool: asyncpg.Pool, entries: list[AccessEntry]) -> None:
    log = AccessLog(pool)
    await log.start()
    try:
        await log.append(entries)
    finally:
        await log.stop()


async def test_find_anomalies_reads_the_period_and_office_days_from_the_log(
    pool: asyncpg.Pool, database_url: str
) -> None:
    entries = []
    # tax: 10 a day in the week before, 60 on Monday: a jump over a mean of 10.
    for k in range(1, 8):
        day = MON - timedelta(days=k)
        entries += [
            entry(t, "tax", "li", f"h{k}-{i}") for i, t in enumerate(spread(office(day, 10), 10))
        ]
    entries += [entry(t, "tax", "li", f"t{i}") for i, t in enumerate(spread(office(MON, 10), 60))]
    # land: 7 accesses at 07:00 office time on the first baseline day, which is still the
    # day before in UTC; only if history is grouped by office date is the mean 1.
    first_baseline_day = office(MON - timedelta(days=7), 7)
    assert first_baseline_day.astimezone(UTC).date() == MON - timedelta(days=8)
    entries += [
        entry(t, "land", "wang", f"l{i}") for i, t in enumerate(spread(first_baseline_day, 7))
    ]
    entries += [
        entry(t, "land", "wang", f"m{i}") for i, t in enumerate(spread(office(MON, 11), 50))
    ]
    # police: no history, so 106 accesses are no jump; but officer zhao touches 100
    # subjects, and 6 times before 08:00 (Sunday in UTC).
    entries += [
        entry(t, "police", "zhao", f"p{i}") for i, t in enumerate(spread(office(MON, 7), 6))
    ]
    entries += [
        entry(t, "police", "zhao", f"p{i}") for i, t in enumerate(spread(office(MON, 14), 100))
    ]
    # health: 12 denials in under 4 minutes.
    step = timedelta(seconds=20)
    entries += [
        entry(t, "health", "chen", f"d{i}", "denied")
        for i, t in enumerate(spread(office(MON, 15), 12, step))
    ]
    # After the period: not read.
    entries += [entry(t, "police", "zhao", f"q{i}") for i, t in enumerate(spread(midnight(TUE), 6))]
    entries += [entry(t, "tax", "li", f"q{i}") for i, t in enumerate(spread(midnight(TUE), 200))]
    await write(pool, entries)

    found = await find_anomalies(pool, start=midnight(MON), end=midnight(TUE))
    expected = [
        ("many_subjects", "police", "zhao", 100, 100.0, office(MON, 7)),
        ("out_of_hours", "police", "zhao", 6, 5.0, office(MON, 7)),
        ("volume_jump", "tax", None, 60, 10.0, office(MON, 10)),
        ("volume_jump", "land", None, 50, 1.0, office(MON, 11)),
        ("denial_burst", "health", None, 12, 10.0, office(MON, 15)),
    ]
    assert [
        (a.kind, a.department, a.officer, a.count, a.baseline, a.first_at) for a in found
    ] == expected

    # The same instants given in UTC, read by a session in another time zone: same answer.
    async with asyncpg.create_pool(
        database_url, min_size=1, max_size=1, server_settings={"TimeZone": "America/Los_Angeles"}
    ) as elsewhere:
        again = await find_anomalies(
            elsewhere,
            start=midnight(MON).astimezone(UTC),
            end=midnight(TUE).astimezone(UTC),
        )
    assert again == found


async def test_find_anomalies_counts_the_refusals_in_merged_entries(pool: asyncpg.Pool) -> None:
    recorder = AccessRecorder("node-1")
    fingerprint = "0f" * 32

    def refused(at: datetime, count: int, department: str = "ghost") -> AccessEntry:
        return recorder.entry(
            at=at, department=department, officer=None, action=AUTH_REFUSED,
            purpose=auth_refusal_purpose(count, fingerprint), decision="denied",
            reason="DEPARTMENT_UNKNOWN",
        )  # fmt: skip

    await write(
        pool,
        [
            refused(office(MON, 10), 1),
            refused(office(MON, 10, 0, 1), 9),  # a burst of 10 in two entries
            refused(office(MON, 11), 1, "tax"),
            refused(office(MON, 11, 0, 1), 8, "tax"),  # 9: not a burst
        ],
    )
    found = await find_anomalies(pool, start=midnight(MON), end=midnight(TUE))
    assert [(a.kind, a.department, a.count) for a in found] == [("denial_burst", "ghost", 10)]


async def test_find_anomalies_refuses_bad_periods(pool: asyncpg.Pool) -> None:
    start = midnight(MON)
    with pytest.raises(InvalidArgument, match="at most 31 days") as caught:
        await find_anomalies(pool, start=start, end=start + timedelta(days=60))
    assert caught.value.reason == "INVALID_ARGUMENT"
    with pytest.raises(InvalidArgument, match="start before it ends"):
        await find_anomalies(pool, start=start, end=start)
    with pytest.raises(ValueError, match="timezone-aware"):
        await find_anomalies(pool, start=start.replace(tzinfo=None), end=start)
    assert await find_anomalies(pool, start=start, end=start + timedelta(days=31)) == []
