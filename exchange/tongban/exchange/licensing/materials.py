"""The materials resolver (免提交): for a service item (政务服务事项) and an applicant, which
required materials the approval service can obtain electronically, and which the
applicant must still submit, and why.

A service item (registered in the item catalogue, ``items.py``) lists its materials; each
names where it can come from: a licence of a type held by the applicant (fetched with the
item's purpose and the case, only the disclosures needed), fields of a shared dataset
keyed by the applicant or by a field another material returned (the legal
representative's id from the registration record), or the applicant.
Each lookup goes through the same policy and access log as any fetch or query, so a
material the caller may not see (no grant) is "submit", with the denial's reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from tongban.errors import TongbanError
from tongban.exchange.audit.log import AuditUnavailable
from tongban.exchange.identity import Caller
from tongban.exchange.licensing.cases import normal_applicant
from tongban.exchange.licensing.errors import LicenceNotFound
from tongban.exchange.licensing.fetch import ApprovalFetch
from tongban.exchange.licensing.items import (
    DataSource,
    LicenceSource,
    Material,
    ServiceItem,
    SubmittedSource,
)
from tongban.exchange.sharing.service import QueryInput, Sharing

__all__ = ["MaterialResolution", "resolve_materials"]


@dataclass(frozen=True)
class MaterialResolution:
    """One material: obtained electronically (with its reference) or to be submitted."""

    code: str
    name_zh: str
    required: bool
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


def _submit(material: Material, reason: str, why: str) -> MaterialResolution:
    """The applicant submits ``material``; the message says why, and what may replace it."""
    extras = []
    if material.defer_days:
        extras.append(f"it may follow within {material.defer_days} working days (容缺)")
    if material.commitment_check_days:
        extras.append(
            f"a commitment may replace it, checked within {material.commitment_check_days} "
            "working days (告知承诺)"
        )
    message = why + ("; " + "; ".join(extras) if extras else "")
    return MaterialResolution(
        material.code, material.name, material.required, False, "submit", "", reason, message, {}
    )


class HeldElsewhere(Protocol):
    """A licence fetched from a peer exchange (``federation.licence_fetch``)."""

    @property
    def peer(self) -> str: ...
    @property
    def number(self) -> str: ...
    @property
    def claims(self) -> Mapping[str, object]: ...


PeerLicenceFetch = Callable[..., Awaitable[HeldElsewhere]]
"""``fetch(caller, *, purpose, case_id, disclose, holder_id, licence_type)`` from the
peers (``LicenceFetchForwarding.fetch``); raises LicenceNotFound when none holds one."""


async def resolve_materials(
    caller: Caller,
    item: ServiceItem,
    applicant: str,
    case_id: str,
    *,
    licences: ApprovalFetch,
    sharing: Sharing,
    peers: PeerLicenceFetch | None = None,
) -> list[MaterialResolution]:
    """Resolve every material of ``item`` for ``applicant`` (a 统一社会信用代码 or a
    公民身份号码: 设立登记 is applied for by the founder) in case ``case_id``,
    as ``caller``, in the item's order. A licence the applicant holds in no licence here
    is asked of the ``peers`` (docs/federation.md). Raises InvalidSubjectId for a
    malformed applicant id; every other failure is a material to submit, with its
    reason."""
    applicant = normal_applicant(applicant)
    purpose = item.spec.purpose
    obtained: dict[str, Mapping[str, object]] = {}
    out: list[MaterialResolution] = []
    for material in item.spec.materials:
        source = material.source
        try:
            if isinstance(source, SubmittedSource):
                out.append(
                    _submit(
                        material,
                        "SUBMITTED_BY_APPLICANT",
                        "the item has no electronic source for it; the applicant submits it",
                    )
                )
                continue
            if isinstance(source, LicenceSource):
                try:
                    view, _presentation = await licences.fetch(
                        caller,
                        purpose=purpose,
                        case_id=case_id,
                        disclose=source.disclose,
                        holder_id=applicant,
                        licence_type=source.licence_type,
                    )
                except LicenceNotFound:
                    if peers is None:
                        raise
                    held = await peers(
                        caller, purpose=purpose, case_id=case_id, disclose=source.disclose,
                        holder_id=applicant, licence_type=source.licence_type,
                    )  # fmt: skip
                    obtained[material.code] = held.claims
                    out.append(
                        MaterialResolution(
                            material.code, material.name, material.required, True, "licence",
                            f"{held.peer}/{held.number}", "",
                            f"electronic licence {held.number} (valid) held in peer exchange "
                            f"{held.peer}, fetched for this case",
                            held.claims,
                        )
                    )  # fmt: skip
                    continue
                obtained[material.code] = view.claims
                out.append(
                    MaterialResolution(
                        material.code,
                        material.name,
                        material.required,
                        True,
                        "licence",
                        view.number,
                        "",
                        f"electronic licence {view.number} (valid), fetched for this case",
                        view.claims,
                    )
                )
                continue
            out.append(
                await _from_dataset(
                    caller, material, source, applicant, case_id, purpose, obtained, sharing
                )
            )
        except AuditUnavailable:
            raise  # no answer without its audit entry
        except TongbanError as e:
            out.append(
                _submit(
                    material,
                    e.reason,
                    f"not obtainable electronically ({e.message}); the applicant submits it",
                )
            )
    return out


async def _from_dataset(
    caller: Caller,
    material: Material,
    source: DataSource,
    applicant: str,
    case_id: str,
    purpose: str,
    obtained: dict[str, Mapping[str, object]],
    sharing: Sharing,
) -> MaterialResolution:
    key = applicant
    if source.key_from is not None:
        earlier = obtained.get(source.key_from.material, {})
        value = earlier.get(source.key_from.field)
        if not isinstance(value, str) or not value:
            return _submit(
                material,
                "KEY_UNAVAILABLE",
                f"its key ({source.key_from.field} of {source.key_from.material}) could not be "
                "obtained electronically; the applicant submits it",
            )
        key = value
    answer = await sharing.query(
        caller,
        QueryInput(
            dataset=source.dataset,
            keys=[key],
            fields=list(source.fields),
            purpose=purpose,
            case_id=case_id,
        ),
    )
    if not answer.records:
        return _submit(
            material,
            "RECORD_NOT_FOUND",
            f"{source.dataset} holds no record for this applicant; the applicant submits it",
        )
    record = answer.records[0]
    obtained[material.code] = record.values
    return MaterialResolution(
        material.code,
        material.name,
        material.required,
        True,
        "shared-data",
        f"{source.dataset} v{record.version} {record.key}",
        "",
        f"shared data from {source.dataset} ({', '.join(source.fields)})",
        record.values,
    )
