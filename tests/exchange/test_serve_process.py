"""``tongban serve`` as a user runs it: a process on embedded PostgreSQL, stopped by signal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.cli_helpers import TONGBAN, cli_env, tongban
from tongban.client import Bundle, ExchangeClient
from tongban.exchange.db.embedded import temp_root


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Outside pytest's 0700 tmp root: as root, PostgreSQL runs as another user.
    root = temp_root("tongban-test-serve-")
    yield root / "data"
    shutil.rmtree(root, ignore_errors=True)


def _postgres_for(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if (
            proc.info["status"] != psutil.STATUS_ZOMBIE
            and any("postgres" in part for part in cmdline[:1])
            and any(str(data_dir) in part for part in cmdline)
        ):
            found.append(proc)
    return found


class Served:
    def __init__(
        self,
        data_dir: Path,
        *extra: str,
        sig: int = signal.SIGTERM,
        env: dict[str, str] | None = None,
    ) -> None:
        """``tongban serve`` on ``data_dir`` with options ``extra`` and ``TONGBAN_*``
        variables ``env``; returns once it printed its ready line."""
        self.data_dir = data_dir
        self.sig = sig
        self.proc = subprocess.Popen(
            [
                TONGBAN,
                "serve",
                "--json",
                "--data-dir",
                str(data_dir),
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--workers",
                "1",  # one process, whose pid the tests signal (unless extra says more)
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=cli_env(TONGBAN_SHUTDOWN_GRACE_SECONDS="2", **(env or {})),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "serve exited before it was ready"
        self.ready: dict[str, Any] = json.loads(line)

    def stop(self) -> tuple[int, list[dict[str, Any]]]:
        self.proc.send_signal(self.sig)
        out, _ = self.proc.communicate(timeout=60)
        return self.proc.returncode, [json.loads(x) for x in out.splitlines() if x.strip()]


def test_serve_answers_and_exits_cleanly_on_sigterm(data_dir: Path) -> None:
    served = Served(data_dir, "--demo")
    try:
        assert served.ready["event"] == "ready"
        assert "samr" in served.ready["enrolled"]
        http = served.ready["http"]
        with urllib.request.urlopen(f"http://{http}/healthz", timeout=10) as response:
            assert response.status == 200
            assert json.load(response)["status"] == "ok"
        assert _postgres_for(data_dir), "embedded PostgreSQL runs in the data dir"
    finally:
        code, lines = served.stop()
    assert code == 0
    assert lines[-1]["event"] == "stopped"
    deadline = time.monotonic() + 10
    while _postgres_for(data_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _postgres_for(data_dir) == [], "no postgres process is left behind"


def test_serve_runs_on_uvloop_unless_told_asyncio(data_dir: Path) -> None:
    served = Served(data_dir)
    try:
        assert served.ready["event_loop"] == "uvloop"
    finally:
        assert served.stop()[0] == 0
    served = Served(data_dir, env={"TONGBAN_EVENT_LOOP": "asyncio"})
    try:
        assert served.ready["event_loop"] == "asyncio"
        # The standard library's loop serves the same node: an authenticated call answers.
        http = served.ready["http"]
        with urllib.request.urlopen(f"http://{http}/healthz", timeout=10) as response:
            assert json.load(response)["status"] == "ok"
    finally:
        assert served.stop()[0] == 0


def _refused_at_start(data_dir: Path, workers: str, **env: str) -> Any:
    """Run ``serve --workers N --json`` with ``env``; check it stops at start with exit 1,
    no traceback and no PostgreSQL left running (what it started, it stopped); return
    the refusal it printed."""
    result = tongban(
        "serve", "--workers", workers, "--data-dir", str(data_dir), "--json",
        env=cli_env(TONGBAN_KEY_PASSPHRASE="serve test", **env),
    )  # fmt: skip
    assert result.code == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert _postgres_for(data_dir) == []
    return result.json()


def test_an_unknown_event_loop_is_refused_at_start(data_dir: Path) -> None:
    refused = _refused_at_start(data_dir, "1", TONGBAN_EVENT_LOOP="tokio")
    assert refused["reason"] == "CONFIG_INVALID"
    assert "TONGBAN_EVENT_LOOP" in refused["message"]


def test_sigint_also_stops_cleanly(data_dir: Path) -> None:
    served = Served(data_dir, sig=signal.SIGINT)
    code, _ = served.stop()
    assert code == 0
    assert _postgres_for(data_dir) == []


async def test_restart_keeps_departments_and_the_cli_joins_a_running_node(
    data_dir: Path,
) -> None:
    served = Served(data_dir, "--demo")
    try:
        # A CLI command while the node runs joins its PostgreSQL and leaves it running.
        env = cli_env()
        added = tongban(
            "dept",
            "add",
            "extra",
            "--name",
            "新部门",
            "--level",
            "county",
            "--data-dir",
            str(data_dir),
            "--json",
            env=env,
        )
        assert added.code == 0, added.stdout
        assert _postgres_for(data_dir)
        async with ExchangeClient(
            Bundle.load(Path(added.json()["bundle"])), target=served.ready["grpc"]
        ) as client:
            assert (await client.who_am_i()).department == "extra"
    finally:
        assert served.stop()[0] == 0

    again = Served(data_dir, "--demo")
    try:
        assert again.ready["enrolled"] == [], "the demo departments are still registered"
        async with ExchangeClient(
            Bundle.load(data_dir / "bundles" / "samr"), target=again.ready["grpc"]
        ) as client:
            assert (await client.who_am_i()).department == "samr"
    finally:
        assert again.stop()[0] == 0
    # With no node running, the CLI starts PostgreSQL itself and stops it afterwards.
    listed = tongban("dept", "list", "--data-dir", str(data_dir), "--json", env=cli_env())
    codes = [d["code"] for d in listed.json()["departments"]]
    assert "extra" in codes
    assert "samr" in codes
    assert _postgres_for(data_dir) == []


async def test_workers_share_the_port_restart_when_killed_and_stop_together(
    data_dir: Path,
) -> None:
    served = Served(data_dir, "--demo", "--workers", "2")
    try:
        assert served.ready["event"] == "ready"
        assert served.ready["event_loop"] == "uvloop"  # the supervisor; its workers alike
        first, second = served.ready["workers"]
        supervisor = psutil.Process(served.proc.pid)
        assert {c.pid for c in supervisor.children()} >= {first, second}
        bundle = Bundle.load(data_dir / "bundles" / "tax")

        async def answered_by() -> str:
            async with ExchangeClient(bundle, target=served.ready["grpc"]) as client:
                return (await client.who_am_i()).node

        # New connections are spread over the workers by the kernel (SO_REUSEPORT).
        seen = {await answered_by() for _ in range(40)}
        assert seen == {"node-1-w1", "node-1-w2"}
        # A worker that dies is started again; the node keeps answering meanwhile.
        psutil.Process(first).kill()
        deadline = time.monotonic() + 60
        while _live_children(supervisor) - {first, second} == set():
            assert time.monotonic() < deadline, "the killed worker was not started again"
            await asyncio.sleep(0.2)
        # Meanwhile the other worker answers; once the new one listens, both do again.
        seen = set()
        while seen != {"node-1-w1", "node-1-w2"}:
            assert time.monotonic() < deadline, f"only {seen} answered after the restart"
            seen.add(await answered_by())
    finally:
        code, lines = served.stop()
    assert code == 0
    assert lines[-1]["event"] == "stopped"
    assert _live_children(supervisor) == set() if supervisor.is_running() else True
    deadline = time.monotonic() + 10
    while _postgres_for(data_dir) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert _postgres_for(data_dir) == []


def _live_children(process: psutil.Process) -> set[int]:
    live = set()
    for child in process.children():
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE:
                live.add(child.pid)
    return live


def test_workers_take_a_count_from_1_to_64(data_dir: Path) -> None:
    for bad in ("0", "65", "two"):
        result = tongban("serve", "--workers", bad, "--data-dir", str(data_dir))
        assert result.code == 2
        assert "--workers takes 1 to 64" in result.stderr


def test_more_workers_than_the_database_has_connections_for_are_refused(
    data_dir: Path,
) -> None:
    # 64 workers of 10 + 2 connections each (the pool and the log writer's two) would need
    # 768; the embedded server takes 200.
    refused = _refused_at_start(data_dir, "64", TONGBAN_DB_POOL_SIZE="10")
    assert refused["reason"] == "TOO_MANY_WORKERS"
    assert "768 database connections" in refused["message"]


def test_the_default_is_one_worker_per_usable_core(data_dir: Path) -> None:
    cores = min(len(os.sched_getaffinity(0)), 64)
    proc = subprocess.Popen(
        [TONGBAN, "serve", "--json", "--data-dir", str(data_dir),
         "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=cli_env(TONGBAN_SHUTDOWN_GRACE_SECONDS="2"),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        # One core: one process, no supervisor; more: a supervisor and a worker per core.
        assert len(ready.get("workers", [proc.pid])) == cores
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)  # reads the rest and closes the pipe
    assert proc.returncode == 0
    assert _postgres_for(data_dir) == []
