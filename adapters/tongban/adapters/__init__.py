"""Adapters beside legacy department systems: publish their records, write changes back.

The SDK, in the order data flows:

- ``mapping``: the YAML mapping file (``load_mapping``), validated with line numbers;
- ``sdk``: the ``Source`` and ``Sink`` protocols and the plain data they exchange;
- ``sources``: PostgreSQL, SQLite and drop-folder (CSV, .xlsx) sources;
- ``transform``: a source row → a dataset record, a reject or an exclusion (pure);
- ``cursor`` and ``diff``: the compound cursor and snapshot_diff rules (pure);
- ``state``: the durable SQLite state (checkpoints, fingerprints, rejects, applied ids);
- ``sync``: the pipeline that ties them together (``StreamSync``, ``apply_commands``).

``docs/adapters.md`` describes the mapping format, the modes and the crash contract.
"""

from tongban.adapters.errors import (
    AdapterError,
    CursorUnusable,
    MappingInvalid,
    MappingProblem,
    SnapshotShrank,
    SourceReadFailed,
    SourceSchemaChanged,
    SourceUnavailable,
    SourceUnsupported,
    StateLocked,
    StateStoreUnusable,
    StorageFull,
    StreamNotFound,
    ValidatorMissing,
    WriteBackTargetInvalid,
)
from tongban.adapters.mapping import AdapterMapping, load_mapping, parse_mapping
from tongban.adapters.sdk import (
    Batch,
    Change,
    Checkpoint,
    Column,
    ColumnFamily,
    CommandRejected,
    CursorCheckpoint,
    Op,
    RejectReason,
    Sink,
    SnapshotCheckpoint,
    Source,
    SourceRow,
    StreamInfo,
    UnreadableRow,
    WriteBatch,
    WriteCommand,
    WriteOutcome,
)
from tongban.adapters.state import RejectEntry, StateStore, WriteReject
from tongban.adapters.sync import (
    ApplyReport,
    StreamSync,
    SyncReport,
    apply_commands,
    replay_write_rejects,
)
from tongban.adapters.transform import (
    Excluded,
    Record,
    Rejected,
    StreamTransform,
    Validator,
    fingerprint,
)

__all__ = [
    "AdapterError",
    "AdapterMapping",
    "ApplyReport",
    "Batch",
    "Change",
    "Checkpoint",
    "Column",
    "ColumnFamily",
    "CommandRejected",
    "CursorCheckpoint",
    "CursorUnusable",
    "Excluded",
    "MappingInvalid",
    "MappingProblem",
    "Op",
    "Record",
    "RejectEntry",
    "RejectReason",
    "Rejected",
    "Sink",
    "SnapshotCheckpoint",
    "SnapshotShrank",
    "Source",
    "SourceReadFailed",
    "SourceRow",
    "SourceSchemaChanged",
    "SourceUnavailable",
    "SourceUnsupported",
    "StateLocked",
    "StateStore",
    "StateStoreUnusable",
    "StorageFull",
    "StreamInfo",
    "StreamNotFound",
    "StreamSync",
    "StreamTransform",
    "SyncReport",
    "UnreadableRow",
    "Validator",
    "ValidatorMissing",
    "WriteBackTargetInvalid",
    "WriteBatch",
    "WriteCommand",
    "WriteOutcome",
    "WriteReject",
    "apply_commands",
    "fingerprint",
    "load_mapping",
    "parse_mapping",
    "replay_write_rejects",
]
