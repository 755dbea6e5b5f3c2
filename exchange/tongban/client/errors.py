"""Errors the client raises: the node's reason code and message, carried over the wire."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from tongban.errors import TongbanError

__all__ = ["ExchangeError", "from_rpc_error"]

_DETAILS_KEY = "grpc-status-details-bin"


class ExchangeError(TongbanError):
    """A call failed. ``reason`` is the node's stable code (``ErrorInfo.reason``) when it
    sent one; otherwise a code derived from the gRPC status (e.g. ``UNAVAILABLE`` when the
    TLS handshake failed or the node is down). ``code`` is the gRPC status code."""

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        code: grpc.StatusCode,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, metadata=metadata)
        self.reason = reason
        self.status = code.name
        self.code = code
        self.retry_after = retry_after

    @property
    def retriable(self) -> bool:
        """Whether the same call may succeed later without anyone changing anything: the
        node is down, busy, past the call's deadline, or asked to retry (``retry_after``
        then says when). Everything else needs a change first (input, grant, identity)."""
        return self.code in _RETRIABLE and self.reason not in _NEEDS_A_CHANGE

    @classmethod
    def unavailable(cls, message: str) -> ExchangeError:
        """The error of a call or stream the node ended without an answer (retriable)."""
        return cls(message, reason="UNAVAILABLE", code=grpc.StatusCode.UNAVAILABLE)


_RETRIABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)

_NEEDS_A_CHANGE = frozenset({"STORAGE_QUOTA_EXCEEDED", "TOO_MANY_PENDING_GRANTS"})
"""Reasons under a retriable status that no retry fixes: someone has to act first (the
operator raise the department's storage quota; the owner answer grant requests)."""


def from_rpc_error(error: grpc.aio.AioRpcError) -> ExchangeError:
    """Translate a gRPC error, reading ``ErrorInfo`` from the status details if present."""
    code = error.code()
    message = error.details() or code.name
    trailers: Any = error.trailing_metadata() or ()
    for key, value in trailers:
        if key == _DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            found: error_details_pb2.ErrorInfo | None = None
            retry_after = None
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                retry = error_details_pb2.RetryInfo()
                if detail.Unpack(info) and info.domain == "tongban":
                    found = info
                elif detail.Unpack(retry):
                    retry_after = retry.retry_delay.ToTimedelta().total_seconds()
            if found is not None:
                return ExchangeError(
                    status.message or message,
                    reason=found.reason,
                    code=code,
                    metadata=dict(found.metadata),
                    retry_after=retry_after,
                )
    if code is grpc.StatusCode.UNAVAILABLE:
        message = (
            "The exchange node cannot be reached, or it refused our certificate at the TLS "
            f"handshake; check the endpoint and the bundle ({message[:200]})."
        )
    elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
        message = "The exchange node did not answer in time; retry later."
    return ExchangeError(message, reason=code.name, code=code)
