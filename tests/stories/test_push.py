"""Step 4 of DESIGN.md, the push (审管互通), in both modes: the approval bureau's decision
reaches the regulator's supervision system by subscription, and the regulator's inspection
result flows back to the bureau the same way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from tests.conftest import client_for
from tests.stories.restaurant import (
    APPROVAL_DECISION,
    COMPANY_USCC,
    DECISION,
    DECISION_NO,
    INSPECTION,
    INSPECTION_NO,
    INSPECTION_RESULT,
)
from tongban.client import Event
from tongban.exchange.node import Node


async def _first(stream: AsyncIterator[Event]) -> Event:
    async with asyncio.timeout(15):
        async for event in stream:
            return event
    raise AssertionError("the stream ended without an event")


async def test_step_4_decision_pushed_to_regulator_and_inspection_back(
    events_node: Node,
) -> None:
    node = events_node
    async with (
        client_for(node, "approval", "SP-0007") as approval,
        client_for(node, "regulator", "JG-0003") as regulator,
    ):
        await approval.register_dataset(DECISION, publish=True)
        await regulator.register_dataset(INSPECTION, publish=True)
        # Each side subscribes to the other's dataset before anything happens.
        to_regulator = asyncio.create_task(
            _first(
                regulator.subscribe(
                    "approval.decision",
                    fields=["decision_no", "applicant_uscc", "decision", "decided_on"],
                    purpose="事中事后监管",
                )
            )
        )
        to_approval = asyncio.create_task(
            _first(
                approval.subscribe(
                    "regulator.inspection",
                    fields=["decision_no", "result", "follow_up"],
                    purpose="许可后续处置",
                )
            )
        )
        await asyncio.sleep(0.3)

        await approval.publish_records("approval.decision", [(DECISION_NO, APPROVAL_DECISION)])
        decision = await to_regulator
        assert decision.key == DECISION_NO
        assert decision.fields == {
            "decision_no": DECISION_NO,
            "applicant_uscc": COMPANY_USCC,
            "decision": "准予许可",
            "decided_on": APPROVAL_DECISION["decided_on"],
        }
        await regulator.acknowledge(decision.subscription_id, decision.position)

        # The regulator inspects and publishes the result once; the bureau receives it.
        await regulator.publish_records(
            "regulator.inspection", [(INSPECTION_NO, INSPECTION_RESULT)]
        )
        inspection = await to_approval
        assert inspection.fields == {
            "decision_no": DECISION_NO,
            "result": INSPECTION_RESULT["result"],
            "follow_up": INSPECTION_RESULT["follow_up"],
        }
        await approval.acknowledge(inspection.subscription_id, inspection.position)
        lags = {s.dataset: s.lag_events for s in await approval.list_subscriptions()}
        assert lags == {"regulator.inspection": 0}
