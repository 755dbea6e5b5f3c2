"""Errors the adapter SDK raises on purpose, each with a stable reason code.

Reason codes are part of the public contract (they travel in ``--json`` output and, once
adapters report to the exchange, in ``ErrorInfo``): never rename one. Match on the class
or on ``reason``, never on the message. ``retriable`` says whether the same call may
succeed later without anyone changing anything (a database that is restarting); a runner
retries those with backoff and stops the stream on the others.

Messages name files, streams, fields and columns but never quote a record's values:
records hold personal data and error messages end up in logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tongban.errors import TongbanError

__all__ = [
    "AdapterError",
    "CursorUnusable",
    "MappingInvalid",
    "MappingProblem",
    "SnapshotShrank",
    "SourceReadFailed",
    "SourceSchemaChanged",
    "SourceUnavailable",
    "SourceUnsupported",
    "StateLocked",
    "StateStoreUnusable",
    "StorageFull",
    "StreamNotFound",
    "ValidatorMissing",
    "WriteBackTargetInvalid",
]


class AdapterError(TongbanError):
    """Base class of the adapter SDK's errors."""

    reason = "ADAPTER_ERROR"
    status = "INTERNAL"
    retriable: bool = False


@dataclass(frozen=True)
class MappingProblem:
    """One problem in a mapping file: where it is and what is wrong."""

    file: str
    """The mapping file's path as given to the loader."""
    line: int
    """1-based line of the YAML node at fault (of its parent when a key is missing)."""
    column: int
    """1-based column of that node."""
    path: str
    """The dotted field path, e.g. ``streams.0.mode.cursor_column``; empty for the root."""
    message: str
    """What is wrong, as one sentence."""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class CursorUnusable(AdapterError):
    """A cursor column's values cannot be ordered or stepped back (text that is not ISO
    8601, a boolean, values of different types). Metadata: ``problem``."""

    reason = "CURSOR_UNUSABLE"
    status = "FAILED_PRECONDITION"


class MappingInvalid(AdapterError):
    """A mapping file cannot be read or does not describe a valid adapter.

    ``problems`` lists every problem found, each with its line, column and field path;
    ``diagnostics()`` prints them one per line. Metadata: ``file`` and ``problems`` (the
    count).
    """

    reason = "MAPPING_INVALID"
    status = "INVALID_ARGUMENT"

    def __init__(self, file: str, problems: Sequence[MappingProblem]) -> None:
        self.problems = tuple(problems)
        count = len(self.problems)
        first = str(self.problems[0]) if self.problems else file
        noun, them = ("problem", "it") if count == 1 else ("problems", "them")
        super().__init__(
            f"The mapping file {file} has {count} {noun}; fix {them} and load it again "
            f"(first: {first}).",
            metadata={"file": file, "problems": str(count)},
        )

    def diagnostics(self) -> str:
        """Return every problem on its own line, then the reason code."""
        lines = [str(problem) for problem in self.problems]
        lines.append(f"[{self.reason}]")
        return "\n".join(lines)


class SourceUnavailable(AdapterError):
    """The legacy system cannot be reached (down, restarting, network, locked file).

    Retriable: nothing was read or written past the last committed checkpoint, so the
    same call can simply be repeated later. Metadata: ``source`` and, where known,
    ``sqlstate`` or ``sqlite_error``.
    """

    reason = "SOURCE_UNAVAILABLE"
    status = "UNAVAILABLE"
    retriable = True


class SourceReadFailed(AdapterError):
    """The legacy system answered with an error that retrying will not fix (a
    permission denied, a query it cannot run). Metadata: ``source`` and, where known,
    ``sqlstate`` or ``sqlite_error``."""

    reason = "SOURCE_READ_FAILED"
    status = "FAILED_PRECONDITION"


class SourceSchemaChanged(AdapterError):
    """A column the mapping needs was dropped, renamed, narrowed or changed type.

    The stream stops rather than publish truncated or misread values. Metadata:
    ``stream``, ``columns`` (comma-separated) and ``changes`` (``column:problem`` pairs).
    After checking the source, fix the mapping or accept the new shape with
    ``StateStore.accept_source_schema``.
    """

    reason = "SOURCE_SCHEMA_CHANGED"
    status = "FAILED_PRECONDITION"


class SourceUnsupported(AdapterError):
    """The mapping asks a source for something it cannot do (a cursor over a CSV drop)."""

    reason = "SOURCE_UNSUPPORTED"
    status = "FAILED_PRECONDITION"


class StorageFull(AdapterError):
    """The department's datasets hold its whole storage quota: the exchange would refuse
    everything the adapter publishes (STORAGE_QUOTA_EXCEEDED) until the operator raises
    it, so ``tongban adapter check`` says so before a run."""

    reason = "STORAGE_QUOTA_EXCEEDED"
    status = "RESOURCE_EXHAUSTED"


class StreamNotFound(AdapterError):
    """A stream or write-back dataset is not in the mapping, or its table or file is
    missing from the source."""

    reason = "STREAM_NOT_FOUND"
    status = "NOT_FOUND"


class ValidatorMissing(AdapterError):
    """A field names a ``check`` the runner did not supply a validator for. Fail closed:
    a check that cannot run is not a check that passed. Metadata: ``stream``, ``field``,
    ``check``."""

    reason = "VALIDATOR_MISSING"
    status = "FAILED_PRECONDITION"


class SnapshotShrank(AdapterError):
    """A snapshot would delete more of the published records than the stream allows.

    A truncated export or an emptied table looks exactly like mass deletion; rather than
    delete, the stream stops until someone checks the source. Metadata: ``stream``,
    ``deletes``, ``published`` and ``max_delete_ratio``.
    """

    reason = "SNAPSHOT_SHRANK"
    status = "FAILED_PRECONDITION"


class WriteBackTargetInvalid(AdapterError):
    """The write-back table or folder cannot take commands at all (missing table or
    column, no unique constraint on the key column, folder not writable)."""

    reason = "WRITE_BACK_TARGET_INVALID"
    status = "FAILED_PRECONDITION"


class StateStoreUnusable(AdapterError):
    """The adapter's state file cannot be opened, read or written, or was written by a
    newer version."""

    reason = "STATE_STORE_UNUSABLE"
    status = "FAILED_PRECONDITION"


class StateLocked(AdapterError):
    """Another process holds the adapter's state file: two adapters over one state would
    both publish and corrupt each other's checkpoints."""

    reason = "STATE_LOCKED"
    status = "FAILED_PRECONDITION"
