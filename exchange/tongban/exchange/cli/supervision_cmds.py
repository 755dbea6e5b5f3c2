"""``tongban supervision report``: the supervision report (电子监察) over gRPC with a
department's bundle: per department and month the cases were opened in, the overdue
cases, those decided late, those sent to 补正 more than once, and the reports' figures
(docs/supervision.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from tongban.client import Bundle, ExchangeClient
from tongban.exchange.cli.commands import emit
from tongban.v1 import supervision_pb2

__all__ = ["add_parsers", "run_supervision"]

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


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, parser_class: type[argparse.ArgumentParser]
) -> None:
    """Add ``tongban supervision report`` to the ``tongban`` parser."""
    supervision = sub.add_parser("supervision", help="electronic supervision (电子监察)")
    supervision_sub = supervision.add_subparsers(
        dest="supervision_command", required=True, parser_class=parser_class
    )
    report = supervision_sub.add_parser(
        "report",
        parents=[common],
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
    report.add_argument(
        "--as",
        dest="bundle",
        type=Path,
        required=True,
        metavar="BUNDLE",
        help="act as the department of this bundle directory",
    )
    report.add_argument("--endpoint", help="node address (default: the bundle's)")
    report.add_argument("--officer", help="officer id (工号) sent with the calls")


def _percent(row: supervision_pb2.SupervisionRow, field: str) -> str:
    return f"{100 * getattr(row, field):.0f}%" if row.HasField(field) else "—"  # type: ignore[arg-type]


def _days(row: supervision_pb2.SupervisionRow, field: str) -> str:
    return f"{getattr(row, field):.1f}" if row.HasField(field) else "—"  # type: ignore[arg-type]


def _line(values: list[str]) -> str:
    cells = zip(values, _COLUMNS, strict=True)
    return " ".join(
        f"{v:<{w}}" if i < 2 else f"{v:>{w}}" for i, (v, (_, w)) in enumerate(cells)
    ).rstrip()


def _table(rows: list[supervision_pb2.SupervisionRow]) -> str:
    lines = [_line([name for name, _ in _COLUMNS])]
    for r in rows:
        lines.append(
            _line(
                [
                    r.department,
                    r.month,
                    str(r.opened),
                    str(r.decided),
                    _percent(r, "within_promised_share"),
                    str(r.decided_late),
                    str(r.overdue_promised),
                    str(r.overdue_legal),
                    str(r.corrected_repeatedly),
                    _percent(r, "immediate_share"),
                    _percent(r, "fully_online_share"),
                    _percent(r, "no_submission_share"),
                    _days(r, "average_days"),
                    _days(r, "average_promised_days"),
                    _days(r, "average_legal_days"),
                ]
            )
        )
    lines.append(_LEGEND)
    return "\n".join(lines)


async def run_supervision(args: argparse.Namespace) -> int:
    async with ExchangeClient(
        Bundle.load(args.bundle), target=args.endpoint, officer_id=args.officer
    ) as client:
        report = await client.supervision_report(args.department, args.from_month, args.to_month)
    rows = list(report.rows)
    emit(
        args,
        {
            "at": report.at.ToJsonString(),
            "rows": [
                MessageToDict(
                    r, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
                )
                for r in rows
            ],
        },
        _table(rows) if rows else "no cases opened in those months",
    )
    return 0
