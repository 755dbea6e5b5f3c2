"""The printed table's rows: one style for every phase, so the figures line up."""

from __future__ import annotations

from collections.abc import Sequence

from bench._load import LoadResult
from bench._watch import CpuUse

__all__ = [
    "LABEL",
    "cpu_header",
    "cpu_per_call_header",
    "cpu_per_call_row",
    "cpu_row",
    "latency_row",
    "load_row",
    "rate_row",
]

LABEL = 44
"""Width of the label column."""
_CPU_COLUMNS = ("bench", "server", "postgres", "other", "idle")


def rate_row(label: str, rate: float, unit: str, detail: str = "") -> str:
    """``label``, a rate in its unit, then free text in the latency columns."""
    return f"{label:<{LABEL}}{rate:>8,.0f} {unit:<10}{detail}".rstrip()


def load_row(label: str, result: LoadResult, unit: str, baseline: LoadResult | None) -> str:
    detail = f"p50 {result.p50_ms:5.1f} ms  p99 {result.p99_ms:5.1f} ms"
    if baseline is not None:
        detail += f"   {result.rate / baseline.rate:4.0%} of baseline"
    return rate_row(label, result.rate, unit, detail)


def latency_row(label: str, p50_ms: float, max_ms: float, detail: str = "") -> str:
    """A row of latencies only (sequential calls have no meaningful rate)."""
    return f"{label:<{LABEL}}{'':>8} {'':<10}p50 {p50_ms:5.1f} ms  max {max_ms:5.1f} ms{detail}"


def cpu_header(extra: Sequence[str] = ()) -> str:
    """The CPU columns' heads; ``extra`` groups (such as a broker) go before "other"."""
    heads = (*_CPU_COLUMNS[:3], *extra, *_CPU_COLUMNS[3:])
    return f"{'':<{LABEL}}" + "".join(f"{h:>9}" for h in heads)


def cpu_row(label: str, cpu: CpuUse, extra: Sequence[str] = ()) -> str:
    cells = [cpu.by_group.get(group) for group in (*_CPU_COLUMNS[:3], *extra)]
    cells += [cpu.others, cpu.idle]
    return f"{label:<{LABEL}}" + "".join(
        f"{'-':>9}" if value is None else f"{value:>8.0f}%" for value in cells
    )


_PER_CALL_COLUMNS = ("bench", "server", "postgres")


def cpu_per_call_header() -> str:
    heads = (*_PER_CALL_COLUMNS, "total")
    return f"{'':<{LABEL}}" + "".join(f"{h:>9}" for h in heads)


def cpu_per_call_row(label: str, result: LoadResult) -> str:
    """Each group's CPU time over the window divided by the calls completed in it, in us:
    what one call costs the machine, which on saturated cores sets the rate."""
    assert result.cpu is not None  # rows are only made for metered phases
    per_call = {
        group: result.cpu.by_group[group] * 10_000 / result.rate
        for group in _PER_CALL_COLUMNS
        if group in result.cpu.by_group
    }
    cells = [per_call.get(group) for group in _PER_CALL_COLUMNS] + [sum(per_call.values())]
    return f"{label:<{LABEL}}" + "".join(
        f"{'-':>9}" if value is None else f"{value:>6,.0f} us" for value in cells
    )
