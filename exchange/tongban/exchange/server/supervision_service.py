"""gRPC servicer of electronic supervision (电子监察): messages in and out of
``SupervisionReader`` and ``SupervisedCasesReader``. Errors are ``TongbanError``s, mapped
to statuses by the interceptor."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg
import grpc

from tongban.exchange.audit.log import AccessLog
from tongban.exchange.licensing.supervision import SupervisionReader, SupervisionRow
from tongban.exchange.licensing.supervision_cases import (
    SupervisedCase,
    SupervisedCaseKind,
    SupervisedCasesReader,
)
from tongban.exchange.pagetokens import PageTokens
from tongban.exchange.server.caller import current_caller
from tongban.exchange.server.timestamps import timestamp
from tongban.signing.clock import Clock
from tongban.v1 import cases_pb2, supervision_pb2, supervision_pb2_grpc

__all__ = ["KINDS_FROM_WIRE", "SupervisionService", "case_message", "row_message"]

KINDS_FROM_WIRE = {
    supervision_pb2.SUPERVISED_CASE_KIND_DECIDED_LATE: SupervisedCaseKind.DECIDED_LATE,
    supervision_pb2.SUPERVISED_CASE_KIND_DECIDED_PAST_LEGAL: SupervisedCaseKind.DECIDED_PAST_LEGAL,
    supervision_pb2.SUPERVISED_CASE_KIND_CORRECTED_REPEATEDLY: (
        SupervisedCaseKind.CORRECTED_REPEATEDLY
    ),
}
_STATES = {
    "accepted": cases_pb2.CASE_STATE_ACCEPTED,
    "correction": cases_pb2.CASE_STATE_CORRECTION,
    "decided": cases_pb2.CASE_STATE_DECIDED,
    "delivered": cases_pb2.CASE_STATE_DELIVERED,
    "not_accepted": cases_pb2.CASE_STATE_NOT_ACCEPTED,
    "withdrawn": cases_pb2.CASE_STATE_WITHDRAWN,
}
_OUTCOMES = {"approved": cases_pb2.CASE_OUTCOME_APPROVED, "refused": cases_pb2.CASE_OUTCOME_REFUSED}

Context = grpc.aio.ServicerContext[Any, Any]


def row_message(row: SupervisionRow) -> supervision_pb2.SupervisionRow:
    """The message of one row; a share or average without a denominator is absent."""
    optional = {
        "within_promised_share": row.within_promised_share,
        "immediate_share": row.immediate_share,
        "fully_online_share": row.fully_online_share,
        "no_submission_share": row.no_submission_share,
        "average_days": row.average_days,
        "average_promised_days": row.average_promised_days,
        "average_legal_days": row.average_legal_days,
    }
    return supervision_pb2.SupervisionRow(
        department=row.department,
        month=row.month,
        opened=row.opened,
        decided=row.decided,
        decided_within_promised=row.decided_within_promised,
        decided_late=row.decided_late,
        decided_past_legal=row.decided_past_legal,
        overdue_promised=row.overdue_promised,
        overdue_legal=row.overdue_legal,
        in_correction=row.in_correction,
        corrected_repeatedly=row.corrected_repeatedly,
        decided_same_day=row.decided_same_day,
        resolved=row.resolved,
        fully_online=row.fully_online,
        materials_required=row.materials_required,
        materials_electronic=row.materials_electronic,
        **{name: value for name, value in optional.items() if value is not None},
    )


def case_message(case: SupervisedCase) -> supervision_pb2.SupervisedCase:
    """The message of one supervised case; no decision time or outcome while undecided."""
    message = supervision_pb2.SupervisedCase(
        number=case.number,
        item=case.item,
        item_version=case.item_version,
        department=case.department,
        applicant=case.applicant,
        state=_STATES[case.state],
        opened_at=timestamp(case.opened_at),
        promised_due_at=timestamp(case.promised_due_at),
        legal_due_at=timestamp(case.legal_due_at),
        outcome=_OUTCOMES[case.outcome] if case.outcome else cases_pb2.CASE_OUTCOME_UNSPECIFIED,
        corrections=case.corrections,
    )
    if case.decided_at is not None:
        message.decided_at.CopyFrom(timestamp(case.decided_at))
    return message


class SupervisionService(supervision_pb2_grpc.SupervisionServiceServicer):
    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        *,
        offset: timedelta,
        access_log: AccessLog,
        tokens: PageTokens,
        node_name: str,
    ) -> None:
        """``offset``: where the offices are, east of UTC (months are counted there);
        ``access_log``, ``node_name``: where and as whom list reads are logged;
        ``tokens``: the node's page tokens."""
        self._reader = SupervisionReader(pool, offset=offset)
        self._cases = SupervisedCasesReader(pool, access_log, tokens, node_name, offset=offset)
        self._clock = clock

    async def SupervisionReport(
        self, request: supervision_pb2.SupervisionReportRequest, context: Context
    ) -> supervision_pb2.SupervisionReportResponse:
        now = self._clock.now()
        report = await self._reader.report(
            current_caller(),
            request.department.strip(),
            request.from_month,
            request.to_month,
            now=now,
        )
        return supervision_pb2.SupervisionReportResponse(
            at=timestamp(now), rows=[row_message(r) for r in report.rows]
        )

    async def ListSupervisedCases(
        self, request: supervision_pb2.ListSupervisedCasesRequest, context: Context
    ) -> supervision_pb2.ListSupervisedCasesResponse:
        now = self._clock.now()
        caller = current_caller()
        page = await self._cases.cases(
            caller.department,
            caller.officer_id,
            KINDS_FROM_WIRE.get(request.kind),
            request.department.strip(),
            request.month,
            page_size=request.page_size,
            page_token=request.page_token,
            now=now,
        )
        return supervision_pb2.ListSupervisedCasesResponse(
            cases=[case_message(c) for c in page.cases],
            next_page_token=page.next_page_token,
            at=timestamp(now),
        )
