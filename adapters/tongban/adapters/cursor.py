"""The compound cursor: which rows to read next and which checkpoint is safe. Pure.

Polling by ``updated_at > last`` alone loses rows two ways, and this module closes both:

**Equal timestamps across a page boundary.** Ten rows share ``updated_at = 10:00``; a
page of five ends in the middle of them. Checkpointing ``10:00`` and asking for
``updated_at > 10:00`` skips the other five. Rows are therefore ordered by the compound
``(cursor, key)``, which is a total order because the key is unique, and the next page is
``(cursor, key) > (last cursor, last key)``: exact wherever the page ends. A source that
can only filter on the cursor (``cursor >= x``) is paged with ``compound=False``: a page
is then only cut at the end of an equal-cursor group, the unfinished group is read again
from its start, and a page that is one single group is re-requested twice as large.

**Late commits.** A transaction that set ``updated_at = 09:59`` commits at ``10:01``,
after a pass already checkpointed ``10:00``; its row sorts before the checkpoint and a
strict cursor never sees it. Each pass therefore starts ``look_back`` before the
checkpoint (``cursor >= checkpoint - look_back``) and re-reads that window. Rows read
again are not published again: the state store keeps each key's fingerprint and
``sync`` drops rows whose fingerprint it already holds. The checkpoint itself never
moves backwards.

Rows must arrive in ascending (cursor, key) order in the source's ordering, which for
text must be code-point order (PostgreSQL ``COLLATE "C"``, SQLite's default ``BINARY``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Generic, TypeVar

from tongban.adapters.errors import CursorUnusable
from tongban.adapters.sdk import CursorCheckpoint, CursorValue, KeyValue

__all__ = [
    "CursorPager",
    "CursorUnusable",
    "PageRequest",
    "PageResult",
    "ReadFrom",
    "look_back_start",
]

T = TypeVar("T")


@dataclass(frozen=True)
class ReadFrom:
    """Where a page starts.

    With a ``key``: rows with ``(cursor, key) > (self.cursor, self.key)``. Without:
    every row with ``cursor >= self.cursor``.
    """

    cursor: CursorValue
    key: KeyValue | None = None


@dataclass(frozen=True)
class PageRequest:
    """The next page to ask the source for: ``start`` (``None``: from the first row)
    ordered by (cursor, key), at most ``limit`` rows."""

    start: ReadFrom | None
    limit: int


@dataclass(frozen=True)
class PageResult(Generic[T]):
    """What to do with a page: emit ``rows``, then commit ``checkpoint``."""

    rows: list[T]
    checkpoint: CursorCheckpoint | None
    done: bool
    """No more pages in this pass."""


def look_back_start(cursor: CursorValue, look_back: int) -> CursorValue:
    """Return ``cursor`` moved back by ``look_back`` (seconds for time cursors, units for
    numeric ones; whole days, rounded up, for date cursors).

    Text cursors must be ISO 8601 timestamps; the result keeps their separator. Raises
    ``CursorUnusable`` for text that is not, or for a type that cannot be stepped back.
    """
    if look_back == 0:
        return cursor
    if isinstance(cursor, datetime):
        return cursor - timedelta(seconds=look_back)
    if isinstance(cursor, date):
        return cursor - timedelta(days=math.ceil(look_back / 86_400))
    if isinstance(cursor, bool):
        raise _unusable("boolean")
    if isinstance(cursor, int):
        return cursor - look_back
    if isinstance(cursor, Decimal):
        return cursor - look_back
    try:
        parsed = datetime.fromisoformat(cursor)
    except ValueError:
        raise _unusable("text") from None
    separator = "T" if "T" in cursor else " "
    timespec = "microseconds" if "." in cursor[10:] else "seconds"
    return (parsed - timedelta(seconds=look_back)).isoformat(sep=separator, timespec=timespec)


def _unusable(problem: str) -> CursorUnusable:
    if problem == "text":
        message = (
            "The cursor column holds text that is not an ISO 8601 timestamp, so the "
            "look-back window cannot be computed; use a timestamp or counter column, or "
            "set look_back to 0."
        )
    else:
        message = (
            f"The cursor column holds {problem} values, which cannot order changes; use "
            f"a timestamp or counter column."
        )
    return CursorUnusable(message, metadata={"problem": problem})


def _after(a: CursorCheckpoint, b: CursorCheckpoint) -> bool:
    """Whether ``a`` sorts after ``b`` in (cursor, key) order."""
    try:
        if a.cursor != b.cursor:
            return bool(a.cursor > b.cursor)  # type: ignore[operator]
        return bool(a.key > b.key)  # type: ignore[operator]
    except TypeError:
        raise _unusable("mixed") from None


class CursorPager(Generic[T]):
    """Plans one pass over a cursor stream, page by page.

    Call ``request()`` for the next page, fetch it from the source, and hand the rows to
    ``accept()``; repeat until a result says ``done``. ``position`` reads a row's
    (cursor, key).
    """

    def __init__(
        self,
        checkpoint: CursorCheckpoint | None,
        *,
        position: Callable[[T], CursorCheckpoint],
        look_back: int,
        page_size: int,
        compound: bool = True,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self._checkpoint = checkpoint
        self._position = position
        self._page_size = page_size
        self._limit = page_size
        self._compound = compound
        self._done = False
        if checkpoint is None:
            self._start: ReadFrom | None = None
        elif compound and look_back == 0:
            self._start = ReadFrom(checkpoint.cursor, checkpoint.key)
        else:
            self._start = ReadFrom(look_back_start(checkpoint.cursor, look_back))

    @property
    def checkpoint(self) -> CursorCheckpoint | None:
        """The checkpoint after everything accepted so far."""
        return self._checkpoint

    def request(self) -> PageRequest:
        """Return the next page to fetch. Raises ``RuntimeError`` once the pass is done."""
        if self._done:
            raise RuntimeError("the pass is done; start a new pager for the next one")
        return PageRequest(self._start, self._limit)

    def accept(self, rows: Sequence[T]) -> PageResult[T]:
        """Take the page fetched for the last ``request()``; return what to emit.

        Raises ``CursorUnusable`` if the rows are not in ascending (cursor, key) order.
        """
        if self._done:
            raise RuntimeError("the pass is done; start a new pager for the next one")
        positions = [self._position(row) for row in rows]
        for earlier, later in itertools.pairwise(positions):
            if _after(earlier, later):
                raise CursorUnusable(
                    "The source returned rows out of (cursor, key) order; order text "
                    'columns by code point (COLLATE "C").',
                    metadata={"problem": "order"},
                )
        full = len(rows) >= self._limit
        if not rows:
            return self._finish([])
        if not full:
            self._advance(positions[-1])
            return self._finish(list(rows))
        if self._compound:
            self._advance(positions[-1])
            self._start = ReadFrom(positions[-1].cursor, positions[-1].key)
            return PageResult(list(rows), self._checkpoint, done=False)
        # Only whole equal-cursor groups: the last group may go on past this page.
        last_cursor = positions[-1].cursor
        cut = len(rows)
        while cut > 0 and positions[cut - 1].cursor == last_cursor:
            cut -= 1
        if cut == 0:
            # The page is one group: read it whole, with a larger page.
            self._limit *= 2
            return PageResult([], self._checkpoint, done=False)
        self._advance(positions[cut - 1])
        self._start = ReadFrom(last_cursor)
        self._limit = self._page_size
        return PageResult(list(rows[:cut]), self._checkpoint, done=False)

    def _advance(self, position: CursorCheckpoint) -> None:
        if self._checkpoint is None or _after(position, self._checkpoint):
            self._checkpoint = position

    def _finish(self, rows: list[T]) -> PageResult[T]:
        self._done = True
        return PageResult(rows, self._checkpoint, done=True)
