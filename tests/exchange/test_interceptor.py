"""The interceptor turns unexpected failures into INTERNAL with an incident id only, and
the database not being there into UNAVAILABLE."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import grpc
import pytest

from tests.conftest import client_for, enrol_demo
from tests.stories.restaurant import COMPANY, COMPANY_USCC, ENTERPRISE
from tongban.client import Bundle, ExchangeClient, ExchangeError
from tongban.exchange.enrolment import bundle_dir
from tongban.exchange.node import Node
from tongban.exchange.server.node_service import NodeService
from tongban.exchange.settings import Settings


async def test_unexpected_error_becomes_internal_without_detail(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: Any, request: Any, context: Any) -> Any:
        raise RuntimeError("secret internal detail: password=hunter2")

    # A service with a bug, behind the real interceptor, auth and TLS.
    monkeypatch.setattr(NodeService, "WhoAmI", broken)
    async with Node(settings) as node:
        assert node.db is not None
        await enrol_demo(settings)
        async with ExchangeClient(
            Bundle.load(bundle_dir(settings, "samr")), target=f"127.0.0.1:{node.grpc_port}"
        ) as client:
            with pytest.raises(ExchangeError) as caught:
                await client.who_am_i()
    error = caught.value
    assert error.code is grpc.StatusCode.INTERNAL
    assert error.reason == "INTERNAL"
    assert "hunter2" not in error.message
    assert "Traceback" not in error.message
    assert error.metadata["incident"] in error.message
    assert (
        node.metrics.rpc_total.labels("/tongban.v1.NodeService/WhoAmI", "INTERNAL")._value.get()
        == 1
    )


async def test_a_database_that_goes_away_is_unavailable_not_internal(
    node: Node, admin_dsn: str
) -> None:
    """PostgreSQL refusing the node's connections (here: the database's connection limit
    at 0, and the node's sessions ended) is UNAVAILABLE / DATABASE_UNAVAILABLE, a call to
    retry, not INTERNAL; once the database takes connections again, calls are served."""
    async with client_for(node, "samr") as samr:
        await samr.register_dataset(ENTERPRISE, publish=True)
        await samr.publish_records("samr.enterprise", [(COMPANY_USCC, COMPANY)])
    assert node.settings.database_url is not None
    name = urlsplit(node.settings.database_url.get_secret_value()).path.lstrip("/")
    admin = await asyncpg.connect(admin_dsn)
    try:
        async with client_for(node, "tax", "TX-1") as tax:

            async def ask() -> int:
                answer = await tax.query(
                    "samr.enterprise",
                    [COMPANY_USCC],
                    fields=["name"],
                    purpose="税务登记",
                    case_id="TX-2026-001",
                )
                return len(answer.records)

            assert await ask() == 1
            await admin.execute(f"ALTER DATABASE {name} CONNECTION LIMIT 0")
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                name,
            )
            for _ in range(3):  # however many of the pool's connections it goes through
                with pytest.raises(ExchangeError) as caught:
                    await ask()
                error = caught.value
                assert error.code is grpc.StatusCode.UNAVAILABLE, error
                assert error.reason == "DATABASE_UNAVAILABLE", error
                assert error.retriable
                assert "retry" in error.message
                assert "Traceback" not in error.message
            # The HTTP side says the same: 503 with a Retry-After, as JSON, not a 500.
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{node.http_port}/status-lists/1") as response,
            ):
                assert response.status == 503
                assert response.headers["Retry-After"].isdigit()
                assert (await response.json())["reason"] == "DATABASE_UNAVAILABLE"
            async with (
                aiohttp.ClientSession(cookies={"tongban_session": "s" * 43}) as http,
                http.get(f"http://127.0.0.1:{node.http_port}/console/") as response,
            ):
                assert response.status == 503  # the session could not be looked up
                assert response.headers["Retry-After"].isdigit()
                page = await response.text()
                assert "暂时无法连接数据库" in page  # the console speaks Chinese first
                assert "DATABASE_UNAVAILABLE" in page
            await admin.execute(f"ALTER DATABASE {name} CONNECTION LIMIT -1")
            assert await ask() == 1
    finally:
        await admin.execute(f"ALTER DATABASE {name} CONNECTION LIMIT -1")
        await admin.close()
