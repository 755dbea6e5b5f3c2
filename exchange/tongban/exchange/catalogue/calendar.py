"""Working days (工作日) for grant deadlines.

China's public holidays move every year and are paid for with 调休: weekend days that
become working days. A ``WorkingCalendar`` holds both lists for the years it covers (the
State Council publishes them each autumn); it knows nothing else, so it is only as right
as the lists it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

__all__ = ["WorkingCalendar"]

_ONE_DAY = timedelta(days=1)


@dataclass(frozen=True)
class WorkingCalendar:
    """Which days are working days: Monday to Friday, less holidays, plus makeup days.

    Raises ``ValueError`` if a day is both a holiday and a makeup workday or a makeup
    workday is not a Saturday or Sunday, and ``TypeError`` if either set holds a
    ``datetime`` (which never equals a ``date``, so would silently never match).
    """

    holidays: frozenset[date] = frozenset()
    """Days off that would otherwise be working days (法定节假日 and their bridges)."""
    makeup_workdays: frozenset[date] = frozenset()
    """Saturdays and Sundays that are working days (调休上班)."""

    def __post_init__(self) -> None:
        for day in self.holidays | self.makeup_workdays:
            if isinstance(day, datetime):
                raise TypeError(f"calendar days must be dates, not datetimes: {day}")
        if both := sorted(self.holidays & self.makeup_workdays):
            raise ValueError(f"{both[0]} is both a holiday and a makeup workday")
        if weekdays := sorted(d for d in self.makeup_workdays if d.weekday() < 5):
            raise ValueError(f"makeup workday {weekdays[0]} is not a Saturday or Sunday")

    def is_working_day(self, day: date) -> bool:
        """Return whether ``day`` is a working day.

        Raises ``TypeError`` for a ``datetime``: which day it falls on depends on a
        timezone, so pass ``dt.date()`` in the timezone that matters.
        """
        if isinstance(day, datetime):
            raise TypeError("is_working_day takes a date; pass datetime.date() instead")
        if day in self.makeup_workdays:
            return True
        return day.weekday() < 5 and day not in self.holidays

    def add_working_days(self, start: datetime, days: int) -> datetime:
        """Return the deadline ``days`` working days after ``start``.

        The deadline is the last instant (23:59:59.999999, in ``start``'s tzinfo) of the
        ``days``-th working day after ``start``'s date; the start day itself never
        counts, whatever time the request arrived. Raises ``ValueError`` if ``start`` is
        naive or ``days`` is less than 1.
        """
        if start.utcoffset() is None:
            raise ValueError("add_working_days needs a timezone-aware start")
        if isinstance(days, bool) or days < 1:
            raise ValueError(f"add_working_days needs at least 1 working day, not {days}")
        day = start.date()
        remaining = days
        while remaining:
            day += _ONE_DAY
            if self.is_working_day(day):
                remaining -= 1
        return datetime.combine(day, time.max, tzinfo=start.tzinfo)

    def working_days_between(self, start: date, end: date) -> int:
        """Return the number of working days after ``start`` up to and including ``end``.

        This counts the days in ``(start, end]``, the interval ``add_working_days``
        counts, so ``working_days_between(s.date(), add_working_days(s, n).date()) == n``.
        When ``end`` is before ``start`` it returns minus the count in ``(end, start]``.
        Raises ``TypeError`` for a ``datetime`` (see ``is_working_day``).
        """
        if isinstance(start, datetime) or isinstance(end, datetime):
            raise TypeError("working_days_between takes dates; pass datetime.date() instead")
        if end < start:
            return -self.working_days_between(end, start)
        count = _weekdays_through(end) - _weekdays_through(start)
        count -= sum(1 for d in self.holidays if start < d <= end and d.weekday() < 5)
        count += sum(1 for d in self.makeup_workdays if start < d <= end)
        return count


def _weekdays_through(day: date) -> int:
    """Return the number of Mondays to Fridays from 0001-01-01 (a Monday) to ``day``."""
    weeks, extra = divmod(day.toordinal(), 7)
    return weeks * 5 + min(extra, 5)
