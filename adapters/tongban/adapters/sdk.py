"""The adapter interface: what a legacy source offers and the plain data it exchanges.

A **source** is the legacy side of an adapter: a SQL database, a drop folder of CSV or
Excel exports, a SOAP or REST service. It knows nothing about datasets, fingerprints or
the exchange; it reads rows in batches with a checkpoint, fetches rows again by key for a
replay, and applies write-back commands. ``tongban.adapters.sync`` turns its rows into
dataset changes, publishes them through a ``Sink`` and commits the adapter's state.

Everything here is a frozen dataclass or a protocol: no I/O, no pydantic.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from types import MappingProxyType, TracebackType
from typing import Protocol, Self

from tongban.signing.ids import uuid5_text

__all__ = [
    "Batch",
    "Change",
    "Checkpoint",
    "Column",
    "ColumnFamily",
    "CommandRejected",
    "CursorCheckpoint",
    "CursorValue",
    "KeyValue",
    "Op",
    "RejectReason",
    "Sink",
    "SnapshotCheckpoint",
    "Source",
    "SourceRow",
    "StreamInfo",
    "UnreadableRow",
    "WriteBatch",
    "WriteCommand",
    "WriteOutcome",
    "change_id",
]

CursorValue = datetime | date | int | Decimal | str
"""A cursor column's value: a timestamp, date, counter or ISO 8601 text."""
KeyValue = int | str | Decimal | uuid.UUID
"""A source key column's value."""

_EMPTY: Mapping[str, object] = MappingProxyType({})
_EMPTY_ROWS: Mapping[str, Mapping[str, object]] = MappingProxyType({})
_CHANGE_NAMESPACE = uuid.UUID("6f1c3b52-5d0e-4d8e-9a56-2f4f0e3c7a11")


class Op(enum.StrEnum):
    """What a change or command does to a record."""

    UPSERT = "upsert"
    DELETE = "delete"


class RejectReason(enum.StrEnum):
    """Why a row was rejected. Stable codes: they are stored and shown to operators."""

    MISSING_VALUE = "MISSING_VALUE"
    """A required field (or the key) is empty."""
    BAD_STRING = "BAD_STRING"
    """Bytes that are not text, or a value that cannot be written as text."""
    TOO_LONG = "TOO_LONG"
    CONTROL_CHARACTER = "CONTROL_CHARACTER"
    PRECISION_LOST = "PRECISION_LOST"
    """A number too large for a float was stored as one (Excel and long ids)."""
    BAD_INTEGER = "BAD_INTEGER"
    BAD_DECIMAL = "BAD_DECIMAL"
    BAD_DATE = "BAD_DATE"
    BAD_DATETIME = "BAD_DATETIME"
    BAD_BOOLEAN = "BAD_BOOLEAN"
    UNKNOWN_CODE = "UNKNOWN_CODE"
    """A value missing from the field's code table."""
    CHECK_FAILED = "CHECK_FAILED"
    """A validator (USCC or citizen id check character, ...) refused the value."""
    DUPLICATE_KEY = "DUPLICATE_KEY"
    """A second row with the same key in one snapshot."""
    BROKEN_LINE = "BROKEN_LINE"
    """A CSV line with the wrong number of fields or broken quoting."""
    UNDECODABLE = "UNDECODABLE"
    """A line whose bytes are not in the file's encoding."""
    MERGED_CELLS = "MERGED_CELLS"
    """An Excel row covered by a cell merged across columns."""
    NULL_CURSOR = "NULL_CURSOR"
    """A row whose cursor column is NULL, so a cursor cannot order it."""


class ColumnFamily(enum.StrEnum):
    """The kind of value a source column holds, whatever the source calls its type."""

    STRING = "string"
    INTEGER = "integer"
    DECIMAL = "decimal"
    FLOAT = "float"
    BOOLEAN = "boolean"
    DATE = "date"
    DATETIME = "datetime"
    TIME = "time"
    BYTES = "bytes"
    OTHER = "other"


@dataclass(frozen=True)
class Column:
    """One column of a source table or file, as the source describes it."""

    name: str
    type_name: str
    """The source's own name for the type, e.g. ``character varying(200)``, ``TEXT``."""
    family: ColumnFamily
    nullable: bool = True
    max_length: int | None = None
    """Characters for text columns; ``None`` when unlimited or unknown."""
    precision: int | None = None
    """Digits for decimals, bits for integers; ``None`` when unlimited or unknown."""
    scale: int | None = None
    """Fractional digits for decimals."""


@dataclass(frozen=True)
class StreamInfo:
    """What a source holds under one name: a table, or the newest file of a pattern."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()
    """The primary key columns the source declares (empty when it declares none)."""
    cursor: str | None = None
    """The cursor column a configured stream reads it by, if any."""

    def column(self, name: str) -> Column | None:
        """Return the column called ``name``, or ``None``."""
        return next((c for c in self.columns if c.name == name), None)


@dataclass(frozen=True)
class SourceRow:
    """A row as the source holds it: column name → value."""

    values: Mapping[str, object]
    location: str
    """Where a person finds the row: ``licences.csv:17``, ``t_qydj id=42``."""


@dataclass(frozen=True)
class UnreadableRow:
    """A row the source could not read whole (a broken CSV line, undecodable bytes, a
    merged Excel cell, a row without a cursor value). It becomes a reject; the rows
    around it keep flowing."""

    location: str
    reason: str
    """A stable UPPER_SNAKE code: ``BROKEN_LINE``, ``UNDECODABLE``, ``MERGED_CELLS``,
    ``NULL_CURSOR``."""
    message: str
    values: Mapping[str, object] = field(default_factory=lambda: _EMPTY)
    """Whatever could be read (for a person to look at and for the key, if present)."""


@dataclass(frozen=True)
class CursorCheckpoint:
    """Every row with ``(cursor, key) <= (self.cursor, self.key)`` has been published."""

    cursor: CursorValue
    key: KeyValue


@dataclass(frozen=True)
class SnapshotCheckpoint:
    """How far a snapshot_diff stream has got.

    A *generation* is one full read of the source. Rows read in it are marked with its
    number; when it is ``complete``, published records its rows did not mark are deleted.
    """

    generation: int
    source_id: str
    """Which snapshot: the table, or the file's name and content hash."""
    position: KeyValue | None
    """Where to resume inside the generation: the last key read (tables) or the number of
    rows read (files); ``None`` at the start."""
    complete: bool


Checkpoint = CursorCheckpoint | SnapshotCheckpoint


@dataclass(frozen=True)
class Batch:
    """Rows read together and the checkpoint to commit once they are published."""

    rows: tuple[SourceRow | UnreadableRow, ...]
    checkpoint: Checkpoint | None
    """``None`` leaves the committed checkpoint as it is (rows read outside the cursor's
    order, such as rows without a cursor value)."""


@dataclass(frozen=True)
class Change:
    """One record change for the exchange."""

    id: str
    """Stable for the same change: a re-sent batch carries the same ids (see
    ``change_id``), so the exchange can drop what it has already applied; a record that
    changes back to an earlier value gets a new id."""
    op: Op
    key: str
    values: Mapping[str, object]
    """The dataset record (empty for a delete)."""
    fingerprint: str
    """The record's fingerprint (for a delete: of the record being deleted)."""


def change_id(dataset: str, key: str, before: str | None, after: str | None) -> str:
    """Return the stable id of a change: a UUIDv5 of the dataset, the key, and the
    fingerprints of the record before and after it (``None``: no record). The same
    transition always has the same id; A → B → A gives the second A a new one."""
    name = f"{dataset}\x00{key}\x00{before or ''}\x00{after or ''}"
    return uuid5_text(_CHANGE_NAMESPACE, name.encode())


@dataclass(frozen=True)
class WriteCommand:
    """A change from another department to write into the legacy system.

    Applied at most once per ``id`` (the exchange's event id, the same on every
    re-delivery). With a ``version``, a command older than one already applied to the
    same key is skipped, so a late re-delivery cannot overwrite newer data.
    """

    id: str
    dataset: str
    key: str
    op: Op
    values: Mapping[str, object] = field(default_factory=lambda: _EMPTY)
    version: int | None = None


@dataclass(frozen=True)
class WriteBatch:
    """Commands to apply together, with the batch's place in the adapter's sequence
    (file targets name their files by it so that they sort in order)."""

    sequence: int
    commands: tuple[WriteCommand, ...]


@dataclass(frozen=True)
class CommandRejected:
    """A command the legacy system refused for good (a constraint, a value too long)."""

    command_id: str
    reason: str
    message: str


@dataclass(frozen=True)
class WriteOutcome:
    """What became of a write batch: every command is either applied or rejected."""

    applied: tuple[str, ...]
    rejected: tuple[CommandRejected, ...] = ()
    written: Mapping[str, Mapping[str, object]] = field(default_factory=lambda: _EMPTY_ROWS)
    """Applied command id → the legacy row as the write left it (every column; for a
    delete, the row removed), where the source can tell (SQL tables). The runner uses it
    to recognise the adapter's own writes when a stream reads the same table."""


class Source(Protocol):
    """The legacy side of an adapter.

    Sources are async context managers: ``async with source:`` opens connections and
    closes them on exit. Every method raises ``SourceUnavailable`` (retriable) when the
    legacy system cannot be reached after the source's own retries.
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def check(self) -> None:
        """Return if the source is reachable and every configured stream's table or
        folder exists; raise ``SourceUnavailable`` or ``StreamNotFound`` otherwise."""
        ...

    async def discover(self) -> list[StreamInfo]:
        """Return everything the source holds that a stream could read (every table, or
        the newest file of each configured stream), with columns and keys."""
        ...

    async def describe(self, stream: str) -> StreamInfo | None:
        """Return the current shape of configured stream ``stream``'s table or file, or
        ``None`` when there is nothing to read yet (no export dropped).

        Raises ``StreamNotFound`` when a configured table is missing.
        """
        ...

    def read(self, stream: str, checkpoint: Checkpoint | None) -> AsyncIterator[Batch]:
        """Yield the stream's rows after ``checkpoint`` in batches, each with the
        checkpoint to commit once it is published.

        Cursor streams yield ``CursorCheckpoint``s; snapshot_diff streams yield
        ``SnapshotCheckpoint``s, the last of a generation with ``complete`` set (possibly
        with no rows). Yields nothing when there is nothing new. Raises
        ``SourceSchemaChanged`` when a column the mapping needs is gone.
        """
        ...

    async def fetch(self, stream: str, source_keys: Sequence[KeyValue]) -> list[SourceRow]:
        """Return the current rows of a cursor stream with these key column values (for
        replaying rejects); keys no longer present are simply absent."""
        ...

    async def apply(self, batch: WriteBatch) -> WriteOutcome:
        """Write ``batch`` into the legacy system by key (an upsert or a delete each).

        Applying a command twice leaves the same result as applying it once. Commands
        the legacy system refuses for good come back in ``WriteOutcome.rejected``; the
        others are applied. Raises ``StreamNotFound`` for a dataset with no write-back
        target and ``WriteBackTargetInvalid`` when the target cannot take writes at all.
        """
        ...


class Sink(Protocol):
    """Where changes go: the exchange, in production.

    ``publish`` returns once the changes are durably accepted, or raises. It must be
    idempotent: the same changes (same ``Change.id``) sent again after a crash leave the
    same result.
    """

    async def publish(self, dataset: str, changes: Sequence[Change]) -> None: ...
