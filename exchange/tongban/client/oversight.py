"""What the rating (好差评) and supervision (电子监察) calls answer, as typed values
mirroring the ``tongban.v1`` messages field for field (same names)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum

from tongban.client.cases import CaseOutcome, CaseState

__all__ = [
    "RatedCase",
    "Rating",
    "RatingsCheck",
    "Rectification",
    "RectificationPage",
    "SupervisedCase",
    "SupervisedCaseKind",
    "SupervisedCasePage",
    "SupervisionReport",
    "SupervisionRow",
]


# -- ratings (好差评) -----------------------------------------------------------------------


@dataclass(frozen=True)
class Rating:
    round: int  # 1: the rating; 2: the re-rating after the department's answer
    score: int  # 1 (very poor) to 5 (very good)
    comment: str
    rated_at: datetime
    officer: str  # who decided the case
    via: str  # "link" or "console"


@dataclass(frozen=True)
class Rectification:
    """整改 of a bad rating; ``overdue``: unanswered past ``due_at`` now, or answered after."""

    opened_at: datetime
    due_at: datetime
    answer: str  # empty until answered
    answered_at: datetime | None
    answered_by: str
    overdue: bool


@dataclass(frozen=True)
class RatedCase:
    case_number: str
    item: str
    department: str
    applicant: str
    ratings: tuple[Rating, ...]
    rectification: Rectification | None


@dataclass(frozen=True)
class RectificationPage:
    """Rated cases with their rectifications, oldest due first, as of ``at``."""

    cases: tuple[RatedCase, ...]
    at: datetime


@dataclass(frozen=True)
class RatingsCheck:
    """What the check of rating rows against the access log compared."""

    ratings: int
    rectifications: int
    answers: int
    entries: int


# -- supervision (电子监察) ------------------------------------------------------------------


@dataclass(frozen=True)
class SupervisionRow:
    """One department's cases opened in one month (docs/supervision.md defines each
    figure); a share or average is None when its denominator is 0."""

    department: str
    month: str  # YYYY-MM, where the offices are
    opened: int
    decided: int
    decided_within_promised: int
    decided_late: int
    decided_past_legal: int
    overdue_promised: int
    overdue_legal: int
    in_correction: int
    corrected_repeatedly: int
    decided_same_day: int
    resolved: int
    fully_online: int
    materials_required: int
    materials_electronic: int
    within_promised_share: float | None
    immediate_share: float | None
    fully_online_share: float | None
    no_submission_share: float | None
    average_days: float | None
    average_promised_days: float | None
    average_legal_days: float | None


@dataclass(frozen=True)
class SupervisionReport:
    at: datetime
    rows: tuple[SupervisionRow, ...]  # by department, then month


class SupervisedCaseKind(IntEnum):
    UNSPECIFIED = 0
    DECIDED_LATE = 1
    DECIDED_PAST_LEGAL = 2
    CORRECTED_REPEATEDLY = 3


@dataclass(frozen=True)
class SupervisedCase:
    """A case behind one of the report's figures; ``corrections`` counts its 补正 for
    ``CORRECTED_REPEATEDLY`` (0 for the other kinds)."""

    number: str
    item: str
    item_version: int
    department: str
    applicant: str
    state: CaseState
    opened_at: datetime
    promised_due_at: datetime
    legal_due_at: datetime
    decided_at: datetime | None  # None while undecided
    outcome: CaseOutcome
    corrections: int


@dataclass(frozen=True)
class SupervisedCasePage:
    cases: tuple[SupervisedCase, ...]
    next_page_token: str
    at: datetime
