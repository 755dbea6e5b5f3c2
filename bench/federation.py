"""``python -m bench federation``: a query forwarded to a peer exchange, beside the same
query asked locally in the same run (issue 17's benchmark).

Three exchanges, each a ``tongban serve --demo`` with its own data dir, root CA and
embedded PostgreSQL, linked as operators do (``tongban peer add`` on each side): county ->
city -> province. The province's samr publishes ``samr.bench`` (``BENCH_FEDERATION_RECORDS``
generated records, unconditional) and federates it; the city pulls the entry and re-offers
it to the county. Then, 64 callers each:

1. **local (baseline):** the province's tax asks ``samr.bench`` for one key (audited);
2. **one hop:** the city's tax asks ``province:samr.bench`` for one key: the city logs and
   forwards a signed request, the province decides, logs and answers, the city logs the
   receipt;
3. **two hops:** the county's tax asks ``city:province:samr.bench``: the county logs and
   forwards, the city checks, logs and carries it on (re-signed, embedding the county's
   request), the province checks the chain, decides, logs and answers, and the city and
   the county each log the receipt.

Targets (issue 17): one hop at least 50% of the local throughput, p99 at most 2x local;
two hops are reported beside them against the same baseline. Printed as met or missed,
never asserted.

All three exchanges and the load share one machine, so the rates measure the machine's CPU
more than any one exchange. Each phase therefore also meters the CPU time each exchange
(its node and its PostgreSQL) and the load generator spend per query, and prints what
those figures project for exchanges on machines of their own: each exchange's capacity is
then its own, and a forwarded query's rate is bounded by the exchange that spends the most
per query (a projection from measured CPU, not a measurement; latency of a real network
comes on top).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import psutil

from bench._client import Department
from bench._config import Config
from bench._load import LoadResult, run_load
from bench._servers import NodeServer, node_server
from bench._table import load_row
from bench._watch import CpuMeter, CpuUse, ProcessGroup
from bench.sharing import Row, dataset_spec, generate_records, single_key_query
from tongban.errors import TongbanError
from tongban.v1 import federation_pb2, federation_pb2_grpc

__all__ = ["main"]

TONGBAN = str(Path(sys.executable).parent / "tongban")
RECORDS = int(os.environ.get("BENCH_FEDERATION_RECORDS", "20000"))
SECONDS = float(os.environ.get("BENCH_FEDERATION_SECONDS", "8"))


async def _cli(node: NodeServer, *args: str) -> dict[str, object]:
    env = {**os.environ, "TONGBAN_KEY_PASSPHRASE": "tongban-bench", "GRPC_VERBOSITY": "ERROR"}
    process = await asyncio.create_subprocess_exec(
        TONGBAN, *args, "--data-dir", str(node.data_dir), "--json",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"tongban {' '.join(args[:3])} failed: {out.decode()}{err.decode()}")
    result: dict[str, object] = json.loads(out)
    return result


async def _link(upper: NodeServer, upper_name: str, lower: NodeServer, lower_name: str) -> None:
    """What the two operators do after swapping root certificates: ``lower`` names
    ``upper`` (its parent) ``upper_name``, and ``upper`` names ``lower`` ``lower_name``."""
    level = {"province": "province", "city": "city"}[upper_name]
    await _cli(
        lower, "peer", "add", upper_name, "--ca", str(upper.data_dir / "ca" / "ca.crt"),
        "--endpoint", upper.target, "--level", level, "--parent",
    )  # fmt: skip
    await _cli(
        upper, "peer", "add", lower_name, "--ca", str(lower.data_dir / "ca" / "ca.crt"),
        "--endpoint", lower.target, "--level", "county" if lower_name == "county-a" else "city",
    )  # fmt: skip


async def _until_remote(county: Department, code: str) -> None:
    async with county.channel() as channel:
        stub = federation_pb2_grpc.FederationServiceStub(channel)
        async with asyncio.timeout(60):
            while True:
                answer = await stub.ListRemoteDatasets(
                    federation_pb2.ListRemoteDatasetsRequest(),
                    metadata=county.metadata,
                    timeout=10,
                )
                if code in {d.code for d in answer.datasets}:
                    return
                await asyncio.sleep(0.2)


EXCHANGES = ("province", "city", "county")


def _exchange(node: NodeServer) -> ProcessGroup:
    """The processes of one exchange: its node and its PostgreSQL."""
    return lambda: [node.process, *node.postgres()]


async def _load(
    consumer: Department, keys: list[str], config: Config, groups: dict[str, ProcessGroup]
) -> LoadResult:
    async with single_key_query(consumer, keys, config) as call:
        return await run_load(
            call,
            concurrency=config.concurrency,
            warmup=config.warmup_seconds,
            duration=config.duration_seconds,
            cpu=CpuMeter(groups),
        )


def cpu_ms_per_query(result: LoadResult) -> dict[str, float]:
    """CPU milliseconds each group spent per completed query in ``result``'s window."""
    cpu = result.cpu
    assert cpu is not None, "every phase here is metered"
    return {group: share / 100 * 1000 / result.rate for group, share in cpu.by_group.items()}


def projected_ratio(local: LoadResult, forwarded: LoadResult) -> float:
    """The forwarded query's rate as a share of the local one's if each exchange ran on a
    machine of its own, from CPU per query: the local query is bounded by the province's
    CPU per query, the forwarded one by the busiest exchange's."""
    here, there = cpu_ms_per_query(local), cpu_ms_per_query(forwarded)
    return here["province"] / max(there[name] for name in EXCHANGES)


async def run() -> tuple[LoadResult, LoadResult, LoadResult]:
    config = dataclasses.replace(Config(), records=RECORDS, duration_seconds=SECONDS)
    rows = generate_records(config.records, random.Random(config.seed))
    keys = [key for key, _ in rows]
    async with node_server() as province, node_server() as city, node_server() as county:
        await _link(province, "province", city, "city")
        await _link(city, "city", county, "county-a")
        owner = Department.of(province, config.department, config)
        async with owner.client() as samr:
            await samr.register_dataset(dataset_spec(config.dataset), publish=True)
            await samr.stream_records(config.dataset, _batches(rows, config.publish_batch))
        await _cli(
            province, "catalogue", "federate", config.dataset,
            "--as", str(province.bundles / config.department), "--endpoint", province.target,
        )  # fmt: skip
        one, two = f"province:{config.dataset}", f"city:province:{config.dataset}"
        city_tax = Department.of(city, config.consumer, config)
        county_tax = Department.of(county, config.consumer, config)
        await _until_remote(city_tax, one)
        await _until_remote(county_tax, two)
        bench = psutil.Process()
        groups: dict[str, ProcessGroup] = {
            "province": _exchange(province),
            "city": _exchange(city),
            "county": _exchange(county),
            "load": lambda: [bench],
        }
        province_tax = Department.of(province, config.consumer, config)
        local = await _load(province_tax, keys, config, groups)
        hop = await _load(city_tax, keys, dataclasses.replace(config, dataset=one), groups)
        hops = await _load(county_tax, keys, dataclasses.replace(config, dataset=two), groups)
    return local, hop, hops


async def _batches(rows: list[Row], size: int) -> AsyncIterator[list[Row]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def main() -> int:
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    try:
        local, hop, hops = asyncio.run(run())
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, TongbanError, OSError, TimeoutError, grpc.aio.AioRpcError) as e:
        message = e.diagnostics() if isinstance(e, TongbanError) else f"{type(e).__name__}: {e}"
        print(f"bench failed: {message}", file=sys.stderr)
        return 1
    print(f"Tongban benchmark: a query across exchanges  {started}")
    print(f"{os.cpu_count()} CPUs; three exchanges, each one node and its embedded PostgreSQL")
    print(f"64 callers, audited 1-key query of samr.bench ({RECORDS:,} records), 3 fields")
    print(load_row("local: province tax asks samr.bench", local, "req/s", None))
    print(load_row("one hop: city tax asks province:samr.bench", hop, "req/s", local))
    print(load_row("two hops: county tax, city:province:samr.bench", hops, "req/s", local))
    print("CPU ms per query   province     city   county     load    total   machine busy")
    for name, figures in (("local", local), ("one hop", hop), ("two hops", hops)):
        print(_cpu_line(name, figures))
    print("Projected for exchanges on machines of their own (from CPU per query, not measured):")
    for name, figures in (("one hop ", hop), ("two hops", hops)):
        print(f"  {name} rate / local rate   {projected_ratio(local, figures):5.0%}")
    print("Targets from the issue (this run):")
    for name, figures in (("one hop ", hop), ("two hops", hops)):
        rate_met = figures.rate >= 0.5 * local.rate
        p99_met = figures.p99_ms <= 2 * local.p99_ms
        print(f"  {name} >= 50% of local throughput     {figures.rate / local.rate:5.0%}   "
              f"{'met' if rate_met else 'MISSED'}")  # fmt: skip
        print(f"  {name} p99 <= 2x local p99             {figures.p99_ms / local.p99_ms:5.2f}x  "
              f"{'met' if p99_met else 'MISSED'}")  # fmt: skip
    return 0


def _cpu_line(name: str, figures: LoadResult) -> str:
    per = cpu_ms_per_query(figures)
    cells = "".join(f"{per[group]:9.2f}" for group in (*EXCHANGES, "load"))
    cpu: CpuUse | None = figures.cpu
    busy = f"{cpu.machine_busy:6.0f}% of {cpu.cores * 100}%" if cpu is not None else ""
    return f"  {name:<16}{cells}{sum(per.values()):9.2f}   {busy}"


if __name__ == "__main__":
    sys.exit(main())
