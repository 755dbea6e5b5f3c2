"""Cases (办件): the state machine of an application for a service item and its due
dates in working days. Pure: ``case_store`` reads and writes what these functions decide.

States: 受理 (accepted) → (补正 correction ↔ 受理) → 办结 (decided: approved with the
licence issued, or refused with a reason) → 送达 (delivered); or 不予受理 (not accepted) /
撤回 (withdrawn) from the open states (受理, 补正). Nothing follows 送达, 不予受理 or 撤回.

The clock rule: the promised and legal due dates are the last instant of the N-th working
day after the day the case was opened (where the offices are), N being the item's
promised and legal limits; a 即办 item is due by the end of the day it was opened. 补正
stops the clock: when the case returns to 受理, the working days after the day 补正 was
asked for, up to and including the day of the return, are added to both due dates (a
correction asked for and answered on the same day adds none). While a case is in 补正,
its due dates are shown moved on by the working days so far.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, time, tzinfo

from tongban.exchange.catalogue.calendar import WorkingCalendar
from tongban.exchange.catalogue.errors import InvalidSubjectId
from tongban.exchange.catalogue.subject_ids import SubjectKind, validate_subject_id
from tongban.exchange.licensing.errors import (
    CaseDecisionInvalid,
    CaseReasonRequired,
    CaseTransitionInvalid,
)
from tongban.licence.numbers import check_licence_number

__all__ = [
    "ALLOWED",
    "MAX_REASON",
    "Case",
    "CaseClock",
    "CaseState",
    "Move",
    "Outcome",
    "Overdue",
    "Transition",
    "apply_move",
    "is_case_number",
    "normal_applicant",
    "normal_reason",
]

MAX_REASON = 500
_CITIZEN_FORM = re.compile(r"^[0-9]{6,17}[0-9X]?$")  # read as a 公民身份号码 if not a USCC
_CASE_NUMBER = re.compile(r"^[a-z][a-z0-9-]{1,62}-[0-9]{4}-[0-9A-Z]{10}$")


class CaseState(enum.StrEnum):
    ACCEPTED = "accepted"
    CORRECTION = "correction"
    DECIDED = "decided"
    DELIVERED = "delivered"
    NOT_ACCEPTED = "not_accepted"
    WITHDRAWN = "withdrawn"

    @property
    def label(self) -> str:
        """The state in words, Chinese first: ``受理 (accepted)``."""
        return f"{_ZH[self]} ({self.value})"


_ZH = {
    CaseState.ACCEPTED: "受理",
    CaseState.CORRECTION: "补正",
    CaseState.DECIDED: "办结",
    CaseState.DELIVERED: "送达",
    CaseState.NOT_ACCEPTED: "不予受理",
    CaseState.WITHDRAWN: "撤回",
}

OPEN = frozenset({CaseState.ACCEPTED, CaseState.CORRECTION})

ALLOWED: dict[CaseState, tuple[CaseState, ...]] = {
    CaseState.ACCEPTED: (
        CaseState.CORRECTION,
        CaseState.DECIDED,
        CaseState.NOT_ACCEPTED,
        CaseState.WITHDRAWN,
    ),
    CaseState.CORRECTION: (CaseState.ACCEPTED, CaseState.NOT_ACCEPTED, CaseState.WITHDRAWN),
    CaseState.DECIDED: (CaseState.DELIVERED,),
    CaseState.DELIVERED: (),
    CaseState.NOT_ACCEPTED: (),
    CaseState.WITHDRAWN: (),
}
"""The moves allowed from each state."""

# The moves whose reason the applicant must be told.
_REASON_NEEDED = frozenset({CaseState.CORRECTION, CaseState.NOT_ACCEPTED, CaseState.WITHDRAWN})

# The access log's action for arriving in each state.
ACTIONS = {
    CaseState.ACCEPTED: "case.accept",
    CaseState.CORRECTION: "case.correct",
    CaseState.DECIDED: "case.decide",
    CaseState.DELIVERED: "case.deliver",
    CaseState.NOT_ACCEPTED: "case.not-accept",
    CaseState.WITHDRAWN: "case.withdraw",
}


class Outcome(enum.StrEnum):
    APPROVED = "approved"
    REFUSED = "refused"


class Overdue(enum.IntEnum):
    """How far past its due dates a case is (or was when decided)."""

    NONE = 0
    PROMISED = 1
    """Past the promised date (超承诺时限), within the legal one: a warning (黄牌)."""
    LEGAL = 2
    """Past the legal date (超法定时限): a breach (红牌)."""


@dataclass(frozen=True)
class Case:
    number: str
    item: str
    item_version: int
    department: str
    applicant: str
    state: CaseState
    opened_at: datetime
    promised_due_at: datetime
    legal_due_at: datetime
    stopped_days: int = 0
    """Working days spent in 补正, already added to both due dates."""
    correction_since: datetime | None = None
    decided_at: datetime | None = None
    outcome: Outcome | None = None
    licence_number: str | None = None
    refusal_reason: str | None = None
    closed_at: datetime | None = None
    delivered_at: datetime | None = None
    package_number: str | None = None
    """The package (一件事) whose step the case is, if any."""


@dataclass(frozen=True)
class Transition:
    """One entry of a case's history (``from_state`` None: the opening)."""

    seq: int
    from_state: CaseState | None
    to_state: CaseState
    at: datetime
    department: str
    officer: str | None
    reason: str | None


@dataclass(frozen=True)
class Move:
    """What the handling department asks for."""

    target: CaseState
    reason: str = ""
    outcome: Outcome | None = None
    licence_number: str = ""


def is_case_number(number: str) -> bool:
    """Whether ``number`` has the form of the case numbers the node makes."""
    return _CASE_NUMBER.match(number) is not None


def normal_applicant(applicant: str) -> str:
    """The applicant's subject id, normalised: a 统一社会信用代码 or a 公民身份号码.

    Raises InvalidSubjectId saying what is wrong (as a citizen id when it is digits with
    perhaps a final X, as a credit code otherwise).
    """
    try:
        return validate_subject_id(SubjectKind.ENTERPRISE, applicant)
    except InvalidSubjectId as as_enterprise:
        text = unicodedata.normalize("NFKC", applicant).strip().upper()
        if _CITIZEN_FORM.match(text):
            return validate_subject_id(SubjectKind.PERSON, applicant)
        raise as_enterprise from None


def normal_reason(reason: str, *, required: bool, what: str) -> str | None:
    """``reason`` stripped and NFC-normalised, None if empty and not ``required``.

    Raises CaseReasonRequired if it is empty but required, too long, or holds control
    characters.
    """
    text = unicodedata.normalize("NFC", reason.strip())
    if not text:
        if required:
            raise CaseReasonRequired(
                f"{what} needs a reason the applicant can read; give one with the move.",
                metadata={"field": "reason"},
            )
        return None
    if len(text) > MAX_REASON or any(
        unicodedata.category(ch) in {"Cc", "Cs", "Co", "Cn"} for ch in text
    ):
        raise CaseReasonRequired(
            f"The reason must be 1 to {MAX_REASON} printable characters (has {len(text)}); "
            "shorten it or remove control characters.",
            metadata={"field": "reason"},
        )
    return text


@dataclass(frozen=True)
class CaseClock:
    """Due dates from the working-day calendar, where the offices are (``zone``)."""

    calendar: WorkingCalendar
    zone: tzinfo

    def due_dates(
        self, opened_at: datetime, promised_days: int, legal_days: int
    ) -> tuple[datetime, datetime]:
        """The promised and legal due instants of a case opened at ``opened_at``; a
        promise of 0 days (即办) is due by the end of the opening day."""
        local = opened_at.astimezone(self.zone)
        promised = (
            self.calendar.add_working_days(local, promised_days)
            if promised_days
            else datetime.combine(local.date(), time.max, tzinfo=self.zone)
        )
        return promised, self.calendar.add_working_days(local, legal_days)

    def stopped_days(self, since: datetime, until: datetime) -> int:
        """Working days after ``since``'s day up to and including ``until``'s day."""
        return max(
            0,
            self.calendar.working_days_between(
                since.astimezone(self.zone).date(), until.astimezone(self.zone).date()
            ),
        )

    def extend(self, due: datetime, days: int) -> datetime:
        """``due`` moved on by ``days`` working days (unchanged for 0)."""
        return self.calendar.add_working_days(due.astimezone(self.zone), days) if days else due

    def current_due(self, case: Case, now: datetime) -> tuple[datetime, datetime, int]:
        """The due dates and stopped days as they stand at ``now``: for a case in 补正,
        moved on by the working days it has been there so far."""
        if case.correction_since is None:
            return case.promised_due_at, case.legal_due_at, case.stopped_days
        days = self.stopped_days(case.correction_since, now)
        return (
            self.extend(case.promised_due_at, days),
            self.extend(case.legal_due_at, days),
            case.stopped_days + days,
        )

    def overdue(self, case: Case, now: datetime) -> Overdue:
        """How far past its due dates ``case`` is at ``now`` (if open) or was when decided;
        NONE for a case not accepted or withdrawn."""
        if case.state in (CaseState.NOT_ACCEPTED, CaseState.WITHDRAWN):
            return Overdue.NONE
        at = case.decided_at or now
        promised, legal, _ = self.current_due(case, at)
        if at > legal:
            return Overdue.LEGAL
        if at > promised:
            return Overdue.PROMISED
        return Overdue.NONE


def _check_transition(case: Case, target: CaseState) -> None:
    allowed = ALLOWED[case.state]
    if target in allowed:
        return
    if not allowed:
        nexts = "it is closed and nothing follows"
    else:
        nexts = "it can move to " + ", ".join(s.label for s in allowed)
    raise CaseTransitionInvalid(
        f"Case {case.number} is in {case.state.label}; it cannot move to {target.label}: {nexts}.",
        metadata={
            "state": case.state.value,
            "target": target.value,
            "allowed": ",".join(s.value for s in allowed),
        },
    )


def _check_decision(case: Case, move: Move, issues_licence: str) -> tuple[str | None, str | None]:
    """The licence number and refusal reason of a 办结 (both None for other moves)."""
    if move.target is not CaseState.DECIDED:
        if move.outcome is not None or move.licence_number.strip():
            raise CaseDecisionInvalid(
                f"Only 办结 (decided) takes an outcome or a licence number; moving case "
                f"{case.number} to {move.target.label} takes neither.",
                metadata={"field": "outcome" if move.outcome else "licence_number"},
            )
        return None, None
    if move.outcome is None:
        raise CaseDecisionInvalid(
            f"Say whether case {case.number} is approved or refused to decide it (办结).",
            metadata={"field": "outcome"},
        )
    if move.outcome is Outcome.REFUSED:
        if move.licence_number.strip():
            raise CaseDecisionInvalid(
                f"A refusal issues no licence; decide case {case.number} as refused without a "
                "licence number, or as approved.",
                metadata={"field": "licence_number"},
            )
        return None, normal_reason(move.reason, required=True, what="A refusal (不予许可)")
    if not issues_licence:
        if move.licence_number.strip():
            raise CaseDecisionInvalid(
                f"Service item {case.item} issues no licence, so its approval names none; "
                f"decide case {case.number} as approved without a licence number.",
                metadata={"field": "licence_number"},
            )
        return None, None
    if not move.licence_number.strip():
        raise CaseDecisionInvalid(
            f"An approval of {case.item} names the {issues_licence} it issued; give the "
            f"number of the licence issued for case {case.number}.",
            metadata={"field": "licence_number"},
        )
    return check_licence_number(move.licence_number), None


def apply_move(
    case: Case, move: Move, *, now: datetime, clock: CaseClock, issues_licence: str = ""
) -> Case:
    """The case after ``move`` at ``now``; ``issues_licence`` is the licence type the
    case's item issues ("" for none: an approval then names no licence). Raises
    CaseTransitionInvalid if the move is not allowed from the case's state,
    CaseDecisionInvalid for a 办结 without what it needs (or an outcome on another move,
    or a licence for an item that issues none), CaseReasonRequired for a missing or
    malformed reason, and LicenceNumberInvalid for a malformed licence number."""
    _check_transition(case, move.target)
    licence, refusal = _check_decision(case, move, issues_licence)
    if move.target in _REASON_NEEDED:
        normal_reason(move.reason, required=True, what=f"Moving to {move.target.label}")
    else:
        normal_reason(move.reason, required=False, what="")
    changes: dict[str, object] = {"state": move.target}
    if move.target is CaseState.CORRECTION:
        changes["correction_since"] = now
    if case.state is CaseState.CORRECTION:
        # Leaving 补正 (back to 受理, or closed): the stopped days count only on a return.
        if move.target is CaseState.ACCEPTED:
            promised, legal, stopped = clock.current_due(case, now)
            changes.update(promised_due_at=promised, legal_due_at=legal, stopped_days=stopped)
        changes["correction_since"] = None
    if move.target in (CaseState.DECIDED, CaseState.NOT_ACCEPTED, CaseState.WITHDRAWN):
        changes["closed_at"] = now
    if move.target is CaseState.DECIDED:
        changes.update(
            decided_at=now, outcome=move.outcome, licence_number=licence, refusal_reason=refusal
        )
    if move.target is CaseState.DELIVERED:
        changes["delivered_at"] = now
    return dataclasses.replace(case, **changes)  # type: ignore[arg-type]
