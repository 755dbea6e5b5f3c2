"""Issuing licences and changing them: issue (one or a batch), suspend, reinstate, revoke or
cancel, amend or renew. Each change is written to the access log (subject: the holder id,
as a keyed hash) inside its transaction, before it commits, so nothing is changed that is
not logged, and a failure to log leaves nothing changed. The licence feed's record of the
holder changes in the same transaction.
"""

from __future__ import annotations

import enum
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from tongban.exchange.audit.log import AccessLog
from tongban.exchange.catalogue.subject_ids import SubjectKind, validate_subject_id
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.identity import Caller
from tongban.exchange.licensing.cases import is_case_number
from tongban.exchange.licensing.credentials import sign_version
from tongban.exchange.licensing.custody import SealVault
from tongban.exchange.licensing.errors import (
    LicenceNotFound,
    LicenceNotPermitted,
    StatusChangeInvalid,
)
from tongban.exchange.licensing.feed import LicenceFeed, record_values
from tongban.exchange.licensing.register import (
    HISTORY_COLUMNS,
    LICENCE_COLUMNS,
    LicenceRegister,
    LicenceView,
    licence_row,
    normal_number,
)
from tongban.exchange.licensing.sm2_seals import Sm2Seal, Sm2Seals
from tongban.exchange.licensing.status import StatusLists
from tongban.exchange.sharing.model import DatasetEntry
from tongban.exchange.sharing.policy import MAX_CASE_ID
from tongban.exchange.sharing.records import RecordStore
from tongban.exchange.sharing.storage import row_bytes
from tongban.licence import (
    LicenceStatus,
    LicenceType,
    LicenceTypeRegistry,
    default_expiry,
    make_licence_number,
    random_serial,
    validate_claims,
)
from tongban.signing import Clock

__all__ = ["Issuance", "IssueInput", "StatusAction"]

_MAX_REASON = 500
_MAX_BATCH = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST_START = datetime(9000, 1, 1, tzinfo=UTC)


class StatusAction(enum.StrEnum):
    """A status change: 暂扣 (suspend), 恢复 (reinstate), 吊销/撤销 (revoke), 注销 (cancel)."""

    SUSPEND = "suspend"
    REINSTATE = "reinstate"
    REVOKE = "revoke"
    CANCEL = "cancel"


# action -> (statuses it applies to, the new status, the status list value)
_TRANSITIONS: dict[StatusAction, tuple[frozenset[str], str, LicenceStatus]] = {
    StatusAction.SUSPEND: (frozenset({"valid"}), "suspended", LicenceStatus.SUSPENDED),
    StatusAction.REINSTATE: (frozenset({"suspended"}), "valid", LicenceStatus.VALID),
    StatusAction.REVOKE: (frozenset({"valid", "suspended"}), "revoked", LicenceStatus.INVALID),
    StatusAction.CANCEL: (frozenset({"valid", "suspended"}), "cancelled", LicenceStatus.INVALID),
}


@dataclass(frozen=True)
class IssueInput:
    """One licence to issue, from an approval result."""

    licence_type: str
    """The licence type code (``business-licence``)."""
    claims: Mapping[str, object]
    """The claims as the department system sends them (validated and normalised here)."""
    case_id: str = ""
    """The case (办件编号) whose approval result this licence is."""
    not_before: datetime | None = None
    """Start of validity (default: now)."""
    expires: datetime | None = None
    """End of validity (default: the type's validity; None for open-ended types)."""
    reason: str = ""
    """Why, e.g. the approval decision's number; kept in the history."""


def _text(value: str, what: str, *, limit: int, required: bool) -> str:
    text = unicodedata.normalize("NFC", value or "").strip()
    if required and not text:
        raise InvalidArgument(f"Give the {what}.", metadata={"field": what.replace(" ", "_")})
    if len(text) > limit or any(unicodedata.category(c) == "Cc" for c in text):
        raise InvalidArgument(
            f"The {what} must be at most {limit} characters without control characters.",
            metadata={"field": what.replace(" ", "_")},
        )
    return text


def _validator(kind: str) -> Callable[[str], str]:
    subject = SubjectKind(kind)

    def validate(text: str) -> str:
        return validate_subject_id(subject, text)

    return validate


class Issuance:
    """Issues licences with the issuing department's seal and changes them."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        register: LicenceRegister,
        vault: SealVault,
        status_lists: StatusLists,
        registry: LicenceTypeRegistry,
        feed: LicenceFeed,
        records: RecordStore,
        access_log: AccessLog,
        clock: Clock,
        sm2_seals: Sm2Seals | None = None,
    ) -> None:
        """``sm2_seals``: departments' SM2 seals; a department with one has each licence
        signed with it beside its ES256 seal."""
        self._pool = pool
        self._register = register
        self._vault = vault
        self._sm2_seals = sm2_seals
        self._status_lists = status_lists
        self._registry = registry
        self._feed = feed
        self._records = records
        self._log = access_log
        self._clock = clock

    # -- issuance -----------------------------------------------------------------------

    async def _sm2(self, department: str) -> Sm2Seal | None:
        return await self._sm2_seals.current(department) if self._sm2_seals else None

    def _issuable(self, caller: Caller, code: str) -> LicenceType:
        licence_type = self._registry.get(code)
        if caller.department.code not in licence_type.issuers:
            raise LicenceNotPermitted(
                f"{caller.department.code} does not issue {licence_type.name_en} "
                f"({licence_type.name_zh}) licences; they are issued by "
                f"{', '.join(licence_type.issuers)}.",
                metadata={"licence_type": code},
            )
        return licence_type

    async def _conditions(self, department: str, case_id: str) -> tuple[str, ...]:
        """The conditions a licence issued for case ``case_id`` of ``department`` carries:
        each commitment (告知承诺) still to be checked, with its material and deadline, so
        a verifier sees what the approval rests on (an SD-JWT clear claim ``conditions``)."""
        if not is_case_number(case_id):
            return ()
        rows = await self._pool.fetch(
            """
            SELECT coalesce(
                       (SELECT m->>'name' FROM jsonb_array_elements(v.materials) m
                        WHERE m->>'code' = cm.material), cm.material) AS name,
                   cm.due_at
            FROM case_material cm
            JOIN service_case c ON c.number = cm.case_number
            JOIN service_item_version v ON v.item = c.item AND v.version = c.item_version
            WHERE cm.case_number = $1 AND c.department = $2 AND cm.kind = 'committed'
              AND cm.state = 'open'
            ORDER BY cm.material
            """,
            case_id,
            department,
        )
        return tuple(
            f"告知承诺：{r['name']}，待核查（期限 {r['due_at'].isoformat(timespec='minutes')}）"
            for r in rows
        )

    async def issue(self, caller: Caller, request: IssueInput) -> LicenceView:
        """Issue one licence; return it. Raises LicenceTypeUnknown, LicenceNotPermitted,
        ClaimInvalid (naming the claim; a bad holder id is problem ``holder_id``),
        InvalidArgument, SealNotEnrolled or AuditUnavailable."""
        return (await self.issue_many(caller, [request]))[0]

    async def issue_many(self, caller: Caller, requests: Sequence[IssueInput]) -> list[LicenceView]:
        """Issue licences in one transaction (all or none): the batch path of the
        benchmark and of bulk issuance. Raises as ``issue``."""
        if not requests:
            raise InvalidArgument("Nothing to issue.", metadata={"field": "licences"})
        if len(requests) > _MAX_BATCH:
            raise InvalidArgument(f"Issue at most {_MAX_BATCH} licences at once.")
        now = self._clock.now()
        prepared = []
        for request in requests:
            licence_type = self._issuable(caller, request.licence_type)
            claims = validate_claims(
                licence_type, request.claims, validate_holder=_validator(licence_type.holder_kind)
            )
            holder_claim = licence_type.holder_claim
            if holder_claim is None:
                raise InvalidArgument(f"Licence type {licence_type.code} names no holder claim.")
            not_before = request.not_before or now
            if not_before.tzinfo is None or (
                request.expires is not None and request.expires.tzinfo is None
            ):
                raise InvalidArgument("Validity instants must carry a time zone.")
            if not _EPOCH <= not_before <= _LATEST_START:
                # The QR code and the SD-JWT count seconds from 1970; and a start past
                # 9000 leaves no room for a default validity.
                raise InvalidArgument(
                    "The licence must start between 1970 and 9000.",
                    metadata={"field": "not_before"},
                )
            expires = request.expires or default_expiry(licence_type, not_before)
            if expires is not None and expires <= not_before:
                raise InvalidArgument(
                    "The licence must expire after it starts.", metadata={"field": "expires"}
                )
            case_id = _text(request.case_id, "case id", limit=MAX_CASE_ID, required=False)
            reason = _text(request.reason, "reason", limit=_MAX_REASON, required=False)
            prepared.append((licence_type, claims, str(claims[holder_claim]), not_before,
                             expires, case_id, reason))  # fmt: skip
        seal = await self._vault.get(caller.department.code)
        sm2 = await self._sm2(caller.department.code)
        seal_expires = seal.certificate.not_valid_after_utc
        if any(p[4] is None and p[3] >= seal_expires for p in prepared):
            # Its QR code would expire with the seal certificate, before the licence starts.
            raise InvalidArgument(
                f"An open-ended licence must start before {seal_expires:%Y-%m-%d}, when the "
                "seal certificate expires; give it an expiry or an earlier start.",
                metadata={"field": "not_before"},
            )
        entries = {
            t.code: await self._feed.entry(caller.department.code, t, now) for t, *_ in prepared
        }
        conditions = {
            p[5]: await self._conditions(caller.department.code, p[5]) for p in prepared if p[5]
        }
        views: list[LicenceView] = []
        async with self._pool.acquire() as conn, self._log.transaction(conn) as log:
            slots = await self._status_lists.allocate(conn, len(prepared))
            rows, history, changes = [], [], []
            sizes: dict[str, int] = {}
            for (licence_type, claims, holder, nbf, exp, case_id, reason), slot in zip(
                prepared, slots, strict=True
            ):
                number = make_licence_number(
                    licence_type.number_prefix,
                    caller.department.code,
                    now.year,
                    random_serial(),
                )
                view = sign_version(
                    seal, licence_type, number, 1, claims, holder, nbf, exp,
                    (self._status_lists.uri(slot[0]), slot[1]), now, case_id,
                    conditions.get(case_id, ()), sm2,
                )  # fmt: skip
                views.append(view)
                rows.append(licence_row(view, caller.officer_id))
                history.append((number, 1, "issue", None, "valid", reason or "颁发",
                                caller.department.code, caller.officer_id, now))  # fmt: skip
                changes.append((licence_type, view))
                sizes[number] = row_bytes(rows[-1], history[-1])
            await conn.copy_records_to_table("licence", records=rows, columns=LICENCE_COLUMNS)
            await conn.copy_records_to_table(
                "licence_history", records=history, columns=HISTORY_COLUMNS
            )
            await self._publish(conn, entries, changes, now, sizes)
            for code in entries:
                batch = [v for v in views if v.licence_type == code]
                log.record(
                    self._register.entries(
                        caller,
                        "licence-issue",
                        dataset=entries[code].code,
                        holders=[v.holder_id for v in batch],
                        now=now,
                        purpose="电子证照颁发",
                        case_id=batch[0].case_id if len(batch) == 1 else None,
                    )
                )
        return views

    async def _publish(
        self,
        conn: Any,
        entries: Mapping[str, Any],
        changes: Sequence[tuple[LicenceType, LicenceView]],
        now: datetime,
        sizes: Mapping[str, int],
    ) -> None:
        """Write the holder feeds' records of ``changes``; ``sizes`` (by licence number)
        are the bytes of the licence and history rows written for them, which count
        toward the issuer's storage quota with the feed (StorageQuotaExceeded)."""
        by_dataset: dict[str, dict[str, Any]] = {}
        stored: dict[str, int] = {}
        for licence_type, view in changes:
            entry = entries[licence_type.code]
            stored[entry.code] = stored.get(entry.code, 0) + sizes.get(view.number, 0)
            values = record_values(
                licence_type,
                number=view.number,
                version=view.version,
                status=view.status,
                not_before=view.not_before,
                expires=view.expires,
                claims=view.claims,
            )
            # One change per holder and dataset: the last licence written wins the record.
            by_dataset.setdefault(entry.code, {})[view.holder_id] = self._feed.change(
                entry, view.holder_id, values
            )
        for code, holder_changes in by_dataset.items():
            entry = next(e for e in entries.values() if e.code == code)
            await self._records.publish_in(
                conn, entry, list(holder_changes.values()), now, extra_bytes=stored[code]
            )

    # -- status changes, amendment, renewal ---------------------------------------------

    async def _before_change(
        self,
        number: str,
        now: datetime,
        may: Callable[[Caller, LicenceView], LicenceType],
        caller: Caller,
    ) -> tuple[LicenceType, DatasetEntry]:
        """Check ``may`` and find the licence's feed dataset before a change takes a pooled
        connection: the feed registers the dataset on first use with a connection of its
        own, and nothing may wait for a second connection while holding one. A licence's
        type and issuer never change, so what this finds stays true in the transaction.
        Raises LicenceNotFound or what ``may`` raises."""
        view = await self._register.load(number)
        if view is None:
            raise LicenceNotFound(f"No licence {number} exists.")
        licence_type = may(caller, view)
        return licence_type, await self._feed.entry(view.issuer, licence_type, now)

    async def change_status(
        self, caller: Caller, number: str, action: StatusAction, reason: str
    ) -> LicenceView:
        """Suspend, reinstate, revoke or cancel licence ``number`` with ``reason``; the
        status list bit changes in the same transaction. Raises LicenceNotFound,
        LicenceNotPermitted, StatusChangeInvalid, InvalidArgument."""
        number = normal_number(number)
        reason = _text(reason, "reason", limit=_MAX_REASON, required=True)
        allowed_from, to_status, bit = _TRANSITIONS[action]
        now = self._clock.now()
        licence_type, entry = await self._before_change(
            number, now, self._register.may_manage, caller
        )
        async with self._pool.acquire() as conn, self._log.transaction(conn) as log:
            view = await self._register.load(number, conn=conn, lock=True)
            if view is None:
                raise LicenceNotFound(f"No licence {number} exists.")
            if action is StatusAction.CANCEL and caller.department.code not in (
                licence_type.issuers
            ):
                raise LicenceNotPermitted(
                    f"Only the issuer ({', '.join(licence_type.issuers)}) cancels (注销) a "
                    f"{licence_type.name_en}.",
                )
            if view.status not in allowed_from:
                raise StatusChangeInvalid(
                    f"Licence {number} is {view.status}; it cannot be {action.value}d "
                    f"({action.value} applies to {', '.join(sorted(allowed_from))} licences).",
                    metadata={"status": view.status},
                )
            await conn.execute(
                "UPDATE licence SET status = $3, updated_at = $4"
                " WHERE number = $1 AND version = $2",
                number,
                view.version,
                to_status,
                now,
            )
            list_id = int(view.status_uri.rsplit("/", 1)[1])
            await self._status_lists.set_status(conn, [(list_id, view.status_index)], bit)
            entry_row = (number, view.version, action.value, view.status, to_status, reason,
                         caller.department.code, caller.officer_id, now)  # fmt: skip
            await conn.execute(
                "INSERT INTO licence_history (number, version, action, from_status, to_status,"
                " reason, department, officer, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                *entry_row,
            )
            changed = LicenceView(**{**view.__dict__, "status": to_status, "updated_at": now})
            await self._publish(
                conn,
                {licence_type.code: entry},
                [(licence_type, changed)],
                now,
                {number: row_bytes(entry_row)},
            )
            log.record(
                self._register.entries(caller, f"licence-{action.value}", dataset=entry.code,
                                       holders=[view.holder_id], now=now, purpose=reason)
            )  # fmt: skip
        return LicenceView(**{**changed.__dict__, "history": await self._register.history(number)})

    async def amend(
        self,
        caller: Caller,
        number: str,
        *,
        claims: Mapping[str, object] | None,
        expires: datetime | None,
        reason: str,
        renew: bool,
    ) -> LicenceView:
        """Write a new version of licence ``number`` (amended claims, or for ``renew`` a
        new validity), superseding the current one, which stops verifying. The number
        stays; the new version gets a new status index. Only the issuer amends.

        Raises LicenceNotFound, LicenceNotPermitted, StatusChangeInvalid, ClaimInvalid,
        InvalidArgument."""
        number = normal_number(number)
        reason = _text(reason, "reason", limit=_MAX_REASON, required=True)
        now = self._clock.now()
        licence_type, entry = await self._before_change(
            number, now, lambda c, v: self._issuable(c, v.licence_type), caller
        )
        seal = await self._vault.get(caller.department.code)
        sm2 = await self._sm2(caller.department.code)
        # The new version carries the commitments of its case still to be checked.
        current = await self._register.load(number)
        conditions = (
            await self._conditions(caller.department.code, current.case_id)
            if current is not None and current.case_id
            else ()
        )
        async with self._pool.acquire() as conn, self._log.transaction(conn) as log:
            old = await self._register.load(number, conn=conn, lock=True)
            if old is None:
                raise LicenceNotFound(f"No licence {number} exists.")
            if old.issuer != caller.department.code:
                raise LicenceNotPermitted(f"Licence {number} was issued by {old.issuer}.")
            if old.status != "valid":
                raise StatusChangeInvalid(
                    f"Licence {number} is {old.status}; only a valid licence is "
                    f"{'renewed' if renew else 'amended'}.",
                    metadata={"status": old.status},
                )
            merged = {**old.claims, **(claims or {})}
            new_claims = validate_claims(
                licence_type, merged, validate_holder=_validator(licence_type.holder_kind)
            )
            holder = str(new_claims[licence_type.holder_claim or ""])
            if holder != old.holder_id:
                raise InvalidArgument(
                    "A licence's holder does not change; issue a new licence instead.",
                    metadata={"field": licence_type.holder_claim or "holder"},
                )
            not_before = now if renew else old.not_before
            new_expires = expires or (
                default_expiry(licence_type, not_before) if renew else old.expires
            )
            if new_expires is not None and new_expires <= not_before:
                raise InvalidArgument("The licence must expire after it starts.")
            slot = (await self._status_lists.allocate(conn, 1))[0]
            view = sign_version(seal, licence_type, number, old.version + 1, new_claims, holder,
                                not_before, new_expires, (self._status_lists.uri(slot[0]), slot[1]),
                                now, old.case_id, conditions, sm2)  # fmt: skip
            await conn.execute(
                "UPDATE licence SET status = 'superseded', updated_at = $3"
                " WHERE number = $1 AND version = $2",
                number,
                old.version,
                now,
            )
            old_list = int(old.status_uri.rsplit("/", 1)[1])
            await self._status_lists.set_status(
                conn, [(old_list, old.status_index)], LicenceStatus.INVALID
            )
            row = licence_row(view, caller.officer_id)
            await conn.copy_records_to_table("licence", records=[row], columns=LICENCE_COLUMNS)
            action = "renew" if renew else "amend"
            entry_row = (number, view.version, action, "valid", "valid", reason,
                         caller.department.code, caller.officer_id, now)  # fmt: skip
            await conn.execute(
                "INSERT INTO licence_history (number, version, action, from_status, to_status,"
                " reason, department, officer, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                *entry_row,
            )
            await self._publish(
                conn,
                {licence_type.code: entry},
                [(licence_type, view)],
                now,
                {number: row_bytes(row, entry_row)},
            )
            log.record(
                self._register.entries(caller, f"licence-{action}", dataset=entry.code,
                                       holders=[holder], now=now, purpose=reason)
            )  # fmt: skip
        return LicenceView(**{**view.__dict__, "history": await self._register.history(number)})
