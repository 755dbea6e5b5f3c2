"""``tongban.v1.SubscriptionService``: change events to subscribers, governed like queries.

Each round of a stream reads the next events from the outbox, decides again (so a grant
revoked or expired ends the stream at once), logs the delivery per subject, then sends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import grpc

from tongban.errors import TongbanError
from tongban.exchange.federation.subscriptions import SubscriptionForwarding
from tongban.exchange.identity import Actor
from tongban.exchange.server.caller import current_caller
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
    def __init__(
        self,
        sharing: Sharing,
        events: EventStore,
        feed: EventFeed,
        clock: Clock,
        remote: SubscriptionForwarding | None = None,
    ) -> None:
        """``remote``: subscriptions to peer exchanges' datasets (``<peer>:<code>``), held
        at their owners' exchanges (docs/federation.md); None without federation."""
        self._sharing = sharing
        self._events = events
        self._feed = feed
        self._clock = clock
        self._remote = remote

    async def Subscribe(
        self, request: events_pb2.SubscribeRequest, context: Context
    ) -> AsyncIterator[events_pb2.EventBatch]:
        caller = current_caller()
        after = request.after_position if request.HasField("after_position") else None
        if self._remote is not None and ":" in request.dataset:
            async with contextlib.aclosing(
                self._remote.stream(
                    caller,
                    dataset=request.dataset,
                    fields=list(request.fields),
                    purpose=request.purpose,
                    after_position=after,
                )
            ) as remote:
                async for batch in remote:
                    yield batch
            return
        async with contextlib.aclosing(
            self.stream(caller, request.dataset, list(request.fields), request.purpose, after)
        ) as batches:
            async for batch in batches:
                yield batch

    async def stream(
        self,
        actor: Actor,
        dataset: str,
        fields: Sequence[str],
        purpose: str,
        after_position: int | None,
    ) -> AsyncGenerator[events_pb2.EventBatch, None]:
        """``actor``'s subscription to our ``dataset``, opened (or resumed) and streamed:
        from ``after_position``, or after the position it acknowledged last. Each batch
        is decided again and logged before it is sent. For our departments and for a
        peer's (``PeerService/ForwardSubscribe``)."""
        case_id = "subscription"
        entry, allowed = await self._sharing.authorize(actor, dataset, fields, purpose, case_id)
        subscription = await self._events.open(
            actor.department.code, entry.code, allowed.fields, purpose, self._clock.now()
        )
        case_id = f"subscription:{subscription.id}"
        end = await self._events.end_position(entry.code)
        cursor = after_position if after_position is not None else subscription.acked_position
        if not -1 <= cursor < end and not (cursor == -1 and end == 0):
            raise PositionOutOfRange(
                f"Position {cursor} is outside {entry.code}'s events (-1 to {end - 1}); "
                "resume from your last acknowledged position.",
                metadata={"end": str(end)},
            )
        # Pipelined: the next batch is read, authorised and logged while this one is sent.
        ready: asyncio.Queue[events_pb2.EventBatch | BaseException] = asyncio.Queue(maxsize=2)
        prepare = asyncio.get_running_loop().create_task(
            self._prepare(actor, entry, allowed, purpose, case_id, subscription, cursor, ready)
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
        caller: Actor,
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
        add = batch.events.add  # built in place: an Event made apart is copied in
        for row in rows:
            event = add(
                subscription_id=subscription_id,
                dataset=entry.code,
                position=row.position,
                event_id=str(row.event_id),
                key=row.key,
                version=row.version,
                op=row.op,
            )
            if row.data is not None:
                values = StoredRecord(row.key, row.version, row.at, row.data).values(entry, fields)
                into = event.fields
                for name, value in values.items():
                    if type(value) is str:  # most fields: no FieldValue made and copied
                        into[name].string_value = value
                    else:
                        into[name].CopyFrom(to_field_value(value))
            event.at.FromDatetime(row.at)
        return batch

    async def Acknowledge(
        self, request: events_pb2.AcknowledgeRequest, context: Context
    ) -> events_pb2.AcknowledgeResponse:
        caller = current_caller()
        if self._remote is not None and ":" in request.subscription_id:
            acked = await self._remote.acknowledge(
                caller, request.subscription_id, request.position
            )
            return events_pb2.AcknowledgeResponse(acked_position=acked)
        return await self.acknowledge(
            caller.department.code, request.subscription_id, request.position
        )

    async def acknowledge(
        self, consumer: str, subscription_id: str, position: int
    ) -> events_pb2.AcknowledgeResponse:
        """``consumer``'s acknowledgement (one of our departments, or a peer's by our name
        for it)."""
        acked = await self._events.acknowledge(subscription_id, consumer, position)
        return events_pb2.AcknowledgeResponse(acked_position=acked)

    async def ListSubscriptions(
        self, request: events_pb2.ListSubscriptionsRequest, context: Context
    ) -> events_pb2.ListSubscriptionsResponse:
        caller = current_caller()
        local = await self.subscriptions_of(caller.department.code)
        if self._remote is None:
            return events_pb2.ListSubscriptionsResponse(subscriptions=local)
        # Those held for it at peers' owners too; an owner that cannot be asked is named,
        # never a failure of the whole listing (docs/federation.md).
        held, unlisted = await self._remote.held_at_peers(caller)
        return events_pb2.ListSubscriptionsResponse(
            subscriptions=[*local, *held], unlisted=unlisted
        )

    async def subscriptions_of(self, consumer: str) -> list[events_pb2.Subscription]:
        """``consumer``'s subscriptions here (one of our departments, or a peer's by our
        name for it), with their lag."""
        return [
            events_pb2.Subscription(
                id=str(r.id),
                dataset=r.dataset,
                fields=list(r.fields),
                purpose=r.purpose,
                acked_position=r.acked_position,
                lag_events=r.lag_events,
                lag_seconds=r.lag_seconds,
            )
            for r in await self._events.of_consumer(consumer)
        ]
