"""The node's database login cannot change the log, whatever SQL it runs."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr

from tests.cli_helpers import atongban, cli_env
from tests.conftest import client_for
from tongban.client import ExchangeError
from tongban.exchange.db.database import Database
from tongban.exchange.enrolment import DEMO_DEPARTMENTS
from tongban.exchange.errors import MigrationFailed
from tongban.exchange.node import Node
from tongban.exchange.settings import Settings
from tongban.signing.clock import FixedClock, SystemClock

# Each statement a node session might be made to run (SQL injection, code execution in
# the node) to rewrite or hide log entries, and the refusal PostgreSQL must answer with.
# The messages are the privilege checks' own: the log tables' triggers raise the same
# error class ("access_log is append-only"), so a test matching the class alone would
# still pass with the node's UPDATE, DELETE or TRUNCATE granted back.
_NOT_GRANTED = "permission denied for table {}"
_NOT_OWNER = "must be owner of table {}"
ATTEMPTS = [
    ("SET ROLE postgres", 'permission denied to set role "postgres"'),
    ("SET SESSION AUTHORIZATION postgres", "permission denied to set session authorization"),
    ("ALTER TABLE access_log DISABLE TRIGGER ALL", _NOT_OWNER.format("access_log")),
    (
        "ALTER TABLE access_log DISABLE TRIGGER access_log_no_update",
        _NOT_OWNER.format("access_log"),
    ),
    (
        "DROP TRIGGER access_log_no_update ON access_log",
        "must be owner of relation access_log",
    ),
    ("UPDATE access_log SET decision = 'allowed'", _NOT_GRANTED.format("access_log")),
    ("DELETE FROM access_log", _NOT_GRANTED.format("access_log")),
    ("TRUNCATE access_log", _NOT_GRANTED.format("access_log")),
    ("UPDATE log_node SET hash = hash", _NOT_GRANTED.format("log_node")),
    ("DELETE FROM log_node", _NOT_GRANTED.format("log_node")),
    ("TRUNCATE log_node", _NOT_GRANTED.format("log_node")),
    ("UPDATE log_checkpoint SET note = note", _NOT_GRANTED.format("log_checkpoint")),
    ("DELETE FROM log_checkpoint", _NOT_GRANTED.format("log_checkpoint")),
    ("TRUNCATE log_checkpoint", _NOT_GRANTED.format("log_checkpoint")),
    ("DELETE FROM log_state", _NOT_GRANTED.format("log_state")),
    ("TRUNCATE log_state", _NOT_GRANTED.format("log_state")),
    # Sequence first, integrate after (migration 0030): the sequence only grows, and the
    # auditors' search rows are appended by the integrator, never changed.
    ("DELETE FROM log_sequence", _NOT_GRANTED.format("log_sequence")),
    ("TRUNCATE log_sequence", _NOT_GRANTED.format("log_sequence")),
    ("UPDATE log_sequence SET next = next - 1", "log_sequence only grows"),
    ("UPDATE access_log_search SET decision = 'allowed'", _NOT_GRANTED.format("access_log_search")),
    ("DELETE FROM access_log_search", _NOT_GRANTED.format("access_log_search")),
    ("TRUNCATE access_log_search", _NOT_GRANTED.format("access_log_search")),
    ("DROP TABLE access_log_search", _NOT_OWNER.format("access_log_search")),
    ("DROP VIEW access_log_searchable", "must be owner of view access_log_searchable"),
    ("DROP TABLE access_log", _NOT_OWNER.format("access_log")),
    ("CREATE ROLE intruder SUPERUSER", "permission denied to create role"),
    ("ALTER ROLE tongban_node SUPERUSER", "permission denied to alter role"),
    ("GRANT postgres TO tongban_node", 'permission denied to grant role "postgres"'),
    # The department registry is the operator's (migration 0021): no role, suspension or
    # certificate fingerprint is changed from a node session.
    (
        "UPDATE department SET roles = '{auditor,covert}' WHERE code = 'tax'",
        _NOT_GRANTED.format("department"),
    ),
    ("UPDATE department SET status = 'active'", _NOT_GRANTED.format("department")),
    (
        "UPDATE department SET tls_fingerprint = sha256(code::bytea)",
        _NOT_GRANTED.format("department"),
    ),
    (
        "INSERT INTO department (code, name, level, roles, tls_fingerprint)"
        " VALUES ('mole', 'x', 'county', '{auditor}', sha256('mole'))",
        _NOT_GRANTED.format("department"),
    ),
    ("DELETE FROM department WHERE code = 'audit'", _NOT_GRANTED.format("department")),
    ("TRUNCATE department CASCADE", _NOT_GRANTED.format("department")),
    # Departments' SM2 seals are enrolled and revoked by the operator (migration 0028): a
    # node session can neither plant a key nor un-revoke one.
    (
        "INSERT INTO sm2_seal_key (fingerprint, holder, key_pem, chain_pem, created_at)"
        " VALUES (sha256('x'), 'samr', 'k', 'c', now())",
        _NOT_GRANTED.format("sm2_seal_key"),
    ),
    (
        "UPDATE sm2_seal_key SET revoked_at = NULL, revocation_reason = NULL",
        _NOT_GRANTED.format("sm2_seal_key"),
    ),
    ("DELETE FROM sm2_seal_key", _NOT_GRANTED.format("sm2_seal_key")),
]

# What the node's role holds on the log's tables: read and append, and move the tree
# head (log_state) and the sequence (log_sequence), which triggers let only grow; on the
# department registry, read.
PRIVILEGES = {
    "access_log": {"SELECT", "INSERT"},
    "log_node": {"SELECT", "INSERT"},
    "log_checkpoint": {"SELECT", "INSERT"},
    "log_state": {"SELECT", "UPDATE"},
    "log_sequence": {"SELECT", "UPDATE"},
    "access_log_search": {"SELECT", "INSERT"},
    "access_log_searchable": {"SELECT"},
    "covert_case": {"SELECT", "INSERT"},
    "department": {"SELECT"},
    # The exchange as its peers' witness (migration 0027): the state moves by
    # compare-and-swap, never deleted; refusals kept as evidence are pruned to 1,000.
    "peer_witness_state": {"SELECT", "INSERT", "UPDATE"},
    "peer_witness_refusal": {"SELECT", "INSERT", "DELETE"},
    "sm2_seal_key": {"SELECT"},
}
_TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


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


@pytest.mark.parametrize(("statement", "refusal"), ATTEMPTS)
async def test_a_node_session_cannot_change_the_log(
    node: Node, statement: str, refusal: str
) -> None:
    assert node.db is not None
    async with node.db.pool.acquire() as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=re.escape(refusal)):
            await conn.execute(statement)


async def test_the_node_role_only_reads_and_appends_the_log_and_reads_the_registry(
    node: Node,
) -> None:
    assert node.db is not None
    held = {
        table: {
            privilege
            for privilege in _TABLE_PRIVILEGES
            if await node.db.pool.fetchval(
                "SELECT has_table_privilege('tongban_node', $1, $2)", table, privilege
            )
        }
        for table in PRIVILEGES
    }
    assert held == PRIVILEGES


async def test_the_node_still_appends_to_the_log(node: Node) -> None:
    assert node.db is not None
    before = await node.db.pool.fetchval("SELECT size FROM log_state")
    async with client_for(node, "tax") as tax:
        with pytest.raises(ExchangeError) as denied:
            await tax.query(
                "no.such-dataset", ["x"], fields=["name"], purpose="核验", case_id="C-1"
            )
    assert denied.value.reason == "DATASET_NOT_FOUND"
    assert node.integrator is not None
    await node.integrator.catch_up()  # the tree follows the sequenced entries
    assert await node.db.pool.fetchval("SELECT size FROM log_state") == before + 1


async def test_triggers_keep_the_sequence_and_the_search_rows_even_from_the_owner(
    node: Node, database_url: str
) -> None:
    owner = await asyncpg.connect(database_url)
    try:
        for statement, refusal in (
            ("UPDATE access_log_search SET decision = decision", "access_log is append-only"),
            ("DELETE FROM access_log_search", "access_log is append-only"),
            ("TRUNCATE access_log_search", "access_log is append-only"),
            ("UPDATE log_sequence SET next = next - 1", "log_sequence only grows"),
            ("DELETE FROM log_sequence", "log_sequence only grows"),
            ("TRUNCATE log_sequence", "access_log is append-only"),
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match=refusal):
                await owner.execute(statement)
    finally:
        await owner.close()


async def test_a_rewritten_tree_head_is_found_by_verify(node: Node) -> None:
    """The node's role may move the tree head (log_state) to append, and so could write a
    forged root into it; the head cannot shrink, checkpoints cannot be changed, and
    ``tongban audit verify`` finds the forged root."""
    assert node.db is not None
    async with client_for(node, "tax") as tax:
        with pytest.raises(ExchangeError):
            await tax.query(
                "no.such-dataset", ["x"], fields=["name"], purpose="核验", case_id="C-1"
            )
    assert node.checkpointer is not None
    await node.checkpointer.sign_now()  # the head as it is, signed before the forgery
    async with node.db.pool.acquire() as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="log_state only grows"):
            await conn.execute("UPDATE log_state SET size = size - 1")
        await conn.execute("UPDATE log_state SET root = sha256('forged'::bytea)")
    url = node.settings.database_url
    assert url is not None
    verified = await atongban(
        "audit", "verify", "--data-dir", str(node.settings.data_dir), "--json",
        env=cli_env(
            TONGBAN_DATABASE_URL=url.get_secret_value(), TONGBAN_KEY_PASSPHRASE="test passphrase"
        ),
    )  # fmt: skip
    assert verified.code == 1, verified.stdout + verified.stderr
    assert verified.json()["reason"] == "LOG_CORRUPT", verified.stdout
    assert verified.json()["message"] == "The tree head's root differs from the recomputed tree."


# -- the owner's login only for migrations (issue 14, finding 10) ---------------------


def _as_node_role(database_url: str) -> str:
    assert database_url.startswith("postgresql://postgres@")
    return database_url.replace("postgresql://postgres@", "postgresql://tongban_node@", 1)


async def test_migrations_run_apart_and_the_node_never_holds_the_owners_login(
    settings: Settings, database_url: str, admin_dsn: str, tmp_path: Path
) -> None:
    password_file = tmp_path / "db-node.password"
    password_file.write_text("a node password with a ' quote and spaces\n", encoding="utf-8")
    node_url = _as_node_role(database_url)
    env = cli_env(
        TONGBAN_MIGRATION_DATABASE_URL=database_url,  # the owner's (here: the superuser)
        TONGBAN_DATABASE_URL=node_url,
        TONGBAN_DATABASE_PASSWORD_FILE=str(password_file),
    )
    # Nothing migrated yet: a node logging in as tongban_node refuses to start. (The role
    # is the server's, so it may exist from another test's database.)
    await _ensure_node_role(admin_dsn)
    split = settings.model_copy(
        update={"database_url": SecretStr(node_url), "database_password_file": password_file}
    )
    with pytest.raises(MigrationFailed, match="tongban migrate"):
        await Database.open(split, pool_size=1)

    migrated = await atongban("migrate", "--data-dir", str(settings.data_dir), "--json", env=env)
    assert migrated.code == 0, migrated.stdout + migrated.stderr
    answer = migrated.json()
    assert answer["applied"][0] == "0001_departments"
    assert answer["node_login"] is True
    again = await atongban("migrate", "--data-dir", str(settings.data_dir), "--json", env=env)
    assert again.json()["applied"] == []

    # The node has only tongban_node's login; it checks the schema and runs.
    async with Node(split, clock=FixedClock(SystemClock().now())) as node:
        assert node.db is not None
        # The operator registers departments with the owner's login; with the node's
        # alone, the command is refused and says which login it needs.
        data_dir = ("--data-dir", str(settings.data_dir), "--json")
        as_node = await atongban(
            "dept", "add-demo", *data_dir,
            env=cli_env(
                TONGBAN_DATABASE_URL=node_url,
                TONGBAN_DATABASE_PASSWORD_FILE=str(password_file),
                TONGBAN_KEY_PASSPHRASE="test passphrase",
            ),
        )  # fmt: skip
        assert as_node.code == 1
        assert as_node.json()["reason"] == "CONFIG_INVALID"
        assert "TONGBAN_MIGRATION_DATABASE_URL" in as_node.json()["message"]
        enrolled = await atongban(
            "dept", "add-demo", *data_dir,
            env=cli_env(  # as docker/compose.yaml's demo-departments: the owner's login only
                TONGBAN_MIGRATION_DATABASE_URL=database_url,
                TONGBAN_KEY_PASSPHRASE="test passphrase",
            ),
        )  # fmt: skip
        assert enrolled.code == 0, enrolled.stdout + enrolled.stderr
        assert [d.code for d in DEMO_DEPARTMENTS] == enrolled.json()["enrolled"]
        async with node.db.pool.acquire() as conn:
            assert await conn.fetchval("SELECT session_user") == "tongban_node"
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("SET ROLE postgres")
        async with client_for(node, "tax") as tax:
            with pytest.raises(ExchangeError) as denied:
                await tax.query(
                    "no.such-dataset", ["x"], fields=["name"], purpose="核验", case_id="C-1"
                )
        assert denied.value.reason == "DATASET_NOT_FOUND"
    # Its password came from the file: the data dir's generated one was never needed.
    assert not (settings.data_dir / "secrets" / "db-node.password").exists()


async def test_migrate_refuses_the_node_role_and_an_unreadable_password_file(
    settings: Settings, database_url: str, admin_dsn: str, tmp_path: Path
) -> None:
    await _ensure_node_role(admin_dsn)
    node_url = _as_node_role(database_url)
    as_node = await atongban(
        "migrate", "--data-dir", str(settings.data_dir), "--json",
        env=cli_env(TONGBAN_MIGRATION_DATABASE_URL=node_url),
    )  # fmt: skip
    assert as_node.code == 1
    assert as_node.json()["reason"] == "MIGRATION_FAILED"
    assert "schema owner" in as_node.json()["message"]
    missing = tmp_path / "nowhere.password"
    unreadable = await atongban(
        "migrate", "--data-dir", str(settings.data_dir), "--json",
        env=cli_env(
            TONGBAN_MIGRATION_DATABASE_URL=database_url,
            TONGBAN_MIGRATION_DATABASE_PASSWORD_FILE=str(missing),
        ),
    )  # fmt: skip
    assert unreadable.code == 1
    assert unreadable.json()["reason"] == "CONFIG_INVALID"
    assert str(missing) in unreadable.json()["message"]
    assert "Traceback" not in unreadable.stdout + unreadable.stderr


async def _ensure_node_role(admin_dsn: str) -> None:
    """Make sure role tongban_node exists with LOGIN (migration 0003 makes it on the first
    database of the run; a test may come first)."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(
            "DO $$ BEGIN"
            " IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tongban_node') THEN"
            "  CREATE ROLE tongban_node NOLOGIN; END IF;"
            " ALTER ROLE tongban_node LOGIN; END $$"
        )
    finally:
        await conn.close()
