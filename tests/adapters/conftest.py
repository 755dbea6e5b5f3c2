"""Helpers for the adapter tests: real subject-id validators, a recording sink, mappings."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio

from tests.conftest import fresh_database
from tongban.adapters import AdapterMapping, Change, Op, load_mapping
from tongban.adapters.transform import Validator
from tongban.exchange.catalogue.subject_ids import (
    SubjectKind,
    citizen_id_check_digit,
    validate_subject_id,
)
from tongban.signing.clock import FixedClock

VALIDATORS: dict[str, Validator] = {
    "uscc": lambda value: validate_subject_id(SubjectKind.ENTERPRISE, value),
    "citizen_id": lambda value: validate_subject_id(SubjectKind.PERSON, value),
}


def citizen_id(n: int, born: str = "19900101") -> str:
    """A well-formed 公民身份号码 born on ``born``, different for each ``n``."""
    first17 = f"110101{born}{n:03d}"
    return first17 + citizen_id_check_digit(first17)


class Crash(Exception):
    """Stands in for the process dying at a chosen point."""


class RecordingSink:
    """The exchange side, narrowed to what the pipeline calls: it records every publish.

    ``fail_on`` makes call number N raise before anything is accepted (the exchange
    refused or was unreachable); ``crash_after`` makes call N accept the changes and then
    raise (the process died before it could commit its state). ``before`` runs before
    each call with the call's number.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[Change]]] = []
        self.attempts = 0
        self.fail_on: int | None = None
        self.crash_after: int | None = None
        self.before: Callable[[int], Awaitable[None]] | None = None

    async def publish(self, dataset: str, changes: Sequence[Change]) -> None:
        self.attempts += 1
        if self.before is not None:
            await self.before(self.attempts)
        if self.fail_on == self.attempts:
            raise ConnectionError("the exchange is unreachable")
        self.calls.append((dataset, list(changes)))
        if self.crash_after == self.attempts:
            raise Crash("killed between publish and commit")

    @property
    def changes(self) -> list[Change]:
        return [change for _, batch in self.calls for change in batch]

    def keys(self, op: Op | None = None) -> list[str]:
        return [c.key for c in self.changes if op is None or c.op is op]

    def reset(self) -> None:
        self.calls.clear()


def write_mapping(directory: Path, text: str, name: str = "mapping.yaml") -> AdapterMapping:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_mapping(path, known_checks=VALIDATORS)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest_asyncio.fixture
async def legacy_dsn(admin_dsn: str) -> AsyncIterator[str]:
    """A database of its own for a legacy system (apart from the node's), dropped after."""
    async with fresh_database(admin_dsn, "legacy_") as url:
        yield url
