"""A node killed with SIGKILL under load, in Kafka mode, loses nothing it acknowledged.

Three nodes; the victim leads the outbox relay and carries a subscriber. Publishers and
queriers call the nodes round-robin (as a TCP load balancer spreads connections) and,
when a node fails them, retry on the next. Mid-load the victim is killed. Afterwards:

- every write a client saw acknowledged — by the dead node too — is there: published
  records are answered by a survivor, answered queries are in the access log;
- the access log has no gap, a checkpoint covers it all, and it verifies;
- another node took the relay lock and published every event the dead node left;
- the subscriber moved to another node and resumed from its acknowledged position:
  every position delivered, duplicates only with identical event ids.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.cli_helpers import atongban, cli_env
from tests.cluster.cluster import (
    RETRYABLE,
    Cluster,
    ClusterNode,
    connected,
    relay_holder,
    shared_url,
    wait_for,
)
from tests.cluster.conftest import enrol
from tests.conftest import kafka_settings, uscc
from tests.kafka_broker import TansuBroker
from tests.stories.restaurant import COMPANY, COMPANY_USCC, ENTERPRISE
from tongban.client import Event, ExchangeClient, ExchangeError
from tongban.exchange.settings import Settings

pytestmark = pytest.mark.slow

PUBLISHERS = 3
BATCHES_PER_PUBLISHER = 30
BATCH = 5
QUERIERS = 4
QUERIES_PER_QUERIER = 60
ACK_EVERY = 10
PURPOSE = "登记信息同步"


@dataclass
class Load:
    """What the clients were told, and by whom."""

    published: dict[str, str] = field(default_factory=dict)  # key -> node that acked
    answered: dict[str, str] = field(default_factory=dict)  # case id -> node that answered
    retried_from: list[str] = field(default_factory=list)  # nodes that failed a call

    def by(self, node: str) -> int:
        return sum(n == node for n in (*self.published.values(), *self.answered.values()))


@dataclass
class Subscriber:
    """The subscriber's view: every event received, acknowledgements, reconnections."""

    events: list[Event] = field(default_factory=list)
    acked: int = -1
    # (node, first position of the new stream, acknowledged and highest position before)
    streams: list[tuple[str, int, int, int]] = field(default_factory=list)

    @property
    def highest(self) -> int:
        return max((e.position for e in self.events), default=-1)


async def _publish(cluster: Cluster, load: Load, worker: int) -> None:
    for b in range(BATCHES_PER_PUBLISHER):
        keys = [uscc(1 + (worker * BATCHES_PER_PUBLISHER + b) * BATCH + k) for k in range(BATCH)]
        records = [(key, dict(COMPANY, name=f"企业{key}")) for key in keys]

        async def call(
            client: ExchangeClient, records: list[tuple[str, dict[str, object]]] = records
        ) -> object:
            return await client.publish_records("samr.enterprise", records)

        node, _ = await cluster.call_any("samr", call, first=worker + b, retries=load.retried_from)
        for key in keys:
            load.published[key] = node.name


async def _query(cluster: Cluster, load: Load, worker: int) -> None:
    for q in range(QUERIES_PER_QUERIER):
        case = f"Q/{worker}/{q}"

        async def call(client: ExchangeClient, case: str = case) -> object:
            return await client.query(
                "samr.enterprise", [COMPANY_USCC], fields=["name"], purpose="税务登记", case_id=case
            )

        node, _ = await cluster.call_any("tax", call, first=worker + q, retries=load.retried_from)
        load.answered[case] = node.name


async def _subscribe(cluster: Cluster, sub: Subscriber, first: ClusterNode) -> None:
    """Follow ``samr.enterprise`` from ``first``; when a node fails, move to the next and
    resume after the acknowledged position (the subscription lives in the database)."""
    ring = cluster.nodes[cluster.nodes.index(first) :] + cluster.nodes
    for node in ring:
        client = cluster.client(node, "tax", "TX-SUB")
        fresh = True
        try:
            async for event in client.subscribe(
                "samr.enterprise", fields=["name"], purpose=PURPOSE
            ):
                if fresh:
                    sub.streams.append((node.name, event.position, sub.acked, sub.highest))
                    fresh = False
                sub.events.append(event)
                if event.position - sub.acked >= ACK_EVERY:
                    sub.acked = await client.acknowledge(event.subscription_id, event.position)
        except ExchangeError as e:
            if e.reason not in RETRYABLE:
                raise
    raise AssertionError("the subscriber ran out of nodes")


async def test_sigkill_under_load_loses_nothing_acknowledged(
    settings: Settings, kafka_broker: TansuBroker, tmp_path: Path
) -> None:
    settings = kafka_settings(settings, kafka_broker.bootstrap)
    await enrol(settings)
    async with Cluster(settings, tmp_path / "logs") as cluster, connected(settings) as db:
        # The victim starts first, so it takes the relay lock.
        (victim,) = await cluster.start(["node-a"])

        async def someone_leads() -> bool:
            return await relay_holder(db) is not None

        await wait_for(someone_leads)
        victim_session = await relay_holder(db)  # node-a's: it is the only node
        await cluster.start(["node-b", "node-c"])
        samr = cluster.client(cluster.node("node-b"), "samr")
        await samr.register_dataset(ENTERPRISE, publish=True)
        await samr.publish_records("samr.enterprise", [(COMPANY_USCC, COMPANY)])

        sub = Subscriber()
        following = asyncio.create_task(_subscribe(cluster, sub, victim))
        load = Load()
        workers = asyncio.gather(
            *(_publish(cluster, load, w) for w in range(PUBLISHERS)),
            *(_query(cluster, load, w) for w in range(QUERIERS)),
        )

        # Kill the victim once it has acknowledged writes of both kinds and the
        # subscriber on it has acknowledged events.
        async def victim_busy() -> bool:
            if following.done() or workers.done():
                return True  # surfaces the failure below
            served = set(load.published.values()) | set(load.answered.values())
            return load.by("node-a") >= 10 and "node-a" in served and sub.acked >= ACK_EVERY

        await wait_for(victim_busy, within=60)
        assert not following.done()
        assert not workers.done()
        acked_by_victim = load.by("node-a")
        victim.kill()
        await workers

        # Clients retried elsewhere and got answers; the victim had answered some.
        assert "node-a" in load.retried_from
        assert acked_by_victim >= 10
        assert len(load.published) == PUBLISHERS * BATCHES_PER_PUBLISHER * BATCH
        assert len(load.answered) == QUERIERS * QUERIES_PER_QUERIER
        assert {"node-a", "node-b", "node-c"} <= set(load.published.values()) | set(
            load.answered.values()
        )

        # Every acknowledged record is there, through a survivor, as published.
        keys = sorted(load.published)
        checker = cluster.client(cluster.node("node-c"), "tax", "CHECK")
        answer = await checker.query(
            "samr.enterprise", keys, fields=["name"], purpose="核对", case_id="CHECK-1"
        )
        assert answer.missing_keys == []
        assert {r.key: r.fields["name"] for r in answer.records} == {k: f"企业{k}" for k in keys}

        # Every answered query is in the log; the log has no gap; the tree, which the
        # surviving nodes' integrator folds entries into after they are acknowledged,
        # comes to cover every one of them.
        rows = await db.fetch("SELECT idx, case_id FROM access_log ORDER BY idx")
        assert [r["idx"] for r in rows] == list(range(len(rows)))

        async def integrated() -> bool:
            return int(await db.fetchval("SELECT size FROM log_state")) >= len(rows)

        await wait_for(integrated)
        logged = {r["case_id"] for r in rows}
        assert set(load.answered) <= logged
        assert "CHECK-1" in logged

        # The relay moved to a survivor, which published everything the victim left.
        async def relay_moved() -> bool:
            holder = await relay_holder(db)
            return holder is not None and holder != victim_session

        async def all_published() -> bool:
            left = await db.fetchval("SELECT count(*) FROM event_outbox WHERE published_at IS NULL")
            return bool(left == 0)

        await wait_for(relay_moved)
        await wait_for(all_published)
        # The dead node's sessions are gone (PostgreSQL saw its connections close).
        assert not await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", victim_session
        )
        total = int(await db.fetchval("SELECT count(*) FROM event_outbox"))
        assert total == 1 + len(load.published)  # the first company, then every batch

        # The subscriber resumed on another node and missed nothing.
        async def caught_up() -> bool:
            if following.done():
                return True  # surfaces the failure below
            return sub.highest == total - 1

        await wait_for(caught_up, within=60)
        assert not following.done()
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)

        assert [s[0] for s in sub.streams[:2]] == ["node-a", "node-b"]
        for _, first_position, acked, highest in sub.streams[1:]:
            # Resumed right after the acknowledged position (or after a later one whose
            # reply was lost), never beyond what it had received.
            assert acked + 1 <= first_position <= highest + 1
        assert len({e.subscription_id for e in sub.events}) == 1
        first_seen: dict[int, Event] = {}
        copies: dict[int, int] = defaultdict(int)
        for event in sub.events:
            kept = first_seen.setdefault(event.position, event)
            assert (event.event_id, event.key, event.version) == (
                kept.event_id,
                kept.key,
                kept.version,
            ), "a re-delivered event differs"
            copies[event.position] += 1
        assert sorted(first_seen) == list(range(total))

    # With the survivors stopped (cleanly), a checkpoint covers the whole log, and the
    # operator's verification passes: no gap, every checkpoint consistent.
    assert settings.key_passphrase is not None
    env = cli_env(
        TONGBAN_DATABASE_URL=shared_url(settings),
        TONGBAN_KEY_PASSPHRASE=settings.key_passphrase.get_secret_value(),
        TONGBAN_NODE_NAME="auditor",
    )
    verified = await atongban(
        "audit", "verify", "--json", "--data-dir", str(settings.data_dir), env=env
    )
    assert verified.code == 0, verified.stdout + verified.stderr
    # Deliveries to the subscriber kept adding entries after ``rows`` was read.
    async with connected(settings) as db:
        final = int(await db.fetchval("SELECT count(*) FROM access_log"))
    assert verified.json()["size"] == final >= len(rows)
