"""Publishes of the same records at the same moment (two adapters of one department, a
retry that overtakes the call it retries) are applied one after another: none is lost,
none fails, every version is there once."""

from __future__ import annotations

import asyncio

from tests.conftest import client_for, uscc
from tests.stories.restaurant import COMPANY, ENTERPRISE
from tongban.client import ExchangeError
from tongban.exchange.node import Node

KEYS = [uscc(i) for i in range(40)]
PUBLISHERS = 16
ROUNDS = 10


async def test_publishes_of_the_same_records_at_once_all_go_through(node: Node) -> None:
    """16 publishes at once of the same 40 records, half naming them in the opposite
    order, ten times over. Each one that waited for another's row locks used to find the
    rows it waited for gone (superseded) and the new ones not yet visible to it, take the
    records for new ones and fail on version 1: a third of them answered INTERNAL. Now
    every publish goes through, and every record has all 161 versions, numbered without
    a gap, and an event each."""

    def values(key: str, address: str) -> dict[str, object]:
        return dict(COMPANY, uscc=key, address=address)

    async with client_for(node, "samr") as samr:
        await samr.register_dataset(ENTERPRISE, publish=True)
        await samr.publish_records("samr.enterprise", [(k, values(k, "起始")) for k in KEYS])
        failed: list[ExchangeError] = []

        async def publish(round_: int, number: int) -> None:
            order = KEYS if number % 2 else KEYS[::-1]
            address = f"第 {round_} 轮 {number} 号"
            try:
                await samr.publish_records(
                    "samr.enterprise", [(k, values(k, address)) for k in order]
                )
            except ExchangeError as e:
                failed.append(e)

        for round_ in range(ROUNDS):
            await asyncio.gather(*(publish(round_, n) for n in range(PUBLISHERS)))
    assert failed == []
    assert node.db is not None
    versions = await node.db.pool.fetch(
        "SELECT key, count(*) AS n, max(version) AS last, count(DISTINCT version) AS distinct"
        " FROM record WHERE dataset = 'samr.enterprise' GROUP BY key"
    )
    expected = 1 + ROUNDS * PUBLISHERS
    assert sorted(r["key"] for r in versions) == sorted(KEYS)
    assert {(r["n"], r["last"], r["distinct"]) for r in versions} == {(expected,) * 3}
    events = await node.db.pool.fetchval(
        "SELECT count(*) FROM event_outbox WHERE dataset = 'samr.enterprise'"
    )
    assert events == len(KEYS) * expected
    current = await node.db.pool.fetch(
        "SELECT data->>'address' AS address FROM record"
        " WHERE dataset = 'samr.enterprise' AND valid_to IS NULL"
    )
    assert len(current) == len(KEYS)
    assert all(r["address"].startswith(f"第 {ROUNDS - 1} 轮") for r in current)
