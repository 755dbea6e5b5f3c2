"""A tlog-witness: verifies a log's new checkpoint against the last one it cosigned and,
if the log only grew, cosigns it (c2sp.org/tlog-witness, c2sp.org/tlog-cosignature).

:func:`open_submission` (checks 1 to 4, pure) and :meth:`Submission.check` (check 5,
run by a state store atomically with recording the checkpoint) are the protocol's
checks, shared by both witnesses: :class:`Witness`, the standalone one over its SQLite
file (bytes in, cosignature line out; it blocks, so the HTTP server runs it in a
thread), and an exchange witnessing its peers over PostgreSQL
(``federation.witnessing``). Checks, in the spec's order, each refusal leaving the state
as it was:

1. the body is an old size line, proof lines, an empty line and a signed checkpoint
   (else 400);
2. the checkpoint's origin is a log this witness follows (else 404);
3. a signature by one of the log's keys verifies (else 403; a malformed checkpoint 400);
4. the old size is at most the checkpoint's size (else 400);
5. atomically with recording the new checkpoint: the old size is the size of the latest
   checkpoint cosigned for the log (else 409 with that size); at the same size the root
   is the same (else 409: a split view); the consistency proof from the old size to the
   new one verifies against the stored root (else 422).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tongban.exchange.audit.cosignature import WitnessKey, cosign
from tongban.exchange.audit.merkle import ProofInvalid, verify_consistency
from tongban.exchange.audit.note import (
    NoteInvalid,
    NoteSignatureInvalid,
    open_checkpoint,
    parse_verifier_key,
    read_note,
)
from tongban.exchange.witness.protocol import (
    WitnessCheckpointUnsigned,
    WitnessConflict,
    WitnessLogUnknown,
    WitnessOldSizeInvalid,
    WitnessProofInvalid,
    WitnessRefusal,
    WitnessRequestMalformed,
    parse_add_checkpoint,
)
from tongban.exchange.witness.state import WitnessState
from tongban.signing.clock import Clock
from tongban.signing.keys import Signer

__all__ = [
    "LogKeys",
    "Submission",
    "Witness",
    "check_witness_key",
    "kept_as_evidence",
    "log_keys",
    "open_submission",
]

_log = logging.getLogger(__name__)

LogKeys = Mapping[str, Sequence[tuple[str, Ed25519PublicKey]]]
"""The logs a witness follows: origin to the verifier keys (name, key) it trusts for it."""


def log_keys(vkeys: Sequence[str]) -> dict[str, list[tuple[str, Ed25519PublicKey]]]:
    """Return the logs named by verifier keys (``tongban audit key`` prints a log's): the
    origin of each is its key name, as a C2SP checkpoint's signature line names its log.
    Several keys of one origin are all trusted (a key being rotated).

    Raises NoteInvalid for a malformed verifier key, ValueError if none is given.
    """
    logs: dict[str, list[tuple[str, Ed25519PublicKey]]] = {}
    for text in vkeys:
        name, key = parse_verifier_key(text.strip())
        logs.setdefault(name, []).append((name, key))
    if not logs:
        raise ValueError("a witness follows at least one log; give its verifier key")
    return logs


@dataclass(frozen=True)
class Submission:
    """An add-checkpoint request whose checkpoint verified (checks 1 to 4), to be set
    against the witness's state (check 5, :meth:`check`). The same for every state
    store: the standalone witness's SQLite file and an exchange's PostgreSQL."""

    origin: str
    text: str
    """The checkpoint's text, without signature lines: what is cosigned and stored."""
    size: int
    root: bytes
    old_size: int
    proof: tuple[bytes, ...]
    note: str
    """The signed checkpoint as received (kept as evidence when refused)."""

    def check(self, stored_size: int, stored_root: bytes) -> None:
        """Check 5, against the latest checkpoint cosigned for the log (size 0 and the
        empty tree's root if none was): the state store calls it atomically with
        recording this one.

        Raises WitnessConflict (another old size, or the same size with another root: a
        split view) or WitnessProofInvalid.
        """
        if self.old_size != stored_size:
            raise WitnessConflict(
                f"The old size {self.old_size} is not the size of the latest checkpoint "
                f"this witness cosigned for {self.origin}, {stored_size}; send a "
                f"consistency proof from {stored_size}.",
                latest_size=stored_size,
            )
        if self.old_size == self.size and stored_root != self.root:
            raise WitnessConflict(
                f"This witness cosigned another checkpoint of size {self.size} for "
                f"{self.origin}, with a different root: the log shows two views.",
                latest_size=stored_size,
                split_view=True,
            )
        try:
            verify_consistency(self.old_size, self.size, stored_root, self.root, self.proof)
        except ProofInvalid as e:
            raise WitnessProofInvalid(
                f"The consistency proof from size {self.old_size} to {self.size} does not "
                f"verify against the checkpoint this witness cosigned: {e.message}.",
                metadata={"old_size": str(self.old_size), "size": str(self.size)},
            ) from None


def open_submission(body: bytes, logs: LogKeys) -> Submission:
    """Checks 1 to 4 of an add-checkpoint request ``body`` for a witness following
    ``logs``: return the request with its verified checkpoint.

    Raises WitnessRequestMalformed, WitnessLogUnknown, WitnessCheckpointUnsigned or
    WitnessOldSizeInvalid. Pure: nothing is read or recorded.
    """
    request = parse_add_checkpoint(body)
    try:
        text, _ = read_note(request.note)
    except NoteInvalid as e:
        raise WitnessRequestMalformed(
            f"The checkpoint is not a signed note: {e.message}."
        ) from None
    origin = text.split("\n", 1)[0]
    keys = logs.get(origin)
    if keys is None:
        raise WitnessLogUnknown(
            f"This witness does not follow the log {origin[:200]!r}; its operator adds a "
            "log with its verifier key (tongban witness serve --log).",
            metadata={"origin": origin[:200]},
        )
    try:
        checkpoint = open_checkpoint(request.note, keys, origin=origin)
    except NoteSignatureInvalid as e:
        raise WitnessCheckpointUnsigned(
            f"The checkpoint carries no valid signature by a key this witness trusts for "
            f"{origin}: {e.message}.",
            metadata={"origin": origin},
        ) from None
    except NoteInvalid as e:
        raise WitnessRequestMalformed(f"The checkpoint is malformed: {e.message}.") from None
    if request.old_size > checkpoint.size:
        raise WitnessOldSizeInvalid(
            f"The old size {request.old_size} is larger than the checkpoint's size "
            f"{checkpoint.size}."
        )
    return Submission(
        origin, text, checkpoint.size, checkpoint.root, request.old_size, request.proof,
        request.note,
    )  # fmt: skip


def kept_as_evidence(error: WitnessRefusal) -> bool:
    """Whether a refusal of check 5 is kept as evidence: a validly signed checkpoint that
    does not extend what was cosigned (a split view, a proof that does not verify) may
    show the log presenting different views."""
    return isinstance(error, WitnessProofInvalid) or (
        isinstance(error, WitnessConflict) and error.split_view
    )


class Witness:
    """The standalone witness's protocol logic over its key, the logs it follows and its
    SQLite state (``tongban witness serve``)."""

    def __init__(
        self,
        identity: WitnessKey,
        key: Ed25519PrivateKey | Signer,
        logs: LogKeys,
        state: WitnessState,
        clock: Clock,
    ) -> None:
        """Raises ValueError if ``key`` is not ``identity``'s key or no log is given."""
        if not logs:
            raise ValueError("a witness follows at least one log")
        check_witness_key(identity, key)
        self.identity = identity
        self._key = key
        self._logs = logs
        self._state = state
        self._clock = clock

    @property
    def origins(self) -> list[str]:
        return sorted(self._logs)

    def add_checkpoint(self, body: bytes) -> str:
        """Check an add-checkpoint request ``body`` and return the cosignature line.

        Raises a :class:`WitnessRefusal` subclass carrying the HTTP status the spec gives
        the failed check (nothing recorded), or WitnessStateUnusable.
        """
        submission = open_submission(body, self._logs)
        now = self._clock.now()
        try:
            self._state.advance(
                submission.origin,
                submission.check,
                size=submission.size,
                root=submission.root,
                note=submission.text,
                at=now,
            )
        except WitnessRefusal as e:
            if kept_as_evidence(e):
                _log.warning("refused %s: %s", submission.origin, e.message)
                self._state.record_refusal(
                    submission.origin,
                    old_size=submission.old_size,
                    reason=e.reason,
                    note=submission.note,
                    at=now,
                )
            raise
        return cosign(submission.text, self.identity, self._key, int(now.timestamp()))


def check_witness_key(identity: WitnessKey, key: Ed25519PrivateKey | Signer) -> None:
    """Raise ValueError unless ``key`` is the private key of witness ``identity``."""
    public = key.public_key()
    if not isinstance(public, Ed25519PublicKey) or WitnessKey(identity.name, public) != (identity):
        raise ValueError(f"the signing key is not the key of witness {identity.label}")
