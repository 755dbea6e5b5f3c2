"""The burst benchmark: C concurrent Issue calls by one department, and how long another
department's calls wait meanwhile.

One node (``tongban serve --demo`` on a fresh data dir, started as every phase starts it)
on the node's default per-department limits but one: the default of 64 calls in progress
would refuse most of the 256-caller burst, so ``samr``'s own concurrent-call limit is
raised in the registry to the largest C (``DepartmentStore.set_limits``, what ``tongban
dept limits samr --concurrent 256`` does; the output says so). Its rate limit stays the
default 2,000 calls/s, far above any Issue rate here, and ``tax`` keeps every default.

``samr`` issues business licences (the story's claims) from a process of its own
(``bench._peer``; a department's own system, and 256 calls' client work kept off this
process's event loop). For each C of 16, 64 and 256: max(4 x C, 256) Issue calls from C
callers, each taking the next call until all are made, so C are in flight until the last
few. Each Issue validates the claims, signs the SD-JWT VC and the COSE QR with samr's
custodial seal, allocates a status-list index, stores the licence and writes its change
event and access-log entry. Per C: licences issued per second (from the first call's
start to the last one's end), p50 and p99 latency, and failures by reason (there must be
none; every failure is counted, not retried). samr's calls have a 180 s deadline: the
last of 256 queued calls waits for the 255 before it.

Meanwhile ``tax``, from this process, lists the catalogue (ListDatasets, one call after
another): a call that, like Issue, needs the node's event loop and a database connection.
For each burst, the longest and the median wait of tax's calls in its window (every call
that overlaps it).

Baseline, in the same run on the same node: ``samr`` issuing with one caller (C = 1, 128
calls): an Issue's latency with nothing queued and the rate one caller gets, so each row
shows what concurrency buys in rate and costs in latency; and tax's ListDatasets loop
with samr idle (3 s), for its waits. (``bench.licence``'s in-process issuance is no
baseline here: it issues 500 licences per transaction without gRPC, authentication or
per-call access-log entries, on a data dir of its own.) A few unmeasured Issue calls warm
samr's seal and the licence path first.

BENCH_BURST_LEVELS (C values, comma-separated, default ``16,64,256``),
BENCH_BURST_MIN_CALLS (default 256) and BENCH_BURST_BASELINE_CALLS (default 128) change a
run. Targets: no failures at any C (printed as met or missed, never asserted).
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
import psutil

from bench._client import Department, admitted
from bench._config import Config
from bench._main import host_figures, run_main, write_results
from bench._peer import LICENCE_TYPE, BurstFigures, Peer, peer, percentiles
from bench._servers import NodeServer, node_server
from bench._table import LABEL, cpu_header, cpu_row, rate_row
from bench._watch import CpuMeter, CpuUse
from tongban.errors import TongbanError
from tongban.exchange.departments import CallLimits, DepartmentStore
from tongban.exchange.settings import Settings
from tongban.v1 import catalogue_pb2, catalogue_pb2_grpc

__all__ = ["BurstReport", "as_json", "configured", "format_report", "main", "run"]

WARM_UP_ISSUES = 8
_ISSUE_TIMEOUT = 180.0
"""Deadline of samr's Issue calls: the last of 256 queued calls waits for the 255 before it
(about 10 s at 25 issued/s), which the benchmark's usual 30 s would cut short on a slower
machine."""
_DEFAULT_CONCURRENT = int(Settings.model_fields["dept_max_concurrent_calls"].default)
_DEFAULT_PER_SECOND = float(Settings.model_fields["dept_calls_per_second"].default)


def configured(config: Config, environ: Mapping[str, str] = os.environ) -> Config:
    """``config`` with the BENCH_BURST_* variables applied; ValueError if one is bad."""
    changes: dict[str, Any] = {}
    levels = environ.get("BENCH_BURST_LEVELS", "").strip()
    try:
        if levels:
            changes["burst_levels"] = tuple(int(c) for c in levels.split(","))
        for variable, name in (
            ("BENCH_BURST_MIN_CALLS", "burst_min_calls"),
            ("BENCH_BURST_BASELINE_CALLS", "burst_baseline_calls"),
        ):
            text = environ.get(variable, "").strip()
            if text:
                changes[name] = int(text)
    except ValueError:
        raise ValueError("BENCH_BURST_* values must be whole numbers") from None
    config = replace(config, **changes)
    if not config.burst_levels or min(config.burst_levels) < 1:
        raise ValueError("BENCH_BURST_LEVELS must name positive numbers of callers")
    if config.burst_min_calls < 1 or config.burst_baseline_calls < 2:
        raise ValueError("BENCH_BURST_MIN_CALLS >= 1 and BENCH_BURST_BASELINE_CALLS >= 2")
    return config


def calls_at(config: Config, concurrency: int) -> int:
    """Issue calls in the burst of ``concurrency`` callers."""
    return max(config.burst_calls_per_caller * concurrency, config.burst_min_calls)


@dataclass(frozen=True)
class Waits:
    """The other department's calls in one window, in ms."""

    samples_ms: tuple[float, ...]

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.samples_ms) if self.samples_ms else float("nan")

    @property
    def max_ms(self) -> float:
        return max(self.samples_ms, default=float("nan"))


@dataclass(frozen=True)
class Burst:
    figures: BurstFigures
    waits: Waits
    """tax's calls overlapping the burst."""
    cpu: CpuUse


@dataclass(frozen=True)
class BurstReport:
    started: datetime
    loadavg: tuple[float, float, float]
    config: Config
    samr_concurrent_limit: int | None
    """samr's own concurrent-call limit as set for the phase; None: the node's default."""
    idle: Waits
    """tax's calls with samr idle (the waits' baseline)."""
    baseline: Burst
    """C = 1."""
    bursts: tuple[Burst, ...]
    tax_refused: dict[str, int]
    """Refusals tax's calls saw (and retried), by reason; none expected."""


class _Prober:
    """tax's ListDatasets loop: (start, end) of every call, from ``perf_counter``."""

    def __init__(self, consumer: Department, channel: grpc.aio.Channel) -> None:
        self._stub = catalogue_pb2_grpc.CatalogueServiceStub(channel)
        self._consumer = consumer
        self.calls: list[tuple[float, float]] = []
        self.refused: Counter[str] = Counter()

    async def run(self) -> None:
        request = catalogue_pb2.ListDatasetsRequest()
        metadata, timeout = self._consumer.metadata, self._consumer.timeout

        async def call() -> catalogue_pb2.ListDatasetsResponse:
            reply: catalogue_pb2.ListDatasetsResponse = await self._stub.ListDatasets(
                request, metadata=metadata, timeout=timeout
            )
            return reply

        while True:
            started = time.perf_counter()
            reply = await admitted(call, self.refused)
            self.calls.append((started, time.perf_counter()))
            if not reply.datasets:
                raise RuntimeError("ListDatasets answered no datasets")

    def waits(self, start: float, end: float) -> Waits:
        """The calls overlapping ``start``..``end``."""
        return Waits(tuple((b - a) * 1000 for a, b in self.calls if b > start and a < end))


@asynccontextmanager
async def _probing(consumer: Department) -> AsyncIterator[_Prober]:
    async with consumer.channel() as channel:
        prober = _Prober(consumer, channel)
        task = asyncio.create_task(prober.run())
        try:
            yield prober
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task  # raises what ended the loop, if it failed


async def _raise_concurrent_limit(node: NodeServer, code: str, concurrent: int) -> None:
    """Set ``code``'s own concurrent-call limit in the node's registry; the node applies
    it when the registry notifies the change."""
    pool = await asyncpg.create_pool(node.dsn(), min_size=1, max_size=1)
    try:
        await DepartmentStore(pool).set_limits(code, CallLimits(concurrent, None, None))
    finally:
        await pool.close()


async def _measure(
    samr: Peer, prober: _Prober, concurrency: int, calls: int, meter: CpuMeter
) -> Burst:
    meter.start()
    start = time.perf_counter()
    figures = await samr.burst(concurrency, calls)
    end = time.perf_counter()
    return Burst(figures, prober.waits(start, end), meter.stop())


async def run(config: Config) -> BurstReport:
    """Start a node on its default limits (samr's concurrency raised if a burst needs
    it), run the baseline and the bursts; stop the node; return the figures. Raises
    RuntimeError if a server, samr's process or tax's loop fails."""
    started = datetime.now(UTC)
    loadavg = os.getloadavg()
    bench = psutil.Process()
    async with node_server(default_limits=True) as node:
        owner = Department.of(node, config.department, config)
        consumer = Department.of(node, config.consumer, config)
        limit = max(config.burst_levels)
        raised = limit if limit > _DEFAULT_CONCURRENT else None
        if raised is not None:
            await _raise_concurrent_limit(node, owner.code, raised)
        call_timeout = max(config.call_timeout_seconds, _ISSUE_TIMEOUT)
        async with peer(node, owner.code, config.officer_id, call_timeout) as samr:

            def meter() -> CpuMeter:
                return CpuMeter(
                    {
                        "bench": lambda: [bench],
                        "server": node.server,
                        "postgres": node.postgres,
                        "samr": lambda: [samr.ps],
                    }
                )

            await samr.burst(concurrency=4, calls=WARM_UP_ISSUES)  # seal, licence path warm
            async with _probing(consumer) as prober:
                idle_start = time.perf_counter()
                await asyncio.sleep(config.burst_idle_seconds)
                idle = prober.waits(idle_start, time.perf_counter())
                baseline = await _measure(samr, prober, 1, config.burst_baseline_calls, meter())
                bursts = []
                for concurrency in config.burst_levels:
                    calls = calls_at(config, concurrency)
                    bursts.append(await _measure(samr, prober, concurrency, calls, meter()))
                tax_refused = dict(prober.refused)
    return BurstReport(
        started=started,
        loadavg=loadavg,
        config=config,
        samr_concurrent_limit=raised,
        idle=idle,
        baseline=baseline,
        bursts=tuple(bursts),
        tax_refused=tax_refused,
    )


# --- output -----------------------------------------------------------------------------


def _issue_row(label: str, figures: BurstFigures, baseline: BurstFigures | None) -> str:
    p50, p99 = percentiles(figures.latencies_ms)
    failed = sum(figures.failures.values())
    detail = f"p50 {p50:6.1f} ms  p99 {p99:6.1f} ms"
    detail += f"   {figures.rate / baseline.rate:4.0%} of baseline" if baseline else " " * 20
    detail += f"   failures {failed}"
    if figures.failures:
        detail += " (" + ", ".join(f"{r} {n}" for r, n in sorted(figures.failures.items())) + ")"
    return rate_row(label, figures.rate, "issued/s", detail)


def _wait_row(label: str, waits: Waits) -> str:
    return (
        f"{label:<{LABEL}}{len(waits.samples_ms):>8,} calls     "
        f"p50 {waits.p50_ms:6.1f} ms  max {waits.max_ms:6.1f} ms"
    )


def format_report(report: BurstReport) -> str:
    """The human table: each burst beside C = 1, tax's waits beside samr idle, CPU,
    targets."""
    c = report.config
    samr, tax = c.department, c.consumer
    cores = os.cpu_count() or 1
    if report.samr_concurrent_limit is None:
        limits = "node on its default limits per department"
    else:
        limits = (
            f"node on its default limits, except {samr}'s own concurrent-call limit: raised "
            f"in the registry from {_DEFAULT_CONCURRENT} to {report.samr_concurrent_limit} for "
            f"the {max(c.burst_levels)}-caller burst\n  (tongban dept limits {samr} "
            f"--concurrent {report.samr_concurrent_limit}); rate limit "
            f"{_DEFAULT_PER_SECOND:,.0f} calls/s per department as by default"
        )
    lines = [
        f"Tongban benchmark: bursts of Issue calls  {report.started:%Y-%m-%d %H:%M:%S %Z}",
        f"{cores} CPUs (load average before the run "
        + " ".join(f"{load:.2f}" for load in report.loadavg)
        + f"), Python {platform.python_version()}, grpcio {grpc.__version__}",
        limits,
        f"{samr} issues {LICENCE_TYPE} from its own process, C callers sharing the calls; "
        f"{tax} calls ListDatasets in a loop from this one",
        "",
    ]
    base = report.baseline
    lines.append(
        _issue_row(f"{samr} Issue, C=1, {base.figures.calls} calls (baseline)", base.figures, None)
    )
    for burst in report.bursts:
        f = burst.figures
        lines.append(
            _issue_row(f"{samr} Issue, C={f.concurrency}, {f.calls:,} calls", f, base.figures)
        )
    lines.append(_wait_row(f"{tax} ListDatasets, {samr} idle (baseline)", report.idle))
    lines.append(_wait_row(f"{tax} ListDatasets during C=1", base.waits))
    for burst in report.bursts:
        lines.append(
            _wait_row(f"{tax} ListDatasets during C={burst.figures.concurrency}", burst.waits)
        )
    lines += [
        "",
        f"CPU in each burst, % of one core ({cores} cores = {100 * cores}%):",
        cpu_header(("samr",)),
        cpu_row(f"{samr} Issue, C=1", base.cpu, ("samr",)),
        *(
            cpu_row(f"{samr} Issue, C={b.figures.concurrency}", b.cpu, ("samr",))
            for b in report.bursts
        ),
        "",
        "Targets from the issue (this run):",
    ]
    for burst in (report.baseline, *report.bursts):
        failed = sum(burst.figures.failures.values())
        lines.append(
            f"  {f'failures at C={burst.figures.concurrency}':<{LABEL - 2}}{'0':<22}"
            f"{failed:<20}" + ("met" if failed == 0 else "MISSED")
        )
    if report.tax_refused:
        lines += ["", f"note: {tax}'s calls were refused and retried: {report.tax_refused}"]
    return "\n".join(lines)


def as_json(report: BurstReport) -> dict[str, Any]:
    def waits(w: Waits) -> dict[str, Any]:
        return {"calls": len(w.samples_ms), "p50_ms": w.p50_ms, "max_ms": w.max_ms}

    def burst(b: Burst) -> dict[str, Any]:
        p50, p99 = percentiles(b.figures.latencies_ms)
        return {
            "concurrency": b.figures.concurrency,
            "calls": b.figures.calls,
            "issued": b.figures.issued,
            "seconds": b.figures.seconds,
            "issued_per_s": b.figures.rate,
            "rate_of_baseline": b.figures.rate / report.baseline.figures.rate,
            "p50_ms": p50,
            "p99_ms": p99,
            "max_ms": max(b.figures.latencies_ms, default=float("nan")),
            "failures": b.figures.failures,
            "tax_waits": waits(b.waits),
            "cpu": {**asdict(b.cpu), "others": b.cpu.others, "idle": b.cpu.idle},
        }

    return {
        "benchmark": "burst",
        "started": report.started.isoformat(),
        "host": host_figures(report.loadavg),
        "config": asdict(report.config),
        "node_limits": {
            "concurrent": _DEFAULT_CONCURRENT,
            "per_second": _DEFAULT_PER_SECOND,
            "samr_concurrent_raised_to": report.samr_concurrent_limit,
        },
        "tax_waits_samr_idle": waits(report.idle),
        "baseline_c1": burst(report.baseline),
        "bursts": [burst(b) for b in report.bursts],
        "tax_refused_and_retried": report.tax_refused,
    }


FAILURES = (RuntimeError, TongbanError, asyncpg.PostgresError, OSError, ExceptionGroup)
"""What ``run`` raises when the benchmark cannot complete (reported, not a traceback)."""


def main() -> int:
    """Run the burst phases, print the table, write the JSON; return the status."""
    return run_main(
        configured,
        run,
        format_report,
        lambda report: write_results("burst", report.started, as_json(report)),
        FAILURES,
    )
