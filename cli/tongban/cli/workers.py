"""``tongban serve --workers N``: N node processes on one host, sharing the ports.

The node is one Python process, and its event loop one core; on a machine with more,
``--workers`` runs one node process per core. The supervisor (this module):

- initialises the data dir if needed and opens the database once (starting the embedded
  PostgreSQL, applying the migrations, enrolling the demo departments with ``--demo``),
  holding it while the workers run, so the embedded server outlives any one worker;
- picks the ports (a free one for port 0) and starts N workers, each ``tongban serve``
  with ``TONGBAN_REUSE_PORT=1`` (``SO_REUSEPORT``: the kernel spreads new connections over
  them) and its own node name (``<name>-w<i>``, written in the access log);
- answers ``ready`` once every worker is, restarts a worker that dies (its in-flight
  calls fail with UNAVAILABLE; what it acknowledged is committed), and on SIGTERM or
  SIGINT stops them all, each draining its calls, then closes the database (the last one
  out stops the embedded server).

The workers are nodes of one exchange as in cluster mode (docs/deploy.md): one access
log, checkpoints signed under an advisory lock, one relay leader, caches kept coherent by
NOTIFY; the follow-through sweep is safe on every worker at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from tongban.cli.common import emit, running_loop_name, settings_from_args
from tongban.errors import TongbanError
from tongban.exchange.datadir import init_data_dir, is_initialised
from tongban.exchange.db.database import Database, connections_per_node
from tongban.exchange.enrolment import enrol_demo_departments
from tongban.exchange.errors import AddressInUse
from tongban.exchange.settings import ListenAddress, Settings
from tongban.signing.clock import SystemClock

__all__ = ["TooManyWorkers", "WorkerFailed", "run_workers", "usable_cores"]

_log = logging.getLogger(__name__)

READY_SECONDS = 120.0  # a worker's start: migrations checked, keys loaded, ports bound
STOP_SECONDS = 30.0  # after its grace, a worker that has not exited is killed
MAX_RESTARTS = 5  # within RESTART_WINDOW seconds, then the supervisor gives up
RESTART_WINDOW = 60.0
_START = "import sys; from tongban.cli import main; sys.exit(main(sys.argv[1:]))"


class WorkerFailed(TongbanError):
    """A worker could not start, or kept dying."""

    reason = "WORKER_FAILED"
    status = "UNAVAILABLE"


class TooManyWorkers(TongbanError):
    """The database cannot take the connections of the workers asked for."""

    reason = "TOO_MANY_WORKERS"
    status = "FAILED_PRECONDITION"


MAX_WORKERS = 64


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a container's cpuset sets
    it), at most MAX_WORKERS: the default number of workers."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_WORKERS))


_ROOM = """
    SELECT current_setting('max_connections')::int
         - current_setting('superuser_reserved_connections')::int
         - coalesce(current_setting('reserved_connections', true)::int, 0)
         - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')
"""


async def _fit(db: Database, settings: Settings, requested: int | None) -> int:
    """How many workers to start: ``requested``, or one per usable core; in either case
    no more than the database has connections for (each worker opens up to
    ``connections_per_node`` of them). Raises TooManyWorkers if ``requested`` does not
    fit; a default that does not fit is lowered, with a warning."""
    wanted = requested or usable_cores()
    room = int(await db.pool.fetchval(_ROOM))
    each = connections_per_node(settings)
    fits = max(0, room // each)
    if wanted <= fits:
        return wanted
    if requested is not None or fits == 0:
        raise TooManyWorkers(
            f"{wanted} workers open up to {wanted * each} database connections "
            f"({each} each: TONGBAN_DB_POOL_SIZE and the log writer's), but the database "
            f"has room for {max(room, 0)} more; give --workers {max(fits, 1)} or fewer, a "
            "smaller TONGBAN_DB_POOL_SIZE, or raise its max_connections.",
            metadata={"workers": str(wanted), "room": str(max(room, 0))},
        )
    _log.warning(
        "%d cores but room in the database for the connections of %d workers only: "
        "starting %d (raise max_connections or lower TONGBAN_DB_POOL_SIZE for more)",
        wanted,
        fits,
        fits,
    )
    return fits


def _reserve(address: ListenAddress, what: str, flag: str) -> tuple[socket.socket, ListenAddress]:
    """A socket bound to ``address`` with SO_REUSEPORT (a free port for port 0), held until
    the workers have bound the same port. Raises AddressInUse."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    held = socket.socket(family, socket.SOCK_STREAM)
    try:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind((address.host, address.port))
    except OSError as e:
        held.close()
        raise AddressInUse(
            f"Cannot listen for {what} on {address}: the address is in use or not local "
            f"({e.strerror}); choose another with {flag}."
        ) from None
    return held, ListenAddress(address.host, held.getsockname()[1])


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    restarts: list[float] = field(default_factory=list)
    drain: asyncio.Task[None] | None = None


class _Workers:
    def __init__(
        self, args: argparse.Namespace, settings: Settings, grpc: ListenAddress,
        http: ListenAddress, count: int,
    ) -> None:  # fmt: skip
        self._settings = settings
        self._grpc = grpc
        self._http = http
        self._verbose = bool(getattr(args, "verbose", False))
        self.workers = [_Worker(i + 1) for i in range(count)]
        self.stopping = False

    def _command(self) -> list[str]:
        return [
            sys.executable, "-c", _START, "serve", "--json", "--workers", "1",
            "--data-dir", str(self._settings.data_dir),
            "--grpc-listen", str(self._grpc), "--http-listen", str(self._http),
        ]  # fmt: skip

    async def start(self, worker: _Worker) -> None:
        """Start ``worker`` and return once it is ready. Raises WorkerFailed."""
        env = dict(os.environ)
        env["TONGBAN_REUSE_PORT"] = "1"
        env["TONGBAN_NODE_NAME"] = f"{self._settings.node_name}-w{worker.index}"
        process = await asyncio.create_subprocess_exec(
            *self._command(),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        worker.process = process
        assert process.stdout is not None
        try:
            async with asyncio.timeout(READY_SECONDS):
                while True:
                    line = await process.stdout.readline()
                    if not line:
                        code = await process.wait()
                        raise WorkerFailed(
                            f"Worker {worker.index} exited with code {code} while starting; its "
                            "messages are above.",
                            metadata={"worker": str(worker.index)},
                        )
                    with contextlib.suppress(ValueError):
                        message = json.loads(line)
                        if isinstance(message, dict) and message.get("event") == "ready":
                            break
        except TimeoutError:
            process.kill()
            await process.wait()
            raise WorkerFailed(
                f"Worker {worker.index} was not ready within {READY_SECONDS:.0f} s.",
                metadata={"worker": str(worker.index)},
            ) from None
        worker.drain = asyncio.ensure_future(self._drain(process))

    @staticmethod
    async def _drain(process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while await process.stdout.readline():
            pass

    async def supervise(self, stop: asyncio.Event) -> None:
        """Restart workers that die until ``stop`` is set. Raises WorkerFailed when one
        dies more than MAX_RESTARTS times in RESTART_WINDOW seconds."""
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                exits = {
                    asyncio.ensure_future(w.process.wait()): w
                    for w in self.workers
                    if w.process is not None
                }
                done, _ = await asyncio.wait({stopped, *exits}, return_when=asyncio.FIRST_COMPLETED)
                for task in exits:
                    if task not in done:
                        task.cancel()
                if stop.is_set():
                    return
                for task in done:
                    worker = exits.get(task)
                    if worker is None:
                        continue
                    now = time.monotonic()
                    worker.restarts = [t for t in worker.restarts if now - t < RESTART_WINDOW]
                    if len(worker.restarts) >= MAX_RESTARTS:
                        raise WorkerFailed(
                            f"Worker {worker.index} died {MAX_RESTARTS + 1} times within "
                            f"{RESTART_WINDOW:.0f} s; stopping the node.",
                            metadata={"worker": str(worker.index)},
                        )
                    worker.restarts.append(now)
                    _log.warning(
                        "worker %d (pid %d) exited with code %s; restarting it",
                        worker.index,
                        worker.process.pid if worker.process else -1,
                        task.result(),
                    )
                    await self.start(worker)
        finally:
            stopped.cancel()

    async def stop(self) -> None:
        """SIGTERM every worker (each drains its calls), wait, kill what lingers."""
        self.stopping = True
        running = [w.process for w in self.workers if w.process and w.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        grace = self._settings.shutdown_grace_seconds + STOP_SECONDS
        for process in running:
            try:
                async with asyncio.timeout(grace):
                    await process.wait()
            except TimeoutError:
                _log.error(
                    "worker pid %d did not stop within %.0f s; killing it", process.pid, grace
                )
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for worker in self.workers:
            if worker.drain is not None:
                worker.drain.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker.drain

    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers if w.process is not None]


async def run_workers(args: argparse.Namespace, requested: int | None) -> int:
    """Run the node as worker processes under this supervisor: ``requested`` of them, or
    one per usable core (``_fit``)."""
    settings = settings_from_args(args, grpc_listen=args.grpc_listen, http_listen=args.http_listen)
    clock = SystemClock()
    if not is_initialised(settings.data_dir):
        await asyncio.to_thread(init_data_dir, settings, clock.now())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    db = await Database.open(settings, pool_size=2)  # starts and migrates, once
    workers: _Workers | None = None
    try:
        count = await _fit(db, settings, requested)
        enrolled = []
        if args.demo:  # the registry is written with the owner's login (migration 0021)
            async with await Database.open(settings, pool_size=1, owner=True) as owner:
                enrolled = await enrol_demo_departments(owner, settings, clock.now())
        grpc_socket, grpc = _reserve(settings.grpc_listen, "gRPC", "--grpc-listen")
        try:
            http_socket, http = _reserve(settings.http_listen, "HTTP", "--http-listen")
        except BaseException:
            grpc_socket.close()
            raise
        try:
            workers = _Workers(args, settings, grpc, http, count)
            for worker in workers.workers:
                await workers.start(worker)
        finally:
            grpc_socket.close()
            http_socket.close()
        bundles = settings.data_dir / "bundles"
        emit(
            args,
            {
                "event": "ready",
                "node": settings.node_name,
                "grpc": str(grpc),
                "http": str(http),
                "workers": workers.pids(),
                "data_dir": str(settings.data_dir),
                "bundles": str(bundles),
                "enrolled": [dept.code for dept, _ in enrolled],
                "event_loop": running_loop_name(),
                "open_files": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            },
            f"tongban node {settings.node_name} ready with {len(workers.workers)} workers: gRPC "
            f"{grpc} (mutual TLS), HTTP http://{http}/healthz\n  department bundles in "
            f"{bundles}\n  stop with Ctrl-C",
        )
        await workers.supervise(stop)
    finally:
        if workers is not None:
            await workers.stop()
        await db.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    emit(args, {"event": "stopped"}, "")
    return 0
