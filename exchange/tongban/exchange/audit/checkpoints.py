"""Signing checkpoints of the access log (C2SP tlog-checkpoint in a C2SP signed note).

A node signs a new checkpoint soon after the log grows (``interval``), and on demand
(``sign_now``). Signers serialise on a transaction-scoped advisory lock, so with several
nodes on one database only one signs at a time and no size is signed twice; every
checkpoint is kept (``log_checkpoint``), so consistency between any two can be proved.

Checkpoints are read with the witnesses' cosignatures collected for them
(``witness_cosignature``, ``tongban.exchange.witness.collector``) appended to the log's
signature, one note signature line each, as C2SP tlog-cosignature shows them: verifiers
that do not know a witness ignore its line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tongban.errors import TongbanError
from tongban.exchange.audit.note import checkpoint_body, sign_note, verifier_key
from tongban.exchange.audit.sm2_note import add_sm2_signature, sm2_verifier_key
from tongban.signing.clock import Clock
from tongban.signing.keys import Signer
from tongban.signing.sm2 import Sm2PrivateKey

__all__ = ["CheckpointNotFound", "CheckpointRow", "Checkpointer"]

_log = logging.getLogger(__name__)

# pg_advisory_xact_lock key for checkpoint signers: "tbckpt" in ASCII.
_SIGNER_LOCK = int.from_bytes(b"tbckpt", "big")
_MAX_SIZE = 2**63 - 1  # log_checkpoint.size is a bigint


class CheckpointNotFound(TongbanError):
    reason = "CHECKPOINT_NOT_FOUND"
    status = "NOT_FOUND"


@dataclass(frozen=True)
class CheckpointRow:
    size: int
    root: bytes
    note: str
    """The checkpoint as served: the log's signed note, then the cosignature lines of the
    witnesses that cosigned it (none yet for a checkpoint just signed)."""
    signed_at: datetime
    log_note: str
    """The signed note exactly as the log signed it, without cosignatures."""


# Cosignatures in a fixed order, so that every node serves the same note.
_SELECT = (
    "SELECT c.size, c.root, c.note, c.signed_at, coalesce((SELECT string_agg(w.line, ''"
    " ORDER BY w.witness, w.key_id) FROM witness_cosignature w WHERE w.size = c.size), '')"
    " AS cosignatures FROM log_checkpoint c"
)


def _row(row: asyncpg.Record) -> CheckpointRow:
    note = row["note"]
    return CheckpointRow(
        row["size"], bytes(row["root"]), note + row["cosignatures"], row["signed_at"], note
    )


class Checkpointer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        key: Signer,
        origin: str,
        clock: Clock,
        *,
        signer: str,
        interval: float = 0.5,
        sm2: Sm2PrivateKey | None = None,
    ) -> None:
        self._pool = pool
        self._key = key
        # With an SM2 key, each checkpoint also carries an SM2/SM3 line (audit/sm2_note.py).
        self._sm2 = sm2
        self.origin = origin
        self._clock = clock
        self._signer = signer
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], None]] = []
        public_key = key.public_key()
        if not isinstance(public_key, Ed25519PublicKey):
            raise TypeError("Checkpoints are signed with an Ed25519 key.")
        self.public_key = public_key
        self.verifier_key = verifier_key(origin, public_key)
        self.sm2_verifier_key = None if sm2 is None else sm2_verifier_key(origin, sm2.public)

    def on_signed(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` (quick, non-blocking) after each checkpoint this node signs;
        return the function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def start(self, grown: asyncio.Event) -> None:
        """Sign a checkpoint now (the log may have grown while no node ran), then keep
        signing after growth."""
        await self.sign_now()
        self._task = asyncio.get_running_loop().create_task(self._run(grown), name="checkpoints")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await self.sign_now()  # cover what this node appended last

    async def _run(self, grown: asyncio.Event) -> None:
        while True:
            await grown.wait()
            grown.clear()
            await asyncio.sleep(self._interval)  # let a burst of appends land together
            try:
                await self.sign_now()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                _log.warning("checkpoint not signed (%s); retrying after the next append", e)

    async def sign_now(self) -> CheckpointRow:
        """Sign the current tree head unless a checkpoint already covers it; return the
        latest checkpoint."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SIGNER_LOCK)
            head = await conn.fetchrow("SELECT size, root FROM log_state")
            assert head is not None
            latest = await conn.fetchrow(f"{_SELECT} ORDER BY c.size DESC LIMIT 1")
            if latest is not None and latest["size"] >= head["size"]:
                return _row(latest)
            root = bytes(head["root"])
            note = sign_note(
                checkpoint_body(self.origin, head["size"], root), self.origin, self._key
            )
            if self._sm2 is not None:
                note = add_sm2_signature(note, self.origin, self._sm2)
            row = await conn.fetchrow(
                "INSERT INTO log_checkpoint (size, root, note, signed_at, signer)"
                " VALUES ($1, $2, $3, $4, $5)"
                " RETURNING size, root, note, signed_at, '' AS cosignatures",
                head["size"],
                root,
                note,
                self._clock.now(),
                self._signer,
            )
        assert row is not None
        for listener in list(self._listeners):
            listener()
        return _row(row)

    async def latest(self) -> CheckpointRow:
        row = await self._pool.fetchrow(f"{_SELECT} ORDER BY c.size DESC LIMIT 1")
        if row is None:
            raise CheckpointNotFound("The log has no checkpoint yet; a node signs one at start.")
        return _row(row)

    async def at_size(self, size: int) -> CheckpointRow:
        """The checkpoint signed at ``size``; CheckpointNotFound if there is none."""
        row = None
        if 0 <= size <= _MAX_SIZE:
            row = await self._pool.fetchrow(f"{_SELECT} WHERE c.size = $1", size)
        if row is None:
            raise CheckpointNotFound(
                f"No checkpoint was signed at size {size}; ask for the latest or another size."
            )
        return _row(row)
