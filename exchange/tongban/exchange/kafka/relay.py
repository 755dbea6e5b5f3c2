"""The outbox relay: publishes committed change events to Kafka, then marks them published.

Every node runs a relay, and one of them leads: the one holding a PostgreSQL session
advisory lock on a connection of its own. When that connection ends (the node died, the
network split), PostgreSQL frees the lock and another node's relay takes over, starting
from the events not yet marked. So events are published in position order per dataset
by one relay at a time; a relay that dies between the broker's acknowledgement and the
mark makes the next leader publish those events again, with the same ids and positions
(at-least-once; consumers drop duplicates by position or event id).

While the broker is down the outbox grows; the relay retries with exponential backoff
(0.1 s doubling to 5 s) and drains the backlog when the broker returns.

Every message is sealed (``sealing``): which fields may travel in clear is read from the
catalogue for each batch, after its events, so a schema version committed before an
event is always seen with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.producer.message_accumulator import BatchBuilder
from asyncpg.pool import PoolConnectionProxy

from tongban.exchange.catalogue.schema import DatasetSchema, schema_from_json
from tongban.exchange.db.guard import held_for_long
from tongban.exchange.db.notify import ChangeListener
from tongban.exchange.db.trouble import DRIVER_ERRORS
from tongban.exchange.errors import BrokerUnavailable
from tongban.exchange.kafka._lifecycle import close_detached
from tongban.exchange.kafka.connection import KafkaConnection, start_client
from tongban.exchange.kafka.partitioning import partition_for
from tongban.exchange.kafka.sealing import (
    PayloadKeys,
    SealedMessage,
    TopicFields,
    seal_events,
    topic_fields,
)
from tongban.exchange.kafka.topics import KafkaTopics
from tongban.exchange.sharing.events import EVENTS_CHANNEL, EventRow
from tongban.signing.clock import Clock

__all__ = ["RELAY_LOCK", "OutboxRelay"]

_log = logging.getLogger(__name__)

#: The advisory lock key the leading relay holds (the bytes of "tb-relay" as a bigint).
RELAY_LOCK = int.from_bytes(b"tb-relay", "big", signed=True)

_DB_ERRORS = DRIVER_ERRORS
#: The most bytes of one partition's record batch: a relay round (1,000 events of ~600
#: bytes) fits in one batch per partition, well under the brokers' 1 MiB message limit.
_BATCH_BYTES = 256 * 1024
_FIRST_BACKOFF = 0.1
_MAX_BACKOFF = 5.0

_UNPUBLISHED = """
    SELECT dataset, position, event_id, key, version, op, data::text AS data, at
    FROM change_event WHERE published_at IS NULL
    ORDER BY dataset, position LIMIT $1
"""

_SCHEMAS = """
    SELECT dataset, schema::text AS schema FROM dataset_version WHERE dataset = ANY($1::text[])
"""

# One statement, so one round trip and one transaction: the events marked published and
# the partitions' offsets after them recorded together (what the Kafka feed starts from).
_MARK = """
    WITH marked AS (
        UPDATE event_outbox SET published_at = $6
        FROM unnest($1::text[], $2::bigint[]) AS u (dataset, position)
        WHERE event_outbox.dataset = u.dataset AND event_outbox.position = u.position
    )
    INSERT INTO kafka_progress (topic, partition, next_offset, updated_at)
    SELECT t, p, o, $6 FROM unnest($3::text[], $4::int[], $5::bigint[]) AS u (t, p, o)
    ON CONFLICT (topic, partition) DO UPDATE
        SET next_offset = EXCLUDED.next_offset, updated_at = EXCLUDED.updated_at
"""


class OutboxRelay:
    """Relays the outbox to Kafka while this node leads; see the module docstring.

    ``start()`` spawns the loop, ``stop()`` ends it, flushing nothing half-done: events
    sent but not marked are sent again by the next leader.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        listener: ChangeListener,
        topics: KafkaTopics,
        clock: Clock,
        *,
        connection: KafkaConnection,
        keys: PayloadKeys,
        idempotence: bool,
        batch: int = 1000,
        on_published: Callable[[int], None] | None = None,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self._pool = pool
        self._topics = topics
        self._clock = clock
        self._connection = connection
        self._keys = keys
        self._idempotence = idempotence
        self._batch = batch
        self._on_published = on_published or (lambda n: None)
        self._on_error = on_error or (lambda: None)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.leading = False
        listener.subscribe(EVENTS_CHANNEL, lambda _dataset: self._wake.set())

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        backoff = _FIRST_BACKOFF
        while True:
            try:
                async with self._leadership() as conn:
                    backoff = _FIRST_BACKOFF
                    await self._relay(conn)
            except _DB_ERRORS as e:
                _log.warning("outbox relay lost its database connection (%s); retrying", e)
            self.leading = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    @contextlib.asynccontextmanager
    async def _leadership(self) -> Any:
        """Yield a connection holding the relay lock, waiting until this node gets it."""
        conn = await self._pool.acquire()
        held_for_long(conn)
        try:
            # Polled: PostgreSQL has no way to be told when another session's lock frees.
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK):  # noqa: ASYNC110
                await asyncio.sleep(1.0)
            self.leading = True
            _log.info("this node now relays the event outbox to Kafka")
            try:
                yield conn
            finally:
                self.leading = False
                if not conn.is_closed():
                    # Shielded: the lock must not outlive the relay on a pooled connection.
                    await asyncio.shield(self._unlock(conn))
        finally:
            await self._pool.release(conn)

    @staticmethod
    async def _unlock(conn: PoolConnectionProxy[asyncpg.Record]) -> None:
        with contextlib.suppress(*_DB_ERRORS):
            await conn.execute("SELECT pg_advisory_unlock($1)", RELAY_LOCK)

    async def _relay(self, conn: PoolConnectionProxy[asyncpg.Record]) -> None:
        producer: AIOKafkaProducer | None = None
        backoff = _FIRST_BACKOFF
        try:
            while True:
                self._wake.clear()
                rows = await conn.fetch(_UNPUBLISHED, self._batch)
                if not rows:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await self._wake.wait()
                    continue
                fields = await self._topic_fields(conn, {r["dataset"] for r in rows})
                try:
                    if producer is None:
                        producer = await self._producer()
                    offsets = await self._send(producer, rows, fields)
                except (KafkaError, BrokerUnavailable) as e:
                    self._on_error()
                    _log.warning(
                        "Kafka unavailable (%s); %d+ events wait in the outbox, retrying in %.1f s",
                        e,
                        len(rows),
                        backoff,
                    )
                    self._topics.forget()
                    if producer is not None:
                        await close_detached(producer.stop)
                        producer = None
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF)
                    continue
                backoff = _FIRST_BACKOFF
                await self._mark(conn, rows, offsets, self._clock.now())
                self._on_published(len(rows))
        finally:
            if producer is not None:
                await close_detached(producer.stop)

    async def _producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            **self._connection.kwargs,
            acks="all",
            enable_idempotence=self._idempotence,
            linger_ms=5,
            max_batch_size=_BATCH_BYTES,
            request_timeout_ms=10_000,
            retry_backoff_ms=200,
        )
        await start_client(self._connection, producer.start, producer.stop)
        return producer

    @staticmethod
    async def _topic_fields(
        conn: PoolConnectionProxy[asyncpg.Record], datasets: set[str]
    ) -> dict[str, TopicFields]:
        """What may travel in clear, per dataset, from every version of its schema."""
        versions: dict[str, list[DatasetSchema]] = {d: [] for d in datasets}
        for r in await conn.fetch(_SCHEMAS, sorted(datasets)):
            versions[r["dataset"]].append(schema_from_json(json.loads(r["schema"])))
        return {d: topic_fields(v) for d, v in versions.items()}

    async def _send(
        self,
        producer: AIOKafkaProducer,
        rows: list[asyncpg.Record],
        fields: dict[str, TopicFields],
    ) -> dict[tuple[str, int], int]:
        """Send ``rows`` in order and wait for every acknowledgement; return the offset
        after the last one per (topic, partition).

        The messages go in record batches built here, one per partition at a time
        (``send_batch``), rather than one ``send`` each: that call costs more Python than
        sealing the message. Each message goes to the partition the producer's default
        partitioner would choose (murmur2 of its key, ``partitioning``), as before, so
        one subject's events stay on one partition; a partition's batches are queued in
        order.
        """
        await self._topics.ensure({r["dataset"] for r in rows})
        by_dataset: dict[str, list[EventRow]] = {}
        for r in rows:
            data = json.loads(r["data"]) if r["data"] is not None else None
            row = EventRow(
                r["position"], r["event_id"], r["key"], r["version"], r["op"], data, r["at"]
            )
            by_dataset.setdefault(r["dataset"], []).append(row)
        sent: list[tuple[asyncio.Future[Any], BatchBuilder]] = []
        for dataset, events in by_dataset.items():
            topic = self._topics.name(dataset)
            partitions = sorted(await producer.partitions_for(topic))
            open_batches: dict[int, BatchBuilder] = {}
            for message in seal_events(self._keys, dataset, events, fields[dataset]):
                partition = partition_for(message.key, partitions)
                batch = open_batches.get(partition)
                if batch is None or not _append(batch, message):
                    if batch is not None:  # full: queue it, start the next
                        sent.append((await _submit(producer, batch, topic, partition), batch))
                    batch = open_batches[partition] = producer.create_batch()
                    if not _append(batch, message):
                        raise MessageSizeTooLargeError(
                            f"an event of {dataset} does not fit in a record batch"
                        )
            for partition, batch in open_batches.items():
                sent.append((await _submit(producer, batch, topic, partition), batch))
        # Wait for all, so no failure goes unretrieved; then raise the first.
        results = await asyncio.gather(*(future for future, _ in sent), return_exceptions=True)
        offsets: dict[tuple[str, int], int] = {}
        for result, (_, batch) in zip(results, sent, strict=True):
            if isinstance(result, BaseException):
                raise result
            place = (result.topic, result.partition)
            offsets[place] = max(offsets.get(place, 0), result.offset + batch.record_count())
        return offsets

    @staticmethod
    async def _mark(
        conn: PoolConnectionProxy[asyncpg.Record],
        rows: list[asyncpg.Record],
        offsets: dict[tuple[str, int], int],
        now: datetime,
    ) -> None:
        places = sorted(offsets)
        await conn.execute(
            _MARK,
            [r["dataset"] for r in rows],
            [r["position"] for r in rows],
            [t for t, _ in places],
            [p for _, p in places],
            [offsets[place] for place in places],
            now,
        )


def _append(batch: BatchBuilder, message: SealedMessage) -> bool:
    """Add ``message`` to ``batch``; False if the batch is full."""
    added = batch.append(
        timestamp=None, key=message.key, value=message.value, headers=message.headers
    )
    return added is not None


async def _submit(
    producer: AIOKafkaProducer, batch: BatchBuilder, topic: str, partition: int
) -> asyncio.Future[Any]:
    """Queue ``batch`` for ``topic``'s ``partition``; return the future of its metadata
    (the offset of its first message)."""
    batch.close()  # nothing else may join it once queued
    future: asyncio.Future[Any] = await producer.send_batch(batch, topic, partition=partition)
    return future
