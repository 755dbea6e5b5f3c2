"""Licences of peer exchanges: their trust lists, fetched over the peer service and
cached, and verification of their licences with them (docs/federation.md, "Licences
across exchanges").

A peer's trust list is believed only if it verifies under **that peer's root CA as our
peer registry holds it** (never our own root, never another peer's): a peer can vouch
for seals its own root issued, and nothing else. A licence of a peer is then verified
with that peer's root and trust list; its status list is fetched over HTTP only once
the licence's signature verified, and only from an address the peer's trust list names
for the issuing department (``TrustList.check_status_url``), following no redirect.

Caching (per node):

- a peer's trust list is used until its ``next_update`` (a day), then fetched again; if
  the peer cannot be reached, or answers a list that does not verify, the one held is
  used until its ``exp`` (30 days), and a new list never replaces a newer one. The last
  good list of each peer is also kept on disk (``DATA_DIR/peers/trust-lists/<peer>.jwt``,
  verified again under the peer's root whenever read), so a node restarted while a peer
  is down still verifies that peer's licences until the list's ``exp``;
- a status list is used for its token's ``ttl`` (the issuing exchange's
  ``TONGBAN_STATUS_LIST_TTL_SECONDS``), held to 1 s to ``STATUS_REFRESH`` (300 s, also
  what a token without ``ttl`` gets) and never past its ``exp``, then fetched again; if
  that fails the status is unknown (``STATUS_UNAVAILABLE``): a revocation in the issuing
  exchange is seen here at most one ``ttl`` (and never more than 300 s) after it, never
  hidden by a peer that stops answering.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp

from tongban.exchange.federation.errors import PeerTrustListInvalid, PeerUnavailable
from tongban.exchange.federation.links import PeerLinks, PeerRefusal
from tongban.exchange.federation.peers import Peer, peer_ca
from tongban.exchange.federation.trust import PeerTrust
from tongban.licence import (
    LicenceTypeRegistry,
    StatusList,
    TrustList,
    TrustListCache,
    VerificationResult,
    VerifiedStatusList,
    verify_licence,
    verify_status_list_token,
    verify_trust_list,
)
from tongban.licence.errors import (
    StatusUnavailable,
    TrustListUnavailable,
    VerificationFailed,
)
from tongban.licence.verify import failure
from tongban.signing.clock import Clock
from tongban.v1 import federation_pb2

__all__ = ["STATUS_REFRESH", "STATUS_REFRESH_MIN", "PeerLicences", "status_fresh_until"]

_log = logging.getLogger(__name__)

#: The longest a peer's status list is used before it is fetched again, whatever its
#: ``ttl`` says; also how long one without ``ttl`` is used.
STATUS_REFRESH = timedelta(seconds=300)
#: The shortest: a ``ttl`` of 0 must not make every verification fetch the list.
STATUS_REFRESH_MIN = timedelta(seconds=1)
_MAX_STATUS_BYTES = 4 * 1024 * 1024
_STATUS_SECONDS = 5.0
_STATUS_CACHE_SIZE = 1024
# A licence not issued by the trust list in hand: try the next exchange's.
_NOT_THIS_EXCHANGE = frozenset({"SIGNER_UNTRUSTED"})


@dataclass(frozen=True)
class _HeldStatus:
    status_list: StatusList
    fresh_until: datetime


def status_fresh_until(verified: VerifiedStatusList, fetched_at: datetime) -> datetime:
    """Until when a status list verified at ``fetched_at`` is used before it is fetched
    again: its ``ttl`` later, held to ``STATUS_REFRESH_MIN``..``STATUS_REFRESH``
    (``STATUS_REFRESH`` without a ``ttl``), and never past its ``exp``."""
    keep = STATUS_REFRESH if verified.ttl is None else verified.ttl
    keep = min(max(keep, STATUS_REFRESH_MIN), STATUS_REFRESH)
    return min(fetched_at + keep, verified.expires_at)


class PeerLicences:
    """Peers' trust lists and status lists, and verification of peers' licences."""

    def __init__(
        self,
        *,
        trust: PeerTrust,
        links: PeerLinks,
        registry: LicenceTypeRegistry,
        clock: Clock,
        cache_dir: Path | None = None,
    ) -> None:
        """``cache_dir``: where each peer's last good trust list is kept on disk (None:
        in memory only)."""
        self._cache_dir = cache_dir
        self._trust = trust
        self._links = links
        self._registry = registry
        self._clock = clock
        self._lists: dict[str, tuple[bytes, TrustList]] = {}
        self._statuses: dict[tuple[str, str], _HeldStatus] = {}
        self._fetching: dict[str, asyncio.Lock] = {}

    # -- trust lists --------------------------------------------------------------------

    def accept(self, peer: Peer, token: str) -> TrustList:
        """Return ``token`` verified as ``peer``'s trust list: signed by a node signing
        certificate chaining to the peer's root CA in our registry, and not expired.

        Raises PeerTrustListInvalid (with the cause's reason in metadata) otherwise.
        """
        try:
            return verify_trust_list(token, roots=[peer_ca(peer)], now=self._clock.now())
        except VerificationFailed as e:
            raise PeerTrustListInvalid(
                f"The licence trust list peer {peer.name} sent does not verify under its "
                f"root CA ({e.reason}: {e.message}); licences of {peer.name} cannot be "
                "verified until it sends a good one.",
                metadata={"peer": peer.name, "cause": e.reason},
            ) from e

    async def refresh(self, peer: Peer) -> TrustList:
        """Fetch ``peer``'s trust list now (``PeerService/GetTrustList``), verify it, keep
        it unless the one held is newer, and return the list in effect.

        Raises PeerUnavailable or PeerRefusal (the peer did not answer or refused),
        PeerTrustListInvalid (it does not verify; the list held is kept).
        """
        reply: federation_pb2.GetTrustListResponse = await self._links.call(
            peer,
            "its licence trust list",
            lambda timeout: self._links.stub(peer).GetTrustList(
                federation_pb2.GetTrustListRequest(), timeout=timeout
            ),
        )
        offered = self.accept(peer, reply.trust_list)
        await self._keep(peer, reply.trust_list)
        held = self._lists.get(peer.name)
        if (
            held is not None
            and held[0] == peer.ca_fingerprint
            and held[1].issued_at > offered.issued_at
            and self._clock.now() < held[1].expires_at
        ):
            return held[1]
        self._lists[peer.name] = (peer.ca_fingerprint, offered)
        return offered

    async def trust_list(self, peer: Peer) -> TrustList:
        """``peer``'s trust list: the one held until its ``next_update``, then a fresh
        one; the one held until its ``exp`` while a fresh one cannot be had.

        Raises TrustListUnavailable (none held and the peer cannot be reached) or
        PeerTrustListInvalid (none held and the peer's does not verify).
        """
        now = self._clock.now()
        held = self._held(peer, now)
        if held is not None and not held.needs_refresh(now):
            return held
        lock = self._fetching.setdefault(peer.name, asyncio.Lock())
        async with lock:
            held = self._held(peer, now)
            if held is not None and not held.needs_refresh(now):
                return held
            try:
                return await self.refresh(peer)
            except PeerTrustListInvalid:
                if held is None:
                    raise
                _log.warning("peer %s sent a trust list that does not verify", peer.name)
                return held
            except (PeerUnavailable, PeerRefusal) as e:
                if held is not None:
                    return held
                raise TrustListUnavailable(
                    f"No licence trust list of peer {peer.name} is held and it could not be "
                    f"fetched ({e.reason}); try again once the peer is reachable.",
                    metadata={"peer": peer.name},
                ) from e

    def _held(self, peer: Peer, now: datetime) -> TrustList | None:
        held = self._lists.get(peer.name)
        if held is None and self._cache_dir is not None:
            kept = self._kept(peer, now)
            if kept is not None:
                held = self._lists[peer.name] = (peer.ca_fingerprint, kept)
        # A list kept under another root (the peer re-added with a new CA) is not its.
        if held is None or held[0] != peer.ca_fingerprint or now >= held[1].expires_at:
            return None
        return held[1]

    def _cache(self, peer: Peer) -> TrustListCache | None:
        if self._cache_dir is None:
            return None
        return TrustListCache(self._cache_dir / f"{peer.name}.jwt")  # names are [a-z0-9-]

    def _kept(self, peer: Peer, now: datetime) -> TrustList | None:
        """The list kept on disk for ``peer``, if it still verifies under its root."""
        cache = self._cache(peer)
        if cache is None:
            return None
        try:
            return cache.load(roots=[peer_ca(peer)], now=now)
        except VerificationFailed:  # none kept, expired, damaged, or of another root
            return None

    async def _keep(self, peer: Peer, token: str) -> None:
        """Keep ``token`` (verified) as ``peer``'s last good list on disk; a failure to
        write is logged, never in the way of verification."""
        cache = self._cache(peer)
        if cache is None:
            return
        try:
            await asyncio.to_thread(
                cache.store, token, roots=[peer_ca(peer)], now=self._clock.now()
            )
        except (VerificationFailed, OSError) as e:
            _log.warning("could not keep peer %s's trust list on disk: %s", peer.name, e)

    # -- verification -------------------------------------------------------------------

    async def verify(self, text: str, local: VerificationResult) -> VerificationResult:
        """Verify ``text``, which this exchange's trust list does not vouch for
        (``local``: SIGNER_UNTRUSTED), with each active peer's trust list in turn; the
        result of the first peer whose list names its signer, with ``exchange`` that
        peer's name. ``local`` if no peer's does (a licence of an exchange that is not
        our peer), or the reason a peer's list could not be had if one could not."""
        unavailable: VerificationFailed | None = None
        for peer in sorted(self._trust.peers(), key=lambda p: p.name):
            if not peer.active:
                continue
            try:
                trust_list = await self.trust_list(peer)
            except VerificationFailed as e:
                unavailable = unavailable or e
                continue
            result = await self.verify_with(peer, trust_list, text)
            if result.reason not in _NOT_THIS_EXCHANGE:
                return result
        if unavailable is not None:
            return failure(
                unavailable.__class__(
                    "This exchange's trust list does not vouch for the licence's signer, and "
                    f"a peer's could not be checked: {unavailable.message}",
                    metadata=unavailable.metadata,
                ),
                local.format,
            )
        return local

    async def verify_with(self, peer: Peer, trust_list: TrustList, text: str) -> VerificationResult:
        roots = [peer_ca(peer)]
        now = self._clock.now()
        # First without status: nothing is fetched for a licence whose signature, issuer,
        # disclosures and validity do not hold.
        checked = verify_licence(
            text, roots=roots, trust_list=trust_list, registry=self._registry, now=now,
            status=None, exchange=peer.name,
        )  # fmt: skip
        ref = checked.status_reference
        if not checked.verified or ref is None:
            return checked
        try:
            uri = trust_list.check_status_url(checked.issuer, ref.uri)
            status_list = await self._status_list(peer, trust_list, checked.issuer, uri)
        except VerificationFailed as e:
            failed = failure(e, checked.format)
            return dataclasses.replace(
                checked,
                verified=False,
                message=failed.message,
                check=failed.check,
                reason=failed.reason,
                status=failed.status,
            )

        def lookup(issuer: str, uri: str, index: int) -> int | None:
            return status_list.get(index)

        return verify_licence(
            text, roots=roots, trust_list=trust_list, registry=self._registry, now=now,
            status=lookup, exchange=peer.name,
        )  # fmt: skip

    async def _status_list(
        self, peer: Peer, trust_list: TrustList, issuer: str, uri: str
    ) -> StatusList:
        now = self._clock.now()
        key = (peer.name, uri)
        held = self._statuses.get(key)
        if held is not None and now < held.fresh_until:
            return held.status_list
        token = await _fetch(uri)
        try:
            verified = verify_status_list_token(
                token, uri=uri, roots=[peer_ca(peer)], now=now,
                trusted=trust_list.status_list_certificates_for(issuer),
            )  # fmt: skip
        except VerificationFailed as e:
            raise StatusUnavailable(
                f"The status list at {uri[:200]} does not verify under peer {peer.name}'s "
                f"trust list ({e.reason}); the licence's status is unknown.",
                metadata={"peer": peer.name, "cause": e.reason},
            ) from e
        if len(self._statuses) >= _STATUS_CACHE_SIZE:
            self._statuses.pop(next(iter(self._statuses)))
        self._statuses[key] = _HeldStatus(verified.status_list, status_fresh_until(verified, now))
        return verified.status_list


async def _fetch(uri: str) -> str:
    """GET a status list from ``uri`` (checked against the trust list), following no
    redirect: where a redirect points was not checked."""
    try:
        timeout = aiohttp.ClientTimeout(total=_STATUS_SECONDS)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(uri, allow_redirects=False) as response,
        ):
            if response.status != 200:
                raise StatusUnavailable(
                    f"Fetching the status list {uri[:200]} gave HTTP {response.status} "
                    "(redirects are not followed); the licence's status is unknown."
                )
            body = await response.content.read(_MAX_STATUS_BYTES + 1)
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        raise StatusUnavailable(
            f"The status list {uri[:200]} could not be fetched ({type(e).__name__}); the "
            "licence's status is unknown until the issuing exchange answers."
        ) from e
    if len(body) > _MAX_STATUS_BYTES:
        raise StatusUnavailable(f"The status list {uri[:200]} is over 4 MiB.")
    return body.decode("ascii", "replace")
