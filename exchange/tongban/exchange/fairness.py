"""Sharing the node's one event loop fairly during long work.

A call that does long CPU work in slices (a bulk load validating 5,000 records) calls
``yield_fairly(spent)`` between slices. The gRPC interceptor sets, for each call, how
that department's work is paced (``server.limits.CallLimiter.pacer``): while other
departments have calls in progress, the slice is followed by a pause of ``BACKOFF`` times
its length, so long work takes at most 1 / (1 + BACKOFF) of the loop and others' calls
run in between; when no one else is waiting it only hands the loop back once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

__all__ = ["BACKOFF", "set_pacer", "yield_fairly"]

BACKOFF = 2.0
"""Pause after a slice, as a multiple of its length, while others wait: 2 gives long work
a third of the loop."""

Pacer = Callable[[float], Awaitable[None]]

_pacer: ContextVar[Pacer | None] = ContextVar("tongban_pacer", default=None)


def set_pacer(pacer: Pacer | None) -> None:
    """Set how the current call's long work is paced (the interceptor does, per call)."""
    _pacer.set(pacer)


async def yield_fairly(spent: float) -> None:
    """After a slice of long work that took ``spent`` seconds: let others run."""
    pacer = _pacer.get()
    if pacer is None:
        await asyncio.sleep(0)
    else:
        await pacer(spent)
