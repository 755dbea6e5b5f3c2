"""Starting and stopping aiokafka clients safely under cancellation.

Subscription streams end by cancellation, often in the middle of starting or stopping a
Kafka client, and sometimes twice. An aiokafka ``start()`` cut short leaves its bootstrap
connection open, and a ``stop()`` cut short leaves the client's connections open. So both
run to their end in tasks of their own, held here: asyncio keeps only weak references to
tasks, and a shielded task nobody awaits any more could otherwise be collected half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.errors import KafkaError

__all__ = ["close_detached", "start_or_close"]

_held: set[asyncio.Task[Any]] = set()

Step = Callable[[], Awaitable[None]]


def _hold(task: asyncio.Task[Any]) -> asyncio.Task[Any]:
    _held.add(task)
    task.add_done_callback(_held.discard)
    return task


async def _quietly(stop: Step) -> None:
    with contextlib.suppress(KafkaError, OSError, TimeoutError):
        async with asyncio.timeout(5):
            await stop()


async def close_detached(stop: Step) -> None:
    """Run ``stop`` (a client's ``stop`` or ``close``) to its end, even if the caller is
    cancelled meanwhile; errors while stopping are ignored."""
    await asyncio.shield(_hold(asyncio.get_running_loop().create_task(_quietly(stop))))


async def start_or_close(start: Step, stop: Step) -> None:
    """Run ``start``; if it fails, stop the client and raise. If the caller is cancelled,
    the start still runs to its end and the client is then stopped, detached."""
    loop = asyncio.get_running_loop()

    async def run() -> None:
        await start()

    task = _hold(loop.create_task(run()))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(lambda _: _hold(loop.create_task(_quietly(stop))))
        raise
    except BaseException:
        await close_detached(stop)
        raise
