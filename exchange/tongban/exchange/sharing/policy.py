"""The sharing decision: may this caller have these fields of this dataset, now?

A pure function of (intent, catalogue entry, the caller's grants on it, now), so that it
is tested exhaustively and by properties, with no database in sight. Its answer is either
``Allowed`` (with the grant that allowed it, for conditional data) or ``Denied`` with a
stable reason code. The rules (DESIGN.md, 以共享为原则、不共享为例外):

1. A purpose and a case id are required for every query.
2. The owner may always read its own dataset, published or not.
3. Others see only published datasets; an unpublished one does not exist for them.
4. Every asked field must exist in the current schema; at least one must be asked.
5. ``unconditional``: allowed. ``not_shared``: denied. ``conditional``: allowed only
   within a live (approved, unexpired) grant of the caller for the same purpose that
   covers every asked field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from tongban.exchange.sharing.model import (
    DatasetEntry,
    Grant,
    GrantStatus,
    ShareClass,
    normalise_purpose,
)

__all__ = [
    "DENIAL_REASONS",
    "Allowed",
    "Decision",
    "Denied",
    "QueryIntent",
    "decide",
]

MAX_PURPOSE = 200
MAX_CASE_ID = 64
MAX_FIELDS = 200

# Reason → gRPC status name. Stable: part of the public contract.
DENIAL_REASONS: dict[str, str] = {
    "PURPOSE_REQUIRED": "INVALID_ARGUMENT",
    "CASE_REQUIRED": "INVALID_ARGUMENT",
    "INVALID_ARGUMENT": "INVALID_ARGUMENT",
    "DATASET_NOT_FOUND": "NOT_FOUND",
    "UNKNOWN_FIELD": "INVALID_ARGUMENT",
    "NOT_SHARED": "PERMISSION_DENIED",
    "GRANT_REQUIRED": "PERMISSION_DENIED",
    "GRANT_EXPIRED": "PERMISSION_DENIED",
    "FIELD_NOT_GRANTED": "PERMISSION_DENIED",
}


@dataclass(frozen=True)
class QueryIntent:
    """What a caller asks for (its department comes from its certificate)."""

    caller: str
    dataset: str
    fields: tuple[str, ...]
    purpose: str
    case_id: str


@dataclass(frozen=True)
class Allowed:
    fields: tuple[str, ...]
    grant_id: UUID | None = None
    allowed: bool = field(default=True, init=False)


@dataclass(frozen=True)
class Denied:
    reason: str
    message: str
    metadata: dict[str, str] = field(default_factory=dict)
    allowed: bool = field(default=False, init=False)


Decision = Allowed | Denied


def _check_intent(intent: QueryIntent) -> Denied | None:
    purpose = normalise_purpose(intent.purpose)
    if not purpose:
        return Denied(
            "PURPOSE_REQUIRED", "Every query must name its purpose (e.g. 食品经营许可审批)."
        )
    if len(purpose) > MAX_PURPOSE:
        return Denied(
            "INVALID_ARGUMENT",
            f"The purpose is {len(purpose)} characters long; at most {MAX_PURPOSE} are allowed.",
            {"field": "purpose"},
        )
    case_id = intent.case_id.strip()
    if not case_id:
        return Denied("CASE_REQUIRED", "Every query must name the case (办件编号) it serves.")
    if len(case_id) > MAX_CASE_ID or not case_id.isprintable():
        return Denied(
            "INVALID_ARGUMENT",
            f"A case id must be 1-{MAX_CASE_ID} printable characters.",
            {"field": "case_id"},
        )
    if not intent.fields:
        return Denied(
            "INVALID_ARGUMENT",
            "Name the fields you need; a query returns only the fields asked for.",
            {"field": "fields"},
        )
    if len(intent.fields) > MAX_FIELDS:
        return Denied(
            "INVALID_ARGUMENT",
            f"At most {MAX_FIELDS} fields may be asked for.",
            {"field": "fields"},
        )
    return None


def decide(
    intent: QueryIntent,
    entry: DatasetEntry | None,
    grants: Sequence[Grant],
    now: datetime,
) -> Decision:
    """Return ``Allowed`` or ``Denied`` for ``intent``.

    ``entry`` is the dataset's current catalogue entry (None if there is none); ``grants``
    are the caller's grants on that dataset in any state (others are ignored).
    """
    invalid = _check_intent(intent)
    if invalid is not None:
        return invalid
    is_owner = entry is not None and entry.owner == intent.caller
    if entry is None or not (entry.published or is_owner):
        return Denied(
            "DATASET_NOT_FOUND",
            f"No published dataset {intent.dataset[:100]!r} exists; check the catalogue.",
            {"dataset": intent.dataset[:100]},
        )
    fields = tuple(dict.fromkeys(intent.fields))  # asked once each, in the asked order
    unknown = [name for name in fields if entry.schema.field(name) is None]
    if unknown:
        return Denied(
            "UNKNOWN_FIELD",
            f"Dataset {entry.code} has no field {unknown[0][:64]!r}; its fields are "
            f"{', '.join(entry.schema.names)}.",
            {"field": unknown[0][:64]},
        )
    if is_owner or entry.share_class is ShareClass.UNCONDITIONAL:
        return Allowed(fields)
    if entry.share_class is ShareClass.NOT_SHARED:
        basis = entry.legal_basis
        cited = f" ({basis.law} {basis.article})" if basis else ""
        return Denied(
            "NOT_SHARED",
            f"Dataset {entry.code} is not shared{cited}; other departments cannot query it.",
            {"dataset": entry.code},
        )
    return _conditional(intent, entry, fields, grants, now)


def _conditional(
    intent: QueryIntent,
    entry: DatasetEntry,
    fields: tuple[str, ...],
    grants: Sequence[Grant],
    now: datetime,
) -> Decision:
    purpose = normalise_purpose(intent.purpose)
    mine = [g for g in grants if g.consumer == intent.caller and g.dataset == entry.code]
    for_purpose = [g for g in mine if normalise_purpose(g.purpose) == purpose]
    live = [g for g in for_purpose if g.is_live(now)]
    if not live:
        if any(g.status_at(now) is GrantStatus.EXPIRED for g in for_purpose):
            return Denied(
                "GRANT_EXPIRED",
                f"Your grant on {entry.code} for this purpose has expired; request a new one.",
                {"dataset": entry.code},
            )
        revoked = any(g.status is GrantStatus.REVOKED for g in for_purpose)
        return Denied(
            "GRANT_REQUIRED",
            f"Dataset {entry.code} is shared on conditions; "
            + ("your grant for this purpose was revoked; " if revoked else "")
            + "request a grant naming this purpose and the fields you need.",
            {"dataset": entry.code},
        )
    best = max(live, key=lambda g: len(set(fields) & set(g.fields)))
    missing = [name for name in fields if name not in best.fields]
    if missing:
        return Denied(
            "FIELD_NOT_GRANTED",
            f"Your grant on {entry.code} does not cover {', '.join(missing)}; ask only for "
            f"{', '.join(best.fields)} or request a wider grant.",
            {"dataset": entry.code, "fields": ",".join(missing), "grant": str(best.id)},
        )
    return Allowed(fields, best.id)
