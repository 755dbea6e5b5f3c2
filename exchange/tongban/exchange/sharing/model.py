"""Plain data of the sharing domain: dataset entries and grants."""

from __future__ import annotations

import enum
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from tongban.exchange.catalogue.schema import DatasetSchema
from tongban.exchange.catalogue.subject_ids import SubjectKind

__all__ = [
    "DatasetEntry",
    "Grant",
    "GrantStatus",
    "LegalBasis",
    "PersonalBasis",
    "ShareClass",
    "normalise_purpose",
]


class ShareClass(enum.StrEnum):
    UNCONDITIONAL = "unconditional"  # 无条件共享
    CONDITIONAL = "conditional"  # 有条件共享
    NOT_SHARED = "not_shared"  # 不予共享


@dataclass(frozen=True)
class LegalBasis:
    law: str
    article: str


@dataclass(frozen=True)
class PersonalBasis:
    """A law under which the named personal fields of an unconditional dataset are shared
    without a grant (docs/personal-data.md)."""

    law: str
    article: str
    fields: tuple[str, ...]

    def cited(self) -> str:
        """How a log entry and the catalogue name it: ``《law》article``."""
        law = self.law if self.law.startswith("《") else f"《{self.law}》"
        return f"{law}{self.article}"


@dataclass(frozen=True)
class DatasetEntry:
    """One version of a catalogue entry, with the dataset's publication state."""

    code: str
    owner: str
    version: int
    title: str
    description: str
    schema: DatasetSchema
    subject_kind: SubjectKind
    update_frequency: str
    share_class: ShareClass
    conditions: str
    legal_basis: LegalBasis | None
    published: bool
    created_at: datetime
    version_created_at: datetime
    personal_bases: tuple[PersonalBasis, ...] = ()
    """Laws under which named personal fields are shared without a grant."""

    def personal_fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.schema.fields if f.personal)

    def personal_basis_of(self, name: str) -> PersonalBasis | None:
        """The law under which personal field ``name`` is shared without a grant, if any."""
        return next((b for b in self.personal_bases if name in b.fields), None)


class GrantStatus(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REFUSED = "refused"
    REVOKED = "revoked"
    EXPIRED = "expired"  # derived: approved and past expires_at; never stored


@dataclass(frozen=True)
class Grant:
    id: UUID
    dataset: str
    owner: str
    consumer: str
    requested_fields: tuple[str, ...]
    fields: tuple[str, ...]
    purpose: str
    legal_basis: str
    requested_expiry: datetime
    expires_at: datetime | None
    status: GrantStatus
    decision_reason: str
    requested_at: datetime
    due_at: datetime
    decided_at: datetime | None
    requested_by: str | None
    decided_by: str | None

    def status_at(self, now: datetime) -> GrantStatus:
        """The status as seen at ``now`` (an approved grant past expiry is EXPIRED)."""
        if (
            self.status is GrantStatus.APPROVED
            and self.expires_at is not None
            and now >= self.expires_at
        ):
            return GrantStatus.EXPIRED
        return self.status

    def is_live(self, now: datetime) -> bool:
        return self.status_at(now) is GrantStatus.APPROVED


def normalise_purpose(purpose: str) -> str:
    """Purposes compare after NFC normalisation, trimming and collapsing white space."""
    return " ".join(unicodedata.normalize("NFC", purpose).split())
