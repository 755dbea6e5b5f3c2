"""The interceptor turns unexpected failures into INTERNAL with an incident id only."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from tests.conftest import enrol_demo
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
