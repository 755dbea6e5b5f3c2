"""The foundation benchmark: what the node's gRPC front costs before any real work.

What is measured, all in one run on one machine:

1. **echo (baseline)**: a bare grpc.aio server in its own process, no TLS, one unary method
   returning its ~200-byte request (``bench._echo_server``). It is the ceiling for any
   Python grpc.aio service on this machine: one process, one event loop, the same
   library, nothing else. Everything else is read as a fraction of it, which is what stays
   comparable across noisy machines and runs.
   **echo over mutual TLS**: the same server with P-256 keys made for the run
   (``bench._tls``), a client certificate required, nothing of the node's: what TLS
   itself costs a call, apart from the node's own work (information, not a target).
2. **WhoAmI over mutual TLS (node)**: ``tongban serve --demo`` on a fresh data dir and
   embedded PostgreSQL, called as the ``samr`` department, with the per-department call
   limits raised out of reach (``TONGBAN_DEPT_CALLS_PER_SECOND`` and
   ``TONGBAN_DEPT_MAX_CONCURRENT_CALLS``, ``bench._servers.RAISED_LIMITS``): one
   department's WhoAmI load can pass the default 2,000 calls/s on a quicker machine, and
   a refused call would end the run. The limiter still admits each call, so its cost is
   measured; ``bench.fairness`` and ``bench.burst`` run on the node's defaults. WhoAmI is
   the cheapest authenticated call (TLS, the interceptor, certificate → department from
   the caches, the limiter, metrics, protobuf), so its ratio to the echo is the price of
   the node's front door.
   The design target for the later audited query is >= 40% of the echo; this no-op is
   reported as it is.
3. **new connection + call**: a fresh channel per call (TCP + full TLS 1.3 handshake with
   client certificates, since grpc does not cache TLS sessions unless asked), one WhoAmI,
   close; against the same loop over plaintext to the echo server, which isolates the
   handshake cost from connection setup in grpc itself.
4. **node peak RSS** over every phase that runs against the node (2 and 3 here, and the
   sharing phases), polled every 100 ms, against the 300 MB budget; the embedded
   PostgreSQL's RSS beside it, for information.

Then, on the same node and against the same echo baseline, the sharing phases 5-8 of
``bench.sharing``: bulk publishing, the audited key query, 1,000-key queries and the
access log's growth. The audited query runs a second time with its callers spread over
``query_connections`` connections, and then, once both servers have stopped, on a node
of its own started with ``serve --workers compare_workers`` (issue 20 part 1): the
workers share the port, so the kernel hands each connection, not each call, to one of
them (the bench keeps opening connections until each worker has its share, WhoAmI
naming the worker that answers), and the workers' rate is read beside the spread run on
one process. Every
request/response phase is also shown as CPU per call (each group's CPU time over the
window divided by the calls completed), which is what sets the rate once the cores are
full. The issue's targets are printed as met or missed, never asserted.
``python -m bench`` then runs the access-log phases of ``bench.audit`` (in process, on
their own PostgreSQL, once both servers have stopped), the change-events phases of
``bench.events`` (on nodes of their own, embedded and Kafka mode), and the fairness and
burst phases of ``bench.fairness`` and ``bench.burst`` (on nodes of their own, on the
default per-department limits) into the same results file.

Phases 1 and 2 use 64 concurrent callers on one channel (one HTTP/2 connection), from one
asyncio loop in this process; phase 3 uses 8. CPU use is recorded over each measured
window, for this process, the server, PostgreSQL and the rest of the machine, because on a
2-core machine the load generator competes with the server (if this process is near a full
core, the client is the limit) and other work on the machine depresses every figure.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import psutil

from bench import audit, burst, events, fairness, sharing
from bench._client import FRESH_CONNECTION, Department
from bench._config import Config
from bench._config import quick as quick_config
from bench._echo_server import ECHO_METHOD, identity
from bench._errors import describe
from bench._load import LoadResult, run_load, run_phase
from bench._servers import EchoServer, NodeServer, default_workers, echo_server, node_server
from bench._table import (
    LABEL,
    cpu_header,
    cpu_per_call_header,
    cpu_per_call_row,
    cpu_row,
    load_row,
)
from bench._tls import SERVER_NAME, EchoPki, throwaway_pki
from bench._watch import CpuMeter, PeakRss, ProcessGroup
from tongban.v1 import node_pb2, node_pb2_grpc

__all__ = ["Config", "main", "run"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Report:
    started: datetime
    loadavg: tuple[float, float, float]
    """The machine's load average just before the run."""
    config: Config
    echo: LoadResult
    echo_tls: LoadResult
    """The same echo over mutual TLS: the price of TLS apart from the node's own work."""
    node: LoadResult
    tls_connect: LoadResult
    plain_connect: LoadResult
    node_peak_rss_mb: float
    """Over every phase against the node (foundation and sharing)."""
    postgres_peak_rss_mb: float
    rss_samples: int
    """Samples of the watcher over phases 2 and 3 (the sharing phases have their own)."""
    sharing: sharing.SharingReport
    workers: LoadResult
    """The spread query on a node with ``config.compare_workers`` worker processes."""


async def run(config: Config) -> Report:
    """Start both servers, run the four phases, then the sharing phases on the same node;
    stop the servers; return the figures.

    Raises RuntimeError if a server does not start or WhoAmI names someone else, and an
    ExceptionGroup holding the error if a call fails under load.
    """
    started = datetime.now(UTC)
    loadavg = os.getloadavg()
    bench = psutil.Process()
    with tempfile.TemporaryDirectory(prefix="tongban-bench-echo-") as keys:
        pki = throwaway_pki(Path(keys))
        async with echo_server(pki.directory) as echo_tls:
            echo_tls_result = await _echo_load(echo_tls, config, _cpu(bench, echo=echo_tls), pki)
    async with echo_server() as echo, node_server() as node:
        tls = Department.of(node, config.department, config)
        await _check_identity(tls)

        echo_result = await _echo_load(echo, config, _cpu(bench, echo=echo))

        node_groups: Mapping[str, ProcessGroup] = {
            "node": node.server,
            "postgres": node.postgres,
        }
        with PeakRss(node_groups) as rss:
            node_result = await _node_load(tls, config, _cpu(bench, node=node))
            tls_result = await _connect_load(
                lambda: _tls_connect_call(tls), config, _cpu(bench, node=node)
            )
        plain_result = await _connect_load(
            lambda: _plain_connect_call(echo, config), config, _cpu(bench, echo=echo)
        )
        sharing_report = await sharing.run(
            node, config, lambda: _cpu(bench, node=node), node_groups
        )
    workers_result = await sharing.workers_query(config, lambda other: _cpu(bench, node=other))
    return Report(
        started=started,
        loadavg=loadavg,
        config=config,
        echo=echo_result,
        echo_tls=echo_tls_result,
        node=node_result,
        tls_connect=tls_result,
        plain_connect=plain_result,
        node_peak_rss_mb=max(rss.peak_mb["node"], sharing_report.node_peak_rss_mb),
        postgres_peak_rss_mb=max(rss.peak_mb["postgres"], sharing_report.postgres_peak_rss_mb),
        rss_samples=rss.samples,
        sharing=sharing_report,
        workers=workers_result,
    )


def _cpu(
    bench: psutil.Process, *, echo: EchoServer | None = None, node: NodeServer | None = None
) -> CpuMeter:
    groups: dict[str, ProcessGroup] = {"bench": lambda: [bench]}
    if echo is not None:
        groups["server"] = lambda: [echo.process]
    if node is not None:
        groups["server"] = node.server
        groups["postgres"] = node.postgres
    return CpuMeter(groups)


async def _check_identity(tls: Department) -> None:
    # Measure the authenticated path, not a fast refusal: one call must name our department.
    async with tls.channel() as channel:
        reply = await node_pb2_grpc.NodeServiceStub(channel).WhoAmI(
            node_pb2.WhoAmIRequest(), metadata=tls.metadata, timeout=tls.timeout
        )
    if reply.department.code != tls.code or reply.officer_id != tls.officer_id:
        raise RuntimeError(
            f"WhoAmI answered department {reply.department.code!r}, officer "
            f"{reply.officer_id!r}; expected {tls.code!r}, {tls.officer_id!r}"
        )


async def _echo_load(
    echo: EchoServer, config: Config, cpu: CpuMeter, pki: EchoPki | None = None
) -> LoadResult:
    """The echo under load, over plaintext or, with ``pki``, over mutual TLS."""
    payload = os.urandom(config.payload_bytes)
    channel_of = (
        grpc.aio.insecure_channel(echo.target)
        if pki is None
        else grpc.aio.secure_channel(
            echo.target,
            pki.client,
            options=[("grpc.ssl_target_name_override", SERVER_NAME)],
        )
    )
    async with channel_of as channel:
        method = channel.unary_unary(
            ECHO_METHOD, request_serializer=identity, response_deserializer=identity
        )

        async def call() -> None:
            await method(payload, timeout=config.call_timeout_seconds)

        return await run_phase(call, config, cpu)


async def _node_load(tls: Department, config: Config, cpu: CpuMeter) -> LoadResult:
    request = node_pb2.WhoAmIRequest()
    metadata = tls.metadata
    async with tls.channel() as channel:
        stub = node_pb2_grpc.NodeServiceStub(channel)

        async def call() -> None:
            await stub.WhoAmI(request, metadata=metadata, timeout=tls.timeout)

        return await run_phase(call, config, cpu)


async def _tls_connect_call(tls: Department) -> None:
    async with tls.channel(FRESH_CONNECTION) as channel:
        await node_pb2_grpc.NodeServiceStub(channel).WhoAmI(
            node_pb2.WhoAmIRequest(), metadata=tls.metadata, timeout=tls.timeout
        )


async def _plain_connect_call(echo: EchoServer, config: Config) -> None:
    async with grpc.aio.insecure_channel(echo.target, options=[FRESH_CONNECTION]) as channel:
        method = channel.unary_unary(
            ECHO_METHOD, request_serializer=identity, response_deserializer=identity
        )
        await method(b"x" * config.payload_bytes, timeout=config.call_timeout_seconds)


async def _connect_load(
    call: Callable[[], Awaitable[object]], config: Config, cpu: CpuMeter
) -> LoadResult:
    return await run_load(
        call,
        concurrency=config.connect_workers,
        warmup=config.connect_warmup_seconds,
        duration=config.connect_duration_seconds,
        cpu=cpu,
    )


# --- output -----------------------------------------------------------------------------

_NOISE_PERCENT = 30  # kernel threads alone take ~10-15% of a core under loopback load
_CLIENT_BOUND_PERCENT = 90

_ROWS = (
    ("echo", "echo (no TLS, baseline)", "req/s", None),
    ("echo_tls", "echo over mTLS (no node)", "req/s", "echo"),
    ("node", "WhoAmI over mTLS (node)", "req/s", "echo"),
    ("tls_connect", "new TLS connection + call", "calls/s", "plain_connect"),
    ("plain_connect", "new plaintext connection + call (baseline)", "calls/s", None),
)


def _results(report: Report) -> dict[str, LoadResult]:
    return {key: getattr(report, key) for key, _, _, _ in _ROWS}


def format_report(report: Report) -> str:
    """Return the human table: header, figures beside their baselines, CPU use, targets,
    notes."""
    c = report.config
    s = report.sharing
    cores = os.cpu_count() or 1
    lines = [
        f"Tongban benchmark (foundation + sharing)  {report.started:%Y-%m-%d %H:%M:%S %Z}",
        f"{cores} CPUs (load average before the run "
        + " ".join(f"{load:.2f}" for load in report.loadavg)
        + f"), Python {platform.python_version()}, grpcio {grpc.__version__}",
        f"{c.concurrency} callers on one channel, {c.warmup_seconds:g} s warm-up, "
        f"{c.duration_seconds:g} s measured; new connections: {c.connect_workers} workers, "
        f"{c.connect_warmup_seconds:g} s warm-up, {c.connect_duration_seconds:g} s measured",
        f"sharing: {c.records:,} records of 10 string fields published as {c.department}; "
        f"queries as {c.consumer} for {len(c.query_fields)} fields",
        "",
    ]
    results = _results(report)
    for key, label, unit, baseline in _ROWS:
        lines.append(load_row(label, results[key], unit, results.get(baseline or "")))
    lines += sharing.rows(s, report.echo, c)
    spread, spread_label, workers_label = _workers_rows(report)
    lines += [
        load_row(spread_label, spread, "req/s", report.echo),
        load_row(workers_label, report.workers, "req/s", spread),
    ]
    lines += [
        f"{'node peak RSS, all phases':<{LABEL}}{report.node_peak_rss_mb:>8,.0f} MB"
        f"{'':<9}(budget {c.node_rss_budget_mb:g} MB)",
        f"{'node peak RSS, audited query phase':<{LABEL}}{s.query_node_peak_rss_mb:>8,.0f} MB"
        f"{'':<9}(budget {c.node_rss_budget_mb:g} MB)",
        f"{'embedded PostgreSQL peak RSS, all phases':<{LABEL}}"
        f"{report.postgres_peak_rss_mb:>8,.0f} MB{'':<9}"
        "(sum over its processes; shared memory counted in each)",
        "",
        f"CPU in each measured window, % of one core ({cores} cores = {100 * cores}%):",
        cpu_header(),
    ]
    metered = []
    for key, label, _, _ in _ROWS:
        cpu = results[key].cpu
        assert cpu is not None  # every phase is run with a meter
        metered.append((label, cpu))
    metered += sharing.cpu_rows(s)
    assert spread.cpu is not None  # both phases are run with a meter
    assert report.workers.cpu is not None
    metered += [(spread_label, spread.cpu), (workers_label, report.workers.cpu)]
    noisy, client_bound = [], []
    for label, cpu in metered:
        lines.append(cpu_row(label, cpu))
        if cpu.others >= _NOISE_PERCENT:
            noisy.append(label)
        if cpu.by_group["bench"] >= _CLIENT_BOUND_PERCENT:
            client_bound.append(label)
    lines += [
        "",
        "CPU per call (each group's CPU time over the window / the calls completed in it):",
        cpu_per_call_header(),
    ]
    per_call = [(label, results[key]) for key, label, unit, _ in _ROWS if unit == "req/s"]
    per_call += [(sharing.query_label(s), s.query), (spread_label, spread)]
    per_call.append((workers_label, report.workers))
    lines += [cpu_per_call_row(label, result) for label, result in per_call]
    lines += ["", "Targets from the issue (this run):"]
    for target in sharing.targets(s, report.echo, c, report.node_peak_rss_mb):
        lines.append(
            f"  {target.what:<{LABEL - 2}}{target.target:<22}{target.measured:<20}"
            + ("met" if target.met else "MISSED")
        )
    if noisy:
        lines += [
            "",
            f"note: the rest of the machine used >= {_NOISE_PERCENT}% of a core in: "
            + "; ".join(noisy)
            + ".",
            "  Those rows are depressed by other work; compare ratios from a quieter run.",
        ]
        if sharing.WRITE_PHASES.intersection(noisy):
            lines.append(
                "  In the write phases (bulk publish, COPY) part of it is the kernel writing"
                " back their own data."
            )
    if client_bound:
        lines += [
            "",
            f"note: the benchmark process used >= {_CLIENT_BOUND_PERCENT}% of a core in: "
            + "; ".join(client_bound)
            + ".",
            "  The load generator shares the cores with the server and may be what limits",
            "  those rates.",
        ]
    return "\n".join(lines)


def _workers_rows(report: Report) -> tuple[LoadResult, str, str]:
    """The spread query on the main node, and the labels of it and of the workers' run."""
    c = report.config
    one = default_workers()
    spread_label = f"Query 1 key, {c.query_connections} conns, {one} worker" + "s" * (one > 1)
    workers_label = f"Query 1 key, {c.query_connections} conns, {c.compare_workers} workers"
    return report.sharing.query_spread, spread_label, workers_label


def _as_json(report: Report) -> dict[str, Any]:
    def load(result: LoadResult) -> dict[str, Any]:
        figures = {**asdict(result), "rate": result.rate}
        if result.cpu is not None:
            figures["cpu"] |= {"others": result.cpu.others, "idle": result.cpu.idle}
        return figures

    return {
        "benchmark": "foundation",
        "started": report.started.isoformat(),
        "host": {
            "cpus": os.cpu_count(),
            "loadavg_before": list(report.loadavg),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "platform": platform.platform(),
        },
        "config": asdict(report.config),
        "echo": load(report.echo),
        "echo_mtls": {
            **load(report.echo_tls),
            "ratio_to_echo": report.echo_tls.rate / report.echo.rate,
        },
        "node_whoami": {**load(report.node), "ratio_to_echo": report.node.rate / report.echo.rate},
        "tls_connect_call": {
            **load(report.tls_connect),
            "ratio_to_plaintext": report.tls_connect.rate / report.plain_connect.rate,
        },
        "plaintext_connect_call": load(report.plain_connect),
        **sharing.as_json(report.sharing, report.echo, report.config, report.node_peak_rss_mb),
        "query_spread": {
            **load(report.sharing.query_spread),
            "connections": report.config.query_connections,
            "workers": default_workers(),
            "ratio_to_echo": report.sharing.query_spread.rate / report.echo.rate,
        },
        "query_workers": {
            **load(report.workers),
            "connections": report.config.query_connections,
            "workers": report.config.compare_workers,
            "ratio_to_one_worker": report.workers.rate / report.sharing.query_spread.rate,
        },
        "node_peak_rss_mb": report.node_peak_rss_mb,
        "node_rss_budget_mb": report.config.node_rss_budget_mb,
        "postgres_peak_rss_mb": report.postgres_peak_rss_mb,
        "rss_samples": report.rss_samples,
    }


def write_json(
    report: Report, directory: Path = RESULTS_DIR, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write the report's figures (and ``extra`` figures, such as the audit phases') to
    ``directory``/foundation-<UTC timestamp>.json."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"foundation-{report.started:%Y%m%dT%H%M%SZ}.json"
    figures = {**_as_json(report), **(extra or {})}
    path.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return path


def main(
    *,
    with_audit: bool = False,
    with_events: bool = False,
    with_limits: bool = False,
    quick: bool = False,
) -> int:
    """Run the benchmark, print the table, write the JSON; return the exit status.

    With ``with_audit``, the access-log phases (``bench.audit``) run afterwards, once the
    servers have stopped, and their figures go into the same results file under "audit";
    with ``with_events``, then the change-events phases (``bench.events``, on nodes of
    their own), under "events"; with ``with_limits``, then the fairness and burst phases
    (``bench.fairness``, ``bench.burst``, on nodes of their own with the default limits),
    under "fairness" and "burst". With ``quick``, every phase in short windows on small
    data (``bench._config.quick``).
    """
    config = quick_config(Config()) if quick else Config()
    events_config = fairness_config = burst_config = config
    try:  # a bad BENCH_* variable: say so before the run
        if with_events:
            events_config = events.configured(config)
        if with_limits:
            fairness_config = fairness.configured(config)
            burst_config = burst.configured(config)
    except ValueError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(run(config))
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"bench failed: {e}", file=sys.stderr)
        return 1
    print(format_report(report))
    extra: dict[str, Any] = {}
    status = 0
    if with_audit:
        print()
        try:
            audit_report = audit.run_sync(config)
        except KeyboardInterrupt:
            print("interrupted; PostgreSQL stopped", file=sys.stderr)
            status = 130
        except audit.FAILURES as e:
            print(f"bench failed in the audit phases: {describe(e)}", file=sys.stderr)
            status = 1
        else:
            print(audit.format_report(audit_report))
            extra["audit"] = audit.as_json(audit_report)
    if with_events and status != 130:
        print()
        try:
            events_report = asyncio.run(events.run(events_config))
        except KeyboardInterrupt:
            print("interrupted; servers stopped", file=sys.stderr)
            status = 130
        except events.FAILURES as e:
            print(f"bench failed in the events phases: {describe(e)}", file=sys.stderr)
            status = 1
        else:
            print(events.format_report(events_report))
            extra["events"] = events.as_json(events_report)
    if with_limits and status != 130:
        status = _limits_phases(fairness_config, burst_config, extra) or status
    path = write_json(report, extra=extra)
    shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
    print(f"\nfigures written to {shown}")
    return status


def _limits_phases(fairness_config: Config, burst_config: Config, extra: dict[str, Any]) -> int:
    """Run the fairness, then the burst phases, printing each and adding its figures to
    ``extra``; return 130 if interrupted, 1 if one failed, else 0."""
    status = 0
    print()
    try:
        fairness_report = asyncio.run(fairness.run(fairness_config))
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    except fairness.FAILURES as e:
        print(f"bench failed in the fairness phases: {describe(e)}", file=sys.stderr)
        status = 1
    else:
        print(fairness.format_report(fairness_report))
        extra["fairness"] = fairness.as_json(fairness_report)
    print()
    try:
        burst_report = asyncio.run(burst.run(burst_config))
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    except burst.FAILURES as e:
        print(f"bench failed in the burst phases: {describe(e)}", file=sys.stderr)
        status = 1
    else:
        print(burst.format_report(burst_report))
        extra["burst"] = burst.as_json(burst_report)
    return status
