"""Cases (办件) in PostgreSQL: opening, moving and reading them. The rules are
``cases``'; this module checks who may act, and writes each change, its history entry and
its access-log entry in one transaction (all of them, or none)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NoReturn

import asyncpg

from tongban.exchange.audit.log import AccessEntry, AccessLog, LogTransaction, SubjectHasher
from tongban.exchange.licensing.cases import (
    ACTIONS,
    Case,
    CaseClock,
    CaseState,
    Move,
    Outcome,
    Transition,
    apply_move,
    is_case_number,
    normal_applicant,
    normal_reason,
)
from tongban.exchange.licensing.errors import (
    CaseDecisionInvalid,
    CaseNotFound,
    CaseNotPermitted,
)
from tongban.exchange.licensing.item_store import ServiceItemStore
from tongban.exchange.server.caller import Caller
from tongban.licence import random_serial

__all__ = ["CaseStore"]

_COLUMNS = (
    "number, item, item_version, department, applicant, state, opened_at, promised_due_at, "
    "legal_due_at, stopped_days, correction_since, decided_at, outcome, licence_number, "
    "refusal_reason, closed_at, delivered_at"
)
_MOVED = (
    "state, promised_due_at, legal_due_at, stopped_days, correction_since, decided_at, "
    "outcome, licence_number, refusal_reason, closed_at, delivered_at"
)


def _case(row: asyncpg.Record) -> Case:
    return Case(
        number=row["number"],
        item=row["item"],
        item_version=row["item_version"],
        department=row["department"],
        applicant=row["applicant"],
        state=CaseState(row["state"]),
        opened_at=row["opened_at"],
        promised_due_at=row["promised_due_at"],
        legal_due_at=row["legal_due_at"],
        stopped_days=row["stopped_days"],
        correction_since=row["correction_since"],
        decided_at=row["decided_at"],
        outcome=Outcome(row["outcome"]) if row["outcome"] else None,
        licence_number=row["licence_number"],
        refusal_reason=row["refusal_reason"],
        closed_at=row["closed_at"],
        delivered_at=row["delivered_at"],
    )


class CaseStore:
    """Cases of the items each department handles; only that department acts on them."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        items: ServiceItemStore,
        access_log: AccessLog,
        hasher: SubjectHasher,
        clock: CaseClock,
        node_name: str,
    ) -> None:
        self._pool = pool
        self._items = items
        self._log = access_log
        self._hasher = hasher
        self._clock = clock
        self._node = node_name

    @property
    def clock(self) -> CaseClock:
        return self._clock

    def _entry(
        self,
        caller: Caller,
        case: Case,
        action: str,
        reason: str,
        now: datetime,
        *,
        denied: bool = False,
    ) -> AccessEntry:
        return AccessEntry(
            at=now,
            node=self._node,
            caller=caller.department.code,
            officer=caller.officer_id,
            action=action,
            dataset=None,
            fields=(),
            purpose=None,
            case_id=case.number,
            subject_hmac=self._hasher(case.applicant),
            decision="denied" if denied else "allowed",
            reason=reason,
        )

    async def _refuse(self, caller: Caller, case: Case, action: str, now: datetime) -> NoReturn:
        """Log another department's refused read or move of ``case``, then raise."""
        await self._log.append(
            [self._entry(caller, case, action, CaseNotPermitted.reason, now, denied=True)]
        )
        raise CaseNotPermitted(
            f"Case {case.number} is handled by {case.department}; only it moves and reads "
            "its cases.",
            metadata={"case": case.number, "department": case.department},
        )

    async def open(
        self, caller: Caller, item_code: str, applicant: str, reason: str, *, now: datetime
    ) -> Case:
        """Open (受理) a case for the current version of ``item_code``; return it.

        Raises InvalidSubjectId for a malformed applicant, ServiceItemUnknown,
        CaseNotPermitted if the caller's department does not handle the item, and
        CaseReasonRequired for a malformed reason.
        """
        applicant = normal_applicant(applicant)
        why = normal_reason(reason, required=False, what="")
        item = await self._items.get(item_code)
        department = caller.department.code
        if item.department != department:
            raise CaseNotPermitted(
                f"Service item {item.code} is handled by {item.department}; only it opens "
                "cases for the item.",
                metadata={"service_item": item.code, "department": item.department},
            )
        promised, legal = self._clock.due_dates(
            now, item.spec.promised_limit_days, item.spec.legal_limit_days
        )
        year = now.astimezone(self._clock.zone).year
        case = Case(
            number=f"{department}-{year:04d}-{random_serial()}",
            item=item.code,
            item_version=item.version,
            department=department,
            applicant=applicant,
            state=CaseState.ACCEPTED,
            opened_at=now,
            promised_due_at=promised,
            legal_due_at=legal,
        )
        async with self._pool.acquire() as conn, self._log.transaction(conn) as tx:
            await conn.execute(
                f"""
                INSERT INTO service_case ({_COLUMNS}, updated_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, NULL, NULL, NULL, NULL, NULL,
                        NULL, NULL, $7)
                """,  # noqa: S608 - the columns are constants
                case.number,
                case.item,
                case.item_version,
                case.department,
                case.applicant,
                case.state.value,
                now,
                promised,
                legal,
            )
            await self._history(conn, case, 1, None, caller, why, now)
            tx.record([self._entry(caller, case, ACTIONS[case.state], "→accepted", now)])
        return case

    async def move(self, caller: Caller, number: str, move: Move, *, now: datetime) -> Case:
        """Move case ``number`` as ``move`` says; return it as it now is.

        Raises CaseNotFound, CaseNotPermitted (another department's case), and what
        ``cases.apply_move`` raises; CaseDecisionInvalid for an approval naming a licence
        that the department did not issue to the applicant.
        """
        moved: Case | None = None
        async with self._pool.acquire() as conn, self._log.transaction(conn) as tx:
            case = await self._load(conn, number, lock=True)
            if case.department == caller.department.code:
                moved = await self._move(conn, tx, caller, case, move, now)
        if moved is None:  # another department's case: refused, logged with the pool free
            await self._refuse(caller, case, "case.move", now)
        return moved

    async def _move(
        self, conn: Any, tx: LogTransaction, caller: Caller, case: Case, move: Move,
        now: datetime,
    ) -> Case:  # fmt: skip
        moved = apply_move(case, move, now=now, clock=self._clock)
        if moved.licence_number is not None and moved.outcome is Outcome.APPROVED:
            await self._check_licence(conn, moved)
        await conn.execute(
            f"""
            UPDATE service_case SET ({_MOVED}, updated_at)
                = ($2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
            WHERE number = $1
            """,  # noqa: S608 - the columns are constants
            moved.number,
            moved.state.value,
            moved.promised_due_at,
            moved.legal_due_at,
            moved.stopped_days,
            moved.correction_since,
            moved.decided_at,
            moved.outcome.value if moved.outcome else None,
            moved.licence_number,
            moved.refusal_reason,
            moved.closed_at,
            moved.delivered_at,
            now,
        )
        seq = await conn.fetchval(
            "SELECT coalesce(max(seq), 0) + 1 FROM service_case_history WHERE case_number = $1",
            moved.number,
        )
        why = normal_reason(move.reason, required=False, what="")
        await self._history(conn, moved, seq, case.state, caller, why, now)
        tx.record(
            [
                self._entry(
                    caller,
                    moved,
                    ACTIONS[moved.state],
                    f"{case.state.value}→{moved.state.value}"
                    + (f":{moved.outcome}" if moved.state is CaseState.DECIDED else ""),
                    now,
                )
            ]
        )
        return moved

    async def get(
        self, caller: Caller, number: str, *, now: datetime
    ) -> tuple[Case, list[Transition]]:
        """Case ``number`` and its history, oldest first; the read is logged (``case.read``).
        Raises CaseNotFound, CaseNotPermitted."""
        async with self._pool.acquire() as conn:
            case = await self._load(conn, number, lock=False)
            foreign = case.department != caller.department.code
            rows = (
                []
                if foreign
                else await conn.fetch(
                    "SELECT seq, from_state, to_state, at, department, officer, reason "
                    "FROM service_case_history WHERE case_number = $1 ORDER BY seq",
                    case.number,
                )
            )
        if foreign:
            await self._refuse(caller, case, "case.read", now)
        await self._log.append([self._entry(caller, case, "case.read", case.state.value, now)])
        history = [
            Transition(
                seq=r["seq"],
                from_state=CaseState(r["from_state"]) if r["from_state"] else None,
                to_state=CaseState(r["to_state"]),
                at=r["at"],
                department=r["department"],
                officer=r["officer"],
                reason=r["reason"],
            )
            for r in rows
        ]
        return case, history

    async def of_applicant(self, applicant: str, limit: int = 100) -> list[Case]:
        """The applicant's cases, newest first (进度查询: the subject view shows them to the
        applicant, whose view is logged there)."""
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM service_case WHERE applicant = $1"  # noqa: S608
            " ORDER BY opened_at DESC LIMIT $2",
            applicant,
            limit,
        )
        return [_case(row) for row in rows]

    async def _load(self, conn: Any, number: str, *, lock: bool) -> Case:
        text = number.strip()
        row = None
        if is_case_number(text):
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM service_case WHERE number = $1"  # noqa: S608
                + (" FOR UPDATE" if lock else ""),
                text,
            )
        if row is None:
            raise CaseNotFound(
                f"There is no case {text[:80]!r}; check the number (办件编号), e.g. "
                "approval-2026-7K3Q9XW2M4.",
                metadata={"case": text[:80]},
            )
        return _case(row)

    async def _check_licence(self, conn: Any, case: Case) -> None:
        row = await conn.fetchrow(
            "SELECT issuer, holder_id FROM licence WHERE number = $1 ORDER BY version DESC LIMIT 1",
            case.licence_number,
        )
        if row is None or row["issuer"] != case.department or row["holder_id"] != case.applicant:
            raise CaseDecisionInvalid(
                f"{case.department} issued no licence {case.licence_number} to the applicant "
                f"of case {case.number}; issue it first (tongban licence issue) and name its "
                "number.",
                metadata={"field": "licence_number"},
            )

    async def _history(
        self,
        conn: Any,
        case: Case,
        seq: int,
        before: CaseState | None,
        caller: Caller,
        reason: str | None,
        now: datetime,
    ) -> None:
        await conn.execute(
            """
            INSERT INTO service_case_history (case_number, seq, from_state, to_state, at,
                department, officer, reason)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            """,
            case.number,
            seq,
            before.value if before else None,
            case.state.value,
            now,
            caller.department.code,
            caller.officer_id,
            reason,
        )
