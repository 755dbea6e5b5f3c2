"""Watching processes from outside: CPU use over a window, and peak resident memory.

Processes are given as labelled groups, each a function returning the group's current
processes, so a group can follow processes that come and go (PostgreSQL backends).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType

import psutil

__all__ = ["CpuMeter", "CpuUse", "PeakRss", "ProcessGroup"]

ProcessGroup = Callable[[], Iterable[psutil.Process]]


def _cpu_seconds(group: ProcessGroup) -> dict[int, float]:
    seconds: dict[int, float] = {}
    for process in group():
        try:
            times = process.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        seconds[process.pid] = times.user + times.system
    return seconds


@dataclass(frozen=True)
class CpuUse:
    """CPU use over a window, in % of one core (100 = one core busy for the whole window)."""

    by_group: dict[str, float]
    machine_busy: float
    """All cores, every process and the kernel; at most ``100 * cores``."""
    cores: int

    @property
    def others(self) -> float:
        """What the rest of the machine used: other processes, kernel threads (loopback
        networking among them); the noise, when it is large."""
        return max(0.0, self.machine_busy - sum(self.by_group.values()))

    @property
    def idle(self) -> float:
        return max(0.0, 100 * self.cores - self.machine_busy)


class CpuMeter:
    """CPU time used by each group, and by the whole machine, between ``start()`` and ``stop()``.

    Per-process figures come from each process's own accounting, the machine's from
    ``/proc/stat``; on a virtual machine the first can add up to less than the second.
    """

    def __init__(self, groups: Mapping[str, ProcessGroup]) -> None:
        self._groups = dict(groups)
        self._started = 0.0
        self._before: dict[str, dict[int, float]] = {}
        self._machine_before = _machine_busy_seconds()

    def start(self) -> None:
        self._before = {label: _cpu_seconds(group) for label, group in self._groups.items()}
        self._machine_before = _machine_busy_seconds()
        self._started = time.perf_counter()

    def stop(self) -> CpuUse:
        """Return the CPU use since ``start()``."""
        elapsed = time.perf_counter() - self._started
        machine = _machine_busy_seconds() - self._machine_before
        used: dict[str, float] = {}
        for label, group in self._groups.items():
            before = self._before.get(label, {})
            after = _cpu_seconds(group)
            # A process born inside the window counts from zero; one that died is lost.
            seconds = sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())
            used[label] = 100 * seconds / elapsed
        return CpuUse(used, 100 * machine / elapsed, psutil.cpu_count() or 1)


def _machine_busy_seconds() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


class PeakRss:
    """Polls each group's total RSS from a thread while entered; ``peak_mb`` keeps the maximum.

    A thread rather than a task, so that polling keeps its pace while the benchmark's event
    loop is saturated. A group's RSS is the sum over its processes, which counts memory
    they share (PostgreSQL's shared buffers) once per process that has touched it.
    """

    def __init__(self, groups: Mapping[str, ProcessGroup], *, interval: float = 0.1) -> None:
        self._groups = dict(groups)
        self._interval = interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="peak-rss", daemon=True)
        self.peak_mb: dict[str, float] = dict.fromkeys(self._groups, 0.0)
        self.samples = 0

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done.set()
        self._thread.join()

    def _poll(self) -> None:
        while True:
            for label, group in self._groups.items():
                total = 0
                for process in group():
                    try:
                        total += process.memory_info().rss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        continue
                self.peak_mb[label] = max(self.peak_mb[label], total / 2**20)
            self.samples += 1
            if self._done.wait(self._interval):
                return
