"""The scale-out benchmark: audited query throughput with 1, 2 and 3 nodes on one
PostgreSQL, and how long a subscriber takes to fail over when its node is killed.

One embedded PostgreSQL (``EmbeddedPostgres``, in a temporary directory) holds the
exchange; one data dir is initialised once and shared by every node (as the nodes of one
exchange share their CA and log keys); each node is a ``tongban serve`` process with its
own ports and ``TONGBAN_NODE_NAME``, on ``TONGBAN_DATABASE_URL``, with the per-department
call limits raised out of reach (``bench._servers.RAISED_LIMITS``, as for every throughput
phase). With ``BENCH_CLUSTER_KAFKA=1`` a Tansu broker is started too and the nodes run in
Kafka mode.

**Throughput.** ``samr`` publishes 10,000 enterprises to ``samr.enterprise``; ``tax``
queries one random key at a time (3 fields, a purpose and a case: every answer is an
access-log entry committed before it leaves) through the raw ``QueryServiceStub`` over
mutual TLS, with 64 closed-loop callers in total, split evenly over the running nodes
(one channel per node). The phases run with 1 node, then 2, then 3 (nodes are added, the
database stays): 2 s warm-up, 8 s measured, per node and in total. The 1-node total of
the same run is the baseline. Every process runs on the same machine, so the figures
show what a second and third Python process add on these cores (the CPU split says who
used them), not what separate hosts would.

**Failover.** With three nodes, ``samr`` publishes one enterprise every 20 ms through a
node other than the subscriber's; ``tax`` subscribes (acknowledging every 10 events)
through one node (starting after the loaded records, so the first failover does not
include draining them), which is killed with SIGKILL. The subscriber notices the broken stream,
subscribes through the next node and resumes after its acknowledged position. Measured
from the kill: **detect** (the stream fails), **resume** (the first event from the new
node) and **caught up** (the first event published after the kill). Each round restarts
the killed node. The baseline, in the same run: a subscriber that closes its stream on a
healthy node and subscribes again at once — the resume time without a failure. Every
position is checked to arrive (duplicates only with identical ids).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import os
import platform
import random
import shutil
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import psutil

from bench._client import Department
from bench._load import LoadResult, run_load
from bench._servers import RAISED_LIMITS, kafka_broker, postgres_processes
from bench._table import LABEL, cpu_header, cpu_row, load_row
from bench._watch import CpuMeter, CpuUse
from tongban.cli.story_data import COMPANY, ENTERPRISE
from tongban.client import Bundle, Event, ExchangeError
from tongban.exchange.catalogue.subject_ids import uscc_check_character
from tongban.exchange.db.embedded import EmbeddedPostgres, temp_root
from tongban.v1 import query_pb2, query_pb2_grpc

__all__ = ["ClusterReport", "as_json", "format_report", "main", "run"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_TONGBAN = Path(sys.executable).parent / "tongban"
_PASSPHRASE = "tongban-bench"  # a throwaway data dir
_READY_TIMEOUT = 120.0
_DATASET = ENTERPRISE.code
_FIELDS = ["name", "address", "legal_representative"]
_PURPOSE = "税务登记"
_SUB_PURPOSE = "登记信息同步"
# A node gone (no status could travel) or unable to log in time: try the next node.
_RETRYABLE = frozenset({"UNAVAILABLE", "AUDIT_UNAVAILABLE", "DEADLINE_EXCEEDED"})


@dataclass(frozen=True)
class ClusterConfig:
    records: int = 10_000
    concurrency: int = 64
    """Closed-loop callers in total, split evenly over the running nodes."""
    node_counts: tuple[int, ...] = (1, 2, 3)
    warmup_seconds: float = 2.0
    duration_seconds: float = 8.0
    failover_rounds: int = 3
    publish_interval_seconds: float = 0.02
    ack_every: int = 10
    kafka: bool = False
    seed: int = 20_261_123

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ClusterConfig:
        """BENCH_CLUSTER_SECONDS (measured window), BENCH_CLUSTER_ROUNDS (failovers) and
        BENCH_CLUSTER_KAFKA=1 (nodes in Kafka mode on a Tansu broker). ValueError if bad."""
        config = cls()
        seconds = environ.get("BENCH_CLUSTER_SECONDS", "").strip()
        rounds = environ.get("BENCH_CLUSTER_ROUNDS", "").strip()
        kafka = environ.get("BENCH_CLUSTER_KAFKA", "").strip()
        try:
            if seconds:
                config = _replace(config, duration_seconds=float(seconds))
            if rounds:
                config = _replace(config, failover_rounds=int(rounds))
        except ValueError:
            raise ValueError(f"bad BENCH_CLUSTER_* value ({seconds!r}, {rounds!r})") from None
        if config.duration_seconds <= 0 or config.failover_rounds < 1:
            raise ValueError("BENCH_CLUSTER_SECONDS and BENCH_CLUSTER_ROUNDS must be positive")
        if kafka not in ("", "0", "1"):
            raise ValueError(f"BENCH_CLUSTER_KAFKA={kafka!r}: use 0 or 1")
        return _replace(config, kafka=kafka == "1")


def _replace(config: ClusterConfig, **changes: Any) -> ClusterConfig:
    return ClusterConfig(**{**asdict(config), **changes})


# --- the nodes --------------------------------------------------------------------------


@dataclass
class _Node:
    name: str
    target: str
    process: asyncio.subprocess.Process
    log: Path

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.process.pid)


class _Exchange:
    """Nodes on one database and one data dir; ``start`` and ``kill`` nodes by name."""

    def __init__(self, work: Path, database_url: str, kafka: str | None) -> None:
        self.work = work
        self.data_dir = work / "data"
        self.database_url = database_url
        self.kafka = kafka
        self.nodes: dict[str, _Node] = {}

    def env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TONGBAN_")}
        env.update(
            GRPC_VERBOSITY="ERROR",
            TONGBAN_KEY_PASSPHRASE=_PASSPHRASE,
            TONGBAN_DATABASE_URL=self.database_url,
            TONGBAN_NODE_NAME=name,
            TONGBAN_SHUTDOWN_GRACE_SECONDS="2",
        )
        env.update(RAISED_LIMITS)
        if self.kafka is not None:
            env.update(TONGBAN_KAFKA_BOOTSTRAP=self.kafka, TONGBAN_KAFKA_IDEMPOTENCE="false")
        return env

    async def start(self, name: str, *extra: str) -> _Node:
        log = self.work / f"{name}.log"
        with log.open("ab") as stderr:
            process = await asyncio.create_subprocess_exec(
                str(_TONGBAN),
                *("serve", "--json", "--workers", "1", "--data-dir", str(self.data_dir), *extra),
                *("--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"),
                env=self.env(name),
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                process_group=0,
            )
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), _READY_TIMEOUT)
            ready = json.loads(line) if line.strip() else {}
        except (TimeoutError, ValueError):
            ready = {}
        if ready.get("event") != "ready":
            await _terminate(process)
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"node {name} did not start; end of its log:\n{tail}")
        node = _Node(name, ready["grpc"], process, log)
        self.nodes[name] = node
        return node

    async def kill(self, name: str) -> float:
        """SIGKILL node ``name``; return ``perf_counter()`` at the kill."""
        node = self.nodes.pop(name)
        killed_at = time.perf_counter()
        node.process.send_signal(signal.SIGKILL)
        await node.process.wait()
        return killed_at

    async def stop(self) -> None:
        for node in list(self.nodes.values()):
            await _terminate(node.process)
        self.nodes.clear()

    def department(self, node: _Node, code: str) -> Department:
        bundle = Bundle.load(self.data_dir / "bundles" / code)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=bundle.ca_pem,
            private_key=bundle.tls_key_pem,
            certificate_chain=bundle.tls_cert_pem,
        )
        return Department(code, node.target, bundle, credentials, "bench-01", 30.0)


async def _terminate(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()


@asynccontextmanager
async def _exchange(config: ClusterConfig) -> AsyncIterator[_Exchange]:
    """One PostgreSQL, an initialised data dir, optionally a broker; removed afterwards."""
    work = temp_root("tongban-bench-cluster-")  # as root, PostgreSQL runs as another user
    pg = EmbeddedPostgres(work / "pg")
    async with AsyncExitStack() as stack:
        await asyncio.to_thread(pg.start)
        stack.push_async_callback(asyncio.to_thread, pg.stop)
        admin = await asyncpg.connect(pg.dsn("postgres"))
        try:
            await admin.execute("CREATE DATABASE bench")
        finally:
            await admin.close()
        bootstrap = None
        if config.kafka:
            broker = await stack.enter_async_context(kafka_broker())
            bootstrap = broker.bootstrap
        exchange = _Exchange(work, pg.dsn("bench"), bootstrap)
        stack.push_async_callback(exchange.stop)
        yield exchange
    _, left = await asyncio.to_thread(psutil.wait_procs, postgres_processes(work), 5.0)
    if not left:
        shutil.rmtree(work, ignore_errors=True)


# --- throughput ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ScalePhase:
    nodes: int
    per_node: dict[str, LoadResult]
    cpu: CpuUse

    @property
    def total_rate(self) -> float:
        return sum(r.rate for r in self.per_node.values())


def _uscc(i: int) -> str:
    first17 = f"9133010{i:010d}"
    return first17 + uscc_check_character(first17)


async def _load_dataset(exchange: _Exchange, node: _Node, config: ClusterConfig) -> list[str]:
    keys = [_uscc(i) for i in range(config.records)]
    async with exchange.department(node, "samr").client() as samr:
        await samr.register_dataset(ENTERPRISE, publish=True)
        for start in range(0, len(keys), 1000):
            await samr.publish_records(
                _DATASET,
                [(k, dict(COMPANY, name=f"企业{k}")) for k in keys[start : start + 1000]],
            )
    return keys


def _meter(exchange: _Exchange) -> CpuMeter:
    me = psutil.Process()
    return CpuMeter(
        {
            "bench": lambda: [me],
            "server": lambda: [n.ps for n in exchange.nodes.values()],
            "postgres": lambda: [
                p
                for pm in postgres_processes(exchange.work)
                for p in (pm, *pm.children(recursive=True))
            ],
        }
    )


def _query_call(
    stub: query_pb2_grpc.QueryServiceAsyncStub,
    tax: Department,
    keys: list[str],
    choose: Callable[[list[str]], str],
) -> Callable[[], Awaitable[None]]:
    """One audited one-key query as ``tax`` through ``stub``."""

    async def call() -> None:
        request = query_pb2.QueryRequest(
            dataset=_DATASET,
            keys=[choose(keys)],
            fields=_FIELDS,
            purpose=_PURPOSE,
            case_id="BENCH-CLUSTER",
        )
        reply = await stub.Query(request, metadata=tax.metadata, timeout=tax.timeout)
        if len(reply.records) != 1:
            raise RuntimeError(f"a key query answered {len(reply.records)} records")

    return call


async def _scale_phase(
    exchange: _Exchange, keys: list[str], config: ClusterConfig, count: int
) -> ScalePhase:
    nodes = list(exchange.nodes.values())[:count]
    choose = random.Random(config.seed + count).choice
    calls: list[Callable[[], Awaitable[None]]] = []
    async with AsyncExitStack() as stack:
        for node in nodes:
            tax = exchange.department(node, "tax")
            channel = await stack.enter_async_context(tax.channel())
            calls.append(_query_call(query_pb2_grpc.QueryServiceStub(channel), tax, keys, choose))
        meter = _meter(exchange)
        shares = [
            config.concurrency // count + (i < config.concurrency % count) for i in range(count)
        ]
        results = await asyncio.gather(
            *(
                run_load(
                    call,
                    concurrency=share,
                    warmup=config.warmup_seconds,
                    duration=config.duration_seconds,
                    cpu=meter if i == 0 else None,
                )
                for i, (call, share) in enumerate(zip(calls, shares, strict=True))
            )
        )
    cpu = results[0].cpu
    assert cpu is not None
    return ScalePhase(count, {n.name: r for n, r in zip(nodes, results, strict=True)}, cpu)


# --- failover -----------------------------------------------------------------------------


@dataclass
class FailoverRound:
    killed: str
    resumed_on: str
    detect_s: float
    resume_s: float
    caught_up_s: float
    publish_stall_s: float
    """The longest gap between two acknowledged publishes (through the other nodes) from
    the kill to the catch-up: did the kill hold up writers elsewhere?"""


@dataclass
class _Follower:
    """The subscriber: every event with the time it arrived, and its reconnections.
    ``acked`` starts at the end of the loaded dataset: the first stream starts there
    (``after_position``), the rest resume after the acknowledged position."""

    acked: int
    events: list[tuple[float, Event]] = field(default_factory=list)
    node: str = ""
    broken_at: float | None = None
    stream_started: list[tuple[str, float]] = field(default_factory=list)


async def _follow(
    exchange: _Exchange, follower: _Follower, order: list[str], ack_every: int
) -> None:
    """Subscribe through the first live node in ``order``; on failure, the next."""
    while True:
        for name in order:
            node = exchange.nodes.get(name)
            if node is None:
                continue
            follower.node = name
            try:
                async with exchange.department(node, "tax").client() as tax:
                    fresh = True
                    after = follower.acked if not follower.events else None
                    async for event in tax.subscribe(
                        _DATASET, fields=["name"], purpose=_SUB_PURPOSE, after_position=after
                    ):
                        now = time.perf_counter()
                        if fresh:
                            follower.stream_started.append((name, now))
                            fresh = False
                        follower.events.append((now, event))
                        if event.position - follower.acked >= ack_every:
                            follower.acked = await tax.acknowledge(
                                event.subscription_id, event.position
                            )
            except ExchangeError as e:
                if e.reason not in _RETRYABLE:
                    raise
                follower.broken_at = time.perf_counter()
        await asyncio.sleep(0.01)


async def _publish_steadily(
    exchange: _Exchange,
    avoid: list[str],
    start: int,
    interval: float,
    sent: list[tuple[float, int]],
) -> None:
    """One new enterprise every ``interval`` s through a node not in ``avoid``."""
    i = start
    while True:
        node = next(n for name, n in exchange.nodes.items() if name not in avoid)
        async with exchange.department(node, "samr").client() as samr:
            while node.name in exchange.nodes:
                key = _uscc(i)
                await samr.publish_records(_DATASET, [(key, dict(COMPANY, name=f"企业{key}"))])
                sent.append((time.perf_counter(), i))
                i += 1
                await asyncio.sleep(interval)


async def _failover(
    exchange: _Exchange, config: ClusterConfig
) -> tuple[list[FailoverRound], list[float], int, int]:
    names = sorted(exchange.nodes)
    follower = _Follower(acked=config.records - 1)
    sent: list[tuple[float, int]] = []
    rounds: list[FailoverRound] = []
    baseline: list[float] = []
    first_key = config.records + 1
    publisher = asyncio.create_task(
        _publish_steadily(exchange, [names[0]], first_key, config.publish_interval_seconds, sent)
    )
    following: asyncio.Task[None] | None = None
    try:
        # Baseline: close the stream on a healthy node and subscribe again at once.
        for _ in range(config.failover_rounds):
            following = asyncio.create_task(
                _follow(exchange, follower, [names[0]], config.ack_every)
            )
            flowing = len(follower.events) + 20
            await _wait(_reaches(lambda: len(follower.events), flowing))
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
            before = len(follower.events)
            started = time.perf_counter()
            following = asyncio.create_task(
                _follow(exchange, follower, [names[0]], config.ack_every)
            )
            await _wait(_reaches(lambda: len(follower.events), before + 1))
            baseline.append(follower.events[before][0] - started)
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
        # Failovers: the follower's node is killed; it resumes on the next one.
        following = asyncio.create_task(_follow(exchange, follower, names, config.ack_every))
        for _ in range(config.failover_rounds):
            await _wait(lambda: follower.node != "" and len(follower.events) > 0)
            victim = follower.node
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)
            publisher = asyncio.create_task(
                _publish_steadily(
                    exchange,
                    [victim],
                    first_key + len(sent) + 1000,
                    config.publish_interval_seconds,
                    sent,
                )
            )
            received = len(follower.events)
            await _wait(_reaches(lambda: len(follower.events), received + 20))
            streams = len(follower.stream_started)
            killed_at = await exchange.kill(victim)
            await _wait(_reaches(lambda: len(follower.stream_started), streams + 1), within=60)
            resumed_on, _ = follower.stream_started[-1]
            await _wait(functools.partial(_has_key_after, follower, sent, killed_at), within=60)
            caught = next(
                at
                for at, e in follower.events
                if at > killed_at and e.key in _keys_after(sent, killed_at)
            )
            assert follower.broken_at is not None
            rounds.append(
                FailoverRound(
                    victim,
                    resumed_on,
                    follower.broken_at - killed_at,
                    follower.stream_started[-1][1] - killed_at,
                    caught - killed_at,
                    _longest_gap([at for at, _ in sent], killed_at, caught),
                )
            )
            await exchange.start(victim)
    finally:
        publisher.cancel()
        await asyncio.gather(publisher, return_exceptions=True)
        if following is not None:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
    positions = {e.position: e.event_id for _, e in follower.events}
    for _, e in follower.events:
        if positions[e.position] != e.event_id:
            raise RuntimeError(f"position {e.position} was delivered with two event ids")
    duplicates = len(follower.events) - len(positions)
    missing = set(range(config.records, max(positions) + 1)) - set(positions)
    if missing:
        raise RuntimeError(f"the subscriber never received positions {sorted(missing)[:10]}")
    return rounds, baseline, len(positions), duplicates


def _longest_gap(times: list[float], start: float, end: float) -> float:
    inside = [start, *(t for t in times if start < t < end), end]
    return max(b - a for a, b in itertools.pairwise(inside))


def _keys_after(sent: list[tuple[float, int]], at: float) -> set[str]:
    return {_uscc(i) for t, i in sent if t > at}


def _has_key_after(follower: _Follower, sent: list[tuple[float, int]], at: float) -> bool:
    keys = _keys_after(sent, at)
    return any(t > at and e.key in keys for t, e in follower.events)


def _reaches(count: Callable[[], int], target: int) -> Callable[[], bool]:
    return lambda: count() >= target


async def _wait(check: Callable[[], bool], within: float = 30.0) -> None:
    """Poll ``check`` (state other tasks change) every 5 ms; TimeoutError after ``within``."""
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - many conditions over shared state, no event each
            await asyncio.sleep(0.005)


# --- the run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterReport:
    config: ClusterConfig
    phases: list[ScalePhase]
    failovers: list[FailoverRound]
    resubscribe_baseline_s: list[float]
    events_delivered: int
    duplicates: int
    started_at: datetime


async def run(config: ClusterConfig) -> ClusterReport:
    started_at = datetime.now(UTC)
    async with _exchange(config) as exchange:
        first = await exchange.start("node-1", "--demo")
        keys = await _load_dataset(exchange, first, config)
        phases = []
        for count in config.node_counts:
            for n in range(len(exchange.nodes) + 1, count + 1):
                await exchange.start(f"node-{n}")
            phases.append(await _scale_phase(exchange, keys, config, count))
        while len(exchange.nodes) < 3:
            await exchange.start(f"node-{len(exchange.nodes) + 1}")
        failovers, baseline, delivered, duplicates = await _failover(exchange, config)
    return ClusterReport(config, phases, failovers, baseline, delivered, duplicates, started_at)


def format_report(report: ClusterReport) -> str:
    config = report.config
    mode = "Kafka (Tansu)" if config.kafka else "PostgreSQL"
    lines = [
        f"cluster: nodes on one embedded PostgreSQL, events via {mode}; {platform.node()}, "
        f"{psutil.cpu_count()} cores",
        "",
        f"audited one-key query, {config.concurrency} callers split over the nodes, "
        f"{config.duration_seconds:.0f} s",
    ]
    base = report.phases[0]
    baseline = LoadResult(
        sum(r.calls for r in base.per_node.values()),
        statistics.mean(r.seconds for r in base.per_node.values()),
        0.0,
        0.0,
        None,
    )
    for phase in report.phases:
        for name, result in phase.per_node.items():
            lines.append(load_row(f"  {phase.nodes} node(s): {name}", result, "queries/s", None))
        total = LoadResult(
            sum(r.calls for r in phase.per_node.values()),
            statistics.mean(r.seconds for r in phase.per_node.values()),
            max(r.p50_ms for r in phase.per_node.values()),
            max(r.p99_ms for r in phase.per_node.values()),
            None,
        )
        lines.append(load_row(f"  {phase.nodes} node(s): total", total, "queries/s", baseline))
    lines += ["", cpu_header()]
    lines += [cpu_row(f"  {p.nodes} node(s)", p.cpu) for p in report.phases]
    lines += ["", "subscriber failover after SIGKILL of its node (from the kill)"]
    for r in report.failovers:
        lines.append(
            f"  {r.killed} -> {r.resumed_on:<{LABEL - 14}}detect {r.detect_s * 1000:6.0f} ms  "
            f"resume {r.resume_s * 1000:6.0f} ms  caught up {r.caught_up_s * 1000:6.0f} ms  "
            f"(publishers' longest pause {r.publish_stall_s * 1000:.0f} ms)"
        )
    b = report.resubscribe_baseline_s
    lines.append(
        f"  {'baseline: re-subscribe on a live node':<{LABEL - 2}}first event p50 "
        f"{statistics.median(b) * 1000:5.0f} ms  max {max(b) * 1000:5.0f} ms"
    )
    lines.append(
        f"  every position delivered ({report.events_delivered:,}), "
        f"{report.duplicates} re-delivered with identical ids"
    )
    return "\n".join(lines)


def as_json(report: ClusterReport) -> dict[str, Any]:
    def load(r: LoadResult) -> dict[str, Any]:
        return {
            "calls": r.calls,
            "seconds": r.seconds,
            "rate": r.rate,
            "p50_ms": r.p50_ms,
            "p99_ms": r.p99_ms,
        }

    return {
        "config": asdict(report.config),
        "started_at": report.started_at.isoformat(),
        "machine": {"node": platform.node(), "cores": psutil.cpu_count()},
        "throughput": [
            {
                "nodes": p.nodes,
                "per_node": {name: load(r) for name, r in p.per_node.items()},
                "total_rate": p.total_rate,
                "of_single_node": p.total_rate / report.phases[0].total_rate,
                "cpu": {**p.cpu.by_group, "other": p.cpu.others, "idle": p.cpu.idle},
            }
            for p in report.phases
        ],
        "failover": [asdict(r) for r in report.failovers],
        "resubscribe_baseline_s": report.resubscribe_baseline_s,
        "events_delivered": report.events_delivered,
        "duplicates": report.duplicates,
    }


def main() -> int:
    """Run the cluster phases, print the table, write the JSON; return the status."""
    try:
        config = ClusterConfig.from_env()
        report = asyncio.run(run(config))
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    except ValueError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, ExchangeError, OSError, TimeoutError) as e:
        print(f"bench failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(format_report(report))
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"cluster-{report.started_at:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(as_json(report), indent=2, ensure_ascii=False) + "\n")
    shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
    print(f"\nfigures written to {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
