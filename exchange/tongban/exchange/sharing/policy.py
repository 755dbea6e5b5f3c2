"""The sharing decision: may this caller have these fields of this dataset, now?

A pure function of (intent, catalogue entry, the caller's grants on it, now), so that it
is tested exhaustively and by properties, with no database in sight. Its answer is either
``Allowed`` (with the grant that allowed it, for conditional data) or ``Denied`` with a
stable reason code. The rules (DESIGN.md, 以共享为原则、不共享为例外):

1. A purpose and a case id are required for every query.
2. The owner may always read its own dataset, published or not.
3. Others see only published datasets; an unpublished one does not exist for them.
4. Every asked field must exist in the current schema; at least one must be asked.
5. ``not_shared``: denied. ``conditional``: allowed only within a live (approved,
   unexpired) grant of the caller for the same purpose that covers every asked field.
6. ``unconditional``: fields that are not personal are allowed. A personal field (个人信息)
   is allowed only if a law the dataset cites for it (``personal_bases``) makes it
   shareable, or within a live grant for the same purpose that covers it: sharing
   personal information between departments must be necessary for a stated purpose
   (个人信息保护法 第三十四条; docs/personal-data.md). The decision is per field.

An ``Allowed`` names its grounds (the grant, the laws), which the access log records.
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
    PersonalBasis,
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
    "needs_grants",
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
    "PERSONAL_GRANT_REQUIRED": "PERMISSION_DENIED",
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
    bases: tuple[PersonalBasis, ...] = ()
    """The laws under which personal fields among ``fields`` are shared without a grant."""
    allowed: bool = field(default=True, init=False)

    def grounds(self) -> str | None:
        """What allowed this beyond the share class, as the access log records it:
        ``grant:<id>`` and ``law:《…》第…条``, joined by ``; ``; None if nothing."""
        parts = [f"grant:{self.grant_id}"] if self.grant_id is not None else []
        parts += [f"law:{basis.cited()}" for basis in self.bases]
        return "; ".join(parts) or None


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
    if is_owner:
        return Allowed(fields)
    if entry.share_class is ShareClass.NOT_SHARED:
        basis = entry.legal_basis
        cited = f" ({basis.law} {basis.article})" if basis else ""
        return Denied(
            "NOT_SHARED",
            f"Dataset {entry.code} is not shared{cited}; other departments cannot query it.",
            {"dataset": entry.code},
        )
    if entry.share_class is ShareClass.CONDITIONAL:
        return _granted(intent, entry, fields, fields, grants, now, personal=False)
    return _unconditional(intent, entry, fields, grants, now)


def needs_grants(entry: DatasetEntry | None, caller: str) -> bool:
    """Whether ``decide`` may look at ``caller``'s grants on ``entry`` (so whether a
    service must load them): conditional datasets, and unconditional ones with personal
    fields that no law the dataset cites covers."""
    if entry is None or entry.owner == caller:
        return False
    if entry.share_class is ShareClass.CONDITIONAL:
        return True
    if entry.share_class is ShareClass.NOT_SHARED:
        return False
    by_law = {name for basis in entry.personal_bases for name in basis.fields}
    return any(name not in by_law for name in entry.personal_fields())


def _unconditional(
    intent: QueryIntent,
    entry: DatasetEntry,
    fields: tuple[str, ...],
    grants: Sequence[Grant],
    now: datetime,
) -> Decision:
    by_law = {name: basis for basis in entry.personal_bases for name in basis.fields}
    personal = [name for name in fields if _is_personal(entry, name)]
    bases = tuple(dict.fromkeys(by_law[name] for name in personal if name in by_law))
    uncovered = tuple(name for name in personal if name not in by_law)
    if not uncovered:
        return Allowed(fields, bases=bases)
    decision = _granted(intent, entry, fields, uncovered, grants, now, personal=True)
    if isinstance(decision, Denied):
        return decision
    return Allowed(fields, decision.grant_id, bases)


def _is_personal(entry: DatasetEntry, name: str) -> bool:
    spec = entry.schema.field(name)
    return spec is not None and spec.personal


def _granted(
    intent: QueryIntent,
    entry: DatasetEntry,
    fields: tuple[str, ...],
    needed: tuple[str, ...],
    grants: Sequence[Grant],
    now: datetime,
    *,
    personal: bool,
) -> Decision:
    """Allowed if a live grant of the caller for this purpose covers every ``needed``
    field (all asked fields of a conditional dataset; the personal fields no law covers
    of an unconditional one)."""
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
        again = "your grant for this purpose was revoked; " if revoked else ""
        if personal:
            return Denied(
                "PERSONAL_GRANT_REQUIRED",
                f"{', '.join(needed)} of {entry.code} "
                f"{'is' if len(needed) == 1 else 'are'} personal information (个人信息), "
                f"shared only under a grant for the purpose it serves; {again}ask without "
                f"{'it' if len(needed) == 1 else 'them'}, or request a grant naming this "
                "purpose and these fields.",
                {"dataset": entry.code, "fields": ",".join(needed)},
            )
        return Denied(
            "GRANT_REQUIRED",
            f"Dataset {entry.code} is shared on conditions; {again}"
            "request a grant naming this purpose and the fields you need.",
            {"dataset": entry.code},
        )
    best = max(live, key=lambda g: len(set(needed) & set(g.fields)))
    missing = [name for name in needed if name not in best.fields]
    if missing:
        instead = "without them" if personal else f"only for {', '.join(best.fields)}"
        return Denied(
            "FIELD_NOT_GRANTED",
            f"Your grant on {entry.code} does not cover {', '.join(missing)}; ask {instead} "
            "or request a wider grant.",
            {"dataset": entry.code, "fields": ",".join(missing), "grant": str(best.id)},
        )
    return Allowed(fields, best.id)
