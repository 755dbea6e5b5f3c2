"""Kafka mode against a real Kafka-protocol broker (Tansu): the outbox relay publishes in
order and marks what the broker acknowledged; subscribers are fed from Kafka; a broker
outage and a node killed mid-relay lose nothing, and duplicates carry identical ids."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.cli_helpers import TONGBAN, cli_env
from tests.conftest import client_for, enrol_demo, kafka_settings
from tests.kafka_broker import TansuBroker
from tests.stories.restaurant import COMPANY, ENTERPRISE
from tongban.client import Event
from tongban.exchange.node import Node
from tongban.exchange.settings import Settings
from tongban.signing.clock import FixedClock, SystemClock

pytestmark = pytest.mark.slow

DATASET = "samr.enterprise"
USCCS = [  # valid check characters: the dataset's key is validated
    "91330102MA2K8Q7R1N",
    "91110000100000000R",
    "91310000MA1FL1234Q",
]


def _company(n: int, version: int) -> dict[str, Any]:
    return dict(COMPANY, name=f"企业{n}", address=f"杭州市解放路{version}号")


async def _publish_versions(node: Node, rounds: int, per_round: int = 1) -> None:
    """Publish ``rounds`` new versions of each company (keys repeat: order per key matters)."""
    async with client_for(node, "samr", "SC-1") as samr:
        for version in range(rounds):
            for _ in range(per_round):
                await samr.publish_records(
                    DATASET,
                    [(usccs, _company(i, version)) for i, usccs in enumerate(USCCS)],
                )


async def _unpublished(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM event_outbox WHERE published_at IS NULL"))


async def _wait_published(pool: asyncpg.Pool, within: float = 60) -> None:
    async with asyncio.timeout(within):
        while await _unpublished(pool):
            await asyncio.sleep(0.1)


async def _read_topic(bootstrap: str, topic: str, at_least: int) -> list[dict[str, Any]]:
    """Every message on ``topic`` from the start, in partition order (at least ``at_least``)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, 0)
        got: list[dict[str, Any]] = []
        async with asyncio.timeout(30):
            quiet = 0
            while len(got) < at_least or quiet < 3:
                batch = await consumer.getmany(timeout_ms=300)
                quiet = 0 if batch else quiet + 1
                for tp in sorted(batch, key=lambda tp: tp.partition):
                    for message in batch[tp]:
                        assert message.value is not None
                        doc = json.loads(message.value)
                        doc["_partition"] = tp.partition
                        doc["_kafka_key"] = message.key
                        doc["_header"] = dict(message.headers)["event_id"].decode()
                        got.append(doc)
        return got
    finally:
        await consumer.stop()


async def _outbox(pool: asyncpg.Pool) -> dict[int, asyncpg.Record]:
    rows = await pool.fetch(
        "SELECT position, event_id, key, version FROM event_outbox WHERE dataset = $1", DATASET
    )
    return {r["position"]: r for r in rows}


def _check_messages(messages: list[dict[str, Any]], outbox: dict[int, asyncpg.Record]) -> None:
    """Every outbox event is on the topic; duplicates are identical (but for the sealed
    personal fields: each copy has a nonce of its own); per key, in order."""
    by_position: dict[int, dict[str, Any]] = {}
    per_key: dict[str, list[int]] = defaultdict(list)
    for doc in messages:
        first = by_position.setdefault(doc["position"], doc)
        assert {k: v for k, v in doc.items() if k not in ("_partition", "sealed")} == {
            k: v for k, v in first.items() if k not in ("_partition", "sealed")
        }, "a duplicate differs from the first copy"
        assert doc["event_id"] == doc["_header"]
        assert doc["_kafka_key"] == doc["key"].encode()
        row = outbox[doc["position"]]
        assert (doc["event_id"], doc["key"], doc["version"]) == (
            str(row["event_id"]),
            row["key"],
            row["version"],
        )
        per_key[doc["key"]].append(doc["version"])
    assert set(by_position) == set(outbox), "an event is missing from Kafka"
    for key, versions in per_key.items():
        deduplicated = list(dict.fromkeys(versions))
        assert deduplicated == sorted(deduplicated), f"{key}: versions out of order"


async def _take(stream: AsyncIterator[Event], n: int, within: float = 30) -> list[Event]:
    got: list[Event] = []
    async with asyncio.timeout(within):
        async for event in stream:
            got.append(event)
            if len(got) == n:
                break
    return got


async def test_relay_publishes_every_event_in_order_and_marks_it(
    settings: Settings, kafka_broker: TansuBroker
) -> None:
    settings = kafka_settings(settings, kafka_broker.bootstrap)
    async with Node(settings, clock=FixedClock(SystemClock().now())) as node:
        assert node.db is not None
        await enrol_demo(settings)
        async with client_for(node, "samr", "SC-1") as samr:
            await samr.register_dataset(ENTERPRISE, publish=True)
        await _publish_versions(node, rounds=20)
        await _wait_published(node.db.pool)
        outbox = await _outbox(node.db.pool)
        assert len(outbox) == 20 * len(USCCS)
        messages = await _read_topic(
            kafka_broker.bootstrap, node.settings.kafka_topic_prefix + DATASET, len(outbox)
        )
        _check_messages(messages, outbox)
        assert len(messages) == len(outbox)  # a healthy relay sends each event once
        progress = await node.db.pool.fetch("SELECT * FROM kafka_progress")
        assert sum(r["next_offset"] for r in progress) == len(outbox)
        assert node.relay is not None
        assert node.relay.leading


async def test_subscribers_are_fed_from_kafka(
    settings: Settings, kafka_broker: TansuBroker
) -> None:
    settings = kafka_settings(settings, kafka_broker.bootstrap)
    async with Node(settings, clock=FixedClock(SystemClock().now())) as node:
        assert node.db is not None
        await enrol_demo(settings)
        async with client_for(node, "samr", "SC-1") as samr:
            await samr.register_dataset(ENTERPRISE, publish=True)
        await _publish_versions(node, rounds=2)  # before the subscriber: caught up from SQL
        async with client_for(node, "tax", "TX-1") as tax:
            stream = tax.subscribe(DATASET, fields=["name", "address"], purpose="登记信息同步")
            reader = asyncio.create_task(_take(stream, 10 * len(USCCS)))
            await asyncio.sleep(0.5)
            await _publish_versions(node, rounds=8)  # while it listens: from Kafka
            events = await reader
        assert [e.position for e in events] == list(range(10 * len(USCCS)))
        assert node._feed is not None
        assert getattr(node._feed, "gap_fills", None) == 0  # nothing needed the outbox


@contextlib.asynccontextmanager
async def _node_on_own_broker(settings: Settings) -> AsyncIterator[tuple[Node, TansuBroker]]:
    """A node in Kafka mode on a broker of its own (the test stops and starts it), with
    the demo's departments enrolled and samr's dataset registered."""
    broker = TansuBroker()
    broker.start()
    settings = kafka_settings(settings, broker.bootstrap)
    try:
        async with Node(settings, clock=FixedClock(SystemClock().now())) as node:
            await enrol_demo(settings)
            async with client_for(node, "samr", "SC-1") as samr:
                await samr.register_dataset(ENTERPRISE, publish=True)
            yield node, broker
    finally:
        broker.stop()


async def test_broker_outage_loses_nothing(settings: Settings) -> None:
    """The broker stops under load: the outbox grows, the relay retries, drains when the
    broker returns (empty: Tansu keeps topics in memory), and subscribers miss nothing."""
    async with _node_on_own_broker(settings) as (node, broker):
        assert node.db is not None
        async with client_for(node, "tax", "TX-1") as tax:
            stream = tax.subscribe(DATASET, fields=["name", "address"], purpose="登记信息同步")
            total = 12 * len(USCCS)
            reader = asyncio.create_task(_take(stream, total, within=90))
            await _publish_versions(node, rounds=4)
            await _wait_published(node.db.pool)

            broker.stop(kill=True)
            await _publish_versions(node, rounds=8)
            async with asyncio.timeout(60):  # the relay's sends time out, it backs off
                while not node.metrics.relay_errors._value.get():
                    await asyncio.sleep(0.2)
            await asyncio.sleep(2)
            backlog = await _unpublished(node.db.pool)
            assert backlog == 8 * len(USCCS)  # waiting in the outbox, none lost

            broker.start()  # same port, empty
            await _wait_published(node.db.pool)
            events = await reader
        assert [e.position for e in events] == list(range(total))
        messages = await _read_topic(
            broker.bootstrap, node.settings.kafka_topic_prefix + DATASET, backlog
        )
        outbox = await _outbox(node.db.pool)
        after_outage = {p: r for p, r in outbox.items() if p >= 4 * len(USCCS)}
        _check_messages([m for m in messages if m["position"] in after_outage], after_outage)


async def test_node_killed_mid_relay_loses_nothing(
    settings: Settings, kafka_broker: TansuBroker
) -> None:
    """The leading node is killed with SIGKILL while relaying: another node takes the lead
    and publishes the rest; nothing is lost, and any duplicate has the same id."""
    settings = kafka_settings(settings, kafka_broker.bootstrap)
    await enrol_demo(settings)
    leader = _serve(settings)
    try:
        async with Node(settings, clock=FixedClock(SystemClock().now())) as standby:
            assert standby.db is not None
            assert standby.relay is not None
            await asyncio.sleep(0.5)
            assert not _leading(standby)  # the subprocess holds the lock
            async with client_for(standby, "samr", "SC-1") as samr:
                await samr.register_dataset(ENTERPRISE, publish=True)
            publishing = asyncio.create_task(_publish_versions(standby, rounds=60))
            async with asyncio.timeout(30):
                while (
                    await standby.db.pool.fetchval(
                        "SELECT count(*) FROM event_outbox WHERE published_at IS NOT NULL"
                    )
                    < 30
                ):
                    await asyncio.sleep(0.02)
            leader.send_signal(signal.SIGKILL)
            leader.wait(10)
            await publishing
            await _wait_published(standby.db.pool)
            assert _leading(standby)
            outbox = await _outbox(standby.db.pool)
            messages = await _read_topic(
                kafka_broker.bootstrap, settings.kafka_topic_prefix + DATASET, len(outbox)
            )
            _check_messages(messages, outbox)
    finally:
        if leader.poll() is None:
            leader.kill()
            leader.wait()
        assert leader.stdout is not None
        leader.stdout.close()


def _leading(node: Node) -> bool:
    return node.relay is not None and node.relay.leading


def _serve(settings: Settings) -> subprocess.Popen[str]:
    """``tongban serve`` on the same database and broker, ready when it returns."""
    assert settings.database_url is not None
    assert settings.key_passphrase is not None
    env = cli_env(
        TONGBAN_DATABASE_URL=settings.database_url.get_secret_value(),
        TONGBAN_KEY_PASSPHRASE=settings.key_passphrase.get_secret_value(),
        TONGBAN_KAFKA_BOOTSTRAP=str(settings.kafka_bootstrap),
        TONGBAN_KAFKA_IDEMPOTENCE="false",
        TONGBAN_KAFKA_TOPIC_PREFIX=settings.kafka_topic_prefix,
    )
    proc = subprocess.Popen(
        [
            TONGBAN,
            "serve",
            "--json",
            "--workers",
            "1",
            "--data-dir",
            str(Path(settings.data_dir)),
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, "serve exited before it was ready"
    assert json.loads(line)["event"] == "ready"
    return proc


async def test_a_stream_that_starts_while_the_broker_is_down_is_served_from_the_outbox(
    settings: Settings,
) -> None:
    """Kafka down when a stream is to start reading it: the stream does not end, it is
    served from the outbox (on PostgreSQL's notifications) and reads Kafka once it is
    back. (It used to end with BROKER_UNAVAILABLE.)"""
    async with _node_on_own_broker(settings) as (node, broker):
        assert node.db is not None
        await _publish_versions(node, rounds=2)
        await _wait_published(node.db.pool)
        broker.stop(kill=True)
        async with client_for(node, "tax", "TX-1") as tax:
            stream = tax.subscribe(DATASET, fields=["name", "address"], purpose="登记信息同步")
            got = await _next(stream, 2 * len(USCCS))  # the outbox up to now
            await _publish_versions(node, rounds=4)  # versions 2 and 3 are new
            got += await _next(stream, 2 * len(USCCS))  # while Kafka is still down
            assert node._feed is not None
            assert getattr(node._feed, "outbox_while_down", 0) >= 1
            broker.start()  # same port, empty
            await _publish_versions(node, rounds=6)  # versions 4 and 5
            got += await _next(stream, 2 * len(USCCS), within=60)
        assert [e.position for e in got] == list(range(6 * len(USCCS)))


async def _next(stream: AsyncIterator[Event], n: int, within: float = 30) -> list[Event]:
    """The next ``n`` events of ``stream`` (which goes on after)."""
    async with asyncio.timeout(within):
        return [await anext(stream) for _ in range(n)]
