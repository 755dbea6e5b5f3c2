"""No task waits for a pooled connection while it holds one.

A task that does can deadlock the node once enough tasks do it at once: each holds one
of the pool's connections and waits for another that none will free. ``one_per_task`` is
the pools' setup hook; it reports such an acquire when it happens, not at the first
deadlock under load. See docs/architecture.md, "Connections".
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

__all__ = ["STRICT_POOL", "SecondConnection", "held_for_long", "holds_connection", "one_per_task"]

_log = logging.getLogger(__name__)


class SecondConnection(RuntimeError):
    """A task asked for a pooled connection while it held one (only when STRICT_POOL)."""


STRICT_POOL = False
"""Raise SecondConnection instead of logging it: the tests set this, so a change that
makes a call wait for a second connection while holding one fails them."""

_held: weakref.WeakKeyDictionary[asyncio.Task[Any], list[Any]] = weakref.WeakKeyDictionary()


async def one_per_task(proxy: Any) -> None:
    """The pool's setup hook: note the connection against the task that acquired it.

    A task that waits for a connection while holding one can deadlock the node once
    enough tasks do it at once (each holds one of the pool's connections and waits for
    another), so this is reported at the first acquire, not at the first deadlock.
    """
    task = asyncio.current_task()
    if task is None:
        return
    # asyncpg detaches a proxy on release (its _con becomes None).
    holding = [p for p in _held.get(task, ()) if p._con is not None]
    if holding:
        message = f"task {task.get_name()} acquired a pooled connection while holding one"
        if STRICT_POOL:
            raise SecondConnection(message)
        _log.error("%s", message, stack_info=True)
    _held[task] = [*holding, proxy]


def held_for_long(proxy: Any) -> None:
    """Say that ``proxy`` is held for a component's life (a LISTEN, a leader's lock), not
    for one call, so the task that acquired it may acquire others (see ``one_per_task``)."""
    task = asyncio.current_task()
    if task is not None and task in _held:
        _held[task] = [p for p in _held[task] if p is not proxy]


def holds_connection() -> bool:
    """Whether the current task holds a pooled connection (and may hold row locks in a
    transaction on it): such a task must not be made to wait for anything but the
    database (``fairness.CpuShare`` does not hold it back)."""
    task = asyncio.current_task()
    return task is not None and any(p._con is not None for p in _held.get(task, ()))
