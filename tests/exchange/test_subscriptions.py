"""Subscriptions as a department and an operator meet them: lag in ``tongban subscription
list`` and in /metrics, and bad requests answered with a clear status (both modes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.cli_helpers import atongban, cli_env
from tests.conftest import client_for
from tests.stories.restaurant import COMPANY, COMPANY_USCC, ENTERPRISE
from tongban.client import Event, ExchangeError
from tongban.exchange.enrolment import bundle_dir
from tongban.exchange.node import Node
from tongban.v1 import catalogue_pb2


async def _first(stream: AsyncIterator[Event]) -> Event:
    async with asyncio.timeout(15):
        async for event in stream:
            return event
    raise AssertionError("the stream ended without an event")


async def test_lag_in_the_cli_and_metrics(node: Node) -> None:
    async with client_for(node, "samr", "SC-1") as samr:
        await samr.register_dataset(ENTERPRISE, publish=True)
        await samr.publish_records("samr.enterprise", [(COMPANY_USCC, COMPANY)])
        moved = dict(COMPANY, address="浙江省杭州市拱墅区湖墅南路9号")
        await samr.publish_records("samr.enterprise", [(COMPANY_USCC, moved)])
    async with client_for(node, "tax", "SW-1") as tax:
        first = await _first(tax.subscribe("samr.enterprise", fields=["name"], purpose="税务登记"))
        await tax.acknowledge(first.subscription_id, first.position)

    mine = await atongban(
        "subscription",
        "list",
        "--as",
        str(bundle_dir(node.settings, "tax")),
        "--endpoint",
        f"127.0.0.1:{node.grpc_port}",
        "--json",
    )
    assert mine.code == 0, mine.stderr
    [row] = mine.json()["subscriptions"]
    assert (row["consumer"], row["dataset"], row["acked_position"], row["lag_events"]) == (
        "tax",
        "samr.enterprise",
        0,
        1,
    )
    assert row["lag_seconds"] >= 0

    assert node.settings.database_url is not None
    every = await atongban(
        "subscription",
        "list",
        "--data-dir",
        str(node.settings.data_dir),
        env=cli_env(TONGBAN_DATABASE_URL=node.settings.database_url.get_secret_value()),
    )
    assert every.code == 0, every.stderr
    assert "tax" in every.stdout
    assert "lag 1 events" in every.stdout

    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{node.http_port}/metrics") as response,
    ):
        text = await response.text()
    lag = [
        line
        for line in text.splitlines()
        if line.startswith("tongban_subscription_lag_events{") and 'consumer="tax"' in line
    ]
    assert len(lag) == 1
    assert lag[0].endswith(" 1.0")
    assert "subscription=" not in text  # no per-subscription series on /metrics


async def test_bad_subscriptions_get_a_clear_status(events_node: Node) -> None:
    node = events_node
    async with client_for(node, "samr", "SC-1") as samr:
        await samr.register_dataset(ENTERPRISE, publish=True)
        await samr.publish_records("samr.enterprise", [(COMPANY_USCC, COMPANY)])
        secret = catalogue_pb2.DatasetSpec()
        secret.CopyFrom(ENTERPRISE)
        secret.code = "samr.sanctions"
        secret.share_class = catalogue_pb2.SHARE_CLASS_NOT_SHARED
        del secret.personal_bases[:]
        secret.legal_basis.law = "《中华人民共和国保守国家秘密法》"
        secret.legal_basis.article = "第十三条"
        await samr.register_dataset(secret, publish=True)

    async with client_for(node, "tax", "SW-1") as tax:
        cases = {
            "no such dataset": (
                tax.subscribe("samr.nothing", fields=["name"], purpose="税务登记"),
                "DATASET_NOT_FOUND",
            ),
            "not shared": (
                tax.subscribe("samr.sanctions", fields=["name"], purpose="税务登记"),
                "NOT_SHARED",
            ),
            "a field that does not exist": (
                tax.subscribe("samr.enterprise", fields=["salary"], purpose="税务登记"),
                "UNKNOWN_FIELD",
            ),
            "beyond the end": (
                tax.subscribe(
                    "samr.enterprise", fields=["name"], purpose="税务登记", after_position=5
                ),
                "POSITION_OUT_OF_RANGE",
            ),
            "before the start": (
                tax.subscribe(
                    "samr.enterprise", fields=["name"], purpose="税务登记", after_position=-2
                ),
                "POSITION_OUT_OF_RANGE",
            ),
        }
        reasons = {}
        for name, (stream, _) in cases.items():
            with pytest.raises(ExchangeError) as refused:
                await _first(stream)
            reasons[name] = refused.value.reason
            assert refused.value.message  # one sentence a person can act on
        assert reasons == {name: reason for name, (_, reason) in cases.items()}

        event = await _first(tax.subscribe("samr.enterprise", fields=["name"], purpose="税务登记"))
        for subscription_id, position in (
            ("not-a-uuid", 0),
            ("00000000-0000-0000-0000-000000000000", 0),
            (event.subscription_id, 7),
        ):
            with pytest.raises(ExchangeError) as bad_ack:
                await tax.acknowledge(subscription_id, position)
            assert bad_ack.value.reason == "INVALID_ARGUMENT"
        # Someone else's subscription cannot be acknowledged either.
        async with client_for(node, "hrss", "RS-1") as hrss:
            with pytest.raises(ExchangeError) as foreign:
                await hrss.acknowledge(event.subscription_id, 0)
            assert foreign.value.reason == "INVALID_ARGUMENT"
        # And the node keeps serving.
        again = await _first(tax.subscribe("samr.enterprise", fields=["name"], purpose="税务登记"))
        assert again.event_id == event.event_id
