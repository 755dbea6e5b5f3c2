"""Follow-through of 容缺 and 告知承诺: deferred materials and commitments on cases.

The handling department accepts a case with a deferrable material to follow (容缺受理,
``record(kind="deferred")``: due within the material's ``defer_days`` working days) or
takes the applicant's commitment in place of a material (告知承诺, ``kind="committed"``:
to be checked within its ``commitment_check_days``). A deferral is met when the material
arrives in time (``supply``); a commitment when a supervising department finds it true
(``check``). A deferral that runs out (``sweep``, run by the node on its injected clock)
and a commitment found false are **breaches**: each is a row, an access-log entry
(``case.breach``) and an event on ``<department>.case_materials``; with the item's
``on_breach: suspend``, the licence the case issued is then suspended through its status
list, so an online check sees it at once and an offline QR check after its next
status-list refresh.

Every step is one transaction with its row, its stream record and its log entry; a
refused step writes nothing (another department's attempt is logged as a denial).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from tongban.errors import TongbanError
from tongban.exchange.audit.leaf import LeafInvalid, decode_leaf
from tongban.exchange.audit.log import AccessEntry, AccessLog, SubjectHasher
from tongban.exchange.audit.recorder import AccessRecorder
from tongban.exchange.identity import Caller
from tongban.exchange.licensing.case_feed import CaseFeed
from tongban.exchange.licensing.cases import (
    OPEN,
    Case,
    CaseClock,
    CaseState,
    Outcome,
    is_case_number,
    normal_reason,
)
from tongban.exchange.licensing.errors import (
    CaseNotFound,
    CaseNotPermitted,
    CheckNotPermitted,
    MaterialAlreadyRecorded,
    MaterialNotDeferrable,
    MaterialNotOpen,
    MaterialSupplyLate,
    MaterialUnknown,
)
from tongban.exchange.licensing.item_store import ServiceItemStore
from tongban.exchange.licensing.items import ServiceItem
from tongban.exchange.sharing.records import RecordStore

__all__ = [
    "COMMITTED",
    "DEFERRED",
    "CaseMaterialRow",
    "CaseMaterialsTampered",
    "FollowThrough",
    "Suspend",
    "verify_follow_through",
]

_log = logging.getLogger(__name__)

Suspend = Callable[[str, str, str], Awaitable[None]]
"""(department, licence number, reason): suspend a licence as its issuing department."""

DEFERRED, COMMITTED = "deferred", "committed"
_SWEEP_PAGE = 500
_ROW = (
    "case_number, material, kind, due_at, state, recorded_at, recorded_by, resolved_at, "
    "resolved_by, note"
)


@dataclass(frozen=True)
class CaseMaterialRow:
    case_number: str
    material: str
    kind: str
    due_at: datetime
    state: str
    recorded_at: datetime
    recorded_by: str
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    note: str | None = None


def _row(record: asyncpg.Record) -> CaseMaterialRow:
    return CaseMaterialRow(**{name: record[name] for name in _ROW.split(", ")})


class FollowThrough:
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
        load_case: Callable[[Any, str], Awaitable[Case]],
        suspend: Suspend | None = None,
    ) -> None:
        """``load_case(conn, number)`` reads a case (CaseStore's, raising CaseNotFound);
        ``suspend`` suspends a licence for a breach (None: breaches suspend nothing)."""
        self._pool = pool
        self._items = items
        self._log = access_log
        self._clock = clock
        self._recorder = AccessRecorder(node_name, hasher)
        self._records = records
        self._feed = feed
        self._load_case = load_case
        self._suspend = suspend

    def _entry(
        self, department: str, officer: str | None, case: Case, action: str, reason: str,
        now: datetime, *, denied: bool = False,
    ) -> AccessEntry:  # fmt: skip
        return self._recorder.entry(
            at=now, department=department, officer=officer, action=action,
            case_id=case.number, subject=case.applicant,
            decision="denied" if denied else "allowed", reason=reason,
        )  # fmt: skip

    async def _case(self, number: str) -> Case:
        text = number.strip()
        if not is_case_number(text):
            raise CaseNotFound(
                f"There is no case {text[:80]!r}; check the number (办件编号).",
                metadata={"case": text[:80]},
            )
        async with self._pool.acquire() as conn:
            return await self._load_case(conn, text)

    async def _deny(self, caller: Caller, case: Case, action: str, reason: str, now: datetime
                    ) -> None:  # fmt: skip
        await self._log.append(
            [self._entry(caller.department.code, caller.officer_id, case, action, reason,
                         now, denied=True)]
        )  # fmt: skip

    async def _handled(self, caller: Caller, case: Case, action: str, now: datetime) -> None:
        if case.department != caller.department.code:
            await self._deny(caller, case, action, CaseNotPermitted.reason, now)
            raise CaseNotPermitted(
                f"Case {case.number} is handled by {case.department}; only it records its "
                "deferred materials and commitments.",
                metadata={"case": case.number, "department": case.department},
            )

    @staticmethod
    def _material(item: ServiceItem, code: str) -> Any:
        found = next((m for m in item.spec.materials if m.code == code.strip()), None)
        if found is None:
            raise MaterialUnknown(
                f"Service item {item.code} has no material {code.strip()[:64]!r}; its "
                f"materials are {', '.join(m.code for m in item.spec.materials)}.",
                metadata={"material": code.strip()[:64]},
            )
        return found

    async def _locked(self, conn: Any, number: str, material: str) -> CaseMaterialRow | None:
        record = await conn.fetchrow(
            f"SELECT {_ROW} FROM case_material WHERE case_number = $1 AND material = $2"  # noqa: S608
            " FOR UPDATE",
            number,
            material,
        )
        return None if record is None else _row(record)

    async def _resolve(
        self, conn: Any, case: Case, row: CaseMaterialRow, state: str, by: str | None,
        note: str | None, now: datetime,
    ) -> CaseMaterialRow:  # fmt: skip
        await conn.execute(
            "UPDATE case_material SET state = $3, resolved_at = $4, resolved_by = $5, note = $6"
            " WHERE case_number = $1 AND material = $2",
            row.case_number,
            row.material,
            state,
            now,
            by,
            note,
        )
        resolved = CaseMaterialRow(
            **{**row.__dict__, "state": state, "resolved_at": now, "resolved_by": by,
               "note": note}
        )  # fmt: skip
        await self._publish(conn, case, resolved, now)
        return resolved

    async def _publish(self, conn: Any, case: Case, row: CaseMaterialRow, now: datetime) -> None:
        entry = self._feed.cached_materials(case.department)
        assert entry is not None  # looked up before the transaction
        change = self._feed.material_change(
            entry, case, row.material, kind=row.kind, state=row.state, due_at=row.due_at,
            resolved_at=row.resolved_at,
        )  # fmt: skip
        await self._records.publish_in(conn, entry, [change], now)

    async def record(
        self, caller: Caller, number: str, material: str, kind: str, *, now: datetime
    ) -> CaseMaterialRow:
        """Defer ``material`` of case ``number`` (容缺) or take a commitment in its place
        (告知承诺). Raises CaseNotFound, CaseNotPermitted, MaterialNotOpen (the case is
        not open), MaterialUnknown, MaterialNotDeferrable, MaterialAlreadyRecorded."""
        case = await self._case(number)
        action = "case.defer" if kind == DEFERRED else "case.commit"
        await self._handled(caller, case, action, now)
        if case.state not in OPEN:
            raise MaterialNotOpen(
                f"Case {case.number} is {case.state.label}; materials are deferred or "
                "replaced by commitments while a case is open (受理 or 补正).",
                metadata={"case": case.number, "state": case.state.value},
            )
        item = await self._items.get(case.item, case.item_version)
        spec = self._material(item, material)
        days = spec.defer_days if kind == DEFERRED else spec.commitment_check_days
        if not days:
            what = "deferred (容缺)" if kind == DEFERRED else "replaced by a commitment (告知承诺)"
            raise MaterialNotDeferrable(
                f"Material {spec.code!r} of {item.code} may not be {what}: the item gives it "
                "no days for that.",
                metadata={"material": spec.code},
            )
        due, _ = self._clock.due_dates(now, days, days)
        await self._feed.materials_entry(case.department, now)
        row = CaseMaterialRow(
            case.number, spec.code, kind, due, "open", now, caller.department.code
        )
        try:
            async with self._pool.acquire() as conn, self._log.transaction(conn) as tx:
                await conn.execute(
                    "INSERT INTO case_material (case_number, material, kind, due_at, state,"
                    " recorded_at, recorded_by) VALUES ($1, $2, $3, $4, 'open', $5, $6)",
                    case.number,
                    spec.code,
                    kind,
                    due,
                    now,
                    caller.department.code,
                )
                await self._publish(conn, case, row, now)
                tx.record(
                    [self._entry(caller.department.code, caller.officer_id, case, action,
                                 f"{spec.code} due {due.isoformat()}", now)]
                )  # fmt: skip
        except asyncpg.UniqueViolationError:
            raise MaterialAlreadyRecorded(
                f"Material {spec.code!r} is already deferred or replaced by a commitment on "
                f"case {case.number}.",
                metadata={"material": spec.code},
            ) from None
        return row

    async def supply(
        self, caller: Caller, number: str, material: str, *, now: datetime
    ) -> CaseMaterialRow:
        """The deferred ``material`` of case ``number`` arrived. Raises CaseNotFound,
        CaseNotPermitted, MaterialNotOpen, MaterialSupplyLate (after its days: the
        deferral is a breach)."""
        case = await self._case(number)
        await self._handled(caller, case, "case.supply", now)
        await self._feed.materials_entry(case.department, now)
        async with self._pool.acquire() as conn, self._log.transaction(conn) as tx:
            row = await self._locked(conn, case.number, material.strip())
            if row is None or row.kind != DEFERRED or row.state != "open":
                raise MaterialNotOpen(
                    f"Material {material.strip()[:64]!r} is not an open deferral of case "
                    f"{case.number}" + (f" (it is {row.kind}, {row.state})." if row else "."),
                    metadata={"material": material.strip()[:64]},
                )
            if now > row.due_at:
                raise MaterialSupplyLate(
                    f"Material {row.material!r} of case {case.number} was due by "
                    f"{row.due_at.isoformat()}; it came too late, and the deferral is a breach "
                    "(the item's on_breach rule applies).",
                    metadata={"material": row.material, "due_at": row.due_at.isoformat()},
                )
            supplied = await self._resolve(
                conn, case, row, "supplied", caller.department.code, None, now
            )
            tx.record(
                [self._entry(caller.department.code, caller.officer_id, case, "case.supply",
                             row.material, now)]
            )  # fmt: skip
        return supplied

    async def check(
        self, caller: Caller, number: str, material: str, passed: bool, note: str, *,
        now: datetime,
    ) -> CaseMaterialRow:  # fmt: skip
        """Record the check of the commitment that replaced ``material``: passed, or failed
        (a breach). Raises CaseNotFound, CheckNotPermitted, CaseReasonRequired (a failed
        check says what was found), MaterialNotOpen."""
        case = await self._case(number)
        item = await self._items.get(case.item, case.item_version)
        supervisors = item.spec.supervisors or (item.department,)
        if caller.department.code not in supervisors:
            await self._deny(caller, case, "case.check", CheckNotPermitted.reason, now)
            raise CheckNotPermitted(
                f"The commitments of {item.code} are checked by {', '.join(supervisors)}.",
                metadata={"supervisors": ",".join(supervisors)},
            )
        why = normal_reason(note, required=not passed, what="A failed check")
        await self._feed.materials_entry(case.department, now)
        async with self._pool.acquire() as conn, self._log.transaction(conn) as tx:
            row = await self._locked(conn, case.number, material.strip())
            if row is None or row.kind != COMMITTED or row.state != "open":
                raise MaterialNotOpen(
                    f"Material {material.strip()[:64]!r} is not an open commitment of case "
                    f"{case.number}" + (f" (it is {row.kind}, {row.state})." if row else "."),
                    metadata={"material": material.strip()[:64]},
                )
            state = "checked" if passed else "breached"
            done = await self._resolve(conn, case, row, state, caller.department.code, why, now)
            entries = [
                self._entry(caller.department.code, caller.officer_id, case, "case.check",
                            f"{row.material}:{'passed' if passed else 'failed'}", now)
            ]  # fmt: skip
            if not passed:
                entries.append(
                    self._entry(case.department, None, case, "case.breach",
                                f"{row.material}:commitment found false", now)
                )  # fmt: skip
            tx.record(entries)
        if not passed:
            await self._after_breach(case, item)
        return done

    async def sweep(self, now: datetime) -> int:
        """Mark every open deferral whose days ran out before ``now`` as breached; return
        how many. Run by the node on its clock; safe to run on several nodes at once."""
        due = await self._pool.fetch(
            "SELECT case_number, material FROM case_material WHERE state = 'open'"
            " AND kind = 'deferred' AND due_at < $1 ORDER BY due_at LIMIT $2",
            now,
            _SWEEP_PAGE,
        )
        breached = 0
        for record in due:
            case = await self._case(record["case_number"])
            await self._feed.materials_entry(case.department, now)
            async with self._pool.acquire() as conn, self._log.transaction(conn) as tx:
                row = await self._locked(conn, case.number, record["material"])
                if row is None or row.state != "open" or row.due_at >= now:
                    continue  # supplied meanwhile, or another node was first
                await self._resolve(conn, case, row, "breached", None, None, now)
                tx.record(
                    [self._entry(case.department, None, case, "case.breach",
                                 f"{row.material}:deferral ran out", now)]
                )  # fmt: skip
            breached += 1
            item = await self._items.get(case.item, case.item_version)
            await self._after_breach(await self._case(case.number), item)
        return breached

    async def _after_breach(self, case: Case, item: ServiceItem) -> None:
        """Apply the item's on_breach rule: suspend the licence the case issued."""
        if (
            item.spec.on_breach != "suspend"
            or self._suspend is None
            or case.outcome is not Outcome.APPROVED
            or case.licence_number is None
            or case.state not in (CaseState.DECIDED, CaseState.DELIVERED)
        ):
            return
        try:
            await self._suspend(
                case.department,
                case.licence_number,
                f"容缺/告知承诺未履行（办件 {case.number}）",
            )
        except TongbanError as e:  # already suspended or revoked: the breach stands
            _log.warning("breach of %s: licence not suspended: %s", case.number, e.message)

    async def of_case(self, number: str) -> list[CaseMaterialRow]:
        rows = await self._pool.fetch(
            f"SELECT {_ROW} FROM case_material WHERE case_number = $1 ORDER BY recorded_at,"  # noqa: S608
            " material",
            number,
        )
        return [_row(r) for r in rows]


class CaseMaterialsTampered(TongbanError):
    """Deferred-material and commitment rows and their access-log entries disagree: a row
    was changed, deleted or added outside the node."""

    reason = "CASE_MATERIALS_TAMPERED"
    status = "DATA_LOSS"


_VERIFIED_ACTIONS = ("case.defer", "case.commit", "case.supply", "case.check", "case.breach")


def _expected(row: CaseMaterialRow) -> list[tuple[str, str, str, datetime | None]]:
    """The log entries a row's life wrote: (action, case, reason, due) — the due date only
    for the recording, whose reason names it."""
    record = "case.defer" if row.kind == DEFERRED else "case.commit"
    out: list[tuple[str, str, str, datetime | None]] = [
        (record, row.case_number, row.material, row.due_at)
    ]
    if row.state == "supplied":
        out.append(("case.supply", row.case_number, row.material, None))
    elif row.state == "checked":
        out.append(("case.check", row.case_number, f"{row.material}:passed", None))
    elif row.state == "breached" and row.kind == COMMITTED:
        out.append(("case.check", row.case_number, f"{row.material}:failed", None))
        out.append(("case.breach", row.case_number, f"{row.material}:commitment found false", None))
    elif row.state == "breached":
        out.append(("case.breach", row.case_number, f"{row.material}:deferral ran out", None))
    return out


async def verify_follow_through(pool: asyncpg.Pool) -> tuple[int, int]:
    """Compare every ``case_material`` row with the access-log entries its life wrote (read
    from the entries' leaves, which ``audit verify`` checks against the tree); return
    (rows, entries) checked, or raise CaseMaterialsTampered naming the first cases whose
    row was changed (a breach turned back to open, a due date moved), deleted or added
    outside the node."""
    async with pool.acquire() as conn:
        rows = [_row(r) for r in await conn.fetch(f"SELECT {_ROW} FROM case_material")]  # noqa: S608
        leaves = await conn.fetch(
            "SELECT idx, leaf FROM access_log WHERE action = ANY($1::text[])"
            " AND decision = 'allowed' ORDER BY idx",
            list(_VERIFIED_ACTIONS),
        )
    expected: Counter[tuple[str, str, str, datetime | None]] = Counter()
    for row in rows:
        expected.update(_expected(row))
    logged: Counter[tuple[str, str, str, datetime | None]] = Counter()
    for leaf in leaves:
        try:
            entry = decode_leaf(bytes(leaf["leaf"]))
        except LeafInvalid:
            raise CaseMaterialsTampered(
                f"Access-log entry {leaf['idx']} cannot be read; run tongban audit verify.",
                metadata={"index": str(leaf["idx"])},
            ) from None
        if entry.case_id is None or entry.reason is None:
            continue
        due: datetime | None = None
        reason = entry.reason
        if entry.action in ("case.defer", "case.commit"):
            reason, _, at = reason.partition(" due ")
            try:
                due = datetime.fromisoformat(at)
            except ValueError:
                due = None
        logged[(entry.action, entry.case_id, reason, due)] += 1
    problems = [("no log entry", k) for k in expected - logged]
    problems += [("no row, or a row changed", k) for k in logged - expected]
    if problems:
        problems.sort(key=lambda p: (p[1][1], p[1][0]))
        first = "; ".join(f"{k[0]} {k[2]} of case {k[1]}: {what}" for what, k in problems[:5])
        raise CaseMaterialsTampered(
            f"{len(problems)} deferred-material or commitment record(s) disagree with the "
            f"access log: {first}.",
            metadata={"cases": ",".join(sorted({k[1] for _, k in problems}))[:500]},
        )
    return len(rows), len(leaves)
