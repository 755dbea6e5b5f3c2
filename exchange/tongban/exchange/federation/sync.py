"""Keeping remote catalogues current: pull each active peer's offer on a timer and when it
pokes us; poke our peers when our own offer changes (docs/federation.md, "Pull on a timer,
plus a notify").

Pulls of one peer never overlap; pulls of different peers run side by side, each bounded
by the peer call deadline. A pull's refusal (an entry the peer does not own, a bad
signature) stores nothing of it and is kept as the peer's last pull error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tongban.errors import TongbanError
from tongban.exchange.db.notify import ChangeListener
from tongban.exchange.db.trouble import DRIVER_ERRORS
from tongban.exchange.federation.entries import verify_offered
from tongban.exchange.federation.errors import PeerEntryInvalid
from tongban.exchange.federation.links import PeerLinks
from tongban.exchange.federation.offer import CatalogueOffer
from tongban.exchange.federation.peers import Peer, peer_ca
from tongban.exchange.federation.remote import PullResult, RemoteCatalogue
from tongban.exchange.federation.routing import Routes
from tongban.exchange.federation.trust import PeerTrust
from tongban.signing.clock import Clock
from tongban.v1 import federation_pb2

__all__ = ["CatalogueSync"]

_log = logging.getLogger(__name__)

FEDERATION_CHANNEL = "tongban_federation"
DATASET_CHANNEL = "tongban_dataset"
POKE_DELAY = 0.2
"""Seconds a change waits before our peers are poked, so that a burst pokes once."""


class CatalogueSync:
    """Start with ``start()``, stop with ``stop()``."""

    def __init__(
        self,
        *,
        trust: PeerTrust,
        links: PeerLinks,
        remote: RemoteCatalogue,
        offer: CatalogueOffer,
        routes: Routes,
        listener: ChangeListener,
        clock: Clock,
        interval: float,
    ) -> None:
        self._trust = trust
        self._links = links
        self._remote = remote
        self._offer = offer
        self._routes = routes
        self._clock = clock
        self._interval = interval
        self._wake = asyncio.Event()
        self._poked: set[str] = set()
        self._due: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._poke_task: asyncio.Task[None] | None = None
        self._federated: set[str] | None = None
        # One pull of a peer at a time: a pull that fetched earlier must not store its
        # offer after a later one (the timer, a notify and an operator's pull can meet).
        self._pulling: dict[str, asyncio.Lock] = {}
        listener.subscribe(FEDERATION_CHANNEL, self._federation_changed)
        listener.subscribe(DATASET_CHANNEL, self._dataset_changed)
        listener.on_reset(lambda: self._federation_changed(""))
        trust.on_change.append(self._wake.set)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="catalogue-sync")

    async def stop(self) -> None:
        for task in (self._task, self._poke_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._poke_task = None

    def poke(self, peer: str) -> None:
        """Peer ``peer`` says its offer changed: pull it soon."""
        self._poked.add(peer)
        self._wake.set()

    async def pull(self, peer: Peer) -> PullResult:
        """Pull ``peer``'s offer now and make it our remote catalogue of it; raise the
        refusal (PeerNotOwner, PeerSignatureInvalid, PeerEntryInvalid, PeerUnavailable),
        after noting it as the peer's last pull error. Pulls of one peer take turns."""
        async with self._pulling.setdefault(peer.name, asyncio.Lock()):
            return await self._pull(peer)

    async def _pull(self, peer: Peer) -> PullResult:
        now = self._clock.now()
        try:
            answer = await self._links.call(
                peer,
                "its catalogue offer",
                lambda timeout: self._links.stub(peer).ListEntries(
                    federation_pb2.ListEntriesRequest(), timeout=timeout
                ),
            )
            root = peer_ca(peer)
            entries = [
                verify_offered(token, peer=peer.name, peer_root=root, now=now)
                for token in answer.entries
            ]
            codes = [e.code for e in entries]
            if len(set(codes)) != len(codes):
                raise _duplicate(peer)
        except TongbanError as e:
            _log.warning("catalogue pull from peer %s refused: %s", peer.name, e.diagnostics())
            await self._remote.failed(peer.name, now, e)
            raise
        result = await self._remote.replace(peer.name, self._routes.keep(entries, peer), now)
        if result.added or result.updated or result.withdrawn:
            if self._routes.max_hops > 1:
                self._schedule_poke()  # what we re-offer our other peers changed too
            _log.info(
                "catalogue of peer %s: %d added, %d updated, %d withdrawn",
                peer.name,
                len(result.added),
                len(result.updated),
                len(result.withdrawn),
            )
        return result

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            now = loop.time()
            active = [p for p in self._trust.peers() if p.active]
            self._links.forget({p.name for p in active})
            due = [p for p in active if p.name in self._poked or self._due.get(p.name, 0.0) <= now]
            self._poked -= {p.name for p in due}
            for peer in due:
                self._due[peer.name] = now + self._interval
            if due:
                await asyncio.gather(*(self._pull_quietly(p) for p in due))
            waits = [self._due.get(p.name, now) - loop.time() for p in active]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, min(waits, default=self._interval))):
                    await self._wake.wait()

    async def _pull_quietly(self, peer: Peer) -> None:
        try:
            await self.pull(peer)
        except TongbanError:
            pass  # noted as the peer's last pull error; the timer tries again
        except DRIVER_ERRORS as e:
            _log.warning("cannot store the catalogue of peer %s (%s)", peer.name, e)

    # -- poking our peers when our offer changes ----------------------------------------

    def _federation_changed(self, _payload: str) -> None:
        self._federated = None  # read again before the next decision
        self._schedule_poke()

    def _dataset_changed(self, code: str) -> None:
        if self._federated is None or code in self._federated:
            self._schedule_poke()

    def _schedule_poke(self) -> None:
        if self._poke_task is None or self._poke_task.done():
            self._poke_task = asyncio.get_running_loop().create_task(
                self._poke_peers(), name="catalogue-poke"
            )

    async def _poke_peers(self) -> None:
        await asyncio.sleep(POKE_DELAY)
        try:
            self._federated = await self._offer.federated_codes()
        except DRIVER_ERRORS as e:
            _log.warning("cannot read the federated datasets (%s)", e)
        await asyncio.gather(*(self._poke(peer) for peer in self._trust.peers() if peer.active))

    async def _poke(self, peer: Peer) -> None:
        try:
            await self._links.call(
                peer,
                "a catalogue notice",
                lambda timeout: self._links.stub(peer).CatalogueChanged(
                    federation_pb2.CatalogueChangedRequest(), timeout=timeout
                ),
            )
        except TongbanError as e:  # a hint only: the peer's timer pulls anyway
            _log.info("peer %s not told of our catalogue change: %s", peer.name, e.diagnostics())


def _duplicate(peer: Peer) -> TongbanError:
    return PeerEntryInvalid(f"Peer {peer.name} offered the same dataset twice.")
