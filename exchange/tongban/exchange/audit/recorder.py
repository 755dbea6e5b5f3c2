"""The one place access-log entries are made.

Every decision about someone's data — a query, a subscription's delivery, a licence
fetch, a console page, an auditor's search, a case's move — becomes entries through an
``AccessRecorder``: it names the node, hashes the subject (never stored in the clear), and
writes one entry per subject, or one with none. Callers append what it makes, with the
group-commit writer (``AccessLog.append``) or inside their own transaction
(``LogTransaction.record``); no other module builds an ``AccessEntry``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Literal

from tongban.exchange.audit.leaf import AccessEntry

__all__ = ["AccessRecorder", "Outcome"]

Outcome = Literal["allowed", "denied"]


class AccessRecorder:
    """Makes the entries of decisions taken on node ``node``; ``hasher`` turns a subject
    id into its HMAC (the log key's), needed only by callers that pass raw ids."""

    def __init__(self, node: str, hasher: Callable[[str], bytes] | None = None) -> None:
        self.node = node
        self._hasher = hasher

    def entry(
        self,
        *,
        at: datetime,
        department: str,
        officer: str | None,
        action: str,
        decision: Outcome = "allowed",
        reason: str | None = None,
        dataset: str | None = None,
        fields: Sequence[str] = (),
        purpose: str | None = None,
        case_id: str | None = None,
        subject: str | None = None,
        subject_hmac: bytes | None = None,
    ) -> AccessEntry:
        """One entry; ``subject`` (a raw id, hashed here) or ``subject_hmac``, not both."""
        if subject is not None:
            if subject_hmac is not None:
                raise ValueError("give the subject's id or its HMAC, not both")
            subject_hmac = self._hash(subject)
        return AccessEntry(
            at=at,
            node=self.node,
            caller=department,
            officer=officer,
            action=action,
            dataset=dataset,
            fields=tuple(fields),
            purpose=purpose,
            case_id=case_id,
            subject_hmac=subject_hmac,
            decision=decision,
            reason=reason,
        )

    def entries(
        self,
        subjects: Sequence[str],
        *,
        at: datetime,
        department: str,
        officer: str | None,
        action: str,
        decision: Outcome = "allowed",
        reason: str | None = None,
        dataset: str | None = None,
        fields: Sequence[str] = (),
        purpose: str | None = None,
        case_id: str | None = None,
    ) -> list[AccessEntry]:
        """One entry per subject id (hashed here), or one with no subject if there are
        none: what a decision about several subjects' data writes."""
        hmacs: Sequence[bytes | None] = [self._hash(s) for s in subjects] or [None]
        return [
            self.entry(
                at=at, department=department, officer=officer, action=action,
                decision=decision, reason=reason, dataset=dataset, fields=fields,
                purpose=purpose, case_id=case_id, subject_hmac=hmac,
            )
            for hmac in hmacs
        ]  # fmt: skip

    def _hash(self, subject: str) -> bytes:
        if self._hasher is None:
            raise ValueError("this recorder has no subject hasher; give subject_hmac")
        return self._hasher(subject)
