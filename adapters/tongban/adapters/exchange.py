"""The exchange side of an adapter: publishing through ``tongban.client``, and the
write-back loop that turns subscribed events into commands for the legacy system.

Adapters reach the exchange only through its public gRPC API (``ExchangeClient`` with the
department's bundle), as any remote department system would.

**Publishing** (``ExchangeSink``): a batch of changes is one ``PublishRecords`` call, all
or nothing. The exchange compares an upsert with the record's current version and makes
no new version (and no event) when the values are the same, and a delete of a record
already deleted changes nothing; so publishing a batch again after a crash leaves the
exchange as it was.

**Write-back** (``WriteBackLoop``): subscribe to a dataset with the fields and purpose of
the mapping's ``write_back`` target; gather events into a batch; turn each into a
``WriteCommand`` whose id is the event id (the same on every re-delivery); apply the
batch to the legacy system and record the command ids in the state store
(``apply_commands``); then acknowledge the last position. Killed anywhere in between, the
subscription resumes after the acknowledged position and re-delivered commands whose
ids are recorded are skipped: at least once delivery, applied once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from tongban.adapters.mapping import AdapterMapping, RetrySettings, WriteBackTarget
from tongban.adapters.sdk import Change, Op, Source, WriteCommand
from tongban.adapters.state import StateStore
from tongban.adapters.sync import EchoGuard, apply_commands
from tongban.client import Event, ExchangeClient, ExchangeError
from tongban.errors import TongbanError

__all__ = [
    "ExchangeSink",
    "PublishTotals",
    "WriteBackLoop",
    "WriteBackReport",
    "command_of",
    "is_retriable",
    "subscription_fields",
]


def is_retriable(error: BaseException) -> bool:
    """Whether the same call may succeed later without anyone changing anything: an
    exchange that is down or busy (``ExchangeError.retriable``), or a legacy system that
    is (errors with ``retriable`` set)."""
    return bool(getattr(error, "retriable", False))


@dataclass
class PublishTotals:
    """What the exchange did with everything an ``ExchangeSink`` sent."""

    calls: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    """Upserts identical to the current version, and deletes of absent records: the
    exchange made no new version (a batch published again after a crash)."""
    deleted: int = 0


class ExchangeSink:
    """Publishes changes to the exchange as the department of ``client``'s bundle.

    ``publish`` returns once the exchange has committed the batch, or raises
    ``ExchangeError`` (nothing of the batch is kept).
    """

    def __init__(self, client: ExchangeClient) -> None:
        self._client = client
        self.totals = PublishTotals()

    async def publish(self, dataset: str, changes: Sequence[Change]) -> None:
        """Upsert and delete ``changes`` in one call. When a key occurs more than once
        (two source rows with the same record key), the last change wins, as it would
        have had they been published one after the other."""
        last: dict[str, Change] = {}
        for change in changes:
            last.pop(change.key, None)
            last[change.key] = change
        upserts = [(c.key, c.values) for c in last.values() if c.op is Op.UPSERT]
        deletes = [c.key for c in last.values() if c.op is Op.DELETE]
        if not upserts and not deletes:
            return
        counts = await self._client.publish_records(dataset, upserts, deletes)
        self.totals.calls += 1
        self.totals.inserted += counts.inserted
        self.totals.updated += counts.updated
        self.totals.unchanged += counts.unchanged
        self.totals.deleted += counts.deleted


def subscription_fields(target: WriteBackTarget) -> list[str]:
    """The fields a write-back target subscribes to: those configured, else every field
    its columns map."""
    if target.subscribe is not None and target.subscribe.fields:
        return list(target.subscribe.fields)
    mapped = [c.field for c in target.columns.values() if c.field is not None]
    return list(dict.fromkeys(mapped))


def command_of(event: Event) -> WriteCommand:
    """The write-back command for ``event``: its id is the event id, so a re-delivered
    event is the same command."""
    return WriteCommand(
        id=event.event_id,
        dataset=event.dataset,
        key=event.key,
        op=Op.DELETE if event.op == "delete" else Op.UPSERT,
        values=dict(event.fields),
        version=event.version,
    )


@dataclass
class WriteBackReport:
    """What a write-back loop has done so far."""

    dataset: str
    batches: int = 0
    events: int = 0
    applied: int = 0
    duplicates: int = 0
    """Re-delivered events whose commands were already handled: skipped."""
    stale: int = 0
    rejected: int = 0
    """Commands the legacy system refused (kept for ``replay``; still acknowledged)."""
    acknowledged: int = -1
    """The last position acknowledged to the exchange (-1: none yet)."""
    applied_keys: list[str] = field(default_factory=list)
    """Keys applied in the last batch (for progress lines)."""


class WriteBackLoop:
    """Applies one subscribed dataset to the legacy system until stopped.

    ``run(stop)`` returns when ``stop`` is set (after finishing the batch in hand) or, with
    ``once``, when every event the exchange holds for the subscription is acknowledged.
    Retriable failures (the exchange or the legacy system unreachable) are retried with
    the mapping's backoff; ``on_retry`` is told each. Other failures raise.
    """

    def __init__(
        self,
        *,
        client: ExchangeClient,
        source: Source,
        state: StateStore,
        mapping: AdapterMapping,
        target: WriteBackTarget,
        echo: EchoGuard | None = None,
        exclusive: asyncio.Lock | None = None,
        retry: RetrySettings | None = None,
        on_batch: Callable[[WriteBackReport], None] | None = None,
        on_retry: Callable[[TongbanError, float], None] | None = None,
    ) -> None:
        self._client = client
        self._source = source
        self._state = state
        self._mapping = mapping
        self._target = target
        self._echo = echo
        self._exclusive = exclusive
        self._retry = retry or RetrySettings()
        self._on_batch = on_batch
        self._on_retry = on_retry
        subscription = target.subscribe
        self._purpose = subscription.purpose if subscription else "数据同步"
        self._batch_size = subscription.batch_size if subscription else 500
        self._max_wait = subscription.max_wait_seconds if subscription else 0.05
        self._fields = subscription_fields(target)
        self.report = WriteBackReport(target.dataset)

    async def run(self, stop: asyncio.Event, *, once: bool = False) -> WriteBackReport:
        """Subscribe and apply until ``stop`` (or, with ``once``, until caught up)."""
        delay = self._retry.initial_delay_seconds
        while not stop.is_set():
            try:
                caught_up = await self._session(stop, once=once)
            except TongbanError as e:
                if not is_retriable(e) or once:
                    raise
                if self._on_retry is not None:
                    self._on_retry(e, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, self._retry.max_delay_seconds)
                continue
            delay = self._retry.initial_delay_seconds
            if caught_up:
                break
        return self.report

    async def _session(self, stop: asyncio.Event, *, once: bool) -> bool:
        """One subscription stream; return True once caught up (``once``)."""
        queue: asyncio.Queue[Event | BaseException] = asyncio.Queue(maxsize=4 * self._batch_size)
        stream = self._client.subscribe(
            self._target.dataset, fields=self._fields, purpose=self._purpose
        )
        reader = asyncio.create_task(_pump(stream, queue))
        stopping = asyncio.create_task(stop.wait())
        try:
            while True:
                first = await self._next(queue, stopping, idle=0.5 if once else None)
                if first is None:
                    if stop.is_set():
                        return False
                    # ``once`` and nothing arrived for a while: caught up if the exchange
                    # holds nothing unacknowledged for us.
                    if await self._caught_up():
                        return True
                    continue
                batch = [first]
                deadline = asyncio.get_running_loop().time() + self._max_wait
                while len(batch) < self._batch_size:
                    try:
                        item = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        remaining = deadline - asyncio.get_running_loop().time()
                        if remaining <= 0:
                            break
                        try:
                            item = await asyncio.wait_for(queue.get(), remaining)
                        except TimeoutError:
                            break
                    if isinstance(item, BaseException):
                        await self._apply(batch)
                        raise item
                    batch.append(item)
                await self._apply(batch)
                if once and await self._caught_up():
                    return True
                if stop.is_set():
                    return False
        finally:
            stopping.cancel()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            with contextlib.suppress(asyncio.CancelledError):
                await stopping

    async def _next(
        self,
        queue: asyncio.Queue[Event | BaseException],
        stopping: asyncio.Task[bool],
        *,
        idle: float | None,
    ) -> Event | None:
        getting = asyncio.ensure_future(queue.get())
        try:
            done, _ = await asyncio.wait(
                {getting, stopping}, timeout=idle, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not getting.done():
                getting.cancel()
        if getting not in done:
            with contextlib.suppress(asyncio.CancelledError):
                await getting
            return None
        item = getting.result()
        if isinstance(item, BaseException):
            raise item
        return item

    async def _caught_up(self) -> bool:
        for subscription in await self._client.list_subscriptions():
            if subscription.dataset == self._target.dataset and subscription.purpose == (
                self._purpose
            ):
                return subscription.lag_events == 0
        return False  # not registered yet: the Subscribe call is still on its way

    async def _apply(self, events: list[Event]) -> None:
        commands = [command_of(e) for e in events]
        async with self._exclusive or contextlib.nullcontext():
            outcome = await apply_commands(self._source, self._state, commands, echo=self._echo)
        last = max(events, key=lambda e: e.position)
        self.report.acknowledged = await self._client.acknowledge(
            last.subscription_id, last.position
        )
        report = self.report
        report.batches += 1
        report.events += len(events)
        report.applied += len(outcome.applied)
        report.duplicates += len(outcome.duplicates)
        report.stale += len(outcome.stale)
        report.rejected += len(outcome.rejected)
        applied = set(outcome.applied)
        report.applied_keys = [c.key for c in commands if c.id in applied]
        if self._on_batch is not None:
            self._on_batch(report)


async def _pump(stream: AsyncIterator[Event], queue: asyncio.Queue[Event | BaseException]) -> None:
    """Move events from the subscription stream into ``queue``; its error too."""
    try:
        async for event in stream:
            await queue.put(event)
    except asyncio.CancelledError:
        raise
    except TongbanError as e:
        await queue.put(e)
    else:
        await queue.put(
            ExchangeError.unavailable("The exchange ended the subscription stream; reconnecting.")
        )
    finally:
        closing = getattr(stream, "aclose", None)
        if closing is not None:
            await closing()
