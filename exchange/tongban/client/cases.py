"""What the service-item, case and package calls answer, as typed values mirroring the
``tongban.v1`` messages field for field (same names). Enums are ``IntEnum`` with the wire
numbers, named without their prefix (``CaseState.DECIDED`` is ``CASE_STATE_DECIDED``);
instants are aware UTC datetimes, ``None`` where the message leaves them unset."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum

__all__ = [
    "Case",
    "CaseMaterial",
    "CaseOutcome",
    "CaseOverdue",
    "CaseState",
    "CaseTransition",
    "DatasetSource",
    "DepartmentOverdue",
    "ItemSpec",
    "KeyFrom",
    "LicenceSource",
    "Material",
    "MaterialKind",
    "MaterialState",
    "OverdueCase",
    "OverdueCasePage",
    "OverdueReport",
    "Package",
    "PackageCase",
    "PackageSpec",
    "PackageState",
    "PackageStep",
    "PackageStepSpec",
    "ServiceItem",
    "StepState",
    "SubmittedSource",
]


# -- service items (事项目录) -------------------------------------------------------------


@dataclass(frozen=True)
class LicenceSource:
    """A valid electronic licence of ``licence_type``, held by the applicant."""

    licence_type: str
    disclose: tuple[str, ...]


@dataclass(frozen=True)
class KeyFrom:
    """A dataset lookup keyed by ``field`` of what the earlier ``material`` returned."""

    material: str
    field: str


@dataclass(frozen=True)
class DatasetSource:
    """Fields of a shared dataset's record, keyed by the applicant or by ``key_from``."""

    dataset: str
    fields: tuple[str, ...]
    key_from: KeyFrom | None


@dataclass(frozen=True)
class SubmittedSource:
    """The applicant submits it (no electronic source)."""


@dataclass(frozen=True)
class Material:
    """A material of an item. ``source`` is the message's ``source`` oneof (None if the
    node set none); ``defer_days`` / ``commitment_check_days`` are 0 when 容缺 / 告知承诺
    are not allowed."""

    code: str
    name: str
    required: bool
    source: LicenceSource | DatasetSource | SubmittedSource | None
    defer_days: int
    commitment_check_days: int


@dataclass(frozen=True)
class ItemSpec:
    code: str
    name: str
    legal_basis: str
    purpose: str
    legal_limit_days: int
    promised_limit_days: int
    immediate: bool
    materials: tuple[Material, ...]
    issues_licence: str
    on_breach: str
    supervisors: tuple[str, ...]


@dataclass(frozen=True)
class ServiceItem:
    """One version of a service item; ``department`` handles it."""

    spec: ItemSpec
    department: str
    version: int
    created_at: datetime
    version_created_at: datetime


# -- cases (办件) ----------------------------------------------------------------------------


class CaseState(IntEnum):
    UNSPECIFIED = 0
    ACCEPTED = 1  # 受理
    CORRECTION = 2  # 补正
    DECIDED = 3  # 办结
    DELIVERED = 4  # 送达
    NOT_ACCEPTED = 5  # 不予受理
    WITHDRAWN = 6  # 撤回


class CaseOutcome(IntEnum):
    UNSPECIFIED = 0
    APPROVED = 1
    REFUSED = 2


class CaseOverdue(IntEnum):
    NONE = 0
    PROMISED = 1  # past the promised date, within the legal one (黄牌)
    LEGAL = 2  # past the legal date (红牌)


class MaterialKind(IntEnum):
    UNSPECIFIED = 0
    DEFERRED = 1  # 容缺: to be supplied by due_at
    COMMITTED = 2  # 告知承诺: to be checked by due_at


class MaterialState(IntEnum):
    UNSPECIFIED = 0
    OPEN = 1
    SUPPLIED = 2
    CHECKED = 3
    BREACHED = 4


@dataclass(frozen=True)
class CaseTransition:
    from_state: CaseState  # UNSPECIFIED for the opening of the case
    to_state: CaseState
    at: datetime
    department: str
    officer: str
    reason: str


@dataclass(frozen=True)
class CaseMaterial:
    """A deferred material (容缺) or a commitment (告知承诺) of a case."""

    case_number: str
    material: str
    kind: MaterialKind
    due_at: datetime
    state: MaterialState
    recorded_at: datetime
    recorded_by: str
    resolved_at: datetime | None
    resolved_by: str
    note: str


@dataclass(frozen=True)
class Case:
    """A case with its due dates as they stand (moved on by the working days spent in
    补正); ``history`` and ``materials`` are filled by ``get_case`` only."""

    number: str
    item: str
    item_version: int
    department: str
    applicant: str
    state: CaseState
    opened_at: datetime
    promised_due_at: datetime
    legal_due_at: datetime
    stopped_days: int
    correction_since: datetime | None  # set while the case is in 补正
    outcome: CaseOutcome
    licence_number: str
    refusal_reason: str
    decided_at: datetime | None
    closed_at: datetime | None
    delivered_at: datetime | None
    overdue: CaseOverdue
    history: tuple[CaseTransition, ...]
    package_number: str
    materials: tuple[CaseMaterial, ...]


@dataclass(frozen=True)
class DepartmentOverdue:
    """One department's open cases at the report's instant."""

    department: str
    open: int
    in_correction: int
    past_promised: int
    past_legal: int


@dataclass(frozen=True)
class OverdueReport:
    at: datetime
    departments: tuple[DepartmentOverdue, ...]


@dataclass(frozen=True)
class OverdueCase:
    """A case in 受理 past one of its due dates; ``due_at`` is the date it is past."""

    number: str
    department: str
    item: str
    item_version: int
    applicant: str
    opened_at: datetime
    promised_due_at: datetime
    legal_due_at: datetime
    severity: CaseOverdue
    due_at: datetime


@dataclass(frozen=True)
class OverdueCasePage:
    cases: tuple[OverdueCase, ...]
    next_page_token: str
    at: datetime


# -- packages (一件事) --------------------------------------------------------------------


class StepState(IntEnum):
    UNSPECIFIED = 0
    WAITING = 1
    READY = 2
    OPEN = 3
    DONE = 4
    FAILED = 5
    BLOCKED = 6


class PackageState(IntEnum):
    UNSPECIFIED = 0
    OPEN = 1
    DONE = 2
    FAILED = 3


@dataclass(frozen=True)
class PackageStepSpec:
    item: str
    after: tuple[str, ...]
    applicant_from: str


@dataclass(frozen=True)
class PackageSpec:
    code: str
    name: str
    description: str
    steps: tuple[PackageStepSpec, ...]


@dataclass(frozen=True)
class Package:
    spec: PackageSpec
    department: str  # the coordinating department
    version: int
    created_at: datetime


@dataclass(frozen=True)
class PackageStep:
    item: str
    department: str
    state: StepState
    after: tuple[str, ...]
    applicant: str
    case_number: str
    case_state: CaseState
    licence_number: str
    updated_at: datetime | None


@dataclass(frozen=True)
class PackageCase:
    """An opened package and its steps."""

    number: str
    package: str
    package_version: int
    department: str
    applicant: str
    state: PackageState
    opened_at: datetime
    steps: tuple[PackageStep, ...]
