"""gRPC servicer of electronic supervision (电子监察): messages in and out of
``SupervisionReader``. Errors are ``TongbanError``s, mapped to statuses by the
interceptor."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg
import grpc

from tongban.exchange.licensing.supervision import SupervisionReader, SupervisionRow
from tongban.exchange.server.caller import current_caller
from tongban.exchange.server.timestamps import timestamp
from tongban.signing.clock import Clock
from tongban.v1 import supervision_pb2, supervision_pb2_grpc

__all__ = ["SupervisionService", "row_message"]

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


class SupervisionService(supervision_pb2_grpc.SupervisionServiceServicer):
    def __init__(self, pool: asyncpg.Pool, clock: Clock, *, offset: timedelta) -> None:
        """``offset``: where the offices are, east of UTC (months are counted there)."""
        self._reader = SupervisionReader(pool, offset=offset)
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
