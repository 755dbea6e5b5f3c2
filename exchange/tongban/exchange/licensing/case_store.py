"""Cases (办件) in PostgreSQL: opening, moving and reading them. The rules are
``cases``'; this module checks who may act, and writes each change with its history
entry, its case-stream record and event and its access-log entry in one transaction (all
of them, or none) — batched with other changes by the case writer (``CaseStore.start``)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NoReturn

import asyncpg

from tongban.errors import TongbanError
from tongban.exchange.audit.log import (
    AccessEntry,
    AccessLog,
    AuditUnavailable,
    LogTransaction,
    SubjectHasher,
)
from tongban.exchange.audit.recorder import AccessRecorder
from tongban.exchange.errors import DatabaseUnavailable
from tongban.exchange.identity import Caller
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
from tongban.exchange.sharing.model import DatasetEntry
from tongban.exchange.sharing.records import Change, RecordStore
from tongban.licence import random_serial

__all__ = ["CaseStore"]

_Entries = tuple[DatasetEntry, DatasetEntry | None]  # the case stream, the package steps
_BATCH = 64  # changes committed together at most
_log = logging.getLogger(__name__)

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


def _not_found(number: str) -> CaseNotFound:
    return CaseNotFound(
        f"There is no case {number[:80]!r}; check the number (办件编号), e.g. "
        "approval-2026-7K3Q9XW2M4.",
        metadata={"case": number[:80]},
    )


def _not_permitted(case: Case) -> CaseNotPermitted:
    return CaseNotPermitted(
        f"Case {case.number} is handled by {case.department}; only it moves and reads its cases.",
        metadata={"case": case.number, "department": case.department},
    )


def _transition_reason(before: Case, moved: Case) -> str:
    """The log's reason for a move: the transition, never the officer's text."""
    return f"{before.state.value}→{moved.state.value}" + (
        f":{moved.outcome}" if moved.state is CaseState.DECIDED else ""
    )


@dataclass(eq=False)
class _Job:
    """A change waiting for the case writer: a move of case ``number`` or the opening of
    ``opened``."""

    caller: Caller
    now: datetime
    number: str
    move: Move | None = None
    opened: Case | None = None
    why: str | None = None
    future: asyncio.Future[Case] = field(default_factory=lambda: asyncio.Future())


@dataclass
class _Batch:
    """What a batch decided: each job's case (and history seq, state before) or error,
    and the jobs left to a transaction of their own."""

    done: list[tuple[_Job, Case | TongbanError, int, CaseState | None]] = field(
        default_factory=list
    )
    deferred: list[_Job] = field(default_factory=list)


class CaseStore:
    """Cases of the items each department handles; only that department acts on them.

    Once ``start``ed, opens and moves go through one writer task that commits them in
    batches (group commit): each batch is one transaction holding its cases, their history
    rows, their case-stream records and events and their access-log entries, so the hot
    rows every change must lock (the log's head, the stream's position) are locked once
    per batch instead of once per change. All of a batch commits or none of it; a change
    the rules refuse is refused alone, before anything is written. Package steps, the
    first change into a stream not yet registered, and every change when the writer is
    not running take a transaction of their own.
    """

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
        self._clock = clock
        self._recorder = AccessRecorder(node_name, hasher)
        self._records = records
        self._feed = feed
        self._packages = packages
        self._notices = notices
        self._jobs: list[_Job] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

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
        return self._recorder.entry(
            at=now, department=caller.department.code, officer=caller.officer_id,
            action=action, case_id=case.number, subject=case.applicant,
            decision="denied" if denied else "allowed", reason=reason,
        )  # fmt: skip

    async def _refuse(self, caller: Caller, case: Case, action: str, now: datetime) -> NoReturn:
        """Log another department's refused read or move of ``case``, then raise."""
        await self._log.append(
            [self._entry(caller, case, action, CaseNotPermitted.reason, now, denied=True)]
        )
        raise _not_permitted(case)

    # --- the case writer (group commit) ---------------------------------------------

    def start(self) -> None:
        """Start the case writer (the node does, once its access log runs)."""
        self._closing = False
        self._writer = asyncio.get_running_loop().create_task(self._write(), name="cases")

    async def stop(self) -> None:
        """Write what is queued, then stop the writer."""
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            await self._writer
            self._writer = None

    async def _submit(self, job: _Job) -> Case:
        if self._writer is None or self._closing or self._writer.done():
            return await self._single(job)
        self._jobs.append(job)
        self._wake.set()
        return await job.future

    async def _single(self, job: _Job) -> Case:
        if job.move is not None:
            return await self._move_single(job.caller, job.number, job.move, now=job.now)
        assert job.opened is not None
        return await self._open_single(job.caller, job.opened, job.why, job.now)

    async def _write(self) -> None:
        try:
            await self._write_batches()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a bug: no caller may wait for ever
            _log.exception("the case writer failed; changes go one by one from now on")
            waiting, self._jobs = self._jobs, []
            for job in waiting:
                if not job.future.done():
                    await self._run_single(job)

    async def _write_batches(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._jobs:
                # One change per case in a batch (its next one waits for the next batch,
                # so each transition is its own version and event on the stream).
                batch: list[_Job] = []
                rest: list[_Job] = []
                numbers: set[str] = set()
                for job in self._jobs:
                    if len(batch) < _BATCH and job.number not in numbers:
                        numbers.add(job.number)
                        batch.append(job)
                    else:
                        rest.append(job)
                self._jobs = rest
                await self._run_batch(batch)
            if self._closing and not self._jobs:
                return

    async def _run_single(self, job: _Job) -> None:
        try:
            result = await self._single(job)
        except Exception as e:  # noqa: BLE001 - handed to the caller, whose RPC maps it
            job.future.set_exception(e)
        else:
            job.future.set_result(result)

    async def _run_batch(self, batch: list[_Job]) -> None:
        """Commit ``batch``; settle every job's future. Never raises."""
        written = False
        try:
            async with self._pool.acquire() as conn, self._log.transaction(conn) as tx:
                outcome = await self._batch_body(conn, tx, batch)
                written = True
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - settled below, per job
            if not written and not isinstance(e, AuditUnavailable):
                # Refused before anything was sent to be committed: nothing was, so each
                # change can go on its own, and one cannot sink the others.
                _log.warning("case batch of %d failed (%s); one by one", len(batch), e)
                for job in batch:
                    await self._run_single(job)
                return
            error = (
                e
                if isinstance(e, TongbanError)
                else DatabaseUnavailable(
                    "The database failed while committing the change; it may or may not "
                    "have been made: look the case up (tongban case status) before retrying."
                )
            )
            if not isinstance(e, TongbanError):
                _log.error("case batch of %d failed at commit: %s", len(batch), e)
            for job in batch:
                job.future.set_exception(error)
            return
        for job, result, seq, before in outcome.done:
            if isinstance(result, TongbanError):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
                self._notify(result, seq, before, job.caller, job.now)
        for job in outcome.deferred:
            await self._run_single(job)

    async def _batch_body(self, conn: Any, tx: LogTransaction, batch: list[_Job]) -> _Batch:
        out = _Batch()
        moves = [job for job in batch if job.move is not None]
        rows: dict[str, Case] = {}
        if moves:
            fetched = await conn.fetch(
                f"SELECT {_COLUMNS} FROM service_case WHERE number = ANY($1::text[])"  # noqa: S608
                " ORDER BY number FOR UPDATE",
                [job.number for job in moves],
            )
            rows = {r["number"]: _case(r) for r in fetched}
        issues = await self._issues(conn, [rows[j.number] for j in moves if j.number in rows
                                           and j.move is not None
                                           and j.move.target is CaseState.DECIDED])  # fmt: skip
        opened: list[tuple[_Job, Case]] = []
        moved: list[tuple[_Job, Case, Case, str | None]] = []
        changes: dict[str, tuple[DatasetEntry, list[Change]]] = {}
        entries: list[AccessEntry] = []
        for job in batch:
            case = job.opened if job.opened is not None else rows.get(job.number)
            if case is None:
                out.done.append((job, _not_found(job.number), 0, None))
                continue
            if case.department != job.caller.department.code:
                entries.append(
                    self._entry(job.caller, case, "case.move", CaseNotPermitted.reason,
                                job.now, denied=True)
                )  # fmt: skip
                out.done.append((job, _not_permitted(case), 0, None))
                continue
            stream = self._feed.cached(cases_dataset(case.department))
            if stream is None or case.package_number:
                out.deferred.append(job)
                continue
            if job.move is None:
                new, reason = case, "→accepted"
                opened.append((job, case))
            else:
                try:
                    kind = issues.get((case.item, case.item_version), "")
                    new = apply_move(case, job.move, now=job.now, clock=self._clock,
                                     issues_licence=kind)  # fmt: skip
                    if job.move.target is CaseState.DECIDED and new.licence_number is not None:
                        await self._check_licence(conn, new, kind)
                    why = normal_reason(job.move.reason, required=False, what="")
                except TongbanError as e:
                    out.done.append((job, e, 0, None))
                    continue
                reason = _transition_reason(case, new)
                moved.append((job, case, new, why))
            changes.setdefault(stream.code, (stream, []))[1].append(
                self._feed.case_change(stream, new)
            )
            entries.append(self._entry(job.caller, new, ACTIONS[new.state], reason, job.now))
        for job, case in opened:
            out.done.append((job, case, 1, None))
        if opened:
            await self._insert_opened(conn, opened)
        if moved:
            seqs = await self._update_moved(conn, moved)
            out.done.extend((job, new, seqs[new.number], case.state) for job, case, new, _ in moved)
        now = max(job.now for job in batch)
        for stream, stream_changes in changes.values():
            await self._records.publish_in(conn, stream, stream_changes, now)
        tx.record(entries)
        return out

    async def _issues(self, conn: Any, cases: list[Case]) -> dict[tuple[str, int], str]:
        """The licence type each decided case's item version issues ("" for none)."""
        keys = sorted({(c.item, c.item_version) for c in cases})
        if not keys:
            return {}
        rows = await conn.fetch(
            "SELECT v.item, v.version, v.issues_licence FROM service_item_version v"
            " JOIN unnest($1::text[], $2::integer[]) AS k(item, version) USING (item, version)",
            [k[0] for k in keys],
            [k[1] for k in keys],
        )
        return {(r["item"], r["version"]): r["issues_licence"] or "" for r in rows}

    async def _insert_opened(self, conn: Any, opened: list[tuple[_Job, Case]]) -> None:
        cases = [case for _, case in opened]
        await conn.execute(
            """
            WITH u AS (
                SELECT * FROM unnest($1::text[], $2::text[], $3::integer[], $4::text[],
                    $5::text[], $6::text[], $7::timestamptz[], $8::timestamptz[],
                    $9::timestamptz[], $10::text[], $11::text[])
                AS u(number, item, item_version, department, applicant, state, opened_at,
                     promised, legal, officer, reason)
            ), opened AS (
                INSERT INTO service_case (number, item, item_version, department, applicant,
                    state, opened_at, promised_due_at, legal_due_at, stopped_days,
                    updated_at)
                SELECT number, item, item_version, department, applicant, state, opened_at,
                       promised, legal, 0, opened_at
                FROM u
            )
            INSERT INTO service_case_history (case_number, seq, from_state, to_state, at,
                department, officer, reason)
            SELECT number, 1, NULL, state, opened_at, department, officer, reason FROM u
            """,
            [c.number for c in cases],
            [c.item for c in cases],
            [c.item_version for c in cases],
            [c.department for c in cases],
            [c.applicant for c in cases],
            [c.state.value for c in cases],
            [c.opened_at for c in cases],
            [c.promised_due_at for c in cases],
            [c.legal_due_at for c in cases],
            [job.caller.officer_id for job, _ in opened],
            [job.why for job, _ in opened],
        )

    async def _update_moved(
        self, conn: Any, moved: list[tuple[_Job, Case, Case, str | None]]
    ) -> dict[str, int]:
        """Write the moved cases and their history rows; return each one's history seq."""
        new = [m for _, _, m, _ in moved]
        rows = await conn.fetch(
            f"""
            WITH u AS (
                SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[],
                    $4::timestamptz[], $5::integer[], $6::timestamptz[], $7::timestamptz[],
                    $8::text[], $9::text[], $10::text[], $11::timestamptz[],
                    $12::timestamptz[], $13::timestamptz[], $14::text[], $15::text[],
                    $16::text[], $17::text[])
                AS u(number, state, promised, legal, stopped, correction_since, decided_at,
                     outcome, licence_number, refusal_reason, closed_at, delivered_at, at,
                     from_state, department, officer, reason)
            ), moved AS (
                UPDATE service_case c SET ({_MOVED}, updated_at)
                    = (u.state, u.promised, u.legal, u.stopped, u.correction_since,
                       u.decided_at, u.outcome, u.licence_number, u.refusal_reason,
                       u.closed_at, u.delivered_at, u.at)
                FROM u WHERE c.number = u.number
            )
            INSERT INTO service_case_history (case_number, seq, from_state, to_state, at,
                department, officer, reason)
            SELECT u.number,
                   (SELECT coalesce(max(h.seq), 0) + 1 FROM service_case_history h
                    WHERE h.case_number = u.number),
                   u.from_state, u.state, u.at, u.department, u.officer, u.reason
            FROM u
            RETURNING case_number, seq
            """,  # noqa: S608 - the columns are constants
            [m.number for m in new],
            [m.state.value for m in new],
            [m.promised_due_at for m in new],
            [m.legal_due_at for m in new],
            [m.stopped_days for m in new],
            [m.correction_since for m in new],
            [m.decided_at for m in new],
            [m.outcome.value if m.outcome else None for m in new],
            [m.licence_number for m in new],
            [m.refusal_reason for m in new],
            [m.closed_at for m in new],
            [m.delivered_at for m in new],
            [job.now for job, _, _, _ in moved],
            [case.state.value for _, case, _, _ in moved],
            [job.caller.department.code for job, _, _, _ in moved],
            [job.caller.officer_id for job, _, _, _ in moved],
            [why for _, _, _, why in moved],
        )
        return {r["case_number"]: r["seq"] for r in rows}

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
        if package_number:
            # A package step: its own transaction, which moves the package; its stream
            # lookup there refuses a package that was never opened (PACKAGE_UNKNOWN).
            return await self._open_single(caller, case, why, now)
        return await self._submit(_Job(caller, now, case.number, opened=case, why=why))

    async def _open_single(
        self, caller: Caller, case: Case, why: str | None, now: datetime
    ) -> Case:
        """Open ``case`` in a transaction of its own."""
        entries = await self._entries(case.department, case.package_number, now)
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
                case.promised_due_at,
                case.legal_due_at,
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
        text = number.strip()
        if not is_case_number(text):
            raise _not_found(text)
        return await self._submit(_Job(caller, now, text, move=move))

    async def _move_single(self, caller: Caller, number: str, move: Move, *, now: datetime
                           ) -> Case:  # fmt: skip
        """Move case ``number`` in a transaction of its own."""
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
                    _transition_reason(case, moved),
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

    async def load(self, conn: Any, number: str) -> Case:
        """Case ``number`` read on ``conn`` (no lock, not logged: for the node's own work).
        Raises CaseNotFound."""
        return await self._load(conn, number, lock=False)

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
            raise _not_found(text)
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
