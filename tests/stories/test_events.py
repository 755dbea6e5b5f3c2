"""Step 2 of DESIGN.md, in both modes (PostgreSQL alone, and through Kafka): tax, social
security and public security receive the new company by subscription — nobody types it
again — with only the fields each subscribed to, at least once, resumable, and every
delivery in the access log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from functools import partial

import pytest

from tests.conftest import client_for
from tests.stories.restaurant import COMPANY, COMPANY_USCC, ENTERPRISE, OWNER, OWNER_ID, PERSON
from tongban.cli.story_data import grant_representative_ids
from tongban.client import Event, ExchangeClient, ExchangeError
from tongban.exchange.audit.log import SubjectHasher
from tongban.exchange.datadir import load_log_key
from tongban.exchange.node import Node


async def _take(stream: AsyncIterator[Event], n: int) -> list[Event]:
    got: list[Event] = []
    async with asyncio.timeout(10):
        async for event in stream:
            got.append(event)
            if len(got) == n:
                break
    return got


async def test_step_2_departments_receive_the_company_without_reentry(events_node: Node) -> None:
    node = events_node
    async with client_for(node, "samr", "SC-1") as samr:
        await samr.register_dataset(ENTERPRISE, publish=True)
    await grant_representative_ids(partial(client_for, node), node.clock.now())
    wanted = {
        "tax": ["name", "address", "legal_representative"],
        "hrss": ["name", "address"],
        "police": ["name", "legal_representative", "legal_representative_id"],
    }
    # The citizen id is personal: police receive it under their grant's purpose.
    purposes = {"police": "印章刻制备案"}
    clients: dict[str, ExchangeClient] = {}
    streams: dict[str, AsyncIterator[Event]] = {}
    try:
        for code, fields in wanted.items():
            clients[code] = client_for(node, code, f"{code}-01")
            streams[code] = clients[code].subscribe(
                "samr.enterprise", fields=fields, purpose=purposes.get(code, "登记信息同步")
            )
        # Subscribers listen first; then samr registers the company once.
        readers = {code: asyncio.create_task(_take(streams[code], 1)) for code in wanted}
        await asyncio.sleep(0.3)
        async with client_for(node, "samr", "SC-1") as samr:
            await samr.publish_records("samr.enterprise", [(COMPANY_USCC, COMPANY)])
        received = {code: (await task)[0] for code, task in readers.items()}
        for code, event in received.items():
            assert event.key == COMPANY_USCC
            assert event.op == "upsert"
            assert set(event.fields) == set(wanted[code])  # only what was subscribed
            assert event.fields["name"] == COMPANY["name"]
        ids = {event.event_id for event in received.values()}
        assert len(ids) == 1  # one change, one event id, whoever receives it

        # tax applies it and acknowledges; hrss does not (say it crashed before applying).
        await clients["tax"].acknowledge(received["tax"].subscription_id, received["tax"].position)
        async with client_for(node, "samr", "SC-1") as samr:
            moved = dict(COMPANY, address="浙江省杭州市拱墅区湖墅南路9号")
            await samr.publish_records("samr.enterprise", [(COMPANY_USCC, moved)])
        update = (await _take(streams["tax"], 1))[0]
        assert update.fields["address"] == moved["address"]
        assert update.version == 2
    finally:
        for client in clients.values():
            await client.close()

    # hrss resubscribes: the unacknowledged event comes again, with the same id.
    async with client_for(node, "hrss") as hrss:
        again = await _take(
            hrss.subscribe("samr.enterprise", fields=wanted["hrss"], purpose="登记信息同步"), 2
        )
        assert again[0].event_id == received["hrss"].event_id
        assert [e.version for e in again] == [1, 2]
        subscriptions = await hrss.list_subscriptions()
        assert [(s.dataset, s.lag_events) for s in subscriptions] == [("samr.enterprise", 2)]
        await hrss.acknowledge(again[1].subscription_id, again[1].position)
        assert (await hrss.list_subscriptions())[0].lag_events == 0
        with pytest.raises(ExchangeError) as beyond:
            await hrss.acknowledge(again[1].subscription_id, 99)
        assert beyond.value.reason == "INVALID_ARGUMENT"
        with pytest.raises(ExchangeError) as out_of_range:
            await _take(
                hrss.subscribe(
                    "samr.enterprise", fields=["name"], purpose="登记信息同步", after_position=50
                ),
                1,
            )
        assert out_of_range.value.reason == "POSITION_OUT_OF_RANGE"

    # Every delivery is in the access log: the company's history shows tax received it.
    assert node.db is not None
    hasher = SubjectHasher(load_log_key(node.settings))
    rows = await node.db.pool.fetch(
        "SELECT caller, action FROM access_log WHERE subject_hmac = $1 AND action = 'event'",
        hasher(COMPANY_USCC),
    )
    assert {(r["caller"], r["action"]) for r in rows} == {
        ("tax", "event"),
        ("hrss", "event"),
        ("police", "event"),
    }


async def test_conditional_data_flows_only_within_a_live_grant(events_node: Node) -> None:
    node = events_node
    async with client_for(node, "police") as police:
        await police.register_dataset(PERSON, publish=True)
        await police.publish_records("police.person", [(OWNER_ID, OWNER)])
    async with client_for(node, "tax") as tax:
        with pytest.raises(ExchangeError) as refused:
            await _take(tax.subscribe("police.person", fields=["name"], purpose="税务稽查"), 1)
        assert refused.value.reason == "GRANT_REQUIRED"
    async with client_for(node, "approval") as approval:
        grant = await approval.request_grant(
            "police.person", ["name"], "审批核验", "依法", node.clock.now() + timedelta(days=30)
        )
        async with client_for(node, "police") as police:
            await police.decide_grant(grant.id, approve=True)
        stream = approval.subscribe("police.person", fields=["name"], purpose="审批核验")
        first = await _take(stream, 1)
        assert first[0].fields == {"name": "王晓明"}
        # The grant is revoked: the next delivery is refused and the stream ends.
        async with client_for(node, "police") as police:
            await police.revoke_grant(grant.id, "办结")
            await police.publish_records("police.person", [(OWNER_ID, dict(OWNER, name="王小明"))])
        with pytest.raises(ExchangeError) as stopped:
            await _take(stream, 1)
        assert stopped.value.reason == "GRANT_REQUIRED"
