"""Subscriptions and the event outbox, read side (embedded mode: fed from PostgreSQL).

Events are written by ``RecordStore.publish`` in the same transaction as the records.
Streams wait on the ``tongban_events`` notification for their dataset, and poll once a
second as well, so a lost notification delays an event by at most that.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import asyncpg

from tongban.exchange.db.notify import ChangeListener
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.sharing.model import normalise_purpose

__all__ = [
    "EVENTS_CHANNEL",
    "EventFeed",
    "EventRow",
    "EventStore",
    "EventWaker",
    "PostgresFeed",
    "SubscriptionRow",
]

EVENTS_CHANNEL = "tongban_events"
_MAX_POSITION = 2**63 - 1  # positions are bigint columns


@dataclass(frozen=True)
class SubscriptionRow:
    id: uuid.UUID
    consumer: str
    dataset: str
    fields: tuple[str, ...]
    purpose: str
    acked_position: int
    lag_events: int = 0
    lag_seconds: float = 0.0


@dataclass(frozen=True)
class EventRow:
    position: int
    event_id: uuid.UUID
    key: str
    version: int
    op: str
    data: dict[str, Any] | None
    at: datetime


class EventWaker:
    """Wakes the streams of a dataset when PostgreSQL notifies new events."""

    def __init__(self, listener: ChangeListener) -> None:
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self._last: dict[str, float] = {}
        listener.subscribe(EVENTS_CHANNEL, self._notified)

    def _notified(self, dataset: str) -> None:
        self._last[dataset] = time.monotonic()
        for event in self._waiting.get(dataset, ()):
            event.set()

    def last_notified(self, dataset: str) -> float:
        """When (``time.monotonic()``) ``dataset`` last had new events; 0 if never seen."""
        return self._last.get(dataset, 0.0)

    async def wait(self, dataset: str, within: float = 1.0, *, since: float = 0.0) -> None:
        """Return when ``dataset`` has new events, or after ``within`` seconds; at once if
        it was notified after ``since`` (a ``last_notified`` value read before the caller
        looked, so that a notification arriving meanwhile is not missed)."""
        if self._last.get(dataset, 0.0) > since > 0.0:
            return
        event = asyncio.Event()
        self._waiting.setdefault(dataset, set()).add(event)
        try:
            async with asyncio.timeout(within):
                await event.wait()
        except TimeoutError:
            pass
        finally:
            waiting = self._waiting.get(dataset)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiting[dataset]


def _subscription(row: asyncpg.Record) -> SubscriptionRow:
    return SubscriptionRow(
        id=row["id"],
        consumer=row["consumer"],
        dataset=row["dataset"],
        fields=tuple(row["fields"]),
        purpose=row["purpose"],
        acked_position=row["acked_position"],
    )


class EventStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def open(
        self, consumer: str, dataset: str, fields: Sequence[str], purpose: str, now: datetime
    ) -> SubscriptionRow:
        """The consumer's subscription for (dataset, purpose), created or updated to
        ``fields``."""
        row = await self._pool.fetchrow(
            """
            INSERT INTO subscription
                (id, consumer, dataset, fields, purpose, created_at, updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, $6)
            ON CONFLICT (consumer, dataset, purpose) DO UPDATE
                SET fields = EXCLUDED.fields, updated_at = EXCLUDED.updated_at
            RETURNING *
            """,
            uuid.uuid4(),
            consumer,
            dataset,
            list(dict.fromkeys(fields)),
            normalise_purpose(purpose),
            now,
        )
        assert row is not None
        return _subscription(row)

    async def end_position(self, dataset: str) -> int:
        """The position the next event of ``dataset`` will get (= how many there are)."""
        value = await self._pool.fetchval(
            "SELECT next_position FROM dataset_stream WHERE dataset = $1", dataset
        )
        return int(value or 0)

    async def after(self, dataset: str, position: int, limit: int = 1000) -> list[EventRow]:
        rows = await self._pool.fetch(
            "SELECT position, event_id, key, version, op, data, at FROM change_event"
            " WHERE dataset = $1 AND position > $2 ORDER BY position LIMIT $3",
            dataset,
            position,
            limit,
        )
        return [
            EventRow(
                r["position"],
                r["event_id"],
                r["key"],
                r["version"],
                r["op"],
                json.loads(r["data"]) if r["data"] is not None else None,
                r["at"],
            )
            for r in rows
        ]

    async def kafka_start(self, topic: str) -> dict[int, int]:
        """The offset per partition of ``topic`` after the relay's last acknowledged batch."""
        rows = await self._pool.fetch(
            "SELECT partition, next_offset FROM kafka_progress WHERE topic = $1", topic
        )
        return {r["partition"]: r["next_offset"] for r in rows}

    async def unpublished(self) -> int:
        """Events in the outbox the relay has not yet published to Kafka."""
        return int(
            await self._pool.fetchval(
                "SELECT count(*) FROM event_outbox WHERE published_at IS NULL"
            )
        )

    async def acknowledge(self, subscription_id: str, consumer: str, position: int) -> int:
        """Move the acknowledged position forward (never back); return it."""
        try:
            sid = uuid.UUID(subscription_id)
        except ValueError:
            raise InvalidArgument(
                f"{subscription_id[:60]!r} is not a subscription id (a UUID).",
                metadata={"field": "subscription_id"},
            ) from None
        if not -1 <= position <= _MAX_POSITION:
            raise InvalidArgument(
                f"Position {position} is not one: positions count from 0 (-1: none yet).",
                metadata={"field": "position"},
            )
        # One statement on the common path; the reason for a refusal is looked up after.
        value = await self._pool.fetchval(
            """
            UPDATE subscription s SET acked_position = greatest(s.acked_position, $3::bigint)
            FROM dataset_stream ds
            WHERE s.id = $1 AND s.consumer = $2 AND ds.dataset = s.dataset
              AND $3::bigint >= -1 AND $3::bigint < ds.next_position
            RETURNING s.acked_position
            """,
            sid,
            consumer,
            position,
        )
        if value is not None:
            return int(value)
        row = await self._pool.fetchrow(
            "SELECT dataset FROM subscription WHERE id = $1 AND consumer = $2", sid, consumer
        )
        if row is None:
            raise InvalidArgument(
                f"No subscription {subscription_id[:60]} of yours exists.",
                metadata={"field": "subscription_id"},
            )
        end = await self.end_position(row["dataset"])
        raise InvalidArgument(
            f"Position {position} is beyond the end of {row['dataset']} (last is {end - 1}).",
            metadata={"field": "position"},
        )

    async def of_consumer(self, consumer: str | None) -> list[SubscriptionRow]:
        """The subscriptions of ``consumer`` (None: of everyone), with their lag."""
        rows = await self._pool.fetch(
            """
            SELECT s.*,
                   coalesce(ds.next_position, 0) - 1 - s.acked_position AS lag_events,
                   coalesce(extract(epoch FROM now() - (
                       SELECT e.at FROM event_outbox e
                       WHERE e.dataset = s.dataset AND e.position = s.acked_position + 1
                   )), 0) AS lag_seconds
            FROM subscription s LEFT JOIN dataset_stream ds ON ds.dataset = s.dataset
            WHERE $1::text IS NULL OR s.consumer = $1
            ORDER BY s.consumer, s.dataset, s.purpose
            """,
            consumer,
        )
        return [
            SubscriptionRow(
                id=r["id"],
                consumer=r["consumer"],
                dataset=r["dataset"],
                fields=tuple(r["fields"]),
                purpose=r["purpose"],
                acked_position=r["acked_position"],
                lag_events=int(r["lag_events"]),
                lag_seconds=float(r["lag_seconds"]),
            )
            for r in rows
        ]


class EventFeed(Protocol):
    """Where a subscription stream gets its events from."""

    def batches(self, dataset: str, after: int) -> AsyncGenerator[list[EventRow], None]:
        """Yield the events of ``dataset`` after position ``after``, forever: each batch
        non-empty, contiguous, continuing exactly where the previous one ended."""
        ...


class PostgresFeed:
    """Embedded mode: events read from the outbox by position, woken by NOTIFY."""

    def __init__(self, store: EventStore, waker: EventWaker) -> None:
        self._store = store
        self._waker = waker

    async def batches(self, dataset: str, after: int) -> AsyncGenerator[list[EventRow], None]:
        cursor = after
        while True:
            seen = self._waker.last_notified(dataset) or time.monotonic()
            rows = await self._store.after(dataset, cursor)
            if not rows:
                await self._waker.wait(dataset, since=seen)
                continue
            yield rows
            cursor = rows[-1].position
