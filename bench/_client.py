"""The one way the benchmark calls the node: as a department, over mutual TLS.

``Department`` holds a department's bundle and channel credentials (made once and shared,
as a real client would) and opens either a raw ``grpc.aio`` channel, for the phases that
call stubs directly, or a typed ``ExchangeClient``; both present the same certificate,
server name and officer id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc

from bench._config import Config
from bench._servers import NodeServer
from tongban.client import Bundle, ExchangeClient

__all__ = ["FRESH_CONNECTION", "Department"]

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
        bundle = Bundle.load(node.bundles / code)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=bundle.ca_pem,
            private_key=bundle.tls_key_pem,
            certificate_chain=bundle.tls_cert_pem,
        )
        return cls(
            code, node.target, bundle, credentials, config.officer_id, config.call_timeout_seconds
        )

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
