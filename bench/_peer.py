"""Another department's load on the node, driven from a process of its own.

``bench.fairness`` and ``bench.burst`` measure how one department's calls fare while
another loads the node. Both departments' clients in one process would share one event
loop, and building one 5,000-record StreamRecords message holds a loop for a few hundred
milliseconds of pure Python, so the measured department's latencies would include waits
on its own client. The loading department therefore runs in a child process (``python -m
bench._peer``), as another department's system would, and the benchmark process drives
only the measured department.

The two talk in JSON lines. The child prints ``{"ready": true}`` once both its channels
have answered a WhoAmI, then answers each command read from its stdin:

- ``load``: bulk loading into ``dataset`` through one StreamRecords stream, ``batch``
  records a message, fresh keys in each; and ``issuers`` callers each issuing business
  licences in a loop; until ``stop``. The answer counts the records and licences of the
  window from ``warmup`` to ``warmup + duration`` seconds after the command arrived. A call
  refused for a department limit is retried after the node's delay, and counted.
- ``burst``: ``calls`` Issue calls from ``concurrency`` callers, each taking the next call
  until all are made. The answer gives the time, the latencies and the failures by reason
  (a refusal is a failure here, not retried).
- ``verify``: the public at the node's HTTP port ``http``: ``callers`` verifiers each
  posting one of ``licences`` QR texts (issued first, unmeasured) to ``/verify`` in a
  loop, as fast as they are answered, until ``stop``. A 429 is not retried after its
  delay: a flood does not wait. The answer counts the window's answers by HTTP status,
  with the verified ones' latencies.

End of input, or ``quit``, ends the child.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import psutil

from bench._client import Department, admitted, exchange_error
from bench._errors import describe
from bench._servers import NodeServer
from bench.sharing import generate_records, uscc
from tongban.cli.story_data import BUSINESS_LICENCE_CLAIMS
from tongban.client import ExchangeClient, ExchangeError
from tongban.v1 import node_pb2, node_pb2_grpc, records_pb2, records_pb2_grpc
from tongban.v1.values_pb2 import FieldValue

__all__ = [
    "LICENCE_TYPE",
    "BurstFigures",
    "LoadFigures",
    "Peer",
    "VerifyFigures",
    "peer",
    "percentiles",
]

LICENCE_TYPE = "business-licence"
_CASE_ID = "BENCH"
_REPO = Path(__file__).resolve().parent.parent
_READY_TIMEOUT = 60.0
_QUIT_TIMEOUT = 30.0
_ANSWER_LIMIT = 64 * 2**20
"""The longest answer line read from the child: its latencies, a number each (a window of
thousands of verifications is well past asyncio's default of 64 KiB)."""


def percentiles(samples: Sequence[float]) -> tuple[float, float]:
    """(p50, p99) of ``samples`` (inclusive method); (nan, nan) for fewer than two."""
    if len(samples) < 2:
        return float("nan"), float("nan")
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[98]


@dataclass(frozen=True)
class LoadFigures:
    """What the loading department did inside the measured window."""

    seconds: float
    records: float
    """Records whose batch was taken by the stream inside the window (a batch straddling
    an edge counts in proportion)."""
    licences: int
    """Issue calls answered inside the window."""
    issue_latencies_ms: tuple[float, ...]
    inserted: int
    """Records the stream's reply says it inserted, over the whole load."""
    sent: int
    """Records sent over the whole load."""
    refused: dict[str, int]
    """Refusals the loading department's callers saw (and retried), by reason."""

    @property
    def records_rate(self) -> float:
        return self.records / self.seconds

    @property
    def licences_rate(self) -> float:
        return self.licences / self.seconds


@dataclass(frozen=True)
class VerifyFigures:
    """What the public's verifiers got inside the measured window."""

    seconds: float
    statuses: dict[int, int]
    """Answers by HTTP status: 200 verified, 429 refused for the public's limit."""
    latencies_ms: tuple[float, ...]
    """Of the verified ones."""

    @property
    def verified_rate(self) -> float:
        return self.statuses.get(200, 0) / self.seconds

    @property
    def refused_rate(self) -> float:
        return self.statuses.get(429, 0) / self.seconds


@dataclass(frozen=True)
class BurstFigures:
    """One burst of Issue calls."""

    concurrency: int
    calls: int
    seconds: float
    """From the first call's start to the last call's end."""
    latencies_ms: tuple[float, ...]
    """Of the calls answered with a licence."""
    failures: dict[str, int]
    """Calls that failed, by reason."""

    @property
    def issued(self) -> int:
        return len(self.latencies_ms)

    @property
    def rate(self) -> float:
        return self.issued / self.seconds


class Peer:
    """The child process, as the benchmark drives it; see the module docstring."""

    def __init__(self, process: asyncio.subprocess.Process, code: str) -> None:
        self._process = process
        self.code = code
        self.ps = psutil.Process(process.pid)

    async def start_load(
        self, *, dataset: str, batch: int, issuers: int, warmup: float, duration: float
    ) -> None:
        """Start loading; the window opens ``warmup`` seconds from now."""
        self._send(
            op="load",
            dataset=dataset,
            batch=batch,
            issuers=issuers,
            warmup=warmup,
            duration=duration,
        )

    async def stop_load(self) -> LoadFigures:
        """Stop loading; return the figures. Raises RuntimeError if the load failed."""
        self._send(op="stop")
        answer = await self._answer()
        return LoadFigures(
            seconds=answer["seconds"],
            records=answer["records"],
            licences=answer["licences"],
            issue_latencies_ms=tuple(answer["issue_latencies_ms"]),
            inserted=answer["inserted"],
            sent=answer["sent"],
            refused=dict(answer["refused"]),
        )

    async def start_verifying(
        self, *, http: str, callers: int, licences: int, warmup: float, duration: float
    ) -> None:
        """Start the public's verifying (after issuing its licences, which the window's
        ``warmup`` should cover); the window opens ``warmup`` seconds from now."""
        self._send(
            op="verify",
            http=http,
            callers=callers,
            licences=licences,
            warmup=warmup,
            duration=duration,
        )

    async def stop_verifying(self) -> VerifyFigures:
        """Stop verifying; return the figures. Raises RuntimeError if it failed."""
        self._send(op="stop")
        answer = await self._answer()
        return VerifyFigures(
            seconds=answer["seconds"],
            statuses={int(status): n for status, n in answer["statuses"].items()},
            latencies_ms=tuple(answer["latencies_ms"]),
        )

    async def burst(self, concurrency: int, calls: int) -> BurstFigures:
        """Make ``calls`` Issue calls from ``concurrency`` callers; return the figures."""
        self._send(op="burst", concurrency=concurrency, calls=calls)
        answer = await self._answer()
        return BurstFigures(
            concurrency=concurrency,
            calls=calls,
            seconds=answer["seconds"],
            latencies_ms=tuple(answer["latencies_ms"]),
            failures=dict(answer["failures"]),
        )

    def _send(self, **command: Any) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(command).encode() + b"\n")

    async def _answer(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = await self._process.stdout.readline()
        if not line:
            await self._process.wait()
            raise RuntimeError(
                f"the {self.code} process exited (status {self._process.returncode}); "
                "its error is above"
            )
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{self.code}'s load failed: {answer['error']}")
        return answer


@asynccontextmanager
async def peer(
    node: NodeServer, code: str, officer_id: str, call_timeout: float
) -> AsyncIterator[Peer]:
    """Run ``code``'s client process against ``node`` for the duration of the block, as
    ``officer_id``, each call with a deadline of ``call_timeout`` seconds.

    Raises RuntimeError if it does not report ready within a minute.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "bench._peer", node.target, str(node.bundles), code, officer_id, str(call_timeout)),
        cwd=_REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        limit=_ANSWER_LIMIT,
        process_group=0,  # a Ctrl-C reaches the benchmark only, which then ends this
    )
    try:
        child = Peer(process, code)
        try:
            await asyncio.wait_for(child._answer(), _READY_TIMEOUT)
        except TimeoutError:
            raise RuntimeError(f"the {code} process did not get ready") from None
        yield child
    finally:
        if process.returncode is None:
            assert process.stdin is not None
            with suppress(ConnectionError):
                process.stdin.write(b'{"op": "quit"}\n')
                process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), _QUIT_TIMEOUT)
            except TimeoutError:
                process.kill()
                await process.wait()


# --- the child --------------------------------------------------------------------------


def _template(dataset: str, batch: int) -> records_pb2.PublishRecordsRequest:
    """A message of ``batch`` generated records; ``_rekey`` gives it fresh keys."""
    rows = generate_records(batch, random.Random(batch))
    return records_pb2.PublishRecordsRequest(
        dataset=dataset,
        changes=[
            records_pb2.RecordChange(
                key=key,
                fields={name: FieldValue(string_value=str(v)) for name, v in values.items()},
            )
            for key, values in rows
        ],
    )


_next_key: dict[str, int] = {}
"""Per dataset, the number of the next generated key: every load sends new records."""


def _rekey(message: records_pb2.PublishRecordsRequest, first: int) -> None:
    for i, change in enumerate(message.changes):
        key = uscc(first + i)
        change.key = key
        change.fields["uscc"].string_value = key


def _share(start: float, end: float, window: tuple[float, float]) -> float:
    """The fraction of ``start``..``end`` inside ``window``."""
    if end <= start:
        return 1.0 if window[0] <= end < window[1] else 0.0
    inside = min(end, window[1]) - max(start, window[0])
    return max(0.0, inside) / (end - start)


async def _load(
    department: Department,
    client: ExchangeClient,
    records: records_pb2_grpc.RecordServiceAsyncStub,
    command: dict[str, Any],
    stopped: asyncio.Event,
) -> dict[str, Any]:
    started = time.perf_counter()
    window = (started + command["warmup"], started + command["warmup"] + command["duration"])
    batch = int(command["batch"])
    refused: Counter[str] = Counter()
    latencies: list[float] = []
    taken: list[float] = [started]  # when the stream took each batch (its write finished)
    sent = 0
    dataset = str(command["dataset"])
    message = _template(dataset, batch)

    async def issuer() -> None:
        async def issue() -> object:
            return await client.issue_licence(
                LICENCE_TYPE, BUSINESS_LICENCE_CLAIMS, case_id=_CASE_ID
            )

        while not stopped.is_set():
            t0 = time.perf_counter()
            await admitted(issue, refused)
            t1 = time.perf_counter()
            if window[0] <= t1 < window[1]:
                latencies.append(t1 - t0)

    async def batches() -> AsyncIterator[records_pb2.PublishRecordsRequest]:
        nonlocal sent
        while not stopped.is_set():
            _rekey(message, _next_key.get(dataset, 0))
            _next_key[dataset] = _next_key.get(dataset, 0) + batch
            sent += batch
            yield message  # serialised when written; resumed once the write has finished
            taken.append(time.perf_counter())

    async def stream() -> tuple[records_pb2.PublishRecordsResponse, int]:
        first = sent  # a stream refused and tried again inserted nothing
        reply: records_pb2.PublishRecordsResponse = await records.StreamRecords(
            batches(), metadata=department.metadata, timeout=None
        )
        return reply, sent - first

    async with asyncio.TaskGroup() as group:
        for _ in range(int(command["issuers"])):
            group.create_task(issuer())
        streaming = group.create_task(admitted(stream, refused))
    reply, streamed = streaming.result()
    # The last batch was taken when the stream's reply came: it commits before replying.
    taken.append(time.perf_counter())
    in_window = sum(batch * _share(taken[i], taken[i + 1], window) for i in range(len(taken) - 1))
    if reply.inserted != streamed:
        raise RuntimeError(f"StreamRecords inserted {reply.inserted:,} of {streamed:,} records")
    return {
        "seconds": window[1] - window[0],
        "records": in_window,
        "licences": len(latencies),
        "issue_latencies_ms": [s * 1000 for s in latencies],
        "inserted": reply.inserted,
        "sent": sent,
        "refused": dict(refused),
    }


async def _verify(
    client: ExchangeClient, command: dict[str, Any], stopped: asyncio.Event
) -> dict[str, Any]:
    started = time.perf_counter()
    window = (started + command["warmup"], started + command["warmup"] + command["duration"])
    texts = [
        (await client.issue_licence(LICENCE_TYPE, BUSINESS_LICENCE_CLAIMS, case_id=_CASE_ID)).qr
        for _ in range(int(command["licences"]))
    ]
    url = f"http://{command['http']}/verify"
    statuses: Counter[int] = Counter()
    latencies: list[float] = []

    async def verifier(http: aiohttp.ClientSession, number: int) -> None:
        turn = number
        while not stopped.is_set():
            turn += 1
            t0 = time.perf_counter()
            async with http.post(url, json={"qr": texts[turn % len(texts)]}) as response:
                await response.read()
                status = response.status
            t1 = time.perf_counter()
            if window[0] <= t1 < window[1]:
                statuses[status] += 1
                if status == 200:
                    latencies.append(t1 - t0)
            if status not in (200, 429):
                raise RuntimeError(f"/verify answered {status}")

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http, asyncio.TaskGroup() as group:
        for number in range(int(command["callers"])):
            group.create_task(verifier(http, number))
    return {
        "seconds": window[1] - window[0],
        "statuses": {str(status): n for status, n in statuses.items()},
        "latencies_ms": [s * 1000 for s in latencies],
    }


async def _burst(client: ExchangeClient, concurrency: int, calls: int) -> dict[str, Any]:
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    left = calls

    async def caller() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            t0 = time.perf_counter()
            try:
                await client.issue_licence(LICENCE_TYPE, BUSINESS_LICENCE_CLAIMS, case_id=_CASE_ID)
            except ExchangeError as e:
                failures[e.reason] += 1
                continue
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(caller())
    return {
        "seconds": time.perf_counter() - started,
        "latencies_ms": [s * 1000 for s in latencies],
        "failures": dict(failures),
    }


def _say(answer: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


def _describe(error: BaseException) -> str:
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in error.exceptions)
    if isinstance(error, grpc.aio.AioRpcError):
        return describe(exchange_error(error))
    return describe(error)


async def _serve(department: Department) -> None:
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    async with department.client() as client, department.channel() as channel:
        await client.who_am_i()
        await node_pb2_grpc.NodeServiceStub(channel).WhoAmI(
            node_pb2.WhoAmIRequest(), metadata=department.metadata, timeout=department.timeout
        )
        records = records_pb2_grpc.RecordServiceStub(channel)
        _say({"ready": True})
        loading: asyncio.Task[dict[str, Any]] | None = None
        stopped = asyncio.Event()
        while line := await commands.readline():
            command = json.loads(line)
            op = command["op"]
            if op == "quit":
                break
            if op == "load" and loading is None:
                stopped.clear()
                loading = asyncio.create_task(_load(department, client, records, command, stopped))
                continue
            if op == "verify" and loading is None:
                stopped.clear()
                loading = asyncio.create_task(_verify(client, command, stopped))
                continue
            if op == "stop" and loading is not None:
                stopped.set()
                task, loading = loading, None
                try:
                    _say(await task)
                except Exception as e:  # reported to the benchmark, which fails the run
                    _say({"error": _describe(e)})
                continue
            if op == "burst" and loading is None:
                try:
                    _say(await _burst(client, int(command["concurrency"]), int(command["calls"])))
                except Exception as e:
                    _say({"error": _describe(e)})
                continue
            _say({"error": f"unexpected command {op!r}"})


def main(argv: list[str]) -> int:
    """``python -m bench._peer TARGET BUNDLES CODE OFFICER_ID TIMEOUT``."""
    target, bundles, code, officer_id, timeout = argv
    department = Department.load(target, Path(bundles), code, officer_id, float(timeout))
    asyncio.run(_serve(department))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
