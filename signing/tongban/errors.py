"""The root of every error Tongban raises on purpose.

Each subclass names a stable ``reason`` code (UPPER_SNAKE, part of the public contract:
it travels to callers in the gRPC ``ErrorInfo`` and in the CLI's ``--json`` output) and
the gRPC status it maps to. The message is one sentence a person can act on.

This module lives in the lowest layer (the ``signing`` source root) so that every package,
``signing`` included, can raise from one root without depending on anything above it.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["TongbanError"]


class TongbanError(Exception):
    """Base class for errors with a stable reason code and an actionable message.

    Subclasses set the class attributes ``reason`` and ``status`` (a ``grpc.StatusCode``
    name, kept as a string so that this layer does not depend on grpc). Never match on the
    message text; match on the class or on ``reason``.
    """

    reason: str = "INTERNAL"
    status: str = "INTERNAL"
    retry_after: float | None = None
    """Seconds after which the same call may succeed (sent to callers as RetryInfo)."""

    def __init__(self, message: str, *, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})

    def diagnostics(self) -> str:
        """Return the message with the reason code, for logs and terminals."""
        return f"{self.message} [{self.reason}]"

    def to_dict(self) -> dict[str, object]:
        """Return the machine-readable form used by ``--json`` output."""
        out: dict[str, object] = {"ok": False, "reason": self.reason, "message": self.message}
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        return out
