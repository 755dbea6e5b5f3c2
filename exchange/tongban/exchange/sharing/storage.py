"""How much each department's datasets hold, and the quota that bounds it.

A department's adapter that goes wrong (a loop republishing changed rows, a broken
export, an attacker holding its credentials) can write as fast as the node takes writes:
tens of thousands of records a second. Without a bound it fills the database's disk, and
then every department's writes fail (``db.trouble``: ``disk_full``). The quota bounds
what one department's datasets may hold, so the others keep their room.

What counts is every record version written to a department's datasets, by whichever
call (publishes, bulk loads, and the feeds written beside licences and cases): its key
and its JSON as written, and ``VERSION_BYTES`` for its row, its change event and their
index entries; and the licence rows and their history an issuer stores (``row_bytes``),
which are several times the size of their feed records. Versions are history and are
never removed, so a deletion frees nothing (it writes a version too). Migration 0035
keeps the count and checks it, in the database, with every write; see
docs/architecture.md, "Storage quotas".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from tongban.exchange.sharing.errors import StorageQuotaExceeded
from tongban.exchange.sizes import format_size

__all__ = [
    "QUOTA_SQLSTATE",
    "VERSION_BYTES",
    "StorageUsage",
    "quota_checked",
    "quota_exceeded",
    "row_bytes",
    "storage_usage",
]

QUOTA_SQLSTATE = "TB001"
"""What the quota's trigger raises (a class of Tongban's own, which PostgreSQL never
uses), with the department, what it held, what the write adds and the quota in its
DETAIL."""

VERSION_BYTES = 400
"""Bytes counted for each record version beside its key and JSON: its row's header and
other columns, its change event's row, and their index entries. Measured: a bulk load
of 50,000 records grew the record and event tables and their indexes by 405 bytes a
version more than the keys' and JSON's bytes (docs/architecture.md, "Storage quotas");
migration 0035 counts the records already stored with the same figure."""


def quota_exceeded(error: BaseException) -> StorageQuotaExceeded | None:
    """The caller's error for the quota trigger's ``error``; None for any other."""
    if not isinstance(error, asyncpg.PostgresError):
        return None
    if getattr(error, "sqlstate", None) != QUOTA_SQLSTATE:
        return None
    parts = str(getattr(error, "detail", "") or "").split("|")
    try:
        department, held, adding, quota = parts[0], *map(int, parts[1:])
    except ValueError:
        return StorageQuotaExceeded(
            "This change would take the department's datasets past its storage quota, "
            "so nothing of it was written; ask the node's operator to raise the quota."
        )
    return StorageQuotaExceeded(
        f"{department}'s datasets hold {format_size(held)}, and this change of "
        f"{format_size(adding)} would take them past {department}'s storage quota of "
        f"{format_size(quota)}, so nothing of it was written; ask the node's operator to "
        f"raise the quota (tongban dept limits {department} --stored SIZE).",
        metadata={
            "department": department,
            "stored_bytes": str(held),
            "adding_bytes": str(adding),
            "quota_bytes": str(quota),
        },
    )


def row_bytes(*rows: Sequence[object]) -> int:
    """What ``rows`` (tuples of column values, as COPY takes them) count toward a storage
    quota: their texts' UTF-8 bytes and bytes' lengths, 8 for any other value, and
    ``VERSION_BYTES`` a row. For writers that store rows of their own beside record
    versions (a licence and its history: ``RecordStore.publish_in``'s ``extra_bytes``)."""
    total = 0
    for row in rows:
        total += VERSION_BYTES
        for value in row:
            if isinstance(value, str):
                total += len(value.encode())
            elif isinstance(value, bytes | bytearray | memoryview):
                total += len(value)
            else:
                total += 8
    return total


@contextlib.contextmanager
def quota_checked() -> Iterator[None]:
    """Around a statement that writes record versions: the quota trigger's refusal comes
    out as StorageQuotaExceeded (the caller's transaction then rolls back, as for any
    error), anything else as it was."""
    try:
        yield
    except asyncpg.PostgresError as e:
        refused = quota_exceeded(e)
        if refused is None:
            raise
        raise refused from e


@dataclass(frozen=True)
class StorageUsage:
    """What one department's datasets hold."""

    department: str
    stored_bytes: int
    datasets: int
    quota_bytes: int | None
    """The department's own quota; None: the node's default."""

    def quota_or(self, default: int) -> int:
        """The quota that applies: its own, else ``default`` (the node's)."""
        return default if self.quota_bytes is None else self.quota_bytes

    def to_dict(self) -> dict[str, object]:
        return {
            "department": self.department,
            "stored_bytes": self.stored_bytes,
            "datasets": self.datasets,
            "quota_bytes": self.quota_bytes,
        }


async def storage_usage(pool: Any, department: str | None = None) -> list[StorageUsage]:
    """What each department's datasets hold (only ``department``'s, if given), with its
    own quota: one row per department, those with no dataset included."""
    rows = await pool.fetch(
        """
        SELECT p.code, p.max_stored_bytes,
               coalesce(sum(s.stored_bytes), 0)::bigint AS stored, count(d.code) AS datasets
        FROM department p
        LEFT JOIN dataset d ON d.owner = p.code
        LEFT JOIN dataset_stream s ON s.dataset = d.code
        WHERE $1::text IS NULL OR p.code = $1
        GROUP BY p.code, p.max_stored_bytes
        ORDER BY p.code
        """,
        department,
    )
    return [
        StorageUsage(row["code"], int(row["stored"]), int(row["datasets"]), row["max_stored_bytes"])
        for row in rows
    ]
