"""Fixtures of the multi-node tests: departments enrolled once in the shared database,
then nodes started by each test (``Cluster``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from tests.cluster.cluster import Cluster
from tongban.exchange.db.database import Database
from tongban.exchange.enrolment import enrol_demo_departments
from tongban.exchange.settings import Settings
from tongban.signing.clock import SystemClock


async def enrol(settings: Settings) -> None:
    """Migrate the shared database and enrol the story's departments, once, as an
    operator does before starting the nodes (with the schema owner's login)."""
    async with await Database.open(settings, pool_size=2, owner=True) as db:
        await enrol_demo_departments(db, settings, SystemClock().now())


@pytest_asyncio.fixture
async def cluster(settings: Settings, tmp_path: Path) -> AsyncIterator[Cluster]:
    """An exchange on a fresh database in PostgreSQL mode, with no node running yet."""
    await enrol(settings)
    async with Cluster(settings, tmp_path / "logs") as running:
        yield running
