"""A peer's node is held to the node's default call limits, in a bucket of its own: a peer
calling too fast is refused RATE_LIMITED with a retry delay, and the exchange's own
departments keep being served."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc

from tests.conftest import client_for
from tests.exchange.federation.conftest import county_node, link
from tests.exchange.federation.test_peer_fuzz import _peer_channel
from tongban.exchange.node import Node
from tongban.v1 import federation_pb2, federation_pb2_grpc


async def _background_calls_done(province: Node) -> None:
    """Once it has the province as a peer, the county pulls the province's catalogue
    (``PeerService.ListEntries``, as peer county-a): a call out of the same bucket as
    the burst below, which now and then landed in it and left the burst 2 tokens. Wait
    for that pull (it is refused at the handshake if it came before the province knew
    the county, and then takes no token), then for a second's worth of tokens."""

    def pulled() -> bool:
        return any(
            sample.labels.get("method", "").startswith("/tongban.v1.PeerService/")
            for metric in province.metrics.rpc_total.collect()
            for sample in metric.samples
        )

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(3):
            while not pulled():
                await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)


async def test_a_fast_peer_is_limited_and_departments_are_not(
    node: Node, tmp_path: Path, county_database_url: str
) -> None:
    # The province here runs with a low default: 3 calls started per second.
    async with county_node(tmp_path, county_database_url, dept_calls_per_second=3.0) as province:
        await link(province, node)
        await _background_calls_done(province)
        outcomes: list[str] = []
        async with _peer_channel(node, province) as channel:
            stub = federation_pb2_grpc.PeerServiceStub(channel)
            for _ in range(12):
                try:
                    await stub.Hello(federation_pb2.HelloRequest(), timeout=10)
                    outcomes.append("OK")
                except grpc.aio.AioRpcError as e:
                    outcomes.append(f"{e.code().name}: {e.details()}")
        assert outcomes[:3] == ["OK"] * 3  # a second's worth of burst
        refused = [o for o in outcomes if o != "OK"]
        assert refused, outcomes
        assert all(o.startswith("RESOURCE_EXHAUSTED: peer:county-a ") for o in refused), refused
        # The province's own departments have buckets of their own.
        async with client_for(province, "samr", "S-1") as samr:
            await samr.list_datasets()
