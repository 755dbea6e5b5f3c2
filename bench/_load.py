"""The closed-loop load generator shared by every phase of the benchmark.

``concurrency`` coroutines on the caller's event loop each await ``call()`` in a loop, with
no pause between calls. The first ``warmup`` seconds are discarded (connections, caches,
the allocator settle); then, for ``duration`` seconds, every call that *completes* inside
the window counts towards the rate and contributes its latency (``perf_counter`` around
the one await). Calls straddling the window start are counted at completion, so the rate is
not biased by the in-flight calls at either edge.

A failed call stops the run: a rate measured over errors means nothing.
"""

from __future__ import annotations

import asyncio
import gc
import math
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bench._config import Config
from bench._watch import CpuMeter, CpuUse

__all__ = ["LoadResult", "run_load", "run_phase", "settle_collector"]


def settle_collector() -> None:
    """Move everything this process holds now (the generated records or entries, modules)
    out of the cyclic collector's sight, as ``tongban serve`` does for itself. Otherwise
    a full collection walks the generated data inside a measured call: with 100,000
    records held, a 52 ms collection turned one 1,000-key query's ~50 ms into 101 ms (157
    ms in a full run), charged to the node. Objects are still freed when dropped."""
    gc.collect()
    gc.freeze()


@dataclass(frozen=True)
class LoadResult:
    """What one load phase measured."""

    calls: int
    """Calls completed inside the measurement window."""
    seconds: float
    """Length of the measurement window (wall clock)."""
    p50_ms: float
    p99_ms: float
    cpu: CpuUse | None
    """CPU use during the window, if a meter was given."""

    @property
    def rate(self) -> float:
        """Completed calls per second."""
        return self.calls / self.seconds


async def run_load(
    call: Callable[[], Awaitable[object]],
    *,
    concurrency: int,
    warmup: float,
    duration: float,
    cpu: CpuMeter | None = None,
) -> LoadResult:
    """Drive ``call`` from ``concurrency`` coroutines; return the figures of the window.

    ``cpu``, if given, is started and stopped exactly at the window's edges. If a call
    raises, the other callers are cancelled and an ExceptionGroup holding the error is
    raised; ValueError if fewer than two calls completed inside the window.
    """
    window_start = math.inf
    window_end = math.inf
    stopping = False
    latencies: list[float] = []

    async def caller() -> None:
        while not stopping:
            started = time.perf_counter()
            await call()
            finished = time.perf_counter()
            if window_start <= finished < window_end:
                latencies.append(finished - started)

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(caller())
        await asyncio.sleep(warmup)
        if cpu is not None:
            cpu.start()
        window_start = time.perf_counter()
        await asyncio.sleep(duration)
        window_end = time.perf_counter()
        cpu_use = cpu.stop() if cpu is not None else None
        stopping = True  # the callers finish their call in flight, then return

    if len(latencies) < 2:
        raise ValueError(f"only {len(latencies)} call(s) completed in {duration:.1f} s")
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return LoadResult(
        calls=len(latencies),
        seconds=window_end - window_start,
        p50_ms=cuts[49] * 1000,
        p99_ms=cuts[98] * 1000,
        cpu=cpu_use,
    )


async def run_phase(
    call: Callable[[], Awaitable[object]], config: Config, cpu: CpuMeter | None = None
) -> LoadResult:
    """``run_load`` with the long-lived-channel phases' callers, warm-up and window."""
    return await run_load(
        call,
        concurrency=config.concurrency,
        warmup=config.warmup_seconds,
        duration=config.duration_seconds,
        cpu=cpu,
    )
