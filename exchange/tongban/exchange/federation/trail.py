"""One trail per case across exchanges (docs/federation.md, "One trail per case").

The local entries of a case, and for each forwarded query the peer's own entry, fetched
with its inclusion proof under the peer's signed checkpoint (``PeerService/GetLogEntry``)
and checked here: the checkpoint against the peer's log verifier key **as pinned in our
peer registry** (``tongban peer log-key``, swapped out of band like the root CA; never
a key the peer sends with its answer), the proof against the checkpoint's root, and the
leaf's case against the case followed.

The peer shows an entry only to the exchange that made the request (its caller is
``<its name for us>`` or ``<its name for us>/<department>``): ``may_see``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from tongban.errors import TongbanError
from tongban.exchange.audit.leaf import AccessEntry, LeafInvalid, decode_leaf
from tongban.exchange.audit.merkle import ProofInvalid, leaf_hash, verify_inclusion
from tongban.exchange.audit.note import NoteInvalid, open_checkpoint, parse_verifier_key
from tongban.exchange.audit.store import AuditStore, LogEntry, SearchFilters
from tongban.exchange.federation.errors import PeerLogKeyUnset, PeerUnavailable
from tongban.exchange.federation.links import PeerLinks, PeerRefusal
from tongban.exchange.federation.peers import PeerStore
from tongban.v1 import audit_pb2, federation_pb2

__all__ = [
    "CaseTrail",
    "CaseTrails",
    "PeerLogEntryInvalid",
    "PeerLogEntryRefused",
    "RemoteEntry",
    "check_peer_entry",
    "may_see",
    "peer_references",
]

RemoteState = Literal["verified", "refused", "unavailable", "invalid", "no-key"]

# The receipt of a forwarded query names the owner's entry: "...peer:<name>; log:<index>".
_REFERENCE = re.compile(r"(?:^|; )peer:([a-z][a-z0-9-]{1,62}); log:([0-9]{1,19})(?:$|;)")
_MAX_PAGES = 100


class PeerLogEntryRefused(TongbanError):
    """The entry asked for was not made for the calling exchange's request."""

    reason = "PEER_LOG_ENTRY_REFUSED"
    status = "PERMISSION_DENIED"


class PeerLogEntryInvalid(TongbanError):
    """A peer's log entry, checkpoint or inclusion proof does not check out."""

    reason = "PEER_LOG_PROOF_INVALID"
    status = "FAILED_PRECONDITION"


@dataclass(frozen=True)
class RemoteEntry:
    """A peer's entry for one forwarded request, as the trail found it."""

    peer: str
    index: int
    state: RemoteState
    """``verified``; ``refused`` (the peer would not show it); ``unavailable`` (the peer
    could not be reached, or is no longer configured); ``invalid`` (its checkpoint,
    proof or leaf does not check out); ``no-key`` (no log key pinned for the peer)."""
    reason: str = ""
    message: str = ""
    entry: AccessEntry | None = None
    """Decoded from the verified leaf (None unless ``verified``)."""
    checkpoint_size: int | None = None

    def to_dict(self) -> dict[str, object]:
        e = self.entry
        return {
            "peer": self.peer,
            "index": self.index,
            "state": self.state,
            "reason": self.reason,
            "message": self.message,
            "checkpoint_size": self.checkpoint_size,
            "entry": None
            if e is None
            else {
                "at": e.at.isoformat(), "caller": e.caller, "officer": e.officer,
                "action": e.action, "dataset": e.dataset, "fields": list(e.fields),
                "purpose": e.purpose, "case_id": e.case_id, "decision": e.decision,
                "reason": e.reason,
            },
        }  # fmt: skip


@dataclass(frozen=True)
class CaseTrail:
    case_id: str
    local: tuple[LogEntry, ...]
    remote: tuple[RemoteEntry, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "case_id": self.case_id,
            "local": [e.to_dict() for e in self.local],
            "remote": [r.to_dict() for r in self.remote],
        }


def peer_references(entries: Sequence[LogEntry]) -> list[tuple[str, int]]:
    """The peers' entries our entries name (``peer:<name>; log:<index>``), each once, in
    the order first named."""
    found: dict[tuple[str, int], None] = {}
    for entry in entries:
        match = _REFERENCE.search(entry.reason or "")
        if match is not None:
            found.setdefault((match[1], int(match[2])), None)
    return list(found)


def may_see(caller: str, peer: str) -> bool:
    """Whether peer ``peer`` (our name for it) may see an entry whose caller is
    ``caller``: one made for its own request."""
    return caller == peer or caller.startswith(peer + "/")


def check_peer_entry(
    reply: audit_pb2.EntryWithProof, *, index: int, log_key: str, case_id: str
) -> tuple[AccessEntry, int]:
    """Return the entry in ``reply`` and its checkpoint's size once they check out: the
    checkpoint note signed by ``log_key`` (the pinned key, whose name is the log's
    origin), the entry at ``index`` included under it, and its leaf of case ``case_id``.

    Raises PeerLogEntryInvalid otherwise.
    """
    try:
        name, key = parse_verifier_key(log_key)
        checkpoint = open_checkpoint(reply.checkpoint.note, [(name, key)], origin=name)
        if reply.entry.index != index:
            raise PeerLogEntryInvalid(
                f"The peer answered entry {reply.entry.index} when asked for {index}."
            )
        verify_inclusion(
            leaf_hash(reply.entry.leaf),
            index,
            checkpoint.size,
            list(reply.inclusion_proof),
            checkpoint.root,
        )
        entry = decode_leaf(reply.entry.leaf)
    except (NoteInvalid, ProofInvalid, LeafInvalid) as e:
        raise PeerLogEntryInvalid(
            f"The peer's entry {index} does not check out ({e.reason}: {e.message}).",
            metadata={"cause": e.reason},
        ) from e
    if entry.case_id != case_id:
        raise PeerLogEntryInvalid(
            f"The peer's entry {index} is of case {entry.case_id!r}, not {case_id!r}."
        )
    return entry, checkpoint.size


class CaseTrails:
    """Follows a case through our log and the peers' logs it names."""

    def __init__(self, store: AuditStore, peers: PeerStore, links: PeerLinks) -> None:
        self._store = store
        self._peers = peers
        self._links = links

    async def follow(self, case_id: str) -> CaseTrail:
        """The case's local entries (every one), and each peer entry they name, checked."""
        local: list[LogEntry] = []
        token = ""
        for _ in range(_MAX_PAGES):
            page, token = await self._store.search(
                SearchFilters(case_id=case_id), page_size=1000, page_token=token
            )
            local.extend(page)
            if not token:
                break
        remote = [
            await self._remote(peer, index, case_id) for peer, index in peer_references(local)
        ]
        return CaseTrail(case_id, tuple(local), tuple(remote))

    async def _remote(self, name: str, index: int, case_id: str) -> RemoteEntry:
        peer = await self._peers.find(name)
        if peer is None:
            return RemoteEntry(
                name, index, "unavailable", "PEER_UNKNOWN",
                f"Peer {name} is no longer configured here; its entry cannot be fetched.",
            )  # fmt: skip
        if not peer.log_key:
            return RemoteEntry(
                name, index, "no-key", PeerLogKeyUnset.reason,
                f"No log key of peer {name} is pinned: ask its operator for `tongban audit "
                f"key` and set it with `tongban peer log-key {name} KEY`.",
            )  # fmt: skip
        request = federation_pb2.GetLogEntryRequest(index=index)
        try:
            reply: audit_pb2.EntryWithProof = await self._links.call(
                peer,
                "an entry of its access log",
                lambda timeout: self._links.stub(peer).GetLogEntry(request, timeout=timeout),
            )
        except PeerRefusal as e:
            return RemoteEntry(name, index, "refused", e.reason, e.message)
        except PeerUnavailable as e:
            return RemoteEntry(name, index, "unavailable", e.reason, e.message)
        try:
            entry, size = check_peer_entry(
                reply, index=index, log_key=peer.log_key, case_id=case_id
            )
        except PeerLogEntryInvalid as e:
            return RemoteEntry(name, index, "invalid", e.reason, e.message)
        return RemoteEntry(
            name, index, "verified", "", "included under the peer's signed checkpoint",
            entry, size,
        )  # fmt: skip
