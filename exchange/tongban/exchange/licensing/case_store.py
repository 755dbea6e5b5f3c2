"""Cases (办件) in PostgreSQL: opening, moving and reading them. The rules are
``cases``'; this module checks who may act, and writes each change, its history entry and
its access-log entry in one transaction (all of them, or none)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NoReturn

import asyncpg

from tongban.exchange.audit.log import AccessEntry, AccessLog, LogTransaction, SubjectHasher
from tongban.exchange.licensing.case_feed import CaseFeed, cases_dataset, steps_dataset
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
    PackageUnknown,
)
from tongban.exchange.licensing.item_store import ServiceItemStore
from tongban.exchange.licensing.notices import CaseNotices
from tongban.exchange.licensing.package_store import PackageStore
from tongban.exchange.licensing.packages import Step
from tongban.exchange.server.caller import Caller
from tongban.exchange.sharing.model import DatasetEntry
from tongban.exchange.sharing.records import RecordStore
from tongban.licence import random_serial

__all__ = ["CaseStore"]

_Entries = tuple[DatasetEntry, DatasetEntry | None]  # the case stream, the package steps

_COLUMNS = (
    "number, item, item_version, department, applicant, state, opened_at, promised_due_at, "
    "legal_due_at, stopped_days, correction_since, decided_at, outcome, licence_number, "
    "refusal_reason, closed_at, delivered_at, package_number"
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
        package_number=row["package_number"],
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
        *,
        records: RecordStore,
        feed: CaseFeed,
        packages: PackageStore,
        notices: CaseNotices | None = None,
    ) -> None:
        """``notices`` (optional) is told of every committed transition, for the
        applicant."""
        self._pool = pool
        self._items = items
        self._log = access_log
        self._hasher = hasher
        self._clock = clock
        self._node = node_name
        self._records = records
        self._feed = feed
        self._packages = packages
        self._notices = notices

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

    async def _publish(
        self,
        conn: Any,
        case: Case,
        entries: _Entries,
        steps: tuple[str, list[Step]] | None,
        now: datetime,
    ) -> None:
        """Put the case's new record on its department's case stream and the changed
        package steps on the coordinator's stream, in the caller's transaction."""
        cases, step_entry = entries
        await self._records.publish_in(conn, cases, [self._feed.case_change(cases, case)], now)
        if steps and steps[1] and step_entry is not None and case.package_number:
            changes = [
                self._feed.step_change(step_entry, case.package_number, steps[0], step)
                for step in steps[1]
            ]
            await self._records.publish_in(conn, step_entry, changes, now)

    async def _entries(self, department: str, package_number: str | None, now: datetime
                       ) -> _Entries:  # fmt: skip
        """The stream datasets a change to a case of ``department`` writes to, looked up
        (and registered the first time) before the change takes its connection."""
        cases = await self._feed.cases_entry(department, now)
        if not package_number:
            return cases, None
        coordinator = await self._packages.coordinator(package_number)
        if coordinator is None:
            raise PackageUnknown(
                f"There is no opened package {package_number[:80]!r}; check the number.",
                metadata={"package_number": package_number[:80]},
            )
        return cases, await self._feed.steps_entry(coordinator, now)

    async def open(
        self,
        caller: Caller,
        item_code: str,
        applicant: str,
        reason: str,
        *,
        now: datetime,
        package_number: str = "",
    ) -> Case:
        """Open (受理) a case for the current version of ``item_code``; return it. With
        ``package_number``, the case is that package's step for the item.

        Raises InvalidSubjectId for a malformed applicant, ServiceItemUnknown,
        CaseNotPermitted if the caller's department does not handle the item,
        CaseReasonRequired for a malformed reason, PackageUnknown, and
        PackageStepNotReady if the package's step for the item is not ready for this
        applicant.
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
        package_number = package_number.strip()
        entries = await self._entries(department, package_number, now)
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
            package_number=package_number or None,
        )
        async with self._pool.acquire() as conn, self._log.transaction(conn) as tx:
            # The case and its first history row (the opening) in one statement.
            await conn.execute(
                f"""
                WITH opened AS (
                    INSERT INTO service_case ({_COLUMNS}, updated_at)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, NULL, NULL, NULL, NULL,
                            NULL, NULL, NULL, $10, $7)
                )
                INSERT INTO service_case_history (case_number, seq, from_state, to_state, at,
                    department, officer, reason)
                VALUES ($1, 1, NULL, $6, $7, $4, $11, $12)
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
                case.package_number,
                caller.officer_id,
                why,
            )
            steps = await self._packages.link(conn, case, now=now) if case.package_number else None
            await self._publish(conn, case, entries, steps, now)
            tx.record([self._entry(caller, case, ACTIONS[case.state], "→accepted", now)])
        self._notify(case, 1, None, caller, now)
        return case

    def _notify(
        self, case: Case, seq: int, before: CaseState | None, caller: Caller, now: datetime
    ) -> None:
        if self._notices is not None:
            self._notices.send(
                case,
                Transition(seq, before, case.state, now, caller.department.code,
                           caller.officer_id, None),
            )  # fmt: skip

    async def move(self, caller: Caller, number: str, move: Move, *, now: datetime) -> Case:
        """Move case ``number`` as ``move`` says; return it as it now is.

        Raises CaseNotFound, CaseNotPermitted (another department's case), and what
        ``cases.apply_move`` raises; CaseDecisionInvalid for an approval naming a licence
        that the department did not issue to the applicant.
        """
        # One transaction in the common case. The streams the change writes to are known
        # to the feed once registered; the first move into one that is not (or another
        # department's move, refused and logged with the connection returned) leaves the
        # transaction without writing, does that outside, and tries again.
        for _ in range(3):
            missing: str | None = None
            async with self._pool.acquire() as conn, self._log.transaction(conn) as tx:
                case = await self._load(conn, number, lock=True)
                foreign = case.department != caller.department.code
                if not foreign:
                    entries, missing = await self._cached_entries(conn, case)
                    if entries is not None:
                        moved, seq = await self._move(conn, tx, caller, case, move, entries, now)
            if foreign:
                await self._refuse(caller, case, "case.move", now)
            if missing is None:
                self._notify(moved, seq, case.state, caller, now)
                return moved
            await self._entries(case.department, case.package_number, now)
        raise AssertionError("the case streams were registered but are not in the feed")

    async def _cached_entries(self, conn: Any, case: Case) -> tuple[_Entries | None, str | None]:
        """The stream datasets a move of ``case`` writes to, if the feed has them (None
        and the first code missing otherwise)."""
        code = cases_dataset(case.department)
        cases = self._feed.cached(code)
        if cases is None:
            return None, code
        if not case.package_number:
            return (cases, None), None
        coordinator = await conn.fetchval(
            "SELECT department FROM package_case WHERE number = $1", case.package_number
        )
        code = steps_dataset(str(coordinator))
        steps = self._feed.cached(code)
        return ((cases, steps), None) if steps is not None else (None, code)

    async def _move(
        self, conn: Any, tx: LogTransaction, caller: Caller, case: Case, move: Move,
        entries: _Entries, now: datetime,
    ) -> tuple[Case, int]:  # fmt: skip
        issues = None
        if move.target is CaseState.DECIDED:  # only a decision names a licence
            issues = await conn.fetchval(
                "SELECT issues_licence FROM service_item_version WHERE item = $1 AND version = $2",
                case.item,
                case.item_version,
            )
        moved = apply_move(case, move, now=now, clock=self._clock, issues_licence=issues or "")
        if move.target is CaseState.DECIDED and moved.licence_number is not None:
            await self._check_licence(conn, moved, str(issues))
        why = normal_reason(move.reason, required=False, what="")
        # The case and its history row in one statement; the history's sequence number
        # is the next one (the case row is locked, so no other move takes it).
        seq = await conn.fetchval(
            f"""
            WITH moved AS (
                UPDATE service_case SET ({_MOVED}, updated_at)
                    = ($2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                WHERE number = $1
            )
            INSERT INTO service_case_history (case_number, seq, from_state, to_state, at,
                department, officer, reason)
            SELECT $1, coalesce(max(seq), 0) + 1, $14, $2, $13, $15, $16, $17
            FROM service_case_history WHERE case_number = $1
            RETURNING seq
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
            case.state.value,
            caller.department.code,
            caller.officer_id,
            why,
        )
        steps = await self._packages.follow(conn, moved, now=now) if moved.package_number else None
        await self._publish(conn, moved, entries, steps, now)
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
        return moved, seq

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

    async def _check_licence(self, conn: Any, case: Case, licence_type: str) -> None:
        """An approval names a licence of the item's type that the department issued to
        the applicant, or for this case (its case_id names the case: 设立登记 issues to
        the enterprise it creates)."""
        row = await conn.fetchrow(
            "SELECT issuer, holder_id, case_id, licence_type FROM licence WHERE number = $1 "
            "ORDER BY version DESC LIMIT 1",
            case.licence_number,
        )
        if (
            row is None
            or row["issuer"] != case.department
            or row["licence_type"] != licence_type
            or (row["holder_id"] != case.applicant and row["case_id"] != case.number)
        ):
            raise CaseDecisionInvalid(
                f"{case.department} issued no licence {case.licence_number} to the applicant "
                f"of case {case.number} or for the case; issue it first (tongban licence "
                "issue, with the case number as its case id) and name its number.",
                metadata={"field": "licence_number"},
            )
