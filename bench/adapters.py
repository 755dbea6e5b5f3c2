"""The adapter benchmark: a legacy table's snapshot into the exchange, and the latency
from a change in one legacy system to the row written into another's.

A node runs as ``tongban serve --demo`` (a subprocess, embedded PostgreSQL). The legacy
systems are a database ``legacy_bench`` created on the node's own PostgreSQL server (the
machine has one; a real deployment has the legacy database elsewhere) and a SQLite file.
The adapters run in this process through ``AdapterRunner``, the code ``tongban adapter
run`` runs.

1. **snapshot**: ``BENCH_ADAPTERS_ROWS`` (default 1,000,000) enterprises are loaded into
   the legacy table ``t_qydj`` with one asyncpg ``COPY`` — timed: that is the **baseline**,
   the same rows moved by the fastest bulk path PostgreSQL has, with no mapping, no
   checks, no network, no exchange. Then samr's adapter reads the table as a
   ``snapshot_diff`` stream (batches of 5,000 by key), maps and checks every row (USCC
   check character, a ``%Y%m%d`` date, a decimal), fingerprints it, publishes each batch
   with one ``PublishRecords`` call over mutual TLS and commits its state per batch. The
   rate is rows over the pass's wall time; CPU use per process is shown beside it.
2. **propagation**: samr's adapter reads a second table (``t_change``, cursor mode,
   ``poll_seconds`` ``BENCH_ADAPTERS_POLL`` = 0.1) into ``samr.enterprise_latency``; tax's
   adapter subscribes to it and writes each record into its SQLite register. A writer
   inserts or updates ``BENCH_ADAPTERS_CHANGES`` (300) rows at 20 a second, each its own
   transaction, and notes when it committed; the latency of a change ends when tax's
   write-back loop has written it, recorded it and acknowledged it (its batch event,
   in this process, on the same clock). The poll interval is part of it, by design: a
   cursor adapter learns of a change only when it next reads.

Targets (DESIGN.md): snapshot ≥ 20,000 rows/s; propagation p95 ≤ 1 s. They are printed
as met or missed, never asserted. ``python -m bench adapters``.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from bench._servers import NodeServer, node_server
from bench._table import LABEL, cpu_header, cpu_row, rate_row
from bench._watch import CpuMeter, CpuUse, ProcessGroup
from tongban.adapters import load_mapping
from tongban.adapters.runner import AdapterRunner
from tongban.cli.adapter_cmds import VALIDATORS
from tongban.cli.story_data import ENTERPRISE
from tongban.client import Bundle, ExchangeClient
from tongban.errors import TongbanError
from tongban.exchange.catalogue.subject_ids import uscc_check_character

__all__ = ["AdaptersReport", "main", "run"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SNAPSHOT_TARGET = 20_000.0
P95_TARGET_MS = 1000.0

_SAMR_SNAPSHOT = """\
adapter: bench-samr
state: samr.state.sqlite
source: {{kind: postgres, dsn: "{dsn}"}}
streams:
  - name: enterprises
    table: t_qydj
    dataset: samr.enterprise
    key: uscc
    batch_size: 5000
    mode: {{kind: snapshot_diff, key_column: id}}
    fields:
      uscc: {{column: tyshxydm, check: uscc}}
      name: qymc
      address: zs
      registered_capital: {{column: zczb, type: decimal}}
      established: {{column: clrq, type: date, formats: ["%Y%m%d"]}}
"""
_SAMR_CHANGES = """\
adapter: bench-samr-changes
state: samr-changes.state.sqlite
poll_seconds: {poll}
source: {{kind: postgres, dsn: "{dsn}"}}
streams:
  - name: changes
    table: t_change
    dataset: samr.enterprise_latency
    key: uscc
    mode: {{kind: cursor, cursor_column: gxsj, key_column: id, look_back: 5}}
    fields:
      uscc: {{column: tyshxydm, check: uscc}}
      name: qymc
      address: zs
"""
_TAX = """\
adapter: bench-tax
state: tax.state.sqlite
source: {kind: sqlite, path: tax.db}
write_back:
  - dataset: samr.enterprise_latency
    table: t_swdj
    key_column: nsrsbh
    columns: {nsrmc: name, scjydz: address}
    subscribe: {purpose: 登记信息同步, max_wait_seconds: 0.01}
"""


def _uscc(n: int) -> str:
    first17 = f"91330102{n:09d}"
    return first17 + uscc_check_character(first17)


@dataclass
class AdaptersReport:
    rows: int
    copy_seconds: float
    snapshot_seconds: float
    snapshot_published: int
    snapshot_cpu: dict[str, float]
    changes: int
    p50_ms: float
    p95_ms: float
    max_ms: float
    poll_seconds: float
    machine: dict[str, Any]

    @property
    def copy_rate(self) -> float:
        return self.rows / self.copy_seconds

    @property
    def snapshot_rate(self) -> float:
        return self.rows / self.snapshot_seconds


def _client(node: NodeServer, code: str) -> ExchangeClient:
    bundle = Bundle.load(node.bundles / code)
    return ExchangeClient(bundle, target=node.target, officer_id="BENCH-01", timeout=120)


async def _legacy_database(node: NodeServer) -> str:
    admin = await asyncpg.connect(node.dsn())
    try:
        await admin.execute("CREATE DATABASE legacy_bench")
    finally:
        await admin.close()
    return node.dsn().replace("/tongban?", "/legacy_bench?")


async def _load(dsn: str, rows: int) -> float:
    """Create and fill the legacy table; return the COPY's seconds (the baseline)."""
    records = [
        (
            n,
            _uscc(n),
            f"杭州测试企业{n}有限公司",
            f"浙江省杭州市上城区解放路{n % 1000}号",
            Decimal(n % 10_000) + Decimal("0.50"),
            f"2026{1 + n % 12:02d}{1 + n % 28:02d}",
        )
        for n in range(1, rows + 1)
    ]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE t_qydj (id integer PRIMARY KEY, tyshxydm char(18) NOT NULL, "
            "qymc varchar(200), zs varchar(300), zczb numeric(18,2), clrq char(8))"
        )
        started = time.perf_counter()
        await conn.copy_records_to_table(
            "t_qydj", records=records, columns=["id", "tyshxydm", "qymc", "zs", "zczb", "clrq"]
        )
        copy_seconds = time.perf_counter() - started
        await conn.execute("ANALYZE t_qydj")
    finally:
        await conn.close()
    return copy_seconds


async def _snapshot(
    node: NodeServer, dsn: str, work: Path, groups: dict[str, ProcessGroup], rows: int
) -> tuple[float, int, CpuUse]:
    config = work / "samr.yaml"
    config.write_text(_SAMR_SNAPSHOT.format(dsn=dsn), encoding="utf-8")
    mapping = load_mapping(config, known_checks=VALIDATORS)
    last = [0.0]

    def progress(event: dict[str, Any]) -> None:
        now = time.monotonic()
        if event["event"] == "progress" and now - last[0] >= 5:
            last[0] = now
            print(
                f"  snapshot: {event['rows']:,}/{rows:,} rows, {event['rows_per_s']:,.0f} rows/s",
                file=sys.stderr,
                flush=True,
            )

    async with _client(node, "samr") as samr:
        await samr.register_dataset(ENTERPRISE, publish=True)
        runner = AdapterRunner(mapping, client=samr, validators=VALIDATORS, on_event=progress)
        meter = CpuMeter(groups)
        meter.start()
        started = time.perf_counter()
        summary = await runner.run(once=True)
        seconds = time.perf_counter() - started
        cpu = meter.stop()
    if not summary.ok:
        raise RuntimeError(f"the snapshot failed: {summary.errors}")
    return seconds, summary.passes["enterprises"].inserts, cpu


async def _propagation(
    node: NodeServer, dsn: str, work: Path, changes: int, poll: float
) -> list[float]:
    spec = type(ENTERPRISE)()
    spec.CopyFrom(ENTERPRISE)
    spec.code = "samr.enterprise_latency"
    conn = await asyncpg.connect(dsn)
    await conn.execute(
        "CREATE TABLE t_change (id serial PRIMARY KEY, tyshxydm char(18) NOT NULL UNIQUE, "
        "qymc text, zs text, gxsj timestamp NOT NULL DEFAULT clock_timestamp())"
    )
    tax_db = work / "tax.db"
    legacy = sqlite3.connect(tax_db)
    legacy.execute("CREATE TABLE t_swdj (nsrsbh TEXT PRIMARY KEY, nsrmc TEXT, scjydz TEXT)")
    legacy.commit()
    legacy.close()
    (work / "samr-changes.yaml").write_text(
        _SAMR_CHANGES.format(dsn=dsn, poll=poll), encoding="utf-8"
    )
    (work / "tax.yaml").write_text(textwrap.dedent(_TAX), encoding="utf-8")
    # A key's changes are 7.5 s apart (150 keys at 20 changes a second), so the write of
    # a key ends the one change of it outstanding.
    committed: dict[str, float] = {}
    latencies: list[float] = []

    def written(event: dict[str, Any]) -> None:
        if event["event"] != "write_back":
            return
        now = time.perf_counter()
        for key in event["keys"]:
            at = committed.pop(key, None)
            if at is not None:
                latencies.append(now - at)

    stop = asyncio.Event()
    async with _client(node, "samr") as samr, _client(node, "tax") as tax:
        await samr.register_dataset(spec, publish=True)
        publisher = AdapterRunner(
            load_mapping(work / "samr-changes.yaml", known_checks=VALIDATORS),
            client=samr,
            validators=VALIDATORS,
        )
        subscriber = AdapterRunner(
            load_mapping(work / "tax.yaml", known_checks=VALIDATORS),
            client=tax,
            validators=VALIDATORS,
            on_event=written,
        )
        tasks = [
            asyncio.create_task(publisher.run(stop=stop)),
            asyncio.create_task(subscriber.run(stop=stop)),
        ]
        try:
            await asyncio.sleep(2.0)  # both loops connected and idle
            for i in range(changes):
                n = 1 + i % max(changes // 2, 1)  # half inserts, then updates of them
                address = f"地址{i}"
                await conn.execute(
                    "INSERT INTO t_change (tyshxydm, qymc, zs) VALUES ($1, $2, $3) "
                    "ON CONFLICT (tyshxydm) DO UPDATE SET zs = excluded.zs, "
                    "gxsj = clock_timestamp()",
                    _uscc(n),
                    f"企业{n}",
                    address,
                )
                committed[_uscc(n)] = time.perf_counter()
                await asyncio.sleep(0.05)
            deadline = time.monotonic() + 30
            while committed and time.monotonic() < deadline:  # noqa: ASYNC110 - polling a dict
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            summaries = await asyncio.gather(*tasks)
            await conn.close()
    for summary in summaries:
        if not summary.ok:
            raise RuntimeError(f"an adapter failed: {summary.errors}")
    if committed:
        raise RuntimeError(f"{len(committed)} changes never reached tax's register")
    return latencies


async def run(rows: int, changes: int, poll: float) -> tuple[AdaptersReport, CpuUse]:
    bench = psutil.Process()
    work = Path(tempfile.mkdtemp(prefix="tongban-bench-adapters-"))
    async with node_server() as node:
        groups: dict[str, ProcessGroup] = {
            "bench": lambda: [bench],
            "server": node.server,
            "postgres": node.postgres,
        }
        dsn = await _legacy_database(node)
        print(f"loading {rows:,} legacy rows…", file=sys.stderr, flush=True)
        copy_seconds = await _load(dsn, rows)
        print("snapshot through samr's adapter…", file=sys.stderr, flush=True)
        seconds, published, cpu = await _snapshot(node, dsn, work, groups, rows)
        print("propagation…", file=sys.stderr, flush=True)
        latencies = sorted(await _propagation(node, dsn, work, changes, poll))
    p95 = latencies[max(0, int(len(latencies) * 0.95) - 1)]
    report = AdaptersReport(
        rows=rows,
        copy_seconds=copy_seconds,
        snapshot_seconds=seconds,
        snapshot_published=published,
        snapshot_cpu={**cpu.by_group, "other": cpu.others, "idle": cpu.idle},
        changes=len(latencies),
        p50_ms=statistics.median(latencies) * 1000,
        p95_ms=p95 * 1000,
        max_ms=latencies[-1] * 1000,
        poll_seconds=poll,
        machine={
            "cpus": psutil.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    )
    return report, cpu


def format_report(report: AdaptersReport, cpu: CpuUse) -> str:
    met = "met" if report.snapshot_rate >= SNAPSHOT_TARGET else "MISSED"
    p95_met = "met" if report.p95_ms <= P95_TARGET_MS else "MISSED"
    lines = [
        f"adapters — {report.machine['cpus']} CPUs, Python {report.machine['python']}",
        "",
        rate_row(f"legacy COPY of {report.rows:,} rows (baseline)", report.copy_rate, "rows/s"),
        rate_row(
            f"snapshot into the exchange ({report.snapshot_published:,} new)",
            report.snapshot_rate,
            "rows/s",
            f"{report.snapshot_rate / report.copy_rate:4.0%} of baseline; target "
            f"≥ {SNAPSHOT_TARGET:,.0f}: {met}",
        ),
        cpu_header(),
        cpu_row("  CPU during the snapshot", cpu),
        "",
        f"{'legacy change → tax register (' + str(report.changes) + ' changes)':<{LABEL}}"
        f"{'':>8} {'':<10}p50 {report.p50_ms:5.0f} ms  p95 {report.p95_ms:5.0f} ms  "
        f"max {report.max_ms:5.0f} ms  (poll {report.poll_seconds} s; target p95 ≤ 1 s: "
        f"{p95_met})",
    ]
    return "\n".join(lines)


def _env_number(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    value = float(text)
    if value <= 0:
        raise ValueError(f"{name}={text!r} must be positive")
    return value


def main() -> int:
    try:
        rows = int(_env_number("BENCH_ADAPTERS_ROWS", 1_000_000))
        changes = int(_env_number("BENCH_ADAPTERS_CHANGES", 300))
        poll = _env_number("BENCH_ADAPTERS_POLL", 0.1)
    except ValueError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    try:
        report, cpu = asyncio.run(run(rows, changes, poll))
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    except (TongbanError, RuntimeError, OSError, asyncpg.PostgresError) as e:
        print(f"bench failed: {e}", file=sys.stderr)
        return 1
    print(format_report(report, cpu))
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"adapters-{stamp}.json"
    data = {
        **asdict(report),
        "copy_rows_per_s": report.copy_rate,
        "snapshot_rows_per_s": report.snapshot_rate,
    }
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"\nfigures written to {path}")
    return 0
