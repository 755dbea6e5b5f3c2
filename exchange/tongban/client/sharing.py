"""What the catalogue, grant and subscription calls answer, as typed values.

Each mirrors its ``tongban.v1`` message field for field (same names); enums are
``IntEnum`` with the wire numbers, named without their prefix (``ShareClass.CONDITIONAL``
is ``SHARE_CLASS_CONDITIONAL``); instants are aware UTC datetimes, ``None`` where the
message leaves them unset.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum

__all__ = [
    "Dataset",
    "DatasetSpec",
    "FieldSpec",
    "FieldType",
    "Grant",
    "GrantStatus",
    "LegalBasis",
    "PersonalBasis",
    "ShareClass",
    "SubjectKind",
    "Subscription",
    "SubscriptionListing",
    "UnlistedPeer",
]


class FieldType(IntEnum):
    UNSPECIFIED = 0
    STRING = 1
    INTEGER = 2
    DECIMAL = 3
    BOOLEAN = 4
    DATE = 5
    DATETIME = 6


class ShareClass(IntEnum):
    UNSPECIFIED = 0  # treated as UNCONDITIONAL: shared by default
    UNCONDITIONAL = 1  # 无条件共享
    CONDITIONAL = 2  # 有条件共享: needs a grant
    NOT_SHARED = 3  # 不予共享: needs a legal basis


class SubjectKind(IntEnum):
    UNSPECIFIED = 0
    ENTERPRISE = 1  # keyed by USCC 统一社会信用代码
    PERSON = 2  # keyed by citizen id 公民身份号码
    OTHER = 3


class GrantStatus(IntEnum):
    UNSPECIFIED = 0
    PENDING = 1
    APPROVED = 2
    REFUSED = 3
    REVOKED = 4
    EXPIRED = 5  # approved, but past its expiry


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: FieldType
    description: str
    personal: bool
    required: bool
    max_length: int  # for strings; 0: the default, 4,000


@dataclass(frozen=True)
class LegalBasis:
    law: str
    article: str


@dataclass(frozen=True)
class PersonalBasis:
    """A law under which the personal ``fields`` are shared without a grant."""

    law: str
    article: str
    fields: tuple[str, ...]


@dataclass(frozen=True)
class DatasetSpec:
    code: str
    title: str
    description: str
    fields: tuple[FieldSpec, ...]
    key_field: str
    subject_kind: SubjectKind
    update_frequency: str
    share_class: ShareClass
    conditions: str
    legal_basis: LegalBasis | None  # set for NOT_SHARED
    personal_bases: tuple[PersonalBasis, ...]


@dataclass(frozen=True)
class Dataset:
    """One version of a dataset in the catalogue."""

    spec: DatasetSpec
    owner: str
    version: int
    published: bool
    created_at: datetime
    version_created_at: datetime


@dataclass(frozen=True)
class Grant:
    """A consumer's request for fields of a conditional dataset, and its answer."""

    id: str
    dataset: str
    owner: str
    consumer: str
    requested_fields: tuple[str, ...]
    fields: tuple[str, ...]  # approved (a subset of requested_fields); empty unless approved
    purpose: str
    legal_basis: str
    requested_expiry: datetime
    expires_at: datetime | None  # set once approved
    status: GrantStatus
    decision_reason: str
    requested_at: datetime
    due_at: datetime  # the owner must answer by then
    decided_at: datetime | None
    requested_by: str
    decided_by: str


@dataclass(frozen=True)
class Subscription:
    """One of our subscriptions with its lag: events not acknowledged, and the age of the
    oldest of them."""

    id: str
    dataset: str
    fields: tuple[str, ...]
    purpose: str
    acked_position: int
    lag_events: int
    lag_seconds: float


@dataclass(frozen=True)
class UnlistedPeer:
    """An owner exchange our subscriptions there could not be listed from: its name here
    by route (``province``, ``city:province``), the reason code and its sentence."""

    peer: str
    reason: str
    message: str


@dataclass(frozen=True)
class SubscriptionListing:
    """Our subscriptions (our own exchange's, then those held at peers' owners, named
    ``<peer>:<id>``), and the owners that could not be asked: their subscriptions are
    missing from ``subscriptions``."""

    subscriptions: tuple[Subscription, ...]
    unlisted: tuple[UnlistedPeer, ...]
