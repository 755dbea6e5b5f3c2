"""``tongban rating``: ratings (好差评) over gRPC with a department's bundle:
``rectifications`` (the department's rectifications of bad ratings), ``answer`` (answer
one), ``overdue`` (the auditor's list of unanswered rectifications past due) and
``verify`` (the auditor's check of every rating row against the access log)."""

from __future__ import annotations

import argparse
from datetime import timezone
from typing import Any

from tongban.cli.common import (
    add_utc_offset,
    department_client,
    department_options,
    emit,
    local_time,
    message_dict,
    office_zone,
)
from tongban.client import RatedCase
from tongban.v1 import ratings_pb2

__all__ = ["add_parsers", "run_rating"]


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, parser_class: type[argparse.ArgumentParser]
) -> None:
    """Add ``tongban rating rectifications|answer|overdue|verify`` to the parser."""
    dept = department_options(parser_class)
    add_utc_offset(dept)
    dept.add_argument(
        "--limit", type=int, default=100, metavar="N", help="list at most N (1-1000, default 100)"
    )

    rating = sub.add_parser("rating", help="ratings (好差评) and rectifications (整改)")
    rating_sub = rating.add_subparsers(
        dest="rating_command", required=True, parser_class=parser_class
    )
    listing = rating_sub.add_parser(
        "rectifications",
        parents=[common, dept],
        help="your department's rectifications of bad ratings, oldest due first",
    )
    listing.add_argument("--open", action="store_true", help="only those not answered yet")
    answer = rating_sub.add_parser(
        "answer", parents=[common, dept], help="answer the rectification of one of your cases"
    )
    answer.add_argument("case", help="the case number (办件编号)")
    answer.add_argument("text", help="what the department did about it (1-1000 characters)")
    overdue = rating_sub.add_parser(
        "overdue",
        parents=[common, dept],
        help="unanswered rectifications past due (auditor role)",
    )
    overdue.add_argument("--department", default="", metavar="CODE", help="this department's only")
    rating_sub.add_parser(
        "verify",
        parents=[common, dept],
        help="check every rating row against its access-log entry (auditor role)",
    )


def _lines(case: RatedCase, zone: timezone) -> list[str]:
    fix = case.rectification
    lines = [f"{case.case_number} — {case.item} ({case.department}), applicant {case.applicant}"]
    for r in case.ratings:
        word = "rating" if r.round == 1 else "re-rating"
        lines.append(
            f"  {word}: {r.score}/5 on {local_time(r.rated_at, zone)}"
            + (f", decided by {r.officer}" if r.officer and r.round == 1 else "")
            + (f" — {r.comment}" if r.comment else "")
        )
    if fix is not None:
        state = (
            f"answered {local_time(fix.answered_at, zone)}: {fix.answer}"
            if fix.answer and fix.answered_at is not None
            else "not answered"
        )
        late = " — OVERDUE" if fix.overdue else ""
        lines.append(f"  rectification (整改) due {local_time(fix.due_at, zone)}, {state}{late}")
    return lines


async def run_rating(args: argparse.Namespace) -> int:
    zone = office_zone(args)
    client = department_client(args)
    async with client:
        if args.rating_command == "answer":
            case = await client.answer_rectification(args.case, args.text)
            emit(
                args,
                {"case": message_dict(case, ratings_pb2.RatedCase)},
                "\n".join(["answered", *_lines(case, zone)]),
            )
            return 0
        if args.rating_command == "verify":
            report = await client.verify_ratings()
            emit(
                args,
                message_dict(report, ratings_pb2.VerifyRatingsResponse),
                f"ratings intact: {report.ratings} ratings, {report.rectifications} "
                f"rectifications and {report.answers} answers match their "
                f"{report.entries} access-log entries",
            )
            return 0
        if args.rating_command == "overdue":
            page = await client.list_overdue_rectifications(args.department, page_size=args.limit)
            empty = "no rectification past due"
        else:
            page = await client.list_rectifications(open_only=args.open, page_size=args.limit)
            empty = "no rectifications"
        lines = [line for case in page.cases for line in _lines(case, zone)]
        emit(
            args,
            {"cases": [message_dict(c, ratings_pb2.RatedCase) for c in page.cases]},
            "\n".join(lines) or empty,
        )
    return 0
