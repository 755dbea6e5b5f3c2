"""Verifying the whole access log: nothing altered, nothing removed.

Recomputes the Merkle tree from the stored leaves and checks, in one pass:

- indices run 0, 1, 2, ... with no gap (a deleted row shows as a missing index);
- each leaf is a canonical version-1 entry and the searchable columns equal what it says
  (an edited column shows as a mismatch at its index);
- each stored subtree hash (``log_node``: every perfect subtree of 256 leaves or more)
  equals the one recomputed from its leaves, so the proofs served from it hold;
- at every signed checkpoint, its signature verifies under the log's key and the
  recomputed root equals the signed root (a rewrite that also fixed the stored hashes
  still cannot match a signature);
- consecutive checkpoints are consistent (RFC 9162 proof from the stored nodes);
- the tree head (size, root) equals the recomputation;
- each entry's row in the auditors' search table (``access_log_search``) holds the
  entry's columns, so an altered search row cannot hide an entry from a search or the
  subject view;
- the entries sequenced but not yet in the tree follow the head with no gap and end
  where the sequence does.

Raises ``LogCorrupt`` naming the first bad index, or returns a report.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tongban.errors import TongbanError
from tongban.exchange.audit.key_changes import (
    KeyChangeInvalid,
    key_at,
    key_schedule,
    read_key_changes,
)
from tongban.exchange.audit.leaf import LeafInvalid, decode_leaf, leaf_of_columns
from tongban.exchange.audit.merkle import (
    HASH_SIZE,
    Completed,
    Frontier,
    ProofInvalid,
    consistency_nodes,
    consistency_proof,
    leaf_hash,
    verify_consistency,
)
from tongban.exchange.audit.note import NoteInvalid, open_checkpoint
from tongban.exchange.audit.sm2_note import sm2_signature_status
from tongban.exchange.audit.store import STORED_LEVEL, fetch_nodes, stored_nodes
from tongban.signing.sm2 import Sm2PublicKey

__all__ = ["CHUNK_SQL", "LogCorrupt", "VerifyReport", "verify_log"]

_CHUNK = 20_000
# Whether an entry's search row (s) holds its columns (a).
_SEARCHED = ("at", "caller", "officer", "action", "dataset", "purpose", "case_id",
             "subject_hmac", "decision")  # fmt: skip
_SEARCH_MATCHES = (
    f"(s.idx IS NOT NULL AND ({', '.join('s.' + c for c in _SEARCHED)})"
    f" IS NOT DISTINCT FROM ({', '.join('a.' + c for c in _SEARCHED)}))"
)
CHUNK_SQL = (  # $1: the index before the chunk, $2: its rows at most, $3: the tree's size
    "SELECT a.idx, a.leaf, a.at, a.node, a.caller, a.officer, a.action, a.dataset,"  # noqa: S608 - built from fixed names
    " a.fields, a.purpose, a.case_id, a.subject_hmac, a.decision, a.reason,"
    f" {_SEARCH_MATCHES} AS searchable"
    " FROM access_log a LEFT JOIN access_log_search s ON s.idx = a.idx"
    " WHERE a.idx > $1 AND a.idx < $3 ORDER BY a.idx LIMIT $2"
)


class LogCorrupt(TongbanError):
    reason = "LOG_CORRUPT"
    status = "DATA_LOSS"


@dataclass(frozen=True)
class VerifyReport:
    size: int
    root: bytes
    checkpoints: int
    seconds: float
    sm2_checkpoints: int = 0
    """Checkpoints whose SM2 line verified (with ``sm2_verifier``)."""
    key_changes: int = 0
    """Rotations of the checkpoint key followed from ``verifier`` (audit/key_changes.py)."""


def _leaf_matches_columns(row: asyncpg.Record, leaf: bytes) -> bool:
    """Whether ``leaf`` is the canonical leaf of the entry ``row``'s columns describe.

    True exactly when the leaf is a canonical version-1 entry whose values equal the
    columns, because the encoding is one-to-one on what the columns can hold, but for
    an empty subject (written as null, like no subject), which is sent to the slow
    check. One encode instead of a parse, a re-encode and a comparison: the per-entry
    cost of ``audit verify`` roughly halves."""
    subject = row["subject_hmac"]
    if subject is not None and not subject:
        return False
    try:
        expected = leaf_of_columns(
            row["at"], row["node"], row["caller"], row["officer"], row["action"],
            row["dataset"], row["fields"], row["purpose"], row["case_id"],
            subject, row["decision"], row["reason"],
        )  # fmt: skip
    except (ValueError, TypeError, AttributeError):  # a NULL where the schema has none
        return False
    return expected == leaf


def _name_mismatch(index: int, row: asyncpg.Record, leaf: bytes) -> NoReturn:
    """Raise LogCorrupt saying whether entry ``index``'s leaf is invalid or its columns
    differ from it (``_leaf_matches_columns`` found one or the other)."""
    try:
        entry = decode_leaf(leaf)
    except LeafInvalid as e:
        raise _corrupt(index, f"is not a valid leaf ({e.message})") from None
    fields = row["fields"]
    columns = (
        row["at"], row["node"], row["caller"], row["officer"], row["action"],
        row["dataset"], None if fields is None else list(fields), row["purpose"],
        row["case_id"], row["subject_hmac"], row["decision"], row["reason"],
    )  # fmt: skip
    if columns != entry.columns():
        raise _corrupt(index, "has columns that differ from its leaf")
    raise AssertionError(f"entry {index}: the leaf and its columns agree after all")


def _add(frontier: Frontier, digests: bytearray, completed: Completed) -> None:
    """Add the leaves ``digests`` holds to ``frontier`` and empty it, collecting the stored
    nodes they complete in ``completed``."""
    levels, indices, hashes = frontier.extend(bytes(digests), min_level=STORED_LEVEL)
    completed.levels.extend(levels)
    completed.indices.extend(indices)
    completed.hashes.extend(hashes)
    digests.clear()


async def _check_stored(pool: asyncpg.Pool, completed: Completed) -> None:
    """Raise LogCorrupt unless ``log_node`` holds each node of ``completed`` with the hash
    recomputed from its leaves (the proofs are served from these)."""
    if not completed.levels:
        return
    stored = await stored_nodes(pool, completed.levels, completed.indices)
    for k, node in enumerate(zip(completed.levels, completed.indices, strict=True)):
        level, index = node
        first, size = index << level, 1 << level
        held = stored.get(node)
        if held is None:
            raise _corrupt(first, f"starts a subtree of {size:,} entries whose hash is not stored")
        if held != completed.hashes[k * HASH_SIZE : (k + 1) * HASH_SIZE]:
            raise _corrupt(
                first,
                f"starts a subtree of {size:,} entries whose stored hash differs from its leaves",
            )


def _corrupt(index: int, what: str) -> LogCorrupt:
    return LogCorrupt(
        f"The access log was altered: entry {index} {what}.",
        metadata={"first_bad_index": str(index)},
    )


async def verify_log(
    pool: asyncpg.Pool,
    *,
    origin: str,
    verifier: Ed25519PublicKey,
    progress: Callable[[int, int], None] | None = None,
    sm2_verifier: Sm2PublicKey | None = None,
) -> VerifyReport:
    """Check the log end to end; return a report or raise LogCorrupt. ``verifier`` is the
    log's first checkpoint key, the one a verifier trusts; later keys are followed through
    the recorded changes, each signed by the key before it. With
    ``sm2_verifier``, every SM2 line by that key must verify too (checkpoints signed
    before the SM2 key existed have none)."""
    started = time.perf_counter()
    # The head, the sequence and the entries past the head, under one snapshot.
    head = await pool.fetchrow(
        "SELECT h.size, h.root, q.next,"
        " (SELECT count(*) FROM access_log WHERE idx >= h.size) AS staged,"
        " (SELECT max(idx) FROM access_log WHERE idx >= h.size) AS last"
        " FROM log_state h, log_sequence q"
    )
    assert head is not None
    total = int(head["size"])
    staged, sequenced = int(head["staged"]), int(head["next"])
    last = sequenced - 1
    if sequenced < total or total + staged != sequenced or (staged and head["last"] != last):
        raise LogCorrupt(
            f"The entries past the tree head ({total:,}) do not run without a gap to the "
            f"sequence's next index ({sequenced:,}): {staged:,} are stored.",
            metadata={"first_bad_index": str(total)},
        )
    checkpoints = []
    sm2_count = 0
    # The key of each range of checkpoints: ``verifier`` first, then each recorded change,
    # followed only through notes signed by the key before it.
    try:
        epochs = key_schedule(origin, verifier, await read_key_changes(pool))
    except KeyChangeInvalid as e:
        raise LogCorrupt(e.message, metadata=dict(e.metadata)) from None
    for row in await pool.fetch("SELECT size, root, note FROM log_checkpoint ORDER BY size"):
        epoch = key_at(epochs, row["size"])
        try:
            signed = open_checkpoint(row["note"], [(origin, epoch.key)], origin=origin)
        except NoteInvalid as e:
            raise LogCorrupt(
                f"The checkpoint at size {row['size']} does not verify under the log's key "
                f"for that size ({epoch.verifier_key}): {e.message}.",
                metadata={"checkpoint_size": str(row["size"])},
            ) from None
        if signed.size != row["size"] or signed.root != bytes(row["root"]):
            raise LogCorrupt(
                f"The stored size or root of the checkpoint at size {row['size']} differs "
                "from what its note signs.",
                metadata={"checkpoint_size": str(row["size"])},
            )
        if signed.size > total:
            raise LogCorrupt(
                f"A checkpoint signs {signed.size:,} entries but the log has {total:,}: "
                f"entries from {total} on were removed.",
                metadata={"first_bad_index": str(total)},
            )
        if sm2_verifier is not None:
            sm2_signed = sm2_signature_status(row["note"], origin, sm2_verifier)
            if sm2_signed is False:
                raise LogCorrupt(
                    f"The SM2 signature of the checkpoint at size {row['size']} does not "
                    "verify under the log's SM2 key.",
                    metadata={"checkpoint_size": str(row["size"])},
                )
            sm2_count += bool(sm2_signed)
        checkpoints.append(signed)

    frontier = Frontier(0, [])
    due = [c for c in checkpoints if c.size > 0]
    next_checkpoint = 0
    unsearchable: int | None = None

    async def chunk_after(index: int) -> list[asyncpg.Record]:
        return await pool.fetch(
            CHUNK_SQL,
            index,
            _CHUNK,
            total,
        )

    # Read the next chunk while checking this one: the database works while Python checks.
    reading = asyncio.ensure_future(chunk_after(-1))
    try:
        while True:
            rows = await reading
            if not rows:
                break
            reading = asyncio.ensure_future(chunk_after(rows[-1]["idx"]))
            await asyncio.sleep(0)  # let the read go out before the checks hold the loop
            digests = bytearray()  # of the leaves past the frontier, not yet added to it
            completed = Completed([], [], bytearray())  # the stored nodes they complete
            for row in rows:
                index = row["idx"]
                if index != frontier.size + len(digests) // HASH_SIZE:
                    raise _corrupt(
                        frontier.size + len(digests) // HASH_SIZE, "is missing (deleted)"
                    )
                leaf = bytes(row["leaf"])
                if not _leaf_matches_columns(row, leaf):
                    _name_mismatch(index, row, leaf)
                if not row["searchable"] and unsearchable is None:
                    unsearchable = index  # said last: the log's own findings come first
                digests += leaf_hash(leaf)
                if next_checkpoint < len(due) and due[next_checkpoint].size == index + 1:
                    _add(frontier, digests, completed)
                    while next_checkpoint < len(due) and due[next_checkpoint].size == index + 1:
                        if frontier.root() != due[next_checkpoint].root:
                            raise LogCorrupt(
                                f"The entries before index {frontier.size} no longer match the "
                                f"checkpoint signed at size {frontier.size}.",
                                metadata={
                                    "first_bad_index": "unknown",
                                    "checkpoint_size": str(frontier.size),
                                },
                            )
                        next_checkpoint += 1
            _add(frontier, digests, completed)
            await _check_stored(pool, completed)
            if progress is not None:
                progress(frontier.size, total)
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
    if frontier.size != total:
        raise _corrupt(frontier.size, "is missing (deleted)")
    if frontier.root() != bytes(head["root"]):
        raise LogCorrupt("The tree head's root differs from the recomputed tree.")
    for old, new in itertools.pairwise(checkpoints):
        nodes = await fetch_nodes(pool, consistency_nodes(old.size, new.size))
        try:
            verify_consistency(
                old.size, new.size, old.root, new.root, consistency_proof(old.size, new.size, nodes)
            )
        except ProofInvalid as e:
            raise LogCorrupt(
                f"Checkpoints {old.size} and {new.size} are not consistent: {e.message}.",
                metadata={"checkpoint_size": str(new.size)},
            ) from None
    if unsearchable is not None:
        raise _corrupt(unsearchable, "has a search row that differs from it, or none")
    return VerifyReport(
        total,
        frontier.root(),
        len(checkpoints),
        time.perf_counter() - started,
        sm2_count,
        len(epochs) - 1,
    )
