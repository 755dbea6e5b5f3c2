"""Two ``tongban serve`` processes on one PostgreSQL and one Kafka-protocol broker behave as
one exchange: what is written through one node is read through the other at once; a
subscriber on one node receives what is published through the other; grants, their
revocation and department suspensions take effect on both nodes at once (each node's
caches are dropped by PostgreSQL NOTIFY, which reaches every node's listener)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.cli_helpers import atongban, cli_env
from tests.cluster.cluster import Cluster, shared_url
from tests.cluster.conftest import enrol
from tests.conftest import kafka_settings
from tests.kafka_broker import TansuBroker
from tests.stories.restaurant import (
    CASE_ID,
    COMPANY,
    COMPANY_USCC,
    ENTERPRISE,
    OWNER,
    OWNER_ID,
    PERSON,
    PURPOSE,
)
from tongban.client import Event, ExchangeError
from tongban.exchange.settings import Settings

pytestmark = pytest.mark.slow


async def _take(stream: AsyncIterator[Event], n: int, within: float = 30) -> list[Event]:
    got: list[Event] = []
    async with asyncio.timeout(within):
        async for event in stream:
            got.append(event)
            if len(got) == n:
                break
    return got


async def test_two_nodes_are_one_exchange(
    settings: Settings, kafka_broker: TansuBroker, tmp_path: Path
) -> None:
    settings = kafka_settings(settings, kafka_broker.bootstrap)
    await enrol(settings)
    async with Cluster(settings, tmp_path / "logs") as cluster:
        a, b = await cluster.start(["node-a", "node-b"])
        samr_a = cluster.client(a, "samr", "SC-1")
        tax_b = cluster.client(b, "tax", "TX-1")

        # The catalogue entry registered through A is there through B.
        await samr_a.register_dataset(ENTERPRISE, publish=True)
        assert [d.spec.code for d in await tax_b.list_datasets(keyword="市场主体")] == [
            "samr.enterprise"
        ]

        # A subscriber on B, before anything is published (fed from Kafka in this mode).
        stream = tax_b.subscribe("samr.enterprise", fields=["name"], purpose="登记信息同步")
        first = asyncio.create_task(_take(stream, 1))
        await asyncio.sleep(0.5)  # let the stream reach its Kafka tail (not asserted on)

        # Published through A, queryable through B at once: no wait, no retry.
        await samr_a.publish_records("samr.enterprise", [(COMPANY_USCC, COMPANY)])
        answer = await tax_b.query(
            "samr.enterprise", [COMPANY_USCC], fields=["name"], purpose="税务登记", case_id="SW-1"
        )
        assert answer.by_key()[COMPANY_USCC].fields == {"name": COMPANY["name"]}
        assert answer.by_key()[COMPANY_USCC].version == 1

        # ... and an update through A is the current version through B at once.
        renamed = dict(COMPANY, name="杭州味道餐饮集团有限公司")
        await samr_a.publish_records("samr.enterprise", [(COMPANY_USCC, renamed)])
        answer = await tax_b.query(
            "samr.enterprise", [COMPANY_USCC], fields=["name"], purpose="税务登记", case_id="SW-2"
        )
        assert answer.by_key()[COMPANY_USCC].fields == {"name": renamed["name"]}

        # The subscriber on B received both events published through A, in order.
        events = [*await first, *await _take(stream, 1)]
        assert [(e.position, e.version, e.fields["name"]) for e in events] == [
            (0, 1, COMPANY["name"]),
            (1, 2, renamed["name"]),
        ]
        assert events[0].subscription_id == events[1].subscription_id
        # Acknowledged through A, the position is the subscription's on every node.
        assert await cluster.client(a, "tax", "TX-1").acknowledge(events[1].subscription_id, 1)
        subs = await tax_b.list_subscriptions()
        assert [(s.id, s.acked_position) for s in subs] == [(events[1].subscription_id, 1)]


async def test_grants_and_suspensions_take_effect_on_every_node(cluster: Cluster) -> None:
    a, b = await cluster.start(["node-a", "node-b"])
    police_a = cluster.client(a, "police", "P-1")
    approval_b = cluster.client(b, "approval", "SP-7")
    await police_a.register_dataset(PERSON, publish=True)
    await police_a.publish_records("police.person", [(OWNER_ID, OWNER)])

    async def ask() -> None:
        await approval_b.query(
            "police.person", [OWNER_ID], fields=["name"], purpose=PURPOSE, case_id=CASE_ID
        )

    # No grant: refused on B (and B now caches "no grant" for approval on police.person).
    with pytest.raises(ExchangeError) as refused:
        await ask()
    assert refused.value.reason == "GRANT_REQUIRED"

    for round_ in range(3):  # each round: approved via A, allowed on B; revoked via A, refused
        grant = await approval_b.request_grant(
            "police.person",
            ["name"],
            PURPOSE,
            "《食品经营许可和备案管理办法》第十二条",
            datetime.now(UTC) + timedelta(days=30),
        )
        await police_a.decide_grant(grant.id, approve=True)
        await ask()  # at once on B: B's cached "no grant" was dropped by the NOTIFY
        await ask()  # served from B's cache now
        await police_a.revoke_grant(grant.id, f"办结 {round_}")
        # At once on B, whether or not A's NOTIFY has reached B's cache yet: a decision
        # that rests on a grant is confirmed against the grant's committed row.
        with pytest.raises(ExchangeError) as revoked:
            await ask()
        assert revoked.value.reason == "GRANT_REQUIRED"
        assert "revoked" in revoked.value.message

    # A department suspended by the operator (any host, straight into the database) is
    # refused by every node at once, and restored on every node at once.
    assert cluster.settings.key_passphrase is not None
    env = cli_env(
        TONGBAN_DATABASE_URL=shared_url(cluster.settings),
        TONGBAN_KEY_PASSPHRASE=cluster.settings.key_passphrase.get_secret_value(),
    )
    tax_a, tax_b = cluster.client(a, "tax"), cluster.client(b, "tax")
    assert (await tax_a.who_am_i()).department == "tax"  # cached on both nodes
    assert (await tax_b.who_am_i()).department == "tax"
    data_dir = str(cluster.settings.data_dir)
    suspended = await atongban("dept", "suspend", "tax", "--data-dir", data_dir, env=env)
    assert suspended.code == 0, suspended.stderr
    for client in (tax_a, tax_b):
        with pytest.raises(ExchangeError) as off:
            await client.who_am_i()
        assert off.value.reason == "DEPARTMENT_SUSPENDED"
    restored = await atongban("dept", "activate", "tax", "--data-dir", data_dir, env=env)
    assert restored.code == 0, restored.stderr
    assert (await tax_a.who_am_i()).node == "node-a"
    assert (await tax_b.who_am_i()).node == "node-b"
