"""The state file: durable settings, one process at a time, all-or-nothing commits."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from tongban.adapters import (
    CursorCheckpoint,
    Op,
    SnapshotCheckpoint,
    StateLocked,
    StateStore,
    StateStoreUnusable,
    WriteCommand,
)
from tongban.adapters.state import BatchCommit, NewReject
from tongban.signing.clock import FixedClock


def test_the_file_is_wal_with_full_sync_and_survives_reopening(
    tmp_path: Path, clock: FixedClock
) -> None:
    path = tmp_path / "adapter" / "state.sqlite"
    with StateStore.open(path, clock=clock) as state:
        state.commit(
            BatchCommit(
                stream="s",
                checkpoint=CursorCheckpoint(Decimal("10.5"), "a"),
                fingerprints={"k1": "f1", "k2": "f2"},
                rejects=[NewReject("src:1", "t id=1", {"x": Decimal("1")}, "BAD_DATE", "d", "m")],
            )
        )
        state.commit(
            BatchCommit(
                stream="snap",
                checkpoint=SnapshotCheckpoint(3, "f.csv:abc", 20, complete=False),
            )
        )
        mode = state._conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = state._conn.execute("PRAGMA synchronous").fetchone()[0]
        assert (mode, sync) == ("wal", 2)  # 2 is FULL

    with StateStore.open(path, clock=clock) as state:
        assert state.checkpoint("s") == CursorCheckpoint(Decimal("10.5"), "a")
        assert state.checkpoint("snap") == SnapshotCheckpoint(3, "f.csv:abc", 20, False)
        assert state.checkpoint("other") is None
        assert state.fingerprints("s", ["k1", "k2", "k3"]) == {"k1": "f1", "k2": "f2"}
        (reject,) = state.list_rejects("s")
        assert (reject.row, reject.first_seen) == ({"x": Decimal("1")}, clock.now())


def test_a_second_process_cannot_open_the_same_state(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    with StateStore.open(path):
        with pytest.raises(StateLocked) as error:
            StateStore.open(path)
        assert error.value.reason == "STATE_LOCKED"
    with StateStore.open(path):
        pass


def test_a_commit_is_all_or_nothing(tmp_path: Path) -> None:
    with StateStore.open(tmp_path / "state.sqlite") as state:
        bad = NewReject("r", "here", {}, "X", None, "m", source_key=object())  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            state.commit(
                BatchCommit(
                    stream="s",
                    checkpoint=CursorCheckpoint(5, 5),
                    fingerprints={"k": "f"},
                    rejects=[bad],
                )
            )
        assert state.checkpoint("s") is None
        assert state.fingerprints("s", ["k"]) == {}


def test_files_it_cannot_use_are_refused(tmp_path: Path) -> None:
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("not a database" * 100)
    with pytest.raises(StateStoreUnusable):
        StateStore.open(not_sqlite)

    newer = tmp_path / "newer.sqlite"
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StateStoreUnusable) as error:
        StateStore.open(newer)
    assert "newer tongban" in error.value.message


def test_applied_commands_sequences_and_pruning(tmp_path: Path, clock: FixedClock) -> None:
    with StateStore.open(tmp_path / "state.sqlite", clock=clock) as state:
        assert [state.next_sequence("w"), state.next_sequence("w")] == [1, 2]
        command = WriteCommand("e1", "a.b", "k", Op.UPSERT, {"v": 1}, version=4)
        state.record_commands(applied=[command])
        assert state.applied(["e1", "e2"]) == {"e1"}
        assert state.key_versions("a.b", ["k"]) == {"k": 4}
        clock.advance(timedelta(days=30))
        assert state.prune_applied(clock.now() - timedelta(days=7)) == 1
        assert state.applied(["e1"]) == set()
        assert state.key_versions("a.b", ["k"]) == {"k": 4}  # versions outlive pruning
