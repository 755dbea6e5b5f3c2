"""The injected source of "now", so that time-dependent checks are testable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "FixedClock", "SystemClock"]


class Clock(Protocol):
    """Anything that can tell the current time."""

    def now(self) -> datetime:
        """Return the current time as a timezone-aware UTC datetime."""
        ...


def _require_aware(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{at!r} is a naive datetime; pass a timezone-aware one (e.g. tz=UTC).")
    return at.astimezone(UTC)


class SystemClock:
    """The real wall clock."""

    def now(self) -> datetime:
        """Return the system time in UTC."""
        return datetime.now(UTC)


class FixedClock:
    """A clock that only moves when told to; for tests and replays."""

    def __init__(self, at: datetime) -> None:
        """Start at ``at``; raises ValueError if ``at`` is naive."""
        self._at = _require_aware(at)

    def now(self) -> datetime:
        """Return the fixed time in UTC."""
        return self._at

    def advance(self, delta: timedelta) -> None:
        """Move the clock by ``delta`` (which may be negative)."""
        self._at += delta

    def set(self, at: datetime) -> None:
        """Jump to ``at``; raises ValueError if ``at`` is naive."""
        self._at = _require_aware(at)
