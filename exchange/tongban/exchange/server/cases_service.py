"""gRPC servicer of cases (办件): messages in and out of ``CaseStore``, and of the overdue
report (``OverdueReader``). Errors are ``TongbanError``s, mapped to statuses by the
interceptor."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import grpc

from tongban.exchange.audit.log import AccessLog
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.licensing.case_overdue import OverdueReader
from tongban.exchange.licensing.case_report import OverdueCase
from tongban.exchange.licensing.case_store import CaseStore
from tongban.exchange.licensing.cases import Case, CaseState, Move, Outcome, Overdue, Transition
from tongban.exchange.licensing.follow_through import (
    COMMITTED,
    DEFERRED,
    CaseMaterialRow,
    FollowThrough,
)
from tongban.exchange.pagetokens import PageTokens
from tongban.exchange.server.caller import current_caller
from tongban.exchange.server.timestamps import timestamp
from tongban.signing.clock import Clock
from tongban.v1 import cases_pb2, cases_pb2_grpc

__all__ = ["STATES", "CaseService", "case_message"]

Context = grpc.aio.ServicerContext[Any, Any]

STATES = {
    CaseState.ACCEPTED: cases_pb2.CASE_STATE_ACCEPTED,
    CaseState.CORRECTION: cases_pb2.CASE_STATE_CORRECTION,
    CaseState.DECIDED: cases_pb2.CASE_STATE_DECIDED,
    CaseState.DELIVERED: cases_pb2.CASE_STATE_DELIVERED,
    CaseState.NOT_ACCEPTED: cases_pb2.CASE_STATE_NOT_ACCEPTED,
    CaseState.WITHDRAWN: cases_pb2.CASE_STATE_WITHDRAWN,
}
_FROM_WIRE = {wire: state for state, wire in STATES.items()}
_OUTCOMES = {
    Outcome.APPROVED: cases_pb2.CASE_OUTCOME_APPROVED,
    Outcome.REFUSED: cases_pb2.CASE_OUTCOME_REFUSED,
}
_OUTCOME_FROM_WIRE = {wire: outcome for outcome, wire in _OUTCOMES.items()}
_OVERDUE = {
    Overdue.NONE: cases_pb2.CASE_OVERDUE_NONE,
    Overdue.PROMISED: cases_pb2.CASE_OVERDUE_PROMISED,
    Overdue.LEGAL: cases_pb2.CASE_OVERDUE_LEGAL,
}
_OVERDUE_FROM_WIRE = {wire: overdue for overdue, wire in _OVERDUE.items()}


def case_message(
    case: Case,
    *,
    promised_due_at: datetime,
    legal_due_at: datetime,
    stopped_days: int,
    overdue: Overdue,
    history: Sequence[Transition] = (),
) -> cases_pb2.Case:
    """The message of ``case`` with its due dates as they stand now."""
    return cases_pb2.Case(
        number=case.number,
        item=case.item,
        item_version=case.item_version,
        department=case.department,
        applicant=case.applicant,
        state=STATES[case.state],
        opened_at=timestamp(case.opened_at),
        promised_due_at=timestamp(promised_due_at),
        legal_due_at=timestamp(legal_due_at),
        stopped_days=stopped_days,
        correction_since=timestamp(case.correction_since),
        outcome=_OUTCOMES[case.outcome] if case.outcome else cases_pb2.CASE_OUTCOME_UNSPECIFIED,
        licence_number=case.licence_number or "",
        refusal_reason=case.refusal_reason or "",
        decided_at=timestamp(case.decided_at),
        closed_at=timestamp(case.closed_at),
        delivered_at=timestamp(case.delivered_at),
        overdue=_OVERDUE[overdue],
        package_number=case.package_number or "",
        history=[
            cases_pb2.CaseTransition(
                from_state=STATES[t.from_state]
                if t.from_state
                else cases_pb2.CASE_STATE_UNSPECIFIED,
                to_state=STATES[t.to_state],
                at=timestamp(t.at),
                department=t.department,
                officer=t.officer or "",
                reason=t.reason or "",
            )
            for t in history
        ],
    )


def _move(request: cases_pb2.MoveCaseRequest) -> Move:
    target = _FROM_WIRE.get(request.target)
    if target is None:
        raise InvalidArgument(
            "Name the state to move the case to: accepted, correction, decided, delivered, "
            "not_accepted or withdrawn.",
            metadata={"field": "target"},
        )
    outcome = _OUTCOME_FROM_WIRE.get(request.outcome)
    if outcome is None and request.outcome != cases_pb2.CASE_OUTCOME_UNSPECIFIED:
        raise InvalidArgument("The outcome is approved or refused.", metadata={"field": "outcome"})
    return Move(
        target=target,
        reason=request.reason,
        outcome=outcome,
        licence_number=request.licence_number,
    )


def _overdue_case(case: OverdueCase) -> cases_pb2.OverdueCase:
    return cases_pb2.OverdueCase(
        number=case.number,
        department=case.department,
        item=case.item,
        item_version=case.item_version,
        applicant=case.applicant,
        opened_at=timestamp(case.opened_at),
        promised_due_at=timestamp(case.promised_due_at),
        legal_due_at=timestamp(case.legal_due_at),
        severity=_OVERDUE[case.severity],
        due_at=timestamp(case.due_at),
    )


_KINDS = {
    DEFERRED: cases_pb2.MATERIAL_KIND_DEFERRED,
    COMMITTED: cases_pb2.MATERIAL_KIND_COMMITTED,
}
_MATERIAL_STATES = {
    "open": cases_pb2.MATERIAL_STATE_OPEN,
    "supplied": cases_pb2.MATERIAL_STATE_SUPPLIED,
    "checked": cases_pb2.MATERIAL_STATE_CHECKED,
    "breached": cases_pb2.MATERIAL_STATE_BREACHED,
}


def material_message(row: CaseMaterialRow) -> cases_pb2.CaseMaterial:
    return cases_pb2.CaseMaterial(
        case_number=row.case_number,
        material=row.material,
        kind=_KINDS[row.kind],
        due_at=timestamp(row.due_at),
        state=_MATERIAL_STATES[row.state],
        recorded_at=timestamp(row.recorded_at),
        recorded_by=row.recorded_by,
        resolved_at=timestamp(row.resolved_at),
        resolved_by=row.resolved_by or "",
        note=row.note or "",
    )


class CaseService(cases_pb2_grpc.CaseServiceServicer):
    def __init__(
        self,
        cases: CaseStore,
        clock: Clock,
        *,
        pool: asyncpg.Pool,
        access_log: AccessLog,
        tokens: PageTokens,
        node_name: str,
        follow_through: FollowThrough,
    ) -> None:
        """``pool``, ``access_log``, ``tokens`` (the node's page tokens) and ``node_name``
        serve the overdue report and its logged list; ``follow_through`` the deferred
        materials and commitments."""
        self._cases = cases
        self._clock = clock
        self._follow = follow_through
        self._overdue = OverdueReader(pool, access_log, tokens, node_name)

    def _message(
        self, case: Case, now: datetime, history: Sequence[Transition] = ()
    ) -> cases_pb2.Case:
        promised, legal, stopped = self._cases.clock.current_due(case, now)
        return case_message(
            case,
            promised_due_at=promised,
            legal_due_at=legal,
            stopped_days=stopped,
            overdue=self._cases.clock.overdue(case, now),
            history=history,
        )

    async def OpenCase(
        self, request: cases_pb2.OpenCaseRequest, context: Context
    ) -> cases_pb2.Case:
        now = self._clock.now()
        case = await self._cases.open(
            current_caller(),
            request.item,
            request.applicant,
            request.reason,
            now=now,
            package_number=request.package_number,
        )
        return self._message(case, now)

    async def MoveCase(
        self, request: cases_pb2.MoveCaseRequest, context: Context
    ) -> cases_pb2.Case:
        now = self._clock.now()
        case = await self._cases.move(current_caller(), request.number, _move(request), now=now)
        return self._message(case, now)

    async def GetCase(self, request: cases_pb2.GetCaseRequest, context: Context) -> cases_pb2.Case:
        now = self._clock.now()
        case, history = await self._cases.get(current_caller(), request.number, now=now)
        message = self._message(case, now, history)
        message.materials.extend(
            material_message(row) for row in await self._follow.of_case(case.number)
        )
        return message

    async def DeferMaterial(
        self, request: cases_pb2.CaseMaterialRequest, context: Context
    ) -> cases_pb2.CaseMaterial:
        row = await self._follow.record(
            current_caller(), request.number, request.material, DEFERRED, now=self._clock.now()
        )
        return material_message(row)

    async def AcceptCommitment(
        self, request: cases_pb2.CaseMaterialRequest, context: Context
    ) -> cases_pb2.CaseMaterial:
        row = await self._follow.record(
            current_caller(), request.number, request.material, COMMITTED, now=self._clock.now()
        )
        return material_message(row)

    async def SupplyMaterial(
        self, request: cases_pb2.CaseMaterialRequest, context: Context
    ) -> cases_pb2.CaseMaterial:
        row = await self._follow.supply(
            current_caller(), request.number, request.material, now=self._clock.now()
        )
        return material_message(row)

    async def RecordCommitmentCheck(
        self, request: cases_pb2.CommitmentCheckRequest, context: Context
    ) -> cases_pb2.CaseMaterial:
        row = await self._follow.check(
            current_caller(),
            request.number,
            request.material,
            request.passed,
            request.note,
            now=self._clock.now(),
        )
        return material_message(row)

    async def OverdueReport(
        self, request: cases_pb2.OverdueReportRequest, context: Context
    ) -> cases_pb2.OverdueReportResponse:
        now = self._clock.now()
        report = await self._overdue.report(current_caller(), request.department.strip(), now=now)
        return cases_pb2.OverdueReportResponse(
            at=timestamp(now),
            departments=[
                cases_pb2.DepartmentOverdue(
                    department=d.department,
                    open=d.open,
                    in_correction=d.in_correction,
                    past_promised=d.past_promised,
                    past_legal=d.past_legal,
                )
                for d in report.departments
            ],
        )

    async def ListOverdueCases(
        self, request: cases_pb2.ListOverdueCasesRequest, context: Context
    ) -> cases_pb2.ListOverdueCasesResponse:
        now = self._clock.now()
        page = await self._overdue.cases(
            current_caller(),
            _OVERDUE_FROM_WIRE.get(request.severity, Overdue.NONE),
            request.department.strip(),
            page_size=request.page_size,
            page_token=request.page_token,
            now=now,
        )
        return cases_pb2.ListOverdueCasesResponse(
            cases=[_overdue_case(c) for c in page.cases],
            next_page_token=page.next_page_token,
            at=timestamp(now),
        )
