"""The soak benchmark: one node under a steady mixed load for minutes, round after round;
does it stay up, stay as fast, and answer every bad call as it should?

One node (``tongban serve --demo`` on a fresh data dir and embedded PostgreSQL, as every
phase starts it) on its default per-department limits. The setup is ``bench.fairness``'s:
``samr`` registers ``samr.bench`` and loads the generated records into it.

Then 64 callers run without a break for ``soak_rounds`` rounds of ``soak_round_seconds``
(a warm-up round of ``warmup_seconds`` first, not counted). Of every ten calls:

- six are ``tax``'s audited one-key query of three fields (answered with one record);
- one names a key that is not a USCC (``INVALID_SUBJECT_ID``);
- one names a dataset that does not exist, one of 100 such names (``DATASET_NOT_FOUND``;
  a few names, so that the node's dataset cache, which is bounded, does not grow through
  the run and read as a leak);
- one asks for a field the dataset does not have (``UNKNOWN_FIELD``);
- one is samr changing one of its records' address (``PublishRecords``, one updated).

Meanwhile ``tax`` subscribes to the dataset's name and address from where the setup's
records end, acknowledges every 500 events, and checks that the positions it receives
follow one another; at the end it must have received every change samr made.

Each call's answer is checked against what it should be; any other (a wrong code or
reason, ``INTERNAL``, a timeout) is counted as unexpected and printed with its reason. A
call refused for a department limit is retried after the node's delay, as a client
should, and the refusal counted; so is an acknowledgement. A subscription stream that
ends is counted by its reason and opened again after the last position received.

After each round: calls/s, events received/s, the queries' p50, p99 and slowest, the
slowest of any call, and the node's resident memory, open files and threads and
PostgreSQL's processes. The first round is the baseline of the last: rate and p99 as a
share of it, memory growth per minute over the second half of the run (after the caches
have filled), and the peak beside the node's memory budget. Nothing is asserted; a line
says whether each holds.

BENCH_SOAK_ROUNDS (default 10) and BENCH_SOAK_SECONDS (a round, default 30) change a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import platform
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
import psutil

from bench import sharing
from bench._client import Department, admitted
from bench._config import Config
from bench._main import from_environment, host_figures, run_main, write_results
from bench._peer import percentiles
from bench._servers import NodeServer, node_server
from bench._table import LABEL, cpu_header, cpu_row
from bench._watch import CpuMeter, CpuUse
from tongban.client import ExchangeClient, ExchangeError
from tongban.errors import TongbanError
from tongban.v1 import query_pb2, query_pb2_grpc

__all__ = ["Round", "SoakReport", "as_json", "configured", "format_report", "main", "run"]

_ENV = {  # BENCH_SOAK_* variable -> Config field
    "BENCH_SOAK_ROUNDS": "soak_rounds",
    "BENCH_SOAK_SECONDS": "soak_round_seconds",
}
UNKNOWN_DATASETS = 100
"""Names of datasets that do not exist, asked for in turn."""
ACK_EVERY = 500
"""Events the subscriber receives between two acknowledgements."""

# The ten kinds of call, in the order they are made, and the answer each should get
# (status, reason; "" for none).
_KINDS = (*["query"] * 6, "bad key", "no dataset", "no field", "update")
EXPECTED: dict[str, tuple[str, str]] = {
    "query": ("OK", ""),
    "bad key": ("INVALID_ARGUMENT", "INVALID_SUBJECT_ID"),
    "no dataset": ("NOT_FOUND", "DATASET_NOT_FOUND"),
    "no field": ("INVALID_ARGUMENT", "UNKNOWN_FIELD"),
    "update": ("OK", ""),
}


def configured(config: Config, environ: Mapping[str, str] = os.environ) -> Config:
    """``config`` with the BENCH_SOAK_* variables applied; ValueError if one is bad."""
    config = from_environment(config, _ENV, floats={"soak_round_seconds"}, environ=environ)
    if config.soak_rounds < 2:
        raise ValueError("BENCH_SOAK_ROUNDS must be at least 2 (the first is the baseline)")
    return config


@dataclass(frozen=True)
class Round:
    """What one round measured, and the node as the round ended."""

    seconds: float
    calls: int
    events: int
    """Events the subscriber received in the round."""
    query_p50_ms: float
    query_p99_ms: float
    query_max_ms: float
    slowest_ms: float
    """The slowest call of any kind."""
    slowest_kind: str
    node_rss_mb: float
    node_fds: int
    node_threads: int
    postgres_processes: int
    database_mb: float
    """The node's database on disk as the round ended (``pg_database_size``: tables,
    indexes and TOAST, not the WAL)."""
    log_entries: int
    """Access-log entries sequenced as the round ended."""
    cpu: CpuUse

    @property
    def rate(self) -> float:
        return self.calls / self.seconds


@dataclass(frozen=True)
class SoakReport:
    started: datetime
    loadavg: tuple[float, float, float]
    config: Config
    rounds: list[Round]
    answers: dict[str, dict[str, int]]
    """Answers by kind of call, then "expected" or the status and reason of another."""
    refused: dict[str, int]
    """Refusals for a department limit the callers saw (and retried), by reason."""
    feed: _FeedFigures

    @property
    def unexpected(self) -> int:
        return sum(
            n for kinds in self.answers.values() for a, n in kinds.items() if a != "expected"
        )

    @property
    def database_growth(self) -> tuple[float, float, float]:
        """How the database grew from the end of the first round to the end of the last:
        MB a minute, bytes per call, bytes per access-log entry."""
        first, last = self.rounds[0], self.rounds[-1]
        grown = (last.database_mb - first.database_mb) * 2**20
        minutes = sum(r.seconds for r in self.rounds[1:]) / 60
        calls = sum(r.calls for r in self.rounds[1:])
        entries = last.log_entries - first.log_entries
        return grown / 2**20 / minutes, grown / calls, grown / entries if entries else math.nan

    @property
    def rss_growth_mb_per_min(self) -> float:
        """Memory growth over the second half of the rounds, MB a minute (least squares)."""
        half = self.rounds[len(self.rounds) // 2 - 1 :]
        ends = [sum(r.seconds for r in self.rounds[: i + 1]) / 60 for i in range(len(self.rounds))]
        xs = ends[len(self.rounds) // 2 - 1 :]
        ys = [r.node_rss_mb for r in half]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        spread = sum((x - mx) ** 2 for x in xs)
        return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / spread


@dataclass
class _Tally:
    """What the callers saw in the round under way."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    slowest: tuple[float, str] = (0.0, "")

    def add(self, kind: str, seconds: float) -> None:
        self.latencies.setdefault(kind, []).append(seconds)
        if seconds > self.slowest[0]:
            self.slowest = (seconds, kind)


async def run(config: Config) -> SoakReport:
    """Start a node on its default limits, set up, run the rounds; stop the node; return
    the figures. Raises RuntimeError if the node or the setup fails, TongbanError if a
    setup call fails."""
    started = datetime.now(UTC)
    loadavg = os.getloadavg()
    async with node_server(default_limits=True) as node:
        owner = Department.of(node, config.department, config)
        consumer = Department.of(node, config.consumer, config)
        rows = sharing.generate_records(config.records, random.Random(config.seed))
        async with owner.client() as client:
            await client.register_dataset(sharing.dataset_spec(config.dataset), publish=True)

            async def batches() -> AsyncIterator[list[sharing.Row]]:
                for start in range(0, len(rows), config.publish_batch):
                    yield rows[start : start + config.publish_batch]

            await client.stream_records(config.dataset, batches())
            async with consumer.channel() as channel, consumer.client() as tax:
                calls = _Calls(
                    query_pb2_grpc.QueryServiceStub(channel), client, consumer, rows, config
                )
                # The setup's records are the events 0 .. records - 1; changes come after.
                subscriber = _Subscriber(tax, len(rows) - 1, config)
                rounds, feed = await _rounds(calls, subscriber, node, config)
    return SoakReport(
        started=started,
        loadavg=loadavg,
        config=config,
        rounds=rounds,
        answers={kind: dict(counts) for kind, counts in calls.answers.items()},
        refused=dict(calls.refused + subscriber.refused),
        feed=feed,
    )


class _Calls:
    """The ten kinds of call, each checked against the answer it should get."""

    def __init__(
        self,
        query: query_pb2_grpc.QueryServiceAsyncStub,
        owner: ExchangeClient,
        consumer: Department,
        rows: list[sharing.Row],
        config: Config,
    ) -> None:
        self._query = query
        self._owner = owner
        self._consumer = consumer
        self._rows = rows
        self._config = config
        self._random = random.Random(config.seed + 2)
        self._made = 0
        self.answers: dict[str, Counter[str]] = {kind: Counter() for kind in EXPECTED}
        self.refused: Counter[str] = Counter()
        self.tally = _Tally()

    async def one(self) -> None:
        """Make the next call, time it, and count its answer."""
        made = self._made
        self._made += 1
        kind = _KINDS[made % len(_KINDS)]
        call = self._call(kind, made)
        started = time.perf_counter()
        try:
            await admitted(call, self.refused)
            answer = ("OK", "")
        except ExchangeError as e:
            answer = (e.code.name, e.reason)
        except _WrongAnswer as e:
            answer = ("OK", str(e))
        self.tally.add(kind, time.perf_counter() - started)
        self.answers[kind]["expected" if answer == EXPECTED[kind] else " ".join(answer)] += 1

    def _call(self, kind: str, made: int) -> Callable[[], Awaitable[object]]:
        key, values = self._random.choice(self._rows)
        if kind == "update":
            changed = {**values, "address": f"{values['address']}（{made}）"}

            async def update() -> None:
                counts = await self._owner.publish_records(self._config.dataset, [(key, changed)])
                if counts.updated != 1:
                    raise _WrongAnswer(f"published as {counts}")

            return update
        config, consumer = self._config, self._consumer
        fields = list(config.query_fields)
        dataset = config.dataset
        if kind == "bad key":
            key = f"not-a-uscc-{made % 1000}"
        elif kind == "no dataset":
            dataset = f"nowhere.ds{made % UNKNOWN_DATASETS}"
        elif kind == "no field":
            fields = ["no_such_field"]
        request = query_pb2.QueryRequest(
            dataset=dataset,
            keys=[key],
            fields=fields,
            purpose=sharing.PURPOSE,
            case_id=sharing.CASE_ID,
        )

        async def query() -> None:
            answer = await self._query.Query(
                request, metadata=consumer.metadata, timeout=consumer.timeout
            )
            if len(answer.records) != 1:
                raise _WrongAnswer(f"{len(answer.records)} records")

        return query


class _WrongAnswer(Exception):
    """A call answered OK, but not with what it should have."""


@dataclass(frozen=True)
class _FeedFigures:
    """What the subscriber saw over the whole run."""

    updates: int
    """Changes samr made (answered: one record updated)."""
    first: int
    """The position after the setup's records: the first change's."""
    last: int
    """The last position received; every change is in by ``first + updates - 1``."""
    gaps: int
    """Times a position came that was not the one after the last (a duplicate or a gap)."""
    ended: dict[str, int]
    """Streams that ended, by reason (each opened again)."""


class _Subscriber:
    """tax's subscription to the dataset: counts events, acknowledges every ``ACK_EVERY``,
    checks that positions follow one another, and reopens a stream that ends."""

    def __init__(self, client: ExchangeClient, after: int, config: Config) -> None:
        self._client = client
        self._config = config
        self.first = after + 1
        self.last = after
        self.received = 0
        self.gaps = 0
        self.ended: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self._wanted = math.inf
        self._reached = asyncio.Event()

    async def run(self) -> None:
        """Receive until cancelled."""
        while True:
            try:
                await self._stream()
            except ExchangeError as e:
                self.ended[e.reason] += 1
                await asyncio.sleep(e.retry_after or 1.0)

    async def _stream(self) -> None:
        events = self._client.subscribe(
            self._config.dataset,
            fields=list(self._config.events_fields),
            purpose=sharing.PURPOSE,
            after_position=self.last,
        )
        async for event in events:
            if event.position != self.last + 1:
                self.gaps += 1
            self.last = max(self.last, event.position)
            self.received += 1
            if self.last >= self._wanted:
                self._reached.set()
            if self.received % ACK_EVERY == 0:
                await admitted(
                    functools.partial(
                        self._client.acknowledge, event.subscription_id, event.position
                    ),
                    self.refused,
                )

    async def caught_up(self, last: int, seconds: float) -> None:
        """Wait until ``last`` has been received, or ``seconds``."""
        self._wanted = last
        if self.last >= last:
            return
        self._reached.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reached.wait(), seconds)


async def _rounds(
    calls: _Calls, subscriber: _Subscriber, node: NodeServer, config: Config
) -> tuple[list[Round], _FeedFigures]:
    stopping = False

    async def caller() -> None:
        while not stopping:
            await calls.one()

    def meter() -> CpuMeter:
        return CpuMeter(
            {"bench": lambda: [psutil.Process()], "server": node.server, "postgres": node.postgres}
        )

    rounds: list[Round] = []
    database = await asyncpg.connect(node.dsn())
    feed = asyncio.create_task(subscriber.run())
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(config.concurrency):
                group.create_task(caller())
            try:
                await asyncio.sleep(config.warmup_seconds)
                for number in range(config.soak_rounds):
                    calls.tally = _Tally()
                    received = subscriber.received
                    cpu = meter()
                    cpu.start()
                    began = time.perf_counter()
                    await asyncio.sleep(config.soak_round_seconds)
                    tally, seconds = calls.tally, time.perf_counter() - began
                    events = subscriber.received - received
                    stored = await database.fetchrow(_STORED)
                    assert stored is not None
                    rounds.append(_round(tally, events, seconds, cpu.stop(), node, stored))
                    print(_progress(number + 1, config.soak_rounds, rounds[-1]), file=sys.stderr)
            finally:
                stopping = True
        updates = calls.answers["update"]["expected"]
        await subscriber.caught_up(subscriber.first + updates - 1, seconds=30)
    finally:
        feed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feed
        await database.close()
    figures = _FeedFigures(
        updates, subscriber.first, subscriber.last, subscriber.gaps, dict(subscriber.ended)
    )
    return rounds, figures


_STORED = "SELECT pg_database_size(current_database()) AS bytes, next FROM log_sequence"


def _round(
    tally: _Tally,
    events: int,
    seconds: float,
    cpu: CpuUse,
    node: NodeServer,
    stored: asyncpg.Record,
) -> Round:
    queries = sorted(tally.latencies.get("query", []))
    p50, p99 = percentiles(queries)
    rss = fds = threads = 0
    for process in node.server():
        try:
            rss += process.memory_info().rss
            fds += process.num_fds()
            threads += process.num_threads()
        except psutil.NoSuchProcess:
            continue
    return Round(
        seconds=seconds,
        calls=sum(len(v) for v in tally.latencies.values()),
        events=events,
        query_p50_ms=p50 * 1000,
        query_p99_ms=p99 * 1000,
        query_max_ms=(queries[-1] if queries else float("nan")) * 1000,
        slowest_ms=tally.slowest[0] * 1000,
        slowest_kind=tally.slowest[1],
        node_rss_mb=rss / 2**20,
        node_fds=fds,
        node_threads=threads,
        postgres_processes=len(node.postgres()),
        database_mb=stored["bytes"] / 2**20,
        log_entries=stored["next"],
        cpu=cpu,
    )


# --- output -----------------------------------------------------------------------------


def _progress(number: int, of: int, r: Round) -> str:
    return (
        f"round {number}/{of}: {r.rate:,.0f} calls/s, query p99 {r.query_p99_ms:.0f} ms, "
        f"node {r.node_rss_mb:.0f} MB"
    )


def format_report(report: SoakReport) -> str:
    """The human table: each round, then the last beside the first, then the checks."""
    c = report.config
    cores = os.cpu_count() or 1
    first, last = report.rounds[0], report.rounds[-1]
    lines = [
        "Tongban benchmark: soak, a mixed load round after round  "
        f"{report.started:%Y-%m-%d %H:%M:%S %Z}",
        f"{cores} CPUs (load average before the run "
        + " ".join(f"{load:.2f}" for load in report.loadavg)
        + f"), Python {platform.python_version()}, grpcio {grpc.__version__}",
        f"{c.concurrency} callers without a break, {c.soak_rounds} rounds of "
        f"{c.soak_round_seconds:g} s after {c.warmup_seconds:g} s of warm-up; node on its "
        "default limits",
        f"of every ten calls: 6 {c.consumer} audited 1-key queries of {c.dataset} "
        f"({c.records:,} records), 1 key that is no USCC, 1 dataset that does not exist, "
        f"1 unknown field, 1 {c.department} changing a record's address; {c.consumer} subscribed "
        f"to {', '.join(c.events_fields)}",
        "",
        f"{'round':<6}{'calls/s':>9}{'events/s':>9}{'query p50':>11}{'p99':>8}{'max':>8}"
        f"{'slowest call':>22}{'node MB':>9}{'files':>7}{'threads':>9}{'pg procs':>10}"
        f"{'db MB':>9}",
    ]
    for number, r in enumerate(report.rounds, 1):
        lines.append(
            f"{number:<6}{r.rate:>9,.0f}{r.events / r.seconds:>9,.0f}"
            f"{r.query_p50_ms:>9.1f}ms{r.query_p99_ms:>6.0f}ms{r.query_max_ms:>6.0f}ms"
            f"{f'{r.slowest_ms:.0f} ms ({r.slowest_kind})':>22}"
            f"{r.node_rss_mb:>9.1f}{r.node_fds:>7}{r.node_threads:>9}{r.postgres_processes:>10}"
            f"{r.database_mb:>9.0f}"
        )
    lines += [
        "",
        f"CPU per round, % of one core ({cores} cores = {100 * cores}%):",
        cpu_header(),
        cpu_row("first round", first.cpu),
        cpu_row("last round", last.cpu),
        "",
        "Answers (each checked against the one it should get):",
    ]
    for kind, (status, reason) in EXPECTED.items():
        counts = report.answers.get(kind, {})
        others = {a: n for a, n in counts.items() if a != "expected"}
        should = status + (f" {reason}" if reason else "")
        lines.append(
            (
                f"  {kind:<12}{counts.get('expected', 0):>9,} {should:<36}"
                + (f"UNEXPECTED: {others}" if others else "")
            ).rstrip()
        )
    if report.refused:
        lines.append(f"  refused for a department limit and retried: {report.refused}")
    feed = report.feed
    wanted = feed.first + feed.updates - 1
    lines.append(
        f"  {'subscription':<12}{feed.last - feed.first + 1:>9,} positions received of the "
        f"{feed.updates:,} changes made; {feed.gaps:,} out of order"
        + (f"; streams ended and reopened: {feed.ended}" if feed.ended else "")
    )
    growth = report.rss_growth_mb_per_min
    peak = max(r.node_rss_mb for r in report.rounds)
    budget = c.node_rss_budget_mb
    # A leak keeps growing; the pools open and close connections (and files) as they go,
    # within their bounds: the last round is held to the most of the first half.
    early = report.rounds[: max(1, len(report.rounds) // 2)]
    held = {
        "open files": (max(r.node_fds for r in early), last.node_fds),
        "threads": (max(r.node_threads for r in early), last.node_threads),
        "PostgreSQL processes": (max(r.postgres_processes for r in early), last.postgres_processes),
    }
    grew = [name for name, (before, after) in held.items() if after > before]
    per_minute, per_call, per_entry = report.database_growth
    lines += [
        "",
        "Last round beside the first (this run):",
        f"  {'calls/s':<{LABEL - 2}}{last.rate / first.rate:>7.0%} of the first",
        f"  {'query p99':<{LABEL - 2}}{last.query_p99_ms / first.query_p99_ms:>7.2f}x the first",
        "",
        "Disk (the database without its WAL; for sizing, docs/deploy.md):",
        f"  {'grew':<{LABEL - 2}}{per_minute:>7.1f} MB a minute ({first.database_mb:,.0f} -> "
        f"{last.database_mb:,.0f} MB after the first round)",
        f"  {'per call':<{LABEL - 2}}{per_call:>7,.0f} bytes",
        f"  {'per access-log entry':<{LABEL - 2}}{per_entry:>7,.0f} bytes (with the records' "
        "versions and events that came with them)",
        "",
        "Checks (this run; printed, never asserted):",
        f"  {'unexpected answers':<{LABEL - 2}}{report.unexpected:>7,}   "
        + ("none" if report.unexpected == 0 else "SOME: see above"),
        f"  {'every change delivered, in order':<{LABEL - 2}}"
        + (
            "yes"
            if feed.last == wanted and feed.gaps == 0
            else f"NO: up to position {feed.last:,} of {wanted:,}, {feed.gaps:,} out of order"
        ),
        f"  {'node memory, second half':<{LABEL - 2}}{growth:>+7.2f} MB a minute; "
        f"peak {peak:.0f} MB of the {budget:g} MB budget: "
        + ("within" if peak <= budget else "OVER"),
        f"  {'open files, threads, PostgreSQL processes':<{LABEL - 2}}"
        + (
            f"MORE in the last round: {', '.join(grew)}"
            if grew
            else "in the last round, not more than in the first half"
        ),
    ]
    return "\n".join(lines)


def as_json(report: SoakReport) -> dict[str, Any]:
    def one(r: Round) -> dict[str, Any]:
        cpu = {**asdict(r.cpu), "others": r.cpu.others, "idle": r.cpu.idle}
        return {**asdict(r), "rate": r.rate, "cpu": cpu}

    return {
        "benchmark": "soak",
        "started": report.started.isoformat(),
        "host": host_figures(report.loadavg),
        "config": asdict(report.config),
        "rounds": [one(r) for r in report.rounds],
        "answers": report.answers,
        "expected": {kind: list(answer) for kind, answer in EXPECTED.items()},
        "unexpected": report.unexpected,
        "refused_and_retried": report.refused,
        "subscription": asdict(report.feed),
        "node_rss_growth_mb_per_min_second_half": report.rss_growth_mb_per_min,
        "database_growth": dict(
            zip(
                ("mb_per_min", "bytes_per_call", "bytes_per_log_entry"),
                report.database_growth,
                strict=True,
            )
        ),
    }


FAILURES = (RuntimeError, TongbanError, OSError, ExceptionGroup)
"""What ``run`` raises when the soak cannot complete (reported, not a traceback)."""


def main() -> int:
    """Run the soak, print the table, write the JSON; return the status."""
    return run_main(
        configured,
        run,
        format_report,
        lambda report: write_results("soak", report.started, as_json(report)),
        FAILURES,
    )
