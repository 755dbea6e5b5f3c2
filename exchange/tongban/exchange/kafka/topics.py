"""Kafka topics of change events.

One topic per dataset (prefix + dataset code), keyed by the subject key (or its
pseudonym) so that one subject's events stay in one partition, in order. The messages
on them, with their personal fields sealed, are ``sealing``'s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from tongban.exchange.errors import BrokerUnavailable
from tongban.exchange.kafka._lifecycle import close_detached
from tongban.exchange.kafka.connection import KafkaConnection, start_client

__all__ = ["KafkaTopics"]

_log = logging.getLogger(__name__)

_TOPIC_EXISTS = 36  # TOPIC_ALREADY_EXISTS


class KafkaTopics:
    """Names the topic of each dataset and creates topics on first use.

    Topics are created explicitly (production clusters usually disable auto-creation),
    with the configured partitions and replication; an existing topic is used as it is.
    """

    def __init__(
        self, connection: KafkaConnection, prefix: str, partitions: int, replication: int
    ) -> None:
        self._connection = connection
        self._prefix = prefix
        self._partitions = partitions
        self._replication = replication
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
        admin = AIOKafkaAdminClient(**self._connection.kwargs, request_timeout_ms=10_000)
        await start_client(self._connection, admin.start, admin.close)
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
                f"Kafka at {self._connection.describe()} failed a topic request "
                f"({type(e).__name__}); check TONGBAN_KAFKA_BOOTSTRAP and that the brokers "
                "are running."
            ) from e
        finally:
            await close_detached(admin.close)
        counts = {d["topic"]: len(d["partitions"]) for d in described if not d["error_code"]}
        for topic in topics:
            if not counts.get(topic):
                raise BrokerUnavailable(f"Kafka does not describe topic {topic} yet; retrying.")
            _log.debug("Kafka topic %s has %d partitions", topic, counts[topic])
        return counts
