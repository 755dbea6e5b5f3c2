"""The fairness benchmark: one department's audited queries, alone and while another
department loads the node at full speed, on a node with its default per-department limits.

One node (``tongban serve --demo`` on a fresh data dir and embedded PostgreSQL, started as
every phase starts it) on the node's default call limits: 64 calls in progress, 2,000
calls started per second and 16 subscriptions per department (``bench.foundation`` and
``bench.sharing`` run with them raised out of reach). The setup is ``bench.sharing``'s:
``samr`` registers ``samr.bench`` and loads 100,000 generated records into it
(StreamRecords, 5,000 a batch); it also registers ``samr.bench_load``, empty, for B. A few
unmeasured Issue calls warm samr's seal and the licence path before A.

A. **tax alone (baseline)**: the audited single-key query load of ``bench.sharing``'s
   phase 6: 64 callers as ``tax`` on one channel, 3 of the 10 fields of one random key a
   call, 2 s warm-up, 8 s measured; p50, p99 and queries/s.
B. **tax while samr runs at full speed**: the same load again, while ``samr``, from a
   process of its own (``bench._peer``; a department's own system, and its client's
   Python kept off this process's event loop), bulk-loads fresh records into
   ``samr.bench_load`` through one StreamRecords stream (5,000 a message, as fast as the
   node takes them) and 16 callers issue business licences (the story's claims) in a
   loop. samr's records/s and licences/s are counted over the same window.
C. **tax while the public verifies at full speed**: the same load again, while
   ``fairness_verifiers`` clients (from samr's process, as the public's scanners would
   be: no client certificate) post QR texts of 20 licences to the node's ``/verify`` in
   a loop, a refusal (429, past the public's bucket: the node's default limits per
   department) not waited out. The verified and refused requests/s are counted over the
   same window. The node's HTTP visitors pass the departments' limiter and loop share
   (``http:public``), so tax should keep its rate and p99 about as in B; before they
   did, the flood was served at any rate as the node's own work.

The issue's target: tax's p99 in B at most 2x its p99 in A (printed as met or missed,
never asserted). A call refused for a limit (RESOURCE_EXHAUSTED) is retried after the
node's RetryInfo delay, as a client should, so refusals show in the latency; the node's
own count of refused calls (``tongban_calls_refused`` on ``/metrics``) is printed per
department and reason for each phase.

Every process shares this machine's cores: samr's client process, this one (tax's), the
node and PostgreSQL. B therefore also measures the CPU samr's client takes from the node;
the CPU split shows how much. BENCH_FAIRNESS_SECONDS (measured window, default 8),
BENCH_FAIRNESS_RECORDS (records queried, default 100,000), BENCH_FAIRNESS_ISSUERS
(default 16) and BENCH_FAIRNESS_VERIFIERS (default 64) change a run.
"""

from __future__ import annotations

import os
import platform
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
import grpc
import psutil

from bench import sharing
from bench._client import Department, admitted
from bench._config import Config
from bench._load import LoadResult, run_load
from bench._main import from_environment, host_figures, run_main, write_results
from bench._peer import LoadFigures, VerifyFigures, peer, percentiles
from bench._servers import node_server
from bench._table import LABEL, cpu_header, cpu_row, load_row, rate_row
from bench._watch import CpuMeter, CpuUse
from tongban.errors import TongbanError
from tongban.exchange.settings import Settings

__all__ = ["FairnessReport", "as_json", "configured", "format_report", "main", "run"]

WARM_UP_ISSUES = 8
F = TypeVar("F")
_ENV = {  # BENCH_FAIRNESS_* variable -> Config field
    "BENCH_FAIRNESS_SECONDS": "duration_seconds",
    "BENCH_FAIRNESS_RECORDS": "records",
    "BENCH_FAIRNESS_ISSUERS": "fairness_issuers",
    "BENCH_FAIRNESS_VERIFIERS": "fairness_verifiers",
}


def configured(config: Config, environ: Mapping[str, str] = os.environ) -> Config:
    """``config`` with the BENCH_FAIRNESS_* variables applied; ValueError if one is bad."""
    return from_environment(config, _ENV, floats={"duration_seconds"}, environ=environ)


def _default(name: str) -> Any:
    return Settings.model_fields[name].default


Refused = dict[str, dict[str, int]]
"""Refused calls by department, then reason."""


@dataclass(frozen=True)
class FairnessReport:
    started: datetime
    loadavg: tuple[float, float, float]
    config: Config
    setup_records_per_s: float
    """samr's initial load of the queried dataset (for information)."""
    alone: LoadResult
    """tax's query load in A."""
    shared: LoadResult
    """tax's query load in B."""
    samr: LoadFigures
    """samr's load in B."""
    refused_alone: Refused
    """The node's count over A."""
    refused_shared: Refused
    tax_retried_alone: dict[str, int]
    """Refusals tax's callers saw (and retried), by reason."""
    tax_retried_shared: dict[str, int]
    public: LoadResult
    """tax's query load in C."""
    verifiers: VerifyFigures
    """The public's verifying in C."""
    refused_public: Refused
    tax_retried_public: dict[str, int]

    @property
    def p99_ratio(self) -> float:
        return self.shared.p99_ms / self.alone.p99_ms


async def run(config: Config) -> FairnessReport:
    """Start a node on its default limits, set up, run A and B; stop the node; return
    the figures. Raises RuntimeError if a server or samr's process fails, TongbanError
    if a call fails for another reason than a limit."""
    started = datetime.now(UTC)
    loadavg = os.getloadavg()
    bench = psutil.Process()
    async with node_server(default_limits=True) as node:
        owner = Department.of(node, config.department, config)
        consumer = Department.of(node, config.consumer, config)
        keys, setup_rate = await _set_up(owner, config)
        async with peer(node, owner.code, config.officer_id, config.call_timeout_seconds) as samr:
            await samr.burst(concurrency=4, calls=WARM_UP_ISSUES)  # seal, licence path warm

            def meter() -> CpuMeter:
                return CpuMeter(
                    {
                        "bench": lambda: [bench],
                        "server": node.server,
                        "postgres": node.postgres,
                        "samr": lambda: [samr.ps],
                    }
                )

            before = await node.calls_refused()
            alone, tax_alone = await _tax_load(consumer, keys, config, meter())
            middle = await node.calls_refused()
            shared, tax_shared, samr_figures = await _tax_beside(
                samr.start_load(
                    dataset=config.fairness_dataset,
                    batch=config.publish_batch,
                    issuers=config.fairness_issuers,
                    warmup=config.warmup_seconds,
                    duration=config.duration_seconds,
                ),
                samr.stop_load,
                consumer,
                keys,
                config,
                meter(),
            )
            after = await node.calls_refused()
            public, tax_public, verifiers = await _tax_beside(
                samr.start_verifying(
                    http=node.http,
                    callers=config.fairness_verifiers,
                    licences=config.fairness_licences,
                    warmup=config.warmup_seconds,
                    duration=config.duration_seconds,
                ),
                samr.stop_verifying,
                consumer,
                keys,
                config,
                meter(),
            )
            last = await node.calls_refused()
    return FairnessReport(
        started=started,
        loadavg=loadavg,
        config=config,
        setup_records_per_s=setup_rate,
        alone=alone,
        shared=shared,
        samr=samr_figures,
        refused_alone=_difference(before, middle),
        refused_shared=_difference(middle, after),
        tax_retried_alone=dict(tax_alone),
        tax_retried_shared=dict(tax_shared),
        public=public,
        verifiers=verifiers,
        refused_public=_difference(after, last),
        tax_retried_public=dict(tax_public),
    )


async def _set_up(owner: Department, config: Config) -> tuple[list[str], float]:
    """Register and load the queried dataset and register samr's own for B; return the
    queried keys and the initial load's records/s."""
    rows = sharing.generate_records(config.records, random.Random(config.seed))
    async with owner.client() as client:
        await client.register_dataset(sharing.dataset_spec(config.dataset), publish=True)
        await client.register_dataset(sharing.dataset_spec(config.fairness_dataset), publish=True)

        async def batches() -> AsyncIterator[list[sharing.Row]]:
            for start in range(0, len(rows), config.publish_batch):
                yield rows[start : start + config.publish_batch]

        t0 = time.perf_counter()
        counts = await client.stream_records(config.dataset, batches())
        seconds = time.perf_counter() - t0
    if counts.inserted != len(rows):
        raise RuntimeError(f"StreamRecords inserted {counts.inserted:,} of {len(rows):,} records")
    return [key for key, _ in rows], len(rows) / seconds


async def _tax_load(
    consumer: Department, keys: list[str], config: Config, cpu: CpuMeter
) -> tuple[LoadResult, Counter[str]]:
    """Phase 6's load; a refused call is retried after the node's delay (and counted)."""
    refused: Counter[str] = Counter()
    async with sharing.single_key_query(consumer, keys, config) as query:

        async def call() -> None:
            await admitted(query, refused)

        result = await run_load(
            call,
            concurrency=config.concurrency,
            warmup=config.warmup_seconds,
            duration=config.duration_seconds,
            cpu=cpu,
        )
    return result, refused


async def _tax_beside(
    started: Awaitable[None],
    stop: Callable[[], Awaitable[F]],
    consumer: Department,
    keys: list[str],
    config: Config,
    cpu: CpuMeter,
) -> tuple[LoadResult, Counter[str], F]:
    """tax's load while samr's process does what ``started`` told it (its window opens
    warmup seconds from its command, as tax's does from here); then ``stop``'s figures."""
    await started
    try:
        result, refused = await _tax_load(consumer, keys, config, cpu)
    finally:
        figures = await stop()
    return result, refused, figures


def _difference(before: Counter[tuple[str, str]], after: Counter[tuple[str, str]]) -> Refused:
    refused: Refused = {}
    for (department, reason), count in (after - before).items():
        refused.setdefault(department, {})[reason] = count
    return refused


# --- output -----------------------------------------------------------------------------


def _refused_row(label: str, refused: Refused, departments: tuple[str, ...]) -> str:
    cells = [f"{d} {refused.get(d, {}).get('RATE_LIMITED', 0):,}" for d in departments]
    others = [
        f"{d} {reason} {count:,}"
        for d, reasons in sorted(refused.items())
        for reason, count in sorted(reasons.items())
        if reason != "RATE_LIMITED" or d not in departments
    ]
    detail = ", ".join(cells) + (f"   (also: {'; '.join(others)})" if others else "")
    return f"{label:<{LABEL}}{'':>8} {'':<10}{detail}"


def _beside(load: LoadResult, alone: LoadResult) -> str:
    return (
        f"p50 {load.p50_ms:5.1f} ms  p99 {load.p99_ms:5.1f} ms   of A: rate "
        f"{load.rate / alone.rate:.0%}, p50 {load.p50_ms / alone.p50_ms:.2f}x, "
        f"p99 {load.p99_ms / alone.p99_ms:.2f}x"
    )


def format_report(report: FairnessReport) -> str:
    """The human table: tax in B beside A, samr's load, refusals, CPU, the target."""
    c = report.config
    s = report.samr
    tax, samr = c.consumer, c.department
    cores = os.cpu_count() or 1
    p50, p99 = percentiles(s.issue_latencies_ms)
    a, b, c_, v = report.alone, report.shared, report.public, report.verifiers
    v50, v99 = percentiles(v.latencies_ms)
    lines = [
        f"Tongban benchmark: fairness between departments  {report.started:%Y-%m-%d %H:%M:%S %Z}",
        f"{cores} CPUs (load average before the run "
        + " ".join(f"{load:.2f}" for load in report.loadavg)
        + f"), Python {platform.python_version()}, grpcio {grpc.__version__}",
        "node on its default limits per department: "
        f"{_default('dept_max_concurrent_calls')} calls in progress, "
        f"{_default('dept_calls_per_second'):,.0f} calls/s, "
        f"{_default('dept_max_subscriptions')} subscriptions",
        f"{tax}: {c.concurrency} callers, audited 1-key query of {c.dataset} "
        f"({c.records:,} records, loaded at {report.setup_records_per_s:,.0f} records/s), "
        f"{len(c.query_fields)} fields; {c.warmup_seconds:g} s warm-up, "
        f"{c.duration_seconds:g} s measured",
        f"B: {samr} (its own process) StreamRecords {c.publish_batch:,}/batch into "
        f"{c.fairness_dataset} + {c.fairness_issuers} callers issuing business licences",
        f"C: the public (samr's process, no client certificate) posting QR texts of "
        f"{c.fairness_licences} licences to /verify, {c.fairness_verifiers} verifiers, 429s "
        "not waited out",
        "",
        load_row(f"A: {tax} query alone (baseline)", report.alone, "req/s", None),
        rate_row(
            f"B: {tax} query, {samr} at full speed",
            b.rate,
            "req/s",
            _beside(b, a),
        ),
        rate_row(
            f"B: {samr} bulk load (StreamRecords)",
            s.records_rate,
            "records/s",
            f"{s.inserted:,} inserted over the whole load",
        ),
        rate_row(
            f"B: {samr} Issue, {c.fairness_issuers} callers",
            s.licences_rate,
            "issued/s",
            f"p50 {p50:5.1f} ms  p99 {p99:5.1f} ms",
        ),
        rate_row(
            f"C: {tax} query, the public verifying",
            c_.rate,
            "req/s",
            _beside(c_, a),
        ),
        rate_row(
            f"C: /verify, {c.fairness_verifiers} verifiers",
            v.verified_rate,
            "req/s",
            f"p50 {v50:5.1f} ms  p99 {v99:5.1f} ms verified; refused 429: {v.refused_rate:,.0f}/s",
        ),
        _refused_row("A: calls refused RATE_LIMITED (node)", report.refused_alone, (tax, samr)),
        _refused_row("B: calls refused RATE_LIMITED (node)", report.refused_shared, (tax, samr)),
        _refused_row(
            "C: calls refused RATE_LIMITED (node)", report.refused_public, (tax, "http:public")
        ),
        "",
        f"CPU in each measured window, % of one core ({cores} cores = {100 * cores}%):",
        cpu_header(("samr",)),
    ]
    for label, result in (
        (f"A: {tax} query alone", report.alone),
        (f"B: {tax} query, {samr} loading", report.shared),
        (f"C: {tax} query, the public verifying", report.public),
    ):
        assert result.cpu is not None  # both are run with a meter
        lines.append(cpu_row(label, result.cpu, ("samr",)))
    target = c.fairness_target_p99_ratio
    met = report.p99_ratio <= target
    lines += [
        "",
        "Target from the issue (this run):",
        f"  {f'{tax} p99 in B / p99 in A':<{LABEL - 2}}{f'<= {target:g}x':<22}"
        f"{f'{report.p99_ratio:.2f}x':<20}" + ("met" if met else "MISSED"),
    ]
    retried = {
        **report.tax_retried_alone,
        **report.tax_retried_shared,
        **report.tax_retried_public,
    }
    if retried:
        lines += [
            "",
            f"note: {tax}'s callers were refused and retried after the node's delay: "
            f"A {report.tax_retried_alone}, B {report.tax_retried_shared}, "
            f"C {report.tax_retried_public}; the waits are in its latencies.",
        ]
    if s.refused:
        lines.append(f"note: {samr}'s callers were refused and retried: {s.refused}")
    return "\n".join(lines)


def _cpu_json(cpu: CpuUse | None) -> dict[str, Any] | None:
    return None if cpu is None else {**asdict(cpu), "others": cpu.others, "idle": cpu.idle}


def as_json(report: FairnessReport) -> dict[str, Any]:
    def load(result: LoadResult) -> dict[str, Any]:
        return {**asdict(result), "rate": result.rate, "cpu": _cpu_json(result.cpu)}

    s, v = report.samr, report.verifiers
    p50, p99 = percentiles(s.issue_latencies_ms)
    v50, v99 = percentiles(v.latencies_ms)
    return {
        "benchmark": "fairness",
        "started": report.started.isoformat(),
        "host": host_figures(report.loadavg),
        "config": asdict(report.config),
        "node_limits": {
            "concurrent": _default("dept_max_concurrent_calls"),
            "per_second": _default("dept_calls_per_second"),
            "subscriptions": _default("dept_max_subscriptions"),
        },
        "setup_records_per_s": report.setup_records_per_s,
        "tax_alone": load(report.alone),
        "tax_with_samr_loading": {
            **load(report.shared),
            "rate_of_alone": report.shared.rate / report.alone.rate,
            "p99_of_alone": report.p99_ratio,
        },
        "samr_loading": {
            "seconds": s.seconds,
            "records_in_window": s.records,
            "records_per_s": s.records_rate,
            "inserted": s.inserted,
            "licences_in_window": s.licences,
            "licences_per_s": s.licences_rate,
            "issue_p50_ms": p50,
            "issue_p99_ms": p99,
            "refused_and_retried": s.refused,
        },
        "tax_with_the_public_verifying": {
            **load(report.public),
            "rate_of_alone": report.public.rate / report.alone.rate,
            "p99_of_alone": report.public.p99_ms / report.alone.p99_ms,
        },
        "public_verifying": {
            "seconds": v.seconds,
            "verifiers": report.config.fairness_verifiers,
            "statuses": {str(status): n for status, n in v.statuses.items()},
            "verified_per_s": v.verified_rate,
            "refused_per_s": v.refused_rate,
            "verify_p50_ms": v50,
            "verify_p99_ms": v99,
        },
        "refused_by_node": {
            "alone": report.refused_alone,
            "shared": report.refused_shared,
            "public": report.refused_public,
        },
        "tax_refused_and_retried": {
            "alone": report.tax_retried_alone,
            "shared": report.tax_retried_shared,
            "public": report.tax_retried_public,
        },
        "target": {
            "p99_ratio_at_most": report.config.fairness_target_p99_ratio,
            "measured": report.p99_ratio,
            "met": report.p99_ratio <= report.config.fairness_target_p99_ratio,
        },
    }


FAILURES = (RuntimeError, TongbanError, aiohttp.ClientError, OSError, ExceptionGroup)
"""What ``run`` raises when the benchmark cannot complete (reported, not a traceback)."""


def main() -> int:
    """Run the fairness phases, print the table, write the JSON; return the status."""
    return run_main(
        configured,
        run,
        format_report,
        lambda report: write_results("fairness", report.started, as_json(report)),
        FAILURES,
    )
