"""What this exchange offers its peers: the datasets owners marked federated
(docs/federation.md, "Marking a dataset federated"), as signed entries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from tongban.exchange.datadir import NodeSigning
from tongban.exchange.federation.entries import sign_entry
from tongban.exchange.federation.errors import PeerUnknown
from tongban.exchange.federation.peers import validate_peer_name
from tongban.exchange.sharing.errors import DatasetNotFound, NotOwner
from tongban.exchange.sharing.model import DatasetEntry
from tongban.exchange.sharing.service import Sharing

__all__ = ["CatalogueOffer", "Federation"]


@dataclass(frozen=True)
class Federation:
    """Whether a dataset is offered to peers, and to which (empty: every active peer)."""

    code: str
    federated: bool
    peers: tuple[str, ...]


class CatalogueOffer:
    """Owners' federation settings, and the signed entries offered to each peer."""

    def __init__(
        self, pool: asyncpg.Pool, sharing: Sharing, signing: NodeSigning, exchange: bytes
    ) -> None:
        """``exchange``: SHA-256 of this exchange's root CA certificate."""
        self._pool = pool
        self._sharing = sharing
        self._signing = signing
        self._exchange = exchange
        # Signed entries by (code, version): an unchanged entry is not signed again.
        self._signed: dict[tuple[str, int], str] = {}

    async def set_federation(
        self,
        owner: str,
        code: str,
        *,
        federated: bool,
        peers: Sequence[str],
        known_peers: set[str],
        officer: str | None,
        now: datetime,
    ) -> Federation:
        """Offer the owner's dataset ``code`` to ``peers`` (every peer if empty), or stop.

        Raises DatasetNotFound, NotOwner (not the caller's), PeerUnknown (a peer named is
        not configured) or InvalidArgument (a malformed peer name).
        """
        entry = await self._sharing.datasets.get(code)
        if entry is None:
            raise DatasetNotFound(f"No dataset {code[:100]!r} is in the catalogue.")
        if entry.owner != owner:
            raise NotOwner(f"Only {entry.owner} decides whether {entry.code} is federated.")
        named = tuple(dict.fromkeys(validate_peer_name(p) for p in peers))
        unknown = [p for p in named if p not in known_peers]
        if unknown:
            raise PeerUnknown(
                f"No peer {unknown[0]!r} is configured; see the peers with the operator.",
                metadata={"peer": unknown[0]},
            )
        if federated:
            await self._pool.execute(
                """
                INSERT INTO dataset_federation (dataset, peers, updated_at, updated_by)
                VALUES ($1, $2, $3, $4)
                ON CONFLICT (dataset) DO UPDATE
                    SET peers = EXCLUDED.peers, updated_at = EXCLUDED.updated_at,
                        updated_by = EXCLUDED.updated_by
                """,
                entry.code,
                list(named),
                now,
                officer,
            )
        else:
            await self._pool.execute(
                "DELETE FROM dataset_federation WHERE dataset = $1", entry.code
            )
        return Federation(entry.code, federated, named if federated else ())

    async def federated_codes(self) -> set[str]:
        """Every dataset some peer may be offered (published or not)."""
        rows = await self._pool.fetch("SELECT dataset FROM dataset_federation")
        return {row["dataset"] for row in rows}

    async def entries_for(self, peer: str) -> list[str]:
        """The signed entries offered to ``peer``: the published federated datasets whose
        owners offer them to every peer or to this one."""
        rows = await self._pool.fetch(
            """
            SELECT f.dataset FROM dataset_federation f JOIN dataset d ON d.code = f.dataset
            WHERE d.published AND (cardinality(f.peers) = 0 OR $1 = ANY (f.peers))
            ORDER BY f.dataset
            """,
            peer,
        )
        offered = []
        for row in rows:
            entry = await self._sharing.current_entry(row["dataset"])
            if entry is not None and entry.published:
                offered.append(self._sign(entry))
        return offered

    async def offers(self, peer: str, code: str) -> DatasetEntry | None:
        """The entry of ``code`` if it is offered to ``peer`` now, else None."""
        offered = await self._pool.fetchval(
            """
            SELECT true FROM dataset_federation f JOIN dataset d ON d.code = f.dataset
            WHERE f.dataset = $2 AND d.published
              AND (cardinality(f.peers) = 0 OR $1 = ANY (f.peers))
            """,
            peer,
            code,
        )
        return await self._sharing.current_entry(code) if offered else None

    def _sign(self, entry: DatasetEntry) -> str:
        key = (entry.code, entry.version)
        token = self._signed.get(key)
        if token is None:
            if len(self._signed) > 10_000:
                self._signed.clear()
            token = self._signed[key] = sign_entry(
                entry,
                exchange=self._exchange,
                signer=self._signing.signer,
                chain=self._signing.chain,
            )
        return token
