"""Calling peer exchanges: one mutual-TLS channel per peer, with the node's certificate.

A node calls a peer with its own node TLS certificate and trusts, for the peer's server
certificate, only that peer's root (docs/federation.md, "Mutual TLS between nodes").
Every call has a deadline; a peer that is down, unreachable or untrusted fails with
``PEER_UNAVAILABLE``, and a peer's deliberate refusal comes back as ``PeerRefusal``
with the peer's own reason code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2

from tongban.errors import TongbanError
from tongban.exchange.federation.errors import PeerUnavailable
from tongban.exchange.federation.peers import Peer
from tongban.v1 import federation_pb2_grpc

__all__ = [
    "PeerLinks",
    "PeerRefusal",
    "peer_error",
]

T = TypeVar("T")

# A peer's refusals passed on as they are; any other status (UNAVAILABLE, a deadline,
# the peer's own INTERNAL) means the peer cannot serve us now: PEER_UNAVAILABLE.
_PASSED_ON = {
    grpc.StatusCode.INVALID_ARGUMENT: "INVALID_ARGUMENT",
    grpc.StatusCode.NOT_FOUND: "NOT_FOUND",
    grpc.StatusCode.PERMISSION_DENIED: "PERMISSION_DENIED",
    # The peer does not accept our node: for our caller that is a refusal, not its login.
    grpc.StatusCode.UNAUTHENTICATED: "PERMISSION_DENIED",
    grpc.StatusCode.FAILED_PRECONDITION: "FAILED_PRECONDITION",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "RESOURCE_EXHAUSTED",
    grpc.StatusCode.OUT_OF_RANGE: "OUT_OF_RANGE",
    # A witness's 409 (WITNESS_CONFLICT, with its latest size): the asker resyncs.
    grpc.StatusCode.ABORTED: "ABORTED",
}


class PeerRefusal(TongbanError):
    """A peer answered with a deliberate refusal; ``reason`` and ``status`` are the
    peer's (for example PERMISSION_DENIED / GRANT_REQUIRED from the owner's policy)."""

    def __init__(
        self, peer: str, reason: str, status: str, message: str, metadata: dict[str, str]
    ) -> None:
        super().__init__(message, metadata={**metadata, "peer": peer})
        self.reason = reason
        self.status = status


class PeerLinks:
    """Channels to peers, made on first use and replaced when a peer's endpoint or root
    changes. ``close()`` closes them all."""

    def __init__(self, *, key_pem: bytes, chain_pem: bytes, call_seconds: float) -> None:
        self._key_pem = key_pem
        self._chain_pem = chain_pem
        self.call_seconds = call_seconds
        self._channels: dict[str, tuple[tuple[str, bytes], grpc.aio.Channel]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def stub(self, peer: Peer) -> federation_pb2_grpc.PeerServiceAsyncStub:
        return federation_pb2_grpc.PeerServiceStub(self._channel(peer))

    def _channel(self, peer: Peer) -> grpc.aio.Channel:
        identity = (peer.endpoint, peer.ca_fingerprint)
        held = self._channels.get(peer.name)
        if held is not None and held[0] == identity:
            return held[1]
        if held is not None:
            self._close_later(held[1])
        credentials = grpc.ssl_channel_credentials(
            root_certificates=peer.ca_pem,
            private_key=self._key_pem,
            certificate_chain=self._chain_pem,
        )
        channel = grpc.aio.secure_channel(
            peer.endpoint,
            credentials,
            options=[
                # Fail fast while a peer is down instead of backing off for minutes.
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2000),
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ],
        )
        self._channels[peer.name] = (identity, channel)
        return channel

    def forget(self, keep: set[str]) -> None:
        """Close the channels of peers not in ``keep`` (removed or suspended)."""
        for name in [n for n in self._channels if n not in keep]:
            self._drop(name)

    def _drop(self, name: str) -> None:
        held = self._channels.pop(name, None)
        if held is not None:
            self._close_later(held[1])

    def _close_later(self, channel: grpc.aio.Channel) -> None:
        task = asyncio.get_running_loop().create_task(channel.close(grace=1.0))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def call(self, peer: Peer, what: str, rpc: Callable[[float], Awaitable[T]]) -> T:
        """``await rpc(timeout)``, with gRPC failures made ours: PeerUnavailable when the
        peer cannot be reached or did not answer in time, PeerRefusal when it refused on
        purpose. ``what`` says what was attempted, for the message."""
        reused = peer.name in self._channels
        try:
            return await rpc(self.call_seconds)
        except grpc.aio.AioRpcError as e:
            error = _from_rpc_error(peer, what, e)
            if not isinstance(error, PeerUnavailable) or _error_info(e) is not None:
                # A refusal, or the peer itself answering that the exchange beyond it is
                # unavailable: the peer is up and our connection good; never ask twice.
                raise error from e
            # A fresh connection next time: not gRPC's reconnect back-off, which would
            # fail calls for a while after the peer is back.
            self._drop(peer.name)
            if not reused or e.code() is not grpc.StatusCode.UNAVAILABLE:
                raise error from e
        # The connection this call found had failed earlier (the peer was down, or did
        # not know us yet): one more try on a new one. Not after a deadline: a peer that
        # hangs costs one deadline, not two.
        try:
            return await rpc(self.call_seconds)
        except grpc.aio.AioRpcError as e:
            error = _from_rpc_error(peer, what, e)
            if isinstance(error, PeerUnavailable) and _error_info(e) is None:
                self._drop(peer.name)
            raise error from e

    async def close(self) -> None:
        channels = [held[1] for held in self._channels.values()]
        self._channels.clear()
        for channel in channels:
            await channel.close(grace=None)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


def peer_error(peer: Peer, what: str, error: grpc.aio.AioRpcError) -> TongbanError:
    """What a failed call to ``peer`` (about ``what``) means here: the peer's refusal
    passed on (PeerRefusal), or PeerUnavailable."""
    return _from_rpc_error(peer, what, error)


def _from_rpc_error(peer: Peer, what: str, error: grpc.aio.AioRpcError) -> TongbanError:
    code = error.code()
    info = _error_info(error)
    if info is not None and code in _PASSED_ON:
        message = (error.details() or "").strip() or f"Peer {peer.name} refused {what}."
        return PeerRefusal(peer.name, info.reason, _PASSED_ON[code], message, dict(info.metadata))
    if info is not None and info.reason == "PEER_UNAVAILABLE":
        # The peer relayed another peer's failure; keep its sentence.
        return PeerUnavailable(
            error.details() or f"Peer {peer.name} is unavailable.",
            metadata={"peer": peer.name, **_relayed_index(info)},
        )
    return PeerUnavailable(
        f"Peer {peer.name} ({peer.endpoint}) could not be reached for {what} "
        f"({code.name}); try again later or ask its operator.",
        metadata={"peer": peer.name},
    )


def _relayed_index(info: error_details_pb2.ErrorInfo) -> dict[str, str]:
    index = info.metadata.get("log_index")
    return {} if index is None else {"log_index": index}


def _error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The ``ErrorInfo`` a Tongban node put in the trailers, if any."""
    trailers: Any = error.trailing_metadata() or ()
    for key, value in trailers:
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        status = status_pb2.Status()
        try:
            status.ParseFromString(value)
        except ValueError:
            return None
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.domain == "tongban" and info.reason:
                return info
    return None
