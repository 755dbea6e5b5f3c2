"""A typed async client for an exchange node, authenticated by a department bundle."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

import grpc

from tongban.client.bundle import Bundle
from tongban.client.errors import ExchangeError, from_rpc_error
from tongban.v1 import node_pb2, node_pb2_grpc

__all__ = ["ExchangeClient", "Identity"]

OFFICER_METADATA = "x-tongban-officer"
_OFFICER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}")

_LEVELS = {
    node_pb2.LEVEL_PROVINCE: "province",
    node_pb2.LEVEL_CITY: "city",
    node_pb2.LEVEL_COUNTY: "county",
    node_pb2.LEVEL_TOWNSHIP: "township",
}


@dataclass(frozen=True)
class Identity:
    """Who the node says we are."""

    department: str
    name: str
    level: str
    parent: str | None
    roles: tuple[str, ...]
    officer_id: str | None
    node: str
    server_time: datetime


class ExchangeClient:
    """Calls an exchange node as the department of ``bundle``.

    Use ``async with ExchangeClient(bundle) as client``; ``target`` overrides the bundle's
    endpoint; ``officer_id`` is sent with every call and logged by the node. Every method
    raises ``ExchangeError`` with the node's reason code on failure.
    """

    def __init__(
        self,
        bundle: Bundle,
        *,
        target: str | None = None,
        officer_id: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.bundle = bundle
        self.target = target or bundle.endpoint
        self._timeout = timeout
        if officer_id is not None and not _OFFICER_ID.fullmatch(officer_id):
            raise ExchangeError(
                "An officer id must be a staff number of 1-64 ASCII letters, digits or "
                ". _ : @ - (starting with a letter or digit).",
                reason="INVALID_ARGUMENT",
                code=grpc.StatusCode.INVALID_ARGUMENT,
            )
        self._metadata: tuple[tuple[str, str], ...] = (
            ((OFFICER_METADATA, officer_id),) if officer_id else ()
        )
        credentials = grpc.ssl_channel_credentials(
            root_certificates=bundle.ca_pem,
            private_key=bundle.tls_key_pem,
            certificate_chain=bundle.tls_cert_pem,
        )
        self._channel = grpc.aio.secure_channel(
            self.target,
            credentials,
            options=[("grpc.ssl_target_name_override", bundle.server_name)],
        )
        self._node = node_pb2_grpc.NodeServiceStub(self._channel)

    @classmethod
    def from_bundle_dir(cls, path: Path, **kwargs: object) -> ExchangeClient:
        """Load the bundle at ``path`` (raises BundleInvalid) and make a client."""
        return cls(Bundle.load(path), **kwargs)  # type: ignore[arg-type]

    async def who_am_i(self) -> Identity:
        """Return the department the node recognised from our certificate."""
        try:
            reply: node_pb2.WhoAmIResponse = await self._node.WhoAmI(
                node_pb2.WhoAmIRequest(), timeout=self._timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None
        dept = reply.department
        return Identity(
            department=dept.code,
            name=dept.name,
            level=_LEVELS.get(dept.level, "unspecified"),
            parent=dept.parent or None,
            roles=tuple(dept.roles),
            officer_id=reply.officer_id or None,
            node=reply.node,
            server_time=reply.server_time.ToDatetime().replace(tzinfo=UTC),
        )

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> ExchangeClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
