"""The one way the benchmark calls the node: as a department, over mutual TLS.

``Department`` holds a department's bundle and channel credentials (made once and shared,
as a real client would) and opens either a raw ``grpc.aio`` channel, for the phases that
call stubs directly, or a typed ``ExchangeClient``; both present the same certificate,
server name and officer id. ``admitted`` retries a call the node's limits refused, as a
well-behaved client does.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from bench._config import Config
from bench._servers import NodeServer
from tongban.client import Bundle, ExchangeClient, ExchangeError
from tongban.client.errors import from_rpc_error

__all__ = ["FRESH_CONNECTION", "Department", "admitted", "exchange_error"]

T = TypeVar("T")

_REFUSAL_RETRY = 0.1
"""Seconds to wait after a refusal that names no delay (the node always names one)."""

# A channel with its own subchannel pool opens its own connection; channels sharing the
# global pool (the default) to the same target may share one and skip the handshake.
FRESH_CONNECTION = ("grpc.use_local_subchannel_pool", 1)


@dataclass(frozen=True)
class Department:
    """Where and how to call the node as one department and officer."""

    code: str
    target: str
    bundle: Bundle
    credentials: grpc.ChannelCredentials
    officer_id: str
    timeout: float

    @classmethod
    def of(cls, node: NodeServer, code: str, config: Config) -> Department:
        """Load ``code``'s bundle from the node's bundles dir."""
        return cls.load(
            node.target, node.bundles, code, config.officer_id, config.call_timeout_seconds
        )

    @classmethod
    def load(
        cls, target: str, bundles: Path, code: str, officer_id: str, timeout: float
    ) -> Department:
        """Load ``code``'s bundle from ``bundles``, to call the node at ``target``."""
        bundle = Bundle.load(bundles / code)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=bundle.ca_pem,
            private_key=bundle.tls_key_pem,
            certificate_chain=bundle.tls_cert_pem,
        )
        return cls(code, target, bundle, credentials, officer_id, timeout)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """What ``ExchangeClient`` sends with every call; raw stubs send the same."""
        return (("x-tongban-officer", self.officer_id),)

    def channel(self, *options: tuple[str, Any]) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(
            self.target,
            self.credentials,
            options=[("grpc.ssl_target_name_override", self.bundle.server_name), *options],
        )

    def client(self) -> ExchangeClient:
        """A typed client on its own channel (one HTTP/2 connection); close it after use."""
        return ExchangeClient(
            self.bundle, target=self.target, officer_id=self.officer_id, timeout=self.timeout
        )


def exchange_error(error: grpc.aio.AioRpcError | ExchangeError) -> ExchangeError:
    """A raw stub's error as the typed client raises it (the node's reason, RetryInfo)."""
    return error if isinstance(error, ExchangeError) else from_rpc_error(error)


async def admitted(call: Callable[[], Awaitable[T]], refused: Counter[str]) -> T:
    """Await ``call()``; while the node refuses it for a department limit
    (RESOURCE_EXHAUSTED), count the refusal's reason in ``refused``, wait the delay the
    node gave and call again. Return the answer; raise any other error as ExchangeError."""
    while True:
        try:
            return await call()
        except (grpc.aio.AioRpcError, ExchangeError) as e:
            error = exchange_error(e)
            if error.code is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise error from None
        refused[error.reason] += 1
        await asyncio.sleep(error.retry_after or _REFUSAL_RETRY)
