"""The materials resolver (免提交): for a service item (政务服务事项) and an applicant, which
required materials the approval service can obtain electronically, and which the
applicant must still submit, and why.

A service item lists its materials; each names where it can come from: a licence of a
type held by the applicant (fetched with the item's purpose and the case, only the
disclosures needed), or fields of a shared dataset keyed by the applicant or by a field
another material returned (the legal representative's id from the registration record).
Each lookup goes through the same policy and access log as any fetch or query, so a
material the caller may not see (no grant) is "submit", with the denial's reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tongban.errors import TongbanError
from tongban.exchange.audit.log import AuditUnavailable
from tongban.exchange.catalogue.subject_ids import SubjectKind, validate_subject_id
from tongban.exchange.licensing.errors import ServiceItemUnknown
from tongban.exchange.licensing.service import Licensing
from tongban.exchange.server.caller import Caller
from tongban.exchange.sharing.service import QueryInput, Sharing

__all__ = [
    "FOOD_BUSINESS_PERMIT_ITEM",
    "SERVICE_ITEMS",
    "DataSource",
    "LicenceSource",
    "Material",
    "MaterialResolution",
    "ServiceItem",
    "resolve_materials",
    "service_item",
]


@dataclass(frozen=True)
class LicenceSource:
    """A valid licence of ``licence_type`` held by the applicant."""

    licence_type: str
    disclose: tuple[str, ...] = ()
    """The selectively disclosable claims the approval needs."""


@dataclass(frozen=True)
class DataSource:
    """Fields of a shared dataset's record, keyed by the applicant or by ``key_from``."""

    dataset: str
    fields: tuple[str, ...]
    key_from: tuple[str, str] | None = None
    """(material code, field): take the key from a field another material returned."""


@dataclass(frozen=True)
class Material:
    code: str
    name_zh: str
    source: LicenceSource | DataSource


@dataclass(frozen=True)
class ServiceItem:
    code: str
    name_zh: str
    purpose: str
    """The purpose every lookup names (grants are for a purpose)."""
    materials: tuple[Material, ...]


@dataclass(frozen=True)
class MaterialResolution:
    """One material: obtained electronically (with its reference) or to be submitted."""

    code: str
    name_zh: str
    satisfied: bool
    source: str
    """``licence``, ``shared-data``, or ``submit``."""
    reference: str
    """The licence number, or ``dataset vN key``; empty when not satisfied."""
    reason: str
    """Empty when satisfied; else the reason code of why not."""
    message: str
    values: Mapping[str, object]
    """What was obtained (the disclosed claims or the fields)."""


FOOD_BUSINESS_PERMIT_ITEM = ServiceItem(
    code="food-business-permit",
    name_zh="食品经营许可",
    purpose="食品经营许可审批",
    materials=(
        Material(
            "business-licence",
            "营业执照",
            LicenceSource("business-licence", disclose=("legal_representative",)),
        ),
        Material(
            "registration",
            "市场主体登记信息（名称、住所、法定代表人）",
            DataSource(
                "samr.enterprise",
                ("name", "address", "legal_representative", "legal_representative_id"),
            ),
        ),
        Material(
            "legal-representative-identity",
            "法定代表人身份证明",
            DataSource(
                "police.person",
                ("name", "gender"),
                key_from=("registration", "legal_representative_id"),
            ),
        ),
    ),
)

#: The service items this exchange knows, by code.
SERVICE_ITEMS: Mapping[str, ServiceItem] = {
    FOOD_BUSINESS_PERMIT_ITEM.code: FOOD_BUSINESS_PERMIT_ITEM
}


def service_item(code: str) -> ServiceItem:
    """Return the service item ``code``; raises ServiceItemUnknown listing the known ones."""
    try:
        return SERVICE_ITEMS[code]
    except KeyError:
        raise ServiceItemUnknown(
            f"There is no service item {code[:100]!r}; known items: "
            f"{', '.join(sorted(SERVICE_ITEMS))}.",
            metadata={"service_item": code[:100]},
        ) from None


async def resolve_materials(
    caller: Caller,
    item: ServiceItem,
    applicant: str,
    case_id: str,
    *,
    licensing: Licensing,
    sharing: Sharing,
) -> list[MaterialResolution]:
    """Resolve every material of ``item`` for ``applicant`` (a USCC) in case ``case_id``,
    as ``caller``. Raises InvalidSubjectId for a malformed applicant id; every other
    failure is a material to submit, with its reason."""
    applicant = validate_subject_id(SubjectKind.ENTERPRISE, applicant)
    obtained: dict[str, Mapping[str, object]] = {}
    out: list[MaterialResolution] = []
    for material in item.materials:
        source = material.source
        try:
            if isinstance(source, LicenceSource):
                view, _presentation = await licensing.fetch(
                    caller,
                    purpose=item.purpose,
                    case_id=case_id,
                    disclose=source.disclose,
                    holder_id=applicant,
                    licence_type=source.licence_type,
                )
                obtained[material.code] = view.claims
                out.append(
                    MaterialResolution(
                        material.code,
                        material.name_zh,
                        True,
                        "licence",
                        view.number,
                        "",
                        f"electronic licence {view.number} (valid), fetched for this case",
                        view.claims,
                    )
                )
                continue
            key = applicant
            if source.key_from is not None:
                earlier = obtained.get(source.key_from[0], {})
                value = earlier.get(source.key_from[1])
                if not isinstance(value, str) or not value:
                    out.append(
                        MaterialResolution(
                            material.code,
                            material.name_zh,
                            False,
                            "submit",
                            "",
                            "KEY_UNAVAILABLE",
                            f"its key ({source.key_from[1]} of {source.key_from[0]}) could "
                            "not be obtained electronically; the applicant submits it",
                            {},
                        )
                    )
                    continue
                key = value
            answer = await sharing.query(
                caller,
                QueryInput(
                    dataset=source.dataset,
                    keys=[key],
                    fields=list(source.fields),
                    purpose=item.purpose,
                    case_id=case_id,
                ),
            )
            if not answer.records:
                out.append(
                    MaterialResolution(
                        material.code,
                        material.name_zh,
                        False,
                        "submit",
                        "",
                        "RECORD_NOT_FOUND",
                        f"{source.dataset} holds no record for this applicant; the applicant "
                        "submits it",
                        {},
                    )
                )
                continue
            record = answer.records[0]
            obtained[material.code] = record.values
            out.append(
                MaterialResolution(
                    material.code,
                    material.name_zh,
                    True,
                    "shared-data",
                    f"{source.dataset} v{record.version} {record.key}",
                    "",
                    f"shared data from {source.dataset} ({', '.join(source.fields)})",
                    record.values,
                )
            )
        except AuditUnavailable:
            raise  # no answer without its audit entry
        except TongbanError as e:
            out.append(
                MaterialResolution(
                    material.code,
                    material.name_zh,
                    False,
                    "submit",
                    "",
                    e.reason,
                    f"not obtainable electronically ({e.message}); the applicant submits it",
                    {},
                )
            )
    return out
