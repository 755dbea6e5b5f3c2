"""The audit benchmark: the access log's Merkle tree, in process, on its own PostgreSQL.

No gRPC and no node: this process opens a fresh data dir and embedded PostgreSQL (fsync
and synchronous commit on, the defaults) with ``Database.open`` and drives the audit
classes directly, so the figures are the log's own. What is measured, each beside a
baseline from the same run:

1. **append throughput**: 1,000,000 realistic entries (7 departments as callers,
   officers, datasets, 3 fields, purposes, case ids, 32-byte subject HMACs, ~3% denials)
   appended through ``AccessLog`` by 256 concurrent tasks, one entry per ``append`` call
   (``Config.audit_entries_per_call``), as request handlers do; the sequencer
   group-commits what they have queued. The entries are generated beforehand. If 200,000
   took long enough that 1,000,000 would exceed ~3 minutes, the phase stops at 200,000
   and says so. Baseline: asyncpg COPY of the same rows (index and leaf precomputed) into
   ``bench_access_log``, a copy of ``access_log``'s shape (``LIKE ... INCLUDING ALL``:
   the same columns, keys and indexes), in batches of the sequencer's mean batch, each
   its own transaction. The integrator also writes each entry's search row, a
   ``log_node`` row per ~128 entries, and moves the tree head in each transaction; the
   baseline does none of it.
2. **one entry's latency**: ``append([entry])`` by 64 tasks at once (1 s warm-up, 5 s
   window), p50/p99; baseline: the same 64 tasks each INSERTing one row into
   ``bench_access_log`` in its own transaction through the same pool (what writing each
   request's entry on its own would cost). Also, on an idle log, sequential appends
   against sequential single-row INSERTs: the price of one durable commit.
3. **inclusion proof**: ``AuditStore.inclusion`` for 500 random indices at the log's size
   after phase 1, each proof verified once (untimed) against the tree head's root;
   a proof reads the stored nodes it names and up to 256 leaves, whose hashes give the
   smaller ones. Baseline: the single-row ``SELECT leaf FROM access_log`` of the same
   index.
4. **checkpoint latency**: a ``Checkpointer`` (interval 0.5 s) on the log's ``grown``
   event, while a trickle of background appends (100/s) keeps it cycling; 20 times an
   entry is appended at a random moment, and ``max(size)`` of ``log_checkpoint`` is
   polled every 20 ms until it covers the entry (timed from the ``append`` call).
   Baseline: ``sign_now()`` alone, timed, after appending one entry.
5. **verify**: ``verify_log`` over the whole log (a checkpoint signed first); baselines:
   ``SELECT idx, leaf FROM access_log`` read by index in chunks of 20,000 (the read
   without any checking), and ``verify_log``'s own query (all columns, and whether the
   search row matches them) in the same chunks, unchecked. They run before ``verify_log``.
6. this process's peak RSS (the 1,000,000 generated entries and the baseline's rows are
   in it).

Phase 3 runs right after phase 1, so proofs are timed at the size phase 1 reached; the
other phases add entries, and phase 5 verifies the log at its final size. The targets of
the issue are printed as met or missed, never asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import resource
import shutil
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import uvloop
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bench._config import Config
from bench._errors import describe
from bench._load import LoadResult, run_load, settle_collector
from bench._servers import postgres_processes
from bench._table import LABEL, cpu_header, cpu_row, load_row, rate_row
from bench._watch import CpuMeter, CpuUse
from bench.sharing import Target, Throughput
from tongban.errors import TongbanError
from tongban.exchange.audit.checkpoints import Checkpointer
from tongban.exchange.audit.integrator import Integrator
from tongban.exchange.audit.leaf import COLUMNS, AccessEntry, encode_leaf
from tongban.exchange.audit.log import AccessLog, SubjectHasher
from tongban.exchange.audit.merkle import ProofInvalid, leaf_hash, verify_inclusion
from tongban.exchange.audit.store import AuditStore
from tongban.exchange.audit.verify import CHUNK_SQL, verify_log
from tongban.exchange.datadir import init_data_dir, load_log_signer, log_origin
from tongban.exchange.db.database import Database
from tongban.exchange.db.embedded import temp_root
from tongban.exchange.settings import load_settings
from tongban.signing.clock import SystemClock
from tongban.signing.keys import Signer

__all__ = ["AuditReport", "as_json", "format_report", "main", "run"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCRATCH = "bench_access_log"
_INSERT = (
    f"INSERT INTO {SCRATCH} (idx, leaf, {', '.join(COLUMNS)})"
    f" VALUES ({', '.join(f'${i}' for i in range(1, len(COLUMNS) + 3))})"
)
_ONE_LEAF = "SELECT leaf FROM access_log WHERE idx = $1"
_LEAVES_SQL = "SELECT idx, leaf FROM access_log WHERE idx > $1 ORDER BY idx LIMIT $2"
_POLL_SECONDS = 0.02
_CHECKPOINT_GIVE_UP = 30.0

Row = tuple[object, ...]


# --- figures ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Samples:
    """Latencies of individual calls, in ms."""

    samples_ms: tuple[float, ...]

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p99_ms(self) -> float:
        if len(self.samples_ms) < 2:
            return self.max_ms
        return statistics.quantiles(self.samples_ms, n=100, method="inclusive")[98]

    @property
    def max_ms(self) -> float:
        return max(self.samples_ms)


@dataclass(frozen=True)
class AppendRun:
    entries: int
    seconds: float
    batches: int
    """Transactions the sequencer committed for them (``AccessLog.batches``)."""
    log_size: int
    """``SELECT size FROM log_state`` afterwards."""
    cpu: CpuUse
    stopped_early: bool
    """True if the phase stopped at ``audit_fallback_entries`` (see ``projected_seconds``)."""
    projected_seconds: float
    """What all ``audit_entries`` would have taken at the pace of the first
    ``audit_fallback_entries``."""
    integrated_seconds: float
    """From the last append's answer until the tree covered every entry: how far the
    integrator was behind the sequencer when the appends stopped."""

    @property
    def rate(self) -> float:
        return self.entries / self.seconds

    @property
    def mean_batch(self) -> float:
        return self.entries / self.batches


@dataclass(frozen=True)
class LoadedAppends:
    append: LoadResult
    insert: LoadResult
    """Baseline: one-row INSERTs from the same number of tasks."""
    entries: int
    """Entries the sequencer wrote during the append load (warm-up and tail included)."""
    batches: int


@dataclass(frozen=True)
class VerifyRun:
    size: int
    checkpoints: int
    seconds: float
    cpu: CpuUse

    @property
    def rate(self) -> float:
        return self.size / self.seconds


@dataclass(frozen=True)
class AuditReport:
    started: datetime
    loadavg: tuple[float, float, float]
    config: Config
    postgres: dict[str, str]
    """Server settings that decide the write figures (fsync, synchronous_commit, ...)."""
    append: AppendRun
    copy: Throughput
    copy_batch: int
    loaded: LoadedAppends
    append_alone: Samples
    insert_alone: Samples
    proof_size: int
    proof: Samples
    node_select: Samples
    checkpoint: Samples
    sign_now: Samples
    checkpoint_trickle_entries: int
    verify: VerifyRun
    read_leaves: Throughput
    read_verify_query: Throughput
    peak_rss_mb: float


# --- the entries ------------------------------------------------------------------------

_DEPARTMENTS = ("samr", "tax", "hrss", "police", "approval", "regulator", "audit")
_DATASETS = (
    ("samr.enterprise", ("name", "status", "address")),
    ("samr.enterprise", ("name", "legal_representative", "registered_capital")),
    ("tax.credit_rating", ("uscc", "rating", "year")),
    ("hrss.social_insurance", ("name", "insured_since", "contribution_base")),
    ("police.household", ("name", "address", "household_head")),
)
_PURPOSES = (
    "企业开办联合审批",
    "纳税信用评价复核",
    "社会保险待遇核定",
    "行政执法案件调查",
    "户籍信息核验",
    "违规行为线索核查",
)
_SUBJECTS = 100_000
_DENIED_SHARE = 0.03


class EntryMaker:
    """Realistic access-log entries, the same sequence for a seed; each call makes one."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        hasher = SubjectHasher(self._rng.randbytes(32))
        self._subjects = [hasher(f"9133010{j:010d}X") for j in range(_SUBJECTS)]
        self._base = datetime(2026, 11, 23, 9, tzinfo=UTC)
        self._made = count()

    def __call__(self) -> AccessEntry:
        rng = self._rng
        caller = rng.choice(_DEPARTMENTS)
        dataset, fields = rng.choice(_DATASETS)
        denied = rng.random() < _DENIED_SHARE
        return AccessEntry(
            at=self._base + timedelta(microseconds=100 * next(self._made)),
            node="node-1",
            caller=caller,
            officer=f"{caller}-{rng.randrange(1, 300):03d}",
            action="query",
            dataset=dataset,
            fields=fields,
            purpose=rng.choice(_PURPOSES),
            case_id=f"{caller.upper()}-2026-{rng.randrange(1, 10**6):06d}",
            subject_hmac=rng.choice(self._subjects),
            decision="denied" if denied else "allowed",
            reason="NO_GRANT" if denied else None,
        )

    def many(self, n: int) -> list[AccessEntry]:
        return [self() for _ in range(n)]


def _row(index: int, entry: AccessEntry) -> Row:
    """The row the sequencer writes for ``entry`` at ``index`` (leaf precomputed)."""
    bounded = entry.bounded()
    return (index, encode_leaf(bounded), *bounded.columns())


# --- the run ----------------------------------------------------------------------------


async def run(config: Config) -> AuditReport:
    """Open a fresh data dir and embedded PostgreSQL, run phases 1-6, close and remove it.

    Raises RuntimeError if the log does not hold what was appended or a proof does not
    verify, and ``LogCorrupt`` (a TongbanError) if ``verify_log`` finds the log altered.
    """
    started = datetime.now(UTC)
    loadavg = os.getloadavg()
    work = temp_root("tongban-bench-audit-")  # as root, PostgreSQL runs as another user
    data_dir = work / "data"
    db: Database | None = None
    try:
        settings = load_settings(data_dir=data_dir, key_passphrase="bench")
        if settings.database_url is not None:
            raise RuntimeError(
                "TONGBAN_DATABASE_URL is set; the audit bench measures a fresh embedded "
                "PostgreSQL: unset it"
            )
        await asyncio.to_thread(init_data_dir, settings, started)
        db = await Database.open(settings)
        key = load_log_signer(settings)
        origin = log_origin(settings)
        if db.embedded is None:  # only with a database URL, refused above
            raise RuntimeError("the audit bench needs the embedded PostgreSQL")
        admin = await asyncpg.connect(db.embedded.dsn())  # the owner: may create tables
        try:
            return await _phases(config, db, admin, key, origin, data_dir, started, loadavg)
        finally:
            await admin.close()
    finally:
        if db is not None:
            await db.close()
        await asyncio.to_thread(_clean_up, work, data_dir)


async def _phases(
    config: Config,
    db: Database,
    admin: asyncpg.Connection,
    key: Signer,
    origin: str,
    data_dir: Path,
    started: datetime,
    loadavg: tuple[float, float, float],
) -> AuditReport:
    pool = db.pool
    bench = psutil.Process()
    postmaster = postgres_processes(data_dir)

    def postgres() -> list[psutil.Process]:
        try:
            return [p for m in postmaster for p in (m, *m.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    def meter() -> CpuMeter:
        return CpuMeter({"bench": lambda: [bench], "postgres": postgres})

    server = {
        name: str(await pool.fetchval(f"SHOW {name}"))
        for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers")
    }
    make = EntryMaker(config.seed + 3)
    entries = make.many(config.audit_entries)
    settle_collector()

    log = AccessLog(pool)
    await log.start()
    integrator = Integrator(pool, grown=log.grown)
    await integrator.start()
    checkpointer: Checkpointer | None = None
    try:
        append = await _append_phase(pool, log, integrator, entries, config, meter())
        if log.entries != append.entries or append.log_size != append.entries:
            raise RuntimeError(
                f"{append.entries:,} entries appended, but the sequencer counted "
                f"{log.entries:,} and log_state says {append.log_size:,}"
            )
        records = [_row(i, entry) for i, entry in enumerate(entries[: append.entries])]
        del entries
        copy_batch = config.audit_copy_batch or max(1, round(append.mean_batch))
        await admin.execute(f"CREATE TABLE {SCRATCH} (LIKE access_log INCLUDING ALL)")
        await admin.execute(f"GRANT SELECT, INSERT ON {SCRATCH} TO tongban_node")
        copy = await _copy_baseline(admin, records, copy_batch, meter())

        proof_size, proof, node_select = await _proofs(pool, config)

        spare = random.Random(config.seed + 6).sample(records, min(10_000, len(records)))
        del records
        inserted = count(append.entries)

        async def insert_one() -> None:
            row = spare[random.randrange(len(spare))]
            await pool.execute(_INSERT, next(inserted), *row[1:])

        async def append_one() -> None:
            await log.append([make()])

        append_alone, insert_alone = await _alone(append_one, insert_one, config.audit_alone_calls)
        loaded = await _loaded(log, append_one, insert_one, config, meter)
        await admin.execute(f"DROP TABLE {SCRATCH}")

        checkpointer = Checkpointer(
            pool,
            key,
            origin,
            SystemClock(),
            signer="bench",
            interval=config.audit_checkpoint_interval,
            integrator=integrator,
        )
        checkpoint, trickle = await _checkpoints(pool, log, integrator, checkpointer, make, config)
        sign_now = await _sign_alone(log, checkpointer, make, config.audit_checkpoint_rounds)
        cp, checkpointer = checkpointer, None
        await cp.stop()
        head = await cp.sign_now()

        read_leaves = await _read_all(pool, _LEAVES_SQL, config.audit_read_chunk, meter())
        read_verify = await _read_all(pool, CHUNK_SQL, config.audit_read_chunk, meter(), head.size)
        verify = await _verify(pool, origin, key, meter())
        if verify.size != head.size or read_leaves.items != verify.size:
            raise RuntimeError(
                f"verify_log checked {verify.size:,} entries, the last checkpoint signs "
                f"{head.size:,} and the read found {read_leaves.items:,}"
            )
    finally:
        if checkpointer is not None:
            await checkpointer.stop()
        await log.stop()
        await integrator.stop()
    return AuditReport(
        started=started,
        loadavg=loadavg,
        config=config,
        postgres=server,
        append=append,
        copy=copy,
        copy_batch=copy_batch,
        loaded=loaded,
        append_alone=append_alone,
        insert_alone=insert_alone,
        proof_size=proof_size,
        proof=proof,
        node_select=node_select,
        checkpoint=checkpoint,
        sign_now=sign_now,
        checkpoint_trickle_entries=trickle,
        verify=verify,
        read_leaves=read_leaves,
        read_verify_query=read_verify,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )


def _clean_up(work: Path, data_dir: Path) -> None:
    # Database.close stops the embedded server; allow the postmaster a moment to go.
    _, left = psutil.wait_procs(postgres_processes(data_dir), timeout=5.0)
    if left:
        pids = ", ".join(str(p.pid) for p in left)
        print(
            f"warning: PostgreSQL is still running for {data_dir} (pid {pids}); "
            f"left {work} in place",
            file=sys.stderr,
        )
        return
    shutil.rmtree(work, ignore_errors=True)


# --- phase 1: append throughput and its COPY baseline -----------------------------------


async def _append_phase(
    pool: asyncpg.Pool,
    log: AccessLog,
    integrator: Integrator,
    entries: list[AccessEntry],
    config: Config,
    cpu: CpuMeter,
) -> AppendRun:
    per_call = config.audit_entries_per_call
    position = 0

    async def worker(limit: int) -> None:
        nonlocal position
        while position < limit:
            start = position
            end = position = min(start + per_call, limit)
            indices = await log.append(entries[start:end])
            if len(indices) != end - start:
                raise RuntimeError(f"append returned {len(indices)} indices for {end - start}")

    async def up_to(limit: int) -> None:
        async with asyncio.TaskGroup() as group:
            for _ in range(config.audit_append_tasks):
                group.create_task(worker(limit))

    total = len(entries)
    first = min(config.audit_fallback_entries, total)
    cpu.start()
    started = time.perf_counter()
    await up_to(first)  # the tasks pause together here once: one commit's time, no more
    projected = (time.perf_counter() - started) * total / first
    stopped_early = projected > config.audit_budget_seconds
    if not stopped_early:
        await up_to(total)
    seconds = time.perf_counter() - started
    use = cpu.stop()
    size = await integrator.catch_up()
    behind = time.perf_counter() - started - seconds
    return AppendRun(position, seconds, log.batches, size, use, stopped_early, projected, behind)


async def _copy_baseline(
    admin: asyncpg.Connection, rows: list[Row], batch: int, cpu: CpuMeter
) -> Throughput:
    columns = ("idx", "leaf", *COLUMNS)
    cpu.start()
    started = time.perf_counter()
    for start in range(0, len(rows), batch):
        # Outside a transaction block, each COPY is its own transaction (and commit).
        await admin.copy_records_to_table(
            SCRATCH, records=rows[start : start + batch], columns=columns
        )
    seconds = time.perf_counter() - started
    use = cpu.stop()
    return Throughput(len(rows), seconds, use)


# --- phase 2: one entry's latency -------------------------------------------------------


async def _alone(
    append_one: Callable[[], Awaitable[None]],
    insert_one: Callable[[], Awaitable[None]],
    calls: int,
) -> tuple[Samples, Samples]:
    """Alternate sequential appends and INSERTs on the otherwise idle log."""
    appends: list[float] = []
    inserts: list[float] = []
    for _ in range(calls):
        for call, samples in ((append_one, appends), (insert_one, inserts)):
            t0 = time.perf_counter()
            await call()
            samples.append((time.perf_counter() - t0) * 1000)
    return Samples(tuple(appends)), Samples(tuple(inserts))


async def _loaded(
    log: AccessLog,
    append_one: Callable[[], Awaitable[None]],
    insert_one: Callable[[], Awaitable[None]],
    config: Config,
    meter: Callable[[], CpuMeter],
) -> LoadedAppends:
    def load(call: Callable[[], Awaitable[None]]) -> Awaitable[LoadResult]:
        return run_load(
            call,
            concurrency=config.audit_latency_tasks,
            warmup=config.audit_latency_warmup_seconds,
            duration=config.audit_latency_seconds,
            cpu=meter(),
        )

    entries, batches = log.entries, log.batches
    append = await load(append_one)
    entries, batches = log.entries - entries, log.batches - batches
    insert = await load(insert_one)
    return LoadedAppends(append, insert, entries, batches)


# --- phase 3: inclusion proofs ----------------------------------------------------------


async def _proofs(pool: asyncpg.Pool, config: Config) -> tuple[int, Samples, Samples]:
    head = await pool.fetchrow("SELECT size, root FROM log_state")
    assert head is not None
    size, root = int(head["size"]), bytes(head["root"])
    store = AuditStore(pool)
    rng = random.Random(config.seed + 4)
    indices = rng.sample(range(size), min(config.audit_proofs, size))
    for index in rng.sample(range(size), min(20, size)):  # warm-up: plans, connections
        await store.inclusion(index, size)
        await pool.fetchval(_ONE_LEAF, index)
    proofs: list[float] = []
    selects: list[float] = []
    for index in indices:
        t0 = time.perf_counter()
        proof = await store.inclusion(index, size)
        t1 = time.perf_counter()
        await pool.fetchval(_ONE_LEAF, index)
        t2 = time.perf_counter()
        proofs.append((t1 - t0) * 1000)
        selects.append((t2 - t1) * 1000)
        leaf = await pool.fetchval(_ONE_LEAF, index)
        try:
            verify_inclusion(leaf_hash(bytes(leaf)), index, size, proof, root)
        except ProofInvalid as e:
            raise RuntimeError(f"the inclusion proof of entry {index} does not verify: {e}") from e
    return size, Samples(tuple(proofs)), Samples(tuple(selects))


# --- phase 4: checkpoint latency --------------------------------------------------------


async def _checkpoints(
    pool: asyncpg.Pool,
    log: AccessLog,
    integrator: Integrator,
    checkpointer: Checkpointer,
    make: EntryMaker,
    config: Config,
) -> tuple[Samples, int]:
    """Return the latencies and how many background entries were appended meanwhile."""
    trickled = 0
    stopping = False

    async def trickle() -> None:
        nonlocal trickled
        pause = 1 / config.audit_checkpoint_trickle_per_s
        while not stopping:
            await log.append([make()])
            trickled += 1
            await asyncio.sleep(pause)

    rng = random.Random(config.seed + 5)
    waits: list[float] = []
    await checkpointer.start(integrator.integrated)
    async with asyncio.TaskGroup() as group:
        if config.audit_checkpoint_trickle_per_s > 0:
            group.create_task(trickle())
        try:
            await asyncio.sleep(2 * config.audit_checkpoint_interval)  # into its rhythm
            for _ in range(config.audit_checkpoint_rounds):
                await asyncio.sleep(rng.uniform(0, 2 * config.audit_checkpoint_interval))
                t0 = time.perf_counter()
                index = (await log.append([make()])).start
                async with asyncio.timeout(_CHECKPOINT_GIVE_UP):
                    # Polling the table, as a client watching for the checkpoint would.
                    while await pool.fetchval("SELECT max(size) FROM log_checkpoint") <= index:  # noqa: ASYNC110
                        await asyncio.sleep(_POLL_SECONDS)
                waits.append((time.perf_counter() - t0) * 1000)
        finally:
            stopping = True
    return Samples(tuple(waits)), trickled


async def _sign_alone(
    log: AccessLog, checkpointer: Checkpointer, make: EntryMaker, rounds: int
) -> Samples:
    """``sign_now()`` right after one append, timed (the checkpointer's task runs too; it
    finds the new size already signed, or signs it first and this call returns at once)."""
    samples: list[float] = []
    for _ in range(rounds):
        await log.append([make()])
        t0 = time.perf_counter()
        await checkpointer.sign_now()
        samples.append((time.perf_counter() - t0) * 1000)
    return Samples(tuple(samples))


# --- phase 5: verify and the plain reads ------------------------------------------------


async def _read_all(
    pool: asyncpg.Pool, sql: str, chunk: int, cpu: CpuMeter, *more: object
) -> Throughput:
    """Read the whole log by index, ``chunk`` rows at a time, as ``verify_log`` does
    (``more``: the query's parameters after the index and the chunk)."""
    rows = 0
    last = -1
    cpu.start()
    started = time.perf_counter()
    while True:
        got = await pool.fetch(sql, last, chunk, *more)
        if not got:
            break
        rows += len(got)
        last = got[-1]["idx"]
    seconds = time.perf_counter() - started
    return Throughput(rows, seconds, cpu.stop())


async def _verify(pool: asyncpg.Pool, origin: str, key: Signer, cpu: CpuMeter) -> VerifyRun:
    cpu.start()
    started = time.perf_counter()
    public = key.public_key()
    assert isinstance(public, Ed25519PublicKey)  # load_log_signer made sure of it
    report = await verify_log(pool, origin=origin, verifier=public)
    seconds = time.perf_counter() - started
    return VerifyRun(report.size, report.checkpoints, seconds, cpu.stop())


# --- output -----------------------------------------------------------------------------


def _p99_row(label: str, samples: Samples, detail: str = "") -> str:
    return (
        f"{label:<{LABEL}}{'':>8} {'':<10}"
        f"p50 {samples.p50_ms:5.1f} ms  p99 {samples.p99_ms:5.1f} ms{detail}"
    )


def _max_row(label: str, samples: Samples, detail: str = "") -> str:
    return (
        f"{label:<{LABEL}}{'':>8} {'':<10}"
        f"p50 {samples.p50_ms:5.0f} ms  max {samples.max_ms:5.0f} ms{detail}"
    )


def _shape(config: Config) -> str:
    per_call = config.audit_entries_per_call
    return f"{config.audit_append_tasks} tasks x {per_call} entr{'y' if per_call == 1 else 'ies'}"


def rows(report: AuditReport) -> list[str]:
    """The table's rows of the audit phases."""
    c = report.config
    a, copy, ld = report.append, report.copy, report.loaded
    v = report.verify
    return [
        rate_row(
            f"append, {_shape(c)}/call",
            a.rate,
            "entries/s",
            f"{a.entries:,} in {a.seconds:.1f} s   {a.rate / copy.rate:4.0%} of baseline",
        ),
        f"{'':<{LABEL}}{a.batches:>8,} batches   mean {a.mean_batch:,.0f} entries;"
        f" log_state size {a.log_size:,}, {a.integrated_seconds:.2f} s after the last",
        rate_row(
            f"COPY {copy.items:,} rows, {report.copy_batch:,}/txn (baseline)",
            copy.rate,
            "rows/s",
            f"{copy.items:,} in {copy.seconds:.1f} s",
        ),
        load_row(
            f"append 1 entry, {c.audit_latency_tasks} tasks",
            ld.append,
            "entries/s",
            ld.insert,
        ),
        f"{'':<{LABEL}}{ld.batches:>8,} batches   mean {ld.entries / max(ld.batches, 1):,.0f}"
        " entries",
        load_row(
            f"INSERT 1 row/txn, {c.audit_latency_tasks} tasks (baseline)", ld.insert, "rows/s", None
        ),
        _p99_row(
            f"append 1 entry, alone ({len(report.append_alone.samples_ms)} in turn)",
            report.append_alone,
            f"   {report.append_alone.p50_ms / report.insert_alone.p50_ms:4.1f}x baseline p50",
        ),
        _p99_row("INSERT 1 row/txn, alone (baseline)", report.insert_alone),
        _p99_row(
            f"inclusion proof at {report.proof_size:,}",
            report.proof,
            f"   {report.proof.p50_ms / report.node_select.p50_ms:4.1f}x baseline p50",
        ),
        _p99_row("SELECT 1 leaf by index (baseline)", report.node_select),
        _max_row(
            f"checkpoint covers an entry ({len(report.checkpoint.samples_ms)} entries)",
            report.checkpoint,
            f"   interval {c.audit_checkpoint_interval * 1000:.0f} ms",
        ),
        _max_row("sign_now() alone (baseline)", report.sign_now),
        rate_row(
            f"verify_log, {v.size:,} entries",
            v.rate,
            "entries/s",
            f"{v.seconds:.1f} s, {v.checkpoints} checkpoints"
            f"   {v.seconds / report.read_leaves.seconds:4.1f}x baseline time",
        ),
        rate_row(
            f"read idx, leaf by {c.audit_read_chunk:,} (baseline)",
            report.read_leaves.rate,
            "rows/s",
            f"{report.read_leaves.seconds:.1f} s",
        ),
        rate_row(
            "verify_log's query, unchecked",
            report.read_verify_query.rate,
            "rows/s",
            f"{report.read_verify_query.seconds:.1f} s",
        ),
        f"{'bench process peak RSS':<{LABEL}}{report.peak_rss_mb:>8,.0f} MB"
        f"{'':<9}(holds the {c.audit_entries:,} generated entries and their rows)",
    ]


def cpu_rows(report: AuditReport) -> list[tuple[str, CpuUse]]:
    c = report.config
    assert report.loaded.append.cpu is not None  # every load is run with a meter
    assert report.loaded.insert.cpu is not None
    return [
        (f"append, {_shape(c)}/call", report.append.cpu),
        ("COPY (baseline)", report.copy.cpu),
        (f"append 1 entry, {c.audit_latency_tasks} tasks", report.loaded.append.cpu),
        ("INSERT 1 row/txn (baseline)", report.loaded.insert.cpu),
        ("verify_log", report.verify.cpu),
        ("read idx, leaf (baseline)", report.read_leaves.cpu),
        ("verify_log's query (baseline)", report.read_verify_query.cpu),
    ]


def targets(report: AuditReport) -> list[Target]:
    c = report.config
    a, v = report.append, report.verify
    per_million = v.seconds * 1_000_000 / v.size
    at_size = "" if report.proof_size >= 1_000_000 else f" at {report.proof_size:,}"
    return [
        Target(
            f"append throughput{'' if a.entries >= 1_000_000 else f' ({a.entries:,})'}",
            f">= {c.audit_append_target_per_s:,.0f} entries/s",
            f"{a.rate:,.0f} entries/s",
            a.rate >= c.audit_append_target_per_s,
        ),
        Target(
            f"append 1 entry p99, {c.audit_latency_tasks} tasks",
            f"<= {c.audit_latency_target_p99_ms:g} ms",
            f"{report.loaded.append.p99_ms:.1f} ms",
            report.loaded.append.p99_ms <= c.audit_latency_target_p99_ms,
        ),
        Target(
            f"inclusion proof p99{at_size}",
            f"<= {c.audit_proof_target_ms:g} ms",
            f"{report.proof.p99_ms:.1f} ms",
            report.proof.p99_ms <= c.audit_proof_target_ms,
        ),
        Target(
            "checkpoint covers an entry, max",
            f"<= {c.audit_checkpoint_target_s:g} s",
            f"{report.checkpoint.max_ms / 1000:.2f} s",
            report.checkpoint.max_ms / 1000 <= c.audit_checkpoint_target_s,
        ),
        Target(
            "verify, per 1,000,000 entries",
            f"<= {c.audit_verify_target_s:g} s",
            f"{per_million:.1f} s",
            per_million <= c.audit_verify_target_s,
        ),
    ]


_NOISE_PERCENT = 30


def format_report(report: AuditReport) -> str:
    c = report.config
    a = report.append
    cores = os.cpu_count() or 1
    pg = report.postgres
    lines = [
        f"Tongban benchmark (access log, in process)  {report.started:%Y-%m-%d %H:%M:%S %Z}",
        f"{cores} CPUs (load average before the run "
        + " ".join(f"{load:.2f}" for load in report.loadavg)
        + f"), Python {platform.python_version()} on uvloop,"
        f" embedded PostgreSQL {pg['server_version']}"
        f" (fsync={pg['fsync']}, synchronous_commit={pg['synchronous_commit']},"
        f" shared_buffers={pg['shared_buffers']})",
        f"appends: {_shape(c)} per call, generated beforehand; latency: "
        f"{c.audit_latency_tasks} tasks, {c.audit_latency_warmup_seconds:g} s warm-up, "
        f"{c.audit_latency_seconds:g} s measured",
    ]
    if a.stopped_early:
        lines.append(
            f"NOTE: {c.audit_entries:,} appends were projected to take {a.projected_seconds:.0f} s"
            f" (> {c.audit_budget_seconds:g} s), so phase 1 stopped at {a.entries:,}; proofs and"
            " verify run at the size reached."
        )
    if c.audit_checkpoint_trickle_per_s > 0:
        lines.append(
            f"checkpoints: interval {c.audit_checkpoint_interval:g} s, background appends "
            f"{c.audit_checkpoint_trickle_per_s:g}/s ({report.checkpoint_trickle_entries:,}), "
            f"polled every {_POLL_SECONDS * 1000:.0f} ms, timed from the append call"
        )
    lines += ["", *rows(report), "", "CPU in each measured window, % of one core:"]
    lines.append(cpu_header())
    noisy = []
    for label, cpu in cpu_rows(report):
        lines.append(cpu_row(label, cpu))
        if cpu.others >= _NOISE_PERCENT:
            noisy.append(label)
    lines += ["", "Targets from the issue (this run):"]
    for target in targets(report):
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
            "  In the write phases part of it is the kernel writing back their own data;",
            "  elsewhere those rows are depressed by other work.",
        ]
    return "\n".join(lines)


def as_json(report: AuditReport) -> dict[str, Any]:
    """The audit figures for the results file."""

    def cpu(use: CpuUse | None) -> dict[str, Any] | None:
        return None if use is None else {**asdict(use), "others": use.others, "idle": use.idle}

    def throughput(result: Throughput) -> dict[str, Any]:
        return {**asdict(result), "rate": result.rate, "cpu": cpu(result.cpu)}

    def load(result: LoadResult) -> dict[str, Any]:
        return {**asdict(result), "rate": result.rate, "cpu": cpu(result.cpu)}

    def samples(result: Samples) -> dict[str, Any]:
        return {
            "samples_ms": list(result.samples_ms),
            "p50_ms": result.p50_ms,
            "p99_ms": result.p99_ms,
            "max_ms": result.max_ms,
        }

    a, ld, v = report.append, report.loaded, report.verify
    return {
        "postgres": report.postgres,
        "append": {
            **asdict(a),
            "cpu": cpu(a.cpu),
            "rate": a.rate,
            "mean_batch": a.mean_batch,
            "tasks": report.config.audit_append_tasks,
            "entries_per_call": report.config.audit_entries_per_call,
            "ratio_to_copy": a.rate / report.copy.rate,
        },
        "copy_baseline": {**throughput(report.copy), "batch_rows": report.copy_batch},
        "append_latency": {
            "append": load(ld.append),
            "insert_baseline": load(ld.insert),
            "sequencer_entries": ld.entries,
            "sequencer_batches": ld.batches,
            "alone": samples(report.append_alone),
            "insert_alone_baseline": samples(report.insert_alone),
        },
        "inclusion_proof": {
            "tree_size": report.proof_size,
            "proof": samples(report.proof),
            "node_select_baseline": samples(report.node_select),
        },
        "checkpoint": {
            "interval_s": report.config.audit_checkpoint_interval,
            "background_per_s": report.config.audit_checkpoint_trickle_per_s,
            "background_entries": report.checkpoint_trickle_entries,
            "covered": samples(report.checkpoint),
            "sign_now_baseline": samples(report.sign_now),
        },
        "verify": {
            **asdict(v),
            "cpu": cpu(v.cpu),
            "rate": v.rate,
            "seconds_per_million": v.seconds * 1_000_000 / v.size,
            "read_leaves_baseline": throughput(report.read_leaves),
            "verify_query_baseline": throughput(report.read_verify_query),
        },
        "bench_peak_rss_mb": report.peak_rss_mb,
        "targets": [asdict(t) for t in targets(report)],
    }


def write_json(report: AuditReport, directory: Path = RESULTS_DIR) -> Path:
    """Write the figures to ``directory``/audit-<UTC timestamp>.json."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"audit-{report.started:%Y%m%dT%H%M%SZ}.json"
    figures = {
        "benchmark": "audit",
        "started": report.started.isoformat(),
        "host": {
            "cpus": os.cpu_count(),
            "loadavg_before": list(report.loadavg),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "config": asdict(report.config),
        **as_json(report),
    }
    path.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return path


FAILURES = (RuntimeError, TongbanError, asyncpg.PostgresError, OSError, ExceptionGroup)
"""What ``run`` raises when the benchmark cannot complete (reported, not a traceback)."""


def run_sync(config: Config) -> AuditReport:
    """Run the phases on uvloop, the loop ``tongban serve`` runs its access log on."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run(config))


def main() -> int:
    """Run the audit phases alone, print the table, write the JSON; return the exit status."""
    try:
        report = run_sync(Config())
    except KeyboardInterrupt:
        print("interrupted; PostgreSQL stopped", file=sys.stderr)
        return 130
    except FAILURES as e:
        print(f"bench failed: {describe(e)}", file=sys.stderr)
        return 1
    print(format_report(report))
    path = write_json(report)
    shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
    print(f"\nfigures written to {shown}")
    return 0
