"""Signed catalogue entries offered to peers, and their checks on receipt (pure).

An offered entry is a compact JWS (``typ`` ``tongban-catalogue-entry+jws``) by the
offering node's signing certificate, carried in ``x5c``, over the RFC 8785 canonical JSON
of the entry (docs/federation.md, "Signed entries"). The receiver accepts it only if it
is the offering peer's own: signed under that peer's root, naming that peer's exchange,
owned by the department its code starts with.

A peer also re-offers the entries it received from its other peers (docs/federation.md,
"Routing over several hops"): a relayed entry (``typ`` ``tongban-relayed-entry+jws``) is
signed by the relaying node over the name it gives the exchange it got the entry from
(``via``), that exchange's root fingerprint (``via_exchange``) and the token it got,
unchanged (the owner's entry, or another relayed one). The receiver checks the relaying
peer's signature under the peer's root, and each token inside under the root its own
``x5c`` carries, which must be the one the layer above names: the chain of who offered
what to whom is kept whole as evidence, and the owner's entry inside is the owner's.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tongban.errors import TongbanError
from tongban.exchange.catalogue.canonical import canonical_json
from tongban.exchange.catalogue.schema import schema_from_json, schema_to_json
from tongban.exchange.catalogue.subject_ids import SubjectKind
from tongban.exchange.federation.errors import (
    PeerEntryInvalid,
    PeerNotOwner,
    PeerSignatureInvalid,
)
from tongban.exchange.sharing.datasets import is_dataset_code
from tongban.exchange.sharing.model import DatasetEntry, LegalBasis, PersonalBasis, ShareClass
from tongban.signing.certs import NODE_URI_PREFIX, certificate_fingerprint, verify_certificate
from tongban.signing.jose import sign_jws, verify_jws
from tongban.signing.keys import Signer

__all__ = [
    "ENTRY_TYPE",
    "RELAYED_TYPE",
    "RemoteEntry",
    "chain_root",
    "node_signing_certificate",
    "owner_entry_root",
    "sign_entry",
    "sign_relayed",
    "signed_window",
    "verify_entry",
    "verify_offered",
]

ENTRY_TYPE = "tongban-catalogue-entry+jws"
RELAYED_TYPE = "tongban-relayed-entry+jws"
MAX_ROUTE = 8
"""The deepest nesting of relayed entries read at all (settings cap hops lower)."""
_MAX_ENTRY = 512 * 1024
_NAME = re.compile(r"[a-z][a-z0-9-]{1,62}")
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class RemoteEntry:
    """A catalogue entry a peer offered, checked: ``entry`` is the owner's entry as the
    owner's exchange names it (code without the peer's prefix), ``signed`` the JWS."""

    peer: str
    entry: DatasetEntry
    payload: Mapping[str, Any]
    signed: str
    route: tuple[str, ...] = ()
    """For a relayed entry, the names of the exchanges beyond ``peer``, outward, each as
    the exchange before it names it (``("province",)``: ``peer``'s name for the owner's
    exchange); empty for the peer's own entry."""
    path: tuple[str, ...] = ()
    """Hex root fingerprints of the exchanges named by ``route``, in the same order (the
    last is the owner's)."""

    @property
    def code(self) -> str:
        """The peer's name for the dataset: the owner's code behind ``route``
        (``province:hrss.social_insurance`` at the city for the county)."""
        return ":".join((*self.route, self.entry.code))

    @property
    def remote_code(self) -> str:
        """How this exchange names the dataset: ``<peer>:<code>``, with the route between
        (``city:province:hrss.social_insurance``)."""
        return f"{self.peer}:{self.code}"

    @property
    def remote_owner(self) -> str:
        """How this exchange names its owner: ``<peer>/<department>``, with the route
        between (``city/province/hrss``)."""
        return "/".join((self.peer, *self.route, self.entry.owner))

    @property
    def hops(self) -> int:
        """Links between exchanges from us to the owner's exchange (a peer's own: 1)."""
        return len(self.route) + 1


def _instant(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def entry_payload(entry: DatasetEntry, *, exchange: bytes) -> dict[str, object]:
    """The signed form of ``entry`` offered by the exchange whose root has SHA-256
    ``exchange``."""
    basis = entry.legal_basis
    return {
        "v": 1,
        "exchange": exchange.hex(),
        "code": entry.code,
        "owner": entry.owner,
        "version": entry.version,
        "version_created_at": _instant(entry.version_created_at),
        "spec": {
            "title": entry.title,
            "description": entry.description,
            "schema": schema_to_json(entry.schema),
            "subject_kind": entry.subject_kind.value,
            "update_frequency": entry.update_frequency,
            "share_class": entry.share_class.value,
            "conditions": entry.conditions,
            "legal_basis": None if basis is None else {"law": basis.law, "article": basis.article},
            "personal_bases": [
                {"law": b.law, "article": b.article, "fields": list(b.fields)}
                for b in entry.personal_bases
            ],
        },
    }


def sign_entry(
    entry: DatasetEntry, *, exchange: bytes, signer: Signer, chain: tuple[x509.Certificate, ...]
) -> str:
    """The compact JWS of ``entry`` by the node signing key ``signer`` (``chain``: its
    certificate and the root, leaf first)."""
    x5c = [base64.b64encode(cert.public_bytes(Encoding.DER)).decode() for cert in chain]
    return sign_jws(
        canonical_json(entry_payload(entry, exchange=exchange)),
        signer,
        headers={"typ": ENTRY_TYPE, "x5c": x5c},
    )


def verify_entry(
    token: str, *, peer: str, peer_root: x509.Certificate, now: datetime
) -> RemoteEntry:
    """Return the entry of compact JWS ``token`` offered by peer ``peer`` (whose root CA is
    ``peer_root``), checked.

    Raises PeerNotOwner if it names another exchange or an owner its code does not start
    with; PeerSignatureInvalid unless a node signing certificate chaining to
    ``peer_root`` signed it; PeerEntryInvalid if it is malformed.
    """
    if len(token) > _MAX_ENTRY:
        raise PeerEntryInvalid(f"Peer {peer} offered an entry over {_MAX_ENTRY} bytes.")
    header, claimed = _unverified(token, peer)
    exchange = certificate_fingerprint(peer_root).hex()
    if claimed.get("exchange") != exchange:
        raise PeerNotOwner(
            f"Peer {peer} offered an entry of another exchange "
            f"({str(claimed.get('exchange'))[:16]}…); a peer offers only its own datasets.",
            metadata={"peer": peer},
        )
    code, owner = claimed.get("code"), claimed.get("owner")
    if not isinstance(code, str) or not is_dataset_code(code) or not isinstance(owner, str):
        raise PeerEntryInvalid(f"Peer {peer} offered an entry without a valid dataset code.")
    if code.split(".", 1)[0] != owner:
        raise PeerNotOwner(
            f"Peer {peer} offered {code[:100]} as owned by {owner[:64]!r}; a dataset belongs "
            "to the department its code starts with.",
            metadata={"peer": peer, "dataset": code[:100]},
        )
    _check_signature(token, header, peer=peer, peer_root=peer_root, now=now)
    if header.get("typ") != ENTRY_TYPE:
        raise PeerEntryInvalid(f"Peer {peer} offered a JWS that is not a catalogue entry.")
    try:
        entry = _entry(claimed, code, owner)
    except (TongbanError, KeyError, TypeError, ValueError) as e:
        raise PeerEntryInvalid(
            f"Peer {peer} offered a malformed entry for {code}; its operator must fix it.",
            metadata={"peer": peer, "dataset": code},
        ) from e
    return RemoteEntry(peer=peer, entry=entry, payload=claimed, signed=token)


def sign_relayed(
    remote: RemoteEntry, *, via_exchange: bytes, exchange: bytes, signing_signer: Signer,
    chain: tuple[x509.Certificate, ...],
) -> str:  # fmt: skip
    """The relayed entry by which exchange ``exchange`` re-offers ``remote``, received
    from its peer ``remote.peer`` (root SHA-256 ``via_exchange``)."""
    x5c = [base64.b64encode(cert.public_bytes(Encoding.DER)).decode() for cert in chain]
    payload = {
        "v": 1,
        "exchange": exchange.hex(),
        "via": remote.peer,
        "via_exchange": via_exchange.hex(),
        "entry": remote.signed,
    }
    return sign_jws(
        canonical_json(payload), signing_signer, headers={"typ": RELAYED_TYPE, "x5c": x5c}
    )


def verify_offered(
    token: str, *, peer: str, peer_root: x509.Certificate, now: datetime
) -> RemoteEntry:
    """Like ``verify_entry`` for an entry peer ``peer`` offered, its own or relayed.

    A relayed entry must be signed by a node of ``peer_root`` naming it, and the token it
    carries must verify (recursively) under the root in its own ``x5c`` whose SHA-256 is
    the ``via_exchange`` named. Raises PeerSignatureInvalid, PeerNotOwner or
    PeerEntryInvalid as ``verify_entry`` does.
    """
    return _verify_offered(token, peer=peer, peer_root=peer_root, now=now, depth=0)


def _verify_offered(
    token: str, *, peer: str, peer_root: x509.Certificate, now: datetime, depth: int
) -> RemoteEntry:
    if len(token) > _MAX_ENTRY * 2:
        raise PeerEntryInvalid(f"Peer {peer} offered an entry over {_MAX_ENTRY * 2} bytes.")
    header, claimed = _unverified(token, peer)
    if header.get("typ") != RELAYED_TYPE:
        return verify_entry(token, peer=peer, peer_root=peer_root, now=now)
    if depth >= MAX_ROUTE:
        raise PeerEntryInvalid(f"Peer {peer} offered an entry relayed over {MAX_ROUTE} times.")
    if claimed.get("exchange") != certificate_fingerprint(peer_root).hex():
        raise PeerNotOwner(
            f"Peer {peer} offered an entry relayed by another exchange; a peer signs what it "
            "re-offers itself.",
            metadata={"peer": peer},
        )
    _check_signature(token, header, peer=peer, peer_root=peer_root, now=now)
    via, via_exchange, inner = claimed.get("via"), claimed.get("via_exchange"), claimed.get("entry")
    if not (
        isinstance(via, str)
        and _NAME.fullmatch(via)
        and isinstance(via_exchange, str)
        and _FINGERPRINT.fullmatch(via_exchange)
        and isinstance(inner, str)
    ):
        raise PeerEntryInvalid(f"Peer {peer} offered a malformed relayed entry.")
    inner_root = _own_root(inner, peer)
    if certificate_fingerprint(inner_root).hex() != via_exchange:
        raise PeerSignatureInvalid(
            f"Peer {peer} relayed an entry not signed under the root of the exchange it names.",
            metadata={"peer": peer},
        )
    carried = _verify_offered(inner, peer=via, peer_root=inner_root, now=now, depth=depth + 1)
    return RemoteEntry(
        peer=peer,
        entry=carried.entry,
        payload=claimed,
        signed=token,
        route=(via, *carried.route),
        path=(via_exchange, *carried.path),
    )


def signed_window(token: str, peer: str) -> tuple[datetime, datetime]:
    """The span in which every certificate ``token`` carries is valid — its ``x5c`` and,
    for a relayed entry, those of every entry inside it — as (not before, not after).

    What ``verify_offered`` decided at one instant holds at any other instant of that
    span: nothing else it checks depends on the time. Raises PeerEntryInvalid or
    PeerSignatureInvalid for a token that is not of the form it checks.
    """
    start, end = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)
    for _ in range(MAX_ROUTE + 1):
        header, claimed = _unverified(token, peer)
        chain = header.get("x5c")
        if not isinstance(chain, list):
            raise PeerSignatureInvalid(
                f"Peer {peer} offered an entry that carries no certificate chain.",
                metadata={"peer": peer},
            )
        for item in chain:
            try:
                cert = x509.load_der_x509_certificate(base64.b64decode(item))
            except (ValueError, TypeError, binascii.Error) as e:
                raise PeerSignatureInvalid(
                    f"Peer {peer} offered an entry whose certificate chain is unreadable.",
                    metadata={"peer": peer},
                ) from e
            start = max(start, cert.not_valid_before_utc)
            end = min(end, cert.not_valid_after_utc)
        inner = claimed.get("entry")
        if header.get("typ") != RELAYED_TYPE or not isinstance(inner, str):
            break
        token = inner
    return start, end


def owner_entry_root(remote: RemoteEntry) -> x509.Certificate:
    """The root CA in the owner's own signed entry inside a relayed ``remote`` (checked,
    when the entry was received, to be the root of the exchange its ``path`` names
    last); for a peer's own entry, the root in its chain."""
    token = remote.signed
    for _ in range(MAX_ROUTE + 1):
        header, claimed = _unverified(token, remote.peer)
        inner = claimed.get("entry")
        if header.get("typ") != RELAYED_TYPE or not isinstance(inner, str):
            break
        token = inner
    return _own_root(token, remote.peer)


def _own_root(token: str, peer: str) -> x509.Certificate:
    """The last certificate of ``token``'s ``x5c`` (its signer's root, by its own word)."""
    header, _ = _unverified(token, peer)
    try:
        return chain_root(header)
    except (ValueError, binascii.Error) as e:
        raise PeerSignatureInvalid(
            f"Peer {peer} relayed an entry that carries no certificate chain.",
            metadata={"peer": peer},
        ) from e


def chain_root(header: Mapping[str, Any]) -> x509.Certificate:
    """The last certificate of a JWS header's ``x5c``: the root its signer claims.
    Raises ValueError (or binascii.Error) if there is none."""
    chain = header.get("x5c")
    if not isinstance(chain, list) or not chain or not isinstance(chain[-1], str):
        raise ValueError("the JWS carries no x5c chain")
    return x509.load_der_x509_certificate(base64.b64decode(chain[-1]))


def _unverified(token: str, peer: str) -> tuple[dict[str, Any], dict[str, Any]]:
    parts = token.split(".")
    if len(parts) != 3:
        raise PeerEntryInvalid(f"Peer {peer} offered an entry that is not a compact JWS.")
    try:
        header = json.loads(_b64(parts[0]))
        payload = json.loads(_b64(parts[1]))
    except (ValueError, binascii.Error) as e:
        raise PeerEntryInvalid(f"Peer {peer} offered an entry that cannot be decoded.") from e
    if not isinstance(header, dict) or not isinstance(payload, dict) or payload.get("v") != 1:
        raise PeerEntryInvalid(f"Peer {peer} offered an entry of an unknown form.")
    return header, payload


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _check_signature(
    token: str, header: Mapping[str, Any], *, peer: str, peer_root: x509.Certificate, now: datetime
) -> None:
    try:
        leaf = node_signing_certificate(header, roots=[peer_root], now=now)
        verify_jws(token, leaf.public_key(), algorithms=("ES256", "EdDSA"))  # type: ignore[arg-type]
    except (TongbanError, ValueError, TypeError, binascii.Error, x509.ExtensionNotFound) as e:
        raise PeerSignatureInvalid(
            f"An entry peer {peer} offered is not signed by a node of its exchange "
            "(under the root CA configured for it).",
            metadata={"peer": peer},
        ) from e


# Path validation costs far more than the signature check, and a node sees the same few
# peer node certificates on every forwarded request. A chain that validated at one
# instant validates at any instant inside every certificate's validity (nothing else in
# path validation depends on the time), so the result is reused only inside that window,
# and only for the same chain and the same roots.
_CHAIN_CACHE_SIZE = 256
_chain_cache: OrderedDict[
    tuple[tuple[str, ...], tuple[bytes, ...]], tuple[datetime, datetime, x509.Certificate]
] = OrderedDict()
_chain_cache_lock = threading.Lock()


def node_signing_certificate(
    header: Mapping[str, Any], *, roots: list[x509.Certificate], now: datetime
) -> x509.Certificate:
    """The node signing certificate in a JWS header's ``x5c``, checked to chain to one of
    ``roots`` for signing and to name an exchange node. A chain checked before is not
    checked again while ``now`` lies within its certificates' validity.

    Raises ValueError (no chain, not a node's), CertificateInvalid or CertificateExpired.
    """
    chain_b64 = header.get("x5c")
    if not isinstance(chain_b64, list) or not chain_b64:
        raise ValueError("the JWS carries no x5c chain")
    if not all(isinstance(c, str) for c in chain_b64):
        raise ValueError("the x5c chain holds something other than base64 text")
    key = (tuple(chain_b64), tuple(certificate_fingerprint(r) for r in roots))
    with _chain_cache_lock:
        hit = _chain_cache.get(key)
        if hit is not None:
            _chain_cache.move_to_end(key)
    if hit is not None and hit[0] <= now <= hit[1]:
        return hit[2]
    chain = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in chain_b64]
    verified = verify_certificate(
        chain[0], roots=roots, intermediates=chain[1:], now=now, usage="seal"
    )
    san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if not any(
        uri.startswith(NODE_URI_PREFIX)
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
    ):
        raise ValueError("the signing certificate names no exchange node")
    window = (
        max(c.not_valid_before_utc for c in verified),
        min(c.not_valid_after_utc for c in verified),
        chain[0],
    )
    with _chain_cache_lock:
        _chain_cache[key] = window
        while len(_chain_cache) > _CHAIN_CACHE_SIZE:
            _chain_cache.popitem(last=False)
    return chain[0]


def _entry(claimed: Mapping[str, Any], code: str, owner: str) -> DatasetEntry:
    spec = claimed["spec"]
    basis = spec["legal_basis"]
    share_class = ShareClass(spec["share_class"])
    legal_basis = None if basis is None else LegalBasis(str(basis["law"]), str(basis["article"]))
    if share_class is ShareClass.NOT_SHARED and legal_basis is None:
        raise ValueError("not_shared without a legal basis")
    version = claimed["version"]
    if not isinstance(version, int) or not 1 <= version <= 2**31 - 1:
        raise ValueError("bad version")
    at = datetime.fromisoformat(str(claimed["version_created_at"]))
    texts = [spec["title"], spec["description"], spec["update_frequency"], spec["conditions"]]
    if not all(isinstance(t, str) and len(t) <= 20_000 for t in texts):
        raise ValueError("bad texts")
    return DatasetEntry(
        code=code,
        owner=owner,
        version=version,
        title=spec["title"],
        description=spec["description"],
        schema=schema_from_json(spec["schema"]),
        subject_kind=SubjectKind(spec["subject_kind"]),
        update_frequency=spec["update_frequency"],
        share_class=share_class,
        conditions=spec["conditions"],
        legal_basis=legal_basis,
        published=True,
        created_at=at,
        version_created_at=at,
        personal_bases=tuple(
            PersonalBasis(str(b["law"]), str(b["article"]), tuple(map(str, b["fields"])))
            for b in spec["personal_bases"]
        ),
    )
