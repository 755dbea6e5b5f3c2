"""The auditors' volume chart counts each day in the offices' zone, whatever the offset."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from tongban.exchange.audit.leaf import AccessEntry
from tongban.exchange.audit.log import AccessLog
from tongban.exchange.audit.store import AuditStore
from tongban.exchange.db.migrate import apply_migrations


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    conn = await asyncpg.connect(database_url)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    created = await asyncpg.create_pool(database_url, min_size=1, max_size=3)
    assert created is not None
    yield created
    await created.close()


def _entry(at: datetime, caller: str) -> AccessEntry:
    return AccessEntry(
        at=at, node="test", caller=caller, officer=None, action="query", dataset=None,
        fields=(), purpose=None, case_id=None, subject_hmac=None, decision="allowed",
        reason=None,
    )  # fmt: skip


async def test_days_are_counted_in_the_offices_zone(pool: asyncpg.Pool) -> None:
    log = AccessLog(pool)
    await log.start()
    try:
        await log.append(
            [
                # 2027-03-01 in Beijing: from 2027-02-28T16:00Z up to 2027-03-01T16:00Z.
                _entry(datetime(2027, 2, 28, 15, 59, 59, tzinfo=UTC), "tax"),  # 02-28 23:59
                _entry(datetime(2027, 2, 28, 16, 0, tzinfo=UTC), "tax"),  # 03-01 00:00
                _entry(datetime(2027, 3, 1, 15, 59, tzinfo=UTC), "tax"),  # 03-01 23:59
                _entry(datetime(2027, 3, 1, 16, 0, tzinfo=UTC), "hrss"),  # 03-02 00:00
                _entry(datetime(2027, 3, 5, 0, 0, tzinfo=UTC), "hrss"),  # after the window
            ]
        )
    finally:
        await log.stop()
    store = AuditStore(pool)
    beijing = await store.daily_volume(date(2027, 2, 28), 3, timedelta(hours=8))
    assert beijing == {"tax": [1, 2, 0], "hrss": [0, 0, 1]}
    # The same entries counted in UTC-5 (an office elsewhere): its own days.
    western = await store.daily_volume(date(2027, 2, 28), 3, timedelta(hours=-5))
    assert western == {"tax": [2, 1, 0], "hrss": [0, 1, 0]}
