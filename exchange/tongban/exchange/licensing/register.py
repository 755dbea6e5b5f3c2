"""The stored licences: their rows read as ``LicenceView``s, a department's reads (get,
list by holder), the operator's, and the access-log entries every licence use case writes.
Issuance and changes (``issuance.py``) and the fetch for an approval (``fetch.py``) read
licences through it.

Every get and list by a department is written to the access log (subject: the holder id,
as a keyed hash) before the call returns.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from tongban.exchange.audit.log import AccessEntry, AccessLog
from tongban.exchange.audit.recorder import AccessRecorder
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.identity import Caller
from tongban.exchange.licensing.authorisations import valid_holder
from tongban.exchange.licensing.errors import LicenceNotFound, LicenceNotPermitted
from tongban.exchange.licensing.feed import dataset_code
from tongban.exchange.licensing.status import StatusLists
from tongban.licence import LicenceType, LicenceTypeRegistry, check_licence_number
from tongban.signing import Clock

__all__ = [
    "HISTORY_COLUMNS",
    "LICENCE_COLUMNS",
    "HistoryEntry",
    "LicenceRegister",
    "LicenceView",
    "licence_row",
    "normal_number",
    "read_licences",
]


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
    sd_jwt_sm2: str = ""
    """The SM2 signature beside the SD-JWT (its issuer-signed JWT), when the issuer had an
    SM2 seal (docs/keys.md, "A department's SM2 seal"); empty otherwise."""

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


LICENCE_COLUMNS = (
    "number", "version", "licence_type", "holder_id", "holder_kind", "holder_name", "issuer",
    "status", "status_list", "status_index", "not_before", "expires", "claims", "sd_jwt", "qr",
    "case_id", "officer", "created_at", "updated_at", "sd_jwt_sm2",
)  # fmt: skip
"""The columns of table ``licence``, in the order of ``licence_row``."""
HISTORY_COLUMNS = (
    "number", "version", "action", "from_status", "to_status", "reason", "department",
    "officer", "at",
)  # fmt: skip
"""The columns of table ``licence_history``."""
_HAS_CURRENT = "SELECT EXISTS (SELECT 1 FROM licence WHERE number = $1 AND status <> 'superseded')"
_RELOCKS = 64
"""Locked reads ``LicenceRegister.load`` makes again at most, each after another change of
the same licence committed (a department has at most 64 calls in progress by default)."""
_SELECT = "SELECT " + ", ".join(LICENCE_COLUMNS) + " FROM licence"  # noqa: S608


def licence_row(view: LicenceView, officer: str | None) -> tuple[object, ...]:
    """The ``licence`` row of ``view`` (``LICENCE_COLUMNS``), written by ``officer``."""
    list_id = int(view.status_uri.rsplit("/", 1)[1])
    return (
        view.number, view.version, view.licence_type, view.holder_id, view.holder_kind,
        view.holder_name, view.issuer, view.status, list_id, view.status_index,
        view.not_before, view.expires,
        json.dumps(view.claims, ensure_ascii=False, separators=(",", ":")),
        view.sd_jwt, view.qr, view.case_id or None, officer, view.created_at, view.updated_at,
        view.sd_jwt_sm2 or None,
    )  # fmt: skip


def normal_number(number: str) -> str:
    """Return licence number ``number`` normalised. Raises InvalidArgument if it is blank,
    LicenceNumberInvalid (naming the expected check character) if it is malformed."""
    if not number.strip():
        raise InvalidArgument("Give a licence number.", metadata={"field": "number"})
    return check_licence_number(number)


class LicenceRegister:
    """The licences stored on one node, read for its departments and its operator."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        registry: LicenceTypeRegistry,
        status_lists: StatusLists,
        access_log: AccessLog,
        recorder: AccessRecorder,
        clock: Clock,
    ) -> None:
        self._pool = pool
        self.registry = registry
        self._status_lists = status_lists
        self._log = access_log
        self._recorder = recorder
        self._clock = clock

    # -- the access log -----------------------------------------------------------------

    async def audit(
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
    ) -> range:
        """Append the entries of a read or a refusal, which changes nothing (a change records
        its entries in its own transaction: ``entries`` and ``AccessLog.transaction``);
        return their log indices."""
        return await self._log.append(
            self.entries_as(caller.department.code, caller.officer_id, action, dataset=dataset,
                            holders=holders, now=now, purpose=purpose, case_id=case_id,
                            fields=fields, denied=denied, grounds=grounds)
        )  # fmt: skip

    async def audit_as(self, who: str, officer: str | None, action: str, **details: Any) -> range:
        """``audit`` for a caller named ``who`` (a peer's department, ``county-a/approval``)."""
        return await self._log.append(self.entries_as(who, officer, action, **details))

    def entries(
        self,
        caller: Caller,
        action: str,
        **details: Any,
    ) -> list[AccessEntry]:
        """The entries of ``caller``'s ``action`` (see ``entries_as``)."""
        return self.entries_as(caller.department.code, caller.officer_id, action, **details)

    def entries_as(
        self,
        who: str,
        officer: str | None,
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
        """The entries of ``who``'s ``action`` (a department of ours, or a peer's as
        ``county-a/approval``): one per holder (a missing or empty one is an entry
        without a subject), or one without a subject if there are none;
        ``denied`` is the refusal's reason, ``grounds`` what allowed it."""
        return [
            self._recorder.entry(
                at=now,
                department=who,
                officer=officer,
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

    # -- reading ------------------------------------------------------------------------

    async def load(
        self, number: str, *, conn: Any = None, lock: bool = False
    ) -> LicenceView | None:
        """The current version of licence ``number`` (not logged), or None; with ``lock``,
        its row locked for update on ``conn``.

        A version another transaction superseded while this one waited for its lock is
        not the current one once that commits, and the version it wrote is newer than
        the statement's snapshot: the locked read finds nothing. Two amendments of one
        licence at once answered the second "no licence … exists". So while a current
        version exists, the locked read is made again, with a newer snapshot."""
        sql = _SELECT + " WHERE number = $1 AND status <> 'superseded'"
        if not lock:
            row = await (conn or self._pool).fetchrow(sql, number)
            return None if row is None else self._view(row)
        sql += " FOR UPDATE"
        row = await conn.fetchrow(sql, number)
        for _ in range(_RELOCKS):
            if row is not None or not await conn.fetchval(_HAS_CURRENT, number):
                break
            row = await conn.fetchrow(sql, number)
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
            status_uri=self._status_lists.uri(row["status_list"]),
            status_index=row["status_index"],
            not_before=row["not_before"],
            expires=row["expires"],
            claims=json.loads(row["claims"]),
            sd_jwt=row["sd_jwt"],
            qr=row["qr"],
            case_id=row["case_id"] or "",
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            sd_jwt_sm2=row["sd_jwt_sm2"] or "",
        )

    async def history(self, number: str) -> tuple[HistoryEntry, ...]:
        """Licence ``number``'s history, oldest first (not logged)."""
        rows = await self._pool.fetch(
            "SELECT version, action, from_status, to_status, reason, department, officer, at"
            " FROM licence_history WHERE number = $1 ORDER BY id",
            number,
        )
        return tuple(HistoryEntry(**dict(row)) for row in rows)

    async def holder_licences(self, holder: str, licence_type: str) -> list[LicenceView]:
        """The current licences of type ``licence_type`` that ``holder`` holds, newest first
        (not logged)."""
        rows = await self._pool.fetch(
            _SELECT + " WHERE holder_id = $1 AND licence_type = $2 AND status <> 'superseded'"
            " ORDER BY created_at DESC",
            holder,
            licence_type,
        )
        return [self._view(row) for row in rows]

    def may_manage(self, caller: Caller, view: LicenceView) -> LicenceType:
        """Return the type of licence ``view`` if ``caller`` may see it in full and change
        its status; raises LicenceNotPermitted otherwise."""
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
        number = normal_number(number)
        view = await self.load(number)
        if view is None:
            raise LicenceNotFound(
                f"No licence {number} exists.", metadata={"licence_number": number}
            )
        licence_type = self.may_manage(caller, view)
        await self.audit(
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
        holder = valid_holder(holder_id)
        if licence_type is not None:
            self.registry.get(licence_type)
        rows = await self._pool.fetch(
            _SELECT + " WHERE holder_id = $1 AND status <> 'superseded'"
            " AND ($2::text IS NULL OR licence_type = $2) ORDER BY created_at DESC, number",
            holder,
            licence_type,
        )
        if caller is not None:
            await self.audit(
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


async def read_licences(
    pool: asyncpg.Pool, holder_id: str | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    """The operator's view (no department, read from the database): the current licences,
    newest first, as summaries without credential or personal claims."""
    holder = valid_holder(holder_id) if holder_id else None
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
