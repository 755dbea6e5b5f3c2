"""The access-log entry of a step on a case or an opened package: who did what to which
case, the applicant as the log's keyed hash. One shape for cases, packages and the
follow-through of deferred materials and commitments."""

from __future__ import annotations

from datetime import datetime

from tongban.exchange.audit.log import AccessEntry, SubjectHasher
from tongban.exchange.audit.recorder import AccessRecorder

__all__ = ["case_entry"]


def case_entry(
    node: str,
    hasher: SubjectHasher,
    *,
    department: str,
    officer: str | None,
    case_id: str,
    applicant: str,
    action: str,
    reason: str,
    at: datetime,
    denied: bool = False,
) -> AccessEntry:
    return AccessRecorder(node, hasher).entry(
        at=at,
        department=department,
        officer=officer,
        action=action,
        case_id=case_id,
        subject=applicant,
        decision="denied" if denied else "allowed",
        reason=reason,
    )
