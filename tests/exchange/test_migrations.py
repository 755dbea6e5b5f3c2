from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from tongban.exchange.db import migrate
from tongban.exchange.db.migrate import Migration, apply_migrations, load_migrations
from tongban.exchange.errors import MigrationFailed
from tongban.exchange.sharing.storage import VERSION_BYTES


@pytest_asyncio.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(database_url, min_size=1, max_size=4) as created:
        yield created


async def _apply(pool: asyncpg.Pool) -> list[Migration]:
    async with pool.acquire() as conn:
        return await apply_migrations(conn)


def test_packaged_migrations_are_numbered_from_one() -> None:
    versions = [m.version for m in load_migrations()]
    assert versions == list(range(1, len(versions) + 1))


async def test_applying_twice_is_a_no_op(pool: asyncpg.Pool) -> None:
    first = await _apply(pool)
    assert [m.version for m in first] == [m.version for m in load_migrations()]
    assert await _apply(pool) == []
    count = await pool.fetchval("SELECT count(*) FROM schema_migration")
    assert count == len(first)


async def test_nodes_starting_together_apply_each_migration_once(pool: asyncpg.Pool) -> None:
    results = await asyncio.gather(*(_apply(pool) for _ in range(3)))
    assert sorted(len(r) for r in results) == [0, 0, len(load_migrations())]


async def test_an_edited_migration_is_refused(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _apply(pool)
    original = load_migrations()
    edited = [Migration(m.version, m.name, m.sql + "\n-- edited") for m in original]
    monkeypatch.setattr(migrate, "load_migrations", lambda: edited)
    with pytest.raises(MigrationFailed, match="changed after it was applied"):
        await _apply(pool)


async def test_a_failing_migration_rolls_back_entirely(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = [
        *load_migrations(),
        Migration(99, "broken", "CREATE TABLE half_done (x int); SELECT no_such_function();"),
    ]
    monkeypatch.setattr(migrate, "load_migrations", lambda: broken)
    with pytest.raises(MigrationFailed, match="rolled back"):
        await _apply(pool)
    assert await pool.fetchval("SELECT to_regclass('half_done')") is None
    assert await pool.fetchval("SELECT count(*) FROM schema_migration WHERE version = 99") == 0


async def test_a_database_from_a_newer_version_is_refused(pool: asyncpg.Pool) -> None:
    await _apply(pool)
    await pool.execute(
        "INSERT INTO schema_migration (version, name, checksum) VALUES (9999, 'future', 'x')"
    )
    with pytest.raises(MigrationFailed, match="newer version"):
        await _apply(pool)


async def test_the_storage_quota_migration_counts_what_is_stored_already(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 0035 gives every dataset its stream row (a dataset with no record yet had
    none) and counts the record versions already written, as a write would have."""
    everything = load_migrations()
    monkeypatch.setattr(migrate, "load_migrations", lambda: everything[:34])
    await _apply(pool)
    await pool.execute(
        "INSERT INTO department (code, name, level, tls_fingerprint)"
        " VALUES ('samr', '市场监管局', 'county', $1)",
        bytes(32),
    )
    for code in ("samr.enterprise", "samr.empty"):
        await pool.execute(
            "INSERT INTO dataset (code, owner, current_version, created_at, updated_at)"
            " VALUES ($1, 'samr', 1, now(), now())",
            code,
        )
    await pool.execute(
        "INSERT INTO record (dataset, key, version, data, deleted, valid_from, valid_to)"
        " VALUES ('samr.enterprise', 'k1', 1, '{\"名称\": \"甲\"}', false, now(), now()),"
        " ('samr.enterprise', 'k1', 2, NULL, true, now(), NULL),"
        " ('samr.enterprise', 'k22', 1, '{\"a\": 1}', false, now(), NULL)"
    )
    await pool.execute(
        "INSERT INTO dataset_stream (dataset, next_position) VALUES ('samr.enterprise', 3)"
    )
    monkeypatch.setattr(migrate, "load_migrations", lambda: everything)
    assert [m.version for m in await _apply(pool)] == [35]
    rows = await pool.fetch("SELECT * FROM dataset_stream ORDER BY dataset")
    json_bytes = len('{"名称": "甲"}'.encode()) + len('{"a": 1}')
    assert [(r["dataset"], r["next_position"], r["stored_bytes"]) for r in rows] == [
        ("samr.empty", 0, 0),
        ("samr.enterprise", 3, 2 + 2 + 3 + json_bytes + 3 * VERSION_BYTES),
    ]
