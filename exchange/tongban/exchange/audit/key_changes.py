"""Rotating the access log's checkpoint key, so that anyone who trusts the first key can
follow every later one (docs/audit-log.md, "Rotating the checkpoint key").

A change is a C2SP signed note, signed by the key being replaced::

    tongban.log-key-change/v1
    <origin>
    <from size>
    <verifier key of the new key>

It says: checkpoints at sizes from ``from size`` on are signed by the new key. The change
is announced, under the checkpoint signers' lock, right after a last checkpoint by the old
key covers every entry so far, so no entry is left under a key that never signed it. The
notes rest in ``log_key_change`` (append-only); a verifier needs nothing from that table
but the notes, and checks each under the key it already trusts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tongban.errors import TongbanError
from tongban.exchange.audit.note import (
    NoteInvalid,
    open_note,
    parse_verifier_key,
    sign_note,
    verifier_key,
)
from tongban.signing.keys import Signer

__all__ = [
    "ANNOUNCEMENT",
    "KeyChangeInvalid",
    "KeyEpoch",
    "announce",
    "key_at",
    "key_schedule",
    "read_key_changes",
]

ANNOUNCEMENT = "tongban.log-key-change/v1"
_MAX_SIZE = (1 << 63) - 1


class KeyChangeInvalid(TongbanError):
    """A recorded key change is not signed by the key it replaces, or is malformed."""

    reason = "LOG_KEY_CHANGE_INVALID"
    status = "DATA_LOSS"


@dataclass(frozen=True)
class KeyEpoch:
    """Checkpoints at sizes from ``from_size`` on are signed by ``key``."""

    from_size: int
    key: Ed25519PublicKey
    verifier_key: str


def announce(origin: str, from_size: int, old: Signer, new_verifier_key: str) -> str:
    """The signed note announcing ``new_verifier_key`` from ``from_size`` on, signed by
    ``old`` (the key it replaces)."""
    body = f"{ANNOUNCEMENT}\n{origin}\n{from_size}\n{new_verifier_key}\n"
    return sign_note(body, origin, old)


async def read_key_changes(pool: asyncpg.Pool | asyncpg.Connection) -> list[asyncpg.Record]:
    """The recorded changes, oldest first."""
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT from_size, verifier_key, announcement FROM log_key_change ORDER BY from_size"
    )
    return rows


def key_schedule(
    origin: str, anchor: Ed25519PublicKey, changes: Sequence[asyncpg.Record]
) -> list[KeyEpoch]:
    """Which key signs which checkpoints: ``anchor`` (the first key, which the verifier
    trusts) from size 0, then each recorded change, each checked under the key before it.

    Raises KeyChangeInvalid naming the first change that is not signed by the key it
    replaces, does not say what its row says, or does not move forward."""
    epochs = [KeyEpoch(0, anchor, verifier_key(origin, anchor))]
    for row in changes:
        from_size, stated = int(row["from_size"]), str(row["verifier_key"])
        where = f"The checkpoint key change at size {from_size}"
        try:
            text = open_note(row["announcement"], [(origin, epochs[-1].key)])
        except NoteInvalid as e:
            raise KeyChangeInvalid(
                f"{where} is not signed by the key it replaces ({e.message}).",
                metadata={"from_size": str(from_size)},
            ) from None
        lines = text.split("\n")
        expected = [ANNOUNCEMENT, origin, str(from_size), stated, ""]
        if lines != expected or from_size <= epochs[-1].from_size or from_size > _MAX_SIZE:
            raise KeyChangeInvalid(
                f"{where} does not announce what its record says, or does not move forward.",
                metadata={"from_size": str(from_size)},
            )
        try:
            name, key = parse_verifier_key(stated)
        except NoteInvalid as e:
            raise KeyChangeInvalid(f"{where} names an unusable key ({e.message}).") from None
        if name != origin:
            raise KeyChangeInvalid(f"{where} names a key for {name!r}, not {origin!r}.")
        epochs.append(KeyEpoch(from_size, key, stated))
    return epochs


def key_at(epochs: Sequence[KeyEpoch], size: int) -> KeyEpoch:
    """The epoch whose key signs the checkpoint at ``size``."""
    found = epochs[0]
    for epoch in epochs:
        if epoch.from_size <= size:
            found = epoch
    return found
