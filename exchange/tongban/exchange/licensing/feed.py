"""Licences as change events: each licence type an issuer issues has a dataset
``<issuer>.licence_<type>`` (``samr.licence_business_licence``), keyed by holder id, whose
record is the holder's current licence of that type: number, version, status, validity,
the public claims (clear and not personal), and the selectively disclosable personal
claims as personal fields. Those are purpose-bound like every personal field
(docs/personal-data.md): others get them only under a grant from the issuer on this
dataset for their purpose, which is also what lets them disclose those claims when they
fetch a licence (``LicenceService/Fetch``).

Issuance, amendment and every status change write that record in the same transaction
as the licence itself, through ``RecordStore.publish_in``, so the outbox carries an
event exactly when the licence changed; subscribers (the regulator's supervision system,
审管互通) learn of licences like any other shared data. The dataset is unconditional:
what a licence proves publicly (who holds which licence, valid or revoked) is public
information (企业信用信息公示).

A holder with several licences of one type from one issuer (two premises) has one record:
the most recently changed licence. The events still carry every change.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal

from tongban.exchange.catalogue.schema import FieldSpec, FieldType, build_schema, validate_record
from tongban.exchange.catalogue.subject_ids import SubjectKind
from tongban.exchange.sharing.datasets import DatasetSpec, DatasetStore
from tongban.exchange.sharing.model import DatasetEntry, ShareClass
from tongban.exchange.sharing.records import Change
from tongban.licence import LicenceType

__all__ = ["LicenceFeed", "dataset_code", "personal_claims", "record_values"]

_TYPES = {
    "string": FieldType.STRING,
    "enum": FieldType.STRING,
    "date": FieldType.DATE,
    "integer": FieldType.INTEGER,
    "decimal": FieldType.DECIMAL,
    "boolean": FieldType.BOOLEAN,
}
_META = (
    FieldSpec("licence_number", FieldType.STRING, "证照编号", required=True, max_length=120),
    FieldSpec("licence_version", FieldType.INTEGER, "版本", required=True),
    FieldSpec(
        "licence_status",
        FieldType.STRING,
        "状态（valid 有效 / suspended 暂扣 / revoked 吊销 / cancelled 注销）",
        required=True,
        max_length=20,
    ),
    FieldSpec("not_before", FieldType.DATETIME, "有效期起", required=True),
    FieldSpec("expires", FieldType.DATETIME, "有效期至（空：长期）"),
)


def dataset_code(issuer: str, licence_type: LicenceType) -> str:
    """The dataset carrying ``issuer``'s licences of ``licence_type``."""
    return f"{issuer}.licence_{licence_type.code.replace('-', '_')}"


def _public_claims(licence_type: LicenceType) -> list[str]:
    return [
        c.name
        for c in licence_type.claims
        if not c.disclosable and not c.personal and not c.holder_id
    ]


def personal_claims(licence_type: LicenceType) -> list[str]:
    """The selectively disclosable personal claims: personal fields of the dataset."""
    return [c.name for c in licence_type.claims if c.disclosable and c.personal]


def _carried(licence_type: LicenceType) -> list[str]:
    public, personal = _public_claims(licence_type), personal_claims(licence_type)
    return [c.name for c in licence_type.claims if c.name in public or c.name in personal]


def _spec(issuer: str, licence_type: LicenceType) -> DatasetSpec:
    holder = licence_type.holder_claim or "holder_id"
    fields = [
        FieldSpec(holder, FieldType.STRING, "持证主体标识", required=True, max_length=18),
        *_META,
        *(
            FieldSpec(
                c.name,
                _TYPES[c.type],
                c.label_zh,
                personal=c.name in personal_claims(licence_type),
                max_length=c.max_length if c.type == "string" else None,
            )
            for c in licence_type.claims
            if c.name in _carried(licence_type)
        ),
    ]
    return DatasetSpec(
        code=dataset_code(issuer, licence_type),
        title=f"{licence_type.name_zh}（电子证照）",
        description=(
            f"{licence_type.name_zh}的证照编号、状态、有效期和公示信息；颁发、变更、暂扣、"
            "吊销、注销时更新"
        ),
        schema=build_schema(fields, holder),
        subject_kind=SubjectKind(licence_type.holder_kind),
        update_frequency="实时",
        share_class=ShareClass.UNCONDITIONAL,
        conditions="",
        legal_basis=None,
    )


def record_values(
    licence_type: LicenceType,
    *,
    number: str,
    version: int,
    status: str,
    not_before: datetime,
    expires: datetime | None,
    claims: Mapping[str, object],
) -> dict[str, object]:
    """The record of a licence, typed for the dataset's schema."""
    values: dict[str, object] = {
        "licence_number": number,
        "licence_version": version,
        "licence_status": status,
        "not_before": not_before,
        "expires": expires,
    }
    for name in _carried(licence_type):
        value = claims.get(name)
        kind = licence_type.claim(name).type
        if value is not None and kind == "date":
            value = date.fromisoformat(str(value))
        elif value is not None and kind == "decimal":
            value = Decimal(str(value))
        values[name] = value
    return values


class LicenceFeed:
    """Registers the licence datasets (once per node) and builds their record changes."""

    def __init__(self, datasets: DatasetStore) -> None:
        self._datasets = datasets
        self._entries: dict[str, DatasetEntry] = {}

    async def entry(self, issuer: str, licence_type: LicenceType, now: datetime) -> DatasetEntry:
        """The dataset entry for ``issuer``'s licences of ``licence_type``, registered and
        published on first use."""
        code = dataset_code(issuer, licence_type)
        entry = self._entries.get(code)
        if entry is None:
            entry = await self._datasets.register(
                issuer, _spec(issuer, licence_type), publish=True, now=now
            )
            self._entries[code] = entry
        return entry

    @staticmethod
    def change(entry: DatasetEntry, holder_id: str, values: dict[str, object]) -> Change:
        """The record change for ``values`` (as ``record_values`` returns them)."""
        return Change(
            holder_id,
            validate_record(entry.schema, {entry.schema.key_field: holder_id, **values}),
        )
