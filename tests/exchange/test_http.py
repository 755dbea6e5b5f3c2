from __future__ import annotations

import contextlib

import aiohttp

from tests.exchange.conftest import bundle_path
from tongban.client import Bundle, ExchangeClient
from tongban.exchange.node import Node
from tongban.exchange.settings import Settings


async def test_healthz_and_metrics(node: Node, settings: Settings) -> None:
    async with ExchangeClient(
        Bundle.load(bundle_path(settings, "samr")), target=f"127.0.0.1:{node.grpc_port}"
    ) as client:
        await client.who_am_i()
    base = f"http://127.0.0.1:{node.http_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200
            assert (await response.json())["status"] == "ok"
        async with http.get(f"{base}/metrics") as response:
            assert response.status == 200
            text = await response.text()
        async with http.get(f"{base}/nothing-here") as response:
            assert response.status == 404
    assert (
        'tongban_grpc_requests_total{code="OK",method="/tongban.v1.NodeService/WhoAmI"} 1.0' in text
    )
    assert "tongban_db_pool_connections" in text


async def test_healthz_reports_an_unreachable_database(node: Node) -> None:
    assert node.db is not None
    node.db.pool.terminate()  # every connection to the database is gone
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{node.http_port}/healthz") as response,
    ):
        assert response.status == 503
        body = await response.json()
    assert body == {
        "status": "unavailable",
        "node": node.settings.node_name,
        "reason": "DATABASE_UNAVAILABLE",
    }


async def test_anomalies_are_exported_as_metrics(node: Node, settings: Settings) -> None:
    from datetime import timedelta

    from tests.conftest import client_for
    from tests.stories.restaurant import OWNER, OWNER_ID, PERSON
    from tongban.client import ExchangeError
    from tongban.signing.clock import FixedClock

    async with client_for(node, "police") as police:
        await police.register_dataset(PERSON, publish=True)
        await police.publish_records("police.person", [(OWNER_ID, OWNER)])
    async with client_for(node, "tax", "SW-1") as tax:
        for i in range(12):  # a burst of denials
            with contextlib.suppress(ExchangeError):
                await tax.query(
                    "police.person", [OWNER_ID], fields=["name"], purpose="p", case_id=f"c{i}"
                )
    assert isinstance(node.clock, FixedClock)
    node.clock.advance(timedelta(seconds=1))
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{node.http_port}/metrics") as response,
    ):
        text = await response.text()
    assert 'tongban_audit_anomalies{kind="denial_burst"} 1.0' in text
    assert 'tongban_audit_anomalies{kind="volume_jump"} 0.0' in text
