"""The cases benchmark (办件, issue 15): transitions over gRPC, the overdue report over a
million open cases, and the applicant's progress page, each beside a baseline measured in
the same run.

One node (``tongban serve --demo`` on a fresh data dir and embedded PostgreSQL, its
per-department call limits raised as in the other throughput phases). ``approval``
registers a service item (3/6 working days) through the client, and ``samr`` and ``tax``
one each for the bulk load; ``samr`` registers and loads ``bench.sharing``'s dataset for
the baseline of A.

A. **transitions**: 64 approval-system callers on one mutual-TLS channel (the raw
   ``CaseServiceStub``), each call the next transition of a case in the cycle open (受理)
   → 补正 → 受理 → 办结 refused → 送达; the node writes each one's history row and
   access-log entry in its transaction. Baseline: ``tax``'s audited one-key Query at the
   same concurrency, same windows (``bench.sharing``'s phase 6). Target >= 1,000
   transitions/s. The CPU split shows where the time goes; the node's and PostgreSQL's
   CPU per transition are printed. ``BENCH_CASES_PROFILE=DIR`` runs the node under
   cProfile (``DIR/node-cases.prof``; it runs slower).
B. **overdue report**: ``BENCH_CASES_ROWS`` open cases (default 1,000,000) COPYed
   straight into ``service_case`` (asyncpg ``copy_records_to_table``, valid against its
   CHECK constraints and its item FK; a tenth of them in 补正), then ``VACUUM ANALYZE``;
   ``overdue_report`` over all departments beside ``SELECT count(*) FROM service_case
   WHERE closed_at IS NULL`` on the same rows, alternating, median of ``REPEATS``.
   Target <= 2 s. One page of ``overdue_cases`` is timed too.
C. **progress page**: ``CaseStore.of_applicant`` (what the console's subject view lists)
   for random applicants, sequentially, p50/p99, beside a primary-key SELECT of one
   random case; then the page itself: ``GET /console/subject`` over HTTP on the running
   node, signed in as a data subject the way one is (``tongban subject link ID`` run
   against the node's data dir, the link followed: its form, then the POST that sets the
   session cookie). The subject is an applicant of phase A's (so its case.* entries are
   in the access log) who also has bulk-loaded cases, the one with a count nearest 6.
   ``BENCH_CASES_PAGES`` (default 300) requests, sequential on one keep-alive
   connection, alternating with the node's ``/healthz`` (the baseline: HTTP and one
   ``SELECT 1``); p50/p99/max of each. Every view is logged first (``subject.view``)
   and listed on the page, so the access-log list grows by one a request. Target p99
   <= 100 ms for the page; anything but 200 fails the phase.

B and C's store calls run in this process on a pool of the node's PostgreSQL (as its
superuser), the node still running. Targets are printed as met or missed, never asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import re
import statistics
import sys
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from datetime import time as day_time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import grpc
import psutil

from bench import sharing
from bench._client import Department
from bench._config import Config as BenchConfig
from bench._errors import describe
from bench._load import LoadResult, run_load
from bench._servers import NodeServer, node_server
from bench._table import LABEL, cpu_header, cpu_row, load_row, rate_row
from bench._watch import CpuMeter
from tongban.errors import TongbanError
from tongban.exchange.audit.log import AccessLog, SubjectHasher
from tongban.exchange.catalogue.calendar import WorkingCalendar
from tongban.exchange.licensing.case_feed import CaseFeed
from tongban.exchange.licensing.case_report import overdue_cases, overdue_report
from tongban.exchange.licensing.case_store import CaseStore
from tongban.exchange.licensing.cases import CaseClock, Overdue
from tongban.exchange.licensing.item_store import ServiceItemStore
from tongban.exchange.licensing.package_store import PackageStore
from tongban.exchange.sharing.datasets import DatasetStore
from tongban.exchange.sharing.records import RecordStore
from tongban.licence import BUILTIN_REGISTRY
from tongban.v1 import cases_pb2, cases_pb2_grpc, items_pb2

__all__ = ["CasesReport", "main", "run"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CHINA = timezone(timedelta(hours=8))
ITEMS = {"approval": "bench-case-permit", "samr": "bench-case-filing", "tax": "bench-case-tax"}
"""The item each department registers; ``approval``'s is the one cases cycle through."""
COPY_CHUNK = 100_000
REPEATS = 5
"""Timed runs of the overdue report and of its baseline, alternating."""
PAGE = 100
PAGE_WARMUP = 20
"""Untimed requests of each kind before C's page measurement (templates, connections)."""
SUBJECT_CASES = 6
"""C's page is for the phase-A applicant whose case count is nearest this."""
_TONGBAN = Path(sys.executable).parent / "tongban"
_LINK_TIMEOUT = 120.0


def _positive(variable: str, default: str, kind: type[int] | type[float]) -> Any:
    text = os.environ.get(variable, "").strip() or default
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{variable}={text!r} is not a number") from None
    if value <= 0:
        raise ValueError(f"{variable} must be positive")
    return value


@dataclass(frozen=True)
class Config:
    rows: int = 1_000_000
    """Open cases bulk-loaded for B and C (``BENCH_CASES_ROWS``)."""
    concurrency: int = 64
    warmup_seconds: float = 2.0
    duration_seconds: float = 8.0
    """The measured window of A's two loads (``BENCH_CASES_SECONDS``)."""
    records: int = 20_000
    """Records of the queried dataset (the baseline of A)."""
    applicants_per_case: float = 0.2
    """Distinct applicants per bulk-loaded case: about five cases each."""
    lookups: int = 2_000
    """Sequential progress-page reads in C (and primary-key SELECTs for its baseline)."""
    pages: int = 300
    """Sequential GET /console/subject in C (and GET /healthz for its baseline)."""
    profile_dir: str | None = None
    seed: int = 20_260_315

    transitions_target_per_s: float = 1_000.0
    report_target_s: float = 2.0
    progress_target_p99_ms: float = 100.0

    @classmethod
    def from_env(cls) -> Config:
        """The defaults with BENCH_CASES_* applied; ValueError if one is bad."""
        return cls(
            rows=_positive("BENCH_CASES_ROWS", "1000000", int),
            duration_seconds=_positive("BENCH_CASES_SECONDS", "8", float),
            lookups=_positive("BENCH_CASES_LOOKUPS", "2000", int),
            pages=_positive("BENCH_CASES_PAGES", "300", int),
            profile_dir=os.environ.get("BENCH_CASES_PROFILE") or None,
        )


@dataclass(frozen=True)
class Timing:
    median_s: float
    first_s: float
    best_s: float

    @classmethod
    def of(cls, seconds: list[float]) -> Timing:
        return cls(statistics.median(seconds), seconds[0], min(seconds))


@dataclass(frozen=True)
class Latencies:
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> Latencies:
        cuts = statistics.quantiles(seconds, n=100, method="inclusive")
        return cls(cuts[49] * 1000, cuts[98] * 1000, max(seconds) * 1000)


@dataclass
class CasesReport:
    started: datetime
    loadavg: tuple[float, float, float]
    config: Config
    query: LoadResult | None = None
    transitions: LoadResult | None = None
    transitions_total: int = 0
    history_rows: int = 0
    logged_entries: int = 0
    load_rows_per_s: float = 0.0
    rows: int = 0
    report: Timing | None = None
    count_baseline: Timing | None = None
    report_totals: dict[str, int] = field(default_factory=dict)
    page: Timing | None = None
    progress: Latencies | None = None
    primary_key: Latencies | None = None
    cases_per_page: float = 0.0
    healthz: Latencies | None = None
    subject_page: Latencies | None = None
    page_subject: str = ""
    page_cases: int = 0
    """The signed-in subject's cases (all on its page)."""
    page_accesses: tuple[int, int] = (0, 0)
    """The subject's access-log entries before the first view and after the last."""
    page_bytes: int = 0
    """The size of the last page served."""
    backend_waits: dict[str, float] = field(default_factory=dict)
    """Mean PostgreSQL backends in each state and wait event during A's transitions."""


# --- setup ------------------------------------------------------------------------------


def _item(code: str) -> items_pb2.ItemSpec:
    return items_pb2.ItemSpec(
        code=code,
        name="基准测试许可",
        legal_basis="《基准测试条例》第一条",
        purpose="基准测试审批",
        legal_limit_days=6,
        promised_limit_days=3,
        immediate=False,
        materials=[
            items_pb2.Material(
                code="application",
                name="申请书",
                required=True,
                submitted=items_pb2.SubmittedSource(),
            )
        ],
    )


async def _set_up(node: NodeServer, bench: BenchConfig) -> tuple[dict[str, int], list[str]]:
    """Register the items (their versions by department) and load the queried dataset;
    return the item versions and the dataset's keys."""
    versions: dict[str, int] = {}
    for code, item in ITEMS.items():
        async with Department.of(node, code, bench).client() as client:
            versions[code] = (await client.register_item(_item(item))).version
    rows = sharing.generate_records(bench.records, random.Random(bench.seed))
    async with Department.of(node, bench.department, bench).client() as samr:
        await samr.register_dataset(sharing.dataset_spec(bench.dataset), publish=True)

        async def batches() -> AsyncIterator[list[sharing.Row]]:
            for start in range(0, len(rows), bench.publish_batch):
                yield rows[start : start + bench.publish_batch]

        counts = await samr.stream_records(bench.dataset, batches())
    if counts.inserted != len(rows):
        raise RuntimeError(f"StreamRecords inserted {counts.inserted:,} of {len(rows):,}")
    return versions, [key for key, _ in rows]


# --- A: transitions beside the audited query ---------------------------------------------

_CYCLE: tuple[cases_pb2.MoveCaseRequest, ...] = (
    cases_pb2.MoveCaseRequest(target=cases_pb2.CASE_STATE_CORRECTION, reason="补正申请书签字"),
    cases_pb2.MoveCaseRequest(target=cases_pb2.CASE_STATE_ACCEPTED),
    cases_pb2.MoveCaseRequest(
        target=cases_pb2.CASE_STATE_DECIDED,
        outcome=cases_pb2.CASE_OUTCOME_REFUSED,
        reason="不符合许可条件",
    ),
    cases_pb2.MoveCaseRequest(target=cases_pb2.CASE_STATE_DELIVERED),
)
"""The moves after the opening, in order: 补正, 受理, 办结 refused, 送达."""


class _Transitions:
    """The next transition of some case in the cycle, one per call; a case is moved by one
    caller at a time (taken from the queue, put back when moved)."""

    def __init__(self, stub: cases_pb2_grpc.CaseServiceAsyncStub, department: Department) -> None:
        self._stub = stub
        self._metadata = department.metadata
        self._timeout = department.timeout
        self._ready: deque[tuple[str, int]] = deque()
        self._choose = random.Random(7).randrange
        self.done = 0

    async def __call__(self) -> None:
        if self._ready:
            number, step = self._ready.popleft()
            request = cases_pb2.MoveCaseRequest()
            request.CopyFrom(_CYCLE[step])
            request.number = number
            await self._stub.MoveCase(request, metadata=self._metadata, timeout=self._timeout)
            step += 1
        else:
            opened = await self._stub.OpenCase(
                cases_pb2.OpenCaseRequest(
                    item=ITEMS["approval"], applicant=sharing.uscc(self._choose(10**6))
                ),
                metadata=self._metadata,
                timeout=self._timeout,
            )
            number, step = opened.number, 0
        self.done += 1
        if step < len(_CYCLE):
            self._ready.append((number, step))


async def _phase_a(
    node: NodeServer, bench: BenchConfig, config: Config, keys: list[str], report: CasesReport
) -> None:
    me = psutil.Process()

    def meter() -> CpuMeter:
        return CpuMeter({"bench": lambda: [me], "server": node.server, "postgres": node.postgres})

    consumer = Department.of(node, bench.consumer, bench)
    async with sharing.single_key_query(consumer, keys, bench) as query:
        report.query = await run_load(
            query,
            concurrency=config.concurrency,
            warmup=config.warmup_seconds,
            duration=config.duration_seconds,
            cpu=meter(),
        )
    approval = Department.of(node, "approval", bench)
    stop = asyncio.Event()
    async with approval.channel() as channel, asyncio.TaskGroup() as group:
        waits = group.create_task(_sample_waits(node.dsn(), stop))
        transitions = _Transitions(cases_pb2_grpc.CaseServiceStub(channel), approval)
        try:
            report.transitions = await run_load(
                transitions,
                concurrency=config.concurrency,
                warmup=config.warmup_seconds,
                duration=config.duration_seconds,
                cpu=meter(),
            )
        finally:
            stop.set()
    report.transitions_total = transitions.done
    report.backend_waits = waits.result()


async def _sample_waits(dsn: str, stop: asyncio.Event) -> dict[str, float]:
    """What the node's PostgreSQL backends are doing while ``stop`` is unset, sampled from
    ``pg_stat_activity`` every 20 ms: the mean number of backends in each state and wait
    event (``active: CPU`` when running, ``idle in transaction: ClientRead`` when waiting
    for the node inside a transaction, ``active: Lock:transactionid`` when queued on a
    row lock), the largest first."""
    counts: Counter[str] = Counter()
    samples = 0
    conn = await asyncpg.connect(dsn)
    try:
        while not stop.is_set():
            rows = await conn.fetch(
                "SELECT state || ': ' || coalesce(wait_event_type || ':' || wait_event, 'CPU')"
                " AS doing FROM pg_stat_activity WHERE backend_type = 'client backend'"
                " AND state <> 'idle' AND pid <> pg_backend_pid()"
            )
            counts.update(r["doing"] for r in rows)
            samples += 1
            await asyncio.sleep(0.02)
    finally:
        await conn.close()
    return {doing: n / max(1, samples) for doing, n in counts.most_common()}


# --- B and C: the report and the progress page over bulk-loaded cases --------------------


def _case_rows(
    config: Config, versions: dict[str, int], now: datetime, start: int, stop: int
) -> Iterator[tuple[Any, ...]]:
    """Open cases ``start`` to ``stop``: opened in the last 40 days, promised 3 to 15 days
    later at the end of a day, legal 0 to 20 days after that; a tenth in 补正."""
    rng = random.Random(config.seed + start)
    applicants = max(1, int(config.rows * config.applicants_per_case))
    departments = list(ITEMS)
    year = now.astimezone(CHINA).year
    for i in range(start, stop):
        department = departments[i % len(departments)]
        opened = now - timedelta(seconds=rng.randrange(40 * 86_400))
        opened_day = opened.astimezone(CHINA).date()
        promised = datetime.combine(
            opened_day + timedelta(days=rng.randrange(3, 16)), day_time.max, tzinfo=CHINA
        )
        legal = promised + timedelta(days=rng.randrange(0, 21))
        in_correction = rng.random() < 0.1
        yield (
            f"{department}-{year:04d}-B{i:09d}",
            ITEMS[department],
            versions[department],
            department,
            sharing.uscc(rng.randrange(applicants)),
            "correction" if in_correction else "accepted",
            opened,
            promised,
            legal,
            0,
            opened + (now - opened) / 2 if in_correction else None,
            opened,
        )


def _chunk(
    config: Config, versions: dict[str, int], now: datetime, start: int, stop: int
) -> list[tuple[Any, ...]]:
    return list(_case_rows(config, versions, now, start, stop))


_COPY_COLUMNS = [
    "number", "item", "item_version", "department", "applicant", "state", "opened_at",
    "promised_due_at", "legal_due_at", "stopped_days", "correction_since", "updated_at",
]  # fmt: skip


async def _bulk_load(
    pool: asyncpg.Pool, config: Config, versions: dict[str, int], now: datetime
) -> float:
    """COPY ``config.rows`` open cases into ``service_case``; return rows/s."""
    started = time.perf_counter()
    async with pool.acquire() as conn:
        for start in range(0, config.rows, COPY_CHUNK):
            stop = min(config.rows, start + COPY_CHUNK)
            # Generated in a thread: the uscc check characters are the slow part.
            chunk = await asyncio.to_thread(_chunk, config, versions, now, start, stop)
            await conn.copy_records_to_table("service_case", records=chunk, columns=_COPY_COLUMNS)
    rate = config.rows / (time.perf_counter() - started)
    async with pool.acquire() as conn:
        await conn.execute("VACUUM ANALYZE service_case")
    return rate


async def _seconds(work: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await work()
    return time.perf_counter() - started


async def _phase_b(pool: asyncpg.Pool, now: datetime, report: CasesReport) -> None:
    async def count_open() -> object:
        return await pool.fetchval("SELECT count(*) FROM service_case WHERE closed_at IS NULL")

    async def the_report() -> object:
        return await overdue_report(pool, now=now)

    async def one_page() -> object:
        return await overdue_cases(
            pool, now=now, department="approval", severity=Overdue.LEGAL, limit=PAGE
        )

    reports, counts, pages = [], [], []
    for _ in range(REPEATS):
        counts.append(await _seconds(count_open))
        reports.append(await _seconds(the_report))
        pages.append(await _seconds(one_page))
    report.report = Timing.of(reports)
    report.count_baseline = Timing.of(counts)
    report.page = Timing.of(pages)
    result = await overdue_report(pool, now=now)
    report.report_totals = {
        "open": result.open,
        "in_correction": result.in_correction,
        "past_promised": result.past_promised,
        "past_legal": result.past_legal,
        "departments": len(result.departments),
    }


def _store(pool: asyncpg.Pool) -> CaseStore:
    """A CaseStore on ``pool`` as the node builds one, for reading only: ``of_applicant``
    touches nothing but the pool (the access log is never started)."""
    clock = CaseClock(WorkingCalendar(), CHINA)
    datasets = DatasetStore(pool)
    items = ServiceItemStore(pool, datasets, BUILTIN_REGISTRY)
    log, hasher, records, feed = (
        AccessLog(pool),
        SubjectHasher(b"b" * 32),
        RecordStore(pool),
        CaseFeed(datasets),
    )
    packages = PackageStore(pool, items, records, feed, log, hasher, "bench")
    return CaseStore(
        pool, items, log, hasher, clock, "bench", records=records, feed=feed, packages=packages
    )


async def _phase_c(pool: asyncpg.Pool, config: Config, report: CasesReport) -> None:
    store = _store(pool)
    rng = random.Random(config.seed + 1)
    applicants = max(1, int(config.rows * config.applicants_per_case))
    numbers = await pool.fetch("SELECT number FROM service_case TABLESAMPLE SYSTEM (1)")
    if not numbers:
        numbers = await pool.fetch("SELECT number FROM service_case LIMIT 1000")
    keys = [r["number"] for r in numbers]

    async def by_number() -> object:
        return await pool.fetchrow(
            "SELECT number, item, item_version, department, applicant, state, opened_at,"
            " promised_due_at, legal_due_at, stopped_days, correction_since, decided_at,"
            " outcome, licence_number, refusal_reason, closed_at, delivered_at"
            " FROM service_case WHERE number = $1",
            rng.choice(keys),
        )

    found = 0

    async def progress() -> object:
        nonlocal found
        cases = await store.of_applicant(sharing.uscc(rng.randrange(applicants)))
        found += len(cases)
        return cases

    for _ in range(100):  # warm: plans, connections
        await by_number()
        await progress()
    found = 0
    base = [await _seconds(by_number) for _ in range(config.lookups)]
    page = [await _seconds(progress) for _ in range(config.lookups)]
    report.primary_key = Latencies.of(base)
    report.progress = Latencies.of(page)
    report.cases_per_page = found / config.lookups


async def _page_subject(pool: asyncpg.Pool) -> tuple[str, list[str], bytes]:
    """The subject C's page is for: of the applicants phase A opened cases for (not
    bulk-loaded, so logged), the one with the count of cases nearest ``SUBJECT_CASES``;
    its case numbers and its ``subject_hmac`` (from a case.* entry of its)."""
    row = await pool.fetchrow(
        "WITH logged AS (SELECT DISTINCT applicant FROM service_case WHERE number NOT LIKE"
        " '%-B%') SELECT s.applicant, array_agg(s.number ORDER BY s.number) AS numbers"
        " FROM service_case s JOIN logged USING (applicant) GROUP BY s.applicant"
        " ORDER BY abs(count(*) - $1), s.applicant LIMIT 1",
        SUBJECT_CASES,
    )
    if row is None:
        raise RuntimeError("C: phase A opened no case, so no subject appears in the access log")
    numbers: list[str] = list(row["numbers"])
    subject_hmac = await pool.fetchval(
        "SELECT subject_hmac FROM access_log WHERE case_id = ANY($1::text[])"
        " AND action LIKE 'case.%' AND subject_hmac IS NOT NULL LIMIT 1",
        [n for n in numbers if "-B" not in n],
    )
    if subject_hmac is None:
        raise RuntimeError(f"C: no access-log entry names the cases of {row['applicant']}")
    return str(row["applicant"]), numbers, bytes(subject_hmac)


async def _subject_link(node: NodeServer, subject: str) -> str:
    """``tongban subject link SUBJECT`` against the node's data dir, as an operator on its
    host runs it; return the link's path and query (the printed URL names the configured
    listen address, not the node's loopback port)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TONGBAN_")}
    env["TONGBAN_KEY_PASSPHRASE"] = "tongban-bench"  # as node_server starts the node
    process = await asyncio.create_subprocess_exec(
        str(_TONGBAN),
        *("subject", "link", subject, "--data-dir", str(node.data_dir), "--json"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), _LINK_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError(f"`tongban subject link` took over {_LINK_TIMEOUT:.0f} s") from None
    if process.returncode != 0:
        raise RuntimeError(
            f"`tongban subject link` exited {process.returncode}: "
            + err.decode(errors="replace").strip()[-500:]
        )
    try:
        url = str(json.loads(out)["url"])
    except (ValueError, KeyError, TypeError):
        raise RuntimeError(f"`tongban subject link` printed no URL: {out[:300]!r}") from None
    parts = urlsplit(url)
    if parts.path != "/console/link/subject" or not parts.query.startswith("token="):
        raise RuntimeError(f"`tongban subject link` printed an unexpected URL: {url!r}")
    return f"{parts.path}?{parts.query}"


def _refused(what: str, status: int, body: str, expected: int = 200) -> RuntimeError:
    """The error for an answer other than ``expected``: its status, and the console's
    message and reason code (``id="message"``, ``<code>``) or the JSON refusal's."""
    message = re.search(r'id="message">([^<]*)<', body)
    reason = re.search(r'<code>([A-Z_]+)</code>|"reason":\s*"([^"]*)"', body)
    said = message.group(1).strip() if message else re.sub(r"\s+", " ", body).strip()[:200]
    code = next((g for g in reason.groups() if g), "") if reason else ""
    return RuntimeError(
        f"C: {what} answered {status}, not {expected}"
        + (f" ({code})" if code else "")
        + (f": {said}" if said else "")
    )


async def _sign_in(http: aiohttp.ClientSession, base: str, link: str) -> None:
    """Follow the one-time link as a browser does: its page, then the form's POST, which
    answers 303 to the subject view with the session cookie."""
    async with http.get(base + link) as answer:
        body = await answer.text()
        if answer.status != 200:
            raise _refused("the subject link's page", answer.status, body)
    token = link.split("token=", 1)[1]
    async with http.post(
        base + "/console/link/subject", data={"token": token}, allow_redirects=False
    ) as answer:
        body = await answer.text()
        if answer.status != 303:
            raise _refused("POST /console/link/subject", answer.status, body, 303)
        if (to := answer.headers.get("Location")) != "/console/subject":
            raise RuntimeError(f"C: POST /console/link/subject sent the browser to {to!r}")
        if "tongban_session" not in answer.cookies:
            raise RuntimeError("C: POST /console/link/subject set no session cookie")


async def _phase_c_page(
    node: NodeServer, pool: asyncpg.Pool, config: Config, report: CasesReport
) -> None:
    subject, numbers, subject_hmac = await _page_subject(pool)
    link = await _subject_link(node, subject)
    base = f"http://{node.http}"

    async def entries() -> int:
        count = await pool.fetchval(
            "SELECT count(*) FROM access_log WHERE subject_hmac = $1", subject_hmac
        )
        return int(count)

    before = await entries()
    page_bytes = 0
    # The cookie is for 127.0.0.1, which the default jar refuses to keep (unsafe=True).
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True),
        timeout=aiohttp.ClientTimeout(total=30),
        connector=aiohttp.TCPConnector(limit=1),
    ) as http:
        await _sign_in(http, base, link)

        async def get(path: str) -> str:
            async with http.get(base + path, allow_redirects=False) as answer:
                body = await answer.text()
                if answer.status != 200:
                    raise _refused(f"GET {path}", answer.status, body)
                return body

        async def healthz() -> object:
            return await get("/healthz")

        async def the_page() -> object:
            nonlocal page_bytes
            body = await get("/console/subject")
            page_bytes = len(body.encode())
            return body

        shown = await get("/console/subject")
        missing = [n for n in numbers if n not in shown]
        if missing:
            raise RuntimeError(
                f"C: the subject view of {subject} lists {len(numbers) - len(missing)} of its "
                f"{len(numbers)} cases (missing {', '.join(missing[:3])})"
            )
        for _ in range(PAGE_WARMUP):
            await healthz()
            await the_page()
        base_s, page_s = [], []
        for _ in range(config.pages):  # alternating, so drift touches both alike
            base_s.append(await _seconds(healthz))
            page_s.append(await _seconds(the_page))
    report.healthz = Latencies.of(base_s)
    report.subject_page = Latencies.of(page_s)
    report.page_subject = subject
    report.page_cases = len(numbers)
    report.page_accesses = (before, await entries())
    report.page_bytes = page_bytes


async def run(config: Config) -> CasesReport:
    """Start a node, set up, run A, load the cases, run B and C; stop the node."""
    report = CasesReport(datetime.now(UTC), os.getloadavg(), config)
    bench = BenchConfig(
        records=config.records,
        concurrency=config.concurrency,
        warmup_seconds=config.warmup_seconds,
        duration_seconds=config.duration_seconds,
    )
    profile = Path(config.profile_dir) / "node-cases.prof" if config.profile_dir else None
    if profile is not None:
        profile.parent.mkdir(parents=True, exist_ok=True)
    async with node_server(profile=profile) as node:
        versions, keys = await _set_up(node, bench)
        await _phase_a(node, bench, config, keys, report)
        async with asyncpg.create_pool(node.dsn(), min_size=1, max_size=2) as pool:
            row = await pool.fetchrow(
                "SELECT (SELECT count(*) FROM service_case_history) AS history,"
                " (SELECT count(*) FROM access_log WHERE action LIKE 'case.%') AS logged"
            )
            assert row is not None
            report.history_rows, report.logged_entries = row["history"], row["logged"]
            now = datetime.now(UTC)
            report.load_rows_per_s = await _bulk_load(pool, config, versions, now)
            report.rows = await pool.fetchval("SELECT count(*) FROM service_case")
            await _phase_b(pool, now, report)
            await _phase_c(pool, config, report)
            await _phase_c_page(node, pool, config, report)
    return report


# --- output -----------------------------------------------------------------------------


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def format_report(r: CasesReport) -> str:
    c = r.config
    cores = os.cpu_count() or 1
    assert r.query is not None
    assert r.transitions is not None
    assert r.report is not None
    assert r.count_baseline is not None
    assert r.page is not None
    assert r.progress is not None
    assert r.primary_key is not None
    assert r.healthz is not None
    assert r.subject_page is not None
    t, q = r.transitions, r.query
    lines = [
        f"Tongban benchmark: cases (办件)  {r.started:%Y-%m-%d %H:%M:%S %Z}",
        f"{cores} CPUs (load average before the run "
        + " ".join(f"{x:.2f}" for x in r.loadavg)
        + f"), Python {platform.python_version()}, grpcio {grpc.__version__}",
        f"A: {c.concurrency} callers on one mutual-TLS channel each load, "
        f"{c.warmup_seconds:g} s warm-up, {c.duration_seconds:g} s measured",
        "",
        load_row("A: audited 1-key Query, tax (baseline)", q, "req/s", None),
        load_row("A: case transitions, approval", t, "moves/s", q)
        + f"  target >= {c.transitions_target_per_s:,.0f}/s: "
        + _verdict(t.rate >= c.transitions_target_per_s),
        f"{'   logged':<{LABEL}}{r.transitions_total:,} transitions made: "
        f"{r.history_rows:,} history rows, {r.logged_entries:,} case.* access-log entries",
    ]
    for label, result in (("query", q), ("transition", t)):
        cpu = result.cpu
        assert cpu is not None
        per = {g: 10 * cpu.by_group.get(g, 0.0) / result.rate for g in ("server", "postgres")}
        lines.append(
            f"{f'   CPU per {label}':<{LABEL}}node {per['server']:.2f} ms, "
            f"PostgreSQL {per['postgres']:.2f} ms"
        )
    waits = list(r.backend_waits.items())[:4]
    lines.append(
        f"{'   PostgreSQL backends, transitions (mean)':<{LABEL}}"
        + ", ".join(f"{n:.1f} {doing}" for doing, n in waits)
    )
    lines += [
        "",
        f"B: {r.rows:,} cases in service_case ({c.rows:,} open ones COPYed at "
        f"{r.load_rows_per_s:,.0f} rows/s, then VACUUM ANALYZE); median of {REPEATS}",
        rate_row(
            "B: SELECT count(*) open (baseline)",
            r.count_baseline.median_s * 1000,
            "ms",
            f"first {r.count_baseline.first_s * 1000:,.0f} ms",
        ),
        rate_row(
            "B: overdue_report, all departments",
            r.report.median_s * 1000,
            "ms",
            f"first {r.report.first_s * 1000:,.0f} ms, "
            f"{r.report.median_s / r.count_baseline.median_s:.1f}x baseline  "
            f"target <= {c.report_target_s:g} s: "
            + _verdict(max(r.report.median_s, r.report.first_s) <= c.report_target_s),
        ),
        f"{'   found':<{LABEL}}" + ", ".join(f"{k} {v:,}" for k, v in r.report_totals.items()),
        rate_row(
            f"B: overdue_cases, page of {PAGE} (红牌)",
            r.page.median_s * 1000,
            "ms",
            f"first {r.page.first_s * 1000:,.1f} ms (approval's, by legal date)",
        ),
        "",
        f"C: {c.lookups:,} sequential reads each, random applicants "
        f"({r.cases_per_page:.1f} cases a page on average)",
        f"{'C: primary-key SELECT of one case (baseline)':<{LABEL}}{'':>19}"
        f"p50 {r.primary_key.p50_ms:5.2f} ms  p99 {r.primary_key.p99_ms:5.2f} ms  "
        f"max {r.primary_key.max_ms:5.1f} ms",
        f"{'C: CaseStore.of_applicant (store call only)':<{LABEL}}{'':>19}"
        f"p50 {r.progress.p50_ms:5.2f} ms  p99 {r.progress.p99_ms:5.2f} ms  "
        f"max {r.progress.max_ms:5.1f} ms",
        f"C: {c.pages:,} sequential GETs each over HTTP, alternating, one keep-alive "
        f"connection; signed in as {r.page_subject} through `tongban subject link`",
        f"{'C: GET /healthz (baseline)':<{LABEL}}{'':>19}"
        f"p50 {r.healthz.p50_ms:5.2f} ms  p99 {r.healthz.p99_ms:5.2f} ms  "
        f"max {r.healthz.max_ms:5.1f} ms",
        f"{'C: GET /console/subject (progress page)':<{LABEL}}{'':>19}"
        f"p50 {r.subject_page.p50_ms:5.2f} ms  p99 {r.subject_page.p99_ms:5.2f} ms  "
        f"max {r.subject_page.max_ms:5.1f} ms  "
        f"target p99 <= {c.progress_target_p99_ms:g} ms: "
        + _verdict(r.subject_page.p99_ms <= c.progress_target_p99_ms),
        f"{'   the page':<{LABEL}}{r.page_cases} cases; access-log entries of the subject "
        f"{r.page_accesses[0]:,} before the first view, {r.page_accesses[1]:,} after the "
        f"last (each view logs one); last page {r.page_bytes / 1024:,.0f} KiB",
        "",
        f"CPU in A's measured windows, % of one core ({cores} cores = {100 * cores}%):",
        cpu_header(),
    ]
    assert q.cpu is not None
    assert t.cpu is not None
    lines += [cpu_row("A: audited query", q.cpu), cpu_row("A: case transitions", t.cpu)]
    if c.profile_dir:
        lines.append(f"\nnode profiled: {Path(c.profile_dir) / 'node-cases.prof'}")
    return "\n".join(lines)


def as_json(r: CasesReport) -> dict[str, Any]:
    def load(result: LoadResult | None) -> dict[str, Any] | None:
        if result is None:
            return None
        return {**asdict(result), "rate": result.rate}

    data = asdict(r)
    data.update(
        started=r.started.isoformat(),
        query=load(r.query),
        transitions=load(r.transitions),
        host={"cpus": os.cpu_count(), "python": platform.python_version()},
    )
    return data


def write_json(r: CasesReport, directory: Path = RESULTS_DIR) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"cases-{r.started:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(as_json(r), indent=2, default=str) + "\n", encoding="utf-8")
    return path


FAILURES = (RuntimeError, TongbanError, aiohttp.ClientError, OSError, ExceptionGroup)


def main() -> int:
    """Run the cases phases, print the table, write the JSON; return the exit status."""
    try:
        config = Config.from_env()
    except ValueError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(run(config))
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
