"""The node's trust list, status-list tokens and verification as a relying party would do it
(the console's verify page, ``LicenceService/Verify``, ``/trust-list``, ``/status-lists``).
Apart from issuance (``issuance.py``) and the fetch for an approval (``fetch.py``): it needs
only the seals' chains, the status lists, the node's signing key and the roots."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tongban.exchange.datadir import NodeSigning
from tongban.exchange.licensing.custody import STATUS_LIST_HOLDER, SealVault
from tongban.exchange.licensing.status import StatusLists, StatusToken
from tongban.licence import (
    LicenceCancelled,
    LicenceSuperseded,
    LicenceTypeRegistry,
    TrustList,
    TrustListEntry,
    VerificationResult,
    claimed_status,
    sign_trust_list,
    verify_licence,
    verify_trust_list,
)
from tongban.signing import Clock

__all__ = ["LicenceTrust", "PeerVerifier"]

#: Verify a licence with peers' trust lists, given the text and our own result.
PeerVerifier = Callable[[str, VerificationResult], Awaitable[VerificationResult]]

_SHA256 = hashes.SHA256()
_TRUST_LIST_RESIGN = timedelta(hours=1)
#: The largest status index a licence row can hold (an int4 column).
_MAX_STATUS_INDEX = 2**31 - 1


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
    ) -> None:
        """``published_intermediates(now)``: issuing CA certificates to list besides those in
        the seals' chains (the data dir's, so an upcoming issuing CA is announced before
        it issues anything); read when the list is signed."""
        self._pool = pool
        self._published_intermediates = published_intermediates
        self.vault = vault
        self.status_lists = status_lists
        self.registry = registry
        self._node_signing = node_signing
        self.roots = tuple(roots)
        self._clock = clock
        self._trust_list: tuple[tuple[frozenset[bytes], ...], TrustList] | None = None
        self.peers: PeerVerifier | None = None
        """Verifies, with peers' trust lists, a licence ours does not vouch for (set by
        the node when federation is on; docs/federation.md, "Licences across exchanges")."""

    async def trust_list(self) -> TrustList:
        """The current signed trust list: the seal certificates of the departments that
        issue licence types, the status-list certificate and the base URL status lists are
        served under (verifiers fetch from nowhere else), re-signed when any of them
        changes or after an hour (its ``next_update`` is a day, its ``exp`` 30 days)."""
        now = self._clock.now()
        certificates, revoked, chained = await self.vault.trust(now)
        issuers = sorted(
            {d for t in self.registry for d in t.issuers} & set(certificates) - {STATUS_LIST_HOLDER}
        )
        status_certificates = certificates.get(STATUS_LIST_HOLDER, ())
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
        )
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

    async def verify(self, text: str) -> VerificationResult:
        """Verify a licence (SD-JWT VC, presentation or QR text) as a relying party would,
        with the node's current trust list, and its status from the registry itself
        (revoked, suspended, cancelled or superseded, as of now). A forged or revoked
        licence is a result with ``verified`` False, never an error."""
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
