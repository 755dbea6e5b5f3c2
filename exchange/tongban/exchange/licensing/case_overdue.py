"""Who may read the overdue report (电子监察) and its list of cases, with signed page
tokens and the access-log entry of each list read.

A department reads its own cases' report and list; a department with the auditor role
reads any department's, or every one's. The list names applicants (a 公民身份号码 is
personal), so each read of it is one access-log entry (action ``case.overdue``, no
subject: it names many), and another department's attempt is logged as a denial, as
``CaseStore`` logs a refused ``case.read``. The counts name nobody and are not logged.
The queries are ``case_report``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from tongban.exchange.audit.log import AccessLog
from tongban.exchange.audit.recorder import AccessRecorder
from tongban.exchange.departments import Department
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.identity import Caller
from tongban.exchange.licensing.case_report import (
    MAX_PAGE,
    OverdueCase,
    OverdueReport,
    overdue_cases,
    overdue_report,
)
from tongban.exchange.licensing.cases import Overdue
from tongban.exchange.licensing.errors import CaseNotPermitted
from tongban.exchange.pagetokens import PageTokens

__all__ = [
    "AUDITOR_ROLE",
    "DEFAULT_PAGE",
    "LOG_ACTION",
    "OverduePage",
    "OverdueReader",
    "readable",
]

AUDITOR_ROLE = "auditor"
"""The role that reads every department's report and list (as it reads the access log)."""

LOG_ACTION = "case.overdue"
DEFAULT_PAGE = 100
"""Cases on a page when the caller names no size."""

_TOKENS = "cases.overdue"  # the scope of the list's page tokens, with severity and filter


@dataclass(frozen=True)
class OverduePage:
    """One page of the list, and the token of the next ("" at the end)."""

    cases: list[OverdueCase]
    next_page_token: str


def readable(reader: Department, department: str, what: str) -> str | None:
    """The department whose cases ``reader`` reads when it asks for ``department`` (""
    for its own, or for an auditor every one's): that code, or None for every department.
    The one rule of the overdue report, the supervision report and the cases behind it
    (``what`` names which, for the refusal). Raises CaseNotPermitted for another
    department's code without the auditor role."""
    own = reader.code
    if AUDITOR_ROLE in reader.roles:
        return department or None
    if department in ("", own):
        return own
    raise CaseNotPermitted(
        f"{own} reads {what} of its own department only; {department[:64]!r} is another "
        "department's (departments with the auditor role read every one's).",
        metadata={"department": department[:64]},
    )


def _severity(severity: Overdue) -> str:
    if severity is Overdue.NONE:
        raise InvalidArgument(
            "The overdue list is of cases past their promised date or past their legal date; "
            "ask for one of the two.",
            metadata={"field": "severity"},
        )
    return severity.name.lower()


class OverdueReader:
    """The overdue report and list through ``pool``, for callers allowed to read them;
    list reads logged in ``access_log`` as node ``node_name``; page tokens signed with
    ``tokens`` (the node's, so every node of the exchange accepts them)."""

    def __init__(
        self, pool: asyncpg.Pool, access_log: AccessLog, tokens: PageTokens, node_name: str
    ) -> None:
        self._pool = pool
        self._log = access_log
        self._tokens = tokens
        self._recorder = AccessRecorder(node_name)

    async def report(self, caller: Caller, department: str, *, now: datetime) -> OverdueReport:
        """The counts at ``now`` of the department(s) ``caller`` asked for (see
        ``readable``). Raises CaseNotPermitted."""
        return await overdue_report(
            self._pool,
            now=now,
            department=readable(caller.department, department, "the overdue report"),
        )

    async def cases(
        self,
        caller: Caller,
        severity: Overdue,
        department: str,
        *,
        page_size: int,
        page_token: str,
        now: datetime,
    ) -> OverduePage:
        """A page of the cases past their promised date only or past their legal date at
        ``now``, oldest due first, of the department(s) ``caller`` asked for; the read is
        logged. ``page_size`` 0 means ``DEFAULT_PAGE``.

        Raises InvalidArgument (no severity, a page size over ``MAX_PAGE``),
        CaseNotPermitted (logged as a denial), PageTokenInvalid, AuditUnavailable.
        """
        word = _severity(severity)
        if not 0 <= page_size <= MAX_PAGE:
            raise InvalidArgument(
                f"page_size must be 1 to {MAX_PAGE:,} (0 means {DEFAULT_PAGE}).",
                metadata={"field": "page_size"},
            )
        described = f"overdue {word}" + (f" department={department}" if department else "")
        try:
            scope = readable(caller.department, department, "the overdue report")
        except CaseNotPermitted as refused:
            await self._append(caller, described, now, "denied", refused.reason)
            raise
        listing = f"{_TOKENS} {word} {scope or '*'}"
        after = self._tokens.open(listing, page_token)
        size = page_size or DEFAULT_PAGE
        found = await overdue_cases(
            self._pool, now=now, department=scope, severity=severity, limit=size, after=after
        )
        # A full page may be the last one: look one case further before handing out a token.
        more = len(found) == size and bool(
            await overdue_cases(
                self._pool,
                now=now,
                department=scope,
                severity=severity,
                limit=1,
                after=found[-1].position,
            )
        )
        # Logged once the request is known to be valid, before the answer leaves.
        await self._append(caller, described, now, "allowed", None)
        return OverduePage(found, self._tokens.issue(listing, found[-1].position) if more else "")

    async def _append(
        self,
        caller: Caller,
        described: str,
        now: datetime,
        decision: Literal["allowed", "denied"],
        reason: str | None,
    ) -> None:
        await self._log.append(
            [
                self._recorder.entry(
                    at=now,
                    department=caller.department.code,
                    officer=caller.officer_id,
                    action=LOG_ACTION,
                    purpose=described,
                    decision=decision,
                    reason=reason,
                )
            ]
        )
