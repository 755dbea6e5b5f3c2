"""A node killed with SIGKILL in the middle of group commits (and of integrating them into
the tree) loses nothing it acknowledged and leaves no gap in the log."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_helpers import TONGBAN, atongban, cli_env
from tests.stories.restaurant import OWNER, OWNER_ID, PERSON
from tongban.client import Bundle, ExchangeClient, ExchangeError
from tongban.exchange.audit.integrator import Integrator
from tongban.exchange.db.database import Database
from tongban.exchange.db.embedded import temp_root
from tongban.exchange.settings import load_settings


@pytest.fixture
def data_dir() -> Iterator[Path]:
    root = temp_root("tongban-test-kill-")  # as root, PostgreSQL runs as another user
    yield root / "data"
    shutil.rmtree(root, ignore_errors=True)


async def test_sigkill_mid_batch_loses_no_acknowledged_entry(data_dir: Path) -> None:
    env = cli_env(TONGBAN_KEY_PASSPHRASE="kill test")
    proc = await asyncio.create_subprocess_exec(
        TONGBAN, "serve", "--demo", "--json", "--workers", "1", "--data-dir", str(data_dir),
        "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready = json.loads(await proc.stdout.readline())
        target = ready["grpc"]
        async with ExchangeClient(
            Bundle.load(data_dir / "bundles" / "police"), target=target
        ) as police:
            await police.register_dataset(PERSON, publish=True)
            await police.publish_records("police.person", [(OWNER_ID, OWNER)])

        acknowledged: list[str] = []
        async with ExchangeClient(
            Bundle.load(data_dir / "bundles" / "police"), target=target, timeout=5
        ) as client:

            async def worker(w: int) -> None:
                for n in range(100_000):
                    case = f"K-{w}-{n}"
                    try:
                        await client.query(
                            "police.person",
                            [OWNER_ID],
                            fields=["name"],
                            purpose="核查",
                            case_id=case,
                        )
                    except ExchangeError:
                        return  # the node is gone
                    acknowledged.append(case)

            workers = [asyncio.create_task(worker(w)) for w in range(32)]
            await asyncio.sleep(1.5)
            proc.send_signal(signal.SIGKILL)  # in the middle of whatever batch is in flight
            await asyncio.wait_for(asyncio.gather(*workers), timeout=60)
        assert len(acknowledged) > 100, "the load ran before the kill"
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), 30)

    # The node's PostgreSQL survived it; look at what is stored. The node was the log's
    # integrator too, killed wherever it was: the entries it sequenced run without a gap
    # to the sequence's end, the tree covers a prefix of them, and the next integrator
    # (here, one with no node running) takes the tree up to every one.
    settings = load_settings(data_dir=data_dir, key_passphrase="kill test")
    async with await Database.open(settings, pool_size=2) as db:
        indices = [r["idx"] for r in await db.pool.fetch("SELECT idx FROM access_log ORDER BY idx")]
        assert indices == list(range(len(indices))), "no gap"
        assert await db.pool.fetchval("SELECT next FROM log_sequence") == len(indices)
        assert await db.pool.fetchval("SELECT size FROM log_state") <= len(indices)
        assert await Integrator(db.pool).catch_up() == len(indices)
        head = await db.pool.fetchrow("SELECT size FROM log_state")
        assert head is not None
        assert indices == list(range(head["size"])), "no gap, and the head counts every entry"
        stored = {r["case_id"] for r in await db.pool.fetch("SELECT case_id FROM access_log")}
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} acknowledged queries have no log entry"

    # And the log verifies end to end (signing a checkpoint over what the dead node left).
    verified = await atongban("audit", "verify", "--data-dir", str(data_dir), "--json", env=env)
    assert verified.code == 0, verified.stdout + verified.stderr
    assert verified.json()["size"] == head["size"]


async def test_a_worker_killed_mid_batch_loses_nothing_and_the_others_go_on(
    data_dir: Path,
) -> None:
    env = cli_env(TONGBAN_KEY_PASSPHRASE="kill test", TONGBAN_SHUTDOWN_GRACE_SECONDS="2")
    proc = await asyncio.create_subprocess_exec(
        TONGBAN, "serve", "--demo", "--json", "--workers", "2", "--data-dir", str(data_dir),
        "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env,
    )  # fmt: skip
    acknowledged: list[str] = []
    failed: list[str] = []
    try:
        assert proc.stdout is not None
        ready = json.loads(await proc.stdout.readline())
        target = ready["grpc"]
        bundle = Bundle.load(data_dir / "bundles" / "police")
        async with ExchangeClient(bundle, target=target) as police:
            await police.register_dataset(PERSON, publish=True)
            await police.publish_records("police.person", [(OWNER_ID, OWNER)])
        stop = asyncio.Event()

        async def load(w: int) -> None:
            # A client of its own: its connection lands on either worker.
            async with ExchangeClient(bundle, target=target, timeout=5) as client:
                for n in range(100_000):
                    if stop.is_set():
                        return
                    case = f"W-{w}-{n}"
                    try:
                        await client.query(
                            "police.person", [OWNER_ID], fields=["name"], purpose="核查",
                            case_id=case,
                        )  # fmt: skip
                    except ExchangeError as e:
                        failed.append(e.reason)
                        return  # its worker is gone
                    acknowledged.append(case)

        tasks = [asyncio.create_task(load(w)) for w in range(16)]
        await asyncio.sleep(1.5)
        os.kill(ready["workers"][0], signal.SIGKILL)  # mid-batch on that worker
        killed_at = len(acknowledged)
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
        assert len(acknowledged) > killed_at, "the other worker kept answering"
        assert set(failed) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, failed
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 60)
        assert proc.returncode == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 30)

    settings = load_settings(data_dir=data_dir, key_passphrase="kill test")
    async with await Database.open(settings, pool_size=2) as db:
        head = await db.pool.fetchrow("SELECT size FROM log_state")
        assert head is not None
        indices = [r["idx"] for r in await db.pool.fetch("SELECT idx FROM access_log ORDER BY idx")]
        assert indices == list(range(head["size"])), "no gap, and the head counts every entry"
        stored = {r["case_id"] for r in await db.pool.fetch("SELECT case_id FROM access_log")}
        nodes = {r["node"] for r in await db.pool.fetch("SELECT DISTINCT node FROM access_log")}
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} acknowledged queries have no log entry"
    assert {"node-1-w1", "node-1-w2"} <= nodes
    verified = await atongban("audit", "verify", "--data-dir", str(data_dir), "--json", env=env)
    assert verified.code == 0, verified.stdout + verified.stderr
