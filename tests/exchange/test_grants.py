"""Grant deadlines in working days, overdue requests, decisions and their limits."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import aiohttp
import asyncpg
import pytest

from tests.conftest import client_for
from tests.stories.restaurant import PERSON, PURPOSE
from tongban.client import ExchangeError
from tongban.exchange.node import Node
from tongban.signing.clock import FixedClock

CST = timezone(timedelta(hours=8))


async def _metric(node: Node, name: str) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{node.http_port}/metrics") as response,
    ):
        text = await response.text()
    return next(line for line in text.splitlines() if line.startswith(name + " "))


def _next_friday_20_utc(now: datetime) -> datetime:
    """Return the first Friday 20:00 UTC at least a day after ``now``."""
    day = (now + timedelta(days=1)).date()
    day += timedelta(days=(4 - day.weekday()) % 7)
    return datetime(day.year, day.month, day.day, 20, 0, tzinfo=UTC)


async def test_deadline_overdue_and_decisions(node: Node) -> None:
    assert isinstance(node.clock, FixedClock)
    # A Friday 20:00 UTC is already Saturday 04:00 in China: the five working days run
    # Monday .. Friday of the next week, due at the end of that Friday, China time. The
    # Friday is the first one after today, so the certificates just issued are valid.
    friday = _next_friday_20_utc(node.clock.now())
    node.clock.set(friday)
    async with client_for(node, "police") as police:
        await police.register_dataset(PERSON, publish=True)
    async with client_for(node, "approval", "SP-1") as approval:
        grant = await approval.request_grant(
            "police.person",
            ["name", "gender"],
            PURPOSE,
            "依法核验",
            node.clock.now() + timedelta(days=90),
        )
    due = grant.due_at.astimezone(CST)
    due_friday = (friday + timedelta(days=7)).date()
    assert (due.date(), due.hour, due.minute) == (due_friday, 23, 59)
    assert grant.requested_by == "SP-1"

    assert await _metric(node, "tongban_grants_overdue") == "tongban_grants_overdue 0.0"
    node.clock.set(friday + timedelta(days=7, hours=5))  # Saturday 09:00 in China
    async with client_for(node, "police") as police:
        overdue = await police.list_grants(overdue=True)
        assert [g.id for g in overdue] == [grant.id]
        assert await _metric(node, "tongban_grants_overdue") == "tongban_grants_overdue 1.0"

        with pytest.raises(ExchangeError) as wider:
            await police.decide_grant(grant.id, approve=True, fields=["name", "household_address"])
        assert wider.value.reason == "INVALID_ARGUMENT"
        with pytest.raises(ExchangeError) as later:
            await police.decide_grant(
                grant.id, approve=True, expiry=node.clock.now() + timedelta(days=365)
            )
        assert later.value.reason == "INVALID_ARGUMENT"
        with pytest.raises(ExchangeError) as no_reason:
            await police.decide_grant(grant.id, approve=False)
        assert no_reason.value.reason == "INVALID_ARGUMENT"
        refused = await police.decide_grant(grant.id, approve=False, reason="用途不明确")
        assert refused.decision_reason == "用途不明确"
        assert await police.list_grants(overdue=True) == []
    async with client_for(node, "tax") as tax:
        # Someone else's grant does not exist for them.
        with pytest.raises(ExchangeError) as foreign:
            await tax.revoke_grant(grant.id)
        assert foreign.value.reason == "GRANT_NOT_FOUND"
        with pytest.raises(ExchangeError) as not_an_id:
            await tax.revoke_grant("not-a-uuid")
        assert not_an_id.value.reason == "GRANT_NOT_FOUND"


async def test_grants_are_only_for_conditional_data(node: Node) -> None:
    from tests.stories.restaurant import ENTERPRISE

    async with client_for(node, "samr") as samr:
        await samr.register_dataset(ENTERPRISE, publish=True)
    async with client_for(node, "tax") as tax:
        with pytest.raises(ExchangeError) as needless:
            await tax.request_grant(
                "samr.enterprise", ["name"], PURPOSE, "依法", node.clock.now() + timedelta(days=9)
            )
    assert needless.value.reason == "INVALID_ARGUMENT"
    assert "unconditional" in needless.value.message


async def test_an_expired_grant_stops_queries(node: Node) -> None:
    from tests.stories.restaurant import OWNER, OWNER_ID

    assert isinstance(node.clock, FixedClock)
    async with client_for(node, "police") as police:
        await police.register_dataset(PERSON, publish=True)
        await police.publish_records("police.person", [(OWNER_ID, OWNER)])
        async with client_for(node, "approval") as approval:
            grant = await approval.request_grant(
                "police.person", ["name"], PURPOSE, "依法", node.clock.now() + timedelta(days=2)
            )
            await police.decide_grant(grant.id, approve=True)
            answer = await approval.query(
                "police.person", [OWNER_ID], fields=["name"], purpose=PURPOSE, case_id="E-1"
            )
            assert answer.records
            node.clock.advance(timedelta(days=3))
            with pytest.raises(ExchangeError) as expired:
                await approval.query(
                    "police.person", [OWNER_ID], fields=["name"], purpose=PURPOSE, case_id="E-2"
                )
    assert expired.value.reason == "GRANT_EXPIRED"


async def test_a_revocation_binds_before_the_cache_hears_of_it(node: Node) -> None:
    """Grants are cached per node and dropped when PostgreSQL's NOTIFY arrives, which on
    another node is a moment after the revocation commits. Here the notification is held
    back altogether (the trigger that sends it is off while the owner revokes): the next
    query is refused all the same, because a decision that rests on a grant is confirmed
    against the grant's committed row."""
    from tests.stories.restaurant import OWNER, OWNER_ID

    async with client_for(node, "police") as police:
        await police.register_dataset(PERSON, publish=True)
        await police.publish_records("police.person", [(OWNER_ID, OWNER)])
        async with client_for(node, "approval") as approval:
            grant = await approval.request_grant(
                "police.person", ["name"], PURPOSE, "依法", node.clock.now() + timedelta(days=9)
            )
            await police.decide_grant(grant.id, approve=True)
            for case in ("R-1", "R-2"):  # the second answer comes from the cached grant
                answer = await approval.query(
                    "police.person", [OWNER_ID], fields=["name"], purpose=PURPOSE, case_id=case
                )
                assert answer.records
            url = node.settings.database_url
            assert url is not None
            owner = await asyncpg.connect(url.get_secret_value())
            try:
                async with owner.transaction():
                    await owner.execute("ALTER TABLE data_grant DISABLE TRIGGER grant_notify")
                    await owner.execute(
                        "UPDATE data_grant SET status = 'revoked', decided_at = now()"
                        " WHERE id = $1",
                        uuid.UUID(grant.id),
                    )
                    await owner.execute("ALTER TABLE data_grant ENABLE TRIGGER grant_notify")
            finally:
                await owner.close()
            with pytest.raises(ExchangeError) as revoked:
                await approval.query(
                    "police.person", [OWNER_ID], fields=["name"], purpose=PURPOSE, case_id="R-3"
                )
    assert revoked.value.reason == "GRANT_REQUIRED"
    assert "revoked" in revoked.value.message


async def test_an_approval_binds_at_once_on_the_node_that_made_it(node: Node) -> None:
    """A consumer refused for want of a grant has that empty answer cached; the owner's
    approval, committed through the same node, must reach its next call without waiting
    for PostgreSQL's NOTIFY. Here the NOTIFY is held back altogether (its trigger off)."""
    from tests.stories.restaurant import OWNER, OWNER_ID

    url = node.settings.database_url
    assert url is not None
    owner = await asyncpg.connect(url.get_secret_value())
    try:
        async with client_for(node, "police") as police:
            await police.register_dataset(PERSON, publish=True)
            await police.publish_records("police.person", [(OWNER_ID, OWNER)])
            async with client_for(node, "approval") as approval:
                await owner.execute("ALTER TABLE data_grant DISABLE TRIGGER grant_notify")
                with pytest.raises(ExchangeError) as refused:
                    await approval.query(
                        "police.person", [OWNER_ID], fields=["name"], purpose=PURPOSE,
                        case_id="A-1",
                    )  # fmt: skip
                assert refused.value.reason == "GRANT_REQUIRED"
                grant = await approval.request_grant(
                    "police.person", ["name"], PURPOSE, "依法",
                    node.clock.now() + timedelta(days=9),
                )  # fmt: skip
                await police.decide_grant(grant.id, approve=True)
                answer = await approval.query(
                    "police.person", [OWNER_ID], fields=["name"], purpose=PURPOSE, case_id="A-2"
                )
        assert answer.records
    finally:
        await owner.execute("ALTER TABLE data_grant ENABLE TRIGGER grant_notify")
        await owner.close()
