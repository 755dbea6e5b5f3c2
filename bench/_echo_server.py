"""The baseline server: bare grpc.aio, no TLS, one unary method that returns its request.

Run as ``python -m bench._echo_server``: it listens on 127.0.0.1 on a free port, prints the
port on stdout, and serves until SIGTERM or SIGINT. The method is registered through a
generic handler with identity (de)serializers, so each message still passes through one
Python callback each way, as protobuf messages do on the node, but costs nothing there.
"""

from __future__ import annotations

import asyncio
import signal

import grpc

__all__ = ["ECHO_METHOD", "identity"]

ECHO_METHOD = "/bench.Echo/Echo"


def identity(payload: bytes) -> bytes:
    return payload


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def _serve() -> None:
    server = grpc.aio.server()
    service, method = ECHO_METHOD.strip("/").split("/")
    handler = grpc.unary_unary_rpc_method_handler(
        _echo, request_deserializer=identity, response_serializer=identity
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, {method: handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(port, flush=True)
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    asyncio.run(_serve())
