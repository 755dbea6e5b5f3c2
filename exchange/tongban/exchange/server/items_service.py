"""gRPC servicer of the service-item catalogue (事项目录): messages in and out of
``ServiceItemStore``. Errors are ``TongbanError``s, mapped to statuses by the interceptor."""

from __future__ import annotations

from typing import Any

import grpc

from tongban.exchange.licensing.errors import ServiceItemInvalid
from tongban.exchange.licensing.item_store import ServiceItemStore
from tongban.exchange.licensing.items import (
    DataSource,
    ItemSpec,
    KeyFrom,
    LicenceSource,
    Material,
    ServiceItem,
    SubmittedSource,
)
from tongban.exchange.server.caller import current_caller
from tongban.exchange.server.timestamps import timestamp
from tongban.signing.clock import Clock
from tongban.v1 import items_pb2, items_pb2_grpc

__all__ = ["ServiceItemService", "item_message", "spec_from_message"]

Context = grpc.aio.ServicerContext[Any, Any]


def _source(m: items_pb2.Material) -> LicenceSource | DataSource | SubmittedSource:
    which = m.WhichOneof("source")
    if which == "licence":
        return LicenceSource(m.licence.licence_type, tuple(m.licence.disclose))
    if which == "dataset":
        key = m.dataset.key_from if m.dataset.HasField("key_from") else None
        return DataSource(
            m.dataset.dataset,
            tuple(m.dataset.fields),
            KeyFrom(key.material, key.field) if key is not None else None,
        )
    if which == "submitted":
        return SubmittedSource()
    raise ServiceItemInvalid(
        f"Material {m.code[:64]!r} has no source: say whether it comes from a licence, a "
        "dataset, or is submitted by the applicant.",
        metadata={"material": m.code[:64], "field": "source"},
    )


def spec_from_message(message: items_pb2.ItemSpec) -> ItemSpec:
    """The spec of a request; raises ServiceItemInvalid for a material without a source."""
    return ItemSpec(
        code=message.code,
        name=message.name,
        legal_basis=message.legal_basis,
        purpose=message.purpose,
        legal_limit_days=message.legal_limit_days,
        promised_limit_days=message.promised_limit_days,
        immediate=message.immediate,
        issues_licence=message.issues_licence,
        on_breach=message.on_breach,
        supervisors=tuple(message.supervisors),
        materials=tuple(
            Material(
                code=m.code,
                name=m.name,
                source=_source(m),
                required=m.required,
                defer_days=m.defer_days,
                commitment_check_days=m.commitment_check_days,
            )
            for m in message.materials
        ),
    )


def _material_message(m: Material) -> items_pb2.Material:
    message = items_pb2.Material(
        code=m.code,
        name=m.name,
        required=m.required,
        defer_days=m.defer_days,
        commitment_check_days=m.commitment_check_days,
    )
    source = m.source
    if isinstance(source, LicenceSource):
        message.licence.licence_type = source.licence_type
        message.licence.disclose.extend(source.disclose)
    elif isinstance(source, DataSource):
        message.dataset.dataset = source.dataset
        message.dataset.fields.extend(source.fields)
        if source.key_from is not None:
            message.dataset.key_from.material = source.key_from.material
            message.dataset.key_from.field = source.key_from.field
    else:
        message.submitted.SetInParent()
    return message


def item_message(item: ServiceItem) -> items_pb2.ServiceItem:
    spec = item.spec
    return items_pb2.ServiceItem(
        spec=items_pb2.ItemSpec(
            code=spec.code,
            name=spec.name,
            legal_basis=spec.legal_basis,
            purpose=spec.purpose,
            legal_limit_days=spec.legal_limit_days,
            promised_limit_days=spec.promised_limit_days,
            immediate=spec.immediate,
            materials=[_material_message(m) for m in spec.materials],
            issues_licence=spec.issues_licence,
            on_breach=spec.on_breach,
            supervisors=list(spec.supervisors),
        ),
        department=item.department,
        version=item.version,
        created_at=timestamp(item.created_at),
        version_created_at=timestamp(item.version_created_at),
    )


class ServiceItemService(items_pb2_grpc.ServiceItemServiceServicer):
    def __init__(self, items: ServiceItemStore, clock: Clock) -> None:
        self._items = items
        self._clock = clock

    async def RegisterItem(
        self, request: items_pb2.RegisterItemRequest, context: Context
    ) -> items_pb2.ServiceItem:
        item = await self._items.register(
            current_caller().department.code,
            spec_from_message(request.spec),
            now=self._clock.now(),
        )
        return item_message(item)

    async def GetItem(
        self, request: items_pb2.GetItemRequest, context: Context
    ) -> items_pb2.ServiceItem:
        return item_message(await self._items.get(request.code, request.version or None))

    async def ListItems(
        self, request: items_pb2.ListItemsRequest, context: Context
    ) -> items_pb2.ListItemsResponse:
        items, token = await self._items.list(
            department=request.department,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return items_pb2.ListItemsResponse(
            items=[item_message(i) for i in items], next_page_token=token
        )
