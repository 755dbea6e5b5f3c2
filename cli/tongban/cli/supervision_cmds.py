"""``tongban supervision report``: the supervision report (电子监察) over gRPC with a
department's bundle: per department and month the cases were opened in, the overdue
cases, those decided late, those sent to 补正 more than once, and the reports' figures
(docs/supervision.md). ``tongban supervision cases``: the cases behind the figures decided
late, decided past the legal date and 补正 more than once."""

from __future__ import annotations

import argparse
from datetime import timezone
from typing import Any

from tongban.cli.common import (
    add_utc_offset,
    department_client,
    department_options,
    emit,
    emit_listing,
    local_time,
    office_zone,
)
from tongban.cli.wire_json import instant_json, message_json
from tongban.client import CaseOutcome, ExchangeClient, SupervisedCase, SupervisionRow
from tongban.exchange.errors import InvalidArgument
from tongban.v1 import supervision_pb2

__all__ = ["KINDS", "add_parsers", "run_supervision"]

_COLUMNS = (
    ("DEPARTMENT", 14),
    ("MONTH", 7),
    ("OPENED", 7),
    ("DECIDED", 7),
    ("WITHIN", 7),
    ("LATE", 5),
    ("OVERDUE", 7),
    ("RED", 4),
    ("补正x2", 6),
    ("即办", 6),
    ("网办", 6),
    ("免提交", 6),
    ("DAYS", 5),
    ("PROMISED", 8),
    ("LEGAL", 6),
)
_LEGEND = (
    "WITHIN: decided within the promised limit / decided; LATE: decided after the promised "
    "date; OVERDUE / RED: open in 受理 past the promised date only / past the legal date; "
    "补正x2: sent to 补正 more than once; 即办: decided the day opened / decided; 网办: "
    "全程网办 / decided cases with a resolution; 免提交: required materials obtained "
    "electronically; DAYS, PROMISED, LEGAL: average calendar days from opening to the "
    "decision, the promised and the legal date (docs/supervision.md)"
)
# What `supervision cases --kind` accepts.
KINDS: dict[str, supervision_pb2.SupervisedCaseKind.ValueType] = {
    "late": supervision_pb2.SUPERVISED_CASE_KIND_DECIDED_LATE,
    "past-legal": supervision_pb2.SUPERVISED_CASE_KIND_DECIDED_PAST_LEGAL,
    "corrected": supervision_pb2.SUPERVISED_CASE_KIND_CORRECTED_REPEATEDLY,
}
_KIND_WORDS = {
    "late": "decided after its promised date",
    "past-legal": "decided after its legal date",
    "corrected": "sent to 补正 more than once",
}
_LIST_PAGE = 1000  # the most the node puts on one page
_OUTCOMES = {
    CaseOutcome.APPROVED: "approved",
    CaseOutcome.REFUSED: "refused",
}


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, parser_class: type[argparse.ArgumentParser]
) -> None:
    """Add ``tongban supervision report|cases`` to the ``tongban`` parser."""
    supervision = sub.add_parser("supervision", help="electronic supervision (电子监察)")
    supervision_sub = supervision.add_subparsers(
        dest="supervision_command", required=True, parser_class=parser_class
    )
    dept = department_options(parser_class)
    report = supervision_sub.add_parser(
        "report",
        parents=[common, dept],
        help="the supervision report per department and month the cases were opened in",
    )
    report.add_argument(
        "--department",
        default="",
        metavar="CODE",
        help="this department's (default: yours; with the auditor role, every department's)",
    )
    report.add_argument("--from", dest="from_month", default="", metavar="YYYY-MM")
    report.add_argument("--to", dest="to_month", default="", metavar="YYYY-MM")
    cases = supervision_sub.add_parser(
        "cases",
        parents=[common, dept],
        help="the cases decided late, decided past the legal date, or sent to 补正 more than "
        "once (logged)",
    )
    cases.add_argument("--kind", choices=list(KINDS), required=True)
    cases.add_argument(
        "--department",
        default="",
        metavar="CODE",
        help="this department's (default: yours; with the auditor role, every department's)",
    )
    cases.add_argument(
        "--month", default="", metavar="YYYY-MM", help="only the cases opened in this month"
    )
    cases.add_argument(
        "--limit", type=int, default=100, metavar="N", help="list at most N cases (default 100)"
    )
    add_utc_offset(cases)


def _percent(share: float | None) -> str:
    return "—" if share is None else f"{100 * share:.0f}%"


def _days(days: float | None) -> str:
    return "—" if days is None else f"{days:.1f}"


def _line(values: list[str]) -> str:
    cells = zip(values, _COLUMNS, strict=True)
    return " ".join(
        f"{v:<{w}}" if i < 2 else f"{v:>{w}}" for i, (v, (_, w)) in enumerate(cells)
    ).rstrip()


def _table(rows: list[SupervisionRow]) -> str:
    lines = [_line([name for name, _ in _COLUMNS])]
    for r in rows:
        lines.append(
            _line(
                [
                    r.department,
                    r.month,
                    str(r.opened),
                    str(r.decided),
                    _percent(r.within_promised_share),
                    str(r.decided_late),
                    str(r.overdue_promised),
                    str(r.overdue_legal),
                    str(r.corrected_repeatedly),
                    _percent(r.immediate_share),
                    _percent(r.fully_online_share),
                    _percent(r.no_submission_share),
                    _days(r.average_days),
                    _days(r.average_promised_days),
                    _days(r.average_legal_days),
                ]
            )
        )
    lines.append(_LEGEND)
    return "\n".join(lines)


def _case_line(case: SupervisedCase, kind: str, zone: timezone) -> str:
    if case.decided_at is not None:
        decided = f"decided {local_time(case.decided_at, zone)} {_OUTCOMES[case.outcome]}"
    else:
        decided = "not decided"
    due = case.legal_due_at if kind == "past-legal" else case.promised_due_at
    line = (
        f"{case.number:<28} {case.department:<14} {case.item:<28} {case.applicant:<20} "
        f"opened {local_time(case.opened_at, zone)} due {local_time(due, zone)} {decided}"
    )
    return line + (f" 补正x{case.corrections}" if kind == "corrected" else "")


async def _cases(client: ExchangeClient, args: argparse.Namespace) -> None:
    if args.limit < 1:
        raise InvalidArgument("--limit must be at least 1.", metadata={"field": "limit"})
    found: list[SupervisedCase] = []
    token = ""
    while len(found) < args.limit:
        page = await client.list_supervised_cases(
            KINDS[args.kind],
            args.department,
            args.month,
            page_size=min(_LIST_PAGE, args.limit - len(found)),
            page_token=token,
        )
        found.extend(page.cases)
        token = page.next_page_token
        if not token:
            break
    zone = office_zone(args)
    lines = [_case_line(c, args.kind, zone) for c in found]
    emit_listing(
        args,
        "cases",
        found,
        supervision_pb2.SupervisedCase,
        lines,
        more=bool(token),
        empty=f"no case {_KIND_WORDS[args.kind]}",
    )


async def run_supervision(args: argparse.Namespace) -> int:
    async with department_client(args) as client:
        if args.supervision_command == "cases":
            await _cases(client, args)
            return 0
        report = await client.supervision_report(args.department, args.from_month, args.to_month)
    rows = list(report.rows)
    emit(
        args,
        {
            "at": instant_json(report.at),
            "rows": [
                message_json(r, supervision_pb2.SupervisionRow, every_field=True) for r in rows
            ],
        },
        _table(rows) if rows else "no cases opened in those months",
    )
    return 0
