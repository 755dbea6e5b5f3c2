"""``tongban.v1.NodeService``: the node and the caller's standing with it."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from tongban.exchange.departments import Department, Level
from tongban.exchange.server.caller import current_caller
from tongban.exchange.sharing.storage import storage_usage
from tongban.signing.clock import Clock
from tongban.v1 import node_pb2, node_pb2_grpc

__all__ = ["NodeService", "department_message"]

_LEVELS = {
    Level.PROVINCE: node_pb2.LEVEL_PROVINCE,
    Level.CITY: node_pb2.LEVEL_CITY,
    Level.COUNTY: node_pb2.LEVEL_COUNTY,
    Level.TOWNSHIP: node_pb2.LEVEL_TOWNSHIP,
}


def department_message(department: Department) -> node_pb2.Department:
    return node_pb2.Department(
        code=department.code,
        name=department.name,
        level=_LEVELS[department.level],
        parent=department.parent or "",
        roles=sorted(department.roles),
    )


class NodeService(node_pb2_grpc.NodeServiceServicer):
    def __init__(self, node_name: str, clock: Clock, pool: Any, default_quota: int) -> None:
        self._node_name = node_name
        self._clock = clock
        self._pool = pool
        self._default_quota = default_quota

    async def WhoAmI(
        self,
        request: node_pb2.WhoAmIRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> node_pb2.WhoAmIResponse:
        caller = current_caller()
        now = Timestamp()
        now.FromDatetime(self._clock.now())
        return node_pb2.WhoAmIResponse(
            department=department_message(caller.department),
            officer_id=caller.officer_id or "",
            node=self._node_name,
            server_time=now,
        )

    async def GetStorage(
        self,
        request: node_pb2.GetStorageRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> node_pb2.Storage:
        caller = current_caller()
        (usage,) = await storage_usage(self._pool, caller.department.code)
        quota = usage.quota_or(self._default_quota)
        return node_pb2.Storage(
            department=usage.department,
            stored_bytes=usage.stored_bytes,
            quota_bytes=quota,
            datasets=usage.datasets,
        )
