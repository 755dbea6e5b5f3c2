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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from tongban.errors import TongbanError
from tongban.exchange.audit.leaf import AccessEntry, LeafInvalid, decode_leaf
from tongban.exchange.audit.merkle import ProofInvalid, leaf_hash, verify_inclusion
from tongban.exchange.audit.note import NoteInvalid, open_checkpoint, parse_verifier_key
from tongban.exchange.audit.store import AuditStore, LogEntry, SearchFilters
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.federation.errors import PeerLogKeyUnset, PeerUnavailable, PeerUnknown
from tongban.exchange.federation.links import PeerLinks, PeerRefusal
from tongban.exchange.federation.peers import Peer, PeerStore
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
    "relay_log_entry",
]

RemoteState = Literal["verified", "refused", "unavailable", "invalid", "no-key"]

# The receipt of a forwarded query names the owner's entry: "...peer:<name>; log:<index>".
_REFERENCE = re.compile(r"(?:^|; )peer:([a-z][a-z0-9-]{1,62}); log:([0-9]{1,19})(?:$|;)")
_MAX_PAGES = 100
_MAX_ROUTE = 8


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


def peer_references_of(reason: str | None) -> tuple[str, int] | None:
    """The peer entry one reason names (``peer:<name>; log:<index>``), or None."""
    match = _REFERENCE.search(reason or "")
    return None if match is None else (match[1], int(match[2]))


async def relay_log_entry(
    *,
    store: AuditStore,
    find_peer: Callable[[str], Awaitable[Peer | None]],
    links: PeerLinks,
    asker: str,
    route: Sequence[str],
    index: int,
    case_id: str,
) -> federation_pb2.RoutedLogEntry:
    """For peer ``asker``'s trail: entry ``index`` of the exchange at the end of
    ``route`` (our names, nearest first), fetched through our peer ``route[0]``.

    Only if an entry of ours for ``asker``'s requests in case ``case_id`` names
    ``route[0]`` (with ``index``, when it is the last): PeerLogEntryRefused otherwise.
    Raises PeerUnknown, PeerLogKeyUnset (we pinned no key for the last exchange), and
    the next peer's refusals (PeerRefusal) or PeerUnavailable.
    """
    if not 1 <= len(route) <= _MAX_ROUTE or not 1 <= len(case_id) <= 200:
        raise InvalidArgument(
            f"Name 1 to {_MAX_ROUTE} exchanges and the case (1 to 200 characters).",
            metadata={"field": "route" if not 1 <= len(route) <= _MAX_ROUTE else "case_id"},
        )
    ours: list[LogEntry] = []
    token = ""
    for _ in range(_MAX_PAGES):
        page, token = await store.search(
            SearchFilters(case_id=case_id), page_size=1000, page_token=token
        )
        ours.extend(e for e in page if may_see(e.caller, asker))
        if not token:
            break
    named = peer_references(ours)
    if not any(n == route[0] and (len(route) > 1 or i == index) for n, i in named):
        raise PeerLogEntryRefused(
            f"No request of exchange {asker} in case {case_id[:64]!r} was carried on to "
            f"{route[0][:64]} as entry {index}; a peer sees only its own requests' entries.",
            metadata={"index": str(index)},
        )
    peer = await find_peer(route[0])
    if peer is None or not peer.active:
        raise PeerUnknown(f"Exchange {route[0][:64]!r} is no longer an active peer here.")
    if len(route) > 1:
        onward = federation_pb2.GetRoutedLogEntryRequest(
            route=list(route[1:]), index=index, case_id=case_id
        )
        reply: federation_pb2.RoutedLogEntry = await links.call(
            peer,
            "an entry of an access log beyond it",
            lambda timeout: links.stub(peer).GetRoutedLogEntry(onward, timeout=timeout),
        )
        return reply
    if not peer.log_key:
        raise PeerLogKeyUnset(
            f"This exchange pinned no log key of {peer.name}; its operator sets it with "
            f"`tongban peer log-key {peer.name} KEY`.",
            metadata={"peer": peer.name},
        )
    request = federation_pb2.GetLogEntryRequest(index=index)
    entry: audit_pb2.EntryWithProof = await links.call(
        peer,
        "an entry of its access log",
        lambda timeout: links.stub(peer).GetLogEntry(request, timeout=timeout),
    )
    return federation_pb2.RoutedLogEntry(
        entry=entry, log_key=peer.log_key, exchange=peer.ca_fingerprint.hex()
    )


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
        remote: list[RemoteEntry] = []
        for peer, index in peer_references(local):
            found = await self._remote(peer, index, case_id)
            remote.append(found)
            # A verified entry of a middle exchange names the entry of the exchange it
            # carried the request to: follow it through that peer, hop by hop.
            route: tuple[str, ...] = ()
            while found.entry is not None and len(route) < _MAX_ROUTE:
                onward = peer_references_of(found.entry.reason)
                if onward is None:
                    break
                route = (*route, onward[0])
                found = await self._routed(peer, route, onward[1], case_id)
                remote.append(found)
        return CaseTrail(case_id, tuple(local), tuple(remote))

    async def _routed(
        self, name: str, route: tuple[str, ...], index: int, case_id: str
    ) -> RemoteEntry:
        """The entry ``index`` of the exchange at the end of ``route`` beyond peer
        ``name``, asked through ``name`` and checked with the key the exchange before it
        pinned."""
        shown = ":".join((name, *route))
        peer = await self._peers.find(name)
        if peer is None:
            return RemoteEntry(
                shown, index, "unavailable", "PEER_UNKNOWN",
                f"Peer {name} is no longer configured here; the entry cannot be fetched.",
            )  # fmt: skip
        request = federation_pb2.GetRoutedLogEntryRequest(
            route=list(route), index=index, case_id=case_id
        )
        try:
            reply: federation_pb2.RoutedLogEntry = await self._links.call(
                peer,
                "an entry of an access log beyond it",
                lambda timeout: self._links.stub(peer).GetRoutedLogEntry(request, timeout=timeout),
            )
        except PeerRefusal as e:
            state: RemoteState = "no-key" if e.reason == PeerLogKeyUnset.reason else "refused"
            return RemoteEntry(shown, index, state, e.reason, e.message)
        except PeerUnavailable as e:
            return RemoteEntry(shown, index, "unavailable", e.reason, e.message)
        try:
            entry, size = check_peer_entry(
                reply.entry, index=index, log_key=reply.log_key, case_id=case_id
            )
        except PeerLogEntryInvalid as e:
            return RemoteEntry(shown, index, "invalid", e.reason, e.message)
        pinner = route[-2] if len(route) > 1 else name
        return RemoteEntry(
            shown, index, "verified", "",
            f"included under its signed checkpoint, checked with the log key pinned at {pinner}",
            entry, size,
        )  # fmt: skip

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
