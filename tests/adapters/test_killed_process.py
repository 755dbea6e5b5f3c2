"""The adapter process killed with SIGKILL mid-sync, then started again: every row is
published, and only a batch the dead process had published but not committed twice,
identically."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.adapters.test_sqlite_source import MAPPING
from tests.conftest import uscc

ROOT = Path(__file__).resolve().parents[2]
ROWS = 9


def _child(*args: str) -> int:
    done = subprocess.run(
        [sys.executable, "-m", "tests.adapters.crash_child", *args],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    return done.returncode


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kill_at", "where", "resent"), [(3, "after_publish", 2), (3, "before_publish", 0)]
)
def test_killed_mid_sync_resumes_without_loss(
    tmp_path: Path, kill_at: int, where: str, resent: int
) -> None:
    conn = sqlite3.connect(tmp_path / "legacy.db")
    conn.execute(
        "CREATE TABLE qydj (id INTEGER PRIMARY KEY, tyshxydm TEXT, qymc VARCHAR(200), "
        "clrq TEXT, zczb DECIMAL(18,2), gxsj TEXT)"
    )
    conn.executemany(
        "INSERT INTO qydj VALUES (?, ?, ?, '20200102', '1', '2026-01-05 10:00:00')",
        [(n, uscc(n), f"企业{n}") for n in range(1, ROWS + 1)],
    )
    conn.commit()
    conn.close()
    (tmp_path / "mapping.yaml").write_text(MAPPING.format(look_back=0, mode="cursor"), "utf-8")
    args = [str(tmp_path / "mapping.yaml"), str(tmp_path / "state.sqlite"), str(tmp_path / "log")]

    assert _child(*args, str(kill_at), where) == -9  # killed
    assert _child(*args, "0", where) == 0  # started again, ran to the end

    lines = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
    keys = [line["key"] for line in lines]
    assert sorted(set(keys)) == sorted(uscc(n) for n in range(1, ROWS + 1))
    assert len(keys) == ROWS + resent
    restart = next(i for i in range(1, len(lines)) if lines[i]["call"] < lines[i - 1]["call"])
    before, after = lines[:restart], lines[restart:]
    assert before[-1]["call"] == (kill_at if where == "after_publish" else kill_at - 1)
    if resent:
        killed = [(x["key"], x["id"], x["fingerprint"]) for x in before if x["call"] == kill_at]
        first = [(x["key"], x["id"], x["fingerprint"]) for x in after if x["call"] == 1]
        assert first == killed  # the same batch, the same ids and fingerprints
