"""Subscriptions across exchanges (docs/federation.md, "Subscriptions across exchanges"):
a county department subscribes to a province dataset through its node; the province
decides for ``county-a/approval``, keeps its acknowledged position and logs each
delivery; the county logs each batch it passes on. The subscription survives a restart
of the province: it fails fast while the province is down, and resumes after the
acknowledged position once it is back."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest

from tests.conftest import client_for
from tests.exchange.federation.test_forwarding import OFFICER, _share
from tests.stories.restaurant import COMPANY, COMPANY_USCC, PURPOSE
from tongban.client import ExchangeClient, ExchangeError
from tongban.exchange.node import Node
from tongban.exchange.settings import load_settings
from tongban.signing.clock import FixedClock

DATASET = "province:samr.enterprise"
SECOND_USCC = "91330106MA2B3C4D5D"


async def _first_event(client: ExchangeClient) -> tuple[str, int, str, dict[str, object]]:
    async for event in client.subscribe(DATASET, fields=["name"], purpose=PURPOSE):
        return event.subscription_id, event.position, event.key, event.fields
    raise AssertionError("the stream ended without an event")


async def _first_event_once_back(client: ExchangeClient) -> tuple[str, int, str]:
    """``_first_event`` as a subscriber retries it: a channel that saw the peer down waits
    out gRPC's reconnect backoff before it tries the address again (bounded: 30 s)."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        try:
            subscription, position, key, _ = await _first_event(client)
        except ExchangeError as e:
            if e.reason != "PEER_UNAVAILABLE" or asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)
            continue
        return subscription, position, key


async def _log(node: Node, action: str) -> list[asyncpg.Record]:
    assert node.db is not None
    return await node.db.pool.fetch(
        "SELECT caller, action, dataset, decision, reason FROM access_log WHERE action = $1"
        " ORDER BY idx",
        action,
    )


async def test_a_county_subscription_to_a_province_dataset_survives_its_restart(
    province: Node, county: Node
) -> None:
    await _share(province, county)
    async with client_for(county, "approval", OFFICER) as approval:
        subscription, position, key, fields = await _first_event(approval)
        assert subscription.startswith("province:")
        assert (position, key, fields) == (0, COMPANY_USCC, {"name": COMPANY["name"]})
        assert await approval.acknowledge(subscription, 0) == 0

    # Both sides logged the delivery: the province under the remote identity.
    delivered = await _log(province, "event")
    assert [(r["caller"], r["dataset"]) for r in delivered] == [
        ("county-a/approval", "samr.enterprise")
    ]
    received = await _log(county, "event.receipt")
    assert [(r["caller"], r["dataset"], r["reason"]) for r in received] == [
        ("approval", DATASET, "peer:province")
    ]

    # The province restarts on the same address; meanwhile the county fails fast.
    port = province.grpc_port
    await province.stop(grace=0)
    async with client_for(county, "approval", OFFICER) as approval:
        with pytest.raises(ExchangeError) as down:
            await _first_event(approval)
        assert (down.value.code, down.value.reason) == (
            grpc.StatusCode.UNAVAILABLE, "PEER_UNAVAILABLE",
        )  # fmt: skip
    settings = province.settings
    assert settings.database_url is not None
    again = load_settings(
        data_dir=settings.data_dir,
        database_url=settings.database_url.get_secret_value(),
        key_passphrase="test passphrase",
        grpc_listen=f"127.0.0.1:{port}",
        http_listen="127.0.0.1:0",
    )
    async with Node(again, clock=FixedClock(province.clock.now())) as restarted:
        async with client_for(restarted, "samr") as samr:
            second = {**COMPANY, "uscc": SECOND_USCC, "name": "杭州另一家餐饮有限公司"}
            await samr.publish_records("samr.enterprise", [(SECOND_USCC, second)])
        # Resumed after the acknowledged position: the first event is the new one.
        async with client_for(county, "approval", OFFICER) as approval:
            subscription_again, position, key = await _first_event_once_back(approval)
        assert subscription_again == subscription
        assert (position, key) == (1, SECOND_USCC)
