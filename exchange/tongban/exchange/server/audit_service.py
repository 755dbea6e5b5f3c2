"""``tongban.v1.AuditService``: the access log and the covert cases for auditors, and
covert-case declarations for departments with the covert role.

Auditors' own reads are logged too (action ``audit.search``, ``audit.export``,
``audit.subject`` or ``audit.covert``), so the subject view shows when an auditor looked.
Every declaration of a covert case, allowed or refused, is a log entry
(``covert.declare``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import grpc

from tongban.errors import TongbanError
from tongban.exchange.audit.anomalies import check_instant, find_anomalies
from tongban.exchange.audit.checkpoints import Checkpointer, CheckpointRow
from tongban.exchange.audit.covert import (
    COVERT_ROLE,
    CovertCase,
    CovertCases,
    CovertRoleRequired,
    check_declaration,
    declaration_entry,
)
from tongban.exchange.audit.log import AccessLog, SubjectHasher
from tongban.exchange.audit.recorder import AccessRecorder
from tongban.exchange.audit.store import MAX_INDEX, AuditStore, LogEntry, SearchFilters
from tongban.exchange.errors import AuditorRoleRequired, InvalidArgument
from tongban.exchange.server.caller import Caller, current_caller
from tongban.exchange.server.timestamps import instant, timestamp
from tongban.signing.clock import Clock
from tongban.v1 import audit_pb2, audit_pb2_grpc

__all__ = ["AuditService"]

Context = grpc.aio.ServicerContext[Any, Any]


def entry_message(entry: LogEntry) -> audit_pb2.Entry:
    return audit_pb2.Entry(
        index=entry.index,
        leaf=entry.leaf,
        at=timestamp(entry.at),
        node=entry.node,
        caller=entry.caller,
        officer=entry.officer or "",
        action=entry.action,
        dataset=entry.dataset or "",
        fields=list(entry.fields),
        purpose=entry.purpose or "",
        case_id=entry.case_id or "",
        subject_hmac=entry.subject_hmac or b"",
        decision=entry.decision,
        reason=entry.reason or "",
    )


def _index(value: int, field: str) -> int:
    """``value`` if an index or size of the log can be that large; else InvalidArgument."""
    if value > MAX_INDEX:
        raise InvalidArgument(
            f"{field} is {value:,}; the log's indices and sizes stop at {MAX_INDEX:,}.",
            metadata={"field": field},
        )
    return value


class AuditService(audit_pb2_grpc.AuditServiceServicer):
    def __init__(
        self,
        store: AuditStore,
        checkpointer: Checkpointer,
        access_log: AccessLog,
        hasher: SubjectHasher,
        clock: Clock,
        node_name: str,
        *,
        covert_max_days: int,
    ) -> None:
        """``covert_max_days``: the longest embargo a declaration may set (settings)."""
        # Page tokens under the node's key, so any node of the exchange accepts them.
        self._store = store.with_tokens(hasher.page_tokens())
        self._covert = CovertCases(store.pool, hasher.page_tokens())
        self._covert_max_days = covert_max_days
        self._checkpoints = checkpointer
        self._log = access_log
        self._hasher = hasher
        self._clock = clock
        self._node = node_name
        self._recorder = AccessRecorder(node_name)

    def _auditor(self) -> Caller:
        caller = current_caller()
        if "auditor" not in caller.department.roles:
            raise AuditorRoleRequired(
                "Only departments with the auditor role may read the access log; ask the "
                "operator to grant the role.",
                metadata={"department": caller.department.code},
            )
        return caller

    async def _log_read(
        self, caller: Caller, action: str, subject_id: str, purpose: str
    ) -> bytes | None:
        """Log an auditor's read (of one subject's entries, or of a search without one);
        return the subject's HMAC, or None."""
        subject = self._hasher(subject_id.strip()) if subject_id.strip() else None
        await self._log.append(
            [
                self._recorder.entry(
                    at=self._clock.now(),
                    department=caller.department.code,
                    officer=caller.officer_id,
                    action=action,
                    purpose=purpose,
                    subject_hmac=subject,
                )
            ]
        )
        return subject

    async def _filters(
        self, request: audit_pb2.SearchRequest, caller: Caller, action: str
    ) -> SearchFilters:
        """The request's filters, once its read is logged as ``action``."""
        filters = SearchFilters(
            caller=request.caller or None,
            officer=request.officer or None,
            dataset=request.dataset or None,
            purpose=request.purpose or None,
            case_id=request.case_id or None,
            decision=request.decision or None,
            start=instant(getattr(request, "from"), "from"),
            end=instant(request.to, "to"),
        )
        filters.where(1)  # refuse a bad decision or period before anything is logged
        # Logged whatever the filters: a search or an export of everyone reads everyone.
        subject = await self._log_read(
            caller, action, request.subject_id, f"audit {filters.described()}".strip()
        )
        return replace(filters, subject_hmac=subject)

    async def Search(
        self, request: audit_pb2.SearchRequest, context: Context
    ) -> audit_pb2.SearchResponse:
        caller = self._auditor()
        entries, token = await self._store.search(
            await self._filters(request, caller, "audit.search"),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return audit_pb2.SearchResponse(
            entries=[entry_message(e) for e in entries], next_page_token=token
        )

    async def Export(
        self, request: audit_pb2.SearchRequest, context: Context
    ) -> AsyncIterator[audit_pb2.Entry]:
        caller = self._auditor()
        async for entry in self._store.export(await self._filters(request, caller, "audit.export")):
            yield entry_message(entry)

    def _checkpoint_message(self, row: CheckpointRow) -> audit_pb2.Checkpoint:
        return audit_pb2.Checkpoint(
            size=row.size,
            root=row.root,
            note=row.note,
            signed_at=timestamp(row.signed_at),
            verifier_key=self._checkpoints.verifier_key,
        )

    async def GetEntry(
        self, request: audit_pb2.GetEntryRequest, context: Context
    ) -> audit_pb2.EntryWithProof:
        self._auditor()
        tree_size = _index(request.tree_size, "tree_size")
        entry = await self._store.entry(_index(request.index, "index"))
        if tree_size:
            checkpoint = await self._checkpoints.at_size(tree_size)
        else:
            checkpoint = await self._checkpoints.latest()
            if checkpoint.size <= entry.index:
                checkpoint = await self._checkpoints.sign_now()  # on demand
        proof = await self._store.inclusion(entry.index, checkpoint.size)
        return audit_pb2.EntryWithProof(
            entry=entry_message(entry),
            checkpoint=self._checkpoint_message(checkpoint),
            inclusion_proof=proof,
        )

    async def GetCheckpoint(
        self, request: audit_pb2.GetCheckpointRequest, context: Context
    ) -> audit_pb2.Checkpoint:
        self._auditor()
        if request.size:
            size = _index(request.size, "size")
            return self._checkpoint_message(await self._checkpoints.at_size(size))
        return self._checkpoint_message(await self._checkpoints.sign_now())

    async def GetConsistencyProof(
        self, request: audit_pb2.ConsistencyProofRequest, context: Context
    ) -> audit_pb2.ConsistencyProof:
        self._auditor()
        proof = await self._store.consistency(
            _index(request.old_size, "old_size"), _index(request.new_size, "new_size")
        )
        return audit_pb2.ConsistencyProof(
            old_size=request.old_size, new_size=request.new_size, proof=proof
        )

    async def SubjectAccesses(
        self, request: audit_pb2.SubjectAccessesRequest, context: Context
    ) -> audit_pb2.SubjectAccessesResponse:
        caller = self._auditor()
        if not request.subject_id.strip():
            raise InvalidArgument(
                "Name the subject (USCC or citizen id).", metadata={"field": "subject_id"}
            )
        subject = await self._log_read(caller, "audit.subject", request.subject_id, "subject view")
        assert subject is not None  # a subject id was given (checked above)
        accesses, token, withheld = await self._store.subject_accesses(
            subject, self._clock.now(), page_size=request.page_size, page_token=request.page_token
        )
        return audit_pb2.SubjectAccessesResponse(
            accesses=[
                audit_pb2.SubjectAccess(
                    index=a.entry.index,
                    at=timestamp(a.entry.at),
                    department=a.entry.caller,
                    department_name=a.department_name,
                    officer=a.entry.officer or "",
                    dataset=a.entry.dataset or "",
                    fields=list(a.entry.fields),
                    purpose=a.entry.purpose or "",
                    case_id=a.entry.case_id or "",
                    decision=a.entry.decision,
                    reason=a.entry.reason or "",
                )
                for a in accesses
            ],
            next_page_token=token,
            withheld=withheld,
        )

    async def Anomalies(
        self, request: audit_pb2.AnomaliesRequest, context: Context
    ) -> audit_pb2.AnomaliesResponse:
        self._auditor()
        end = check_instant(instant(request.to, "to") or self._clock.now(), "to")
        start = instant(getattr(request, "from"), "from") or end - timedelta(days=1)
        found = await find_anomalies(self._store.pool, start=start, end=end)
        return audit_pb2.AnomaliesResponse(
            anomalies=[
                audit_pb2.Anomaly(
                    kind=a.kind,
                    department=a.department,
                    officer=a.officer or "",
                    detail=a.detail,
                    count=a.count,
                    baseline=a.baseline,
                    first_at=timestamp(a.first_at),
                )
                for a in found
            ]
        )

    async def DeclareCovertCase(
        self, request: audit_pb2.DeclareCovertCaseRequest, context: Context
    ) -> audit_pb2.CovertCase:
        caller = current_caller()
        now = self._clock.now()
        try:
            if COVERT_ROLE not in caller.department.roles:
                raise CovertRoleRequired(
                    "Only departments with the covert role may declare a covert case; ask "
                    "the exchange's operator to grant your department the role.",
                    metadata={"department": caller.department.code},
                )
            declaration = check_declaration(
                case_id=request.case_id,
                until=instant(request.until, "until"),
                legal_basis=request.legal_basis,
                now=now,
                max_days=self._covert_max_days,
            )
        except TongbanError as e:
            # A refused declaration is an attempt to hide accesses: the log keeps it.
            await self._log.append(
                [
                    declaration_entry(
                        department=caller.department.code,
                        officer=caller.officer_id,
                        case_id=request.case_id,
                        node=self._node,
                        now=now,
                        decision="denied",
                        reason=e.reason,
                    )
                ]
            )
            raise
        case = await self._covert.declare(
            declaration,
            department=caller.department.code,
            officer=caller.officer_id,
            node=self._node,
            now=now,
            log=self._log,
        )
        return _covert_message(case, now)

    async def ListCovertCases(
        self, request: audit_pb2.ListCovertCasesRequest, context: Context
    ) -> audit_pb2.ListCovertCasesResponse:
        caller = self._auditor()
        department = request.department.strip()
        described = " ".join(
            part
            for part in (
                f"department={department}" if department else "",
                "include_ended" if request.include_ended else "",
            )
            if part
        )
        now = self._clock.now()
        cases, token = await self._covert.list_cases(
            now=now,
            department=department or None,
            include_ended=request.include_ended,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        # Logged once the request is known to be valid, before the answer leaves.
        await self._log_read(caller, "audit.covert", "", f"covert cases {described}".strip())
        return audit_pb2.ListCovertCasesResponse(
            cases=[_covert_message(c, now) for c in cases], next_page_token=token
        )


def _covert_message(case: CovertCase, now: datetime) -> audit_pb2.CovertCase:
    return audit_pb2.CovertCase(
        department=case.department,
        case_id=case.case_id,
        until=timestamp(case.until),
        legal_basis=case.legal_basis,
        declared_at=timestamp(case.declared_at),
        declared_by=case.declared_by or "",
        in_force=case.in_force(now),
    )
