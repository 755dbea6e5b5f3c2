"""The licence service: issue, get, list, fetch for an approval, change status, amend or
renew, verify, render, trust lists and status lists. It knows no gRPC or HTTP; the
servicers and routes translate to these calls.

Every issuance, status change, amendment, get, list and fetch is written to the access
log (subject: the holder id, as a keyed hash) before the call returns; writes are logged
inside their transaction, before it commits, so nothing is changed that is not logged,
and a failure to log leaves nothing changed.
"""

from __future__ import annotations

import enum
import json
import unicodedata
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from cryptography import x509

from tongban.exchange.audit.log import AccessEntry, AccessLog, SubjectHasher
from tongban.exchange.audit.recorder import AccessRecorder
from tongban.exchange.catalogue.subject_ids import SubjectKind, validate_subject_id
from tongban.exchange.datadir import NodeSigning
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.identity import Caller
from tongban.exchange.licensing.authorisations import (
    AuthorisationInvalid,
    HolderAuthorisations,
    valid_holder,
)
from tongban.exchange.licensing.cases import is_case_number
from tongban.exchange.licensing.custody import Seal, SealVault
from tongban.exchange.licensing.errors import (
    LicenceNotFound,
    LicenceNotPermitted,
    StatusChangeInvalid,
)
from tongban.exchange.licensing.feed import (
    LicenceFeed,
    dataset_code,
    personal_claims,
    record_values,
)
from tongban.exchange.licensing.status import StatusLists, StatusToken
from tongban.exchange.licensing.trust import LicenceTrust
from tongban.exchange.sharing.errors import QueryDenied
from tongban.exchange.sharing.model import DatasetEntry
from tongban.exchange.sharing.policy import (
    MAX_CASE_ID,
    Allowed,
    Decision,
    Denied,
    QueryIntent,
)
from tongban.exchange.sharing.records import RecordStore
from tongban.licence import (
    LicenceStatus,
    LicenceType,
    LicenceTypeRegistry,
    QrClaims,
    TrustList,
    VerificationResult,
    check_licence_number,
    default_expiry,
    encode_qr,
    issue_sd_jwt,
    make_licence_number,
    present,
    random_serial,
    split_claims,
    validate_claims,
)
from tongban.signing import DEPT_URI_PREFIX, Clock

__all__ = [
    "HistoryEntry",
    "IssueInput",
    "LicenceView",
    "Licensing",
    "StatusAction",
    "read_licences",
]

_MAX_REASON = 500
#: Denials that the holder's own authorisation may overcome (a missing grant for a
#: personal claim); purpose, case and field checks stand whatever the holder says.
_HOLDER_MAY_ALLOW = frozenset(
    {"PERSONAL_GRANT_REQUIRED", "FIELD_NOT_GRANTED", "GRANT_EXPIRED", "GRANT_REQUIRED"}
)
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


@dataclass(frozen=True)
class HistoryEntry:
    version: int
    action: str
    from_status: str | None
    to_status: str
    reason: str
    department: str
    officer: str | None
    at: datetime


@dataclass(frozen=True)
class LicenceView:
    """A stored licence version."""

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
    expires: datetime | None
    claims: dict[str, object]
    sd_jwt: str
    qr: str
    case_id: str
    created_at: datetime
    updated_at: datetime
    history: tuple[HistoryEntry, ...] = field(default=())

    def summary(self) -> dict[str, Any]:
        """JSON-ready data without the credential and without personal claims."""
        return {
            "number": self.number,
            "version": self.version,
            "licence_type": self.licence_type,
            "holder_id": self.holder_id,
            "holder_name": self.holder_name,
            "issuer": self.issuer,
            "status": self.status,
            "not_before": self.not_before.isoformat(),
            "expires": self.expires.isoformat() if self.expires else None,
            "created_at": self.created_at.isoformat(),
        }


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


def _holder_name(licence_type: LicenceType, claims: Mapping[str, object]) -> str:
    for claim in licence_type.claims:
        value = claims.get(claim.name)
        if claim.type == "string" and not claim.holder_id and isinstance(value, str) and value:
            return value
    return str(claims.get(licence_type.holder_claim or "", ""))


def _validator(kind: str) -> Callable[[str], str]:
    subject = SubjectKind(kind)

    def validate(text: str) -> str:
        return validate_subject_id(subject, text)

    return validate


class Licensing:
    """The licence service of one node."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        vault: SealVault,
        status_lists: StatusLists,
        registry: LicenceTypeRegistry,
        feed: LicenceFeed,
        records: RecordStore,
        access_log: AccessLog,
        hasher: SubjectHasher,
        node_signing: NodeSigning,
        roots: Sequence[x509.Certificate],
        clock: Clock,
        node_name: str,
        decide: Callable[[QueryIntent, DatasetEntry | None, datetime], Awaitable[Decision]],
    ) -> None:
        self._pool = pool
        self._decide = decide
        """The sharing policy's decision with the caller's grants (``Sharing.decide``)."""
        self.authorisations = HolderAuthorisations(pool)
        self.vault = vault
        self.status_lists = status_lists
        self.registry = registry
        self._feed = feed
        self._records = records
        self._log = access_log
        self._hasher = hasher
        self._node_signing = node_signing
        self.roots = tuple(roots)
        self._clock = clock
        self._node = node_name
        self._recorder = AccessRecorder(node_name, hasher)
        self.trust = LicenceTrust(
            pool, vault=vault, status_lists=status_lists, registry=registry,
            node_signing=node_signing, roots=roots, clock=clock,
        )  # fmt: skip

    # -- the access log -----------------------------------------------------------------

    async def _audit(
        self,
        caller: Caller,
        action: str,
        *,
        dataset: str | None,
        holders: Sequence[str | None],
        now: datetime,
        purpose: str | None = None,
        case_id: str | None = None,
        fields: Sequence[str] = (),
        denied: str | None = None,
    ) -> None:
        """Append the entries of a read or a refusal, which changes nothing (a change records
        its entries in its own transaction: ``_entries`` and ``AccessLog.transaction``)."""
        await self._log.append(
            self._entries(caller, action, dataset=dataset, holders=holders, now=now,
                          purpose=purpose, case_id=case_id, fields=fields, denied=denied)
        )  # fmt: skip

    def _entries(
        self,
        caller: Caller,
        action: str,
        *,
        dataset: str | None,
        holders: Sequence[str | None],
        now: datetime,
        purpose: str | None = None,
        case_id: str | None = None,
        fields: Sequence[str] = (),
        denied: str | None = None,
        grounds: str | None = None,
    ) -> list[AccessEntry]:
        return [
            self._recorder.entry(
                at=now,
                department=caller.department.code,
                officer=caller.officer_id,
                action=action,
                dataset=dataset,
                fields=fields,
                purpose=purpose or None,
                case_id=case_id or None,
                subject=holder or None,
                decision="denied" if denied else "allowed",
                reason=denied or grounds,
            )
            for holder in (holders or [None])
        ]

    # -- issuance -----------------------------------------------------------------------

    def _issuable(self, caller: Caller, code: str) -> LicenceType:
        licence_type = self.registry.get(code)
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
        seal = await self.vault.get(caller.department.code)
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
            slots = await self.status_lists.allocate(conn, len(prepared))
            rows, history, changes = [], [], []
            for (licence_type, claims, holder, nbf, exp, case_id, reason), slot in zip(
                prepared, slots, strict=True
            ):
                number = make_licence_number(
                    licence_type.number_prefix,
                    caller.department.code,
                    now.year,
                    random_serial(),
                )
                view = self._sign(
                    seal, licence_type, number, 1, claims, holder, nbf, exp, slot, now, case_id,
                    conditions.get(case_id, ()),
                )  # fmt: skip
                views.append(view)
                rows.append(self._row(view, caller.officer_id))
                history.append((number, 1, "issue", None, "valid", reason or "颁发",
                                caller.department.code, caller.officer_id, now))  # fmt: skip
                changes.append((licence_type, view))
            await conn.copy_records_to_table("licence", records=rows, columns=_LICENCE_COLUMNS)
            await conn.copy_records_to_table(
                "licence_history", records=history, columns=_HISTORY_COLUMNS
            )
            await self._publish(conn, entries, changes, now)
            for code in entries:
                batch = [v for v in views if v.licence_type == code]
                log.record(
                    self._entries(
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

    def _sign(
        self,
        seal: Seal,
        licence_type: LicenceType,
        number: str,
        version: int,
        claims: dict[str, object],
        holder: str,
        not_before: datetime,
        expires: datetime | None,
        slot: tuple[int, int],
        now: datetime,
        case_id: str,
        conditions: Sequence[str] = (),
    ) -> LicenceView:
        clear, disclosable = split_claims(licence_type, claims)
        uri = self.status_lists.uri(slot[0])
        issued = issue_sd_jwt(
            {
                "licence_number": number,
                "licence_version": version,
                **clear,
                **({"conditions": list(conditions)} if conditions else {}),
            },
            disclosable,
            signer=seal.signer,
            chain=seal.chain,
            vct=licence_type.vct,
            iss=DEPT_URI_PREFIX + seal.holder,
            sub=holder,
            nbf=not_before,
            exp=expires,
            now=now,
            status_idx=slot[1],
            status_uri=uri,
        )
        name = _holder_name(licence_type, claims)
        # An open-ended licence's QR still needs an expiry: its seal certificate's, past
        # which no verifier could check the signature anyway (re-issue before rotating).
        qr_expires = expires or seal.certificate.not_valid_after_utc
        qr = encode_qr(
            QrClaims(
                licence_number=number,
                licence_type=licence_type.code,
                holder_id=holder,
                holder_name=name,
                issuer=seal.holder,
                not_before=int(not_before.timestamp()),
                expires=int(qr_expires.timestamp()),
                status_uri=uri,
                status_index=slot[1],
            ),
            seal.signer,
            seal.certificate,
        )
        return LicenceView(
            number=number,
            version=version,
            licence_type=licence_type.code,
            holder_id=holder,
            holder_kind=licence_type.holder_kind,
            holder_name=name,
            issuer=seal.holder,
            status="valid",
            status_uri=uri,
            status_index=slot[1],
            not_before=not_before,
            expires=expires,
            claims=claims,
            sd_jwt=issued.serialization,
            qr=qr,
            case_id=case_id,
            created_at=now,
            updated_at=now,
        )

    @staticmethod
    def _row(view: LicenceView, officer: str | None) -> tuple[object, ...]:
        list_id = int(view.status_uri.rsplit("/", 1)[1])
        return (
            view.number, view.version, view.licence_type, view.holder_id, view.holder_kind,
            view.holder_name, view.issuer, view.status, list_id, view.status_index,
            view.not_before, view.expires,
            json.dumps(view.claims, ensure_ascii=False, separators=(",", ":")),
            view.sd_jwt, view.qr, view.case_id or None, officer, view.created_at, view.updated_at,
        )  # fmt: skip

    async def _publish(
        self,
        conn: Any,
        entries: Mapping[str, Any],
        changes: Sequence[tuple[LicenceType, LicenceView]],
        now: datetime,
    ) -> None:
        by_dataset: dict[str, dict[str, Any]] = {}
        for licence_type, view in changes:
            entry = entries[licence_type.code]
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
            await self._records.publish_in(conn, entry, list(holder_changes.values()), now)

    # -- reading ------------------------------------------------------------------------

    async def _load(
        self, number: str, *, conn: Any = None, lock: bool = False
    ) -> LicenceView | None:
        sql = _SELECT + " WHERE number = $1 AND status <> 'superseded'"
        if lock:
            sql += " FOR UPDATE"
        row = await (conn or self._pool).fetchrow(sql, number)
        return None if row is None else self._view(row)

    def _view(self, row: Any) -> LicenceView:
        return LicenceView(
            number=row["number"],
            version=row["version"],
            licence_type=row["licence_type"],
            holder_id=row["holder_id"],
            holder_kind=row["holder_kind"],
            holder_name=row["holder_name"],
            issuer=row["issuer"],
            status=row["status"],
            status_uri=self.status_lists.uri(row["status_list"]),
            status_index=row["status_index"],
            not_before=row["not_before"],
            expires=row["expires"],
            claims=json.loads(row["claims"]),
            sd_jwt=row["sd_jwt"],
            qr=row["qr"],
            case_id=row["case_id"] or "",
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    async def history(self, number: str) -> tuple[HistoryEntry, ...]:
        rows = await self._pool.fetch(
            "SELECT version, action, from_status, to_status, reason, department, officer, at"
            " FROM licence_history WHERE number = $1 ORDER BY id",
            number,
        )
        return tuple(HistoryEntry(**dict(row)) for row in rows)

    def _normal_number(self, number: str) -> str:
        if not number.strip():
            raise InvalidArgument("Give a licence number.", metadata={"field": "number"})
        return check_licence_number(number)

    def _may_manage(self, caller: Caller, view: LicenceView) -> LicenceType:
        licence_type = self.registry.get(view.licence_type)
        if not licence_type.may_change_status(caller.department.code):
            raise LicenceNotPermitted(
                f"Only {', '.join((*licence_type.issuers, *licence_type.revokers))} see and "
                f"manage {licence_type.name_en} licences in full; an approval service fetches "
                "one with a purpose and a case id instead.",
                metadata={"licence_type": licence_type.code},
            )
        return licence_type

    async def get(self, caller: Caller, number: str) -> LicenceView:
        """Return the current version of licence ``number`` with its history, for its
        issuer or a department that may change its status (logged).

        Raises LicenceNumberInvalid (naming the expected check character),
        LicenceNotFound or LicenceNotPermitted."""
        number = self._normal_number(number)
        view = await self._load(number)
        if view is None:
            raise LicenceNotFound(
                f"No licence {number} exists.", metadata={"licence_number": number}
            )
        licence_type = self._may_manage(caller, view)
        await self._audit(
            caller,
            "licence-get",
            dataset=dataset_code(view.issuer, licence_type),
            holders=[view.holder_id],
            now=self._clock.now(),
        )
        return LicenceView(**{**view.__dict__, "history": await self.history(number)})

    async def list_by_holder(
        self, caller: Caller | None, holder_id: str, licence_type: str | None = None
    ) -> list[LicenceView]:
        """Return the current licences of ``holder_id`` (newest first), logged when a
        department asks (``caller`` None: the operator, reading the database directly).

        Raises InvalidSubjectId for a malformed holder id."""
        holder = _valid_holder(holder_id)
        if licence_type is not None:
            self.registry.get(licence_type)
        rows = await self._pool.fetch(
            _SELECT + " WHERE holder_id = $1 AND status <> 'superseded'"
            " AND ($2::text IS NULL OR licence_type = $2) ORDER BY created_at DESC, number",
            holder,
            licence_type,
        )
        if caller is not None:
            await self._audit(
                caller, "licence-list", dataset=None, holders=[holder], now=self._clock.now()
            )
        return [self._view(row) for row in rows]

    async def list_all(self, limit: int = 1000) -> list[LicenceView]:
        """The operator's view: the current licences, newest first."""
        rows = await self._pool.fetch(
            _SELECT + " WHERE status <> 'superseded' ORDER BY created_at DESC, number LIMIT $1",
            limit,
        )
        return [self._view(row) for row in rows]

    async def fetch(
        self,
        caller: Caller,
        *,
        purpose: str,
        case_id: str,
        disclose: Sequence[str],
        number: str = "",
        holder_id: str = "",
        licence_type: str = "",
        authorisation: str = "",
    ) -> tuple[LicenceView, str]:
        """Fetch a licence for an approval (免提交), by number or by holder and type;
        return the licence and a presentation of its SD-JWT holding only the disclosures
        asked for. The fetch (or its denial) is logged with the claims disclosed.

        The sharing policy decides, as for a query of the licence type's dataset
        (``<issuer>.licence_<type>``): purpose and case are required, and disclosing a
        personal claim needs the caller's grant on that dataset for this purpose, or the
        holder's one-time ``authorisation`` for this department, purpose and case
        (docs/personal-data.md).

        Raises QueryDenied (PURPOSE_REQUIRED, CASE_REQUIRED, INVALID_ARGUMENT,
        PERSONAL_GRANT_REQUIRED, FIELD_NOT_GRANTED, GRANT_EXPIRED), AuthorisationInvalid,
        InvalidArgument, LicenceNumberInvalid, LicenceTypeUnknown, LicenceNotFound,
        ClaimInvalid (a claim the licence does not hold)."""
        now = self._clock.now()
        me = caller.department.code
        view: LicenceView | None
        if number:
            view = await self._load(self._normal_number(number))
        elif holder_id and licence_type:
            self.registry.get(licence_type)
            found = [
                v
                for v in await self._holder_licences(_valid_holder(holder_id), licence_type)
                if v.status == "valid"
            ]
            view = found[0] if found else None
        else:
            raise InvalidArgument(
                "Name the licence: its number, or the holder id and the licence type.",
                metadata={"field": "number"},
            )
        kind = self.registry.get(view.licence_type) if view is not None else None
        entry = (
            await self._feed.entry(view.issuer, kind, now)
            if view is not None and kind is not None
            else None
        )
        subject = view.holder_id if view is not None else (holder_id or None)
        dataset = entry.code if entry is not None else None
        personal = set(personal_claims(kind)) if kind is not None else set()
        # The licence number stands for the public part; each personal claim is a field.
        asked = ("licence_number", *(c for c in dict.fromkeys(disclose) if c in personal))
        intent = QueryIntent(me, dataset or "", asked, purpose, case_id)
        decision = await self._decide(intent, entry, now)

        async def log(denied: str | None, grounds: str | None = None) -> None:
            await self._log.append(
                self._entries(caller, "licence-fetch", dataset=dataset, holders=[subject],
                              now=now, purpose=purpose, case_id=case_id, fields=disclose,
                              denied=denied, grounds=grounds)
            )  # fmt: skip

        if isinstance(decision, Denied) and decision.reason == "DATASET_NOT_FOUND":
            await log("LICENCE_NOT_FOUND")
            raise LicenceNotFound(
                "No valid licence matches: "
                + (f"number {number}." if number else f"{licence_type} of {holder_id}."),
            )
        if isinstance(decision, Denied) and (
            not authorisation or decision.reason not in _HOLDER_MAY_ALLOW
        ):
            await log(decision.reason)
            raise QueryDenied.from_decision(decision)
        assert view is not None
        assert kind is not None
        presentation = present(view.sd_jwt, list(disclose))  # ClaimInvalid before anything
        if isinstance(decision, Allowed):
            await log(None, decision.grounds())
        else:
            # The holder's code, spent and logged in one transaction: used once, for a
            # fetch that is in the log, or not at all.
            async with self._pool.acquire() as conn, self._log.transaction(conn) as tx:
                spent = await self.authorisations.spend(
                    conn, authorisation, department=me, holder_id=view.holder_id,
                    purpose=purpose, case_id=case_id, licence_type=view.licence_type,
                    number=view.number, now=now,
                )  # fmt: skip
                if spent is not None:
                    tx.record(
                        self._entries(caller, "licence-fetch", dataset=dataset,
                                      holders=[subject], now=now, purpose=purpose,
                                      case_id=case_id, fields=disclose,
                                      grounds=f"authorisation:{spent.id}")
                    )  # fmt: skip
            if spent is None:
                await log(AuthorisationInvalid.reason)
                raise AuthorisationInvalid(
                    "The holder's authorisation code is unknown, used, expired, or made for "
                    "another department, purpose, case or licence type; ask the holder for "
                    "a new one.",
                    metadata={"field": "authorisation"},
                )
        shown = {
            k: v for k, v in view.claims.items() if not kind.claim(k).disclosable or k in disclose
        }
        return LicenceView(**{**view.__dict__, "claims": shown, "sd_jwt": presentation}), (
            presentation
        )

    async def _holder_licences(self, holder: str, licence_type: str) -> list[LicenceView]:
        rows = await self._pool.fetch(
            _SELECT + " WHERE holder_id = $1 AND licence_type = $2 AND status <> 'superseded'"
            " ORDER BY created_at DESC",
            holder,
            licence_type,
        )
        return [self._view(row) for row in rows]

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
        view = await self._load(number)
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
        number = self._normal_number(number)
        reason = _text(reason, "reason", limit=_MAX_REASON, required=True)
        allowed_from, to_status, bit = _TRANSITIONS[action]
        now = self._clock.now()
        licence_type, entry = await self._before_change(number, now, self._may_manage, caller)
        async with self._pool.acquire() as conn, self._log.transaction(conn) as log:
            view = await self._load(number, conn=conn, lock=True)
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
            await self.status_lists.set_status(conn, [(list_id, view.status_index)], bit)
            await conn.execute(
                "INSERT INTO licence_history (number, version, action, from_status, to_status,"
                " reason, department, officer, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                number, view.version, action.value, view.status, to_status, reason,
                caller.department.code, caller.officer_id, now,
            )  # fmt: skip
            changed = LicenceView(**{**view.__dict__, "status": to_status, "updated_at": now})
            await self._publish(conn, {licence_type.code: entry}, [(licence_type, changed)], now)
            log.record(
                self._entries(caller, f"licence-{action.value}", dataset=entry.code,
                              holders=[view.holder_id], now=now, purpose=reason)
            )  # fmt: skip
        return LicenceView(**{**changed.__dict__, "history": await self.history(number)})

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
        number = self._normal_number(number)
        reason = _text(reason, "reason", limit=_MAX_REASON, required=True)
        now = self._clock.now()
        licence_type, entry = await self._before_change(
            number, now, lambda c, v: self._issuable(c, v.licence_type), caller
        )
        seal = await self.vault.get(caller.department.code)
        # The new version carries the commitments of its case still to be checked.
        current = await self._load(number)
        conditions = (
            await self._conditions(caller.department.code, current.case_id)
            if current is not None and current.case_id
            else ()
        )
        async with self._pool.acquire() as conn, self._log.transaction(conn) as log:
            old = await self._load(number, conn=conn, lock=True)
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
            slot = (await self.status_lists.allocate(conn, 1))[0]
            view = self._sign(seal, licence_type, number, old.version + 1, new_claims, holder,
                              not_before, new_expires, slot, now, old.case_id,
                              conditions)  # fmt: skip
            await conn.execute(
                "UPDATE licence SET status = 'superseded', updated_at = $3"
                " WHERE number = $1 AND version = $2",
                number,
                old.version,
                now,
            )
            old_list = int(old.status_uri.rsplit("/", 1)[1])
            await self.status_lists.set_status(
                conn, [(old_list, old.status_index)], LicenceStatus.INVALID
            )
            await conn.copy_records_to_table(
                "licence",
                records=[self._row(view, caller.officer_id)],
                columns=_LICENCE_COLUMNS,
            )
            action = "renew" if renew else "amend"
            await conn.execute(
                "INSERT INTO licence_history (number, version, action, from_status, to_status,"
                " reason, department, officer, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                number, view.version, action, "valid", "valid", reason,
                caller.department.code, caller.officer_id, now,
            )  # fmt: skip
            await self._publish(conn, {licence_type.code: entry}, [(licence_type, view)], now)
            log.record(
                self._entries(caller, f"licence-{action}", dataset=entry.code,
                              holders=[holder], now=now, purpose=reason)
            )  # fmt: skip
        return LicenceView(**{**view.__dict__, "history": await self.history(number)})

    # -- trust list, status lists, verification (licensing/trust.py) --------------------

    async def trust_list(self) -> TrustList:
        """``LicenceTrust.trust_list``."""
        return await self.trust.trust_list()

    async def status_token(self, list_id: int) -> StatusToken | None:
        """``LicenceTrust.status_token``."""
        return await self.trust.status_token(list_id)

    async def verify(self, text: str) -> VerificationResult:
        """``LicenceTrust.verify``."""
        return await self.trust.verify(text)


_valid_holder = valid_holder


_LICENCE_COLUMNS = (
    "number", "version", "licence_type", "holder_id", "holder_kind", "holder_name", "issuer",
    "status", "status_list", "status_index", "not_before", "expires", "claims", "sd_jwt", "qr",
    "case_id", "officer", "created_at", "updated_at",
)  # fmt: skip
_HISTORY_COLUMNS = (
    "number", "version", "action", "from_status", "to_status", "reason", "department",
    "officer", "at",
)  # fmt: skip
_SELECT = "SELECT " + ", ".join(_LICENCE_COLUMNS) + " FROM licence"  # noqa: S608


async def read_licences(
    pool: asyncpg.Pool, holder_id: str | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    """The operator's view (no department, read from the database): the current licences,
    newest first, as summaries without credential or personal claims."""
    holder = _valid_holder(holder_id) if holder_id else None
    rows = await pool.fetch(
        "SELECT number, version, licence_type, holder_id, holder_name, issuer, status,"
        " not_before, expires, created_at FROM licence WHERE status <> 'superseded'"
        " AND ($1::text IS NULL OR holder_id = $1) ORDER BY created_at DESC, number LIMIT $2",
        holder,
        limit,
    )
    return [
        {
            "number": r["number"],
            "version": r["version"],
            "licence_type": r["licence_type"],
            "holder_id": r["holder_id"],
            "holder_name": r["holder_name"],
            "issuer": r["issuer"],
            "status": r["status"],
            "not_before": r["not_before"].isoformat(),
            "expires": r["expires"].isoformat() if r["expires"] else None,
            "created_at": r["created_at"].isoformat(),
        }
        for r in rows
    ]
