"""Service items (政务服务事项) as data: what a department registers in the item catalogue
(事项目录), and the checks an item passes before it is stored.

An item names its time limits in working days (法定 and 承诺办结时限, 即办) and its
materials. Each material comes from a licence type (with the claims to disclose), from
fields of a catalogued dataset (keyed by the applicant, or by a field an earlier material
returned: ``key_from``), or from the applicant; it may be deferred (容缺, days to supply)
and a commitment may replace it (告知承诺, days within which the commitment is checked).

``validate_item`` is pure: the caller looks up the datasets the item names first
(``datasets_named``) and hands them in with the licence type registry.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from tongban.errors import TongbanError
from tongban.exchange.catalogue.subject_ids import SubjectKind
from tongban.exchange.licensing.errors import (
    MaterialKeyCycle,
    MaterialKeyInvalid,
    MaterialSourceUnknown,
    ServiceItemInvalid,
    TimeLimitInvalid,
)
from tongban.exchange.sharing.model import DatasetEntry
from tongban.licence import LicenceTypeRegistry

__all__ = [
    "MAX_LEGAL_DAYS",
    "MAX_MATERIALS",
    "MAX_SIDE_DAYS",
    "DataSource",
    "ItemSpec",
    "KeyFrom",
    "LicenceSource",
    "Material",
    "ServiceItem",
    "SubmittedSource",
    "datasets_named",
    "is_item_code",
    "validate_item",
]

ITEM_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,63}$")
MATERIAL_CODE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
DEPARTMENT_CODE = re.compile(r"^[a-z][a-z0-9-]{1,62}$")
MAX_LEGAL_DAYS = 3650  # working days; the longest known legal limit is 880
MAX_SIDE_DAYS = 365  # 容缺 and 告知承诺 days
MAX_MATERIALS = 100
MAX_NAMES = 64  # fields of a dataset source, claims of a licence source


@dataclass(frozen=True)
class LicenceSource:
    """A valid licence of ``licence_type`` held by the applicant."""

    licence_type: str
    disclose: tuple[str, ...] = ()
    """The selectively disclosable claims the approval needs."""


@dataclass(frozen=True)
class KeyFrom:
    """Take a dataset lookup's key from ``field`` of what material ``material`` returned."""

    material: str
    field: str


@dataclass(frozen=True)
class DataSource:
    """Fields of a shared dataset's record, keyed by the applicant or by ``key_from``."""

    dataset: str
    fields: tuple[str, ...]
    key_from: KeyFrom | None = None


@dataclass(frozen=True)
class SubmittedSource:
    """The applicant submits it: there is no electronic source."""


@dataclass(frozen=True)
class Material:
    code: str
    name: str
    source: LicenceSource | DataSource | SubmittedSource
    required: bool = True
    defer_days: int = 0
    """容缺: working days to supply it after acceptance; 0: it may not be deferred."""
    commitment_check_days: int = 0
    """告知承诺: working days within which a commitment replacing it is checked; 0: none may."""


@dataclass(frozen=True)
class ItemSpec:
    """What the handling department registers (see ``items.proto``)."""

    code: str
    name: str
    legal_basis: str
    purpose: str
    """The purpose every lookup names (grants are for a purpose)."""
    legal_limit_days: int
    promised_limit_days: int
    immediate: bool
    materials: tuple[Material, ...]
    issues_licence: str = ""
    """The licence type an approval issues; "": none (an approval names no licence)."""
    on_breach: str = ""
    """"suspend": a breach (容缺 run out, 告知承诺 found false) suspends the case's licence."""
    supervisors: tuple[str, ...] = ()
    """Departments that check the item's commitments; (): the handling department."""


@dataclass(frozen=True)
class ServiceItem:
    """A version of a registered item."""

    spec: ItemSpec
    department: str
    version: int
    created_at: datetime
    version_created_at: datetime

    @property
    def code(self) -> str:
        return self.spec.code


def is_item_code(code: str) -> bool:
    """Whether ``code`` has the form every registered item code has."""
    return ITEM_CODE.match(code) is not None


def _text(value: str, what: str, *, high: int, material: str | None = None) -> str:
    text = unicodedata.normalize("NFC", value.strip())
    where = f"Material {material!r}: the" if material else "The"
    if not 1 <= len(text) <= high:
        raise ServiceItemInvalid(
            f"{where} {what} must have 1 to {high} characters (has {len(text)}).",
            metadata=_meta(material, what),
        )
    if any(
        unicodedata.category(ch) in {"Cc", "Cs", "Co", "Cn"} and ch not in "\n\t" for ch in text
    ):
        raise ServiceItemInvalid(
            f"{where} {what} contains control or unassigned characters.",
            metadata=_meta(material, what),
        )
    return text


def _meta(material: str | None, field: str) -> dict[str, str]:
    out = {"field": field}
    if material is not None:
        out["material"] = material
    return out


def _days(value: int, what: str, material: str) -> int:
    if not 0 <= value <= MAX_SIDE_DAYS:
        raise ServiceItemInvalid(
            f"Material {material!r}: {what} must be 1 to {MAX_SIDE_DAYS} working days "
            f"(0: not allowed), not {value}.",
            metadata=_meta(material, what),
        )
    return value


def _names(values: tuple[str, ...], what: str, material: str) -> tuple[str, ...]:
    if len(values) > MAX_NAMES:
        raise ServiceItemInvalid(
            f"Material {material!r} names {len(values)} {what}; at most {MAX_NAMES}.",
            metadata=_meta(material, what),
        )
    if len(set(values)) != len(values):
        raise ServiceItemInvalid(
            f"Material {material!r} names one of its {what} twice; name each once.",
            metadata=_meta(material, what),
        )
    return values


def _check_time_limits(spec: ItemSpec) -> None:
    if not 1 <= spec.legal_limit_days <= MAX_LEGAL_DAYS:
        raise TimeLimitInvalid(
            f"The legal time limit (法定办结时限) must be 1 to {MAX_LEGAL_DAYS:,} working days, "
            f"not {spec.legal_limit_days}.",
            metadata={"field": "legal_limit_days"},
        )
    if spec.promised_limit_days > spec.legal_limit_days:
        raise TimeLimitInvalid(
            f"The promised time limit (承诺办结时限, {spec.promised_limit_days} working days) is "
            f"above the legal one ({spec.legal_limit_days}); promise at most "
            f"{spec.legal_limit_days}.",
            metadata={"field": "promised_limit_days"},
        )
    if spec.immediate and spec.promised_limit_days != 0:
        raise TimeLimitInvalid(
            "An item decided on the spot (即办) promises 0 working days; set "
            "promised_limit_days to 0 or immediate to false.",
            metadata={"field": "promised_limit_days"},
        )
    if not spec.immediate and spec.promised_limit_days == 0:
        raise TimeLimitInvalid(
            "Promise at least 1 working day (承诺办结时限), or mark the item immediate (即办).",
            metadata={"field": "promised_limit_days"},
        )


def _check_key_graph(materials: tuple[Material, ...]) -> None:
    """Raise MaterialKeyCycle if materials take their keys from each other in a cycle."""
    takes_from = {
        m.code: m.source.key_from.material
        for m in materials
        if isinstance(m.source, DataSource) and m.source.key_from is not None
    }
    for start in takes_from:
        path = [start]
        current = takes_from.get(start)
        while current is not None and current not in path:
            path.append(current)
            current = takes_from.get(current)
        if current == start:
            chain = " → ".join([*path, start])
            raise MaterialKeyCycle(
                f"Material {start!r} takes its key from itself through {chain}; one of them "
                "must be keyed by the applicant.",
                metadata={"material": start, "field": "key_from"},
            )


def datasets_named(spec: ItemSpec) -> set[str]:
    """The dataset codes the materials of ``spec`` name (to look up before validating)."""
    return {m.source.dataset for m in spec.materials if isinstance(m.source, DataSource)}


def validate_item(
    spec: ItemSpec,
    *,
    catalogue: Mapping[str, DatasetEntry | None],
    registry: LicenceTypeRegistry,
) -> ItemSpec:
    """Return ``spec`` normalised. ``catalogue`` maps each dataset the materials name to its
    entry as the registering department sees it (None: not in the catalogue).

    Raises ServiceItemInvalid, TimeLimitInvalid, MaterialSourceUnknown, MaterialKeyInvalid
    or MaterialKeyCycle, naming the material at fault.
    """
    if not is_item_code(spec.code):
        raise ServiceItemInvalid(
            f"Item code {spec.code[:100]!r} is not valid: use the 实施编码, 2 to 64 letters, "
            "digits, '.', '_' or '-', starting with a letter or digit.",
            metadata={"field": "code"},
        )
    name = _text(spec.name, "name", high=200)
    legal_basis = _text(spec.legal_basis, "legal basis", high=2000)
    purpose = _text(spec.purpose, "purpose", high=200)
    _check_time_limits(spec)
    issues = spec.issues_licence.strip()
    if issues and issues not in {t.code for t in registry}:
        raise ServiceItemInvalid(
            f"issues_licence names licence type {issues[:64]!r}, which is not in the "
            f"registry; the known types are {', '.join(t.code for t in registry)}.",
            metadata={"field": "issues_licence"},
        )
    if spec.on_breach not in ("", "suspend"):
        raise ServiceItemInvalid(
            f"on_breach is 'suspend' or empty, not {spec.on_breach[:40]!r}.",
            metadata={"field": "on_breach"},
        )
    if spec.on_breach and not issues:
        raise ServiceItemInvalid(
            "on_breach: suspend needs a licence to suspend; set issues_licence, or leave "
            "on_breach empty.",
            metadata={"field": "on_breach"},
        )
    supervisors = tuple(code.strip() for code in spec.supervisors)
    if (
        len(supervisors) > 20
        or len(set(supervisors)) != len(supervisors)
        or any(not DEPARTMENT_CODE.match(code) for code in supervisors)
    ):
        raise ServiceItemInvalid(
            "supervisors lists at most 20 different department codes (lowercase, e.g. regulator).",
            metadata={"field": "supervisors"},
        )
    if not 1 <= len(spec.materials) <= MAX_MATERIALS:
        raise ServiceItemInvalid(
            f"An item lists 1 to {MAX_MATERIALS} materials (has {len(spec.materials)}); list "
            "what the applicant provides, even if the applicant submits it.",
            metadata={"field": "materials"},
        )
    seen: set[str] = set()
    for material in spec.materials:
        if not MATERIAL_CODE.match(material.code):
            raise ServiceItemInvalid(
                f"Material code {material.code[:64]!r} is not valid: use lowercase letters, "
                "digits, '_' and '-', starting with a letter (e.g. business-licence).",
                metadata={"field": "materials.code"},
            )
        if material.code in seen:
            raise ServiceItemInvalid(
                f"Material code {material.code!r} is used twice; give each material its own.",
                metadata={"material": material.code, "field": "code"},
            )
        seen.add(material.code)
    _check_key_graph(spec.materials)
    materials: list[Material] = []
    by_code: dict[str, Material] = {}
    for material in spec.materials:
        source = _check_source(material, by_code, catalogue, registry)
        checked = Material(
            code=material.code,
            name=_text(material.name, "name", high=200, material=material.code),
            source=source,
            required=material.required,
            defer_days=_days(material.defer_days, "defer_days", material.code),
            commitment_check_days=_days(
                material.commitment_check_days, "commitment_check_days", material.code
            ),
        )
        materials.append(checked)
        by_code[checked.code] = checked
    return ItemSpec(
        code=spec.code,
        name=name,
        legal_basis=legal_basis,
        purpose=purpose,
        legal_limit_days=spec.legal_limit_days,
        promised_limit_days=spec.promised_limit_days,
        immediate=spec.immediate,
        materials=tuple(materials),
        issues_licence=issues,
        on_breach=spec.on_breach,
        supervisors=supervisors,
    )


def _check_source(
    material: Material,
    earlier: Mapping[str, Material],
    catalogue: Mapping[str, DatasetEntry | None],
    registry: LicenceTypeRegistry,
) -> LicenceSource | DataSource | SubmittedSource:
    source = material.source
    code = material.code
    if isinstance(source, SubmittedSource):
        return source
    if isinstance(source, LicenceSource):
        _names(source.disclose, "claims", code)
        try:
            licence_type = registry.get(source.licence_type)
        except TongbanError:
            raise MaterialSourceUnknown(
                f"Material {code!r} names licence type {source.licence_type[:64]!r}, which is "
                f"not in the registry; the known types are {', '.join(t.code for t in registry)}.",
                metadata={"material": code, "problem": "licence_type"},
            ) from None
        for claim in source.disclose:
            try:
                spec = licence_type.claim(claim)
            except TongbanError:
                raise MaterialSourceUnknown(
                    f"Material {code!r}: a {licence_type.name_zh} ({licence_type.code}) has no "
                    f"claim {claim[:64]!r}; its claims are "
                    f"{', '.join(c.name for c in licence_type.claims)}.",
                    metadata={"material": code, "problem": "claim"},
                ) from None
            if not spec.disclosable:
                raise MaterialSourceUnknown(
                    f"Material {code!r}: claim {claim} of {licence_type.code} is always shown, "
                    "not selectively disclosed; list only the claims to disclose ("
                    f"{', '.join(sorted(licence_type.disclosable_claims)) or 'none'}).",
                    metadata={"material": code, "problem": "claim"},
                )
        return source
    if not source.fields:
        raise ServiceItemInvalid(
            f"Material {code!r} names no field of {source.dataset[:100]}; name the fields the "
            "approval needs.",
            metadata={"material": code, "field": "fields"},
        )
    _names(source.fields, "fields", code)
    entry = catalogue.get(source.dataset)
    if entry is None:
        raise MaterialSourceUnknown(
            f"Material {code!r} names dataset {source.dataset[:100]!r}, which is not in the "
            "catalogue (or not published); register it first or name another.",
            metadata={"material": code, "problem": "dataset"},
        )
    for name in source.fields:
        if entry.schema.field(name) is None:
            raise MaterialSourceUnknown(
                f"Material {code!r}: dataset {entry.code} has no field {name[:64]!r}; its "
                f"fields are {', '.join(entry.schema.names)}.",
                metadata={"material": code, "problem": "field"},
            )
    key = source.key_from
    if key is None:
        if entry.subject_kind is not SubjectKind.ENTERPRISE:
            raise MaterialKeyInvalid(
                f"Material {code!r} is keyed by the applicant (a USCC), but {entry.code} holds "
                f"{entry.subject_kind.value} records; take its key from an earlier material "
                "(key_from).",
                metadata={"material": code, "field": "key_from"},
            )
        return source
    before = earlier.get(key.material)
    if before is None:
        raise MaterialKeyInvalid(
            f"Material {code!r} takes its key from {key.material[:64]!r}, which is not a "
            "material listed before it; list that material first.",
            metadata={"material": code, "field": "key_from"},
        )
    if not isinstance(before.source, DataSource) or key.field not in before.source.fields:
        raise MaterialKeyInvalid(
            f"Material {code!r} takes its key from field {key.field[:64]!r} of {key.material}, "
            f"which does not return it; name one of the fields {key.material} looks up.",
            metadata={"material": code, "field": "key_from"},
        )
    return source
