from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
import pytest_asyncio

from tongban.exchange.db.migrate import apply_migrations
from tongban.exchange.departments import (
    Department,
    DepartmentStore,
    Level,
    Status,
    validate_code,
    validate_name,
    validate_parent,
)
from tongban.exchange.errors import DepartmentExists, DepartmentNotFound, InvalidArgument


def _fp(seed: str) -> bytes:
    return hashlib.sha256(seed.encode()).digest()


@pytest_asyncio.fixture
async def store(database_url: str) -> AsyncIterator[DepartmentStore]:
    async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as pool:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
        yield DepartmentStore(pool)


async def _add(
    store: DepartmentStore, code: str, level: Level, parent: str | None = None
) -> Department:
    return await store.add(
        code=code,
        name=f"部门 {code}",
        level=level,
        parent=parent,
        roles=[],
        tls_fingerprint=_fp(code),
        seal_fingerprint=_fp(code + "-seal"),
    )


@pytest.mark.parametrize("code", ["a", "Samr", "1samr", "samr_county", "-x", "x" * 64, "", "市场"])
def test_bad_codes_are_refused(code: str) -> None:
    with pytest.raises(InvalidArgument, match="not valid"):
        validate_code(code)


def test_names_are_normalised_and_checked() -> None:
    assert validate_name("  县市场监督管理局 ") == "县市场监督管理局"
    # NFC: a decomposed "é" becomes one code point.
    assert validate_name("Cafe\u0301") == "Caf\u00e9"
    for bad in ["", "   ", "x" * 201, "a\u0000b", "a\u200bb", "bad\u202e"]:
        with pytest.raises(InvalidArgument):
            validate_name(bad)


def test_parent_must_be_at_a_higher_level() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    county = Department(
        "samr-county", "x", Level.COUNTY, None, frozenset(), Status.ACTIVE, b"", None, now, now
    )
    validate_parent(Level.TOWNSHIP, county)
    for level in (Level.COUNTY, Level.CITY, Level.PROVINCE):
        with pytest.raises(InvalidArgument, match="not above"):
            validate_parent(level, county)


async def test_add_list_suspend(store: DepartmentStore) -> None:
    await _add(store, "samr-city", Level.CITY)
    county = await _add(store, "samr-county", Level.COUNTY, parent="samr-city")
    assert county.parent == "samr-city"
    assert [d.code for d in await store.list()] == ["samr-city", "samr-county"]
    suspended = await store.set_status("samr-county", Status.SUSPENDED)
    assert suspended.status is Status.SUSPENDED
    assert (await store.get("samr-county")).status is Status.SUSPENDED


async def test_duplicates_and_unknowns(store: DepartmentStore) -> None:
    await _add(store, "tax", Level.COUNTY)
    with pytest.raises(DepartmentExists, match="already registered"):
        await _add(store, "tax", Level.COUNTY)
    with pytest.raises(DepartmentExists, match="certificate"):
        await store.add(
            code="tax2",
            name="x",
            level=Level.COUNTY,
            parent=None,
            roles=[],
            tls_fingerprint=_fp("tax"),
            seal_fingerprint=None,
        )
    with pytest.raises(DepartmentNotFound, match="add it first"):
        await _add(store, "tax-town", Level.TOWNSHIP, parent="nowhere")
    with pytest.raises(DepartmentNotFound):
        await store.set_status("nowhere", Status.SUSPENDED)
    with pytest.raises(InvalidArgument, match="role"):
        await store.add(
            code="x1",
            name="x",
            level=Level.COUNTY,
            parent=None,
            roles=["root"],
            tls_fingerprint=_fp("x1"),
            seal_fingerprint=None,
        )
    assert [d.code for d in await store.list()] == ["tax"]
