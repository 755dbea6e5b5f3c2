"""Who is calling: set by the interceptor for each RPC, read by the services."""

from __future__ import annotations

from contextvars import ContextVar

from tongban.exchange.db.fair_pool import department as pool_department
from tongban.exchange.identity import Caller

__all__ = ["Caller", "current_caller", "set_caller"]


_current: ContextVar[Caller] = ContextVar("tongban_caller")


def current_caller() -> Caller:
    """Return the caller of the RPC being served; LookupError outside an authenticated RPC."""
    return _current.get()


def set_caller(caller: Caller) -> None:
    _current.set(caller)
    # The pool gives each department a share of its connections (db/fair_pool.py).
    pool_department.set(caller.department.code)
