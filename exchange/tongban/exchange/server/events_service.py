"""``tongban.v1.SubscriptionService``: change events to subscribers, governed like queries.

Each round of a stream reads the next events from the outbox, decides again (so a grant
revoked or expired ends the stream at once), logs the delivery per subject, then sends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from tongban.errors import TongbanError
from tongban.exchange.server.caller import Caller, current_caller
from tongban.exchange.server.timestamps import timestamp
from tongban.exchange.sharing.events import EventFeed, EventRow, EventStore, SubscriptionRow
from tongban.exchange.sharing.model import DatasetEntry
from tongban.exchange.sharing.policy import Allowed
from tongban.exchange.sharing.records import StoredRecord
from tongban.exchange.sharing.service import Sharing
from tongban.signing.clock import Clock
from tongban.v1 import events_pb2, events_pb2_grpc
from tongban.wire.values import to_field_value

__all__ = ["PositionOutOfRange", "SubscriptionService"]

Context = grpc.aio.ServicerContext[Any, Any]


class PositionOutOfRange(TongbanError):
    reason = "POSITION_OUT_OF_RANGE"
    status = "OUT_OF_RANGE"


class SubscriptionService(events_pb2_grpc.SubscriptionServiceServicer):
    def __init__(self, sharing: Sharing, events: EventStore, feed: EventFeed, clock: Clock) -> None:
        self._sharing = sharing
        self._events = events
        self._feed = feed
        self._clock = clock

    async def Subscribe(
        self, request: events_pb2.SubscribeRequest, context: Context
    ) -> AsyncIterator[events_pb2.EventBatch]:
        caller = current_caller()
        fields = list(request.fields)
        case_id = "subscription"
        entry, allowed = await self._sharing.authorize(
            caller, request.dataset, fields, request.purpose, case_id
        )
        subscription = await self._events.open(
            caller.department.code, entry.code, allowed.fields, request.purpose, self._clock.now()
        )
        case_id = f"subscription:{subscription.id}"
        end = await self._events.end_position(entry.code)
        cursor = (
            request.after_position
            if request.HasField("after_position")
            else subscription.acked_position
        )
        if not -1 <= cursor < end and not (cursor == -1 and end == 0):
            raise PositionOutOfRange(
                f"Position {cursor} is outside {entry.code}'s events (-1 to {end - 1}); "
                "resume from your last acknowledged position.",
                metadata={"end": str(end)},
            )
        # Pipelined: the next batch is read, authorised and logged while this one is sent.
        ready: asyncio.Queue[events_pb2.EventBatch | BaseException] = asyncio.Queue(maxsize=2)
        prepare = asyncio.get_running_loop().create_task(
            self._prepare(
                caller, entry, allowed, request.purpose, case_id, subscription, cursor, ready
            )
        )
        try:
            while True:
                item = await ready.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            prepare.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prepare

    async def _prepare(
        self,
        caller: Caller,
        entry: DatasetEntry,
        allowed: Allowed,
        purpose: str,
        case_id: str,
        subscription: SubscriptionRow,
        cursor: int,
        ready: asyncio.Queue[events_pb2.EventBatch | BaseException],
    ) -> None:
        """Fill ``ready`` with batches to send; put the error that ends the stream last."""
        try:
            async with contextlib.aclosing(self._feed.batches(entry.code, cursor)) as batches:
                async for rows in batches:
                    # Decide again each batch: a revoked or expired grant stops delivery.
                    entry, allowed = await self._sharing.authorize(
                        caller, entry.code, allowed.fields, purpose, case_id
                    )
                    await self._sharing.log_delivery(
                        caller, entry, allowed, purpose, case_id, [r.key for r in rows]
                    )
                    await ready.put(self._batch(subscription, entry, allowed.fields, rows))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - handed to the stream, which raises it
            await ready.put(e)

    @staticmethod
    def _batch(
        subscription: SubscriptionRow,
        entry: DatasetEntry,
        fields: Sequence[str],
        rows: Sequence[EventRow],
    ) -> events_pb2.EventBatch:
        subscription_id = str(subscription.id)
        batch = events_pb2.EventBatch()
        for row in rows:
            values = (
                StoredRecord(row.key, row.version, row.at, row.data).values(entry, fields)
                if row.data is not None
                else {}
            )
            batch.events.append(
                events_pb2.Event(
                    subscription_id=subscription_id,
                    dataset=entry.code,
                    position=row.position,
                    event_id=str(row.event_id),
                    key=row.key,
                    version=row.version,
                    op=row.op,
                    fields={name: to_field_value(v) for name, v in values.items()},
                    at=timestamp(row.at),
                )
            )
        return batch

    async def Acknowledge(
        self, request: events_pb2.AcknowledgeRequest, context: Context
    ) -> events_pb2.AcknowledgeResponse:
        acked = await self._events.acknowledge(
            request.subscription_id, current_caller().department.code, request.position
        )
        return events_pb2.AcknowledgeResponse(acked_position=acked)

    async def ListSubscriptions(
        self, request: events_pb2.ListSubscriptionsRequest, context: Context
    ) -> events_pb2.ListSubscriptionsResponse:
        rows = await self._events.of_consumer(current_caller().department.code)
        return events_pb2.ListSubscriptionsResponse(
            subscriptions=[
                events_pb2.Subscription(
                    id=str(r.id),
                    dataset=r.dataset,
                    fields=list(r.fields),
                    purpose=r.purpose,
                    acked_position=r.acked_position,
                    lag_events=r.lag_events,
                    lag_seconds=r.lag_seconds,
                )
                for r in rows
            ]
        )
