"""The licence service of one node, made of the parts its callers use; none knows gRPC or
HTTP, and the servicers and routes translate to their calls:

- ``register``: the stored licences, a department's get and list (``register.py``);
- ``issuance``: issue, change status, amend or renew (``issuance.py``);
- ``approval_fetch``: fetch a licence for an approval, as the sharing policy decides
  (``fetch.py``);
- ``trust``: the trust list, status-list tokens and verification (``trust.py``);
- ``authorisations``: the holders' one-time authorisation codes (``authorisations.py``).

Every issuance, status change, amendment, get, list and fetch is written to the access
log (subject: the holder id, as a keyed hash) before the call returns; writes are logged
inside their transaction, before it commits, so nothing is changed that is not logged,
and a failure to log leaves nothing changed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import asyncpg
from cryptography import x509

from tongban.exchange.audit.log import AccessLog, SubjectHasher
from tongban.exchange.audit.recorder import AccessRecorder
from tongban.exchange.datadir import NodeSigning
from tongban.exchange.licensing.authorisations import HolderAuthorisations
from tongban.exchange.licensing.custody import SealVault
from tongban.exchange.licensing.feed import LicenceFeed
from tongban.exchange.licensing.fetch import ApprovalFetch, Decide
from tongban.exchange.licensing.issuance import Issuance
from tongban.exchange.licensing.materials import PeerLicenceFetch
from tongban.exchange.licensing.register import LicenceRegister
from tongban.exchange.licensing.sm2_seals import Sm2Seals
from tongban.exchange.licensing.status import StatusLists
from tongban.exchange.licensing.trust import LicenceTrust
from tongban.exchange.sharing.records import RecordStore
from tongban.licence import LicenceTypeRegistry
from tongban.signing import Clock

__all__ = ["Licensing"]


class Licensing:
    """The licence service of one node: its parts, made once over the same stores."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        vault: SealVault,
        status_lists: StatusLists,
        registry: LicenceTypeRegistry,
        feed: LicenceFeed,
        records: RecordStore,
        access_log: AccessLog,
        hasher: SubjectHasher,
        node_signing: NodeSigning,
        roots: Sequence[x509.Certificate],
        clock: Clock,
        node_name: str,
        decide: Decide,
        published_intermediates: Callable[[datetime], Sequence[x509.Certificate]] | None = None,
        sm2_seals: Sm2Seals | None = None,
        sm2_roots: Callable[[], Sequence[x509.Certificate]] = tuple,
    ) -> None:
        """``decide``: the sharing policy's decision with the caller's grants
        (``Sharing.decide``), which a fetch for an approval goes through.
        ``published_intermediates``, ``sm2_seals`` and ``sm2_roots``: see ``LicenceTrust``
        (and ``sm2_seals`` for ``Issuance``)."""
        self.sm2_seals = sm2_seals
        self.peer_licences: PeerLicenceFetch | None = None
        """Fetches a licence held in a peer exchange for the materials resolver (set by
        the node when federation is on; docs/federation.md)."""
        self.peer_roots: Callable[[], Sequence[tuple[str, x509.Certificate]]] | None = None
        """Each active peer exchange's name and root CA, to check PDF seals our roots do
        not vouch for (set by the node when federation is on; docs/federation.md)."""
        self.vault = vault
        self.status_lists = status_lists
        self.registry = registry
        self.roots = tuple(roots)
        self.authorisations = HolderAuthorisations(pool)
        self.register = LicenceRegister(
            pool, registry=registry, status_lists=status_lists, access_log=access_log,
            recorder=AccessRecorder(node_name, hasher), clock=clock,
        )  # fmt: skip
        self.issuance = Issuance(
            pool, register=self.register, vault=vault, status_lists=status_lists,
            registry=registry, feed=feed, records=records, access_log=access_log, clock=clock,
            sm2_seals=sm2_seals,
        )  # fmt: skip
        self.approval_fetch = ApprovalFetch(
            pool, register=self.register, registry=registry, feed=feed,
            authorisations=self.authorisations, access_log=access_log, clock=clock,
            decide=decide,
        )  # fmt: skip
        self.trust = LicenceTrust(
            pool, vault=vault, status_lists=status_lists, registry=registry,
            node_signing=node_signing, roots=roots, clock=clock,
            published_intermediates=published_intermediates, sm2_seals=sm2_seals,
            sm2_roots=sm2_roots,
        )  # fmt: skip
