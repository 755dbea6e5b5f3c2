"""Peers as witnesses (docs/federation.md, "Peers as witnesses"; docs/audit-log.md,
"Witnesses"): C2SP tlog-witness over the peer link.

- **Witnessing a peer** (:class:`PeerWitness`, ``PeerService/AddCheckpoint``): an active
  peer's node sends exactly a C2SP add-checkpoint request body; this exchange's witness
  checks it with the same checks as the standalone witness (``witness.service``) against
  **the calling peer's own log only**, known by the log key pinned with
  ``tongban peer log-key`` (its key name is the log's origin), and against the state all
  its nodes share in PostgreSQL (``witness.shared_state``), then answers the
  cosignature line. A peer with no pinned key is refused ``PEER_LOG_KEY_UNSET``; an
  exchange that made no witness key, ``WITNESS_NOT_INITIALISED``.
- **Asking a peer** (:class:`PeerWitnessTransport`): the node's collector
  (``witness.collector.Cosigner``) reaches a witness named ``peer:<name>`` in
  ``TONGBAN_WITNESSES`` through this transport. The peer's refusals come back as the
  HTTP statuses the spec gives them (a 409 with the witness's size), so the collector
  treats an HTTP witness and a peer alike.
"""

from __future__ import annotations

import asyncio
import logging

from tongban.exchange.audit.cosignature import cosign
from tongban.exchange.audit.note import NoteInvalid
from tongban.exchange.federation.errors import PeerLogKeyUnset, PeerUnavailable
from tongban.exchange.federation.links import PeerLinks, PeerRefusal
from tongban.exchange.federation.peers import Peer
from tongban.exchange.federation.trust import PeerTrust
from tongban.exchange.witness.collector import (
    PEER_PREFIX,
    WitnessAnswer,
    WitnessUnavailable,
)
from tongban.exchange.witness.keys import WitnessIdentity, WitnessNotInitialised
from tongban.exchange.witness.protocol import (
    WitnessCheckpointUnsigned,
    WitnessConflict,
    WitnessLogUnknown,
    WitnessOldSizeInvalid,
    WitnessProofInvalid,
    WitnessRefusal,
    WitnessRequestMalformed,
    size_body,
)
from tongban.exchange.witness.service import kept_as_evidence, log_keys, open_submission
from tongban.exchange.witness.shared_state import SharedWitnessState
from tongban.signing.clock import Clock
from tongban.v1 import federation_pb2

__all__ = ["PeerWitness", "PeerWitnessTransport"]

_log = logging.getLogger(__name__)

# A peer's refusal of add-checkpoint, as the HTTP status the spec gives it.
_HTTP_STATUS = {
    cls.reason: cls.http_status
    for cls in (
        WitnessRequestMalformed,
        WitnessOldSizeInvalid,
        WitnessCheckpointUnsigned,
        WitnessLogUnknown,
        WitnessConflict,
        WitnessProofInvalid,
    )
}


class PeerWitness:
    """This exchange's witness of its peers' logs, over the state its nodes share."""

    def __init__(
        self, identity: WitnessIdentity | None, state: SharedWitnessState, clock: Clock
    ) -> None:
        """``identity`` None: this exchange made no witness key, and refuses."""
        self.identity = identity
        self._state = state
        self._clock = clock

    async def add_checkpoint(self, peer: Peer, body: bytes) -> str:
        """Check the add-checkpoint request ``body`` of the active peer ``peer`` for its
        own log and return the cosignature line.

        Raises WitnessNotInitialised, PeerLogKeyUnset, a WitnessRefusal subclass (a
        checkpoint of another log than the peer's: WitnessLogUnknown), or
        WitnessStateContended; nothing is recorded unless it returns.
        """
        identity = self.identity
        if identity is None:
            raise WitnessNotInitialised(
                "This exchange runs no witness: its operator makes the witness key with "
                "`tongban witness init --name NAME --data-dir NODE_DATA_DIR` on every node."
            )
        if not peer.log_key:
            raise PeerLogKeyUnset(
                f"No log key of exchange {peer.name} is pinned here, so its checkpoints "
                f"cannot be checked: our operator pins it with `tongban peer log-key "
                f"{peer.name} KEY` (KEY as your `tongban audit key` prints it).",
                metadata={"peer": peer.name},
            )
        try:
            logs = log_keys([peer.log_key])
        except NoteInvalid as e:  # pragma: no cover - peer log-key checked it
            raise PeerLogKeyUnset(
                f"The log key pinned for {peer.name} is unreadable ({e.message}); pin it again."
            ) from e
        [origin] = logs
        try:
            submission = open_submission(body, logs)
        except WitnessLogUnknown as e:
            raise WitnessLogUnknown(
                f"Exchange {peer.name} may submit only its own log, {origin}, whose key is "
                f"pinned here; not {e.metadata.get('origin', '')!r}.",
                metadata={**e.metadata, "peer": peer.name},
            ) from None
        now = self._clock.now()
        try:
            await self._state.advance(
                submission.origin,
                peer.ca_fingerprint,
                submission.check,
                size=submission.size,
                root=submission.root,
                note=submission.text,
                at=now,
            )
        except WitnessRefusal as e:
            if kept_as_evidence(e):
                _log.warning("refused peer %s's %s: %s", peer.name, submission.origin, e.message)
                await self._state.record_refusal(
                    submission.origin,
                    peer.ca_fingerprint,
                    old_size=submission.old_size,
                    reason=e.reason,
                    note=submission.note,
                    at=now,
                )
            raise
        # The key may be a PKCS#11 token's: signing blocks.
        return await asyncio.to_thread(
            cosign, submission.text, identity.key, identity.signer, int(now.timestamp())
        )


class PeerWitnessTransport:
    """add-checkpoint to a peer's witness over the peer link (``peer:<name>``)."""

    def __init__(self, trust: PeerTrust, links: PeerLinks) -> None:
        self._trust = trust
        self._links = links

    async def add_checkpoint(self, url: str, body: bytes) -> WitnessAnswer:
        """Send ``body`` to peer ``url`` (``peer:<name>``): its cosignature lines as a 200,
        its refusals with the spec's HTTP status. Raises WitnessUnavailable when the peer
        is not an active peer of ours or cannot be reached."""
        name = url.removeprefix(PEER_PREFIX)
        peer = await self._trust.peer(name)
        if peer is None or not peer.active:
            state = "not configured" if peer is None else "suspended"
            raise WitnessUnavailable(
                f"Peer {name} is {state} here; it is not asked to witness the log."
            )
        request = federation_pb2.AddCheckpointRequest(body=body)
        try:
            reply: federation_pb2.AddCheckpointResponse = await self._links.call(
                peer,
                "a cosignature of our checkpoint",
                lambda timeout: self._links.stub(peer).AddCheckpoint(request, timeout=timeout),
            )
        except PeerUnavailable as e:
            raise WitnessUnavailable(e.message) from e
        except PeerRefusal as e:
            return _refusal(e)
        return WitnessAnswer(200, reply.cosignatures.encode("utf-8"))


def _refusal(e: PeerRefusal) -> WitnessAnswer:
    status = _HTTP_STATUS.get(e.reason, 403)
    if status == 409:
        latest = e.metadata.get("latest_size", "")
        if latest.isdigit():
            return WitnessAnswer(409, size_body(int(latest)))
    return WitnessAnswer(status, f"{e.message} [{e.reason}]\n".encode())
