"""Status lists in PostgreSQL: random index allocation, status bits, signed tokens.

Each list (``status_list`` row) holds ``MIN_SIZE`` 2-bit entries. Issuance allocates
indices inside its own transaction, holding the list row's lock (``FOR UPDATE``), from
an in-memory ``IndexAllocator`` that is reloaded from the licences whenever the row's
``allocated`` count shows another node (or a rolled-back transaction) changed it; the
``UNIQUE (status_list, status_index)`` constraint makes a shared index impossible
whatever happens. A full list (or one past ``FILL_LIMIT``) is closed and a new list
started, so allocation never slows down near the end.

Tokens are signed by the exchange's status-list key and cached per list until the list's
``revision`` moves (any status change bumps it) or half the token's ``ttl`` has passed.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from tongban.exchange.licensing.custody import STATUS_LIST_HOLDER, SealVault
from tongban.licence import MIN_SIZE, IndexAllocator, LicenceStatus, StatusList, sign_status_list

__all__ = ["FILL_LIMIT", "StatusLists", "StatusToken"]

#: A list takes new licences until this share of it is allocated (random probes stay
#: cheap, and a list keeps plenty of unallocated entries for herd privacy).
FILL_LIMIT = 0.75
_BITS = 2
_LIST_PATH = re.compile(r"/status-lists/([1-9][0-9]{0,8})$")


@dataclass(frozen=True)
class StatusToken:
    """A signed status list token and how long verifiers may cache it."""

    token: str
    ttl: timedelta
    revision: int


class StatusLists:
    """The status lists of one exchange; ``base_url`` prefixes their URIs."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        vault: SealVault,
        base_url: str,
        *,
        ttl: timedelta = timedelta(minutes=5),
        lifetime: timedelta = timedelta(days=1),
        rng: random.Random | None = None,
    ) -> None:
        """``ttl``: how long verifiers may use a token (its ``ttl`` claim and the
        ``max-age`` it is served with); ``lifetime``: its ``exp`` after ``iat``.

        Raises ValueError unless 1 s <= ``ttl`` <= ``lifetime``.
        """
        if not timedelta(seconds=1) <= ttl <= lifetime:
            raise ValueError(
                f"A status list ttl ({ttl}) must be at least a second and no longer than the "
                f"token's lifetime ({lifetime})."
            )
        self._pool = pool
        self._vault = vault
        self.base_url = base_url.rstrip("/")
        self.ttl = ttl
        self.lifetime = lifetime
        self._rng = rng or random.SystemRandom()
        # list id -> (allocated count when last in sync, allocator)
        self._allocators: dict[int, tuple[int, IndexAllocator]] = {}
        self._tokens: dict[int, tuple[int, datetime, StatusToken]] = {}

    @property
    def uri_base(self) -> str:
        """What every list's URI starts with (``<base>/status-lists/``): the base URL the
        trust list names, so that verifiers fetch status lists from nowhere else."""
        return f"{self.base_url}/status-lists/"

    def uri(self, list_id: int) -> str:
        """The URI of list ``list_id`` (``<base>/status-lists/<id>``)."""
        return f"{self.uri_base}{list_id}"

    def list_id(self, uri: str) -> int | None:
        """The id of the list at ``uri`` (``.../status-lists/<id>``), else None."""
        # Any base: the URI comes from a credential our departments signed, and a node's
        # public URL may have changed since (or differ between nodes).
        match = _LIST_PATH.search(uri)
        return int(match[1]) if match else None

    async def allocate(self, conn: Any, count: int) -> list[tuple[int, int]]:
        """Return ``count`` (list id, index) pairs, random and unused, inside the caller's
        transaction on ``conn`` (which holds the list rows' locks until it ends)."""
        out: list[tuple[int, int]] = []
        while len(out) < count:
            row = await conn.fetchrow(
                "SELECT id, size, allocated FROM status_list"
                " WHERE allocated < size * $1::float8 ORDER BY id DESC LIMIT 1 FOR UPDATE",
                FILL_LIMIT,
            )
            if row is None:
                row = await self._new_list(conn)
            list_id, size, allocated = row["id"], row["size"], row["allocated"]
            known = self._allocators.get(list_id)
            if known is None or known[0] != allocated:
                used = await conn.fetch(
                    "SELECT status_index FROM licence WHERE status_list = $1", list_id
                )
                allocator = IndexAllocator(size, (r["status_index"] for r in used))
            else:
                allocator = known[1]
            room = int(size * FILL_LIMIT) - (size - allocator.free)
            take = max(1, min(count - len(out), room))
            picked = [(list_id, allocator.allocate(self._rng)) for _ in range(take)]
            await conn.execute(
                "UPDATE status_list SET allocated = allocated + $2 WHERE id = $1", list_id, take
            )
            self._allocators[list_id] = (allocated + take, allocator)
            out.extend(picked)
        return out

    async def _new_list(self, conn: Any) -> Any:
        # Serialise creators: two nodes finding every list full must not both create one.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('tongban_status_list'))")
        row = await conn.fetchrow(
            "SELECT id, size, allocated FROM status_list"
            " WHERE allocated < size * $1::float8 ORDER BY id DESC LIMIT 1 FOR UPDATE",
            FILL_LIMIT,
        )
        if row is not None:
            return row
        data = StatusList(MIN_SIZE, bits=_BITS).to_bytes()
        return await conn.fetchrow(
            "INSERT INTO status_list (id, bits, size, allocated, data, created_at, updated_at)"
            " VALUES ((SELECT coalesce(max(id), 0) + 1 FROM status_list), $1, $2, 0, $3,"
            " now(), now()) RETURNING id, size, allocated",
            _BITS,
            MIN_SIZE,
            data,
        )

    async def set_status(
        self, conn: Any, entries: Sequence[tuple[int, int]], status: LicenceStatus
    ) -> None:
        """Set each (list id, index) of ``entries`` to ``status`` inside the caller's
        transaction on ``conn``."""
        by_list: dict[int, list[int]] = {}
        for list_id, index in entries:
            by_list.setdefault(list_id, []).append(index)
        for list_id, indices in sorted(by_list.items()):
            row = await conn.fetchrow(
                "SELECT bits, data FROM status_list WHERE id = $1 FOR UPDATE", list_id
            )
            status_list = StatusList.from_bytes(bytes(row["data"]), bits=row["bits"])
            for index in indices:
                status_list.set(index, int(status))
            await conn.execute(
                "UPDATE status_list SET data = $2, revision = revision + 1, updated_at = now()"
                " WHERE id = $1",
                list_id,
                status_list.to_bytes(),
            )

    async def token(self, list_id: int, now: datetime) -> StatusToken | None:
        """Return the signed token of list ``list_id`` (None if there is no such list),
        re-signed when the list changed or half its ``ttl`` has passed."""
        revision = await self._pool.fetchval(
            "SELECT revision FROM status_list WHERE id = $1", list_id
        )
        if revision is None:
            return None
        cached = self._tokens.get(list_id)
        if cached is not None and cached[0] == revision and now - cached[1] < self.ttl / 2:
            return cached[2]
        row = await self._pool.fetchrow(
            "SELECT bits, data, revision FROM status_list WHERE id = $1", list_id
        )
        assert row is not None  # lists are never deleted
        seal = await self._vault.get(STATUS_LIST_HOLDER)
        token = sign_status_list(
            StatusList.from_bytes(bytes(row["data"]), bits=row["bits"]),
            uri=self.uri(list_id),
            signer=seal.signer,
            chain=seal.chain,
            now=now,
            ttl=self.ttl,
            lifetime=self.lifetime,
        )
        result = StatusToken(token, self.ttl, row["revision"])
        self._tokens[list_id] = (row["revision"], now, result)
        return result

    async def value(self, list_id: int, index: int) -> int | None:
        """Return the current status bit(s) of ``index`` in list ``list_id`` (from the
        database, not a token), or None if there is no such entry."""
        row = await self._pool.fetchrow("SELECT bits, data FROM status_list WHERE id = $1", list_id)
        if row is None:
            return None
        return StatusList.from_bytes(bytes(row["data"]), bits=row["bits"]).get(index)
