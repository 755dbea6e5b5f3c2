"""The node's database login cannot change the log, whatever SQL it runs."""

from __future__ import annotations

import asyncpg
import pytest

from tests.conftest import client_for
from tongban.client import ExchangeError
from tongban.exchange.node import Node

# Each statement a node session might be made to run (SQL injection, code execution in
# the node) to rewrite or hide log entries, and what PostgreSQL must answer.
ATTEMPTS = [
    "SET ROLE postgres",
    "SET SESSION AUTHORIZATION postgres",
    "ALTER TABLE access_log DISABLE TRIGGER ALL",
    "ALTER TABLE access_log DISABLE TRIGGER access_log_no_update",
    "DROP TRIGGER access_log_no_update ON access_log",
    "UPDATE access_log SET decision = 'allowed'",
    "DELETE FROM access_log",
    "TRUNCATE access_log",
    "UPDATE log_node SET hash = hash",
    "DELETE FROM log_node",
    "TRUNCATE log_node",
    "UPDATE log_checkpoint SET note = note",
    "DELETE FROM log_checkpoint",
    "TRUNCATE log_checkpoint",
    "DROP TABLE access_log",
    "CREATE ROLE intruder SUPERUSER",
    "ALTER ROLE tongban_node SUPERUSER",
    "GRANT postgres TO tongban_node",
]


async def test_the_node_logs_in_as_its_own_unprivileged_role(node: Node) -> None:
    assert node.db is not None
    async with node.db.pool.acquire() as conn:
        who = await conn.fetchrow(
            "SELECT session_user AS session, current_user AS current,"
            " (SELECT rolsuper FROM pg_roles WHERE rolname = session_user) AS super,"
            " EXISTS (SELECT FROM pg_roles r WHERE r.rolsuper"
            "   AND pg_has_role(session_user, r.oid, 'MEMBER')) AS reaches_super"
        )
    assert who is not None
    assert (who["session"], who["current"]) == ("tongban_node", "tongban_node")
    assert who["super"] is False
    assert who["reaches_super"] is False


@pytest.mark.parametrize("statement", ATTEMPTS)
async def test_a_node_session_cannot_change_the_log(node: Node, statement: str) -> None:
    assert node.db is not None
    async with node.db.pool.acquire() as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(statement)


async def test_the_node_still_appends_to_the_log(node: Node) -> None:
    assert node.db is not None
    before = await node.db.pool.fetchval("SELECT size FROM log_state")
    async with client_for(node, "tax") as tax:
        with pytest.raises(ExchangeError) as denied:
            await tax.query(
                "no.such-dataset", ["x"], fields=["name"], purpose="核验", case_id="C-1"
            )
    assert denied.value.reason == "DATASET_NOT_FOUND"
    assert await node.db.pool.fetchval("SELECT size FROM log_state") == before + 1
