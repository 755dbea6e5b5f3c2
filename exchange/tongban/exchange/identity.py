"""Who is acting: the caller every use case is given (a domain type, not the gRPC layer's).

The gRPC interceptor makes one from the client certificate for each call
(``server/caller.py`` keeps it for the call's duration); the web console and the CLI make
their own. Use cases take it as an argument and never look it up themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

from tongban.exchange.departments import Department

__all__ = ["Caller"]


@dataclass(frozen=True)
class Caller:
    """The authenticated department (from its certificate) and the officer it named."""

    department: Department
    officer_id: str | None
    cert_fingerprint: bytes
