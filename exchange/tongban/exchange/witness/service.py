"""A tlog-witness: verifies a log's new checkpoint against the last one it cosigned and,
if the log only grew, cosigns it (c2sp.org/tlog-witness, c2sp.org/tlog-cosignature).

:meth:`Witness.add_checkpoint` is the whole protocol on bytes in, cosignature lines out;
it blocks (SQLite, and possibly a PKCS#11 token), so the HTTP server runs it in a thread.
Checks, in the spec's order, each refusal leaving the state as it was:

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
    WitnessRequestMalformed,
    parse_add_checkpoint,
)
from tongban.exchange.witness.state import WitnessState
from tongban.signing.clock import Clock
from tongban.signing.keys import Signer

__all__ = ["LogKeys", "Witness", "log_keys"]

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
class _Checked:
    origin: str
    text: str
    size: int
    root: bytes


class Witness:
    """The witness's protocol logic over its key, the logs it follows and its state."""

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
        public = key.public_key()
        if not isinstance(public, Ed25519PublicKey) or WitnessKey(identity.name, public) != (
            identity
        ):
            raise ValueError(f"the signing key is not the key of witness {identity.label}")
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
        request = parse_add_checkpoint(body)
        checked = self._verified(request.note)
        if request.old_size > checked.size:
            raise WitnessOldSizeInvalid(
                f"The old size {request.old_size} is larger than the checkpoint's size "
                f"{checked.size}."
            )

        def check(stored_size: int, stored_root: bytes) -> None:
            if request.old_size != stored_size:
                raise WitnessConflict(
                    f"The old size {request.old_size} is not the size of the latest "
                    f"checkpoint this witness cosigned for {checked.origin}, "
                    f"{stored_size}; send a consistency proof from {stored_size}.",
                    latest_size=stored_size,
                )
            if request.old_size == checked.size and stored_root != checked.root:
                raise WitnessConflict(
                    f"This witness cosigned another checkpoint of size {checked.size} for "
                    f"{checked.origin}, with a different root: the log shows two views.",
                    latest_size=stored_size,
                    split_view=True,
                )
            try:
                verify_consistency(
                    request.old_size, checked.size, stored_root, checked.root, request.proof
                )
            except ProofInvalid as e:
                raise WitnessProofInvalid(
                    f"The consistency proof from size {request.old_size} to {checked.size} "
                    f"does not verify against the checkpoint this witness cosigned: "
                    f"{e.message}.",
                    metadata={"old_size": str(request.old_size), "size": str(checked.size)},
                ) from None

        now = self._clock.now()
        try:
            self._state.advance(
                checked.origin,
                check,
                size=checked.size,
                root=checked.root,
                note=checked.text,
                at=now,
            )
        except (WitnessProofInvalid, WitnessConflict) as e:
            if isinstance(e, WitnessProofInvalid) or e.split_view:
                # A validly signed checkpoint that does not extend what was cosigned:
                # possible evidence of a log showing different views; kept.
                _log.warning("refused %s: %s", checked.origin, e.message)
                self._state.record_refusal(
                    checked.origin,
                    old_size=request.old_size,
                    reason=e.reason,
                    note=request.note,
                    at=now,
                )
            raise
        return cosign(checked.text, self.identity, self._key, int(now.timestamp()))

    def _verified(self, note: str) -> _Checked:
        try:
            text, _ = read_note(note)
        except NoteInvalid as e:
            raise WitnessRequestMalformed(
                f"The checkpoint is not a signed note: {e.message}."
            ) from None
        origin = text.split("\n", 1)[0]
        keys = self._logs.get(origin)
        if keys is None:
            raise WitnessLogUnknown(
                f"This witness does not follow the log {origin[:200]!r}; its operator adds a "
                "log with its verifier key (tongban witness serve --log).",
                metadata={"origin": origin[:200]},
            )
        try:
            checkpoint = open_checkpoint(note, keys, origin=origin)
        except NoteSignatureInvalid as e:
            raise WitnessCheckpointUnsigned(
                f"The checkpoint carries no valid signature by a key this witness trusts for "
                f"{origin}: {e.message}.",
                metadata={"origin": origin},
            ) from None
        except NoteInvalid as e:
            raise WitnessRequestMalformed(f"The checkpoint is malformed: {e.message}.") from None
        return _Checked(origin, text, checkpoint.size, checkpoint.root)
