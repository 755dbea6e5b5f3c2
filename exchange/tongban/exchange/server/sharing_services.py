"""gRPC servicers of the catalogue, records, grants and queries: messages in and out.

Each method reads the caller (set by the interceptor), converts the request to the
``Sharing`` layer's types, and converts the answer back. Errors are ``TongbanError``s,
mapped to statuses by the interceptor.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any, TypeVar

import grpc

from tongban.exchange.catalogue.schema import FieldSpec, FieldType, build_schema
from tongban.exchange.catalogue.subject_ids import SubjectKind
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.fairness import spawn, yield_fairly
from tongban.exchange.federation.grants import GrantForwarding
from tongban.exchange.server.caller import current_caller
from tongban.exchange.server.timestamps import instant, timestamp
from tongban.exchange.sharing.datasets import DatasetSpec
from tongban.exchange.sharing.model import (
    DatasetEntry,
    Grant,
    GrantStatus,
    LegalBasis,
    PersonalBasis,
    ShareClass,
)
from tongban.exchange.sharing.records import PublishCounts
from tongban.exchange.sharing.service import YIELD_EVERY, QueryInput, RawChange, Sharing
from tongban.signing.clock import Clock
from tongban.v1 import (
    catalogue_pb2,
    catalogue_pb2_grpc,
    grants_pb2,
    grants_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    records_pb2,
    records_pb2_grpc,
    values_pb2,
)
from tongban.wire.values import ValueNotSupported, from_field_value, to_field_value

__all__ = [
    "CatalogueService",
    "GrantService",
    "QueryService",
    "RecordService",
    "dataset_message",
    "grant_message",
]

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")

_FIELD_TYPES = {
    values_pb2.FIELD_TYPE_STRING: FieldType.STRING,
    values_pb2.FIELD_TYPE_INTEGER: FieldType.INTEGER,
    values_pb2.FIELD_TYPE_DECIMAL: FieldType.DECIMAL,
    values_pb2.FIELD_TYPE_BOOLEAN: FieldType.BOOLEAN,
    values_pb2.FIELD_TYPE_DATE: FieldType.DATE,
    values_pb2.FIELD_TYPE_DATETIME: FieldType.DATETIME,
}
_FIELD_TYPES_BACK = {v: k for k, v in _FIELD_TYPES.items()}
_SHARE = {
    catalogue_pb2.SHARE_CLASS_UNSPECIFIED: ShareClass.UNCONDITIONAL,  # shared by default
    catalogue_pb2.SHARE_CLASS_UNCONDITIONAL: ShareClass.UNCONDITIONAL,
    catalogue_pb2.SHARE_CLASS_CONDITIONAL: ShareClass.CONDITIONAL,
    catalogue_pb2.SHARE_CLASS_NOT_SHARED: ShareClass.NOT_SHARED,
}
_SHARE_BACK = {
    ShareClass.UNCONDITIONAL: catalogue_pb2.SHARE_CLASS_UNCONDITIONAL,
    ShareClass.CONDITIONAL: catalogue_pb2.SHARE_CLASS_CONDITIONAL,
    ShareClass.NOT_SHARED: catalogue_pb2.SHARE_CLASS_NOT_SHARED,
}
_KINDS = {
    catalogue_pb2.SUBJECT_KIND_ENTERPRISE: SubjectKind.ENTERPRISE,
    catalogue_pb2.SUBJECT_KIND_PERSON: SubjectKind.PERSON,
    catalogue_pb2.SUBJECT_KIND_OTHER: SubjectKind.OTHER,
}
_KINDS_BACK = {v: k for k, v in _KINDS.items()}
_GRANT_STATUS = {
    GrantStatus.PENDING: grants_pb2.GRANT_STATUS_PENDING,
    GrantStatus.APPROVED: grants_pb2.GRANT_STATUS_APPROVED,
    GrantStatus.REFUSED: grants_pb2.GRANT_STATUS_REFUSED,
    GrantStatus.REVOKED: grants_pb2.GRANT_STATUS_REVOKED,
    GrantStatus.EXPIRED: grants_pb2.GRANT_STATUS_EXPIRED,
}
_GRANT_STATUS_BACK = {v: k for k, v in _GRANT_STATUS.items()}


def grant_status(number: int) -> GrantStatus:
    """The grant status a request names, or InvalidArgument (``status``) for a number the
    enum does not define."""
    return _enum(_GRANT_STATUS_BACK, number, "status")


def _enum(mapping: Mapping[Any, T], number: int, field: str) -> T:
    """``mapping[number]``, or InvalidArgument naming ``field``: proto3 enums are open, so
    a request can carry a number the enum does not define."""
    try:
        return mapping[number]
    except KeyError:
        raise InvalidArgument(
            f"{field} is {number}, which is not one of its values; use one the .proto names.",
            metadata={"field": field},
        ) from None


# -- catalogue -------------------------------------------------------------------------


def _spec_from_message(message: catalogue_pb2.DatasetSpec) -> DatasetSpec:
    fields = []
    for index, f in enumerate(message.fields):
        if f.type != values_pb2.FIELD_TYPE_UNSPECIFIED:
            _enum(_FIELD_TYPES, f.type, f"fields[{index}].type")  # a number no type has
        kind = _FIELD_TYPES.get(f.type)
        if kind is None:
            raise InvalidArgument(
                f"Field {index} ({f.name[:64]!r}) has no type; choose string, integer, "
                "decimal, boolean, date or datetime.",
                metadata={"field": f.name[:64]},
            )
        fields.append(
            FieldSpec(
                name=f.name,
                type=kind,
                description=f.description,
                personal=f.personal,
                required=f.required,
                max_length=f.max_length or None,
            )
        )
    if message.subject_kind != catalogue_pb2.SUBJECT_KIND_UNSPECIFIED:
        _enum(_KINDS, message.subject_kind, "subject_kind")  # a number no kind has
    subject_kind = _KINDS.get(message.subject_kind)
    if subject_kind is None:
        raise InvalidArgument(
            "Say whom the records are about: subject_kind enterprise (USCC), person (citizen "
            "id) or other.",
            metadata={"field": "subject_kind"},
        )
    basis = None
    if message.HasField("legal_basis"):
        basis = LegalBasis(message.legal_basis.law, message.legal_basis.article)
    return DatasetSpec(
        code=message.code,
        title=message.title,
        description=message.description,
        schema=build_schema(fields, message.key_field),
        subject_kind=subject_kind,
        update_frequency=message.update_frequency,
        share_class=_enum(_SHARE, message.share_class, "share_class"),
        conditions=message.conditions,
        legal_basis=basis,
        personal_bases=tuple(
            PersonalBasis(b.law, b.article, tuple(b.fields)) for b in message.personal_bases
        ),
    )


def dataset_message(entry: DatasetEntry) -> catalogue_pb2.Dataset:
    spec = catalogue_pb2.DatasetSpec(
        code=entry.code,
        title=entry.title,
        description=entry.description,
        fields=[
            catalogue_pb2.FieldSpec(
                name=f.name,
                type=_FIELD_TYPES_BACK[f.type],
                description=f.description,
                personal=f.personal,
                required=f.required,
                max_length=f.max_length or 0,
            )
            for f in entry.schema.fields
        ],
        key_field=entry.schema.key_field,
        subject_kind=_KINDS_BACK[entry.subject_kind],
        update_frequency=entry.update_frequency,
        share_class=_SHARE_BACK[entry.share_class],
        conditions=entry.conditions,
        personal_bases=[
            catalogue_pb2.PersonalBasis(law=b.law, article=b.article, fields=b.fields)
            for b in entry.personal_bases
        ],
    )
    if entry.legal_basis is not None:
        spec.legal_basis.CopyFrom(
            catalogue_pb2.LegalBasis(law=entry.legal_basis.law, article=entry.legal_basis.article)
        )
    return catalogue_pb2.Dataset(
        spec=spec,
        owner=entry.owner,
        version=entry.version,
        published=entry.published,
        created_at=timestamp(entry.created_at),
        version_created_at=timestamp(entry.version_created_at),
    )


class CatalogueService(catalogue_pb2_grpc.CatalogueServiceServicer):
    def __init__(self, sharing: Sharing, clock: Clock) -> None:
        self._sharing = sharing
        self._clock = clock

    async def RegisterDataset(
        self, request: catalogue_pb2.RegisterDatasetRequest, context: Context
    ) -> catalogue_pb2.Dataset:
        entry = await self._sharing.register_dataset(
            current_caller(),
            _spec_from_message(request.spec),
            publish=request.publish,
            now=self._clock.now(),
        )
        return dataset_message(entry)

    async def GetDataset(
        self, request: catalogue_pb2.GetDatasetRequest, context: Context
    ) -> catalogue_pb2.Dataset:
        entry = await self._sharing.dataset(current_caller(), request.code, request.version or None)
        return dataset_message(entry)

    async def ListDatasets(
        self, request: catalogue_pb2.ListDatasetsRequest, context: Context
    ) -> catalogue_pb2.ListDatasetsResponse:
        entries, token = await self._sharing.find_datasets(
            current_caller(),
            owner=request.owner or None,
            keyword=request.keyword or None,
            share_class=(
                _enum(_SHARE, request.share_class, "share_class")
                if request.share_class != catalogue_pb2.SHARE_CLASS_UNSPECIFIED
                else None
            ),
            subject_kind=(
                _enum(_KINDS, request.subject_kind, "subject_kind")
                if request.subject_kind != catalogue_pb2.SUBJECT_KIND_UNSPECIFIED
                else None
            ),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return catalogue_pb2.ListDatasetsResponse(
            datasets=[dataset_message(e) for e in entries], next_page_token=token
        )

    async def SetPublished(
        self, request: catalogue_pb2.SetPublishedRequest, context: Context
    ) -> catalogue_pb2.Dataset:
        entry = await self._sharing.set_published(
            current_caller(), request.code, request.published, self._clock.now()
        )
        return dataset_message(entry)


# -- records ---------------------------------------------------------------------------


async def _changes(request: records_pb2.PublishRecordsRequest) -> list[RawChange]:
    out = []
    started = time.perf_counter()
    for index, change in enumerate(request.changes):
        if index and index % YIELD_EVERY == 0:
            await yield_fairly(time.perf_counter() - started)  # let other calls run
            started = time.perf_counter()
        if change.delete:
            out.append(RawChange(change.key, None))
            continue
        values: dict[str, object] = {}
        fields = change.fields
        for name in fields:  # not .items(): upb's map view yields pairs from Python code
            value = fields[name]
            # Most values are non-empty strings, and a oneof member other than the one set
            # reads as its default (""), so a non-empty string_value is the value.
            text = value.string_value
            if text:
                values[name] = text
                continue
            try:
                if value.WhichOneof("kind") == "string_value":
                    values[name] = text
                else:
                    values[name] = from_field_value(value)
            except ValueNotSupported as e:
                where = f"changes[{index}].fields[{name[:40]!r}]"
                raise ValueNotSupported(
                    f"Record {index}, field {name[:40]!r}: {e.message}",
                    metadata={"field": where, "index": str(index)},
                ) from None
        out.append(RawChange(change.key, values))
    return out


def _counts(counts: PublishCounts) -> records_pb2.PublishRecordsResponse:
    return records_pb2.PublishRecordsResponse(
        inserted=counts.inserted,
        updated=counts.updated,
        unchanged=counts.unchanged,
        deleted=counts.deleted,
    )


class RecordService(records_pb2_grpc.RecordServiceServicer):
    def __init__(self, sharing: Sharing) -> None:
        self._sharing = sharing

    async def PublishRecords(
        self, request: records_pb2.PublishRecordsRequest, context: Context
    ) -> records_pb2.PublishRecordsResponse:
        counts = await self._sharing.publish(
            current_caller(), request.dataset, await _changes(request)
        )
        return _counts(counts)

    async def StreamRecords(
        self, request_iterator: AsyncIterator[records_pb2.PublishRecordsRequest], context: Context
    ) -> records_pb2.PublishRecordsResponse:
        caller = current_caller()
        total = PublishCounts()
        dataset = None
        writing: asyncio.Task[PublishCounts] | None = None
        try:
            async for request in request_iterator:
                if dataset is None:
                    dataset = request.dataset
                elif request.dataset and request.dataset != dataset:
                    raise InvalidArgument(
                        "One stream loads one dataset; open another stream for another.",
                        metadata={"field": "dataset"},
                    )
                # Validate this batch while the previous one is being written; batches are
                # still written one after another, in order.
                batch = await self._sharing.prepare(caller, dataset, await _changes(request))
                if writing is not None:
                    previous, writing = writing, None
                    _add(total, await previous)
                writing = spawn(self._sharing.apply(batch))
            if writing is not None:
                previous, writing = writing, None
                _add(total, await previous)
        finally:
            if writing is not None:  # a later batch was refused: the one in flight still lands
                await writing
        if dataset is None:
            raise InvalidArgument("The stream carried no batches.")
        return _counts(total)


def _add(total: PublishCounts, counts: PublishCounts) -> None:
    total.inserted += counts.inserted
    total.updated += counts.updated
    total.unchanged += counts.unchanged
    total.deleted += counts.deleted


# -- grants ----------------------------------------------------------------------------


def grant_message(grant: Grant, now: datetime) -> grants_pb2.Grant:
    return grants_pb2.Grant(
        id=str(grant.id),
        dataset=grant.dataset,
        owner=grant.owner,
        consumer=grant.consumer,
        requested_fields=list(grant.requested_fields),
        fields=list(grant.fields),
        purpose=grant.purpose,
        legal_basis=grant.legal_basis,
        requested_expiry=timestamp(grant.requested_expiry),
        expires_at=timestamp(grant.expires_at),
        status=_GRANT_STATUS[grant.status_at(now)],
        decision_reason=grant.decision_reason,
        requested_at=timestamp(grant.requested_at),
        due_at=timestamp(grant.due_at),
        decided_at=timestamp(grant.decided_at),
        requested_by=grant.requested_by or "",
        decided_by=grant.decided_by or "",
    )


class GrantService(grants_pb2_grpc.GrantServiceServicer):
    def __init__(
        self, sharing: Sharing, clock: Clock, remote: GrantForwarding | None = None
    ) -> None:
        """``remote``: grant requests on peer exchanges' datasets (``<peer>:<code>``),
        asked of their owners' exchanges (docs/federation.md); None without federation."""
        self._sharing = sharing
        self._clock = clock
        self._remote = remote

    async def RequestGrant(
        self, request: grants_pb2.RequestGrantRequest, context: Context
    ) -> grants_pb2.Grant:
        caller = current_caller()
        expiry = instant(request.expiry, "expiry")
        now = self._clock.now()
        if self._remote is not None and ":" in request.dataset:
            if expiry is None:
                raise InvalidArgument(
                    "A grant request names its expiry.", metadata={"field": "expiry"}
                )
            return await self._remote.request(
                caller, dataset=request.dataset, fields=list(request.fields),
                purpose=request.purpose, legal_basis=request.legal_basis, expiry=expiry,
            )  # fmt: skip
        if expiry is None:
            # The dataset is looked up first, so an unknown one is DATASET_NOT_FOUND.
            await self._sharing.dataset(caller, request.dataset)
            raise InvalidArgument("A grant request names its expiry.", metadata={"field": "expiry"})
        grant = await self._sharing.request_grant(
            caller,
            dataset=request.dataset,
            fields=list(request.fields),
            purpose=request.purpose,
            legal_basis=request.legal_basis,
            expiry=expiry,
            now=now,
        )
        return grant_message(grant, now)

    async def DecideGrant(
        self, request: grants_pb2.DecideGrantRequest, context: Context
    ) -> grants_pb2.Grant:
        now = self._clock.now()
        grant = await self._sharing.decide_grant(
            current_caller(),
            grant_id=request.id,
            approve=request.approve,
            fields=list(request.fields),
            expiry=instant(request.expiry, "expiry"),
            reason=request.reason,
            now=now,
        )
        return grant_message(grant, now)

    async def RevokeGrant(
        self, request: grants_pb2.RevokeGrantRequest, context: Context
    ) -> grants_pb2.Grant:
        caller = current_caller()
        if self._remote is not None and ":" in request.id:  # a grant a peer's owner keeps
            return await self._remote.revoke(caller, grant_id=request.id, reason=request.reason)
        now = self._clock.now()
        grant = await self._sharing.revoke_grant(
            caller, grant_id=request.id, reason=request.reason, now=now
        )
        return grant_message(grant, now)

    async def ListGrants(
        self, request: grants_pb2.ListGrantsRequest, context: Context
    ) -> grants_pb2.ListGrantsResponse:
        if self._remote is not None and ":" in request.dataset:
            if request.status != grants_pb2.GRANT_STATUS_UNSPECIFIED:
                grant_status(request.status)  # INVALID_ARGUMENT for an undefined number
            if request.overdue:
                raise InvalidArgument(
                    "overdue lists the requests you must answer; a peer's dataset is "
                    "answered by its owner.",
                    metadata={"field": "overdue"},
                )
            return await self._remote.list_for(
                current_caller(), dataset=request.dataset, status=request.status
            )
        now = self._clock.now()
        grants = await self._sharing.list_grants(
            current_caller(),
            dataset=request.dataset or None,
            overdue=request.overdue,
            status=(
                _enum(_GRANT_STATUS_BACK, request.status, "status")
                if request.status != grants_pb2.GRANT_STATUS_UNSPECIFIED
                else None
            ),
            now=now,
        )
        return grants_pb2.ListGrantsResponse(grants=[grant_message(g, now) for g in grants])


# -- queries ---------------------------------------------------------------------------


class QueryService(query_pb2_grpc.QueryServiceServicer):
    def __init__(self, sharing: Sharing) -> None:
        self._sharing = sharing

    async def Query(
        self, request: query_pb2.QueryRequest, context: Context
    ) -> query_pb2.QueryResponse:
        result = await self._sharing.query(
            current_caller(),
            QueryInput(
                dataset=request.dataset,
                keys=list(request.keys),
                fields=list(request.fields),
                purpose=request.purpose,
                case_id=request.case_id,
                sign=request.sign,
                as_of=instant(request.as_of, "as_of") if request.HasField("as_of") else None,
            ),
        )
        return query_pb2.QueryResponse(
            dataset=result.entry.code,
            dataset_version=result.entry.version,
            records=[
                values_pb2.Record(
                    key=r.key,
                    fields={name: to_field_value(v) for name, v in r.values.items()},
                    version=r.version,
                    valid_from=timestamp(r.valid_from),
                )
                for r in result.records
            ],
            missing_keys=result.missing_keys,
            answered_at=timestamp(result.answered_at),
            signed_payload=result.signed_payload,
            signature=result.signature,
            signature_sm2=result.signature_sm2,
            signer_root=result.signer_root,
        )
