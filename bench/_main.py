"""What a phase's ``main`` does around its run, in one place: read its BENCH_* variables,
run it, print its table or one line saying why it could not complete, and write its
figures to ``bench/results``."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
from collections.abc import Callable, Collection, Coroutine, Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc

from bench._config import Config
from bench._errors import describe

__all__ = ["RESULTS_DIR", "from_environment", "host_figures", "run_main", "write_results"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"

R = TypeVar("R")


def from_environment(
    config: Config,
    variables: Mapping[str, str],
    floats: Collection[str] = (),
    environ: Mapping[str, str] = os.environ,
) -> Config:
    """``config`` with each set variable of ``variables`` (name -> Config field) applied: a
    positive number, a float for the fields in ``floats``, else a whole number.
    ValueError, naming the variable, if one is not."""
    changes: dict[str, Any] = {}
    for variable, name in variables.items():
        text = environ.get(variable, "").strip()
        if not text:
            continue
        try:
            value = float(text) if name in floats else int(text)
        except ValueError:
            raise ValueError(f"{variable}={text!r} is not a number") from None
        if value <= 0:
            raise ValueError(f"{variable} must be positive")
        changes[name] = value
    return replace(config, **changes)


def host_figures(loadavg: tuple[float, float, float]) -> dict[str, Any]:
    """The machine a results file was measured on, with its load average before the run."""
    return {
        "cpus": os.cpu_count(),
        "loadavg_before": list(loadavg),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "platform": platform.platform(),
    }


def write_results(name: str, started: datetime, figures: dict[str, Any]) -> Path:
    """Write ``figures`` to ``bench/results/<name>-<started>.json``; return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}-{started:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return path


def run_main(
    configure: Callable[[Config], Config],
    run: Callable[[Config], Coroutine[Any, Any, R]],
    report: Callable[[R], str],
    write: Callable[[R], Path],
    failures: tuple[type[BaseException], ...],
) -> int:
    """Configure, run, print the table and write the figures; return the status: 0, 1
    when ``run`` raised one of ``failures`` (printed as one line), 2 for a bad variable,
    130 when interrupted."""
    try:
        config = configure(Config())
    except ValueError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(run(config))
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    except failures as e:
        print(f"bench failed: {describe(e)}", file=sys.stderr)
        return 1
    print(report(result))
    path = write(result)
    shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
    print(f"\nfigures written to {shown}")
    return 0
