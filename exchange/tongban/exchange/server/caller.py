"""Who is calling: set by the interceptor for each RPC, read by the services."""

from __future__ import annotations

from contextvars import ContextVar

from tongban.exchange.db.fair_pool import department as pool_department
from tongban.exchange.federation.peers import Peer
from tongban.exchange.identity import Caller

__all__ = ["Caller", "current_caller", "current_peer", "set_caller", "set_peer"]


_current: ContextVar[Caller] = ContextVar("tongban_caller")
_current_peer: ContextVar[Peer] = ContextVar("tongban_peer")


def current_caller() -> Caller:
    """Return the caller of the RPC being served; LookupError outside an authenticated RPC."""
    return _current.get()


def set_caller(caller: Caller) -> None:
    _current.set(caller)
    # The pool gives each department a share of its connections (db/fair_pool.py).
    pool_department.set(caller.department.code)


def current_peer() -> Peer:
    """Return the peer exchange calling the PeerService method being served; LookupError
    outside one."""
    return _current_peer.get()


def set_peer(peer: Peer) -> None:
    _current_peer.set(peer)
    # A peer's calls share the pool like a department's, under a name no department has.
    pool_department.set(f"peer:{peer.name}")
