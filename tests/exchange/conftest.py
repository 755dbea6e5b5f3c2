from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from tongban.exchange.enrolment import bundle_dir, enrol_demo_departments
from tongban.exchange.node import Node
from tongban.exchange.settings import Settings
from tongban.signing.clock import FixedClock, SystemClock


@pytest_asyncio.fixture
async def node(settings: Settings) -> AsyncIterator[Node]:
    """A running node with the story's departments enrolled."""
    async with Node(settings, clock=FixedClock(SystemClock().now())) as running:
        assert running.db is not None
        await enrol_demo_departments(running.db, settings, SystemClock().now())
        yield running


def bundle_path(settings: Settings, code: str) -> Path:
    return bundle_dir(settings, code)
