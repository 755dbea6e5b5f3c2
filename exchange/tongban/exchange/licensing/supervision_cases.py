"""The cases behind the supervision report's figures (电子监察): those decided after their
promised date, after their legal date, and those sent to 补正 more than once, a page at a
time, for the callers allowed to read the report.

Each kind is the report's figure of the same name (``licensing/supervision.py``), over the
same rows: a department's cases, those opened in one month where the offices are if asked,
so a list of a department and month holds exactly as many cases as the report's cell.
Pages are by ``opened_at``, then number (keyset, the index
``service_case_department_opened``); the repeated 补正 is counted per case through the
partial index ``service_case_history_corrections`` (migration 0016).

The list names applicants, so each read is one access-log entry (action
``case.supervision``, the query in the purpose, no subject: it names many), and a refused
one is logged as a denial, as ``OverdueReader`` logs the overdue list.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Literal

import asyncpg

from tongban.exchange.audit.log import AccessLog
from tongban.exchange.audit.recorder import AccessRecorder
from tongban.exchange.departments import Department, DepartmentStore
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.licensing.case_overdue import DEFAULT_PAGE, readable
from tongban.exchange.licensing.case_report import MAX_PAGE, parse_position, position
from tongban.exchange.licensing.errors import CaseNotPermitted
from tongban.exchange.licensing.supervision import parse_month
from tongban.exchange.pagetokens import PageTokens

__all__ = [
    "LOG_ACTION",
    "SupervisedCase",
    "SupervisedCaseKind",
    "SupervisedCasesPage",
    "SupervisedCasesReader",
    "supervised_cases",
]

LOG_ACTION = "case.supervision"
_TOKENS = "cases.supervision"  # the scope of the page tokens, with kind, department, month


class SupervisedCaseKind(enum.Enum):
    """Which of the report's figures a list is of; the value is its word in logs, tokens,
    the CLI and the console."""

    DECIDED_LATE = "late"
    """Decided after the promised date (those after the legal date included)."""
    DECIDED_PAST_LEGAL = "past-legal"
    """Decided after the legal date."""
    CORRECTED_REPEATEDLY = "corrected"
    """Moved into 补正 two or more times, decided or not."""


@dataclass(frozen=True)
class SupervisedCase:
    """A case as the list shows it."""

    number: str
    item: str
    item_version: int
    department: str
    applicant: str
    state: str
    opened_at: datetime
    promised_due_at: datetime
    legal_due_at: datetime
    decided_at: datetime | None
    outcome: str | None
    """``approved`` or ``refused``; None while undecided."""
    corrections: int
    """Transitions into 补正 (for ``CORRECTED_REPEATEDLY``; 0 for the other kinds)."""

    @property
    def position(self) -> str:
        """Where the next page starts: pass it as ``after`` to ``supervised_cases``."""
        return position(self.opened_at, self.number)


_LIST = """
    SELECT c.number, c.item, c.item_version, c.department, c.applicant, c.state,
           c.opened_at, c.promised_due_at, c.legal_due_at, c.decided_at, c.outcome,
           {corrections} AS corrections
    FROM service_case c
    {join}
    WHERE {where}
    ORDER BY c.opened_at, c.number
    LIMIT $1
"""
# Counted per case on the partial index, only for the cases the page reaches.
_CORRECTIONS = """
    JOIN LATERAL (
        SELECT count(*) AS n FROM service_case_history h
        WHERE h.case_number = c.number AND h.to_state = 'correction'
    ) corrected ON corrected.n > 1
"""
_KIND_WHERE = {
    SupervisedCaseKind.DECIDED_LATE: "c.decided_at > c.promised_due_at",
    SupervisedCaseKind.DECIDED_PAST_LEGAL: "c.decided_at > c.legal_due_at",
    SupervisedCaseKind.CORRECTED_REPEATEDLY: "true",
}


async def supervised_cases(
    pool: asyncpg.Pool,
    kind: SupervisedCaseKind,
    *,
    department: str | None,
    month: date | None,
    offset: timedelta,
    limit: int,
    after: str | None = None,
) -> list[SupervisedCase]:
    """A page of the cases of ``kind``, by opening then number: ``department``'s only if
    given, those opened in ``month`` only if given (its first day; counted where the offices
    are, ``offset`` east of UTC). At most ``limit`` cases, after the case whose
    ``position`` is ``after``.

    Raises InvalidArgument for a limit outside 1..``MAX_PAGE`` or an ``after`` that is
    not a position."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidArgument(
            f"A page holds 1 to {MAX_PAGE} cases (asked for {limit}).",
            metadata={"field": "limit"},
        )
    return await _select(
        pool, kind, department=department, month=month, offset=offset, limit=limit, after=after
    )


async def _select(
    pool: asyncpg.Pool,
    kind: SupervisedCaseKind,
    *,
    department: str | None,
    month: date | None,
    offset: timedelta,
    limit: int,
    after: str | None,
) -> list[SupervisedCase]:
    args: list[object] = [limit]
    where = [_KIND_WHERE[kind]]
    if department is not None:
        args.append(department)
        where.append(f"c.department = ${len(args)}")
    if month is not None:
        zone = timezone(offset)
        after_month = date(month.year + month.month // 12, month.month % 12 + 1, 1)
        args += [
            datetime(month.year, month.month, 1, tzinfo=zone),
            datetime(after_month.year, after_month.month, 1, tzinfo=zone),
        ]
        where.append(f"c.opened_at >= ${len(args) - 1} AND c.opened_at < ${len(args)}")
    if after is not None:
        at, number = parse_position(
            after, listing="the supervised cases", attribute="SupervisedCase.position"
        )
        args += [at, number]
        where.append(f"(c.opened_at, c.number) > (${len(args) - 1}, ${len(args)})")
    repeated = kind is SupervisedCaseKind.CORRECTED_REPEATEDLY
    rows = await pool.fetch(
        _LIST.format(
            corrections="corrected.n" if repeated else "0",
            join=_CORRECTIONS if repeated else "",
            where=" AND ".join(where),
        ),
        *args,
    )
    return [
        SupervisedCase(
            number=r["number"],
            item=r["item"],
            item_version=r["item_version"],
            department=r["department"],
            applicant=r["applicant"],
            state=r["state"],
            opened_at=r["opened_at"],
            promised_due_at=r["promised_due_at"],
            legal_due_at=r["legal_due_at"],
            decided_at=r["decided_at"],
            outcome=r["outcome"],
            corrections=r["corrections"],
        )
        for r in rows
    ]


@dataclass(frozen=True)
class SupervisedCasesPage:
    """One page of the list, and the token of the next ("" at the end)."""

    cases: list[SupervisedCase]
    next_page_token: str


class SupervisedCasesReader:
    """The supervised cases through ``pool`` for departments allowed to read them; reads
    logged in ``access_log`` as node ``node_name``; page tokens signed with ``tokens``
    (the node's, so every node of the exchange, and the console, accepts them); months
    counted ``offset`` east of UTC."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        access_log: AccessLog,
        tokens: PageTokens,
        node_name: str,
        *,
        offset: timedelta,
    ) -> None:
        self._pool = pool
        self._log = access_log
        self._tokens = tokens
        self._recorder = AccessRecorder(node_name)
        self._offset = offset
        self._departments = DepartmentStore(pool)

    async def cases(
        self,
        reader: Department,
        officer: str | None,
        kind: SupervisedCaseKind | None,
        department: str,
        month: str,
        *,
        page_size: int,
        page_token: str,
        now: datetime,
    ) -> SupervisedCasesPage:
        """A page of the cases of ``kind`` of the department ``reader`` asked for (as
        ``readable``), opened in ``month`` (``YYYY-MM``; "" for any); the read is logged
        at ``now`` as ``reader``'s and ``officer``'s. ``page_size`` 0 means
        ``DEFAULT_PAGE``.

        Raises InvalidArgument (no kind, a malformed month, a page size over
        ``MAX_PAGE``), CaseNotPermitted (logged as a denial), DepartmentNotFound (an
        auditor naming no registered department), PageTokenInvalid, AuditUnavailable."""
        if kind is None:
            raise InvalidArgument(
                "Ask for the cases decided late, decided past the legal date, or sent to "
                "补正 more than once.",
                metadata={"field": "kind"},
            )
        if not 0 <= page_size <= MAX_PAGE:
            raise InvalidArgument(
                f"page_size must be 1 to {MAX_PAGE:,} (0 means {DEFAULT_PAGE}).",
                metadata={"field": "page_size"},
            )
        first = parse_month(month, field="month") if month.strip() else None
        word = first.strftime("%Y-%m") if first else ""
        described = (
            f"supervision {kind.value}"
            + (f" department={department}" if department else "")
            + (f" month={word}" if word else "")
        )
        try:
            scope = readable(reader, department, "the supervised cases")
        except CaseNotPermitted as refused:
            await self._append(reader, officer, described, now, "denied", refused.reason)
            raise
        if scope is not None and scope != reader.code:
            await self._departments.get(scope)  # DepartmentNotFound
        listing = f"{_TOKENS} {kind.value} {scope or '*'} {word or '*'}"
        after = self._tokens.open(listing, page_token)
        size = page_size or DEFAULT_PAGE
        # One case more than the page tells whether there is a next, in the same statement.
        found = await _select(
            self._pool,
            kind,
            department=scope,
            month=first,
            offset=self._offset,
            limit=size + 1,
            after=after,
        )
        more = len(found) > size
        found = found[:size]
        # Logged once the request is known to be valid, before the answer leaves.
        await self._append(reader, officer, described, now, "allowed", None)
        return SupervisedCasesPage(
            found, self._tokens.issue(listing, found[-1].position) if more else ""
        )

    async def _append(
        self,
        reader: Department,
        officer: str | None,
        described: str,
        now: datetime,
        decision: Literal["allowed", "denied"],
        reason: str | None,
    ) -> None:
        await self._log.append(
            [
                self._recorder.entry(
                    at=now,
                    department=reader.code,
                    officer=officer,
                    action=LOG_ACTION,
                    purpose=described,
                    decision=decision,
                    reason=reason,
                )
            ]
        )
