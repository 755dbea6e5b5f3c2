"""The datasets peers offer us, as last pulled, and the pulls' outcome
(docs/federation.md, "Pull on a timer, plus a notify")."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from tongban.errors import TongbanError
from tongban.exchange.federation.entries import RemoteEntry, signed_window, verify_offered
from tongban.exchange.federation.peers import Peer, peer_ca
from tongban.exchange.sharing.model import DatasetEntry

__all__ = ["PullResult", "RemoteCatalogue", "StoredRemote", "VerifiedEntries"]


@dataclass(frozen=True)
class PullResult:
    added: tuple[str, ...]
    updated: tuple[str, ...]
    withdrawn: tuple[str, ...]


@dataclass(frozen=True)
class StoredRemote:
    """A remote dataset as shown: its entry (re-checked from the stored JWS) and when it
    was received."""

    remote: RemoteEntry
    peer_level: str
    received_at: datetime


# A forwarded query looks its dataset's entry up on every call, and verifying the stored
# JWS again (a signature and one or more certificate chains) cost the forwarding node more
# than the rest of its own work on the query (docs/federation.md, "Measured").
_VERIFIED_MAX = 4096


@dataclass(frozen=True)
class _Verified:
    remote: RemoteEntry
    not_before: datetime
    not_after: datetime


class VerifiedEntries:
    """``verify_offered``, remembered while every certificate the entry carries (and the
    peer's root) is valid: inside that span nothing it checks depends on the time.

    Kept by peer name, the peer's root as pinned and the token, so a new root, or a new
    entry from the next pull, is verified afresh.
    """

    def __init__(self, size: int = _VERIFIED_MAX) -> None:
        self._size = size
        self._known: dict[tuple[str, bytes, str], _Verified] = {}

    def verify(self, token: str, peer: Peer, now: datetime) -> RemoteEntry:
        """What ``peer`` offers in ``token``; raises as ``verify_offered`` does."""
        key = (peer.name, peer.ca_fingerprint, token)
        known = self._known.get(key)
        if known is not None and known.not_before <= now <= known.not_after:
            return known.remote
        root = peer_ca(peer)
        remote = verify_offered(token, peer=peer.name, peer_root=root, now=now)
        start, end = signed_window(token, peer.name)
        if len(self._known) >= self._size:
            self._known.clear()  # a few thousand entries: start again rather than track age
        self._known[key] = _Verified(
            remote, max(start, root.not_valid_before_utc), min(end, root.not_valid_after_utc)
        )
        return remote


class RemoteCatalogue:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._verified = VerifiedEntries()

    async def replace(self, peer: str, entries: Sequence[RemoteEntry], now: datetime) -> PullResult:
        """Make ``entries`` the whole of what ``peer`` offers us: add and replace those
        that changed, delete those no longer offered, and note the pull; one transaction."""
        offered = {e.code: e for e in entries}
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT code, entry FROM remote_dataset WHERE peer = $1 FOR UPDATE", peer
            )
            held = {row["code"]: json.loads(row["entry"]) for row in rows}
            withdrawn = sorted(set(held) - set(offered))
            if withdrawn:
                await conn.execute(
                    "DELETE FROM remote_dataset WHERE peer = $1 AND code = ANY ($2)",
                    peer,
                    withdrawn,
                )
            changed = [e for code, e in offered.items() if held.get(code) != dict(e.payload)]
            if changed:
                await conn.executemany(
                    """
                    INSERT INTO remote_dataset
                        (peer, code, owner, version, share_class, title, entry, signed_entry,
                         received_at)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                    ON CONFLICT (peer, code) DO UPDATE SET
                        owner = EXCLUDED.owner, version = EXCLUDED.version,
                        share_class = EXCLUDED.share_class, title = EXCLUDED.title,
                        entry = EXCLUDED.entry, signed_entry = EXCLUDED.signed_entry,
                        received_at = EXCLUDED.received_at
                    """,
                    [
                        (
                            peer,
                            e.code,
                            e.entry.owner,
                            e.entry.version,
                            e.entry.share_class.value,
                            e.entry.title,
                            json.dumps(dict(e.payload), ensure_ascii=False),
                            e.signed,
                            now,
                        )
                        for e in changed
                    ],
                )
            await _note(conn, peer, now, None)
        return PullResult(
            added=tuple(sorted(c for c in offered if c not in held)),
            updated=tuple(sorted(e.code for e in changed if e.code in held)),
            withdrawn=tuple(withdrawn),
        )

    async def failed(self, peer: str, now: datetime, error: TongbanError) -> None:
        """Note that a pull from ``peer`` failed or was refused, and why."""
        async with self._pool.acquire() as conn:
            await _note(conn, peer, now, error)

    async def get(self, peer: Peer, code: str, *, now: datetime) -> DatasetEntry | None:
        """The entry of ``code`` as ``peer`` offers it (checked again from its stored JWS),
        or None."""
        found = await self.get_remote(peer, code, now=now)
        return None if found is None else found.entry

    async def get_remote(self, peer: Peer, code: str, *, now: datetime) -> RemoteEntry | None:
        """What ``peer`` offers as ``code`` (its name: ``hrss.x``, or ``province:hrss.x``
        for an entry it relays), checked again from its stored JWS, or None."""
        token = await self._pool.fetchval(
            "SELECT signed_entry FROM remote_dataset WHERE peer = $1 AND code = $2",
            peer.name,
            code,
        )
        if token is None:
            return None
        try:
            return self._verified.verify(token, peer, now)
        except TongbanError:
            return None  # e.g. its signing certificate expired: the next pull replaces it

    async def list(self, peers: Sequence[Peer], *, now: datetime) -> list[StoredRemote]:
        """The datasets offered by ``peers`` (the active ones, as the caller decides),
        each checked again from its stored JWS, by peer and code."""
        by_name = {p.name: p for p in peers}
        rows = await self._pool.fetch(
            """
            SELECT peer, signed_entry, received_at FROM remote_dataset
            WHERE peer = ANY ($1) ORDER BY peer, code
            """,
            list(by_name),
        )
        found = []
        for row in rows:
            peer = by_name[row["peer"]]
            try:
                remote = self._verified.verify(row["signed_entry"], peer, now)
            except TongbanError:
                continue  # e.g. its node certificate expired since: the next pull replaces it
            found.append(StoredRemote(remote, peer.level.value, row["received_at"]))
        return found


async def _note(conn: Any, peer: str, now: datetime, error: TongbanError | None) -> None:
    await conn.execute(
        """
        INSERT INTO peer_sync (peer, attempted_at, synced_at, error_reason, error_message)
        VALUES ($1, $2::timestamptz, CASE WHEN $3::text IS NULL THEN $2::timestamptz END, $3, $4)
        ON CONFLICT (peer) DO UPDATE SET
            attempted_at = EXCLUDED.attempted_at,
            synced_at = COALESCE(EXCLUDED.synced_at, peer_sync.synced_at),
            error_reason = EXCLUDED.error_reason,
            error_message = EXCLUDED.error_message
        """,
        peer,
        now,
        None if error is None else error.reason,
        None if error is None else error.message[:500],
    )
