from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from tongban.signing import Clock, FixedClock, SystemClock

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def test_system_clock_is_aware_utc_and_current() -> None:
    clock: Clock = SystemClock()
    now = clock.now()
    assert now.tzinfo is UTC
    assert abs(now.timestamp() - time.time()) < 5


def test_fixed_clock_advances_and_sets() -> None:
    clock = FixedClock(T0)
    assert clock.now() == T0
    clock.advance(timedelta(hours=1))
    assert clock.now() == T0 + timedelta(hours=1)
    clock.advance(timedelta(minutes=-30))
    assert clock.now() == T0 + timedelta(minutes=30)
    clock.set(T0 + timedelta(days=2))
    assert clock.now() == T0 + timedelta(days=2)


def test_fixed_clock_normalises_to_utc() -> None:
    beijing = timezone(timedelta(hours=8))
    clock = FixedClock(datetime(2025, 3, 1, 20, 0, tzinfo=beijing))
    assert clock.now() == T0
    assert clock.now().tzinfo is UTC


def test_fixed_clock_rejects_naive_datetimes() -> None:
    naive = datetime(2025, 3, 1, 12, 0)  # noqa: DTZ001 - the point of the test
    with pytest.raises(ValueError, match="naive"):
        FixedClock(naive)
    clock = FixedClock(T0)
    with pytest.raises(ValueError, match="naive"):
        clock.set(naive)
    assert clock.now() == T0
