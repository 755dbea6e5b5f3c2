"""Signing checkpoints of the access log (C2SP tlog-checkpoint in a C2SP signed note).

A node signs a new checkpoint soon after its integrator grows the tree (``interval``), and
on demand (``sign_now``, which first brings the tree up to every entry sequenced so far:
``Integrator.catch_up``). Signers serialise on a transaction-scoped advisory lock, so with several
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
from asyncpg.pool import PoolConnectionProxy
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tongban.errors import TongbanError
from tongban.exchange.audit.integrator import Integrator
from tongban.exchange.audit.key_changes import announce
from tongban.exchange.audit.note import checkpoint_body, sign_note, verifier_key
from tongban.exchange.audit.sm2_note import add_sm2_signature, sm2_verifier_key
from tongban.exchange.db.trouble import DRIVER_ERRORS
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


class KeyNotCurrent(TongbanError):
    """This process does not hold the log's current checkpoint key."""

    reason = "LOG_KEY_NOT_CURRENT"
    status = "FAILED_PRECONDITION"


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
        reload: Callable[[], Signer] | None = None,
        integrator: Integrator | None = None,
    ) -> None:
        self._pool = pool
        # The node's integrator; elsewhere (the CLI) one that is not started, whose
        # catch_up waits for a node's, or integrates when no process leads.
        self._integrator = integrator or Integrator(pool)
        self._key = key
        # After a rotation of the checkpoint key (audit/key_changes.py) this loads the key
        # again; a node still holding the old one signs nothing until it has the new one.
        self._reload = reload
        # With an SM2 key, each checkpoint also carries an SM2/SM3 line (audit/sm2_note.py).
        self._sm2 = sm2
        self.origin = origin
        self._clock = clock
        self._signer = signer
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], None]] = []
        self._use(key)
        self.sm2_verifier_key = None if sm2 is None else sm2_verifier_key(origin, sm2.public)

    def _use(self, key: Signer) -> None:
        public_key = key.public_key()
        if not isinstance(public_key, Ed25519PublicKey):
            raise TypeError("Checkpoints are signed with an Ed25519 key.")
        self._key = key
        self.public_key = public_key
        self.verifier_key = verifier_key(self.origin, public_key)

    async def _current_key(self, conn: PoolConnectionProxy[asyncpg.Record]) -> bool:
        """Whether this node holds the key the log's last recorded change names (True when
        there is none); reloads the key once if not."""
        announced = await conn.fetchval(
            "SELECT verifier_key FROM log_key_change ORDER BY from_size DESC LIMIT 1"
        )
        if announced is None or announced == self.verifier_key:
            return True
        if self._reload is not None:
            with contextlib.suppress(TongbanError, OSError):
                self._use(self._reload())
        if announced == self.verifier_key:
            return True
        _log.warning(
            "the log's checkpoint key was rotated to %s but this node holds %s; it signs no "
            "checkpoint until it has the new key (restart it, or finish the rotation)",
            announced,
            self.verifier_key,
        )
        return False

    async def rotate(self, new: Signer) -> int:
        """Make ``new`` the log's checkpoint key: under the signers' lock, sign a last
        checkpoint of everything so far with the current key, then record the change,
        announced in a note signed by the current key. Return the first size the new key
        signs. Repeating it for the same key changes nothing."""
        public = new.public_key()
        if not isinstance(public, Ed25519PublicKey):
            raise TypeError("Checkpoints are signed with an Ed25519 key.")
        new_vkey = verifier_key(self.origin, public)
        await self._integrator.catch_up()
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SIGNER_LOCK)
            last = await conn.fetchrow(
                "SELECT from_size, verifier_key FROM log_key_change ORDER BY from_size DESC LIMIT 1"
            )
            if last is not None and last["verifier_key"] == new_vkey:
                return int(last["from_size"])
            if not await self._current_key(conn):
                raise KeyNotCurrent(
                    "This process does not hold the log's current checkpoint key, so it "
                    "cannot announce the next one; finish the earlier rotation first."
                )
            head, _ = await self._sign_head(conn)
            from_size = max(head + 1, int(last["from_size"]) + 1 if last else 1)
            await conn.execute(
                "INSERT INTO log_key_change (from_size, verifier_key, announcement, changed_at)"
                " VALUES ($1, $2, $3, $4)",
                from_size,
                new_vkey,
                announce(self.origin, from_size, self._key, new_vkey),
                self._clock.now(),
            )
        self._use(new)
        return from_size

    def on_signed(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` (quick, non-blocking) after each checkpoint this node signs;
        return the function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def start(self, grown: asyncio.Event) -> None:
        """Sign a checkpoint now (the log may have grown while no node ran), then keep
        signing after growth (``grown``: the integrator's ``integrated``)."""
        await self.sign_now()
        self._task = asyncio.get_running_loop().create_task(self._run(grown), name="checkpoints")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.sign_now()  # cover what this node appended last
        except (*DRIVER_ERRORS, TongbanError) as e:
            _log.warning("no last checkpoint signed at stop (%s)", e)

    async def _run(self, grown: asyncio.Event) -> None:
        while True:
            await grown.wait()
            grown.clear()
            await asyncio.sleep(self._interval)  # let a burst of appends land together
            try:
                await self.sign_now()
            except (*DRIVER_ERRORS, TongbanError) as e:
                _log.warning("checkpoint not signed (%s); retrying after the next append", e)

    async def sign_now(self) -> CheckpointRow:
        """Sign the current tree head unless a checkpoint already covers it; return the
        latest checkpoint. Raises AuditUnavailable if the tree cannot be brought up to the
        entries sequenced so far."""
        signed = False
        await self._integrator.catch_up()
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SIGNER_LOCK)
            if await self._current_key(conn):
                _, signed = await self._sign_head(conn)
            row = await conn.fetchrow(f"{_SELECT} ORDER BY c.size DESC LIMIT 1")
        if row is None:
            raise CheckpointNotFound(
                "The log has no checkpoint yet, and this node does not hold its current key."
            )
        if signed:
            for listener in list(self._listeners):
                listener()
        return _row(row)

    async def _sign_head(self, conn: PoolConnectionProxy[asyncpg.Record]) -> tuple[int, bool]:
        """Under the signers' lock: sign the tree head unless a checkpoint covers it
        already. Return the head's size and whether this call signed it."""
        head = await conn.fetchrow("SELECT size, root FROM log_state")
        assert head is not None
        size = int(head["size"])
        latest = await conn.fetchval("SELECT max(size) FROM log_checkpoint")
        if latest is not None and latest >= size:
            return size, False
        root = bytes(head["root"])
        note = sign_note(checkpoint_body(self.origin, size, root), self.origin, self._key)
        if self._sm2 is not None:
            note = add_sm2_signature(note, self.origin, self._sm2)
        await conn.execute(
            "INSERT INTO log_checkpoint (size, root, note, signed_at, signer)"
            " VALUES ($1, $2, $3, $4, $5)",
            size,
            root,
            note,
            self._clock.now(),
            self._signer,
        )
        return size, True

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
