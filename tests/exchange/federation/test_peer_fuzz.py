"""Garbage from a peer never escapes either: every PeerService method, called with the
county's real node certificate (a configured, active peer of the province), fed the same
random and corrupt messages as the department fuzz test, answers with a deliberate status.

A compromised peer is the attacker here: it holds a certificate the province trusts, so
its requests pass the handshake and reach the peer service itself."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict

import grpc
import pytest

from tests.conftest import raw_channel
from tests.exchange.federation.conftest import link
from tests.exchange.test_grpc_fuzz import (
    KINDS,
    Method,
    Outcome,
    discover_methods,
    fuzz_method,
    invoke,
)
from tongban.exchange.datadir import ca_certificate_pem, load_node_credentials
from tongban.exchange.node import Node

PEER_SERVICE = "/tongban.v1.PeerService/"


def _peer_channel(caller: Node, target: Node) -> grpc.aio.Channel:
    own = load_node_credentials(caller.settings)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_certificate_pem(target.settings),
        private_key=own.key_pem,
        certificate_chain=own.cert_chain_pem,
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{target.grpc_port}", credentials)


@pytest.mark.timeout(180)
async def test_garbage_from_a_peer_never_escapes(province: Node, county: Node) -> None:
    await link(province, county)
    department = raw_channel(province, "samr")
    peer = _peer_channel(county, province)
    loop = asyncio.get_running_loop()
    codes: dict[str, Counter[str]] = defaultdict(Counter)
    plausible = {
        "dataset": ("samr.enterprise", "province:samr.enterprise", "x"),
        "caller": ("approval", "county-a/approval"),
        "purpose": ("核查",),
        "case_id": ("C-1",),
        "peer": ("county-a", "province", "nobody"),
        "keys": ("91110000100000000A",),
    }

    def send(_: str, method: Method, request: bytes | list[bytes], officer: str | None) -> Outcome:
        future = asyncio.run_coroutine_threadsafe(invoke(peer, method, request, officer), loop)
        return future.result(timeout=30)

    def seen(method: Method, kind: str, outcome: Outcome) -> None:
        codes[method.path][outcome.code + (f"/{outcome.reason}" if outcome.reason else "")] += 1

    try:
        methods = [m for m in await discover_methods(department) if m.path.startswith(PEER_SERVICE)]
        assert methods, "reflection lists no PeerService method"

        def run_all() -> list[str]:
            failures = []
            for method in methods:
                started = time.perf_counter()
                for kind in KINDS:
                    failure = fuzz_method(method, kind, plausible, send, seen)
                    if failure is not None:
                        failures.append(failure)
                print(f"  {method.path}: {time.perf_counter() - started:.1f} s")
            return failures

        failures = await asyncio.to_thread(run_all)
    finally:
        await department.close(None)
        await peer.close(None)
    for path in sorted(codes):
        print(f"  {path}: " + ", ".join(f"{c}: {n}" for c, n in sorted(codes[path].items())))
    assert not failures, "garbage from a peer escaped:\n" + "\n".join(failures)
