"""What the licence, materials and seal calls answer, as typed values mirroring the
``tongban.v1`` licence messages field for field. Claims stay the JSON text the node sent
(``claims_json``), as the node wrote it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = [
    "ClaimSpec",
    "Licence",
    "LicenceHistoryEntry",
    "LicenceType",
    "LicenceVerification",
    "MaterialResolution",
    "PdfVerification",
    "ResolvedMaterials",
    "SealInfo",
]


@dataclass(frozen=True)
class ClaimSpec:
    name: str
    type: str
    label_zh: str
    label_en: str
    required: bool
    disclosable: bool
    personal: bool
    holder_id: bool
    choices: tuple[str, ...]


@dataclass(frozen=True)
class LicenceType:
    code: str
    name_zh: str
    name_en: str
    vct: str
    issuers: tuple[str, ...]
    revokers: tuple[str, ...]
    holder_kind: str
    validity_days: int  # the default validity; 0 for open-ended (长期)
    claims: tuple[ClaimSpec, ...]


@dataclass(frozen=True)
class LicenceHistoryEntry:
    version: int
    action: str
    from_status: str
    to_status: str
    reason: str
    department: str
    officer: str
    at: datetime


@dataclass(frozen=True)
class Licence:
    """A licence version. ``status``: valid, suspended, revoked, cancelled or superseded.
    ``sd_jwt`` holds every disclosure (issue, get) or a presentation (fetch), and is empty
    in a holder's list."""

    number: str
    version: int
    licence_type: str
    holder_id: str
    holder_kind: str
    holder_name: str
    issuer: str
    status: str
    status_uri: str
    status_index: int
    not_before: datetime
    expires: datetime | None  # None for an open-ended licence
    claims_json: str
    sd_jwt: str
    qr: str
    case_id: str
    issued_at: datetime
    history: tuple[LicenceHistoryEntry, ...]
    sd_jwt_sm2: str = ""
    """The SM2 signature beside ``sd_jwt`` when the issuer chose an SM2 seal (check it with
    ``verify_licence(sd_jwt, sd_jwt_sm2=...)``); empty otherwise."""


@dataclass(frozen=True)
class LicenceVerification:
    """An online verification: a forged, expired or revoked licence is ``verified=False``
    with the failed ``check`` and a ``reason`` code, not an error."""

    verified: bool
    format: str  # sd-jwt, qr or unknown
    check: str
    reason: str
    message: str
    licence_number: str
    licence_type: str
    issuer: str
    holder_id: str
    holder_name: str
    claims_json: str
    status: str
    not_before: datetime | None
    expires: datetime | None
    exchange: str = ""
    """The issuing exchange (this exchange's name for the peer); empty when issued here."""
    sm2_verified: bool = False
    """Whether the SM2 signature given beside the SD-JWT verified."""


@dataclass(frozen=True)
class MaterialResolution:
    """How one material of a service item is obtained: ``source`` licence, shared-data or
    submit; ``reference`` the licence number or "dataset vN key" when satisfied."""

    code: str
    name_zh: str
    satisfied: bool
    source: str
    reference: str
    reason: str
    message: str
    values_json: str
    required: bool


@dataclass(frozen=True)
class ResolvedMaterials:
    """The materials of ``service_item`` (version ``item_version``) for an applicant;
    ``to_submit`` counts the required ones the applicant must still submit."""

    service_item: str
    materials: tuple[MaterialResolution, ...]
    to_submit: int
    item_version: int


@dataclass(frozen=True)
class SealInfo:
    field_name: str
    department: str
    signer_name: str
    signing_time: datetime | None
    intact: bool
    coverage: str  # entire-file, or entire-revision when later updates were appended
    modification_level: str
    pades_level: str


@dataclass(frozen=True)
class PdfVerification:
    """Which departments sealed a PDF and whether it is intact; ``check`` names the failed
    check (integrity, coverage, modifications, trust or format), empty when verified."""

    verified: bool
    check: str
    reason: str
    message: str
    seals: tuple[SealInfo, ...]
    exchange: str = ""
    """The peer exchange whose root the seals chain to (your exchange's name for it);
    empty when they are your exchange's own."""
