"""Grants (有条件共享): requests, decisions within a deadline, revocation."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone, tzinfo

import asyncpg

from tongban.exchange.catalogue.calendar import WorkingCalendar
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.sharing.errors import (
    GrantNotFound,
    GrantStateInvalid,
    NotOwner,
    TooManyPendingGrants,
)
from tongban.exchange.sharing.model import (
    DatasetEntry,
    Grant,
    GrantStatus,
    ShareClass,
    normalise_purpose,
)

__all__ = ["GrantStore"]

MAX_GRANT_LIFETIME = timedelta(days=3 * 366)

_SELECT = """
    SELECT id, dataset, owner, consumer, requested_fields, fields, purpose, legal_basis,
           requested_expiry, expires_at, status, decision_reason, requested_at, due_at,
           decided_at, requested_by, decided_by
    FROM data_grant
"""


def _grant(row: asyncpg.Record) -> Grant:
    return Grant(
        id=row["id"],
        dataset=row["dataset"],
        owner=row["owner"],
        consumer=row["consumer"],
        requested_fields=tuple(row["requested_fields"]),
        fields=tuple(row["fields"]),
        purpose=row["purpose"],
        legal_basis=row["legal_basis"],
        requested_expiry=row["requested_expiry"],
        expires_at=row["expires_at"],
        status=GrantStatus(row["status"]),
        decision_reason=row["decision_reason"],
        requested_at=row["requested_at"],
        due_at=row["due_at"],
        decided_at=row["decided_at"],
        requested_by=row["requested_by"],
        decided_by=row["decided_by"],
    )


def _parse_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise GrantNotFound(f"{text[:60]!r} is not a grant id.") from None


def _fields(entry: DatasetEntry, fields: Sequence[str]) -> tuple[str, ...]:
    if not fields:
        raise InvalidArgument("Name the fields the grant is for.", metadata={"field": "fields"})
    unique = tuple(dict.fromkeys(fields))
    for name in unique:
        if entry.schema.field(name) is None:
            raise InvalidArgument(
                f"Dataset {entry.code} has no field {name[:64]!r}.", metadata={"field": name[:64]}
            )
    return unique


class GrantStore:
    def __init__(
        self,
        pool: asyncpg.Pool,
        calendar: WorkingCalendar,
        answer_days: int,
        office_zone: tzinfo = timezone(timedelta(hours=8)),
        max_pending: int = 100,
    ) -> None:
        self._pool = pool
        self._calendar = calendar
        self._answer_days = answer_days
        self._max_pending = max_pending
        """Requests one department may have awaiting one owner's answer at once: a
        consumer's system gone wrong (or in an attacker's hands) cannot bury the
        owner's officers under requests (TONGBAN_DEPT_MAX_PENDING_GRANTS)."""
        self._zone = office_zone
        self.on_change: Callable[[str, str], None] | None = None
        """Called with (consumer, dataset) after a grant change commits on this node."""

    async def request(
        self,
        *,
        entry: DatasetEntry,
        consumer: str,
        fields: Sequence[str],
        purpose: str,
        legal_basis: str,
        expiry: datetime,
        officer: str | None,
        now: datetime,
    ) -> Grant:
        """Record a pending request, due ``answer_days`` working days from now."""
        if consumer == entry.owner:
            raise InvalidArgument("An owner needs no grant on its own dataset.")
        chosen = _fields(entry, fields)
        if entry.share_class is ShareClass.NOT_SHARED:
            raise InvalidArgument(
                f"Dataset {entry.code} is not shared; no grant can open it.",
                metadata={"dataset": entry.code},
            )
        if entry.share_class is ShareClass.UNCONDITIONAL:
            # Grants on an unconditional dataset open its personal fields (个人信息) that
            # no cited law covers; everything else needs none.
            by_law = {name for basis in entry.personal_bases for name in basis.fields}
            needless = [
                name for name in chosen if name in by_law or name not in entry.personal_fields()
            ]
            if needless:
                raise InvalidArgument(
                    f"Dataset {entry.code} is unconditional and {', '.join(needless)} "
                    f"{'needs' if len(needless) == 1 else 'need'} no grant; a grant on it "
                    "names only personal fields that no cited law covers.",
                    metadata={"dataset": entry.code, "field": needless[0]},
                )
        purpose = normalise_purpose(purpose)
        if not 1 <= len(purpose) <= 200:
            raise InvalidArgument(
                "A grant names a purpose of 1 to 200 characters.", metadata={"field": "purpose"}
            )
        basis = legal_basis.strip()
        if not 1 <= len(basis) <= 500:
            raise InvalidArgument(
                "A grant request cites its legal basis (1 to 500 characters).",
                metadata={"field": "legal_basis"},
            )
        if not now < expiry <= now + MAX_GRANT_LIFETIME:
            raise InvalidArgument(
                "The expiry must be in the future and within three years.",
                metadata={"field": "expiry"},
            )
        async with self._pool.acquire() as conn, conn.transaction():
            # One request of this consumer to this owner at a time, so that two at once
            # cannot both find room for one.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))",
                f"grant-request {consumer} {entry.owner}",
            )
            pending = await conn.fetchval(
                "SELECT count(*) FROM data_grant"
                " WHERE owner = $1 AND status = 'pending' AND consumer = $2",
                entry.owner,
                consumer,
            )
            if pending >= self._max_pending:
                raise TooManyPendingGrants(
                    f"{consumer} has {pending} grant requests awaiting {entry.owner}'s "
                    f"answer, the most one department may have with another; wait for "
                    f"answers, or withdraw some (tongban grant revoke ID), then ask again.",
                    metadata={
                        "owner": entry.owner,
                        "pending": str(pending),
                        "limit": str(self._max_pending),
                    },
                )
            row = await conn.fetchrow(
                """
                INSERT INTO data_grant (id, dataset, owner, consumer, requested_fields,
                    purpose, legal_basis, requested_expiry, status, requested_at, due_at,
                    requested_by)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10, $11)
                RETURNING *
                """,
                uuid.uuid4(),
                entry.code,
                entry.owner,
                consumer,
                list(chosen),
                purpose,
                basis,
                expiry,
                now,
                # Working days end at midnight where the offices are, not in UTC.
                self._calendar.add_working_days(now.astimezone(self._zone), self._answer_days),
                officer,
            )
        assert row is not None
        return _grant(row)

    async def decide(
        self,
        *,
        grant_id: str,
        owner: str,
        approve: bool,
        fields: Sequence[str],
        expiry: datetime | None,
        reason: str,
        officer: str | None,
        now: datetime,
        entry_of: DatasetEntry,
    ) -> Grant:
        """Approve (a subset of fields, an expiry no later than asked) or refuse (with a reason)."""
        gid = _parse_id(grant_id)
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_SELECT + " WHERE id = $1 FOR UPDATE", gid)
            if row is None:
                raise GrantNotFound(f"No grant {grant_id} exists.")
            grant = _grant(row)
            if grant.owner != owner:
                raise NotOwner(
                    f"Only {grant.owner}, the owner of {grant.dataset}, decides this grant."
                )
            if grant.status is not GrantStatus.PENDING:
                raise GrantStateInvalid(f"Grant {grant_id} is {grant.status.value}, not pending.")
            reason = reason.strip()[:500]
            if approve:
                chosen = _fields(entry_of, fields) if fields else grant.requested_fields
                extra = [name for name in chosen if name not in grant.requested_fields]
                if extra:
                    raise InvalidArgument(
                        f"{', '.join(extra)} were not requested; approve a subset of "
                        f"{', '.join(grant.requested_fields)}.",
                        metadata={"field": extra[0]},
                    )
                until = expiry or grant.requested_expiry
                if not now < until <= grant.requested_expiry:
                    raise InvalidArgument(
                        "The expiry must be in the future and no later than requested.",
                        metadata={"field": "expiry"},
                    )
                row = await conn.fetchrow(
                    "UPDATE data_grant SET status = 'approved', fields = $2, expires_at = $3,"
                    " decision_reason = $4, decided_at = $5, decided_by = $6 WHERE id = $1"
                    " RETURNING *",
                    gid,
                    list(chosen),
                    until,
                    reason,
                    now,
                    officer,
                )
            else:
                if not reason:
                    raise InvalidArgument(
                        "A refusal must give its reason.", metadata={"field": "reason"}
                    )
                row = await conn.fetchrow(
                    "UPDATE data_grant SET status = 'refused', decision_reason = $2,"
                    " decided_at = $3, decided_by = $4 WHERE id = $1 RETURNING *",
                    gid,
                    reason,
                    now,
                    officer,
                )
        assert row is not None
        return self._committed(_grant(row))

    async def revoke(
        self, *, grant_id: str, caller: str, reason: str, officer: str | None, now: datetime
    ) -> Grant:
        """Revoke a pending or approved grant (owner or consumer); effective at once."""
        gid = _parse_id(grant_id)
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_SELECT + " WHERE id = $1 FOR UPDATE", gid)
            if row is None or caller not in (row["owner"], row["consumer"]):
                raise GrantNotFound(f"No grant {grant_id} of yours exists.")
            grant = _grant(row)
            if grant.status not in (GrantStatus.PENDING, GrantStatus.APPROVED):
                raise GrantStateInvalid(
                    f"Grant {grant_id} is {grant.status.value}; nothing to revoke."
                )
            row = await conn.fetchrow(
                "UPDATE data_grant SET status = 'revoked', decision_reason = $2, decided_at = $3,"
                " decided_by = $4 WHERE id = $1 RETURNING *",
                gid,
                reason.strip()[:500] or "revoked",
                now,
                officer,
            )
        assert row is not None
        return self._committed(_grant(row))

    def _committed(self, grant: Grant) -> Grant:
        """Tell this node's caches at once of a decision or revocation it committed (the
        NOTIFY that tells every node arrives a moment later): the consumer's next call on
        this node sees it."""
        if self.on_change is not None:
            self.on_change(grant.consumer, grant.dataset)
        return grant

    async def get(self, grant_id: str, party: str) -> Grant:
        """The grant if ``party`` is its owner or consumer; else GrantNotFound."""
        row = await self._pool.fetchrow(_SELECT + " WHERE id = $1", _parse_id(grant_id))
        if row is None or party not in (row["owner"], row["consumer"]):
            raise GrantNotFound(f"No grant {grant_id[:60]} of yours exists.")
        return _grant(row)

    async def is_live(self, grant_id: uuid.UUID, now: datetime) -> bool:
        """Whether grant ``grant_id`` is approved and unexpired in the committed data (one
        primary-key read): what a cached copy may not yet know."""
        row = await self._pool.fetchrow(
            "SELECT status, expires_at FROM data_grant WHERE id = $1", grant_id
        )
        return (
            row is not None
            and row["status"] == GrantStatus.APPROVED.value
            and (row["expires_at"] is None or now < row["expires_at"])
        )

    async def for_consumer(self, consumer: str, dataset: str) -> list[Grant]:
        rows = await self._pool.fetch(
            _SELECT + " WHERE consumer = $1 AND dataset = $2", consumer, dataset
        )
        return [_grant(row) for row in rows]

    async def list(
        self,
        *,
        caller: str | None,
        dataset: str | None = None,
        overdue: bool = False,
        status: GrantStatus | None = None,
        now: datetime,
    ) -> list[Grant]:
        """Grants where ``caller`` is owner or consumer (all grants when caller is None)."""
        clauses: list[str] = []
        args: list[object] = []
        if caller is not None:
            args.append(caller)
            clauses.append(f"(owner = ${len(args)} OR consumer = ${len(args)})")
        if dataset:
            args.append(dataset)
            clauses.append(f"dataset = ${len(args)}")
        if overdue:
            args.append(now)
            clauses.append(f"status = 'pending' AND due_at < ${len(args)}")
        if status is GrantStatus.EXPIRED:
            args.append(now)
            clauses.append(f"status = 'approved' AND expires_at <= ${len(args)}")
        elif status is GrantStatus.APPROVED:
            args.append(now)
            clauses.append(f"status = 'approved' AND expires_at > ${len(args)}")
        elif status is not None:
            args.append(status.value)
            clauses.append(f"status = ${len(args)}")
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = await self._pool.fetch(_SELECT + where + " ORDER BY requested_at LIMIT 1000", *args)
        return [_grant(row) for row in rows]

    async def overdue_count(self, now: datetime) -> int:
        count = await self._pool.fetchval(
            "SELECT count(*) FROM data_grant WHERE status = 'pending' AND due_at < $1", now
        )
        return int(count or 0)
