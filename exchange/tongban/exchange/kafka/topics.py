"""Kafka topics of change events and the message format on them.

One topic per dataset (prefix + dataset code), keyed by the subject key so that one
subject's events stay in one partition, in order. The value is JSON, so consumers we did
not write can read it::

    {"event_id": "…", "dataset": "samr.enterprise", "position": 41, "key": "9133…",
     "version": 3, "op": "upsert", "at": "2026-11-23T10:00:00+00:00", "data": {…}}

``position`` is the event's place in its dataset's outbox (contiguous from 0), and
``event_id`` is deterministic, so a consumer drops a duplicate by either.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterable
from datetime import datetime

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from tongban.exchange.errors import BrokerUnavailable
from tongban.exchange.kafka._lifecycle import close_detached, start_or_close
from tongban.exchange.sharing.events import EventRow

__all__ = ["KafkaTopics", "decode_event", "encode_event"]

_log = logging.getLogger(__name__)

_TOPIC_EXISTS = 36  # TOPIC_ALREADY_EXISTS


def encode_event(dataset: str, row: EventRow, data_json: str | None) -> tuple[bytes, bytes]:
    """Return the Kafka key and value of an outbox event; ``data_json`` is the record's
    JSON as stored (passed through unparsed)."""
    value = (
        f'{{"event_id":"{row.event_id}","dataset":{json.dumps(dataset)},'
        f'"position":{row.position},"key":{json.dumps(row.key, ensure_ascii=False)},'
        f'"version":{row.version},"op":"{row.op}","at":"{row.at.isoformat()}",'
        f'"data":{data_json if data_json is not None else "null"}}}'
    )
    return row.key.encode(), value.encode()


def decode_event(value: bytes) -> tuple[str, EventRow]:
    """Return (dataset, event) from a message value; raise ValueError if malformed."""
    try:
        doc = json.loads(value)
        return str(doc["dataset"]), EventRow(
            position=int(doc["position"]),
            event_id=uuid.UUID(doc["event_id"]),
            key=str(doc["key"]),
            version=int(doc["version"]),
            op=str(doc["op"]),
            data=doc["data"],
            at=datetime.fromisoformat(doc["at"]),
        )
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
        raise ValueError(f"not a Tongban event message: {e}") from e


class KafkaTopics:
    """Names the topic of each dataset and creates topics on first use.

    Topics are created explicitly (production clusters usually disable auto-creation),
    with the configured partitions and replication; an existing topic is used as it is.
    """

    def __init__(
        self, bootstrap: str, prefix: str, partitions: int, replication: int, client_id: str
    ) -> None:
        self._bootstrap = bootstrap
        self._prefix = prefix
        self._partitions = partitions
        self._replication = replication
        self._client_id = client_id
        self._known: dict[str, int] = {}
        self._lock = asyncio.Lock()

    def name(self, dataset: str) -> str:
        return self._prefix + dataset

    def forget(self) -> None:
        """Drop what is known (after a broker error: a restarted broker may have lost
        topics, so the next use checks again)."""
        self._known.clear()

    async def ensure(self, datasets: Iterable[str]) -> dict[str, int]:
        """Create the topics of ``datasets`` that do not exist; return each topic's
        partition count. Raises BrokerUnavailable."""
        topics = {self.name(d) for d in datasets}
        async with self._lock:
            missing = sorted(topics - self._known.keys())
            if missing:
                self._known.update(await self._create(missing))
        return {t: self._known[t] for t in topics}

    async def _create(self, topics: list[str]) -> dict[str, int]:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            request_timeout_ms=10_000,
        )
        try:
            await start_or_close(admin.start, admin.close)
        except KafkaError as e:
            raise BrokerUnavailable(
                f"Cannot reach Kafka at {self._bootstrap} ({type(e).__name__}); check "
                "TONGBAN_KAFKA_BOOTSTRAP and that the brokers are running."
            ) from e
        try:
            response = await admin.create_topics(
                [NewTopic(t, self._partitions, self._replication) for t in topics]
            )
            for topic, code, message in response.topic_errors:
                if code not in (0, _TOPIC_EXISTS):
                    raise BrokerUnavailable(
                        f"Kafka refused to create topic {topic} ({message or code}); check "
                        "the broker's topic settings and TONGBAN_KAFKA_REPLICATION."
                    )
            described = await admin.describe_topics(topics)
        except KafkaError as e:
            raise BrokerUnavailable(
                f"Cannot reach Kafka at {self._bootstrap} ({type(e).__name__}); check "
                "TONGBAN_KAFKA_BOOTSTRAP and that the brokers are running."
            ) from e
        finally:
            await close_detached(admin.close)
        counts = {d["topic"]: len(d["partitions"]) for d in described if not d["error_code"]}
        for topic in topics:
            if not counts.get(topic):
                raise BrokerUnavailable(f"Kafka does not describe topic {topic} yet; retrying.")
            _log.debug("Kafka topic %s has %d partitions", topic, counts[topic])
        return counts
