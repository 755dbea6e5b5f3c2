"""Several ``tongban serve`` processes on one PostgreSQL (and one Kafka-protocol broker),
as an operator runs them: each a subprocess with its own ports and node name, sharing
one initialised data dir (CA, node credentials, log keys — every node of an exchange
needs the same ones), started and stopped explicitly.

"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import asyncpg

from tests.cli_helpers import TONGBAN, cli_env
from tongban.client import Bundle, ExchangeClient, ExchangeError
from tongban.exchange.enrolment import bundle_dir
from tongban.exchange.kafka.relay import RELAY_LOCK
from tongban.exchange.settings import Settings

__all__ = [
    "RETRYABLE",
    "Cluster",
    "ClusterNode",
    "connected",
    "relay_holder",
    "shared_url",
    "wait_for",
]

T = TypeVar("T")

_READY_WITHIN = 60.0
_STOP_WITHIN = 20.0

#: Failures a client may retry on another node: the node is gone (no status could travel)
#: or could not write the access log in time. Everything else is an answer.
RETRYABLE = frozenset({"UNAVAILABLE", "AUDIT_UNAVAILABLE", "DEADLINE_EXCEEDED"})


def shared_url(settings: Settings) -> str:
    """The URL of the database every node of the cluster shares."""
    assert settings.database_url is not None
    return settings.database_url.get_secret_value()


def _node_env(settings: Settings, name: str) -> dict[str, str]:
    assert settings.key_passphrase is not None
    env = cli_env(
        TONGBAN_DATABASE_URL=shared_url(settings),
        TONGBAN_KEY_PASSPHRASE=settings.key_passphrase.get_secret_value(),
        TONGBAN_NODE_NAME=name,
        TONGBAN_SHUTDOWN_GRACE_SECONDS="1",
        TONGBAN_DB_POOL_SIZE="6",
        # One public URL for the whole exchange (licences' status list URIs), as behind
        # a load balancer.
        TONGBAN_PUBLIC_URL="http://exchange.test:8080",
    )
    if settings.kafka_bootstrap is not None:
        env.update(
            TONGBAN_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
            TONGBAN_KAFKA_IDEMPOTENCE="false",  # Tansu has no InitProducerId
            TONGBAN_KAFKA_TOPIC_PREFIX=settings.kafka_topic_prefix,
        )
    return env


@dataclass
class ClusterNode:
    """One ``tongban serve`` process. ``kill()`` is SIGKILL: no drain, no goodbye."""

    name: str
    process: subprocess.Popen[str]
    grpc: str
    http: str
    log: Path
    _clients: dict[tuple[str, str | None], ExchangeClient] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    async def stop(self) -> None:
        """SIGTERM and wait for the drain; SIGKILL if it takes too long."""
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.process.wait, _STOP_WITHIN)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait)
        assert self.process.stdout is not None
        self.process.stdout.close()


def _spawn(settings: Settings, name: str, log: Path) -> subprocess.Popen[str]:
    with log.open("w") as stderr:
        return subprocess.Popen(
            [
                TONGBAN,
                "serve",
                "--json",
                "--workers",
                "1",
                "--data-dir",
                str(settings.data_dir),
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=_node_env(settings, name),
        )


def _abandon(process: subprocess.Popen[str], name: str, log: Path) -> RuntimeError:
    process.kill()
    process.wait()
    assert process.stdout is not None
    process.stdout.close()
    return RuntimeError(f"node {name} did not start:\n{log.read_text()[-3000:]}")


async def _start_node(settings: Settings, name: str, log: Path) -> ClusterNode:
    """Start ``tongban serve`` as node ``name``; return once it has said it is ready."""
    process = await asyncio.to_thread(_spawn, settings, name, log)
    assert process.stdout is not None
    try:
        async with asyncio.timeout(_READY_WITHIN):
            line = await asyncio.to_thread(process.stdout.readline)
    except BaseException:
        await asyncio.to_thread(_abandon, process, name, log)
        raise
    ready = json.loads(line) if line.strip() else {}
    if ready.get("event") != "ready":
        raise await asyncio.to_thread(_abandon, process, name, log)
    return ClusterNode(name, process, ready["grpc"], ready["http"], log)


class Cluster:
    """Nodes of one exchange on ``settings``' database (and broker, in Kafka mode).

    ``async with Cluster(settings, logs) as cluster``; ``await cluster.start(names)``
    starts nodes together; leaving the block stops every node still running.
    """

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings = settings
        self._logs = logs
        self.nodes: list[ClusterNode] = []
        self._bundles: dict[str, Bundle] = {}

    async def start(self, names: Iterable[str]) -> list[ClusterNode]:
        self._logs.mkdir(parents=True, exist_ok=True)
        started = await asyncio.gather(
            *(_start_node(self.settings, name, self._logs / f"{name}.log") for name in names),
            return_exceptions=True,
        )
        nodes = [n for n in started if isinstance(n, ClusterNode)]
        self.nodes.extend(nodes)
        for failure in started:
            if isinstance(failure, BaseException):
                raise failure
        return nodes

    def node(self, name: str) -> ClusterNode:
        return next(n for n in self.nodes if n.name == name)

    @property
    def alive(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.alive]

    def bundle(self, code: str) -> Bundle:
        if code not in self._bundles:
            self._bundles[code] = Bundle.load(bundle_dir(self.settings, code))
        return self._bundles[code]

    def client(self, node: ClusterNode, code: str, officer: str | None = None) -> ExchangeClient:
        """A client of ``code`` on ``node``, kept open until the node stops."""
        key = (code, officer)
        if key not in node._clients:
            node._clients[key] = ExchangeClient(
                self.bundle(code), target=node.grpc, officer_id=officer, timeout=20.0
            )
        return node._clients[key]

    async def call_any(
        self,
        code: str,
        call: Callable[[ExchangeClient], Awaitable[T]],
        *,
        first: int = 0,
        officer: str | None = None,
        retries: list[str] | None = None,
    ) -> tuple[ClusterNode, T]:
        """``call`` as ``code`` on node ``first``; on a retryable failure, on the next node,
        round the ring until one answers, as a client behind a load balancer would (it
        does not know which node is down). Returns the node that answered and its answer;
        an answer that is an error (a denial) is raised. ``retries`` collects the names of
        the nodes that failed."""
        ring = self.nodes[first % len(self.nodes) :] + self.nodes[: first % len(self.nodes)]
        for _ in range(3):
            for node in ring:
                try:
                    return node, await call(self.client(node, code, officer))
                except ExchangeError as e:
                    if e.reason not in RETRYABLE:
                        raise
                    if retries is not None:
                        retries.append(node.name)
        raise RuntimeError(f"no node answered {code}'s call")

    async def stop(self) -> None:
        for node in self.nodes:
            await node.stop()

    async def __aenter__(self) -> Cluster:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def relay_holder(conn: asyncpg.Connection) -> int | None:
    """The backend pid of the session holding the outbox relay's lock, if any.

    (The node's pool sets its own ``application_name``, so a backend cannot be traced to
    its node by name; a test knows the leader by which nodes were running.)"""
    key = RELAY_LOCK & 0xFFFF_FFFF_FFFF_FFFF
    pid: int | None = await conn.fetchval(
        """
        SELECT pid FROM pg_locks
        WHERE locktype = 'advisory' AND granted AND database = (
            SELECT oid FROM pg_database WHERE datname = current_database())
          AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1
        """,
        key >> 32,
        key & 0xFFFF_FFFF,
    )
    return pid


async def wait_for(
    check: Callable[[], Awaitable[bool]], *, within: float = 30.0, every: float = 0.05
) -> None:
    """Poll ``check`` until it is true; TimeoutError after ``within`` seconds."""
    async with asyncio.timeout(within):
        while not await check():
            await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def connected(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the cluster's database, as the operator (for checks)."""
    assert settings.database_url is not None
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        yield conn
    finally:
        await conn.close()
