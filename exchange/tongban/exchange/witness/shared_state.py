"""What an exchange remembers as a witness of its peers' logs, in its PostgreSQL
(``peer_witness_state``, migration 0027), shared by all its nodes.

Every node of the exchange cosigns with the one witness key, so the state must be one
too: were each node to keep its own, a peer could show one node a checkpoint and another
node a fork of the same size, and gather the key's cosignature on both (a split view
the witness exists to prevent). The standalone witness keeps its state in one SQLite
file instead (``state.WitnessState``); both run the same checks
(``service.Submission.check``).

:meth:`SharedWitnessState.advance` is a compare-and-swap: read the stored size and root,
run the check, then write only if the row is still what was checked (``UPDATE ... WHERE
size = $old AND root = $old_root``; a log's first checkpoint ``INSERT ... ON CONFLICT DO
NOTHING``). A node that loses the race reads again and checks again, against the
checkpoint the other node cosigned: the same checkpoint passes again, a different one of
that size is a split view. A trigger holds the rule for every login: a row only grows
and, at an equal size, keeps its root. A commit returns once durable, before anything is
cosigned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from tongban.errors import TongbanError
from tongban.exchange.audit.merkle import EMPTY_ROOT
from tongban.exchange.witness.protocol import WitnessLogUnknown

__all__ = ["SharedLogRecord", "SharedWitnessState", "WitnessStateContended"]

_KEEP_REFUSALS = 1000
_ATTEMPTS = 16


class WitnessStateContended(TongbanError):
    """The log's witness state kept changing under this node (other nodes advancing it)."""

    reason = "WITNESS_STATE_CONTENDED"
    status = "UNAVAILABLE"


@dataclass(frozen=True)
class SharedLogRecord:
    """The latest checkpoint the exchange's witness cosigned for a peer's log."""

    origin: str
    exchange: bytes
    size: int
    root: bytes
    note: str
    cosigned_at: datetime
    cosigned_by: str


class SharedWitnessState:
    """The ``peer_witness_state`` and ``peer_witness_refusal`` tables."""

    def __init__(self, pool: asyncpg.Pool, *, node_name: str) -> None:
        self._pool = pool
        self._node = node_name

    async def latest(self, origin: str) -> SharedLogRecord | None:
        """The latest checkpoint cosigned for ``origin``, or None if none was."""
        row = await self._pool.fetchrow(
            "SELECT origin, exchange, size, root, note, cosigned_at, cosigned_by"
            " FROM peer_witness_state WHERE origin = $1",
            origin,
        )
        return None if row is None else _record(row)

    async def records(self) -> list[SharedLogRecord]:
        """The latest cosigned checkpoint of every peer's log, by origin."""
        rows = await self._pool.fetch(
            "SELECT origin, exchange, size, root, note, cosigned_at, cosigned_by"
            " FROM peer_witness_state ORDER BY origin"
        )
        return [_record(row) for row in rows]

    async def advance(
        self,
        origin: str,
        exchange: bytes,
        check: Callable[[int, bytes], None],
        *,
        size: int,
        root: bytes,
        note: str,
        at: datetime,
    ) -> None:
        """Call ``check(stored size, stored root)`` (0 and the empty tree's root for a
        log never cosigned) and, if it returns, record ``size``, ``root`` and ``note`` as
        the latest cosigned checkpoint of ``origin`` for the peer ``exchange``, by
        compare-and-swap: if another node advanced the log meanwhile, check again
        against what it recorded. Durable on return.

        Whatever ``check`` raises is raised with nothing written; WitnessLogUnknown if the
        log is witnessed here for another exchange; WitnessStateContended if the log kept
        moving for 16 attempts; asyncpg errors as they come.
        """
        for _ in range(_ATTEMPTS):
            row = await self._pool.fetchrow(
                "SELECT exchange, size, root FROM peer_witness_state WHERE origin = $1", origin
            )
            if row is not None and bytes(row["exchange"]) != exchange:
                raise WitnessLogUnknown(
                    f"The log {origin[:200]!r} is witnessed here for another exchange; a "
                    "peer submits only its own log.",
                    metadata={"origin": origin[:200]},
                )
            stored = (0, EMPTY_ROOT) if row is None else (int(row["size"]), bytes(row["root"]))
            check(*stored)
            if row is None:
                done = await self._pool.fetchval(
                    "INSERT INTO peer_witness_state"
                    " (origin, exchange, size, root, note, cosigned_at, cosigned_by)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7)"
                    " ON CONFLICT (origin) DO NOTHING RETURNING true",
                    origin, exchange, Decimal(size), root, note, at, self._node,
                )  # fmt: skip
            else:
                done = await self._pool.fetchval(
                    "UPDATE peer_witness_state SET size = $4, root = $5, note = $6,"
                    " cosigned_at = $7, cosigned_by = $8"
                    " WHERE origin = $1 AND size = $2 AND root = $3 RETURNING true",
                    origin, row["size"], stored[1], Decimal(size), root, note, at, self._node,
                )  # fmt: skip
            if done:
                return
        raise WitnessStateContended(
            f"The witness state of {origin[:200]!r} kept changing while this node checked "
            "a checkpoint; ask again."
        )

    async def record_refusal(
        self, origin: str, exchange: bytes, *, old_size: int, reason: str, note: str, at: datetime
    ) -> None:
        """Keep a refused, validly signed checkpoint as evidence (the newest 1,000)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO peer_witness_refusal"
                " (origin, exchange, received_at, received_by, old_size, reason, note)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)",
                origin, exchange, at, self._node, Decimal(old_size), reason, note,
            )  # fmt: skip
            await conn.execute(
                "DELETE FROM peer_witness_refusal"
                " WHERE id <= (SELECT max(id) FROM peer_witness_refusal) - $1",
                _KEEP_REFUSALS,
            )


def _record(row: asyncpg.Record) -> SharedLogRecord:
    return SharedLogRecord(
        row["origin"],
        bytes(row["exchange"]),
        int(row["size"]),
        bytes(row["root"]),
        row["note"],
        row["cosigned_at"],
        row["cosigned_by"],
    )
