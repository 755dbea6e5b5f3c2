"""snapshot_diff: compare a full read of a source with what was published. Pure.

A source with no usable cursor (a nightly export, a table without ``updated_at``) is read
whole each time. Each record's fingerprint is compared with the one stored when it was
last published: a new key is an insert, a different fingerprint a change, an equal one
nothing at all, and a published key the snapshot no longer holds a delete. Only inserts,
changes and deletes go to the exchange.

``sync`` applies the same rules incrementally (batch by batch, with the stored
fingerprints in the state store and a generation number marking what a snapshot has
seen), so that a snapshot larger than memory, or interrupted half-way, still diffs
exactly. ``diff_snapshot`` is the whole-set form of the same rules.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from tongban.adapters.errors import SnapshotShrank

__all__ = [
    "ChangeKind",
    "SnapshotDiff",
    "check_delete_ratio",
    "classify",
    "diff_snapshot",
]


class ChangeKind(enum.StrEnum):
    """What a snapshot row is, compared with what was published."""

    INSERT = "insert"
    CHANGE = "change"


def classify(fingerprint: str, stored: str | None) -> ChangeKind | None:
    """Return whether a record with ``fingerprint`` is an insert, a change, or (``None``)
    the same as the published one whose fingerprint is ``stored``."""
    if stored is None:
        return ChangeKind.INSERT
    if stored != fingerprint:
        return ChangeKind.CHANGE
    return None


@dataclass(frozen=True)
class SnapshotDiff:
    """Keys to insert, change and delete, each sorted."""

    inserts: tuple[str, ...]
    changes: tuple[str, ...]
    deletes: tuple[str, ...]

    @property
    def empty(self) -> bool:
        """Whether the snapshot equals what was published."""
        return not (self.inserts or self.changes or self.deletes)


def diff_snapshot(current: Mapping[str, str], stored: Mapping[str, str]) -> SnapshotDiff:
    """Return the difference between a snapshot (key → fingerprint) and the published
    state (key → fingerprint)."""
    inserts: list[str] = []
    changes: list[str] = []
    for key, fingerprint in current.items():
        kind = classify(fingerprint, stored.get(key))
        if kind is ChangeKind.INSERT:
            inserts.append(key)
        elif kind is ChangeKind.CHANGE:
            changes.append(key)
    deletes = [key for key in stored if key not in current]
    return SnapshotDiff(tuple(sorted(inserts)), tuple(sorted(changes)), tuple(sorted(deletes)))


def check_delete_ratio(stream: str, deletes: int, published: int, max_ratio: float) -> None:
    """Return if deleting ``deletes`` of ``published`` records is within ``max_ratio``.

    Raises ``SnapshotShrank`` otherwise: an empty or truncated export must not empty the
    dataset. A ratio of 1 allows anything.
    """
    if deletes == 0 or max_ratio >= 1 or published == 0:
        return
    if deletes / published > max_ratio:
        raise SnapshotShrank(
            f"Stream {stream}'s snapshot would delete {deletes} of its {published} "
            f"published records, more than the {max_ratio:.0%} its mapping allows; check "
            f"the export is complete, then raise max_delete_ratio for one run if the "
            f"deletions are real.",
            metadata={
                "stream": stream,
                "deletes": str(deletes),
                "published": str(published),
                "max_delete_ratio": str(max_ratio),
            },
        )
