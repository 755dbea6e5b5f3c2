"""Connections that hold nothing are closed: a client's idle connection after
``grpc_idle_seconds`` (and the client connects again by itself), a silent new connection
after ``grpc_handshake_seconds``, an HTTP connection idle or with unfinished headers
after ``http_idle_seconds``; and ``serve`` raises its open-files limit."""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import grpc
import pytest_asyncio

from tests.conftest import client_for, enrol_demo, raw_channel
from tongban.exchange.node import Node
from tongban.exchange.settings import Settings
from tongban.signing.clock import FixedClock, SystemClock
from tongban.v1 import node_pb2, node_pb2_grpc


@pytest_asyncio.fixture
async def impatient_node(settings: Settings) -> AsyncIterator[Node]:
    """A node that closes a connection idle for 1 s, or silent for 1 s after it opened."""
    quick = settings.model_copy(
        update={"grpc_idle_seconds": 1.0, "grpc_handshake_seconds": 1.0, "http_idle_seconds": 1.0}
    )
    async with Node(quick, clock=FixedClock(SystemClock().now())) as running:
        await enrol_demo(quick)
        yield running


async def test_an_idle_connection_is_closed_and_the_client_connects_again(
    impatient_node: Node,
) -> None:
    async with raw_channel(impatient_node, "tax") as channel:
        stub = node_pb2_grpc.NodeServiceStub(channel)
        metadata = (("x-tongban-officer", "TX-1"),)
        first = await stub.WhoAmI(node_pb2.WhoAmIRequest(), metadata=metadata, timeout=10)
        assert first.department.code == "tax"
        assert channel.get_state() is grpc.ChannelConnectivity.READY
        # The node sends GOAWAY once nothing has been in progress for a second; the
        # channel falls back to IDLE (it would stay READY for ever otherwise).
        deadline = time.monotonic() + 15
        while channel.get_state() is grpc.ChannelConnectivity.READY:
            assert time.monotonic() < deadline, "the idle connection was never closed"
            await asyncio.sleep(0.1)
        again = await stub.WhoAmI(node_pb2.WhoAmIRequest(), metadata=metadata, timeout=10)
        assert again.department.code == "tax"
    # Our own client notices nothing either: its call after the close goes through.
    async with client_for(impatient_node, "tax") as tax:
        assert (await tax.who_am_i()).department == "tax"
        await asyncio.sleep(2.5)
        assert (await tax.who_am_i()).department == "tax"


async def test_a_connection_that_never_says_a_word_is_closed(impatient_node: Node) -> None:
    loop = asyncio.get_running_loop()
    # The socket's own timeout (15 s) raises if the node holds the connection (gRPC's
    # default would hold it 120 s).
    with socket.create_connection(("127.0.0.1", impatient_node.grpc_port), timeout=15) as sock:
        # No TLS ClientHello: the node waits for one, then gives up and closes.
        received = await loop.run_in_executor(None, sock.recv, 4096)
    assert received == b""


async def test_an_http_connection_silent_or_half_asked_is_closed(impatient_node: Node) -> None:
    loop = asyncio.get_running_loop()
    for sent in (b"", b"GET /healthz HTTP/1.1\r\nHost: node\r\n"):  # no blank line
        # As above, the socket's timeout (15 s) raises if the node holds the connection.
        with socket.create_connection(("127.0.0.1", impatient_node.http_port), timeout=15) as sock:
            sock.sendall(sent)
            received = await loop.run_in_executor(None, sock.recv, 4096)
        assert received == b"", sent
    # A whole request is answered, and the connection kept for the next one.
    with socket.create_connection(("127.0.0.1", impatient_node.http_port), timeout=15) as sock:
        for _ in range(2):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n")
            answer = await loop.run_in_executor(None, sock.recv, 4096)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:80]


def test_serve_raises_its_open_files_limit_towards_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    script = (
        "import json, resource\n"
        "from tongban.cli.commands import raise_open_files_limit\n"
        "_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "raised = raise_open_files_limit(1000)\n"
        "print(json.dumps([raised, resource.getrlimit(resource.RLIMIT_NOFILE)[0],"
        " raise_open_files_limit(500)]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    raised, now, lower = json.loads(done.stdout)
    expected = 1000 if hard == resource.RLIM_INFINITY else min(1000, hard)
    assert raised == now == expected
    assert lower == expected  # never lowered
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)  # only the child's
