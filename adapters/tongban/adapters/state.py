"""The adapter's durable state: one SQLite file per adapter.

It holds, per stream, the checkpoint, the fingerprint of every published record, the
rejected rows, and the source schema last accepted; and, for write-back, the ids of
applied commands, the latest version applied per key, and the commands the legacy system
refused. The file runs in WAL mode with ``synchronous=FULL``: a committed transaction
survives a power cut. A lock file beside it stops a second adapter process from using it.

**The crash contract.** A batch goes out in two steps, in this order:

1. *publish* the batch's changes to the exchange (idempotent: each change has a stable
   id and an upsert identical to the stored version makes no new version);
2. *commit* the checkpoint, the fingerprints and the rejects of that batch in **one**
   SQLite transaction (``StateStore.commit``).

Killed before step 1 completes, nothing was committed and the batch is read again.
Killed between 1 and 2, the same batch is read and published again: the same keys,
values, fingerprints and change ids, which the exchange absorbs. Killed after 2, the
next batch follows. A failed publish raises before step 2, so a failure never advances
the checkpoint. Nothing is lost, and nothing is applied twice.

Write-back mirrors it: apply to the legacy system (an upsert by key, or a delete), then
record the command ids. A crash between the two re-applies the same upserts on
re-delivery, which leaves the legacy rows as they were.

Calls are synchronous: each is a local SQLite transaction (one fsync on commit), short
enough to run on the event loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Self

from tongban.adapters import _tagged_json
from tongban.adapters.errors import StateLocked, StateStoreUnusable
from tongban.adapters.sdk import (
    Checkpoint,
    Column,
    ColumnFamily,
    CursorCheckpoint,
    KeyValue,
    Op,
    SnapshotCheckpoint,
    WriteCommand,
)
from tongban.signing.clock import Clock, SystemClock

__all__ = [
    "BatchCommit",
    "NewReject",
    "RejectEntry",
    "StateStore",
    "WriteReject",
]

_SCHEMA_VERSION = 2  # 2: echoes
_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    stream      TEXT PRIMARY KEY,
    checkpoint  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS fingerprints (
    stream      TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    seen_gen    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (stream, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rejects (
    stream      TEXT NOT NULL,
    ref         TEXT NOT NULL,
    key         TEXT,
    source_key  TEXT,
    location    TEXT NOT NULL,
    row         TEXT NOT NULL,
    reason      TEXT NOT NULL,
    field       TEXT,
    message     TEXT NOT NULL,
    first_seen  TEXT NOT NULL,
    last_seen   TEXT NOT NULL,
    count       INTEGER NOT NULL,
    seen_gen    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (stream, ref)
);
CREATE TABLE IF NOT EXISTS source_schemas (
    stream      TEXT PRIMARY KEY,
    columns     TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS applied_commands (
    id          TEXT PRIMARY KEY,
    dataset     TEXT NOT NULL,
    key         TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    applied_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS applied_commands_at ON applied_commands (applied_at);
CREATE TABLE IF NOT EXISTS key_versions (
    dataset     TEXT NOT NULL,
    key         TEXT NOT NULL,
    version     INTEGER NOT NULL,
    PRIMARY KEY (dataset, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS write_rejects (
    command_id  TEXT PRIMARY KEY,
    dataset     TEXT NOT NULL,
    key         TEXT NOT NULL,
    command     TEXT NOT NULL,
    reason      TEXT NOT NULL,
    message     TEXT NOT NULL,
    first_seen  TEXT NOT NULL,
    last_seen   TEXT NOT NULL,
    count       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS echoes (
    stream      TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    written_at  TEXT NOT NULL,
    PRIMARY KEY (stream, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sequences (
    name        TEXT PRIMARY KEY,
    value       INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class NewReject:
    """A row to record as rejected (or to count again, if its ``ref`` is known)."""

    ref: str
    """Identifies the row within its stream: its source key, its record key, or (for a
    row whose key could not be read) its location."""
    location: str
    row: Mapping[str, object]
    reason: str
    field: str | None
    message: str
    key: str | None = None
    source_key: KeyValue | None = None


@dataclass(frozen=True)
class RejectEntry:
    """A rejected row as stored."""

    stream: str
    ref: str
    key: str | None
    source_key: KeyValue | None
    location: str
    row: Mapping[str, object]
    reason: str
    field: str | None
    message: str
    first_seen: datetime
    last_seen: datetime
    count: int
    """How many reads have rejected it."""


@dataclass(frozen=True)
class WriteReject:
    """A write-back command the legacy system refused, kept for replay."""

    command: WriteCommand
    reason: str
    message: str
    first_seen: datetime
    last_seen: datetime
    count: int


@dataclass(frozen=True)
class BatchCommit:
    """Everything one published batch changes in the state, committed atomically."""

    stream: str
    checkpoint: Checkpoint | None
    """The new checkpoint; ``None`` leaves it as it is."""
    fingerprints: Mapping[str, str] = field(default_factory=dict)
    """Keys published (or seen unchanged) → their fingerprint."""
    deleted: Collection[str] = ()
    """Keys deleted from the dataset."""
    seen_generation: int | None = None
    """snapshot_diff: the generation the batch belongs to…"""
    seen_keys: Collection[str] = ()
    """…and the keys it saw (published, unchanged or rejected)."""
    rejects: Sequence[NewReject] = ()
    cleared_rejects: Collection[str] = ()
    """Refs of rejects whose rows now pass (or are gone)."""
    clear_rejects_unseen_in: int | None = None
    """snapshot_diff, on completing a generation: drop rejects it did not see again."""
    cleared_echoes: Collection[str] = ()
    """Keys whose write-back echo the batch has read (matched or superseded)."""


class StateStore:
    """The adapter's state file. Open with ``StateStore.open(path)``; close it (or use
    ``with``) when done.

    Raises ``StateLocked`` when another process has it open, and ``StateStoreUnusable``
    when the file cannot be opened, read or written.
    """

    def __init__(self, conn: sqlite3.Connection, lock_fd: int, path: Path, clock: Clock) -> None:
        self._conn = conn
        self._lock_fd: int | None = lock_fd
        self.path = path
        self._clock = clock
        self._read_only = False

    @classmethod
    def open(cls, path: Path | str, *, clock: Clock | None = None) -> StateStore:
        """Open (creating if needed) the state file at ``path`` and lock it."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise _unusable(path, "cannot be created", e) from e
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise StateLocked(
                f"The adapter state {path} is in use by another process; stop that adapter "
                f"first (two adapters over one state would both publish).",
                metadata={"path": str(path)},
            ) from None
        try:
            conn = sqlite3.connect(path, isolation_level=None)
        except sqlite3.Error as e:
            os.close(lock_fd)
            raise _unusable(path, "cannot be opened", e) from e
        store = cls(conn, lock_fd, path, clock or SystemClock())
        try:
            store._init()
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def open_read_only(cls, path: Path | str, *, clock: Clock | None = None) -> StateStore:
        """Open the state file at ``path`` for reading only, without taking its lock, so
        an operator can list rejects while the adapter runs (WAL readers never block the
        writer). Raises ``StateStoreUnusable`` if it does not exist or cannot be read."""
        path = Path(path)
        if not path.is_file():
            raise StateStoreUnusable(
                f"The adapter state {path} does not exist; run the adapter first.",
                metadata={"path": str(path)},
            )
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as e:
            raise _unusable(path, "cannot be read", e) from e
        if version > _SCHEMA_VERSION:
            conn.close()
            raise StateStoreUnusable(
                f"The adapter state {path} was written by a newer tongban (schema "
                f"{version}); upgrade tongban to use it.",
                metadata={"path": str(path)},
            )
        store = cls(conn, -1, path, clock or SystemClock())
        store._read_only = True
        return store

    def _init(self) -> None:
        try:
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA busy_timeout=5000")
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as e:
            raise _unusable(self.path, "is not a SQLite database", e) from e
        if mode != "wal":
            raise _unusable(self.path, "cannot use write-ahead logging", None)
        if version > _SCHEMA_VERSION:
            raise StateStoreUnusable(
                f"The adapter state {self.path} was written by a newer tongban (schema "
                f"{version}); upgrade tongban to use it.",
                metadata={"path": str(self.path)},
            )
        with self._tx():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._conn.execute(statement)
            self._conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    def close(self) -> None:
        """Close the file and release the lock. Idempotent."""
        if self._lock_fd is None:
            return
        if self._read_only:
            self._conn.close()
            self._lock_fd = None
            return
        try:
            self._conn.close()
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        if self._lock_fd is None:
            raise RuntimeError("the state store is closed")
        if self._read_only:
            raise RuntimeError("the state store was opened read-only")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise _unusable(self.path, "cannot be written", e) from e
        try:
            yield self._conn
        except sqlite3.Error as e:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            raise _unusable(self.path, "cannot be written", e) from e
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            raise
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as e:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            raise _unusable(self.path, "cannot be written", e) from e

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
        if self._lock_fd is None:
            raise RuntimeError("the state store is closed")
        try:
            return list(self._conn.execute(sql, params))
        except sqlite3.Error as e:
            raise _unusable(self.path, "cannot be read", e) from e

    def _now(self) -> str:
        return self._clock.now().astimezone(UTC).isoformat()

    # --- checkpoints and fingerprints -------------------------------------------------

    def checkpoint(self, stream: str) -> Checkpoint | None:
        """Return the stream's committed checkpoint, or ``None`` before its first batch."""
        rows = self._read("SELECT checkpoint FROM checkpoints WHERE stream = ?", (stream,))
        return _checkpoint_from_json(str(rows[0][0])) if rows else None

    def fingerprints(self, stream: str, keys: Iterable[str]) -> dict[str, str]:
        """Return the stored fingerprint of each of ``keys`` that has one."""
        rows = self._read(
            "SELECT key, fingerprint FROM fingerprints WHERE stream = ? "
            "AND key IN (SELECT value FROM json_each(?))",
            (stream, json.dumps(list(keys))),
        )
        return {str(key): str(fp) for key, fp in rows}

    def seen_in(self, stream: str, keys: Iterable[str], generation: int) -> set[str]:
        """Return which of ``keys`` snapshot ``generation`` has already seen."""
        rows = self._read(
            "SELECT key FROM fingerprints WHERE stream = ? AND seen_gen >= ? "
            "AND key IN (SELECT value FROM json_each(?))",
            (stream, generation, json.dumps(list(keys))),
        )
        return {str(row[0]) for row in rows}

    def published_count(self, stream: str) -> int:
        """Return how many records the stream has published (and not deleted)."""
        rows = self._read("SELECT count(*) FROM fingerprints WHERE stream = ?", (stream,))
        return int(str(rows[0][0]))

    def unseen(self, stream: str, generation: int) -> dict[str, str]:
        """Return published keys (→ fingerprint) that snapshot ``generation`` has not seen."""
        rows = self._read(
            "SELECT key, fingerprint FROM fingerprints WHERE stream = ? AND seen_gen < ?",
            (stream, generation),
        )
        return {str(key): str(fp) for key, fp in rows}

    def commit(self, batch: BatchCommit) -> None:
        """Commit one batch's checkpoint, fingerprints and rejects in one transaction."""
        now = self._now()
        stream = batch.stream
        gen = batch.seen_generation or 0
        with self._tx() as conn:
            if batch.checkpoint is not None:
                conn.execute(
                    "INSERT INTO checkpoints (stream, checkpoint, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (stream) DO UPDATE SET checkpoint = excluded.checkpoint, "
                    "updated_at = excluded.updated_at",
                    (stream, _checkpoint_to_json(batch.checkpoint), now),
                )
            conn.executemany(
                "INSERT INTO fingerprints (stream, key, fingerprint, seen_gen) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (stream, key) DO UPDATE SET fingerprint = excluded.fingerprint, "
                "seen_gen = max(seen_gen, excluded.seen_gen)",
                [(stream, key, fp, gen) for key, fp in batch.fingerprints.items()],
            )
            # Keys just written above already carry the generation (max(seen_gen, gen)).
            seen_only = [k for k in batch.seen_keys if k not in batch.fingerprints]
            if batch.seen_generation is not None and seen_only:
                conn.execute(
                    "UPDATE fingerprints SET seen_gen = ? WHERE stream = ? AND seen_gen < ? "
                    "AND key IN (SELECT value FROM json_each(?))",
                    (gen, stream, gen, json.dumps(seen_only)),
                )
            conn.executemany(
                "DELETE FROM fingerprints WHERE stream = ? AND key = ?",
                [(stream, key) for key in batch.deleted],
            )
            # Every row that passes clears its reject, if it had one; most streams have
            # none, and then 5,000 deletes a batch that find nothing are skipped.
            if (
                batch.cleared_rejects
                and conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM rejects WHERE stream = ?)", (stream,)
                ).fetchone()[0]
            ):
                conn.executemany(
                    "DELETE FROM rejects WHERE stream = ? AND ref = ?",
                    [(stream, ref) for ref in batch.cleared_rejects],
                )
            conn.executemany(
                "INSERT INTO rejects (stream, ref, key, source_key, location, row, reason, "
                "field, message, first_seen, last_seen, count, seen_gen) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?) "
                "ON CONFLICT (stream, ref) DO UPDATE SET key = excluded.key, "
                "source_key = excluded.source_key, location = excluded.location, "
                "row = excluded.row, reason = excluded.reason, field = excluded.field, "
                "message = excluded.message, last_seen = excluded.last_seen, "
                "count = count + 1, seen_gen = excluded.seen_gen",
                [
                    (
                        stream,
                        r.ref,
                        r.key,
                        None if r.source_key is None else _tagged_json.dumps(r.source_key),
                        r.location,
                        _tagged_json.dumps(_storable(r.row)),
                        r.reason,
                        r.field,
                        r.message,
                        now,
                        now,
                        gen,
                    )
                    for r in batch.rejects
                ],
            )
            conn.executemany(
                "DELETE FROM echoes WHERE stream = ? AND key = ?",
                [(stream, key) for key in batch.cleared_echoes],
            )
            if batch.clear_rejects_unseen_in is not None:
                conn.execute(
                    "DELETE FROM rejects WHERE stream = ? AND seen_gen < ?",
                    (stream, batch.clear_rejects_unseen_in),
                )

    def echoes(self, stream: str, keys: Iterable[str]) -> dict[str, str]:
        """Return, for each of ``keys`` that has one, the fingerprint of the record the
        adapter itself wrote into the stream's table (write-back), not yet read back."""
        rows = self._read(
            "SELECT key, fingerprint FROM echoes WHERE stream = ? "
            "AND key IN (SELECT value FROM json_each(?))",
            (stream, json.dumps(list(keys))),
        )
        return {str(key): str(fp) for key, fp in rows}

    def echo_count(self, stream: str | None = None) -> int:
        """Return how many write-back echoes wait to be read back."""
        rows = self._read(
            "SELECT count(*) FROM echoes WHERE (?1 IS NULL OR stream = ?1)", (stream,)
        )
        return int(str(rows[0][0]))

    # --- rejects ----------------------------------------------------------------------

    def list_rejects(
        self, stream: str | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[RejectEntry]:
        """Return rejected rows, oldest first (all streams unless ``stream`` is given)."""
        rows = self._read(
            "SELECT stream, ref, key, source_key, location, row, reason, field, message, "
            "first_seen, last_seen, count FROM rejects WHERE (?1 IS NULL OR stream = ?1) "
            "ORDER BY first_seen, stream, ref LIMIT ?2 OFFSET ?3",
            (stream, limit, offset),
        )
        return [_reject_entry(row) for row in rows]

    def reject_count(self, stream: str | None = None) -> int:
        """Return how many rows are rejected (in ``stream``, or in all)."""
        if stream is None:
            rows = self._read("SELECT count(*) FROM rejects")
        else:
            rows = self._read("SELECT count(*) FROM rejects WHERE stream = ?", (stream,))
        return int(str(rows[0][0]))

    def keyless_rejects(self, stream: str, generation: int) -> int:
        """Return how many rows of snapshot ``generation`` were rejected before their key
        could be read (so a delete cannot be told apart from a broken row)."""
        rows = self._read(
            "SELECT count(*) FROM rejects WHERE stream = ? AND key IS NULL AND seen_gen >= ?",
            (stream, generation),
        )
        return int(str(rows[0][0]))

    # --- source schemas ---------------------------------------------------------------

    def source_schema(self, stream: str) -> tuple[Column, ...] | None:
        """Return the source columns last accepted for ``stream``, or ``None``."""
        rows = self._read("SELECT columns FROM source_schemas WHERE stream = ?", (stream,))
        if not rows:
            return None
        return tuple(
            Column(
                name=c["name"],
                type_name=c["type_name"],
                family=ColumnFamily(c["family"]),
                nullable=c["nullable"],
                max_length=c["max_length"],
                precision=c["precision"],
                scale=c["scale"],
            )
            for c in json.loads(str(rows[0][0]))
        )

    def save_source_schema(self, stream: str, columns: Sequence[Column]) -> None:
        """Record ``columns`` as the stream's accepted source schema."""
        text = json.dumps(
            [
                {
                    "name": c.name,
                    "type_name": c.type_name,
                    "family": str(c.family),
                    "nullable": c.nullable,
                    "max_length": c.max_length,
                    "precision": c.precision,
                    "scale": c.scale,
                }
                for c in columns
            ],
            ensure_ascii=False,
        )
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO source_schemas (stream, columns, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (stream) DO UPDATE SET columns = excluded.columns, "
                "updated_at = excluded.updated_at",
                (stream, text, self._now()),
            )

    def accept_source_schema(self, stream: str) -> None:
        """Forget the stream's accepted schema: the next run accepts the source as it is.

        For an operator who has checked that a changed column is fine (or fixed the
        mapping) after ``SourceSchemaChanged`` stopped the stream.
        """
        with self._tx() as conn:
            conn.execute("DELETE FROM source_schemas WHERE stream = ?", (stream,))

    # --- write-back -------------------------------------------------------------------

    def applied(self, command_ids: Iterable[str]) -> set[str]:
        """Return which of ``command_ids`` were already handled (applied, stale or
        rejected)."""
        rows = self._read(
            "SELECT id FROM applied_commands WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(command_ids)),),
        )
        return {str(row[0]) for row in rows}

    def key_versions(self, dataset: str, keys: Iterable[str]) -> dict[str, int]:
        """Return the latest version applied for each of ``keys`` of ``dataset``."""
        rows = self._read(
            "SELECT key, version FROM key_versions WHERE dataset = ? "
            "AND key IN (SELECT value FROM json_each(?))",
            (dataset, json.dumps(list(keys))),
        )
        return {str(key): int(str(version)) for key, version in rows}

    def next_sequence(self, name: str) -> int:
        """Return the next number of sequence ``name`` (1, 2, …), durably."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO sequences (name, value) VALUES (?, 1) "
                "ON CONFLICT (name) DO UPDATE SET value = value + 1",
                (name,),
            )
            row = conn.execute("SELECT value FROM sequences WHERE name = ?", (name,)).fetchone()
        return int(row[0])

    def record_commands(
        self,
        *,
        applied: Sequence[WriteCommand] = (),
        stale: Sequence[WriteCommand] = (),
        rejected: Sequence[tuple[WriteCommand, str, str]] = (),
        echoes: Sequence[tuple[str, str, str]] = (),
    ) -> None:
        """Record commands as handled, in one transaction: ``applied`` (and their
        versions), ``stale`` (skipped: an equal or newer version was applied) and
        ``rejected`` (command, reason, message; kept for replay); and ``echoes``
        ((stream, key, fingerprint): what the applied commands left in a table that a
        stream reads, so that reading it back publishes nothing)."""
        now = self._now()
        with self._tx() as conn:
            conn.executemany(
                "INSERT INTO echoes (stream, key, fingerprint, written_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (stream, key) DO UPDATE SET fingerprint = excluded.fingerprint, "
                "written_at = excluded.written_at",
                [(stream, key, fp, now) for stream, key, fp in echoes],
            )
            outcomes = [(c, "applied") for c in applied] + [(c, "stale") for c in stale]
            outcomes += [(c, "rejected") for c, _, _ in rejected]
            conn.executemany(
                "INSERT INTO applied_commands (id, dataset, key, outcome, applied_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "outcome = excluded.outcome, applied_at = excluded.applied_at",
                [(c.id, c.dataset, c.key, outcome, now) for c, outcome in outcomes],
            )
            conn.executemany(
                "INSERT INTO key_versions (dataset, key, version) VALUES (?, ?, ?) "
                "ON CONFLICT (dataset, key) DO UPDATE SET "
                "version = max(version, excluded.version)",
                [(c.dataset, c.key, c.version) for c in applied if c.version is not None],
            )
            conn.executemany(
                "DELETE FROM write_rejects WHERE command_id = ?", [(c.id,) for c in applied]
            )
            conn.executemany(
                "INSERT INTO write_rejects (command_id, dataset, key, command, reason, "
                "message, first_seen, last_seen, count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1) "
                "ON CONFLICT (command_id) DO UPDATE SET reason = excluded.reason, "
                "message = excluded.message, last_seen = excluded.last_seen, "
                "count = count + 1",
                [
                    (c.id, c.dataset, c.key, _command_to_json(c), reason, message, now, now)
                    for c, reason, message in rejected
                ],
            )

    def list_write_rejects(
        self, dataset: str | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[WriteReject]:
        """Return refused write-back commands, oldest first."""
        rows = self._read(
            "SELECT command, reason, message, first_seen, last_seen, count FROM write_rejects "
            "WHERE (?1 IS NULL OR dataset = ?1) ORDER BY first_seen, command_id "
            "LIMIT ?2 OFFSET ?3",
            (dataset, limit, offset),
        )
        return [
            WriteReject(
                command=_command_from_json(str(command)),
                reason=str(reason),
                message=str(message),
                first_seen=datetime.fromisoformat(str(first)),
                last_seen=datetime.fromisoformat(str(last)),
                count=int(str(count)),
            )
            for command, reason, message, first, last, count in rows
        ]

    def prune_applied(self, before: datetime) -> int:
        """Forget applied command ids recorded before ``before`` (once the exchange can
        no longer re-deliver them); return how many. Versions per key are kept."""
        with self._tx() as conn:
            cursor = conn.execute(
                "DELETE FROM applied_commands WHERE applied_at < ? AND outcome != 'rejected'",
                (before.astimezone(UTC).isoformat(),),
            )
            return cursor.rowcount


def _unusable(path: Path, problem: str, error: BaseException | None) -> StateStoreUnusable:
    detail = ""
    if isinstance(error, OSError) and error.strerror:
        detail = f" ({error.strerror})"
    elif isinstance(error, sqlite3.Error):
        detail = f" ({getattr(error, 'sqlite_errorname', type(error).__name__)})"
    return StateStoreUnusable(
        f"The adapter state {path} {problem}{detail}; check the path, its permissions and "
        f"free disk space.",
        metadata={"path": str(path)},
    )


def _storable(row: Mapping[str, object]) -> dict[str, object]:
    """Return ``row`` with values the tagged JSON cannot hold written as text."""
    out: dict[str, object] = {}
    for name, value in row.items():
        try:
            _tagged_json.encode(value)
        except TypeError:
            value = repr(value)
        out[name] = value
    return out


def _checkpoint_to_json(checkpoint: Checkpoint) -> str:
    if isinstance(checkpoint, CursorCheckpoint):
        data: dict[str, object] = {
            "type": "cursor",
            "cursor": checkpoint.cursor,
            "key": checkpoint.key,
        }
    else:
        data = {
            "type": "snapshot",
            "generation": checkpoint.generation,
            "source_id": checkpoint.source_id,
            "position": checkpoint.position,
            "complete": checkpoint.complete,
        }
    return _tagged_json.dumps(data)


def _checkpoint_from_json(text: str) -> Checkpoint:
    data = _tagged_json.loads(text)
    if not isinstance(data, dict):
        raise StateStoreUnusable("The adapter state holds a malformed checkpoint.")
    if data.get("type") == "cursor":
        return CursorCheckpoint(cursor=data["cursor"], key=data["key"])
    return SnapshotCheckpoint(
        generation=int(data["generation"]),
        source_id=str(data["source_id"]),
        position=data["position"],
        complete=bool(data["complete"]),
    )


def _reject_entry(row: tuple[object, ...]) -> RejectEntry:
    (stream, ref, key, source_key, location, data, reason, fld, message, first, last, count) = row
    loaded = _tagged_json.loads(str(data))
    return RejectEntry(
        stream=str(stream),
        ref=str(ref),
        key=None if key is None else str(key),
        source_key=None if source_key is None else _key_value(_tagged_json.loads(str(source_key))),
        location=str(location),
        row=loaded if isinstance(loaded, dict) else {},
        reason=str(reason),
        field=None if fld is None else str(fld),
        message=str(message),
        first_seen=datetime.fromisoformat(str(first)),
        last_seen=datetime.fromisoformat(str(last)),
        count=int(str(count)),
    )


def _key_value(value: object) -> KeyValue:
    if isinstance(value, int | str | Decimal | uuid.UUID) and not isinstance(value, bool):
        return value
    raise StateStoreUnusable("The adapter state holds a malformed source key.")


def _command_to_json(command: WriteCommand) -> str:
    return _tagged_json.dumps(
        {
            "id": command.id,
            "dataset": command.dataset,
            "key": command.key,
            "op": str(command.op),
            "values": dict(command.values),
            "version": command.version,
        }
    )


def _command_from_json(text: str) -> WriteCommand:
    data = _tagged_json.loads(text)
    assert isinstance(data, dict)
    return WriteCommand(
        id=str(data["id"]),
        dataset=str(data["dataset"]),
        key=str(data["key"]),
        op=Op(data["op"]),
        values=dict(data["values"]),
        version=data["version"],
    )
