"""The foundation benchmark: what the node's gRPC front costs before any real work.

What is measured, all in one run on one machine:

1. **echo (baseline)**: a bare grpc.aio server in its own process, no TLS, one unary method
   returning its ~200-byte request (``bench._echo_server``). It is the ceiling for any
   Python grpc.aio service on this machine: one process, one event loop, the same
   library, nothing else. Everything else is read as a fraction of it, which is what stays
   comparable across noisy machines and runs.
2. **WhoAmI over mutual TLS (node)**: ``tongban serve --demo`` on a fresh data dir and
   embedded PostgreSQL, called as the ``samr`` department. WhoAmI is the cheapest
   authenticated call (TLS, the interceptor, certificate → department from the caches,
   metrics, protobuf), so its ratio to the echo is the price of the node's front door.
   The design target for the later audited query is >= 40% of the echo; this no-op is
   reported as it is.
3. **new connection + call**: a fresh channel per call (TCP + full TLS 1.3 handshake with
   client certificates, since grpc does not cache TLS sessions unless asked), one WhoAmI,
   close; against the same loop over plaintext to the echo server, which isolates the
   handshake cost from connection setup in grpc itself.
4. **node peak RSS** while phases 2 and 3 run, polled every 100 ms, against the 300 MB
   budget; the embedded PostgreSQL's RSS beside it, for information.

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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import psutil

from bench._echo_server import ECHO_METHOD, identity
from bench._load import LoadResult, run_load
from bench._servers import EchoServer, NodeServer, echo_server, node_server
from bench._watch import CpuMeter, CpuUse, PeakRss, ProcessGroup
from tongban.client import Bundle
from tongban.v1 import node_pb2, node_pb2_grpc

__all__ = ["Config", "main", "run"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Config:
    concurrency: int = 64
    """Concurrent callers on the long-lived channel (phases 1 and 2)."""
    warmup_seconds: float = 2.0
    """Load before each measured window of phases 1 and 2, discarded."""
    duration_seconds: float = 8.0
    """Length of the measured window of phases 1 and 2."""
    connect_workers: int = 8
    """Concurrent workers in the new-connection phases."""
    connect_warmup_seconds: float = 1.0
    connect_duration_seconds: float = 4.0
    payload_bytes: int = 200
    """Size of the echo request (and so of its response)."""
    department: str = "samr"
    """Whose bundle the node is called with."""
    officer_id: str = "bench-01"
    call_timeout_seconds: float = 30.0
    """Deadline of each call: a hung server fails the run instead of stalling it."""
    node_rss_budget_mb: float = 300.0


@dataclass(frozen=True)
class Report:
    started: datetime
    loadavg: tuple[float, float, float]
    """The machine's load average just before the run."""
    config: Config
    echo: LoadResult
    node: LoadResult
    tls_connect: LoadResult
    plain_connect: LoadResult
    node_peak_rss_mb: float
    postgres_peak_rss_mb: float
    rss_samples: int


# A channel with its own subchannel pool opens its own connection; channels sharing the
# global pool (the default) to the same target may share one and skip the handshake.
_FRESH_CONNECTION = ("grpc.use_local_subchannel_pool", 1)


async def run(config: Config) -> Report:
    """Start both servers, run the four phases, stop the servers; return the figures.

    Raises RuntimeError if a server does not start or WhoAmI names someone else, and an
    ExceptionGroup holding the error if a call fails under load.
    """
    started = datetime.now(UTC)
    loadavg = os.getloadavg()
    bench = psutil.Process()
    async with echo_server() as echo, node_server() as node:
        bundle = Bundle.load(node.bundles / config.department)
        tls = _TlsTarget.from_bundle(node.target, bundle)
        await _check_identity(tls, config)

        echo_result = await _echo_load(echo, config, _cpu(bench, echo=echo))

        node_groups: Mapping[str, ProcessGroup] = {
            "node": lambda: [node.process],
            "postgres": node.postgres,
        }
        with PeakRss(node_groups) as rss:
            node_result = await _node_load(tls, config, _cpu(bench, node=node))
            tls_result = await _connect_load(
                lambda: _tls_connect_call(tls, config), config, _cpu(bench, node=node)
            )
        plain_result = await _connect_load(
            lambda: _plain_connect_call(echo, config), config, _cpu(bench, echo=echo)
        )
    return Report(
        started=started,
        loadavg=loadavg,
        config=config,
        echo=echo_result,
        node=node_result,
        tls_connect=tls_result,
        plain_connect=plain_result,
        node_peak_rss_mb=rss.peak_mb["node"],
        postgres_peak_rss_mb=rss.peak_mb["postgres"],
        rss_samples=rss.samples,
    )


def _cpu(
    bench: psutil.Process, *, echo: EchoServer | None = None, node: NodeServer | None = None
) -> CpuMeter:
    groups: dict[str, ProcessGroup] = {"bench": lambda: [bench]}
    if echo is not None:
        groups["server"] = lambda: [echo.process]
    if node is not None:
        groups["server"] = lambda: [node.process]
        groups["postgres"] = node.postgres
    return CpuMeter(groups)


@dataclass(frozen=True)
class _TlsTarget:
    """Where and how to open a mutual-TLS channel to the node, as one department."""

    target: str
    server_name: str
    credentials: grpc.ChannelCredentials  # made once and shared, as a real client would

    @classmethod
    def from_bundle(cls, target: str, bundle: Bundle) -> _TlsTarget:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=bundle.ca_pem,
            private_key=bundle.tls_key_pem,
            certificate_chain=bundle.tls_cert_pem,
        )
        return cls(target, bundle.server_name, credentials)

    def channel(self, *options: tuple[str, Any]) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(
            self.target,
            self.credentials,
            options=[("grpc.ssl_target_name_override", self.server_name), *options],
        )


def _metadata(config: Config) -> tuple[tuple[str, str], ...]:
    return (("x-tongban-officer", config.officer_id),)


async def _check_identity(tls: _TlsTarget, config: Config) -> None:
    # Measure the authenticated path, not a fast refusal: one call must name our department.
    async with tls.channel() as channel:
        reply = await node_pb2_grpc.NodeServiceStub(channel).WhoAmI(
            node_pb2.WhoAmIRequest(),
            metadata=_metadata(config),
            timeout=config.call_timeout_seconds,
        )
    if reply.department.code != config.department or reply.officer_id != config.officer_id:
        raise RuntimeError(
            f"WhoAmI answered department {reply.department.code!r}, officer "
            f"{reply.officer_id!r}; expected {config.department!r}, {config.officer_id!r}"
        )


async def _echo_load(echo: EchoServer, config: Config, cpu: CpuMeter) -> LoadResult:
    payload = os.urandom(config.payload_bytes)
    async with grpc.aio.insecure_channel(echo.target) as channel:
        method = channel.unary_unary(
            ECHO_METHOD, request_serializer=identity, response_deserializer=identity
        )

        async def call() -> None:
            await method(payload, timeout=config.call_timeout_seconds)

        return await run_load(
            call,
            concurrency=config.concurrency,
            warmup=config.warmup_seconds,
            duration=config.duration_seconds,
            cpu=cpu,
        )


async def _node_load(tls: _TlsTarget, config: Config, cpu: CpuMeter) -> LoadResult:
    request = node_pb2.WhoAmIRequest()
    metadata = _metadata(config)
    async with tls.channel() as channel:
        stub = node_pb2_grpc.NodeServiceStub(channel)

        async def call() -> None:
            await stub.WhoAmI(request, metadata=metadata, timeout=config.call_timeout_seconds)

        return await run_load(
            call,
            concurrency=config.concurrency,
            warmup=config.warmup_seconds,
            duration=config.duration_seconds,
            cpu=cpu,
        )


async def _tls_connect_call(tls: _TlsTarget, config: Config) -> None:
    async with tls.channel(_FRESH_CONNECTION) as channel:
        await node_pb2_grpc.NodeServiceStub(channel).WhoAmI(
            node_pb2.WhoAmIRequest(),
            metadata=_metadata(config),
            timeout=config.call_timeout_seconds,
        )


async def _plain_connect_call(echo: EchoServer, config: Config) -> None:
    async with grpc.aio.insecure_channel(echo.target, options=[_FRESH_CONNECTION]) as channel:
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

_LABEL = 44
_NOISE_PERCENT = 30  # kernel threads alone take ~10-15% of a core under loopback load
_CLIENT_BOUND_PERCENT = 90

_ROWS = (
    ("echo", "echo (no TLS, baseline)", "req/s", None),
    ("node", "WhoAmI over mTLS (node)", "req/s", "echo"),
    ("tls_connect", "new TLS connection + call", "calls/s", "plain_connect"),
    ("plain_connect", "new plaintext connection + call (baseline)", "calls/s", None),
)


def _results(report: Report) -> dict[str, LoadResult]:
    return {key: getattr(report, key) for key, _, _, _ in _ROWS}


def _load_row(label: str, result: LoadResult, unit: str, baseline: LoadResult | None) -> str:
    row = (
        f"{label:<{_LABEL}}{result.rate:>8,.0f} {unit:<8}"
        f"p50 {result.p50_ms:5.1f} ms  p99 {result.p99_ms:5.1f} ms"
    )
    if baseline is not None:
        row += f"   {result.rate / baseline.rate:4.0%} of baseline"
    return row


def _cpu_row(label: str, cpu: CpuUse) -> str:
    cells = [cpu.by_group.get(group) for group in ("bench", "server", "postgres")]
    cells += [cpu.others, cpu.idle]
    return f"{label:<{_LABEL}}" + "".join(
        f"{'-':>9}" if value is None else f"{value:>8.0f}%" for value in cells
    )


def format_report(report: Report) -> str:
    """Return the human table: header, figures beside their baselines, CPU use, notes."""
    c = report.config
    cores = os.cpu_count() or 1
    lines = [
        f"Tongban foundation benchmark  {report.started:%Y-%m-%d %H:%M:%S %Z}",
        f"{cores} CPUs (load average before the run "
        + " ".join(f"{load:.2f}" for load in report.loadavg)
        + f"), Python {platform.python_version()}, grpcio {grpc.__version__}",
        f"{c.concurrency} callers on one channel, {c.warmup_seconds:g} s warm-up, "
        f"{c.duration_seconds:g} s measured; new connections: {c.connect_workers} workers, "
        f"{c.connect_warmup_seconds:g} s warm-up, {c.connect_duration_seconds:g} s measured",
        "",
    ]
    results = _results(report)
    for key, label, unit, baseline in _ROWS:
        lines.append(_load_row(label, results[key], unit, results.get(baseline or "")))
    lines += [
        f"{'node peak RSS':<{_LABEL}}{report.node_peak_rss_mb:>8,.0f} MB      "
        f"(budget {c.node_rss_budget_mb:g} MB)",
        f"{'embedded PostgreSQL peak RSS':<{_LABEL}}{report.postgres_peak_rss_mb:>8,.0f} MB      "
        "(sum over its processes; shared memory counted in each)",
        "",
        f"CPU in each measured window, % of one core ({cores} cores = {100 * cores}%):",
        f"{'':<{_LABEL}}"
        + "".join(f"{h:>9}" for h in ("bench", "server", "postgres", "other", "idle")),
    ]
    noisy, client_bound = [], []
    for key, label, _, _ in _ROWS:
        cpu = results[key].cpu
        assert cpu is not None  # every phase is run with a meter
        lines.append(_cpu_row(label, cpu))
        if cpu.others >= _NOISE_PERCENT:
            noisy.append(label)
        if cpu.by_group["bench"] >= _CLIENT_BOUND_PERCENT:
            client_bound.append(label)
    if noisy:
        lines += [
            "",
            f"note: the rest of the machine used >= {_NOISE_PERCENT}% of a core in: "
            + "; ".join(noisy)
            + ".",
            "  Those rows are depressed by other work; compare ratios from a quieter run.",
        ]
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
        "node_whoami": {**load(report.node), "ratio_to_echo": report.node.rate / report.echo.rate},
        "tls_connect_call": {
            **load(report.tls_connect),
            "ratio_to_plaintext": report.tls_connect.rate / report.plain_connect.rate,
        },
        "plaintext_connect_call": load(report.plain_connect),
        "node_peak_rss_mb": report.node_peak_rss_mb,
        "node_rss_budget_mb": report.config.node_rss_budget_mb,
        "postgres_peak_rss_mb": report.postgres_peak_rss_mb,
        "rss_samples": report.rss_samples,
    }


def write_json(report: Report, directory: Path = RESULTS_DIR) -> Path:
    """Write the report's figures to ``directory``/foundation-<UTC timestamp>.json."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"foundation-{report.started:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(_as_json(report), indent=2) + "\n", encoding="utf-8")
    return path


def main() -> int:
    """Run the benchmark, print the table, write the JSON; return the exit status."""
    try:
        report = asyncio.run(run(Config()))
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"bench failed: {e}", file=sys.stderr)
        return 1
    print(format_report(report))
    path = write_json(report)
    shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
    print(f"\nfigures written to {shown}")
    return 0
