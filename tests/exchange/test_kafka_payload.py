"""Personal data on Kafka topics, against the real broker, read by an outside client
(kafka-python, not aiokafka's code): a topic discloses no personal field or personal
subject key, subscribers still receive whole records through the node, a forged message
is never delivered, and a key rotation keeps old messages readable."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import asyncpg
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from tests.conftest import client_for, enrol_demo, kafka_settings
from tests.kafka_broker import TansuBroker
from tests.stories.restaurant import COMPANY, COMPANY_USCC, ENTERPRISE, OWNER, OWNER_ID, PERSON
from tongban.cli.story_data import grant_representative_ids
from tongban.client import Event
from tongban.exchange.datadir import load_kafka_payload_keys
from tongban.exchange.kafka.feed import KafkaFeed
from tongban.exchange.kafka.sealing import KEY_ID_HEADER, open_event
from tongban.exchange.node import Node
from tongban.exchange.settings import Settings
from tongban.signing.clock import FixedClock, SystemClock

pytestmark = pytest.mark.slow

PERSONAL = [
    str(COMPANY["legal_representative"]),
    str(COMPANY["legal_representative_id"]),
    OWNER_ID,
    str(OWNER["household_address"]),
]
CLEAR = [str(COMPANY["name"]), str(COMPANY["address"]), COMPANY_USCC]


@dataclass(frozen=True)
class Message:
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]

    @property
    def everything(self) -> bytes:
        return self.key + self.value + b"".join(n.encode() + v for n, v in self.headers)

    @property
    def doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.value)
        return doc


def _read(bootstrap: str, topic: str, at_least: int) -> list[Message]:
    """Every message on ``topic``, with kafka-python (blocking: run in a thread)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, client_id="outsider"
    )
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))
        ]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        got: list[Message] = []
        for _ in range(100):
            for tp, records in consumer.poll(timeout_ms=300).items():
                got += [
                    Message(tp.partition, r.offset, r.key, r.value, list(r.headers))
                    for r in records
                ]
            if len(got) >= at_least:
                return sorted(got, key=lambda m: m.doc["position"])
        raise AssertionError(f"{topic}: {len(got)} messages, expected {at_least}")
    finally:
        consumer.close()


def _produce(bootstrap: str, topic: str, message: Message) -> None:
    """Write ``message`` to ``topic`` as someone with write access but no node keys."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, client_id="outsider")
    try:
        producer.send(
            topic,
            value=message.value,
            key=message.key,
            headers=message.headers,
            partition=message.partition,
        ).get(timeout=30)
    finally:
        producer.close()


def _forms(text: str) -> list[bytes]:
    return [text.encode(), json.dumps(text).encode()[1:-1], base64.b64encode(text.encode())]


async def _wait_published(pool: asyncpg.Pool) -> None:
    async with asyncio.timeout(60):
        while await pool.fetchval("SELECT count(*) FROM event_outbox WHERE published_at IS NULL"):
            await asyncio.sleep(0.1)


async def _take(stream: AsyncIterator[Event], n: int) -> list[Event]:
    got: list[Event] = []
    async with asyncio.timeout(60):
        async for event in stream:
            got.append(event)
            if len(got) == n:
                break
    return got


def _rejected(node: Node, kind: str) -> float:
    value = node.metrics.registry.get_sample_value(
        "tongban_kafka_messages_rejected_total", {"kind": kind}
    )
    return value or 0.0


def _feed(node: Node) -> KafkaFeed:
    assert isinstance(node._feed, KafkaFeed)
    return node._feed


@pytest.fixture
async def kafka_node(settings: Settings, kafka_broker: TansuBroker) -> AsyncIterator[Node]:
    settings = kafka_settings(settings, kafka_broker.bootstrap)
    async with Node(settings, clock=FixedClock(SystemClock().now())) as node:
        assert node.db is not None
        await enrol_demo(settings)
        async with client_for(node, "samr", "SC-1") as samr:
            await samr.register_dataset(ENTERPRISE, publish=True)
        yield node


async def test_an_outside_reader_of_the_topics_sees_no_personal_data(
    kafka_node: Node, kafka_broker: TansuBroker
) -> None:
    node = kafka_node
    assert node.db is not None
    async with client_for(node, "samr", "SC-1") as samr:
        await samr.publish_records(ENTERPRISE.code, [(COMPANY_USCC, COMPANY)])
    async with client_for(node, "police", "GA-1") as police:  # keyed by a citizen id
        await police.register_dataset(PERSON, publish=True)
        await police.publish_records(PERSON.code, [(OWNER_ID, OWNER)])
    await _wait_published(node.db.pool)
    prefix = node.settings.kafka_topic_prefix
    [company] = await asyncio.to_thread(_read, kafka_broker.bootstrap, prefix + ENTERPRISE.code, 1)
    [person] = await asyncio.to_thread(_read, kafka_broker.bootstrap, prefix + PERSON.code, 1)

    for message in (company, person):
        for value in PERSONAL:
            for form in _forms(value):
                assert form not in message.everything, f"{value} is readable on the topic"
        current = load_kafka_payload_keys(node.settings).current
        assert dict(message.headers)[KEY_ID_HEADER] == current.encode()
    for value in CLEAR:  # what anyone may see stays readable by tools we did not write
        assert value.encode() in company.value
    public = {"uscc", "name", "address", "registered_capital", "established", "business_scope"}
    assert set(company.doc["data"]) <= public
    assert {"uscc", "name", "address"} <= set(company.doc["data"])
    assert company.key == COMPANY_USCC.encode()
    assert person.doc["data"] == {}  # every field of a person is personal
    assert person.doc["key"].startswith("pseudonym:")
    assert person.key == person.doc["key"].encode()


async def test_a_subscriber_receives_the_personal_fields_decrypted(
    kafka_node: Node, kafka_broker: TansuBroker
) -> None:
    node = kafka_node
    await grant_representative_ids(partial(client_for, node), node.clock.now())
    fields = ["name", "legal_representative", "legal_representative_id"]
    async with client_for(node, "police", "GA-1") as police:
        stream = police.subscribe(ENTERPRISE.code, fields=fields, purpose="印章刻制备案")
        reader = asyncio.create_task(_take(stream, 2))
        await asyncio.sleep(0.5)  # listening: these come through Kafka
        async with client_for(node, "samr", "SC-1") as samr:
            await samr.publish_records(ENTERPRISE.code, [(COMPANY_USCC, COMPANY)])
            moved = dict(COMPANY, legal_representative="李四")
            await samr.publish_records(ENTERPRISE.code, [(COMPANY_USCC, moved)])
        events = await reader
    assert [e.position for e in events] == [0, 1]
    assert [e.key for e in events] == [COMPANY_USCC, COMPANY_USCC]
    assert events[0].fields == {k: COMPANY[k] for k in fields}
    assert events[1].fields["legal_representative"] == "李四"
    async with asyncio.timeout(60):  # the feed opened the relay's messages with its keys
        while _feed(node).opened < 2:
            await asyncio.sleep(0.1)
    assert _rejected(node, "not_authentic") == _rejected(node, "unknown_key") == 0


async def test_a_forged_message_is_not_delivered(
    kafka_node: Node, kafka_broker: TansuBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """Someone with write access to the topic but without the node keys puts the blob of
    one message into another, claiming the next position: the feed refuses it (logged,
    counted) and the subscriber receives the true event when it comes."""
    node = kafka_node
    assert node.db is not None
    topic = node.settings.kafka_topic_prefix + ENTERPRISE.code
    versions = [dict(COMPANY, address=f"浙江省杭州市上城区解放路{n}号") for n in (1, 2, 3)]
    async with client_for(node, "tax", "SW-1") as tax:
        stream = tax.subscribe(ENTERPRISE.code, fields=["name", "address"], purpose="税务登记")
        reader = asyncio.create_task(_take(stream, 3))
        async with client_for(node, "samr", "SC-1") as samr:
            for record in versions[:2]:
                await samr.publish_records(ENTERPRISE.code, [(COMPANY_USCC, record)])
            await _wait_published(node.db.pool)
            first, second = await asyncio.to_thread(_read, kafka_broker.bootstrap, topic, 2)
            forged = dict(second.doc, position=2, sealed=first.doc["sealed"])
            await asyncio.to_thread(
                _produce,
                kafka_broker.bootstrap,
                topic,
                Message(
                    second.partition,
                    0,
                    second.key,
                    json.dumps(forged, ensure_ascii=False).encode(),
                    second.headers,
                ),
            )
            async with asyncio.timeout(60):
                while not _rejected(node, "not_authentic"):
                    await asyncio.sleep(0.1)
            await samr.publish_records(ENTERPRISE.code, [(COMPANY_USCC, versions[2])])
        events = await reader
    assert [(e.position, e.fields["address"]) for e in events] == [
        (n, versions[n]["address"]) for n in range(3)
    ]
    [line] = [r for r in caplog.records if "not delivered (not_authentic)" in r.getMessage()]
    assert "fails authentication" in line.getMessage()
    assert not line.exc_info


async def test_key_rotation_keeps_old_messages_readable(
    settings: Settings, kafka_broker: TansuBroker
) -> None:
    """The operator adds a key and makes it current (docs/events.md), then restarts the
    node: new messages carry the new key id, and messages under the old one still open —
    in the node's feed and with the keys file the node loads."""
    settings = kafka_settings(settings, kafka_broker.bootstrap)
    topic = settings.kafka_topic_prefix + ENTERPRISE.code
    async with Node(settings, clock=FixedClock(SystemClock().now())) as node:
        assert node.db is not None
        await enrol_demo(settings)
        async with client_for(node, "samr", "SC-1") as samr:
            await samr.register_dataset(ENTERPRISE, publish=True)
            await samr.publish_records(ENTERPRISE.code, [(COMPANY_USCC, COMPANY)])
        await _wait_published(node.db.pool)
    old_id = load_kafka_payload_keys(settings).current

    # The documented rotation: a new 32-byte key under a new id, made current.
    path = settings.data_dir / "secrets" / "kafka-payload.keys"
    doc = json.loads(path.read_text())
    doc["keys"]["k2"] = base64.b64encode(secrets.token_bytes(32)).decode()
    doc["current"] = "k2"
    path.write_text(json.dumps(doc, indent=2))

    async with Node(settings, clock=FixedClock(SystemClock().now())) as node:
        assert node.db is not None
        async with client_for(node, "tax", "SW-1") as tax:
            stream = tax.subscribe(ENTERPRISE.code, fields=["name", "address"], purpose="税务登记")
            reader = asyncio.create_task(_take(stream, 2))
            async with client_for(node, "samr", "SC-1") as samr:
                moved = dict(COMPANY, address="浙江省杭州市拱墅区湖墅南路9号")
                await samr.publish_records(ENTERPRISE.code, [(COMPANY_USCC, moved)])
            await _wait_published(node.db.pool)
            old, new = await asyncio.to_thread(_read, kafka_broker.bootstrap, topic, 2)
            assert dict(old.headers)[KEY_ID_HEADER] == old_id.encode()
            assert dict(new.headers)[KEY_ID_HEADER] == b"k2"
            keys = load_kafka_payload_keys(settings)
            assert keys.current == "k2"
            for message, address in ((old, COMPANY["address"]), (new, moved["address"])):
                row = open_event(keys, message.value, message.headers, dataset=ENTERPRISE.code)
                assert row.data is not None
                assert row.data["legal_representative_id"] == COMPANY["legal_representative_id"]
                assert row.data["address"] == address
            events = await reader
            assert [e.fields["address"] for e in events] == [COMPANY["address"], moved["address"]]

            # A relay that re-publishes an event sealed before the rotation (the same
            # bytes): the feed opens it with the old key, and drops it as delivered.
            opened = _feed(node).opened
            await asyncio.to_thread(_produce, kafka_broker.bootstrap, topic, old)
            async with asyncio.timeout(60):
                while _feed(node).opened == opened:
                    await asyncio.sleep(0.1)
        assert _rejected(node, "unknown_key") == _rejected(node, "not_authentic") == 0
