"""``python -m bench profile``: where the node's time goes under the audited one-key query.

A node (``tongban serve --demo``, one process, the throughput phases' raised limits) gets
the sharing phases' dataset (``config.records`` records of 10 fields, published as
``samr``, unmeasured); then ``tax`` asks it the audited one-key query of phase 6 from 64
callers on one channel (``bench.sharing.single_key_query``), and after a warm-up py-spy
samples the node for ``BENCH_PROFILE_SECONDS`` (default 10) at 250 Hz without pausing it
(``--nonblocking``), twice at once: once into a flame graph (SVG, written to
``BENCH_PROFILE_SVG``, by default ``docs/profiles/audited-query-node.svg``) and once into
collapsed stacks (the text format flame graph tools read; beside the SVG, ``.txt``), from
which the table printed here is made: the share of the node's samples in each thread, in
each of the functions that take the most on their own, and under each stage of the call.

py-spy comes with the dev dependencies (``make .venv/.dev``); it reads the node's memory
with ptrace, so it needs root or ``kernel.yama.ptrace_scope`` 0 (a clear error otherwise).
The query's rate is printed too, so a profile is read beside its load; the profiler itself
takes a little of the node's CPU, so rates are compared in ``python -m bench`` runs, not here.
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import sharing
from bench._client import Department
from bench._config import Config
from bench._servers import node_server
from bench._table import LABEL

__all__ = ["Profile", "main", "run", "summarise"]

_REPO = Path(__file__).resolve().parent.parent
_DEFAULT_SVG = _REPO / "docs" / "profiles" / "audited-query-node.svg"
_RATE_HZ = 250
_WARMUP_SECONDS = 2.0

# The stages of a call, by a frame that marks each (file suffix, function as py-spy names
# it, with its class): a sample is counted under every stage whose frame is on its stack.
_STAGES = (
    ("the interceptor: authenticate, limits", "interceptor.py", "ExchangeInterceptor._admit"),
    ("the query: policy, read, log entry, answer", "sharing/service.py", "Sharing.query"),
    ("reading the record (asyncpg)", "sharing/records.py", "RecordStore.fetch"),
    ("queueing the log entry (append)", "audit/log.py", "AccessLog.append"),
    ("the log's writer (group commits)", "audit/log.py", "AccessLog._write"),
    ("the integrator", "audit/integrator.py", "integrate"),
    ("the Query handler (all of the call past the interceptor)", "sharing_services.py",
     "QueryService.Query"),
)  # fmt: skip


@dataclass(frozen=True)
class Profile:
    rate: float
    """Audited queries per second while the node was sampled."""
    samples: int
    threads: list[tuple[str, int]]
    own: list[tuple[str, int]]
    """Functions by the samples in which they were the running frame."""
    stages: list[tuple[str, int]]
    svg: Path
    collapsed: Path


def _py_spy() -> str:
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise RuntimeError("py-spy is not installed: make .venv/.dev installs it")
    return found


def _frame(frame: str) -> tuple[str, str]:
    """(function, file) of a collapsed-stack frame ``function (path:line)``."""
    function, _, where = frame.partition(" (")
    return function, where.rsplit(":", 1)[0]


def _short(frame: str) -> str:
    function, path = _frame(frame)
    for marker in ("site-packages/", "/tongban/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{function} ({path})"


def summarise(
    collapsed: str,
) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]], list[tuple[str, int]]]:
    """(samples, threads, own, stages) of py-spy's collapsed stacks ``collapsed``: one line
    per distinct stack, frames from the thread's root to the running one separated by
    ``;``, then a space and its count."""
    threads: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    stages: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        threads[_short(frames[0])] += count
        own[_short(frames[-1])] += count
        on_stack = {_frame(f) for f in frames}
        for label, path, function in _STAGES:
            if any(fn == function and file.endswith(path) for fn, file in on_stack):
                stages[label] += count
    ordered = [(label, stages[label]) for label, _, _ in _STAGES]
    return total, threads.most_common(6), own.most_common(20), ordered


async def run(config: Config, seconds: float, svg: Path) -> Profile:
    """Profile the node for ``seconds`` under the query; write the SVG to ``svg``."""
    spy = _py_spy()
    svg.parent.mkdir(parents=True, exist_ok=True)
    collapsed = svg.with_suffix(".txt")
    async with node_server() as node:
        keys = await sharing.load_dataset(node, config)
        consumer = Department.of(node, config.consumer, config)
        calls = 0
        stopping = False
        async with sharing.single_key_query(consumer, keys, config) as query:

            async def caller() -> None:
                nonlocal calls
                while not stopping:
                    await query()
                    calls += 1

            async with asyncio.TaskGroup() as group:
                for _ in range(config.concurrency):
                    group.create_task(caller())
                await asyncio.sleep(_WARMUP_SECONDS)
                common = ["record", "--pid", str(node.process.pid), "--rate", str(_RATE_HZ)]
                common += ["--duration", str(round(seconds)), "--nonblocking"]
                recorders = [
                    await asyncio.create_subprocess_exec(
                        spy, *common, "--format", form, "--output", str(path),
                        stdout=asyncio.subprocess.DEVNULL,
                        stderr=asyncio.subprocess.PIPE,
                    )
                    for form, path in (("flamegraph", svg), ("raw", collapsed))
                ]  # fmt: skip
                before, started = calls, time.perf_counter()
                outcomes = [await recorder.communicate() for recorder in recorders]
                rate = (calls - before) / (time.perf_counter() - started)
                stopping = True
    for recorder, (_, err) in zip(recorders, outcomes, strict=True):
        if recorder.returncode != 0:
            said = err.decode(errors="replace").strip().splitlines()
            raise RuntimeError(
                f"py-spy failed ({said[-1] if said else recorder.returncode}); it needs root "
                "or kernel.yama.ptrace_scope=0 to read the node's memory"
            )
    samples, threads, own, stages = summarise(collapsed.read_text(encoding="utf-8"))
    return Profile(rate, samples, threads, own, stages, svg, collapsed)


def format_profile(profile: Profile, seconds: float) -> str:
    def share(count: int) -> str:
        return f"{100 * count / max(profile.samples, 1):5.1f}%"

    lines = [
        f"Tongban profile: the node under the audited 1-key query, {seconds:g} s at {_RATE_HZ} Hz",
        f"{'audited queries while sampled':<{LABEL}}{profile.rate:>8,.0f} req/s",
        f"{'samples (all threads)':<{LABEL}}{profile.samples:>8,}",
        "",
        "by thread (its root frame):",
        *(f"  {share(n)}  {name}" for name, n in profile.threads),
        "",
        "under each stage of the call (a sample may be under several):",
        *(f"  {share(n)}  {label}" for label, n in profile.stages),
        "",
        "functions running when sampled (their own time):",
        *(f"  {share(n)}  {name}" for name, n in profile.own),
        "",
        f"flame graph: {profile.svg}",
        f"collapsed stacks: {profile.collapsed}",
    ]
    return "\n".join(lines)


def _seconds() -> float | None:
    text = os.environ.get("BENCH_PROFILE_SECONDS", "10")
    try:
        seconds = float(text)
    except ValueError:
        return None
    return seconds if 1 <= seconds <= 600 else None


def main() -> int:
    seconds = _seconds()
    if seconds is None:
        print("bench: BENCH_PROFILE_SECONDS takes seconds from 1 to 600", file=sys.stderr)
        return 2
    svg = Path(os.environ.get("BENCH_PROFILE_SVG") or _DEFAULT_SVG)
    config = Config(records=20_000)
    try:
        profile = asyncio.run(run(config, seconds, svg))
    except KeyboardInterrupt:
        print("interrupted; the node stopped", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"bench profile failed: {e}", file=sys.stderr)
        return 1
    print(format_profile(profile, seconds))
    return 0
