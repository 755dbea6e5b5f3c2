"""Cases committed in batches (group commit): many changes at once each get their own
answer, history row, stream event and log entry; a refused one writes nothing and does not
sink the others; two changes of one case never share a batch."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from tests.conftest import client_for
from tests.exchange.test_cases import ITEM, cases_node  # noqa: F401 - cases_node is a fixture
from tests.stories.restaurant import COMPANY_USCC, OWNER_ID
from tongban.client import Case, CaseState, ExchangeError
from tongban.exchange.node import Node
from tongban.v1 import cases_pb2

CORRECTION = cases_pb2.CASE_STATE_CORRECTION


async def _outcomes(
    calls: list[Awaitable[Case]],
) -> list[Case | BaseException]:
    return list(await asyncio.gather(*calls, return_exceptions=True))


async def _written(node: Node) -> tuple[int, int, int, int]:
    assert node.db is not None
    row = await node.db.pool.fetchrow(
        "SELECT (SELECT count(*) FROM service_case) AS cases,"
        " (SELECT count(*) FROM service_case_history) AS history,"
        " (SELECT count(*) FROM event_outbox WHERE dataset = 'approval.cases') AS events,"
        " (SELECT count(*) FROM access_log WHERE action LIKE 'case.%'"
        "  AND decision = 'allowed') AS logged"
    )
    assert row is not None
    return row["cases"], row["history"], row["events"], row["logged"]


async def test_many_changes_at_once_each_get_their_own_record(
    cases_node: Node,  # noqa: F811 - the fixture
) -> None:
    node = cases_node
    async with (
        client_for(node, "approval", "SP-1") as one,
        client_for(node, "approval", "SP-2") as two,
        client_for(node, "samr") as samr,
    ):
        applicants = [COMPANY_USCC, OWNER_ID]
        opened = await _outcomes(
            [
                (one if i % 2 else two).open_case(ITEM, applicants[i % 2], reason=f"第{i}件")
                for i in range(24)
            ]
        )
        assert all(isinstance(c, Case) for c in opened), opened
        cases = [c for c in opened if isinstance(c, Case)]
        assert len({c.number for c in cases}) == 24
        assert await _written(node) == (24, 24, 24, 24)

        first, second, *rest = cases
        results = await _outcomes(
            [
                # Two moves of one case at once: one wins, the other finds it moved.
                one.move_case(first.number, CORRECTION, reason="补正材料"),
                two.move_case(first.number, CORRECTION, reason="补正材料"),
                # Refused: another department's case, a move the state does not allow,
                # a case that does not exist, a correction without a reason.
                samr.move_case(second.number, CORRECTION, reason="x"),
                one.move_case(second.number, cases_pb2.CASE_STATE_DELIVERED),
                one.move_case("approval-2026-0000000000", CORRECTION, reason="x"),
                two.move_case(second.number, CORRECTION),
                *(
                    (one if i % 2 else two).move_case(c.number, CORRECTION, reason=f"补正{i}")
                    for i, c in enumerate(rest)
                ),
            ]
        )
    reasons = [r.reason if isinstance(r, ExchangeError) else None for r in results]
    twice = sorted(reasons[:2], key=str)
    assert twice == ["CASE_TRANSITION_INVALID", None]
    assert reasons[2:6] == [
        "CASE_NOT_PERMITTED",
        "CASE_TRANSITION_INVALID",
        "CASE_NOT_FOUND",
        "CASE_REASON_REQUIRED",
    ]
    moved = [r for r in results if isinstance(r, Case)]
    assert len(moved) == 1 + len(rest)
    assert {m.state for m in moved} == {CaseState.CORRECTION}
    # One history row, stream event and log entry per change that was made; none for
    # the refused ones; the other department's attempt is logged as a denial.
    assert await _written(node) == (24, 24 + len(moved), 24 + len(moved), 24 + len(moved))
    assert node.db is not None
    history = await node.db.pool.fetch(
        "SELECT seq, officer, reason FROM service_case_history WHERE case_number = $1 ORDER BY seq",
        first.number,
    )
    assert [r["seq"] for r in history] == [1, 2]
    denied = await node.db.pool.fetch(
        "SELECT caller, action, case_id FROM access_log WHERE decision = 'denied'"
    )
    assert [tuple(r) for r in denied] == [("samr", "case.move", second.number)]
    # Each case's record on the stream is its latest state.
    events = await node.db.pool.fetch(
        "SELECT key, data->>'state' AS state FROM change_event WHERE dataset = 'approval.cases'"
        " ORDER BY position"
    )
    latest = {e["key"]: e["state"] for e in events}
    assert latest[first.number] == "correction"
    assert latest[second.number] == "accepted"
    assert sorted(m.number for m in moved) == sorted(
        n for n, state in latest.items() if state == "correction"
    )


async def test_a_stopped_writer_leaves_changes_to_their_own_transactions(
    cases_node: Node,  # noqa: F811 - the fixture
) -> None:
    node = cases_node
    assert node.cases is not None
    await node.cases.stop()
    try:
        async with client_for(node, "approval") as approval:
            case = await approval.open_case(ITEM, COMPANY_USCC)
            moved = await approval.move_case(case.number, CORRECTION, reason="补正")
            with pytest.raises(ExchangeError) as again:
                await approval.move_case(case.number, cases_pb2.CASE_STATE_DELIVERED)
        assert moved.state == CaseState.CORRECTION
        assert again.value.reason == "CASE_TRANSITION_INVALID"
        assert await _written(node) == (1, 2, 2, 2)
    finally:
        node.cases.start()
