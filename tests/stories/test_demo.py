"""``tongban demo``: every step of the story implemented so far passes, as a user sees it."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.cli_helpers import cli_env, tongban
from tongban.exchange.db.embedded import temp_root


def test_demo_runs_every_step() -> None:
    root = temp_root("tongban-test-demo-")  # as root, PostgreSQL runs as another user
    try:
        result = tongban("demo", "--json", "--data-dir", str(root / "demo"), env=cli_env())
        lines = result.lines()
        assert result.code == 0, result.stdout + result.stderr
        steps = [line for line in lines if line["step"] != "end"]
        assert [s["step"] for s in steps] == [
            "0.1",
            "0.2",
            "0.3",
            "0.4",
            "0.5",
            "0.6",
            "1",
            "1.1",
            "2",
            "3",
            "3.1",
            "4",
            "4.1",
            "5",
            "6",
            "7",
            "8",
            "9",
            "10",
            "11",
        ]
        assert all(s["ok"] for s in steps), steps
        package = next(s for s in steps if s["step"] == "9")
        assert package["submitted_after_registration"] == [0, 0, 0]
        deferral = next(s for s in steps if s["step"] == "10")
        assert (deferral["online"], deferral["offline"]) == ("suspended", "suspended")
        assert lines[-1] == {"step": "end", "ok": True, "data_dir": str(root / "demo")}
        assert (root / "demo" / "bundles" / "samr" / "bundle.json").exists()
        assert next(s for s in steps if s["step"] == "0.5")["reason"] == "DEPARTMENT_SUSPENDED"
        # The issued licences stay in the data dir, for the operator to list.
        listed = tongban("licence", "list", "--data-dir", str(root / "demo"), "--json")
        assert listed.code == 0, listed.stdout + listed.stderr
        # The restaurant's business licence, its revoked food permit, the business
        # licence 设立登记 issued in the 企业开办 package, and the permit suspended when its
        # deferred site plan never came.
        assert sorted(item["status"] for item in listed.json()["licences"]) == [
            "revoked",
            "suspended",
            "valid",
            "valid",
        ]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_demo_refuses_a_used_data_dir(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")
    result = tongban("demo", "--json", "--data-dir", str(tmp_path), env=cli_env())
    assert result.code == 1
    assert result.json()["reason"] == "INVALID_ARGUMENT"
