"""The sharing benchmark: bulk publishing, audited queries and the access log, on the node
that ``bench.foundation`` has just measured, in the same run.

What is measured, each beside a baseline from the same run:

5. **bulk publish**: ``samr`` registers ``samr.bench`` (10 string fields, key ``uscc``,
   enterprise subjects, shared unconditionally, published) and loads 100,000 generated
   records with ``ExchangeClient.stream_records`` in batches of 5,000 (each batch one
   transaction on the node). Baseline: asyncpg COPY of the same 100,000 rows, as 10 text
   columns, into a plain scratch table ``bench_copy`` (no index; a normal, logged table, so
   the WAL flushes compare) in the node's own PostgreSQL, 5,000 rows per COPY (each its own
   transaction, as on the node), dropped afterwards. It runs before the publish.
6. **audited single-key query over mutual TLS**: 64 callers as ``tax`` ask for 3 of the 10
   fields of one random key each call, with the same warm-up and window as the WhoAmI
   phase, on one channel. Every call writes an access-log entry before it is answered
   (group-committed by the node). By default the raw ``QueryServiceStub`` is called, as
   WhoAmI is (``Config.query_via``); the row's label says which. Baseline: the echo.
   The node's peak RSS is watched over this phase alone as well as over every phase.
7. **1,000-key queries**: one unmeasured, then 30 sequential ``ExchangeClient.query`` calls,
   each for 1,000 distinct random keys and 3 fields. Baseline: right after each, the
   node's own SQL for the same keys (``SELECT key, data FROM record WHERE dataset = $1
   AND key = ANY($2::text[]) AND valid_to IS NULL``) through asyncpg on the same database;
   it runs second, so it finds the exchange's pages already cached.
8. **access-log growth**: ``count(*)`` of ``access_log`` before and after phases 6 and 7,
   beside the number of calls completed (all of them, warm-up included) and keys asked.
"""

from __future__ import annotations

import itertools
import random
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from typing import Any

import asyncpg
import grpc

from bench._client import FRESH_CONNECTION, Department
from bench._config import Config
from bench._load import LoadResult, run_phase, settle_collector
from bench._servers import NodeServer, node_server
from bench._table import LABEL, latency_row, load_row, rate_row
from bench._watch import CpuMeter, CpuUse, PeakRss, ProcessGroup
from tongban.client import ExchangeClient
from tongban.exchange.catalogue.subject_ids import uscc_check_character
from tongban.v1 import catalogue_pb2, node_pb2, node_pb2_grpc, query_pb2, query_pb2_grpc, values_pb2

__all__ = [
    "AuditGrowth",
    "Latencies",
    "SharingReport",
    "Target",
    "Throughput",
    "dataset_spec",
    "generate_records",
    "run",
    "single_key_query",
    "uscc",
]

PURPOSE = "bench"
CASE_ID = "B-1"
_RECORD_SQL = (
    "SELECT key, data FROM record WHERE dataset = $1 AND key = ANY($2::text[]) AND valid_to IS NULL"
)
_FIELDS = (
    ("uscc", "统一社会信用代码"),
    ("name", "企业名称"),
    ("legal_representative", "法定代表人"),
    ("address", "住所"),
    ("phone", "联系电话"),
    ("industry", "所属行业"),
    ("status", "登记状态"),
    ("registered_capital", "注册资本（万元）"),
    ("established", "成立日期"),
    ("business_scope", "经营范围"),
)

Row = tuple[str, dict[str, object]]


@dataclass(frozen=True)
class Throughput:
    """Items moved in one timed operation, and the CPU it took."""

    items: int
    seconds: float
    cpu: CpuUse

    @property
    def rate(self) -> float:
        return self.items / self.seconds


@dataclass(frozen=True)
class Latencies:
    """Latencies of sequential calls, in ms."""

    samples_ms: tuple[float, ...]

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def max_ms(self) -> float:
        return max(self.samples_ms)


@dataclass(frozen=True)
class AuditGrowth:
    """Rows added to ``access_log`` over a phase, against what the phase asked for."""

    entries: int
    """``count(*)`` after minus before."""
    expected: int
    """One entry per key asked, over every call completed (warm-up included)."""
    calls: int
    seconds: float
    """From the count before to the last call's completion."""

    @property
    def rate(self) -> float:
        return self.entries / self.seconds


@dataclass(frozen=True)
class SharingReport:
    publish: Throughput
    copy: Throughput
    query: LoadResult
    query_via: str
    query_audit: AuditGrowth
    query_spread: LoadResult
    """The same query, its callers spread over ``config.query_connections`` connections:
    the baseline of ``workers_query``, which runs it on several worker processes."""
    query_node_peak_rss_mb: float
    query_postgres_peak_rss_mb: float
    batch: Latencies
    batch_sql: Latencies
    batch_audit: AuditGrowth
    node_peak_rss_mb: float
    """Over every sharing phase (setup included)."""
    postgres_peak_rss_mb: float


async def run(
    node: NodeServer,
    config: Config,
    meter: Callable[[], CpuMeter],
    rss_groups: Mapping[str, ProcessGroup],
) -> SharingReport:
    """Set up the dataset and run phases 5-8 against the running ``node``.

    ``meter`` makes a CPU meter over the bench, node and PostgreSQL processes. Raises
    RuntimeError if the node's answers are not what was asked for.
    """
    owner = Department.of(node, config.department, config)
    consumer = Department.of(node, config.consumer, config)
    rng = random.Random(config.seed)
    rows = generate_records(config.records, rng)
    keys = [key for key, _ in rows]
    settle_collector()
    db = await asyncpg.connect(node.dsn())
    try:
        with PeakRss(rss_groups) as rss:
            copy = await _copy_baseline(db, rows, config, meter())
            async with owner.client() as client:
                await client.register_dataset(dataset_spec(config.dataset), publish=True)
                publish = await _publish(client, rows, config, meter())
            with PeakRss(rss_groups) as query_rss:
                query, query_audit = await _query_load(consumer, keys, config, meter(), db)
                query_spread = await spread_query_load(consumer, keys, config, meter())
            batch, batch_sql, batch_audit = await _batch_queries(consumer, keys, config, db)
    finally:
        await db.close()
    return SharingReport(
        publish=publish,
        copy=copy,
        query=query,
        query_via=config.query_via,
        query_audit=query_audit,
        query_spread=query_spread,
        query_node_peak_rss_mb=query_rss.peak_mb["node"],
        query_postgres_peak_rss_mb=query_rss.peak_mb["postgres"],
        batch=batch,
        batch_sql=batch_sql,
        batch_audit=batch_audit,
        node_peak_rss_mb=rss.peak_mb["node"],
        postgres_peak_rss_mb=rss.peak_mb["postgres"],
    )


# --- the data ---------------------------------------------------------------------------


def dataset_spec(code: str) -> catalogue_pb2.DatasetSpec:
    """The bench dataset (the 10 fields of ``generate_records``) registered as ``code``."""
    return catalogue_pb2.DatasetSpec(
        code=code,
        title="基准测试市场主体",
        description="生成的企业登记信息，仅供基准测试",
        fields=[
            catalogue_pb2.FieldSpec(
                name=name,
                type=values_pb2.FIELD_TYPE_STRING,
                description=description,
                required=name == "uscc",
            )
            for name, description in _FIELDS
        ],
        key_field="uscc",
        subject_kind=catalogue_pb2.SUBJECT_KIND_ENTERPRISE,
        update_frequency="实时",
        share_class=catalogue_pb2.SHARE_CLASS_UNCONDITIONAL,
    )


_WORDS = ("味道", "远航", "青山", "明珠", "新安", "锦程", "汇通", "宏达", "东方", "西湖")
_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
_GIVEN = ("晓明", "建国", "丽娟", "志强", "秀英", "海燕", "伟", "芳", "磊", "静")
_DISTRICTS = ("上城区", "拱墅区", "西湖区", "滨江区", "萧山区", "余杭区")
_ROADS = ("解放路", "延安路", "文三路", "江南大道", "莫干山路", "凤起路")
_INDUSTRIES = ("餐饮服务", "批发和零售业", "制造业", "信息技术服务业", "建筑业")
_STATUSES = ("存续", "在业", "迁出", "注销")
_SCOPES = (
    "餐饮服务；食品销售",
    "软件开发；信息技术咨询服务；数据处理和存储支持服务",
    "建设工程施工；住宅室内装饰装修",
    "日用百货销售；五金产品零售；家用电器销售",
)


def uscc(i: int) -> str:
    """The ``i``-th generated enterprise's USCC (valid check character; ``i`` < 10**10)."""
    first17 = f"9133010{i:010d}"
    assert len(first17) == 17
    return first17 + uscc_check_character(first17)


def generate_records(count: int, rng: random.Random) -> list[Row]:
    """``count`` records of the 10 fields, keyed by valid USCCs, the same for every seed."""
    rows: list[Row] = []
    for i in range(count):
        key = uscc(i)
        established = date(1990, 1, 1) + timedelta(days=rng.randrange(12_000))
        rows.append(
            (
                key,
                {
                    "uscc": key,
                    "name": f"杭州{rng.choice(_WORDS)}{i}有限公司",
                    "legal_representative": rng.choice(_SURNAMES) + rng.choice(_GIVEN),
                    "address": f"浙江省杭州市{rng.choice(_DISTRICTS)}{rng.choice(_ROADS)}"
                    f"{rng.randrange(1, 999)}号",
                    "phone": f"0571-{rng.randrange(10**7, 10**8)}",
                    "industry": rng.choice(_INDUSTRIES),
                    "status": rng.choice(_STATUSES),
                    "registered_capital": f"{rng.randrange(10, 100_000)}.00",
                    "established": established.isoformat(),
                    "business_scope": rng.choice(_SCOPES),
                },
            )
        )
    return rows


# --- phase 5: bulk publish and its COPY baseline ----------------------------------------


async def _copy_baseline(
    db: asyncpg.Connection, rows: list[Row], config: Config, cpu: CpuMeter
) -> Throughput:
    columns = [name for name, _ in _FIELDS]
    records = [tuple(values[name] for name in columns) for _, values in rows]
    await db.execute(
        "CREATE TABLE bench_copy (" + ", ".join(f"{name} text" for name in columns) + ")"
    )
    try:
        cpu.start()
        started = time.perf_counter()
        for start in range(0, len(records), config.publish_batch):
            await db.copy_records_to_table(
                "bench_copy",
                records=records[start : start + config.publish_batch],
                columns=columns,
            )
        seconds = time.perf_counter() - started
        use = cpu.stop()
    finally:
        await db.execute("DROP TABLE bench_copy")
    return Throughput(len(records), seconds, use)


async def _publish(
    client: ExchangeClient, rows: list[Row], config: Config, cpu: CpuMeter
) -> Throughput:
    async def batches() -> AsyncIterator[list[Row]]:
        for start in range(0, len(rows), config.publish_batch):
            yield rows[start : start + config.publish_batch]

    cpu.start()
    started = time.perf_counter()
    counts = await client.stream_records(config.dataset, batches())
    seconds = time.perf_counter() - started
    use = cpu.stop()
    if counts.inserted != len(rows):
        raise RuntimeError(f"StreamRecords inserted {counts.inserted:,} of {len(rows):,} records")
    return Throughput(len(rows), seconds, use)


# --- phase 6: the audited single-key query under load -----------------------------------


@asynccontextmanager
async def single_key_query(
    consumer: Department, keys: list[str], config: Config
) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Yield the call of phase 6, through the raw stub or the typed client."""
    choose = random.Random(config.seed + 1).choice
    fields = list(config.query_fields)
    if config.query_via == "client":
        async with consumer.client() as client:

            async def via_client() -> None:
                answer = await client.query(
                    config.dataset, [choose(keys)], fields=fields, purpose=PURPOSE, case_id=CASE_ID
                )
                if len(answer.records) != 1:
                    raise RuntimeError(f"a key query answered {len(answer.records)} records")

            yield via_client
        return
    async with consumer.channel() as channel:
        stubs = [query_pb2_grpc.QueryServiceStub(channel)]
        yield _stub_query(stubs, consumer, lambda: choose(keys), config)


def _stub_query(
    stubs: list[query_pb2_grpc.QueryServiceAsyncStub],
    consumer: Department,
    draw: Callable[[], str],
    config: Config,
) -> Callable[[], Awaitable[None]]:
    """Phase 6's call through the raw stubs, each call on the next of ``stubs``: the key
    ``draw`` gives, the bench fields, its purpose and case."""
    fields = list(config.query_fields)
    metadata = consumer.metadata
    turns = itertools.count()

    async def call() -> None:
        request = query_pb2.QueryRequest(
            dataset=config.dataset,
            keys=[draw()],
            fields=fields,
            purpose=PURPOSE,
            case_id=CASE_ID,
        )
        stub = stubs[next(turns) % len(stubs)]
        reply = await stub.Query(request, metadata=metadata, timeout=consumer.timeout)
        if len(reply.records) != 1:
            raise RuntimeError(f"a key query answered {len(reply.records)} records")

    return call


async def spread_query_load(
    consumer: Department, keys: list[str], config: Config, cpu: CpuMeter, *, workers: int = 1
) -> LoadResult:
    """Phase 6's call from the same number of callers, spread evenly over
    ``config.query_connections`` connections of their own (a channel each), and so evenly
    over the node's ``workers`` processes (``balanced_channels``)."""
    choose = random.Random(config.seed + 2).choice
    async with AsyncExitStack() as stack:
        channels = await balanced_channels(consumer, config.query_connections, workers, stack)
        stubs = [query_pb2_grpc.QueryServiceStub(channel) for channel in channels]
        call = _stub_query(stubs, consumer, lambda: choose(keys), config)
        return await run_phase(call, config, cpu)


async def balanced_channels(
    consumer: Department, count: int, workers: int, stack: AsyncExitStack
) -> list[grpc.aio.Channel]:
    """``count`` channels of their own, ``count / workers`` to each worker process.

    The workers of ``serve --workers`` share the port, and the kernel hands each new
    connection to one of them by a hash of its addresses, so 16 connections can land 11
    and 5. Each channel asks WhoAmI which node (worker) answered; one to a worker that
    already has its share is closed and another opened, up to ``8 * count`` tries (then
    the channels are as the kernel gave them). The kept ones are closed with ``stack``."""
    share = -(-count // workers)
    kept: list[grpc.aio.Channel] = []
    per_worker: Counter[str] = Counter()
    for _ in range(8 * count):
        channel = consumer.channel(FRESH_CONNECTION)
        reply = await node_pb2_grpc.NodeServiceStub(channel).WhoAmI(
            node_pb2.WhoAmIRequest(), metadata=consumer.metadata, timeout=consumer.timeout
        )
        if per_worker[reply.node] >= share:
            await channel.close(None)
            continue
        per_worker[reply.node] += 1
        kept.append(await stack.enter_async_context(channel))
        if len(kept) == count:
            return kept
    while len(kept) < count:  # the kernel kept choosing full workers: take what comes
        kept.append(await stack.enter_async_context(consumer.channel(FRESH_CONNECTION)))
    return kept


async def workers_query(config: Config, meter: Callable[[NodeServer], CpuMeter]) -> LoadResult:
    """The spread query on a node of its own run with ``serve --workers
    config.compare_workers`` (its dataset published as for phase 5, unmeasured); ``meter``
    makes the CPU meter over that node. The result is read beside ``query_spread``."""
    async with node_server(workers=config.compare_workers) as node:
        keys = await load_dataset(node, config)
        consumer = Department.of(node, config.consumer, config)
        return await spread_query_load(
            consumer, keys, config, meter(node), workers=config.compare_workers
        )


async def load_dataset(node: NodeServer, config: Config) -> list[str]:
    """Register the bench dataset on ``node`` and publish phase 5's records to it as
    ``config.department``, unmeasured; return their keys. What was generated is frozen
    out of the collector's sight (``settle_collector``) before it is sent."""
    owner = Department.of(node, config.department, config)
    rows = generate_records(config.records, random.Random(config.seed))
    settle_collector()
    async with owner.client() as client:
        await client.register_dataset(dataset_spec(config.dataset), publish=True)

        async def batches() -> AsyncIterator[list[Row]]:
            for start in range(0, len(rows), config.publish_batch):
                yield rows[start : start + config.publish_batch]

        await client.stream_records(config.dataset, batches())
    return [key for key, _ in rows]


async def _log_count(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM access_log"))


async def _query_load(
    consumer: Department, keys: list[str], config: Config, cpu: CpuMeter, db: asyncpg.Connection
) -> tuple[LoadResult, AuditGrowth]:
    completed = 0
    async with single_key_query(consumer, keys, config) as query:

        async def call() -> None:
            nonlocal completed
            await query()
            completed += 1

        before = await _log_count(db)
        started = time.perf_counter()
        result = await run_phase(call, config, cpu)
        seconds = time.perf_counter() - started
    # Each answer left only after its entry was committed, so every one is counted here.
    added = await _log_count(db) - before
    return result, AuditGrowth(added, completed, completed, seconds)


# --- phase 7: 1,000-key queries and the node's own SQL ----------------------------------


async def _batch_queries(
    consumer: Department, keys: list[str], config: Config, db: asyncpg.Connection
) -> tuple[Latencies, Latencies, AuditGrowth]:
    rng = random.Random(config.seed + 2)
    key_sets = [rng.sample(keys, config.batch_keys) for _ in range(config.batch_queries + 1)]
    fields = list(config.query_fields)
    exchange_ms: list[float] = []
    sql_ms: list[float] = []
    before = await _log_count(db)
    started = time.perf_counter()
    async with consumer.client() as client:
        for asked in key_sets:  # the first of each is the warm-up, dropped below
            t0 = time.perf_counter()
            answer = await client.query(
                config.dataset, asked, fields=fields, purpose=PURPOSE, case_id=CASE_ID
            )
            t1 = time.perf_counter()
            rows = await db.fetch(_RECORD_SQL, config.dataset, asked)
            t2 = time.perf_counter()
            if len(answer.records) != len(asked) or len(rows) != len(asked):
                raise RuntimeError(
                    f"{len(asked):,} keys asked: the exchange answered {len(answer.records):,} "
                    f"records, the SQL {len(rows):,}"
                )
            exchange_ms.append((t1 - t0) * 1000)
            sql_ms.append((t2 - t1) * 1000)
    seconds = time.perf_counter() - started
    added = await _log_count(db) - before
    audit = AuditGrowth(added, len(key_sets) * config.batch_keys, len(key_sets), seconds)
    return Latencies(tuple(exchange_ms[1:])), Latencies(tuple(sql_ms[1:])), audit


# --- output -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A target from the issue, and whether this run met it."""

    what: str
    target: str
    measured: str
    met: bool


def query_label(report: SharingReport) -> str:
    return f"Query 1 key, mTLS, audited ({report.query_via})"


def rows(report: SharingReport, echo: LoadResult, config: Config) -> list[str]:
    """The table's rows of phases 5-8."""
    publish, copy = report.publish, report.copy
    batch, sql = report.batch, report.batch_sql
    qa, ba = report.query_audit, report.batch_audit
    return [
        rate_row(
            f"bulk publish, StreamRecords {config.publish_batch:,}/batch",
            publish.rate,
            "records/s",
            f"{publish.items:,} in {publish.seconds:.2f} s"
            f"   {publish.rate / copy.rate:4.0%} of baseline",
        ),
        rate_row(
            "COPY, 10 text columns (baseline)",
            copy.rate,
            "records/s",
            f"{copy.items:,} in {copy.seconds:.2f} s",
        ),
        load_row(query_label(report), report.query, "req/s", echo),
        latency_row(
            f"Query {config.batch_keys:,} keys (client), {len(batch.samples_ms)} in turn",
            batch.p50_ms,
            batch.max_ms,
            f"   {batch.p50_ms / sql.p50_ms:4.1f}x baseline p50",
        ),
        latency_row(
            f"SQL for the same {config.batch_keys:,} keys (baseline)", sql.p50_ms, sql.max_ms
        ),
        f"{'access_log rows, 1-key query phase':<{LABEL}}{qa.entries:>8,} rows      "
        f"for {qa.calls:,} calls completed; {qa.rate:,.0f} rows/s over {qa.seconds:.1f} s",
        f"{'access_log rows, 1,000-key queries':<{LABEL}}{ba.entries:>8,} rows      "
        f"for {ba.calls} calls x {config.batch_keys:,} keys = {ba.expected:,}",
    ]


_PUBLISH_CPU = "bulk publish (StreamRecords)"
_COPY_CPU = "COPY (baseline)"
WRITE_PHASES = frozenset({_PUBLISH_CPU, _COPY_CPU})
"""CPU rows of the phases that write much: the kernel's writeback of their own data shows
in "other" (kworker threads), so there it is not only noise."""


def cpu_rows(report: SharingReport) -> list[tuple[str, CpuUse]]:
    """(label, CPU use) of each sharing phase that was metered."""
    assert report.query.cpu is not None  # the phase is run with a meter
    return [
        (_PUBLISH_CPU, report.publish.cpu),
        (_COPY_CPU, report.copy.cpu),
        (query_label(report), report.query.cpu),
    ]


def targets(
    report: SharingReport, echo: LoadResult, config: Config, node_peak_rss_mb: float
) -> list[Target]:
    """The issue's targets against this run's figures; ``node_peak_rss_mb`` over all phases."""
    q = report.query
    budget = config.node_rss_budget_mb
    return [
        Target(
            "bulk publish",
            f">= {config.publish_target_per_s:,.0f} records/s",
            f"{report.publish.rate:,.0f} records/s",
            report.publish.rate >= config.publish_target_per_s,
        ),
        Target(
            "audited 1-key query rate",
            f">= {config.query_target_per_s:,.0f} req/s",
            f"{q.rate:,.0f} req/s",
            q.rate >= config.query_target_per_s,
        ),
        Target(
            "audited 1-key query / echo",
            f">= {config.query_target_of_echo:.0%}",
            f"{q.rate / echo.rate:.0%}",
            q.rate / echo.rate >= config.query_target_of_echo,
        ),
        Target(
            "audited 1-key query p99",
            f"<= {config.query_target_p99_ms:g} ms",
            f"{q.p99_ms:.1f} ms",
            q.p99_ms <= config.query_target_p99_ms,
        ),
        Target(
            "node RSS, audited query phase",
            f"<= {budget:g} MB",
            f"{report.query_node_peak_rss_mb:,.0f} MB",
            report.query_node_peak_rss_mb <= budget,
        ),
        Target(
            "node RSS, all phases",
            f"<= {budget:g} MB",
            f"{node_peak_rss_mb:,.0f} MB",
            node_peak_rss_mb <= budget,
        ),
        Target(
            f"{config.batch_keys:,}-key query p50",
            f"<= {config.batch_target_ms:g} ms",
            f"{report.batch.p50_ms:.1f} ms",
            report.batch.p50_ms <= config.batch_target_ms,
        ),
        Target(
            f"{config.batch_keys:,}-key query max",
            f"<= {config.batch_target_ms:g} ms",
            f"{report.batch.max_ms:.1f} ms",
            report.batch.max_ms <= config.batch_target_ms,
        ),
    ]


def as_json(
    report: SharingReport, echo: LoadResult, config: Config, node_peak_rss_mb: float
) -> dict[str, Any]:
    """The sharing figures for the results file (merged into the foundation's)."""

    def throughput(result: Throughput) -> dict[str, Any]:
        return {**asdict(result), "rate": result.rate, "cpu": _cpu_json(result.cpu)}

    def latencies(result: Latencies) -> dict[str, Any]:
        return {
            "samples_ms": list(result.samples_ms),
            "p50_ms": result.p50_ms,
            "max_ms": result.max_ms,
        }

    def audit(result: AuditGrowth) -> dict[str, Any]:
        return {**asdict(result), "rows_per_second": result.rate}

    query = {**asdict(report.query), "rate": report.query.rate}
    if report.query.cpu is not None:
        query["cpu"] = _cpu_json(report.query.cpu)
    return {
        "bulk_publish": {
            **throughput(report.publish),
            "batch_records": config.publish_batch,
            "ratio_to_copy": report.publish.rate / report.copy.rate,
        },
        "copy_baseline": {**throughput(report.copy), "batch_records": config.publish_batch},
        "query_single_key": {
            **query,
            "via": report.query_via,
            "ratio_to_echo": report.query.rate / echo.rate,
            "node_peak_rss_mb": report.query_node_peak_rss_mb,
            "postgres_peak_rss_mb": report.query_postgres_peak_rss_mb,
            "access_log": audit(report.query_audit),
        },
        "query_batch": {
            "keys": config.batch_keys,
            "exchange": latencies(report.batch),
            "sql_baseline": latencies(report.batch_sql),
            "ratio_p50_to_sql": report.batch.p50_ms / report.batch_sql.p50_ms,
            "access_log": audit(report.batch_audit),
        },
        "sharing_node_peak_rss_mb": report.node_peak_rss_mb,
        "sharing_postgres_peak_rss_mb": report.postgres_peak_rss_mb,
        "targets": [asdict(t) for t in targets(report, echo, config, node_peak_rss_mb)],
    }


def _cpu_json(cpu: CpuUse) -> dict[str, Any]:
    return {**asdict(cpu), "others": cpu.others, "idle": cpu.idle}
