"""Numbered SQL migrations, applied at start in order, each in its own transaction.

Files are ``migrations/NNNN_name.sql``. An advisory lock serialises nodes starting at once;
the ``schema_migration`` table records what ran with a checksum, so re-running is a no-op
and a migration edited after it was applied is refused rather than silently skipped.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from tongban.exchange.errors import MigrationFailed

__all__ = ["Migration", "apply_migrations", "check_migrations", "load_migrations"]

_log = logging.getLogger(__name__)

# pg_advisory_lock key: "tongban" in ASCII, so it is recognisable in pg_locks.
_LOCK_KEY = int.from_bytes(b"tongban", "big")
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """Return the packaged migrations in order; raise MigrationFailed on a numbering gap."""
    found = []
    for entry in resources.files("tongban.exchange.db.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise MigrationFailed(
                f"Migration numbering has a gap or duplicate at {migration.version:04d}_"
                f"{migration.name}; expected {expected:04d}."
            )
    return found


async def apply_migrations(
    conn: asyncpg.Connection | PoolConnectionProxy[asyncpg.Record],
) -> list[Migration]:
    """Apply pending migrations over ``conn``; return those applied now (empty when up to
    date). Runs as the connection's user, who should own the schema."""
    migrations = load_migrations()
    applied_now: list[Migration] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migration (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                checksum   text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migration")
        done = {row["version"]: row["checksum"] for row in rows}
        _refuse_foreign(done, migrations)
        for migration in migrations:
            if migration.version in done:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migration (version, name, checksum) "
                        "VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
            except asyncpg.PostgresError as e:
                raise MigrationFailed(
                    f"Migration {migration.version:04d}_{migration.name} failed and was "
                    f"rolled back: {e.__class__.__name__} ({e.sqlstate}): {e}"
                ) from e
            _log.info("applied migration %04d_%s", migration.version, migration.name)
            applied_now.append(migration)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now


async def check_migrations(
    conn: asyncpg.Connection | PoolConnectionProxy[asyncpg.Record],
) -> None:
    """Raise MigrationFailed unless the database has exactly this version's migrations,
    unchanged: for a login that may not migrate (``tongban_node``), which must not run on
    a schema it was not written for."""
    migrations = load_migrations()
    try:
        rows = await conn.fetch("SELECT version, checksum FROM schema_migration")
    except asyncpg.UndefinedTableError:
        rows = []
    done = {row["version"]: row["checksum"] for row in rows}
    _refuse_foreign(done, migrations)
    missing = [f"{m.version:04d}_{m.name}" for m in migrations if m.version not in done]
    if missing:
        raise MigrationFailed(
            f"The database lacks migration {', '.join(missing)}, and this login may not "
            "change the schema; run `tongban migrate` with the schema owner's login "
            "(TONGBAN_MIGRATION_DATABASE_URL) first."
        )


def _refuse_foreign(done: dict[int, str], migrations: list[Migration]) -> None:
    """Refuse a database with a migration this version does not know, or with one of ours
    whose file changed after it was applied (``done``: version to checksum)."""
    known = {m.version for m in migrations}
    for version in sorted(set(done) - known):
        raise MigrationFailed(
            f"The database has migration {version:04d} which this tongban does not "
            "know; it was written by a newer version. Upgrade tongban."
        )
    for migration in migrations:
        checksum = done.get(migration.version)
        if checksum is not None and checksum != migration.checksum:
            raise MigrationFailed(
                f"Migration {migration.version:04d}_{migration.name} was changed "
                "after it was applied; add a new migration instead of editing one."
            )
