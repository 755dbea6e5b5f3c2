"""Routing over several hops: which entries a peer's offer carries on, which relayed
entries we take, and through which neighbour a remote dataset is reached
(docs/federation.md, "Routing over several hops").

An exchange re-offers to each active peer the entries it received from its other peers,
as relayed entries signed by its node (``entries.sign_relayed``). It never offers an
entry back towards an exchange it passed through (loops), nor past its ``max_hops``. A
receiver drops relayed entries that passed through itself, that come from further than
its own ``max_hops``, or whose owner's exchange is a direct peer of its own (the owner
decides what it offers us directly; a relay must not open the back door).

The rules are pure functions over plain data; ``Routes`` reads the peers and the remote
catalogue and signs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime

from tongban.exchange.datadir import NodeSigning
from tongban.exchange.federation.entries import RemoteEntry, sign_relayed
from tongban.exchange.federation.errors import PeerRouteLoop, PeerTooManyHops
from tongban.exchange.federation.peers import Peer
from tongban.exchange.federation.remote import RemoteCatalogue
from tongban.exchange.federation.trust import PeerTrust
from tongban.exchange.sharing.errors import DatasetNotFound

__all__ = ["Routes", "dropped_because", "relays_to"]

_log = logging.getLogger(__name__)


def relays_to(remote: RemoteEntry, *, source: Peer, to: Peer, max_hops: int) -> bool:
    """Whether an entry we received from peer ``source`` may be re-offered (or a query of
    it carried) to peer ``to``: not back the way it came, not to an exchange it passed
    through, and within ``max_hops`` counted from ``to``."""
    towards = to.ca_fingerprint.hex()
    return (
        to.name != source.name
        and towards != source.ca_fingerprint.hex()
        and towards not in remote.path
        and remote.hops + 1 <= max_hops
    )


def dropped_because(
    remote: RemoteEntry, *, own: bytes, peers: Iterable[Peer], max_hops: int
) -> str | None:
    """Why a received entry is not kept (a word for the log), or None to keep it."""
    if not remote.route:
        return None
    if own.hex() in remote.path:
        return "loop"
    if remote.hops > max_hops:
        return "too many hops"
    if remote.path[-1] in {p.ca_fingerprint.hex() for p in peers if p.active}:
        return "the owner's exchange is our peer"
    return None


class Routes:
    """Relayed entries for each peer, signed once per (source, entry)."""

    def __init__(
        self,
        *,
        trust: PeerTrust,
        remote: RemoteCatalogue,
        signing: NodeSigning,
        max_hops: int,
    ) -> None:
        self._trust = trust
        self._remote = remote
        self._signing = signing
        self.max_hops = max_hops
        self._signed: dict[tuple[str, str], str] = {}

    def keep(self, received: Sequence[RemoteEntry], source: Peer) -> list[RemoteEntry]:
        """The entries of a pull from ``source`` we keep (see ``dropped_because``)."""
        kept = []
        for remote in received:
            why = dropped_because(
                remote,
                own=self._trust.own_fingerprint,
                peers=self._trust.peers(),
                max_hops=self.max_hops,
            )
            if why is None:
                kept.append(remote)
            else:
                _log.info("entry %s from peer %s not kept: %s", remote.code, source.name, why)
        return kept

    async def relayed_for(self, to: Peer, *, now: datetime) -> list[str]:
        """The relayed entries we offer peer ``to``: what our other active peers offer
        us, where ``relays_to`` allows."""
        if self.max_hops < 2:
            return []
        sources = [p for p in self._trust.peers() if p.active and p.name != to.name]
        offered = []
        for stored in await self._remote.list(sources, now=now):
            source = next(p for p in sources if p.name == stored.remote.peer)
            if relays_to(stored.remote, source=source, to=to, max_hops=self.max_hops):
                offered.append(self._sign(stored.remote, source))
        return offered

    async def next_hop(
        self, to: Peer, code: str, *, now: datetime
    ) -> tuple[Peer, RemoteEntry] | None:
        """For a query peer ``to`` sent of ``code`` in our names (``<peer>:<code>``): the
        neighbour to carry it to and what it offers, or None if we offer ``to`` no such
        dataset."""
        name, _, rest = code.partition(":")
        source = await self._trust.peer(name)
        if source is None or not source.active:
            return None
        remote = await self._remote.get_remote(source, rest, now=now)
        if remote is None or not relays_to(remote, source=source, to=to, max_hops=self.max_hops):
            return None
        return source, remote

    async def onward(
        self, to: Peer, code: str, *, passed: Sequence[str], now: datetime
    ) -> tuple[Peer, RemoteEntry]:
        """Whether we carry a request peer ``to`` sent of ``code`` in our names
        (``<peer>:<code>``), which passed the exchanges ``passed`` (root fingerprints,
        hex: the one that sent it and those behind it): the neighbour to carry it to and
        what it offers. A middle exchange decides only this, for queries, grant requests
        and subscriptions alike. Raises DatasetNotFound (we offer ``to`` no such dataset),
        PeerTooManyHops (carried on, it would cross more than ``max_hops`` links),
        PeerRouteLoop (it would pass an exchange it came through)."""
        hop = await self.next_hop(to, code, now=now)
        if hop is None:
            raise DatasetNotFound(f"This exchange offers peer {to.name} no dataset {code[:100]!r}.")
        source, remote = hop
        hops = len(passed) + 1 + len(remote.route)  # behind us, us to the next, beyond it
        if hops > self.max_hops:
            raise PeerTooManyHops(
                f"Carried on, the request would cross {hops} links between exchanges; "
                f"this exchange carries at most {self.max_hops}.",
                metadata={"max_hops": str(self.max_hops)},
            )
        if source.ca_fingerprint.hex() in passed or set(passed) & set(remote.path):
            raise PeerRouteLoop(
                "Carried on, the request would pass an exchange it came through; a route "
                "never loops."
            )
        return source, remote

    async def towards(self, to: Peer, name: str, *, passed: Sequence[str]) -> Peer:
        """Whether we carry on a request peer ``to`` sent for something our active peer
        ``name`` holds that is not a dataset (a grant it keeps, the subscriptions it
        keeps), which passed the exchanges ``passed`` (as for ``onward``): the peer to
        carry it to. The same decision as ``onward`` without the offer, which the owner's
        exchange checks instead (only the department's own grants and subscriptions).
        Raises PeerUnknown, PeerRouteLoop (back where it came from, or to an exchange it
        passed), PeerTooManyHops (carried on, past ``max_hops`` links)."""
        onward = await self._trust.active_peer(name[:100])
        if onward.name == to.name or onward.ca_fingerprint.hex() in passed:
            raise PeerRouteLoop(
                "Carried on, the request would pass an exchange it came through; a route "
                "never loops."
            )
        hops = len(passed) + 1  # behind us, and us to the next
        if hops > self.max_hops:
            raise PeerTooManyHops(
                f"Carried on, the request would cross {hops} links between exchanges; "
                f"this exchange carries at most {self.max_hops}.",
                metadata={"max_hops": str(self.max_hops)},
            )
        return onward

    def _sign(self, remote: RemoteEntry, source: Peer) -> str:
        key = (source.name, remote.signed)
        token = self._signed.get(key)
        if token is None:
            if len(self._signed) > 10_000:
                self._signed.clear()
            token = self._signed[key] = sign_relayed(
                remote,
                via_exchange=source.ca_fingerprint,
                exchange=self._trust.own_fingerprint,
                signing_signer=self._signing.signer,
                chain=self._signing.chain,
            )
        return token
