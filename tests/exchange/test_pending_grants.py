"""A consumer may have at most TONGBAN_DEPT_MAX_PENDING_GRANTS requests awaiting one
owner's answer: a consumer's system gone wrong, or in an attacker's hands, cannot bury
the owner's officers under requests, and its requests to other owners go on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
import pytest_asyncio

from tests.conftest import client_for, enrol_demo
from tests.stories.restaurant import PERSON, PURPOSE
from tongban.client import ExchangeError
from tongban.exchange.node import Node
from tongban.exchange.settings import Settings
from tongban.v1 import catalogue_pb2

LIMIT = 3


@pytest_asyncio.fixture
async def limited(settings: Settings) -> AsyncIterator[Node]:
    await enrol_demo(settings)
    async with Node(settings.model_copy(update={"dept_max_pending_grants": LIMIT})) as node:
        yield node


def _hrss_person() -> catalogue_pb2.DatasetSpec:
    spec = catalogue_pb2.DatasetSpec()
    spec.CopyFrom(PERSON)
    spec.code = "hrss.person"
    return spec


async def test_pending_requests_to_one_owner_are_bounded(limited: Node) -> None:
    node = limited
    expiry = node.clock.now() + timedelta(days=90)
    async with (
        client_for(node, "police") as police,
        client_for(node, "hrss") as hrss,
        client_for(node, "approval", "SP-1") as approval,
    ):
        await police.register_dataset(PERSON, publish=True)
        await hrss.register_dataset(_hrss_person(), publish=True)

        async def ask(dataset: str = "police.person") -> str:
            grant = await approval.request_grant(dataset, ["name"], PURPOSE, "依法核验", expiry)
            return grant.id

        # Ten at once: exactly LIMIT get through.
        results = await asyncio.gather(*(ask() for _ in range(10)), return_exceptions=True)
        asked = [r for r in results if isinstance(r, str)]
        refused = [r for r in results if isinstance(r, ExchangeError)]
        assert len(asked) == LIMIT
        assert len(refused) == 10 - LIMIT
        error = refused[0]
        assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.reason == "TOO_MANY_PENDING_GRANTS"
        assert error.message.startswith(
            f"approval has {LIMIT} grant requests awaiting police's answer"
        )
        assert error.metadata == {"owner": "police", "pending": str(LIMIT), "limit": str(LIMIT)}
        assert error.retry_after is None
        assert not error.retriable
        assert node.db is not None
        stored = await node.db.pool.fetchval(
            "SELECT count(*) FROM data_grant WHERE consumer = 'approval' AND owner = 'police'"
        )
        assert stored == LIMIT

        # Another owner's queue is its own.
        await ask("hrss.person")
        # An answer, or a withdrawal, makes room for one more each.
        await police.decide_grant(asked[0], approve=False, reason="不符合条件")
        await ask()
        with pytest.raises(ExchangeError, match="awaiting police's answer"):
            await ask()
        await approval.revoke_grant(asked[1], reason="撤回")
        await ask()
