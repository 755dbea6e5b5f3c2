"""What a witness remembers: per log, the latest checkpoint it cosigned.

Kept in one SQLite file (``DATA_DIR/witness/state.sqlite3``), not in the node's
PostgreSQL, so that a witness runs anywhere without the node's database. SQLite gives
the two properties the protocol needs:

- **Atomic check-and-set.** :meth:`WitnessState.advance` reads the stored size and root,
  runs the caller's check and writes the new checkpoint inside one ``BEGIN IMMEDIATE``
  transaction, which takes SQLite's write lock before the read: two requests, from two
  threads or two witness processes on the same file, cannot both pass the check against
  the same old state (tlog-witness, "must be performed atomically").
- **Durable before the answer.** WAL journal with ``synchronous=FULL``: a commit is on
  disk when it returns, so a crash or a kill -9 after it cannot roll the witness back to
  an older checkpoint and let it cosign a fork of what it already cosigned; a crash
  before it leaves the old state, and nothing was cosigned.

Checkpoints the witness refused although their signature was valid (a split view, a
proof that does not verify) are kept too (``refusal``, the newest 1,000): they may be
evidence that the log misbehaved.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from tongban.errors import TongbanError
from tongban.exchange.audit.merkle import EMPTY_ROOT

__all__ = ["LogRecord", "Refusal", "WitnessState", "WitnessStateUnusable"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cosigned (
    origin      TEXT PRIMARY KEY,
    size        TEXT NOT NULL,   -- decimal: tree sizes go up to 2**64 - 1
    root        BLOB NOT NULL CHECK (length(root) = 32),
    note        TEXT NOT NULL,   -- the checkpoint text cosigned (no signature lines)
    cosigned_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS refusal (
    id          INTEGER PRIMARY KEY,
    origin      TEXT NOT NULL,
    received_at TEXT NOT NULL,
    old_size    TEXT NOT NULL,
    reason      TEXT NOT NULL,
    note        TEXT NOT NULL    -- the signed checkpoint as received
);
"""
_KEEP_REFUSALS = 1000


class WitnessStateUnusable(TongbanError):
    """The witness's state file cannot be opened, read or written."""

    reason = "WITNESS_STATE_UNUSABLE"
    status = "UNAVAILABLE"


@dataclass(frozen=True)
class LogRecord:
    """The latest checkpoint the witness cosigned for one log."""

    origin: str
    size: int
    root: bytes
    note: str
    cosigned_at: datetime


@dataclass(frozen=True)
class Refusal:
    """A validly signed checkpoint the witness refused to cosign."""

    origin: str
    received_at: datetime
    old_size: int
    reason: str
    note: str


class WitnessState:
    """The witness's state file; one connection, used from any thread under a lock."""

    def __init__(self, path: Path) -> None:
        """Open (creating if needed) the state file at ``path``; raises
        WitnessStateUnusable."""
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout = 10000")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise WitnessStateUnusable(
                f"Cannot open the witness state {path}: {e}; check the directory's owner and "
                "free space."
            ) from e

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> WitnessState:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def latest(self, origin: str) -> LogRecord | None:
        """The latest checkpoint cosigned for ``origin``, or None if none was."""
        with self._lock:
            row = self._read(
                "SELECT origin, size, root, note, cosigned_at FROM cosigned WHERE origin = ?",
                (origin,),
            )
        return None if not row else _record(row[0])

    def records(self) -> list[LogRecord]:
        """The latest cosigned checkpoint of every log, by origin."""
        with self._lock:
            rows = self._read(
                "SELECT origin, size, root, note, cosigned_at FROM cosigned ORDER BY origin", ()
            )
        return [_record(row) for row in rows]

    def refusals(self, limit: int = 100) -> list[Refusal]:
        """The newest refusals kept as evidence, newest first."""
        with self._lock:
            rows = self._read(
                "SELECT origin, received_at, old_size, reason, note FROM refusal"
                " ORDER BY id DESC LIMIT ?",
                (limit,),
            )
        return [Refusal(r[0], datetime.fromisoformat(r[1]), int(r[2]), r[3], r[4]) for r in rows]

    def advance(
        self,
        origin: str,
        check: Callable[[int, bytes], None],
        *,
        size: int,
        root: bytes,
        note: str,
        at: datetime,
    ) -> None:
        """Atomically: call ``check(stored size, stored root)`` (0 and the empty tree's
        root for a log never cosigned) and, if it returns, record ``size``, ``root`` and
        ``note`` as the latest cosigned checkpoint of ``origin``; durable on return.

        Whatever ``check`` raises is raised with nothing written. Raises
        WitnessStateUnusable if the file cannot be read or written.
        """
        with self._lock, self._transaction():
            row = self._db.execute(
                "SELECT size, root FROM cosigned WHERE origin = ?", (origin,)
            ).fetchone()
            stored = (0, EMPTY_ROOT) if row is None else (int(row[0]), bytes(row[1]))
            check(*stored)
            self._db.execute(
                "INSERT INTO cosigned (origin, size, root, note, cosigned_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (origin) DO UPDATE SET"
                " size = excluded.size, root = excluded.root, note = excluded.note,"
                " cosigned_at = excluded.cosigned_at",
                (origin, str(size), root, note, at.isoformat()),
            )

    def record_refusal(
        self, origin: str, *, old_size: int, reason: str, note: str, at: datetime
    ) -> None:
        """Keep a refused, validly signed checkpoint as evidence (the newest 1,000)."""
        with self._lock, self._transaction():
            self._db.execute(
                "INSERT INTO refusal (origin, received_at, old_size, reason, note)"
                " VALUES (?, ?, ?, ?, ?)",
                (origin, at.isoformat(), str(old_size), reason, note),
            )
            self._db.execute(
                "DELETE FROM refusal WHERE id <= (SELECT max(id) FROM refusal) - ?",
                (_KEEP_REFUSALS,),
            )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction, its lock taken before any read (BEGIN IMMEDIATE);
        committed if the block returns, rolled back if it raises. SQLite errors become
        WitnessStateUnusable."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise self._unusable(e) from e
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException as e:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise self._unusable(e) from e
            raise

    def _read(self, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise self._unusable(e) from e

    def _unusable(self, error: sqlite3.Error) -> WitnessStateUnusable:
        return WitnessStateUnusable(
            f"The witness state {self.path} cannot be used: {error}; check the file, its "
            "directory and free space."
        )


def _record(row: tuple[Any, ...]) -> LogRecord:
    origin, size, root, note, at = row
    return LogRecord(origin, int(size), bytes(root), note, datetime.fromisoformat(at))
