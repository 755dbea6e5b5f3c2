"""Which client certificates the node's gRPC server accepts, and whose they are.

The server accepts certificates chaining to this exchange's root or to the root of an
active peer (docs/federation.md, "Mutual TLS between nodes"). ``PeerTrust`` keeps that
set of roots, rebuilt when PostgreSQL notifies a change of the ``peer`` table (any node,
the CLI), and hands it to gRPC through ``grpc.dynamic_ssl_server_credentials``: gRPC asks
at each new handshake, and gets a new configuration only when the set changed. So a peer
added, suspended or removed takes effect at the next handshake on every node, without a
restart.

Which root issued a certificate is decided by its signature, never by names (every
exchange's root is "O=Tongban Exchange"): a certificate a peer's root issued is that
peer's node, which may call the peer service only, whatever URI it carries.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import asyncpg
import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from tongban.exchange.db.notify import ChangeListener
from tongban.exchange.db.trouble import DRIVER_ERRORS
from tongban.exchange.federation.errors import (
    PeerNotADepartment,
    PeerOnly,
    PeerSuspended,
    PeerUnknown,
)
from tongban.exchange.federation.peers import Peer, PeerStore, peer_ca
from tongban.signing.certs import NODE_URI_PREFIX, certificate_fingerprint, certificate_pem

__all__ = ["PEER_CHANNEL", "PeerTrust"]

_log = logging.getLogger(__name__)

PEER_CHANNEL = "tongban_peer"
_CACHE_SIZE = 10_000


@dataclass(frozen=True)
class _Snapshot:
    """The peers as last read, and the roots the server accepts (ours + active peers')."""

    peers: dict[str, Peer] = field(default_factory=dict)
    by_fingerprint: dict[bytes, Peer] = field(default_factory=dict)
    roots: dict[bytes, x509.Certificate] = field(default_factory=dict)
    roots_pem: bytes = b""


class PeerTrust:
    """The roots the gRPC server trusts and the attribution of client certificates.

    ``start()`` reads the peers before the server starts; ``stop()`` ends any reload.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        listener: ChangeListener,
        own_root: x509.Certificate,
        *,
        key_pem: bytes,
        chain_pem: bytes,
    ) -> None:
        self._store = PeerStore(pool)
        self._listener = listener
        self._own = own_root
        self._own_fingerprint = certificate_fingerprint(own_root)
        self._own_pem = certificate_pem(own_root)
        self._key_pem = key_pem
        self._chain_pem = chain_pem
        self._snapshot = _Snapshot(roots_pem=self._own_pem)
        self._served: bytes | None = None
        self._issuers: OrderedDict[tuple[bytes, bytes], bytes] = OrderedDict()
        self._dirty = 0
        self._reload: asyncio.Task[None] | None = None
        self.on_change: list[Callable[[], None]] = []
        """Called after each re-read of the peers (e.g. to drop channels to old ones)."""
        listener.subscribe(PEER_CHANNEL, self._changed)
        listener.on_reset(self._changed)

    @property
    def own_fingerprint(self) -> bytes:
        """SHA-256 of this exchange's root CA certificate."""
        return self._own_fingerprint

    async def start(self) -> None:
        """Read the peers; raise asyncpg/OS errors if the database cannot be read."""
        self._snapshot = await self._read()

    async def stop(self) -> None:
        if self._reload is not None:
            self._reload.cancel()
            await asyncio.gather(self._reload, return_exceptions=True)
            self._reload = None

    async def settled(self) -> None:
        """Return once the peers notified so far have been read again."""
        if self._reload is not None and not self._reload.done():
            await asyncio.shield(self._reload)

    def peers(self) -> list[Peer]:
        """The peers as last read (every status)."""
        return list(self._snapshot.peers.values())

    async def active_peer(self, name: str) -> Peer:
        """The active peer named ``name``; PeerUnknown if there is none (never added,
        removed or suspended)."""
        peer = await self.peer(name)
        if peer is None or not peer.active:
            raise PeerUnknown(
                f"No active peer exchange {name[:64]!r} is linked to this one; see the remote "
                "catalogue.",
                metadata={"peer": name[:64]},
            )
        return peer

    def active_roots(self) -> list[tuple[str, x509.Certificate]]:
        """Each active peer's name and root CA, by name (as last read)."""
        return [
            (p.name, peer_ca(p)) for p in sorted(self.peers(), key=lambda p: p.name) if p.active
        ]

    async def peer(self, name: str) -> Peer | None:
        """The peer named ``name`` now (read again while notifications are down)."""
        snapshot = self._snapshot if self._listener.live else await self._read()
        return snapshot.peers.get(name)

    # -- the TLS server's roots ---------------------------------------------------------

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server credentials that require a client certificate and follow the peers."""
        initial = self._configuration(self._snapshot.roots_pem)
        self._served = self._snapshot.roots_pem
        return grpc.dynamic_ssl_server_credentials(
            initial,
            self._fetch,  # type: ignore[arg-type]  # gRPC documents None as "no change"
            require_client_authentication=True,
        )

    def _configuration(self, roots_pem: bytes) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self._key_pem, self._chain_pem)], root_certificates=roots_pem
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC (from its own thread) at each new handshake: no I/O, no locks;
        # the snapshot is replaced whole, so reading it once is consistent.
        roots = self._snapshot.roots_pem
        if roots == self._served:
            return None
        self._served = roots
        return self._configuration(roots)

    # -- who is calling -----------------------------------------------------------------

    def issued_by_peer(self, cert_pem: bytes, chain_pem: bytes = b"") -> bool:
        """Whether a peer's root (of any status) issued this client certificate, directly
        or through an issuing CA in ``chain_pem`` (the rest of the chain the client sent)."""
        issuer = self._issuer(cert_pem, chain_pem)
        return issuer is not None and issuer != self._own_fingerprint

    def refuse_peer_as_department(self, cert_pem: bytes, chain_pem: bytes = b"") -> None:
        """Raise PeerNotADepartment if a peer's root issued ``cert_pem``: a peer's node
        may call the peer service only."""
        if self.issued_by_peer(cert_pem, chain_pem):
            raise PeerNotADepartment(
                "A peer exchange's node may call only the peer service (PeerService), "
                "never a department's methods."
            )

    async def authenticate_peer(self, cert_pem: bytes, chain_pem: bytes = b"") -> Peer:
        """Return the active peer whose root issued ``cert_pem`` to one of its nodes,
        directly or through an issuing CA in ``chain_pem``.

        Raises PeerOnly (a certificate of our root, or one naming no node), PeerUnknown
        (a root not configured, e.g. removed since the connection opened) or
        PeerSuspended.
        """
        issuer = self._issuer(cert_pem, chain_pem)
        if issuer == self._own_fingerprint:
            raise PeerOnly(
                "The peer service answers only the nodes of peer exchanges; departments "
                "call their own exchange's services."
            )
        snapshot = self._snapshot if self._listener.live else await self._read()
        peer = None if issuer is None else snapshot.by_fingerprint.get(issuer)
        if peer is None:
            # Only a connection opened before its peer was removed gets this far.
            raise PeerUnknown("The calling exchange is not (or no longer) a peer of this one.")
        if not peer.active:
            raise PeerSuspended(
                f"Peer {peer.name} is suspended on this exchange; its operator must ask ours "
                "to activate it.",
                metadata={"peer": peer.name},
            )
        if not _names_node(cert_pem):
            raise PeerOnly(
                f"The certificate of peer {peer.name} names no exchange node "
                f"({NODE_URI_PREFIX}…); peers call with their node certificate."
            )
        return peer

    def _issuer(self, cert_pem: bytes, chain_pem: bytes = b"") -> bytes | None:
        """The fingerprint of the known root that issued ``cert_pem`` (cached), directly
        or through one issuing CA of ``chain_pem``; None if no known root did. The TLS
        handshake has already validated the path; this says whose root it ends at."""
        key = (cert_pem, chain_pem)
        cached = self._issuers.get(key)
        if cached is not None:
            self._issuers.move_to_end(key)
            return cached
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            sent = x509.load_pem_x509_certificates(chain_pem) if chain_pem else []
        except ValueError:
            return None
        roots = self._snapshot.roots.items()
        fingerprint = _root_of(cert, roots)
        for issuing in sent:
            if fingerprint is not None:
                break
            if issuing != cert and _issued(cert, issuing):
                fingerprint = _root_of(issuing, roots)
        if fingerprint is not None:
            self._issuers[key] = fingerprint
            if len(self._issuers) > _CACHE_SIZE:
                self._issuers.popitem(last=False)
        return fingerprint

    # -- keeping up with changes --------------------------------------------------------

    async def _read(self) -> _Snapshot:
        peers = await self._store.list()
        roots = {self._own_fingerprint: self._own}
        roots_pem = [self._own_pem]
        for peer in peers:
            roots[peer.ca_fingerprint] = peer_ca(peer)
            if peer.active:
                roots_pem.append(peer.ca_pem)
        return _Snapshot(
            peers={p.name: p for p in peers},
            by_fingerprint={p.ca_fingerprint: p for p in peers},
            roots=roots,
            roots_pem=b"".join(roots_pem),
        )

    def _changed(self, _payload: str = "") -> None:
        self._dirty += 1
        if self._reload is None or self._reload.done():
            self._reload = asyncio.get_running_loop().create_task(
                self._reload_until_clean(), name="peer-trust"
            )

    async def _reload_until_clean(self) -> None:
        while True:
            seen = self._dirty
            try:
                snapshot = await self._read()
            except DRIVER_ERRORS as e:
                _log.warning("cannot read the peers (%s); retrying in 1 s", e)
                await asyncio.sleep(1.0)
                continue
            self._snapshot = snapshot
            self._issuers.clear()  # attributions to a removed root must not outlive it
            for callback in self.on_change:
                callback()
            if self._dirty == seen:
                return


def _issued(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer`` signed ``cert``."""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _root_of(
    cert: x509.Certificate, roots: Iterable[tuple[bytes, x509.Certificate]]
) -> bytes | None:
    """The fingerprint of the root among ``roots`` that signed ``cert``, or None."""
    return next((fingerprint for fingerprint, root in roots if _issued(cert, root)), None)


@functools.lru_cache(maxsize=256)
def _names_node(cert_pem: bytes) -> bool:
    """Whether ``cert_pem`` names an exchange node (a pure function of the bytes, asked on
    every peer call: remembered)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    return any(
        uri.startswith(NODE_URI_PREFIX)
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
    )
