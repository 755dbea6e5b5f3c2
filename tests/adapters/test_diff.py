"""snapshot_diff, pure: only inserts, changes and deletes; mass deletion needs consent."""

from __future__ import annotations

import pytest

from tongban.adapters import SnapshotShrank
from tongban.adapters.diff import ChangeKind, check_delete_ratio, classify, diff_snapshot


def test_only_differences_come_out() -> None:
    stored = {"a": "1", "b": "2", "c": "3"}
    current = {"a": "1", "b": "2b", "d": "4"}
    diff = diff_snapshot(current, stored)
    assert (diff.inserts, diff.changes, diff.deletes) == (("d",), ("b",), ("c",))
    assert diff_snapshot(stored, stored).empty


def test_classify() -> None:
    assert classify("x", None) is ChangeKind.INSERT
    assert classify("x", "y") is ChangeKind.CHANGE
    assert classify("x", "x") is None


def test_a_shrunken_snapshot_stops_instead_of_deleting() -> None:
    check_delete_ratio("s", 1, 4, 0.5)
    check_delete_ratio("s", 4, 4, 1.0)
    with pytest.raises(SnapshotShrank) as error:
        check_delete_ratio("s", 3, 4, 0.5)
    assert error.value.metadata == {
        "stream": "s",
        "deletes": "3",
        "published": "4",
        "max_delete_ratio": "0.5",
    }
