"""The supervision benchmark (电子监察, issue 16): the supervision report over a million
cases, beside a GROUP BY over the same rows in the same run.

One node (``tongban serve --demo`` on a fresh data dir and embedded PostgreSQL);
``approval``, ``samr`` and ``tax`` each register a service item through the client. Then,
on a pool of the node's PostgreSQL (as its superuser), ``BENCH_SUPERVISION_ROWS`` cases
(default 1,000,000) are COPYed straight into ``service_case``, valid against its CHECK
constraints: opened over the last 12 months, 70% decided (a tenth of them the same day, a
fifth after their promised date), 12% in 受理, 6% in 补正, 12% not accepted or withdrawn;
a materials resolution (three materials) for 60% of the decided cases; one or two 补正
transitions in the history of 15% of the cases. Then ``VACUUM ANALYZE``.

Timed, alternating, median of ``REPEATS``: ``supervision_report`` over every department
and month (overdue, decided late, repeated 补正, within-limit share, 即办件率, 全程网办率,
免提交率, average days) beside its baseline, ``SELECT department, month, count(*) ...
GROUP BY 1, 2`` over the same rows. Target <= 2 s, printed as met or missed, never asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench._client import Department
from bench._config import Config as BenchConfig
from bench._errors import describe
from bench._servers import node_server
from bench._table import LABEL, rate_row
from tongban.errors import TongbanError
from tongban.exchange.licensing.supervision import supervision_report
from tongban.v1 import items_pb2

__all__ = ["SupervisionBench", "main", "run"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
OFFSET = timedelta(hours=8)
CHINA = timezone(OFFSET)
ITEMS = {"approval": "bench-sup-permit", "samr": "bench-sup-filing", "tax": "bench-sup-tax"}
COPY_CHUNK = 100_000
REPEATS = 5
TARGET_S = 2.0
MATERIALS = ["business-licence", "registration", "application"]
SOURCES = ["licence", "shared-data", "submit"]

_BASELINE = """
    SELECT department,
           to_char(date_trunc('month', (opened_at AT TIME ZONE 'UTC') + $1::interval),
                   'YYYY-MM') AS month,
           count(*)
    FROM service_case GROUP BY 1, 2 ORDER BY 1, 2
"""


@dataclass(frozen=True)
class Timing:
    median_s: float
    first_s: float
    best_s: float

    @classmethod
    def of(cls, seconds: list[float]) -> Timing:
        return cls(statistics.median(seconds), seconds[0], min(seconds))


@dataclass
class SupervisionBench:
    started: datetime
    loadavg: tuple[float, float, float]
    rows: int
    load_rows_per_s: float = 0.0
    resolutions: int = 0
    history_rows: int = 0
    report: Timing | None = None
    baseline: Timing | None = None
    report_rows: int = 0
    totals: dict[str, Any] = field(default_factory=dict)


def _rows_from_env() -> int:
    text = os.environ.get("BENCH_SUPERVISION_ROWS", "").strip() or "1000000"
    try:
        rows = int(text)
    except ValueError:
        raise ValueError(f"BENCH_SUPERVISION_ROWS={text!r} is not a number") from None
    if rows <= 0:
        raise ValueError("BENCH_SUPERVISION_ROWS must be positive")
    return rows


def _item(code: str) -> items_pb2.ItemSpec:
    return items_pb2.ItemSpec(
        code=code,
        name="基准测试许可",
        legal_basis="《基准测试条例》第一条",
        purpose="基准测试审批",
        legal_limit_days=10,
        promised_limit_days=5,
        materials=[
            items_pb2.Material(
                code="application",
                name="申请书",
                required=True,
                submitted=items_pb2.SubmittedSource(),
            )
        ],
    )


_CASE_COLUMNS = [
    "number", "item", "item_version", "department", "applicant", "state", "opened_at",
    "promised_due_at", "legal_due_at", "stopped_days", "correction_since", "decided_at",
    "outcome", "refusal_reason", "closed_at", "updated_at",
]  # fmt: skip
_RESOLUTION_COLUMNS = ["case_number", "item_version", "resolved_at", "materials", "sources",
                       "required"]  # fmt: skip
_HISTORY_COLUMNS = ["case_number", "seq", "from_state", "to_state", "at", "department"]

Chunk = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]


def _chunk(versions: dict[str, int], now: datetime, start: int, stop: int) -> Chunk:
    """Cases ``start`` to ``stop``, their resolutions and their 补正 history rows."""
    rng = random.Random(20_260_316 + start)
    departments = list(ITEMS)
    year = now.astimezone(CHINA).year
    cases, resolutions, history = [], [], []
    for i in range(start, stop):
        department = departments[i % len(departments)]
        number = f"{department}-{year:04d}-S{i:09d}"
        opened = now - timedelta(seconds=rng.randrange(365 * 86_400))
        promised = opened + timedelta(days=rng.randrange(1, 8))
        legal = promised + timedelta(days=rng.randrange(0, 8))
        roll = rng.random()
        state, decided, outcome, refusal, closed, since = "accepted", None, None, None, None, None
        if roll < 0.70:
            state = "decided"
            kind = rng.random()
            if kind < 0.1:
                decided = opened + timedelta(minutes=rng.randrange(1, 120))  # the same day
            elif kind < 0.3:
                decided = promised + timedelta(hours=rng.randrange(1, 200))  # late
            else:
                decided = opened + (promised - opened) * rng.random()
            decided = min(decided, now)
            outcome = "approved" if rng.random() < 0.9 else "refused"
            refusal = "不符合条件" if outcome == "refused" else None
            closed = decided
            if rng.random() < 0.6:
                resolutions.append(
                    (
                        number,
                        versions[department],
                        opened + timedelta(minutes=1) if decided > opened else decided,
                        MATERIALS,
                        [rng.choice(SOURCES) for _ in MATERIALS],
                        [True, True, rng.random() < 0.5],
                    )
                )
        elif roll < 0.82:
            state = "accepted"
        elif roll < 0.88:
            state, since = "correction", opened + (now - opened) / 2
        else:
            state = "not_accepted" if roll < 0.94 else "withdrawn"
            closed = opened + timedelta(hours=1)
            refusal = None
        if rng.random() < 0.15:
            for seq in range(2, 2 + rng.randrange(1, 3)):
                history.append(
                    (
                        number,
                        seq,
                        "accepted",
                        "correction",
                        opened + timedelta(hours=seq),
                        department,
                    )
                )
        cases.append(
            (
                number, ITEMS[department], versions[department], department,
                f"91{i:016d}", state, opened, promised, legal, 0, since, decided, outcome,
                refusal, closed, closed or opened,
            )
        )  # fmt: skip
    return cases, resolutions, history


async def _bulk_load(
    pool: asyncpg.Pool, rows: int, versions: dict[str, int], now: datetime, report: SupervisionBench
) -> None:
    started = time.perf_counter()
    async with pool.acquire() as conn:
        for start in range(0, rows, COPY_CHUNK):
            stop = min(rows, start + COPY_CHUNK)
            cases, resolutions, history = await asyncio.to_thread(
                _chunk, versions, now, start, stop
            )
            await conn.copy_records_to_table("service_case", records=cases, columns=_CASE_COLUMNS)
            await conn.copy_records_to_table(
                "service_case_resolution", records=resolutions, columns=_RESOLUTION_COLUMNS
            )
            await conn.copy_records_to_table(
                "service_case_history", records=history, columns=_HISTORY_COLUMNS
            )
            report.resolutions += len(resolutions)
            report.history_rows += len(history)
    report.load_rows_per_s = rows / (time.perf_counter() - started)
    async with pool.acquire() as conn:
        await conn.execute("VACUUM ANALYZE service_case")
        await conn.execute("VACUUM ANALYZE service_case_resolution")
        await conn.execute("VACUUM ANALYZE service_case_history")


async def _seconds(work: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await work()
    return time.perf_counter() - started


async def run(rows: int) -> SupervisionBench:
    """Start a node, register the items, load the cases, time the report and baseline."""
    report = SupervisionBench(datetime.now(UTC), os.getloadavg(), rows)
    bench = BenchConfig()
    async with node_server() as node:
        versions: dict[str, int] = {}
        for code, item in ITEMS.items():
            async with Department.of(node, code, bench).client() as client:
                versions[code] = (await client.register_item(_item(item))).version
        async with asyncpg.create_pool(node.dsn(), min_size=1, max_size=2) as pool:
            now = datetime.now(UTC)
            await _bulk_load(pool, rows, versions, now, report)

            async def the_report() -> object:
                return await supervision_report(pool, now=now, offset=OFFSET)

            async def group_by() -> object:
                return await pool.fetch(_BASELINE, OFFSET)

            reports, baselines = [], []
            for _ in range(REPEATS):
                baselines.append(await _seconds(group_by))
                reports.append(await _seconds(the_report))
            report.report, report.baseline = Timing.of(reports), Timing.of(baselines)
            result = await supervision_report(pool, now=now, offset=OFFSET)
            report.report_rows = len(result.rows)
            decided = sum(r.decided for r in result.rows)
            resolved = sum(r.resolved for r in result.rows)
            required = sum(r.materials_required for r in result.rows)
            report.totals = {
                "opened": sum(r.opened for r in result.rows),
                "overdue": sum(r.overdue_promised + r.overdue_legal for r in result.rows),
                "decided late": sum(r.decided_late for r in result.rows),
                "补正 more than once": sum(r.corrected_repeatedly for r in result.rows),
                "within-limit share": sum(r.decided_within_promised for r in result.rows)
                / max(decided, 1),
                "即办件率": sum(r.decided_same_day for r in result.rows) / max(decided, 1),
                "全程网办率": sum(r.fully_online for r in result.rows) / max(resolved, 1),
                "免提交率": sum(r.materials_electronic for r in result.rows) / max(required, 1),
            }
    return report


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def format_report(r: SupervisionBench) -> str:
    assert r.report is not None
    assert r.baseline is not None
    worst = max(r.report.median_s, r.report.first_s)
    shown = ", ".join(
        f"{k} {v:.1%}" if isinstance(v, float) else f"{k} {v:,}" for k, v in r.totals.items()
    )
    return "\n".join(
        [
            f"Tongban benchmark: supervision (电子监察)  {r.started:%Y-%m-%d %H:%M:%S %Z}",
            f"{os.cpu_count()} CPUs (load average before the run "
            + " ".join(f"{x:.2f}" for x in r.loadavg)
            + f"), Python {platform.python_version()}",
            f"{r.rows:,} cases COPYed at {r.load_rows_per_s:,.0f} rows/s with "
            f"{r.resolutions:,} materials resolutions and {r.history_rows:,} 补正 history rows, "
            f"then VACUUM ANALYZE; median of {REPEATS}",
            "",
            rate_row(
                "GROUP BY department, month (baseline)",
                r.baseline.median_s * 1000,
                "ms",
                f"first {r.baseline.first_s * 1000:,.0f} ms",
            ),
            rate_row(
                "supervision_report, every department",
                r.report.median_s * 1000,
                "ms",
                f"first {r.report.first_s * 1000:,.0f} ms, "
                f"{r.report.median_s / r.baseline.median_s:.1f}x baseline  "
                f"target <= {TARGET_S:g} s: " + _verdict(worst <= TARGET_S),
            ),
            f"{'   found':<{LABEL}}{r.report_rows} department-months: {shown}",
        ]
    )


def write_json(r: SupervisionBench, directory: Path = RESULTS_DIR) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"supervision-{r.started:%Y%m%dT%H%M%SZ}.json"
    data = asdict(r)
    data.update(started=r.started.isoformat(), host={"cpus": os.cpu_count()})
    path.write_text(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n", "utf-8")
    return path


FAILURES = (RuntimeError, TongbanError, aiohttp.ClientError, OSError, ExceptionGroup)


def main() -> int:
    """Run the benchmark, print the table, write the JSON; return the exit status."""
    try:
        rows = _rows_from_env()
    except ValueError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(run(rows))
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    except FAILURES as e:
        print(f"bench failed: {describe(e)}", file=sys.stderr)
        return 1
    print(format_report(report))
    path = write_json(report)
    shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
    print(f"\nfigures written to {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
