"""``tongban case``: cases (办件) of the items a department handles, over gRPC with its
bundle: ``open``, ``move`` and ``status`` (what a clerk at the window tells the applicant:
state, due dates, whether overdue, and what happened when), and ``overdue`` (the overdue
report, 电子监察: the counts per department, or the cases past one of their dates)."""

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
    message_dict,
    office_zone,
)
from tongban.cli.wire_json import instant_json, message_json
from tongban.client import (
    Case,
    CaseOutcome,
    CaseOverdue,
    CaseState,
    ExchangeClient,
    MaterialKind,
    MaterialState,
    OverdueCase,
)
from tongban.exchange.errors import InvalidArgument
from tongban.v1 import cases_pb2

__all__ = ["MOVES", "SEVERITIES", "STATE_WORDS", "add_parsers", "run_case"]

# What `case move CASE STATE` accepts: the state, and the outcome for 办结.
MOVES: dict[str, tuple[cases_pb2.CaseState.ValueType, cases_pb2.CaseOutcome.ValueType]] = {
    "accepted": (cases_pb2.CASE_STATE_ACCEPTED, cases_pb2.CASE_OUTCOME_UNSPECIFIED),
    "correction": (cases_pb2.CASE_STATE_CORRECTION, cases_pb2.CASE_OUTCOME_UNSPECIFIED),
    "approved": (cases_pb2.CASE_STATE_DECIDED, cases_pb2.CASE_OUTCOME_APPROVED),
    "refused": (cases_pb2.CASE_STATE_DECIDED, cases_pb2.CASE_OUTCOME_REFUSED),
    "delivered": (cases_pb2.CASE_STATE_DELIVERED, cases_pb2.CASE_OUTCOME_UNSPECIFIED),
    "not-accepted": (cases_pb2.CASE_STATE_NOT_ACCEPTED, cases_pb2.CASE_OUTCOME_UNSPECIFIED),
    "withdrawn": (cases_pb2.CASE_STATE_WITHDRAWN, cases_pb2.CASE_OUTCOME_UNSPECIFIED),
}
_ALIASES = {
    "受理": "accepted",
    "补正": "correction",
    "准予": "approved",
    "不予许可": "refused",
    "送达": "delivered",
    "不予受理": "not-accepted",
    "撤回": "withdrawn",
}
STATE_WORDS = {
    CaseState.UNSPECIFIED: "—",
    CaseState.ACCEPTED: "受理 accepted",
    CaseState.CORRECTION: "补正 correction requested",
    CaseState.DECIDED: "办结 decided",
    CaseState.DELIVERED: "送达 delivered",
    CaseState.NOT_ACCEPTED: "不予受理 not accepted",
    CaseState.WITHDRAWN: "撤回 withdrawn",
}
# What `case overdue --severity` accepts.
SEVERITIES: dict[str, cases_pb2.CaseOverdue.ValueType] = {
    "promised": cases_pb2.CASE_OVERDUE_PROMISED,
    "legal": cases_pb2.CASE_OVERDUE_LEGAL,
}
_LIST_PAGE = 1000  # the most the node puts on one page of the overdue list
_OVERDUE_WORDS = {
    CaseOverdue.NONE: "no",
    CaseOverdue.PROMISED: "YES, past the promised date (超承诺时限, yellow 黄牌)",
    CaseOverdue.LEGAL: "YES, past the legal date (超法定时限, red 红牌)",
}


def _move_name(text: str) -> str:
    name = _ALIASES.get(text.strip(), text.strip().lower().replace("_", "-"))
    if name not in MOVES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a state to move to; use one of {', '.join(MOVES)} "
            f"(or {', '.join(_ALIASES)})"
        )
    return name


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, parser_class: type[argparse.ArgumentParser]
) -> None:
    """Add ``tongban case open|move|status|overdue`` to the ``tongban`` parser."""
    dept = department_options(parser_class)

    case = sub.add_parser("case", help="cases (办件) of the items your department handles")
    case_sub = case.add_subparsers(dest="case_command", required=True, parser_class=parser_class)
    opening = case_sub.add_parser(
        "open", parents=[common, dept], help="accept (受理) a case for an item and an applicant"
    )
    opening.add_argument("item", help="the item's code (实施编码)")
    opening.add_argument("applicant", help="统一社会信用代码 or 公民身份号码")
    opening.add_argument("--reason", default="", help="a note for the history")
    opening.add_argument(
        "--package",
        default="",
        metavar="NUMBER",
        help="the opened package (一件事) whose ready step for this item the case is",
    )
    move = case_sub.add_parser(
        "move",
        parents=[common, dept],
        help="move a case: accepted, correction, approved, refused, delivered, not-accepted, "
        "withdrawn",
    )
    move.add_argument("case", help="the case number (办件编号)")
    move.add_argument("state", type=_move_name, help="the state to move to")
    move.add_argument("--reason", default="", help="why (required for correction, refused, …)")
    move.add_argument("--licence", default="", help="for approved: the licence number issued")
    status = case_sub.add_parser(
        "status", parents=[common, dept], help="a case's state, due dates and history"
    )
    status.add_argument("case", help="the case number (办件编号)")
    follow = []
    for name, what in (
        ("defer", "容缺受理: a material of the case follows within its defer days"),
        ("commit", "告知承诺: the applicant's commitment replaces a material, checked later"),
        ("supply", "the deferred material arrived"),
        ("check", "record the check of a commitment (a department supervising the item)"),
    ):
        parser = case_sub.add_parser(name, parents=[common, dept], help=what)
        parser.add_argument("case", help="the case number (办件编号)")
        parser.add_argument("material", help="the material's code in the item")
        follow.append(parser)
    follow[3].add_argument(
        "result", choices=("passed", "failed"), help="whether the commitment held"
    )
    follow[3].add_argument("--note", default="", help="what the check found (for failed)")
    overdue = case_sub.add_parser(
        "overdue",
        parents=[common, dept],
        help="the overdue report (电子监察): counts per department, or the overdue cases",
    )
    overdue.add_argument(
        "--department",
        default="",
        metavar="CODE",
        help="this department's (default: yours; with the auditor role, every department's)",
    )
    overdue.add_argument(
        "--severity",
        choices=sorted(SEVERITIES),
        help="list the cases past their promised date only (黄牌) or past their legal date "
        "(红牌) instead of the counts",
    )
    overdue.add_argument(
        "--limit", type=int, default=100, metavar="N", help="list at most N cases (default 100)"
    )
    for each in (opening, move, status, overdue, *follow):
        add_utc_offset(each)


def _case_dict(case: Case) -> dict[str, Any]:
    return message_dict(case, cases_pb2.Case)


def _summary(case: Case, zone: timezone) -> list[str]:
    lines = [
        f"{case.number} — {case.item} v{case.item_version} for {case.applicant} "
        f"(handled by {case.department})",
        f"  state: {STATE_WORDS[case.state]}",
        f"  opened: {local_time(case.opened_at, zone)}",
        f"  due: promised {local_time(case.promised_due_at, zone)}, legal "
        f"{local_time(case.legal_due_at, zone)}"
        + (f" ({case.stopped_days} working days stopped in 补正)" if case.stopped_days else ""),
        f"  overdue: {_OVERDUE_WORDS[case.overdue]}",
    ]
    if case.outcome is CaseOutcome.APPROVED:
        lines.append(f"  decision: approved, licence {case.licence_number}")
    elif case.outcome is CaseOutcome.REFUSED:
        lines.append(f"  decision: refused — {case.refusal_reason}")
    return lines


def _count_row(name: str, row: tuple[int, int, int, int]) -> str:
    return f"{name:<16} {row[0]:>7} {row[1]:>11} {row[2]:>14} {row[3]:>11}"


async def _overdue_counts(client: ExchangeClient, args: argparse.Namespace) -> None:
    report = await client.overdue_report(args.department)
    rows = [
        (d.department, (d.open, d.in_correction, d.past_promised, d.past_legal))
        for d in report.departments
    ]
    lines = [
        f"{'DEPARTMENT':<16} {'OPEN':>7} {'CORRECTION':>11} {'PAST PROMISED':>14} "
        f"{'PAST LEGAL':>11}",
        *(_count_row(name, row) for name, row in rows),
    ]
    if len(rows) > 1:
        totals = tuple(sum(row[i] for _, row in rows) for i in range(4))
        lines.append(_count_row("total", (totals[0], totals[1], totals[2], totals[3])))
    lines.append(
        "past promised: 超承诺时限 (黄牌), within the legal date; past legal: 超法定时限 (红牌); "
        "cases in 补正 (correction) are never counted overdue"
    )
    emit(
        args,
        {
            "at": instant_json(report.at),
            "departments": [
                message_json(d, cases_pb2.DepartmentOverdue, every_field=True)
                for d in report.departments
            ],
        },
        "\n".join(lines) if rows else "no open cases",
    )


async def _overdue_list(client: ExchangeClient, args: argparse.Namespace, zone: timezone) -> None:
    if args.limit < 1:
        raise InvalidArgument("--limit must be at least 1.", metadata={"field": "limit"})
    severity = SEVERITIES[args.severity]
    found: list[OverdueCase] = []
    token = ""
    while len(found) < args.limit:
        page = await client.list_overdue_cases(
            severity,
            args.department,
            page_size=min(_LIST_PAGE, args.limit - len(found)),
            page_token=token,
        )
        found.extend(page.cases)
        token = page.next_page_token
        if not token:
            break
    date = "promised" if args.severity == "promised" else "legal"
    lines = [
        f"{c.number:<28} {c.item:<28} {c.applicant:<20} {date} due {local_time(c.due_at, zone)}"
        for c in found
    ]
    emit_listing(
        args,
        "cases",
        found,
        cases_pb2.OverdueCase,
        lines,
        more=bool(token),
        empty=f"no case past its {date} date",
    )


_MATERIAL_STATES = {
    MaterialState.OPEN: "open",
    MaterialState.SUPPLIED: "supplied (补齐)",
    MaterialState.CHECKED: "checked, held (核查属实)",
    MaterialState.BREACHED: "BREACHED (逾期未补 / 承诺不实)",
}


async def _follow_through(client: ExchangeClient, args: argparse.Namespace, zone: timezone
                          ) -> None:  # fmt: skip
    if args.case_command == "defer":
        row = await client.defer_material(args.case, args.material)
    elif args.case_command == "commit":
        row = await client.accept_commitment(args.case, args.material)
    elif args.case_command == "supply":
        row = await client.supply_material(args.case, args.material)
    else:
        row = await client.record_commitment_check(
            args.case, args.material, passed=args.result == "passed", note=args.note
        )
    kind = "容缺 deferred" if row.kind is MaterialKind.DEFERRED else "告知承诺 committed"
    emit(
        args,
        {"material": message_dict(row, cases_pb2.CaseMaterial)},
        f"{row.case_number} / {row.material}: {kind}, {_MATERIAL_STATES[row.state]}, "
        f"due {local_time(row.due_at, zone)}",
    )


async def run_case(args: argparse.Namespace) -> int:
    zone = office_zone(args)
    async with department_client(args) as client:
        if args.case_command == "overdue":
            if args.severity is None:
                await _overdue_counts(client, args)
            else:
                await _overdue_list(client, args, zone)
        elif args.case_command in ("defer", "commit", "supply", "check"):
            await _follow_through(client, args, zone)
        elif args.case_command == "open":
            case = await client.open_case(
                args.item, args.applicant, reason=args.reason, package_number=args.package
            )
            emit(args, {"case": _case_dict(case)}, "\n".join(["opened", *_summary(case, zone)]))
        elif args.case_command == "move":
            target, outcome = MOVES[args.state]
            case = await client.move_case(
                args.case,
                target,
                reason=args.reason,
                outcome=outcome,
                licence_number=args.licence,
            )
            emit(args, {"case": _case_dict(case)}, "\n".join(["moved", *_summary(case, zone)]))
        else:
            case = await client.get_case(args.case)
            history = [
                f"    {local_time(t.at, zone)}  {STATE_WORDS[t.from_state]} → "
                f"{STATE_WORDS[t.to_state]}  by {t.department}"
                + (f"/{t.officer}" if t.officer else "")
                + (f": {t.reason}" if t.reason else "")
                for t in case.history
            ]
            emit(
                args,
                {"case": _case_dict(case)},
                "\n".join([*_summary(case, zone), "  history:", *history]),
            )
    return 0
