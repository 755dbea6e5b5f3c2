"""Packages (一件事) in PostgreSQL: registering them, opening one for an applicant, reading
an opened one, and moving its steps as their cases move. The rules are ``packages``'.

A step follows its case in the case's own transaction (``CaseStore`` calls ``link`` when
a case is opened for a step and ``follow`` when it moves): the package can never miss a
transition or see one that rolled back. The step changes go out on the coordinator's
``<coordinator>.package_steps`` stream in that same transaction (``case_feed``), which is
how the departments of the steps after learn that theirs is ready.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, NoReturn

import asyncpg

from tongban.exchange.audit.log import AccessEntry, AccessLog, SubjectHasher
from tongban.exchange.audit.recorder import AccessRecorder
from tongban.exchange.identity import Caller
from tongban.exchange.licensing.case_feed import CaseFeed
from tongban.exchange.licensing.cases import Case, CaseState, is_case_number, normal_applicant
from tongban.exchange.licensing.errors import (
    PackageNotPermitted,
    PackageStepNotReady,
    PackageUnknown,
    ServiceItemUnknown,
)
from tongban.exchange.licensing.item_store import ServiceItemStore
from tongban.exchange.licensing.items import ServiceItem
from tongban.exchange.licensing.packages import (
    MAX_STEPS,
    PACKAGE_CODE,
    PackageSpec,
    PackageState,
    Step,
    StepSpec,
    StepState,
    after_case,
    follow_on,
    initial_states,
    package_state,
    validate_package,
)
from tongban.exchange.sharing.records import RecordStore
from tongban.licence import random_serial

__all__ = ["OpenedPackage", "PackageStore", "RegisteredPackage"]

_LOCK_SPACE = "service_package"
_STEP_COLUMNS = (
    "s.item, s.department, s.after_items, s.applicant_from, s.state, s.applicant, "
    "s.case_number, s.licence_number, s.updated_at, c.state AS case_state"
)


class RegisteredPackage:
    def __init__(self, spec: PackageSpec, department: str, version: int, created_at: datetime):
        self.spec = spec
        self.department = department
        self.version = version
        self.created_at = created_at


class OpenedPackage:
    def __init__(
        self,
        number: str,
        package: str,
        package_version: int,
        department: str,
        applicant: str,
        opened_at: datetime,
        steps: list[Step],
    ) -> None:
        self.number = number
        self.package = package
        self.package_version = package_version
        self.department = department
        self.applicant = applicant
        self.opened_at = opened_at
        self.steps = steps

    @property
    def state(self) -> PackageState:
        return package_state(self.steps)


def _steps_json(spec: PackageSpec) -> str:
    return json.dumps(
        [
            {"item": s.item, "after": list(s.after), "applicant_from": s.applicant_from}
            for s in spec.steps
        ],
        ensure_ascii=False,
    )


def _registered(row: asyncpg.Record) -> RegisteredPackage:
    steps = tuple(
        StepSpec(item=s["item"], after=tuple(s["after"]), applicant_from=s["applicant_from"])
        for s in json.loads(row["steps"])
    )
    spec = PackageSpec(
        code=row["code"], name=row["name"], description=row["description"], steps=steps
    )
    return RegisteredPackage(spec, row["department"], row["version"], row["created_at"])


def _step(row: asyncpg.Record) -> Step:
    return Step(
        item=row["item"],
        department=row["department"],
        after=tuple(row["after_items"]),
        applicant_from=row["applicant_from"],
        state=StepState(row["state"]),
        applicant=row["applicant"],
        case_number=row["case_number"],
        licence_number=row["licence_number"],
        case_state=CaseState(row["case_state"]) if row["case_state"] else None,
        updated_at=row["updated_at"],
    )


_SELECT = """
    SELECT p.code, p.department, v.version, v.name, v.description, v.steps, v.created_at
    FROM service_package p JOIN service_package_version v ON v.package = p.code
"""


class PackageStore:
    def __init__(
        self,
        pool: asyncpg.Pool,
        items: ServiceItemStore,
        records: RecordStore,
        feed: CaseFeed,
        access_log: AccessLog,
        hasher: SubjectHasher,
        node_name: str,
    ) -> None:
        self._pool = pool
        self._items = items
        self._records = records
        self._feed = feed
        self._log = access_log
        self._recorder = AccessRecorder(node_name, hasher)

    # --- the package catalogue ------------------------------------------------------

    async def register(
        self, department: str, spec: PackageSpec, *, now: datetime
    ) -> RegisteredPackage:
        """Create the package (``department`` coordinates it) or add a version; an
        identical spec adds none. Raises PackageInvalid, PackageCycle, and
        PackageNotPermitted when the package is another department's."""
        items: dict[str, ServiceItem | None] = {}
        for step in spec.steps[: MAX_STEPS + 1]:  # validate_package refuses more anyway
            code = step.item.strip()
            try:
                items[code] = await self._items.get(code)
            except ServiceItemUnknown:
                items[code] = None
        spec = validate_package(spec, items)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))", _LOCK_SPACE, spec.code
            )
            row = await conn.fetchrow(
                _SELECT + " WHERE p.code = $1 AND v.version = p.current_version", spec.code
            )
            if row is None:
                version = 1
                await conn.execute(
                    "INSERT INTO service_package (code, department, current_version, "
                    "created_at, updated_at) VALUES ($1, $2, 1, $3, $3)",
                    spec.code,
                    department,
                    now,
                )
            else:
                current = _registered(row)
                if current.department != department:
                    raise PackageNotPermitted(
                        f"Package {spec.code} is coordinated by {current.department}; only it "
                        "registers new versions.",
                        metadata={"package": spec.code, "department": current.department},
                    )
                if current.spec == spec:
                    return current
                version = current.version + 1
                await conn.execute(
                    "UPDATE service_package SET current_version = $2, updated_at = $3 "
                    "WHERE code = $1",
                    spec.code,
                    version,
                    now,
                )
            await conn.execute(
                "INSERT INTO service_package_version (package, version, name, description, "
                "steps, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                spec.code,
                version,
                spec.name,
                spec.description,
                _steps_json(spec),
                now,
            )
        return RegisteredPackage(spec, department, version, now)

    async def get(self, code: str) -> RegisteredPackage:
        """The current version of package ``code``; raises PackageUnknown."""
        row = None
        if PACKAGE_CODE.match(code):
            row = await self._pool.fetchrow(
                _SELECT + " WHERE p.code = $1 AND v.version = p.current_version", code
            )
        if row is None:
            raise PackageUnknown(
                f"There is no package {code[:80]!r}; register it first (tongban package "
                "register FILE.yaml).",
                metadata={"package": code[:80]},
            )
        return _registered(row)

    async def list_current(
        self, *, department: str = "", limit: int = 200
    ) -> list[RegisteredPackage]:
        """The current version of every package (of ``department`` if given), by code."""
        rows = await self._pool.fetch(
            _SELECT + " WHERE v.version = p.current_version AND ($1 = '' OR p.department = $1)"
            " ORDER BY p.code LIMIT $2",
            department,
            limit,
        )
        return [_registered(row) for row in rows]

    # --- opened packages ------------------------------------------------------------

    def _entry(
        self, caller: Caller, number: str, applicant: str, action: str, reason: str,
        now: datetime, *, denied: bool = False,
    ) -> AccessEntry:  # fmt: skip
        return self._recorder.entry(
            at=now, department=caller.department.code, officer=caller.officer_id,
            action=action, case_id=number, subject=applicant,
            decision="denied" if denied else "allowed", reason=reason,
        )  # fmt: skip

    async def open(
        self, caller: Caller, code: str, applicant: str, *, now: datetime
    ) -> OpenedPackage:
        """Open package ``code`` for ``applicant`` (一次受理): a step per item, those that
        wait for nothing ready. Raises InvalidSubjectId, PackageUnknown, and
        PackageNotPermitted if the caller does not coordinate the package."""
        applicant = normal_applicant(applicant)
        package = await self.get(code)
        department = caller.department.code
        if package.department != department:
            raise PackageNotPermitted(
                f"Package {package.spec.code} is coordinated by {package.department}; only it "
                "opens the package for applicants.",
                metadata={"package": package.spec.code, "department": package.department},
            )
        handlers = {s.item: (await self._items.get(s.item)).department for s in package.spec.steps}
        entry = await self._feed.steps_entry(department, now)
        year = now.astimezone().year
        number = f"{department}-{year:04d}-{random_serial()}"
        states = initial_states(package.spec)
        steps = [
            Step(
                item=s.item,
                department=handlers[s.item],
                after=s.after,
                applicant_from=s.applicant_from or None,
                state=states[s.item],
                applicant=applicant if states[s.item] is StepState.READY else None,
                updated_at=now,
            )
            for s in package.spec.steps
        ]
        async with self._pool.acquire() as conn, self._log.transaction(conn) as tx:
            await conn.execute(
                "INSERT INTO package_case (number, package, package_version, department, "
                "applicant, opened_at) VALUES ($1, $2, $3, $4, $5, $6)",
                number,
                package.spec.code,
                package.version,
                department,
                applicant,
                now,
            )
            await conn.executemany(
                "INSERT INTO package_step (package_number, item, department, after_items, "
                "applicant_from, state, applicant, updated_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                [
                    (number, s.item, s.department, list(s.after), s.applicant_from,
                     s.state.value, s.applicant, now)
                    for s in steps
                ],
            )  # fmt: skip
            await self._records.publish_in(
                conn,
                entry,
                [self._feed.step_change(entry, number, package.spec.code, s) for s in steps],
                now,
            )
            tx.record(
                [self._entry(caller, number, applicant, "package.open", package.spec.code, now)]
            )
        return OpenedPackage(
            number, package.spec.code, package.version, department, applicant, now, steps
        )

    async def coordinator(self, number: str) -> str | None:
        """The coordinating department of opened package ``number`` (None: no such one)."""
        if not is_case_number(number):
            return None
        value = await self._pool.fetchval(
            "SELECT department FROM package_case WHERE number = $1", number
        )
        return str(value) if value is not None else None

    async def read(self, caller: Caller, number: str, *, now: datetime) -> OpenedPackage:
        """Opened package ``number`` with its steps; the read is logged (``package.read``).
        Only its coordinator and the departments of its steps read it. Raises
        PackageUnknown, PackageNotPermitted."""
        opened = await self._load(number.strip())
        code = caller.department.code
        if code != opened.department and all(s.department != code for s in opened.steps):
            await self._log.append(
                [self._entry(caller, opened.number, opened.applicant, "package.read",
                             PackageNotPermitted.reason, now, denied=True)]
            )  # fmt: skip
            raise PackageNotPermitted(
                f"Package {opened.number} is read by its coordinator ({opened.department}) "
                "and the departments of its steps only.",
                metadata={"package_number": opened.number},
            )
        await self._log.append(
            [self._entry(caller, opened.number, opened.applicant, "package.read",
                         opened.state.value, now)]
        )  # fmt: skip
        return opened

    async def of_applicant(self, applicant: str, limit: int = 20) -> list[OpenedPackage]:
        """The applicant's packages, newest first (进度查询 in the subject view)."""
        numbers = await self._pool.fetch(
            "SELECT number FROM package_case WHERE applicant = $1 ORDER BY opened_at DESC LIMIT $2",
            applicant,
            limit,
        )
        return [await self._load(row["number"]) for row in numbers]

    async def _load(self, number: str) -> OpenedPackage:
        row = None
        if is_case_number(number):
            row = await self._pool.fetchrow(
                "SELECT number, package, package_version, department, applicant, opened_at "
                "FROM package_case WHERE number = $1",
                number,
            )
        if row is None:
            raise PackageUnknown(
                f"There is no opened package {number[:80]!r}; check the number.",
                metadata={"package_number": number[:80]},
            )
        steps = await self._pool.fetch(
            f"SELECT {_STEP_COLUMNS} FROM package_step s "  # noqa: S608 - constant columns
            "LEFT JOIN service_case c ON c.number = s.case_number "
            "WHERE s.package_number = $1 ORDER BY s.item",
            number,
        )
        return OpenedPackage(
            row["number"],
            row["package"],
            row["package_version"],
            row["department"],
            row["applicant"],
            row["opened_at"],
            [_step(s) for s in steps],
        )

    # --- steps following their cases (inside CaseStore's transaction) --------------

    async def _locked_steps(self, conn: Any, number: str) -> tuple[str, str, list[Step]]:
        """The package's code, applicant and steps, the package locked for this transaction
        (two of its cases moving at once change its steps one after the other)."""
        # An advisory lock, not FOR UPDATE: the node may not update opened packages.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))", _LOCK_SPACE, number
        )
        package = await conn.fetchrow(
            "SELECT package, applicant FROM package_case WHERE number = $1", number
        )
        rows = await conn.fetch(
            f"SELECT {_STEP_COLUMNS} FROM package_step s "  # noqa: S608 - constant columns
            "LEFT JOIN service_case c ON c.number = s.case_number "
            "WHERE s.package_number = $1 ORDER BY s.item",
            number,
        )
        return package["package"], package["applicant"], [_step(r) for r in rows]

    async def link(self, conn: Any, case: Case, *, now: datetime) -> tuple[str, list[Step]]:
        """Make ``case`` (being opened) the case of its package's step for its item; return
        the package code and the steps that changed. Raises PackageStepNotReady."""
        assert case.package_number is not None
        package, _, steps = await self._locked_steps(conn, case.package_number)
        step = next((s for s in steps if s.item == case.item), None)
        if step is None or step.department != case.department:
            self._not_ready(case, "has no step for this item handled by your department")
        if step.state is not StepState.READY:
            self._not_ready(
                case,
                f"its step for {case.item} is {step.state.value}, not ready"
                + (f" (case {step.case_number})" if step.case_number else ""),
            )
        if step.applicant != case.applicant:
            self._not_ready(case, "its step for this item has another applicant")
        changed = Step(
            item=step.item, department=step.department, after=step.after,
            applicant_from=step.applicant_from, state=StepState.OPEN,
            applicant=step.applicant, case_number=case.number,
        )  # fmt: skip
        await self._save(conn, case.package_number, [changed], now)
        return package, [changed]

    @staticmethod
    def _not_ready(case: Case, why: str) -> NoReturn:
        raise PackageStepNotReady(
            f"Package {case.package_number} {why}; open the case when the package-steps "
            "stream shows the step ready, for the applicant it names.",
            metadata={"package_number": str(case.package_number), "service_item": case.item},
        )

    async def follow(self, conn: Any, case: Case, *, now: datetime) -> tuple[str, list[Step]]:
        """Move the step of ``case`` (just moved) and the steps after it; return the package
        code and the steps that changed."""
        assert case.package_number is not None
        package, applicant, steps = await self._locked_steps(conn, case.package_number)
        new = after_case(steps, case.item, case.state, case.outcome)
        if new is None:
            return package, []
        by_item = {s.item: s for s in steps}
        step = by_item[case.item]
        by_item[case.item] = Step(
            item=step.item, department=step.department, after=step.after,
            applicant_from=step.applicant_from, state=new, applicant=step.applicant,
            case_number=step.case_number,
            licence_number=case.licence_number if new is StepState.DONE else None,
        )  # fmt: skip
        changed = [by_item[case.item]]
        for item, state in follow_on(list(by_item.values())).items():
            waiting = by_item[item]
            ready = state is StepState.READY
            by_item[item] = Step(
                item=item, department=waiting.department, after=waiting.after,
                applicant_from=waiting.applicant_from, state=state,
                applicant=(
                    await self._applicant_of(conn, waiting, by_item, applicant) if ready else None
                ),
            )  # fmt: skip
            changed.append(by_item[item])
        await self._save(conn, case.package_number, changed, now)
        return package, changed

    async def _applicant_of(self, conn: Any, step: Step, by_item: dict[str, Step],
                            applicant: str) -> str:  # fmt: skip
        """A step's applicant as it becomes ready: the holder of the licence its
        ``applicant_from`` step issued, or the package's ``applicant``."""
        if not step.applicant_from:
            return applicant
        holder = await conn.fetchval(
            "SELECT holder_id FROM licence WHERE number = $1 ORDER BY version DESC LIMIT 1",
            by_item[step.applicant_from].licence_number,
        )
        return str(holder)

    async def _save(self, conn: Any, number: str, steps: list[Step], now: datetime) -> None:
        await conn.executemany(
            "UPDATE package_step SET state = $3, applicant = $4, case_number = $5, "
            "licence_number = $6, updated_at = $7 WHERE package_number = $1 AND item = $2",
            [
                (number, s.item, s.state.value, s.applicant, s.case_number, s.licence_number,
                 now)
                for s in steps
            ],
        )  # fmt: skip
