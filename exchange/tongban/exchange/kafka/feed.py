"""Kafka mode: subscription streams fed from Kafka, with PostgreSQL as the source of truth.

A stream first reads the outbox from its resume position up to now (PostgreSQL), then
tails the dataset's topic from the offsets the relay recorded *before* that read. Every
event committed after the read reaches Kafka after those offsets, so nothing falls
between the two (docs/events.md has the argument). From then on the node reads Kafka,
which many nodes and consumers can share.

Kafka's partitions each keep their subjects in order but interleave with each other, and
a relay that restarts may publish an event twice; the stream puts events back in
position order with a small buffer and drops what it has already delivered. If the next
position does not arrive within ``gap_seconds`` of PostgreSQL announcing it (the broker
is down, or lost a message), the stream reads it from the outbox instead: Kafka is the
fast path, never the only one. A stream that is to start reading Kafka while the brokers
cannot be reached is served from the outbox, waking on PostgreSQL's notifications, and
tries Kafka again every ``KAFKA_RETRY_SECONDS``.

Messages are opened with the nodes' payload keys (``sealing``) before anything else looks
at them. One the node cannot open — sealed with a key it does not hold, failing
authentication (tampered, or a blob moved from another message), or not a sealed
Tongban event — is never delivered: it is logged, counted (``on_rejected``) and skipped,
and its position then comes from the outbox like any message Kafka lost. So a subscriber
receives every event, and only ones a node wrote or read from PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from tongban.exchange.errors import BrokerUnavailable, KafkaSecurityFailed
from tongban.exchange.kafka._lifecycle import close_detached
from tongban.exchange.kafka.connection import KafkaConnection, start_client
from tongban.exchange.kafka.sealing import MessageRejected, PayloadKeys, Rejection, open_event
from tongban.exchange.kafka.topics import KafkaTopics
from tongban.exchange.sharing.events import EventRow, EventStore, EventWaker

__all__ = ["KafkaFeed"]

_log = logging.getLogger(__name__)

#: Poll the outbox at least this often even without a notification (a lost NOTIFY).
_SAFETY_POLL = 10.0

KAFKA_RETRY_SECONDS = 5.0
"""While Kafka cannot be reached, how often a stream served from the outbox tries it."""


class KafkaFeed:
    """Feeds subscription streams from Kafka; see the module docstring."""

    def __init__(
        self,
        store: EventStore,
        waker: EventWaker,
        topics: KafkaTopics,
        *,
        connection: KafkaConnection,
        keys: PayloadKeys,
        gap_seconds: float = 2.0,
        on_rejected: Callable[[Rejection], None] | None = None,
    ) -> None:
        self._store = store
        self._waker = waker
        self._topics = topics
        self._connection = connection
        self._keys = keys
        self._gap = gap_seconds
        self._on_rejected = on_rejected or (lambda kind: None)
        self.gap_fills = 0
        """Batches read from the outbox because Kafka had not delivered them in time."""
        self.opened = 0
        """Messages read from Kafka and opened: authentic, under a key this node holds."""
        self.outbox_while_down = 0
        """Times a stream was served from the outbox because Kafka could not be reached
        when it was to start reading it."""

    async def batches(self, dataset: str, after: int) -> AsyncGenerator[list[EventRow], None]:
        topic = self._topics.name(dataset)
        start = await self._store.kafka_start(topic)
        cursor = after
        # Catch up from the outbox: everything committed before the tail's start offsets.
        while rows := await self._store.after(dataset, cursor):
            yield rows
            cursor = rows[-1].position
        while True:
            try:
                consumer = await self._consumer(dataset, topic, start)
                break
            except KafkaSecurityFailed:
                raise  # the node's Kafka settings are wrong: say so, waiting will not help
            except BrokerUnavailable as e:
                # Kafka is the fast path, never the only one: a stream that opens (or
                # catches up) while the brokers are down is served from the outbox until
                # they are back, instead of ending.
                _log.warning(
                    "Kafka unreachable for %s (%s); serving it from the outbox, trying "
                    "Kafka again in %g s",
                    dataset,
                    e.message,
                    KAFKA_RETRY_SECONDS,
                )
                self.outbox_while_down += 1
                retry_at = time.monotonic() + KAFKA_RETRY_SECONDS
                while (now := time.monotonic()) < retry_at:
                    since = self._waker.last_notified(dataset)
                    while rows := await self._store.after(dataset, cursor):
                        yield rows
                        cursor = rows[-1].position
                    await self._waker.wait(dataset, within=retry_at - now, since=since)
        try:
            async for batch in self._tail(dataset, consumer, cursor):
                yield batch
        finally:
            await close_detached(consumer.stop)

    async def _consumer(self, dataset: str, topic: str, start: dict[int, int]) -> AIOKafkaConsumer:
        counts = await self._topics.ensure([dataset])
        consumer = AIOKafkaConsumer(
            **self._connection.kwargs,
            enable_auto_commit=False,
            # A broker that lost the topic (restarted, retention) restarts from its start.
            auto_offset_reset="earliest",
            request_timeout_ms=10_000,
        )
        await start_client(self._connection, consumer.start, consumer.stop)
        partitions = [TopicPartition(topic, p) for p in range(counts[topic])]
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, start.get(tp.partition, 0))
        return consumer

    async def _tail(
        self, dataset: str, consumer: AIOKafkaConsumer, cursor: int
    ) -> AsyncGenerator[list[EventRow], None]:
        pending: dict[int, EventRow] = {}
        advanced = time.monotonic()
        polled = advanced
        while True:
            try:
                got = await consumer.getmany(timeout_ms=200, max_records=2000)
            except KafkaError as e:
                _log.warning("Kafka read for %s failed (%s); retrying", dataset, e)
                got = {}
                await asyncio.sleep(0.5)
            for messages in got.values():
                for message in messages:
                    if message.value is None:
                        continue
                    row = self._open(dataset, message)
                    if row is not None and row.position > cursor:
                        pending[row.position] = row
            ready: list[EventRow] = []
            while cursor + 1 in pending:
                cursor += 1
                ready.append(pending.pop(cursor))
            now = time.monotonic()
            if ready:
                advanced = now
                yield ready
            elif self._late(dataset, advanced, polled, now):
                # Read the outbox to its end (Kafka may be down with a long backlog).
                polled = now
                while filled := await self._store.after(dataset, cursor):
                    self.gap_fills += 1
                    cursor = filled[-1].position
                    pending = {p: r for p, r in pending.items() if p > cursor}
                    advanced = time.monotonic()
                    yield filled

    def _open(self, dataset: str, message: Any) -> EventRow | None:
        """The event of a message, or None (logged and counted) if it is not delivered."""
        try:
            row = open_event(self._keys, message.value, message.headers, dataset=dataset)
        except MessageRejected as e:
            self._on_rejected(e.kind)
            _log.error(
                "Kafka message %s[%d]@%d not delivered (%s): %s; subscribers get the "
                "event from an authentic copy or from PostgreSQL",
                message.topic,
                message.partition,
                message.offset,
                e.kind,
                e.message,
            )
            return None
        self.opened += 1
        return row

    def _late(self, dataset: str, advanced: float, polled: float, now: float) -> bool:
        """Whether to read the outbox: PostgreSQL announced events more than the gap
        ago and Kafka has brought nothing since, or the safety poll is due."""
        announced = self._waker.last_notified(dataset)
        if announced > max(advanced, polled) and now - announced > self._gap:
            return True
        return now - max(advanced, polled) > _SAFETY_POLL
