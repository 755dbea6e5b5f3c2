"""The compound cursor, pure: no row missed or repeated within a pass, whatever the page
boundaries and however many rows share a cursor value."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tongban.adapters import CursorCheckpoint
from tongban.adapters.cursor import (
    CursorPager,
    CursorUnusable,
    PageRequest,
    ReadFrom,
    look_back_start,
)

Row = tuple[int, int]  # (cursor, key)


def _position(row: Row) -> CursorCheckpoint:
    return CursorCheckpoint(row[0], row[1])


def _page(table: list[Row], request: PageRequest, *, compound: bool) -> list[Row]:
    """What a source answers: rows after ``request.start`` in (cursor, key) order."""
    rows = sorted(table)
    start = request.start
    if start is not None:
        if start.key is None:
            rows = [r for r in rows if r[0] >= start.cursor]  # type: ignore[operator]
        else:
            assert compound, "a non-compound source is only asked cursor >= x"
            rows = [r for r in rows if r > (start.cursor, start.key)]
    return rows[: request.limit]


def _pass(
    table: list[Row],
    checkpoint: CursorCheckpoint | None,
    *,
    page_size: int,
    compound: bool,
    look_back: int = 0,
) -> tuple[list[Row], CursorCheckpoint | None, int]:
    pager: CursorPager[Row] = CursorPager(
        checkpoint, position=_position, look_back=look_back, page_size=page_size, compound=compound
    )
    emitted: list[Row] = []
    pages = 0
    while True:
        request = pager.request()
        result = pager.accept(_page(table, request, compound=compound))
        pages += 1
        emitted += result.rows
        if result.done:
            return emitted, result.checkpoint, pages


@settings(max_examples=300, deadline=None)
@given(
    cursors=st.lists(st.integers(0, 4), min_size=0, max_size=30),
    page_size=st.integers(1, 5),
    compound=st.booleans(),
)
def test_one_pass_emits_every_row_once_in_order(
    cursors: list[int], page_size: int, compound: bool
) -> None:
    table = [(cursor, key) for key, cursor in enumerate(cursors)]
    emitted, checkpoint, _ = _pass(table, None, page_size=page_size, compound=compound)
    assert emitted == sorted(table)
    assert checkpoint == (_position(max(table)) if table else None)


@settings(max_examples=200, deadline=None)
@given(
    cursors=st.lists(st.integers(0, 6), min_size=1, max_size=20),
    split=st.integers(0, 20),
    page_size=st.integers(1, 4),
)
def test_resuming_from_a_checkpoint_continues_exactly(
    cursors: list[int], split: int, page_size: int
) -> None:
    table = sorted((cursor, key) for key, cursor in enumerate(cursors))
    done = table[: min(split, len(table))]
    checkpoint = _position(done[-1]) if done else None
    emitted, _, _ = _pass(table, checkpoint, page_size=page_size, compound=True)
    assert done + emitted == table


def test_five_equal_timestamps_across_pages_of_two() -> None:
    at = datetime(2026, 1, 5, 10, 0)  # noqa: DTZ001 - legacy columns hold naive local time
    table = [(at, key) for key in range(1, 6)]
    pager: CursorPager[tuple[datetime, int]] = CursorPager(
        None,
        position=lambda r: CursorCheckpoint(r[0], r[1]),
        look_back=0,
        page_size=2,
    )
    checkpoints = []
    emitted: list[tuple[datetime, int]] = []
    while True:
        request = pager.request()
        rows = [
            r
            for r in table
            if request.start is None or (r[0], r[1]) > (request.start.cursor, request.start.key)
        ][: request.limit]
        result = pager.accept(rows)
        emitted += result.rows
        checkpoints.append(result.checkpoint)
        if result.done:
            break
    assert emitted == table
    # The checkpoint falls inside the equal group, but (cursor, key) makes it exact.
    assert checkpoints == [
        CursorCheckpoint(at, 2),
        CursorCheckpoint(at, 4),
        CursorCheckpoint(at, 5),
    ]


def test_a_source_without_compound_cursors_cuts_only_between_groups() -> None:
    table = [(1, 1), (2, 2), (2, 3), (2, 4), (2, 5), (3, 6)]
    emitted, checkpoint, pages = _pass(table, None, page_size=2, compound=False)
    assert emitted == table
    assert checkpoint == CursorCheckpoint(3, 6)
    # (1,1) then the group of four twos, which needed pages of 2, 4 and 8.
    assert pages > 3


def test_look_back_rereads_the_window_so_a_late_commit_is_seen() -> None:
    table = [(10, 1), (20, 2), (30, 3)]
    _, checkpoint, _ = _pass(table, None, page_size=10, compound=True)
    assert checkpoint == CursorCheckpoint(30, 3)
    table.append((25, 4))  # committed late, with an older timestamp
    strict, _, _ = _pass(table, checkpoint, page_size=10, compound=True)
    assert strict == []  # a strict cursor never sees it
    emitted, after, _ = _pass(table, checkpoint, page_size=10, compound=True, look_back=10)
    assert emitted == [(20, 2), (25, 4), (30, 3)]  # the window, deduplicated by sync
    assert after == CursorCheckpoint(30, 3)  # never backwards


def test_look_back_start_by_cursor_type() -> None:
    at = datetime(2026, 1, 5, 10, 0, 30)  # noqa: DTZ001
    assert look_back_start(at, 60) == at - timedelta(seconds=60)
    assert look_back_start(100, 7) == 93
    assert look_back_start("2026-01-05 10:00:30", 60) == "2026-01-05 09:59:30"
    assert look_back_start("2026-01-05T10:00:30.250000", 1) == "2026-01-05T10:00:29.250000"
    with pytest.raises(CursorUnusable) as error:
        look_back_start("batch-7", 60)
    assert error.value.reason == "CURSOR_UNUSABLE"


def test_rows_out_of_order_are_refused() -> None:
    pager: CursorPager[Row] = CursorPager(None, position=_position, look_back=0, page_size=5)
    pager.request()
    with pytest.raises(CursorUnusable):
        pager.accept([(2, 1), (1, 2)])


def test_the_first_request_of_a_pass() -> None:
    fresh: CursorPager[Row] = CursorPager(None, position=_position, look_back=5, page_size=3)
    assert fresh.request() == PageRequest(None, 3)
    exact: CursorPager[Row] = CursorPager(
        CursorCheckpoint(9, 4), position=_position, look_back=0, page_size=3
    )
    assert exact.request() == PageRequest(ReadFrom(9, 4), 3)
    window: CursorPager[Row] = CursorPager(
        CursorCheckpoint(9, 4), position=_position, look_back=5, page_size=3
    )
    assert window.request() == PageRequest(ReadFrom(4), 3)
