"""gRPC servicer of ratings (好差评): rectifications for departments, the overdue ones and
the ratings check for auditors; messages in and out of ``RatingStore``. Errors are
``TongbanError``s, mapped to statuses by the interceptor."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import grpc

from tongban.exchange.errors import AuditorRoleRequired
from tongban.exchange.licensing.ratings import (
    RatedCase,
    RatingStore,
    verify_ratings,
)
from tongban.exchange.server.caller import current_caller
from tongban.exchange.server.timestamps import timestamp
from tongban.signing.clock import Clock
from tongban.v1 import ratings_pb2, ratings_pb2_grpc

__all__ = ["RatingService", "rated_case_message"]

Context = grpc.aio.ServicerContext[Any, Any]


def rated_case_message(case: RatedCase, now: datetime) -> ratings_pb2.RatedCase:
    fix = case.rectification
    return ratings_pb2.RatedCase(
        case_number=case.case_number,
        item=case.item,
        department=case.department,
        applicant=case.applicant,
        ratings=[
            ratings_pb2.Rating(
                round=r.round,
                score=r.score,
                comment=r.comment,
                rated_at=timestamp(r.rated_at),
                officer=r.officer or "",
                via=r.via,
            )
            for r in case.ratings
        ],
        rectification=None
        if fix is None
        else ratings_pb2.Rectification(
            opened_at=timestamp(fix.opened_at),
            due_at=timestamp(fix.due_at),
            answer=fix.answer or "",
            answered_at=timestamp(fix.answered_at),
            answered_by=fix.answered_by or "",
            overdue=fix.overdue(now),
        ),
    )


class RatingService(ratings_pb2_grpc.RatingServiceServicer):
    def __init__(self, ratings: RatingStore, clock: Clock, *, pool: asyncpg.Pool) -> None:
        self._ratings = ratings
        self._clock = clock
        self._pool = pool

    async def ListRectifications(
        self, request: ratings_pb2.ListRectificationsRequest, context: Context
    ) -> ratings_pb2.ListRectificationsResponse:
        now = self._clock.now()
        found = await self._ratings.rectifications(
            current_caller(), open_only=request.open_only, page_size=request.page_size, now=now
        )
        return ratings_pb2.ListRectificationsResponse(
            cases=[rated_case_message(c, now) for c in found], at=timestamp(now)
        )

    async def AnswerRectification(
        self, request: ratings_pb2.AnswerRectificationRequest, context: Context
    ) -> ratings_pb2.RatedCase:
        now = self._clock.now()
        case = await self._ratings.answer(
            current_caller(), request.case_number, request.answer, now=now
        )
        return rated_case_message(case, now)

    async def ListOverdueRectifications(
        self, request: ratings_pb2.ListOverdueRectificationsRequest, context: Context
    ) -> ratings_pb2.ListRectificationsResponse:
        now = self._clock.now()
        found = await self._ratings.overdue(
            current_caller(), request.department.strip(), page_size=request.page_size, now=now
        )
        return ratings_pb2.ListRectificationsResponse(
            cases=[rated_case_message(c, now) for c in found], at=timestamp(now)
        )

    async def VerifyRatings(
        self, request: ratings_pb2.VerifyRatingsRequest, context: Context
    ) -> ratings_pb2.VerifyRatingsResponse:
        caller = current_caller()
        if "auditor" not in caller.department.roles:
            raise AuditorRoleRequired(
                "Only departments with the auditor role check the ratings against the access "
                "log; ask the operator to grant the role.",
                metadata={"department": caller.department.code},
            )
        report = await verify_ratings(self._pool)
        return ratings_pb2.VerifyRatingsResponse(
            ratings=report.ratings,
            rectifications=report.rectifications,
            answers=report.answers,
            entries=report.entries,
        )
