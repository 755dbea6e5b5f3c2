"""The node's trust list, status-list tokens and verification as a relying party would do it
(the console's verify page, ``LicenceService/Verify``, ``/trust-list``, ``/status-lists``).
Apart from issuance (``issuance.py``) and the fetch for an approval (``fetch.py``): it needs
only the seals' chains, the status lists, the node's signing key and the roots."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tongban.exchange.datadir import NodeSigning
from tongban.exchange.db.notify import ChangeListener
from tongban.exchange.licensing.custody import STATUS_LIST_HOLDER, SealVault
from tongban.exchange.licensing.sm2_seals import Sm2Seals
from tongban.exchange.licensing.status import StatusLists, StatusToken
from tongban.licence import (
    LicenceCancelled,
    LicenceSuperseded,
    LicenceTypeRegistry,
    RevokedSeal,
    TrustList,
    TrustListEntry,
    VerificationFailed,
    VerificationResult,
    claimed_status,
    sign_trust_list,
    verify_licence,
    verify_sm2_licence_signature,
    verify_trust_list,
)
from tongban.signing import Clock

__all__ = ["SEAL_CHANNEL", "LicenceTrust", "PeerVerifier"]

#: Verify a licence with peers' trust lists, given the text and our own result.
PeerVerifier = Callable[[str, VerificationResult], Awaitable[VerificationResult]]

_SHA256 = hashes.SHA256()
_TRUST_LIST_RESIGN = timedelta(hours=1)
SEAL_CHANNEL = "tongban_seal"
"""Notified on any change to a department seal or an SM2 seal (migration 0034)."""
_SEALS_AT_MOST = timedelta(minutes=5)
"""How long the seals read once are used at most, even with no change notified."""
#: The largest status index a licence row can hold (an int4 column).
_MAX_STATUS_INDEX = 2**31 - 1


@dataclass(frozen=True)
class _Seals:
    """What the seals in custody say, read at once (``LicenceTrust._current_seals``)."""

    certificates: dict[str, tuple[x509.Certificate, ...]]
    revoked: list[RevokedSeal]
    chained: tuple[x509.Certificate, ...]
    sm2: dict[str, tuple[x509.Certificate, ...]]
    issuers: list[str]
    key: tuple[frozenset[bytes], ...]
    """What the trust list says: its cached signed form is reused while this holds."""
    read_at: datetime
    until: datetime


class LicenceTrust:
    """The trust list this node signs and the verification it offers."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        vault: SealVault,
        status_lists: StatusLists,
        registry: LicenceTypeRegistry,
        node_signing: NodeSigning,
        roots: Sequence[x509.Certificate],
        clock: Clock,
        published_intermediates: Callable[[datetime], Sequence[x509.Certificate]] | None = None,
        sm2_seals: Sm2Seals | None = None,
        sm2_roots: Callable[[], Sequence[x509.Certificate]] = tuple,
    ) -> None:
        """``published_intermediates(now)``: issuing CA certificates to list besides those in
        the seals' chains (the data dir's, so an upcoming issuing CA is announced before
        it issues anything); read when the list is signed. ``sm2_seals``: departments' SM2
        seals, which the list names; ``sm2_roots()``: the exchange's SM2 root, if it has
        one, to check SM2 signatures beside SD-JWT licences with."""
        self._pool = pool
        self._sm2_seals = sm2_seals
        self._sm2_roots = sm2_roots
        self._published_intermediates = published_intermediates
        self.vault = vault
        self.status_lists = status_lists
        self.registry = registry
        self._node_signing = node_signing
        self.roots = tuple(roots)
        self._clock = clock
        self._trust_list: tuple[tuple[frozenset[bytes], ...], TrustList] | None = None
        self._seals: _Seals | None = None
        self._seal_changes = 0
        self._listener: ChangeListener | None = None
        self.peers: PeerVerifier | None = None
        """Verifies, with peers' trust lists, a licence ours does not vouch for (set by
        the node when federation is on; docs/federation.md, "Licences across exchanges")."""

    def watch(self, listener: ChangeListener) -> None:
        """Keep the seals read from the database until one changes (``SEAL_CHANNEL``),
        the listener is lost, one of them expires, or ``_SEALS_AT_MOST`` has passed;
        while ``listener`` is not live they are read for every call, as before."""
        self._listener = listener
        listener.subscribe(SEAL_CHANNEL, self._seal_changed)
        listener.on_reset(lambda: self._seal_changed(""))

    def _seal_changed(self, _holder: str) -> None:
        self._seal_changes += 1
        self._seals = None

    async def _current_seals(self, now: datetime) -> _Seals:
        """The seals the trust list names, as of ``now``: from the database, or as read
        before if nothing has changed since (``watch``). Verification asks on every call:
        two reads and a certificate parse each, which were most of ``/verify``'s
        database time (docs/licences.md, "Performance")."""
        seals = self._seals
        live = self._listener is not None and self._listener.live
        if seals is not None and live and seals.read_at <= now < seals.until:
            return seals
        changes = self._seal_changes
        certificates, revoked, chained = await self.vault.trust(now)
        sm2 = await self._sm2_seals.listed(now) if self._sm2_seals is not None else {}
        issuers = sorted(
            {d for t in self.registry for d in t.issuers} & set(certificates) - {STATUS_LIST_HOLDER}
        )
        # What the list says: trusted and revoked apart (a certificate moving from one to
        # the other must change the key).
        key = (
            frozenset(
                c.fingerprint(_SHA256)
                for h in [*issuers, STATUS_LIST_HOLDER]
                for c in certificates.get(h, ())
            ),
            frozenset(r.fingerprint for r in revoked),
            frozenset(c.fingerprint(_SHA256) for c in chained),
            frozenset(c.fingerprint(_SHA256) for d in issuers for c in sm2.get(d, ())),
        )
        # Read again once the first of them expires: expired ones are left out.
        ends = [
            c.not_valid_after_utc
            for group in (*certificates.values(), *sm2.values())
            for c in group
        ]
        until = min([now + _SEALS_AT_MOST, *ends])
        seals = _Seals(certificates, revoked, chained, sm2, issuers, key, now, until)
        if live and changes == self._seal_changes:  # no change notified while reading
            self._seals = seals
        return seals

    async def trust_list(self) -> TrustList:
        """The current signed trust list: the seal certificates of the departments that
        issue licence types, the status-list certificate and the base URL status lists are
        served under (verifiers fetch from nowhere else), re-signed when any of them
        changes or after an hour (its ``next_update`` is a day, its ``exp`` 30 days)."""
        now = self._clock.now()
        seals = await self._current_seals(now)
        certificates, revoked, chained, sm2 = (
            seals.certificates,
            seals.revoked,
            seals.chained,
            seals.sm2,
        )
        issuers, key = seals.issuers, seals.key
        status_certificates = certificates.get(STATUS_LIST_HOLDER, ())
        bases = (self.status_lists.uri_base,)
        cached = self._trust_list
        if (
            cached is not None
            and cached[0] == key
            and all(e.status_base_urls == bases for e in cached[1].entries.values())
            and now - cached[1].issued_at < _TRUST_LIST_RESIGN
            and now < cached[1].expires_at
        ):
            return cached[1]
        entries = [
            TrustListEntry(
                department=code,
                seal_certificates=certificates[code],
                status_list_certificates=status_certificates,
                status_base_urls=bases,
            )
            for code in issuers
        ]
        published = self._published_intermediates(now) if self._published_intermediates else ()
        token = sign_trust_list(
            entries,
            revoked=[r for r in revoked if r.department in issuers],
            intermediates=list(dict.fromkeys([*chained, *published]))[:16],
            sm2_seals={d: sm2[d] for d in issuers if d in sm2},
            signer=self._node_signing.signer,
            chain=self._node_signing.chain,
            now=now,
        )
        trust_list = verify_trust_list(token, roots=self.roots, now=now)
        self._trust_list = (key, trust_list)
        return trust_list

    async def status_token(self, list_id: int) -> StatusToken | None:
        """The signed token of status list ``list_id``, or None if there is none."""
        return await self.status_lists.token(list_id, self._clock.now())

    async def verify(self, text: str, sm2_signature: str = "") -> VerificationResult:
        """Verify a licence (SD-JWT VC, presentation or QR text) as a relying party would,
        with the node's current trust list, and its status from the registry itself
        (revoked, suspended, cancelled or superseded, as of now). A forged or revoked
        licence is a result with ``verified`` False, never an error.

        With ``sm2_signature`` (the SM2 signature beside an SD-JWT), the licence verifies
        only if that does too (``sm2_verified``); a bad one fails the ``sm2`` check."""
        result = await self._verify(text)
        if not sm2_signature or not result.verified:
            return result
        try:
            verify_sm2_licence_signature(
                text.strip(), sm2_signature.strip(), sm2_roots=self._sm2_roots(),
                trust_list=await self.trust_list(), now=self._clock.now(),
            )  # fmt: skip
        except VerificationFailed as e:
            return replace(result, verified=False, check=e.check, reason=e.reason,
                           message=e.message)  # fmt: skip
        return replace(result, sm2_verified=True)

    async def _verify(self, text: str) -> VerificationResult:
        now = self._clock.now()
        trust_list = await self.trust_list()
        statuses: dict[tuple[str, int], tuple[int | None, str | None]] = {}
        # Prefetched from the reference the text claims, read unverified within the caps
        # verification uses (a bomb or a malformed text claims none); verification
        # decides whether to believe it.
        ref = claimed_status(text)
        if ref is not None:
            statuses[(ref.uri, ref.idx)] = await self._status_of(ref.uri, ref.idx)

        def lookup(issuer: str, uri: str, index: int) -> int | None:
            value, status = statuses.get((uri, index), (None, None))
            if status == "cancelled":
                raise LicenceCancelled(f"The licence was cancelled (注销) ({uri} #{index}).")
            if status == "superseded":
                raise LicenceSuperseded(
                    "A newer version of this licence replaced it; ask the holder for the "
                    "current one."
                )
            return value

        result = verify_licence(
            text,
            roots=self.roots,
            trust_list=trust_list,
            registry=self.registry,
            now=now,
            status=lookup,
        )
        if self.peers is not None and result.reason == "SIGNER_UNTRUSTED":
            # Not a seal of ours: perhaps a peer exchange's.
            return await self.peers(text, result)
        return result

    async def _status_of(self, uri: str, index: int) -> tuple[int | None, str | None]:
        list_id = self.status_lists.list_id(uri)
        if list_id is None or index > _MAX_STATUS_INDEX:  # not a list here; an unsigned claim
            return None, None
        status = await self._pool.fetchval(
            "SELECT status FROM licence WHERE status_list = $1 AND status_index = $2",
            list_id,
            index,
        )
        return await self.status_lists.value(list_id, index), status
