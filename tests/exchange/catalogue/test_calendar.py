"""Working days for grant deadlines, with 调休 and a real holiday season."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tongban.exchange.catalogue import WorkingCalendar

BEIJING = timezone(timedelta(hours=8))

# National Day and Mid-Autumn 2025 (State Council notice of November 2024): off 1-8 October, with
# Sunday 28 September and Saturday 11 October worked instead.
NATIONAL_DAY_2025 = WorkingCalendar(
    holidays=frozenset(date(2025, 10, d) for d in range(1, 9)),
    makeup_workdays=frozenset({date(2025, 9, 28), date(2025, 10, 11)}),
)


def _end_of(day: date) -> datetime:
    return datetime.combine(day, time.max, tzinfo=BEIJING)


def test_a_friday_request_for_five_working_days_is_due_at_the_end_of_next_friday() -> None:
    friday = datetime(2025, 9, 19, 17, 30, tzinfo=BEIJING)
    due = WorkingCalendar().add_working_days(friday, 5)
    assert due == _end_of(date(2025, 9, 26))
    assert due.time() == time(23, 59, 59, 999999)
    assert due.tzinfo is BEIJING


def test_national_day_pushes_the_deadline_past_the_holiday() -> None:
    # After Friday 26 September: Sun 28 (makeup) 1, Mon 29 2, Tue 30 3, Thu 9 Oct 4, Fri 10 5.
    start = datetime(2025, 9, 26, 9, 0, tzinfo=BEIJING)
    assert NATIONAL_DAY_2025.add_working_days(start, 5) == _end_of(date(2025, 10, 10))
    assert NATIONAL_DAY_2025.add_working_days(start, 1) == _end_of(date(2025, 9, 28))
    assert NATIONAL_DAY_2025.add_working_days(start, 6) == _end_of(date(2025, 10, 11))
    assert NATIONAL_DAY_2025.working_days_between(date(2025, 9, 26), date(2025, 10, 10)) == 5


@pytest.mark.parametrize(
    ("day", "working"),
    [
        (date(2025, 9, 26), True),  # Friday
        (date(2025, 9, 27), False),  # Saturday
        (date(2025, 9, 28), True),  # Sunday, makeup
        (date(2025, 10, 1), False),  # Wednesday, holiday
        (date(2025, 10, 4), False),  # Saturday within the holiday
        (date(2025, 10, 9), True),  # Thursday
        (date(2025, 10, 11), True),  # Saturday, makeup
        (date(2025, 10, 12), False),  # Sunday
    ],
)
def test_is_working_day(day: date, working: bool) -> None:
    assert NATIONAL_DAY_2025.is_working_day(day) is working


def test_working_days_between_counts_after_start_up_to_end() -> None:
    calendar = WorkingCalendar()
    monday, friday = date(2025, 9, 22), date(2025, 9, 26)
    assert calendar.working_days_between(monday, monday) == 0
    assert calendar.working_days_between(monday, friday) == 4
    assert calendar.working_days_between(friday, monday) == -4
    assert calendar.working_days_between(date(2025, 1, 1), date(2026, 1, 1)) == 261


def test_misuse_raises() -> None:
    start = datetime(2025, 9, 26, tzinfo=BEIJING)
    with pytest.raises(ValueError, match="at least 1"):
        NATIONAL_DAY_2025.add_working_days(start, 0)
    with pytest.raises(ValueError, match="timezone-aware"):
        NATIONAL_DAY_2025.add_working_days(start.replace(tzinfo=None), 1)
    with pytest.raises(TypeError):
        NATIONAL_DAY_2025.is_working_day(start)
    with pytest.raises(TypeError):
        NATIONAL_DAY_2025.working_days_between(start, date(2025, 10, 1))


def test_inconsistent_calendars_are_refused() -> None:
    with pytest.raises(ValueError, match="both"):
        WorkingCalendar(
            holidays=frozenset({date(2025, 9, 28)}), makeup_workdays=frozenset({date(2025, 9, 28)})
        )
    with pytest.raises(ValueError, match="Saturday or Sunday"):
        WorkingCalendar(makeup_workdays=frozenset({date(2025, 9, 29)}))
    with pytest.raises(TypeError):
        WorkingCalendar(holidays=frozenset({datetime(2025, 10, 1, tzinfo=BEIJING)}))


days_2025_2026 = st.dates(min_value=date(2025, 1, 1), max_value=date(2026, 12, 31))


@st.composite
def calendars(draw: st.DrawFn) -> WorkingCalendar:
    holidays = draw(st.frozensets(days_2025_2026, max_size=60))
    weekends = days_2025_2026.filter(lambda d: d.weekday() >= 5)
    makeup = draw(st.frozensets(weekends, max_size=15)) - holidays
    return WorkingCalendar(holidays=holidays, makeup_workdays=makeup)


def _naive_count(calendar: WorkingCalendar, start: date, end: date) -> int:
    days = (start + timedelta(days=n) for n in range(1, (end - start).days + 1))
    return sum(calendar.is_working_day(d) for d in days)


@given(
    calendar=calendars(),
    start=st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2026, 6, 30)),  # noqa: DTZ001
    offset=st.integers(-14, 14),
    days=st.integers(1, 60),
)
def test_deadlines_fall_on_the_nth_working_day(
    calendar: WorkingCalendar, start: datetime, offset: int, days: int
) -> None:
    start = start.replace(tzinfo=timezone(timedelta(hours=offset)))
    due = calendar.add_working_days(start, days)
    assert due.tzinfo is start.tzinfo
    assert due.time() == time.max
    assert calendar.is_working_day(due.date())
    assert _naive_count(calendar, start.date(), due.date()) == days
    assert calendar.working_days_between(start.date(), due.date()) == days


@given(calendar=calendars(), start=days_2025_2026, end=days_2025_2026)
def test_working_days_between_matches_counting_day_by_day(
    calendar: WorkingCalendar, start: date, end: date
) -> None:
    count = calendar.working_days_between(start, end)
    assert count == calendar.working_days_between(end, start) * -1
    if start <= end:
        assert count == _naive_count(calendar, start, end)
