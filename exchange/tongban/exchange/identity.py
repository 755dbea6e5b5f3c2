"""Who is acting: the caller every use case is given (a domain type, not the gRPC layer's).

The gRPC interceptor makes one from the client certificate for each call
(``server/caller.py`` keeps it for the call's duration); the web console and the CLI make
their own. Use cases take it as an argument and never look it up themselves.

A department of a peer exchange acting through its node (a forwarded subscription) is a
``RemoteCaller``: named as our policy and log name it, ``county-a/approval``. Use cases
that serve both take an ``Actor``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tongban.exchange.departments import Department

__all__ = ["Actor", "Caller", "Named", "RemoteCaller"]


@dataclass(frozen=True)
class Caller:
    """The authenticated department (from its certificate) and the officer it named."""

    department: Department
    officer_id: str | None
    cert_fingerprint: bytes


class Named(Protocol):
    """What a use case reads of the acting department: its name."""

    @property
    def code(self) -> str: ...


class Actor(Protocol):
    """A department of ours (``Caller``) or of a peer exchange (``RemoteCaller``)."""

    @property
    def department(self) -> Named: ...

    @property
    def officer_id(self) -> str | None: ...


@dataclass(frozen=True)
class _RemoteName:
    code: str


@dataclass(frozen=True)
class RemoteCaller:
    """A peer exchange's department acting through its node, by our name for it
    (``county-a/approval``), and the officer its node named."""

    name: str
    officer_id: str | None

    @property
    def department(self) -> Named:
        return _RemoteName(self.name)
