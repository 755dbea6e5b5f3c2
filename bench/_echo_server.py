"""The baseline server: bare grpc.aio, one unary method that returns its request.

Run as ``python -m bench._echo_server [--tls DIR]``: it listens on 127.0.0.1 on a free
port, prints the port on stdout, and serves until SIGTERM or SIGINT. The method is
registered through a generic handler with identity (de)serializers, so each message still
passes through one Python callback each way, as protobuf messages do on the node, but
costs nothing there.

Without ``--tls`` it serves plaintext (the baseline every figure is read against). With
``--tls DIR`` it serves mutual TLS as the node does, with ``DIR``'s ``server.key``,
``server.pem`` and ``ca.pem`` (``bench._tls.throwaway_pki``), requiring a client
certificate: the same echo with grpc's TLS and nothing of the node's, so the price of TLS
itself is measured apart from the node's own work.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import grpc

__all__ = ["ECHO_METHOD", "identity"]

ECHO_METHOD = "/bench.Echo/Echo"


def identity(payload: bytes) -> bytes:
    return payload


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def _serve(tls: Path | None) -> None:
    server = grpc.aio.server()
    service, method = ECHO_METHOD.strip("/").split("/")
    handler = grpc.unary_unary_rpc_method_handler(
        _echo, request_deserializer=identity, response_serializer=identity
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, {method: handler}),)
    )
    if tls is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        credentials = grpc.ssl_server_credentials(
            [((tls / "server.key").read_bytes(), (tls / "server.pem").read_bytes())],
            root_certificates=(tls / "ca.pem").read_bytes(),
            require_client_auth=True,
        )
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(port, flush=True)
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench._echo_server")
    parser.add_argument("--tls", type=Path, help="serve mutual TLS with this directory's keys")
    asyncio.run(_serve(parser.parse_args().tls))
