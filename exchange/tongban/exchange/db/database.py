"""The node's PostgreSQL: an asyncpg pool over the embedded server or an external URL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

import asyncpg

from tongban.exchange.datadir import node_password
from tongban.exchange.db.embedded import EmbeddedPostgres
from tongban.exchange.db.fair_pool import create_fair_pool, share_of
from tongban.exchange.db.guard import one_per_task
from tongban.exchange.db.migrate import apply_migrations, check_migrations
from tongban.exchange.db.trouble import DRIVER_ERRORS
from tongban.exchange.errors import ConfigInvalid, DatabaseUnavailable, MigrationFailed
from tongban.exchange.settings import Settings

__all__ = ["Database", "MigrationReport", "connections_per_node", "migrate_database"]

_log = logging.getLogger(__name__)

_CONNECT_TIMEOUT = 10.0
_LOG_POOL_SIZE = 2  # the access-log writer: its pipelined batches (audit.log.PIPELINE)


def connections_per_node(settings: Settings) -> int:
    """The most database connections one node process opens: its pool and the log
    writer's (``serve --workers`` sizes itself by it)."""
    return settings.db_pool_size + _LOG_POOL_SIZE


class Database:
    """Two connection pools plus, in embedded mode, this process's hold on the server.

    ``pool`` serves requests. ``log_pool`` (one connection) belongs to the access-log
    writer, so entries are never written late because requests hold every connection of
    ``pool``.

    Open with ``await Database.open(settings)`` (or ``async with``); ``close()`` closes the
    pools and leaves the embedded server (stopping it if this was its last user).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        embedded: EmbeddedPostgres | None,
        where: str,
        log_pool: asyncpg.Pool | None = None,
    ) -> None:
        self.pool = pool
        self.log_pool = log_pool or pool
        self.embedded = embedded
        self.where = where
        self._closed = False

    @classmethod
    async def open(
        cls,
        settings: Settings,
        *,
        pool_size: int | None = None,
        migrate: bool = True,
        owner: bool = False,
    ) -> Database:
        """Connect (starting the embedded server if needed) and apply migrations; when the
        login is ``tongban_node`` itself, check instead that they were applied.

        ``owner``: the pools log in as the schema's owner (``TONGBAN_MIGRATION_DATABASE_URL``,
        else ``TONGBAN_DATABASE_URL``, else the embedded server's superuser), not as
        ``tongban_node``: for the operator's changes to the department registry, which the
        node's role may only read. Raises ConfigInvalid if that login is ``tongban_node``.

        Raises DatabaseUnavailable, DataDirUnusable, ConfigInvalid or MigrationFailed.
        """
        embedded: EmbeddedPostgres | None = None
        dsn_password: str | None = None
        if owner and settings.migration_database_url is not None:
            dsn = settings.migration_database_url.get_secret_value()
            where = _redact(dsn)
            dsn_password = _read_password(
                settings.migration_database_password_file,
                "TONGBAN_MIGRATION_DATABASE_PASSWORD_FILE",
            )
        elif settings.database_url is not None:
            dsn = settings.database_url.get_secret_value()
            where = _redact(dsn)
            dsn_password = _read_password(
                settings.database_password_file, "TONGBAN_DATABASE_PASSWORD_FILE"
            )
        else:
            embedded = EmbeddedPostgres(settings.data_dir)
            await asyncio.to_thread(embedded.start)
            try:
                await _create_database(embedded)
            except BaseException:
                await asyncio.to_thread(embedded.stop)
                raise
            dsn = embedded.dsn()
            where = f"embedded PostgreSQL in {embedded.pgdata}"
        size = pool_size or settings.db_pool_size
        name = f"tongban-{settings.node_name}"
        pool: asyncpg.Pool | None = None
        try:
            if owner:
                login = await _prepare_owner(dsn, where, migrate=migrate, password=dsn_password)
            else:
                login = await _prepare(
                    dsn,
                    where,
                    migrate=migrate,
                    password=lambda: _node_role_password(settings, dsn_password),
                    dsn_password=dsn_password,
                )
            limits = _Limits(
                settings.db_lock_wait_seconds,
                settings.db_statement_seconds,
                settings.dept_max_stored_bytes,
            )
            pool = await _create_pool(dsn, where, size, login, name, limits, dsn_password)
            log_pool = await _create_pool(
                dsn, where, _LOG_POOL_SIZE, login, name + "-log", limits, dsn_password
            )
        except BaseException:
            if pool is not None:
                pool.terminate()
            if embedded is not None:
                await asyncio.to_thread(embedded.stop)
            raise
        return cls(pool, embedded, where, log_pool)

    async def ping(self, within: float = 2.0) -> None:
        """Raise DatabaseUnavailable unless the database answers within ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                await self.pool.fetchval("SELECT 1")
        except (*DRIVER_ERRORS, TimeoutError) as e:
            raise DatabaseUnavailable(f"The database ({self.where}) does not answer.") from e

    async def close(self) -> None:
        """Close the pools and leave the embedded server. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for pool in dict.fromkeys((self.pool, self.log_pool)):
            try:
                await asyncio.wait_for(pool.close(), timeout=10)
            except TimeoutError:
                _log.warning("database pool did not close in 10 s; terminating connections")
                pool.terminate()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


NODE_ROLE = "tongban_node"


@dataclass(frozen=True)
class _Login:
    """How the node's pools log in: as ``tongban_node`` itself (``password`` set), or as
    the migrating login taking ``role`` at session start (the weaker fallback), or as the
    login alone (``role`` None)."""

    role: str | None
    password: str | None = None


@dataclass(frozen=True)
class MigrationReport:
    """What ``migrate_database`` did."""

    where: str
    """The database, without its password."""
    applied: tuple[str, ...]
    """The migrations applied now (``0009_console_sessions``), empty when up to date."""
    node_login: bool
    """Whether ``tongban_node`` now logs in with the node's password (else the nodes fall
    back to starting their sessions as it from the migrating login)."""


async def migrate_database(settings: Settings) -> MigrationReport:
    """Apply the migrations as the schema's owner and give ``tongban_node`` LOGIN and the
    node's password: ``tongban migrate``. The owner's login is
    ``TONGBAN_MIGRATION_DATABASE_URL`` (else ``TONGBAN_DATABASE_URL``, else the embedded
    server's superuser); the node's password is that of ``TONGBAN_DATABASE_URL`` when it
    names ``tongban_node``, else the data dir's ``secrets/db-node.password``.

    Raises DatabaseUnavailable, DataDirUnusable, ConfigInvalid or MigrationFailed (also
    when the owner's login is ``tongban_node``, which may not change the schema).
    """
    node_dsn_password: str | None = None
    if settings.database_url is not None:
        node_dsn_password = _read_password(
            settings.database_password_file, "TONGBAN_DATABASE_PASSWORD_FILE"
        )
    embedded: EmbeddedPostgres | None = None
    if settings.migration_database_url is not None:
        dsn = settings.migration_database_url.get_secret_value()
        setting = "TONGBAN_MIGRATION_DATABASE_URL"
        password = _read_password(
            settings.migration_database_password_file, "TONGBAN_MIGRATION_DATABASE_PASSWORD_FILE"
        )
    elif settings.database_url is not None:
        dsn, setting = settings.database_url.get_secret_value(), "TONGBAN_DATABASE_URL"
        password = node_dsn_password
    else:
        embedded = EmbeddedPostgres(settings.data_dir)
        await asyncio.to_thread(embedded.start)
        setting, password = "the embedded PostgreSQL", None
    try:
        if embedded is not None:
            await _create_database(embedded)
            dsn = embedded.dsn()
        where = _redact(dsn) if embedded is None else f"embedded PostgreSQL in {embedded.pgdata}"
        conn = await _connect(dsn, where, password, setting)
        try:
            if await conn.fetchval("SELECT current_user = $1", NODE_ROLE):
                raise MigrationFailed(
                    f"{setting} logs in as {NODE_ROLE}, which may not change the schema; set "
                    "TONGBAN_MIGRATION_DATABASE_URL to the schema owner's login."
                )
            applied = await apply_migrations(conn)
            login = await _node_login(conn, _node_role_password(settings, node_dsn_password))
        finally:
            await conn.close()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
    return MigrationReport(
        where=where,
        applied=tuple(f"{m.version:04d}_{m.name}" for m in applied),
        node_login=login.password is not None,
    )


def _read_password(path: Path | None, setting: str) -> str | None:
    """The password in file ``path`` (its first line), None if ``path`` is None."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise ConfigInvalid(
            f"{setting} names {path}, which cannot be read ({why}); mount the password "
            "secret there or unset it."
        ) from None
    password = text.splitlines()[0] if text else ""
    if not password:
        raise ConfigInvalid(f"{setting} names {path}, which is empty; write the password there.")
    return password


def _node_role_password(settings: Settings, dsn_password: str | None) -> str | None:
    """The password ``tongban_node`` logs in with: that of ``TONGBAN_DATABASE_URL`` when
    the nodes log in as ``tongban_node`` themselves, else the data dir's (made on first
    use; None if the data dir cannot hold it)."""
    if settings.database_url is not None:
        parts = urlsplit(settings.database_url.get_secret_value())
        if parts.username is not None and unquote(parts.username) == NODE_ROLE:
            if dsn_password is not None:
                return dsn_password
            return unquote(parts.password) if parts.password else None
    return node_password(settings)


async def _connect(
    dsn: str, where: str, password: str | None, setting: str = "TONGBAN_DATABASE_URL"
) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(dsn, timeout=_CONNECT_TIMEOUT, password=password)
    except (*DRIVER_ERRORS, TimeoutError) as e:
        raise DatabaseUnavailable(
            f"Cannot connect to the database ({where}): {_short(e)}. "
            f"Check {setting} and that the server is running."
        ) from e


async def _prepare(
    dsn: str,
    where: str,
    *,
    migrate: bool,
    password: Callable[[], str | None],
    dsn_password: str | None,
) -> _Login:
    """Apply migrations as the login user (the schema's owner); return how the node's
    sessions log in. When the login is ``tongban_node`` itself (the owner migrated with
    ``tongban migrate``), only check that the schema is this version's and log in as it.

    Otherwise see ``_node_login``; ``password()`` gives the node role's password."""
    conn = await _connect(dsn, where, dsn_password)
    try:
        if await conn.fetchval("SELECT current_user = $1", NODE_ROLE):
            await check_migrations(conn)
            return _Login(None)
        if migrate:
            await apply_migrations(conn)
        return await _node_login(conn, password())
    finally:
        await conn.close()


async def _prepare_owner(dsn: str, where: str, *, migrate: bool, password: str | None) -> _Login:
    """Apply migrations as the schema's owner and return its own login for the pools.
    Raises ConfigInvalid if the login is ``tongban_node``, which may only read the
    department registry."""
    conn = await _connect(dsn, where, password)
    try:
        if await conn.fetchval("SELECT current_user = $1", NODE_ROLE):
            raise ConfigInvalid(
                f"The department registry is changed as the schema's owner, and the database "
                f"login ({where}) is {NODE_ROLE}, which may only read it; set "
                "TONGBAN_MIGRATION_DATABASE_URL (and TONGBAN_MIGRATION_DATABASE_PASSWORD_FILE) "
                "to the owner's login, as for `tongban migrate`."
            )
        if migrate:
            await apply_migrations(conn)
        return _Login(None)
    finally:
        await conn.close()


async def _node_login(conn: asyncpg.Connection, password: str | None) -> _Login:
    """Return how the node's sessions log in, as seen from the migrating login ``conn``.

    With ``password`` (the node's own) and a login user allowed to manage roles,
    ``tongban_node`` is given LOGIN and that password and the node logs in as it: a
    session that is not a superuser, owns no table and cannot SET ROLE to one that does,
    so SQL run by the node cannot change the log. Otherwise the node's sessions start as
    ``tongban_node`` from the login user, who could SET ROLE back: a warning says so."""
    exists = await conn.fetchval(
        "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)", NODE_ROLE
    )
    power = await conn.fetchrow(
        "SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user"
    )
    member = exists and await conn.fetchval(
        "SELECT pg_has_role(current_user, $1, 'MEMBER')", NODE_ROLE
    )
    if exists and power is not None and password is not None:
        # Only a superuser may state the attributes a superuser could have granted.
        strip = " NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
        try:
            # A utility statement takes no parameters: the server quotes the password
            # (it may be an operator's, from TONGBAN_DATABASE_URL's password file).
            literal = await conn.fetchval("SELECT quote_literal($1::text)", password)
            async with conn.transaction():
                # Nodes starting together would otherwise update the role's row at
                # once ("tuple concurrently updated").
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('tongban_node role'))")
                await conn.execute(
                    f"ALTER ROLE {NODE_ROLE} LOGIN{strip if power['rolsuper'] else ''}"
                    f" PASSWORD {literal}"
                )
        except asyncpg.InsufficientPrivilegeError:
            pass  # falls back to the session role, with the warning below
        else:
            return _Login(NODE_ROLE, password)
    if not member:
        _log.warning(
            "role %s is missing or not granted to the login user; the node runs with the "
            "login role, and only triggers keep the log append-only",
            NODE_ROLE,
        )
        return _Login(None)
    _log.warning(
        "the login user may not manage roles, so the node's sessions start as %s from it "
        "and could SET ROLE back; give %s LOGIN and a password and point "
        "TONGBAN_DATABASE_URL at it for a node that cannot change the log (docs/deploy.md)",
        NODE_ROLE,
        NODE_ROLE,
    )
    return _Login(NODE_ROLE)


async def _keep_session(conn: object) -> None:
    """Skip asyncpg's reset query on release (a round trip per query).

    Safe because nothing in the node leaves session state on a pooled connection: advisory
    locks are transaction-scoped, LISTENs are removed before release, no SET is issued
    (the role is a startup parameter), and no cursor outlives its transaction. asyncpg
    still clears its own listener tables and refuses a connection left in a transaction.
    """


@dataclass(frozen=True)
class _Limits:
    """How long a pooled session's statement may wait for a lock, and run; and the
    departments' default storage quota, which the quota's trigger reads (migration
    0035)."""

    lock_wait: float
    statement: float
    stored_bytes: int

    def server_settings(self) -> dict[str, str]:
        # Startup parameters, so RESET ALL (the pool's reset) returns to them; a
        # transaction may still SET LOCAL its own (the access log's append does).
        return {
            "lock_timeout": f"{round(self.lock_wait * 1000)}ms",
            "statement_timeout": f"{round(self.statement * 1000)}ms",
            "tongban.max_stored_bytes": str(self.stored_bytes),
        }


_DRIVER_GRACE = 10.0
"""Seconds the driver waits past the server's statement_timeout before it gives up on a
statement itself (a server that does not answer at all)."""


async def _create_pool(
    dsn: str,
    where: str,
    size: int,
    login: _Login,
    application_name: str,
    limits: _Limits,
    dsn_password: str | None = None,
) -> asyncpg.Pool:
    # The node's name, so pg_stat_activity and pg_locks tell the nodes' sessions apart
    # (which node holds the relay lock, which one is slow).
    server_settings = {"application_name": application_name, **limits.server_settings()}
    credentials: dict[str, str] = {} if dsn_password is None else {"password": dsn_password}
    if login.password is not None and login.role is not None:
        credentials = {"user": login.role, "password": login.password}  # over the DSN's
    elif login.role is not None:
        # A startup parameter, so it is also what RESET ALL returns to.
        server_settings["role"] = login.role
    try:
        pool = await create_fair_pool(
            dsn,
            share=share_of(size),
            min_size=1,
            max_size=size,
            timeout=_CONNECT_TIMEOUT,
            command_timeout=limits.statement + _DRIVER_GRACE,
            server_settings=server_settings,
            reset=_keep_session,
            setup=one_per_task,
            **credentials,
        )
    except (*DRIVER_ERRORS, TimeoutError) as e:
        raise DatabaseUnavailable(
            f"Cannot connect to the database ({where}): {_short(e)}. "
            "Check TONGBAN_DATABASE_URL and that the server is running."
        ) from e
    assert pool is not None
    return pool


async def _create_database(embedded: EmbeddedPostgres) -> None:
    """Create the ``tongban`` database on first use of an embedded server."""
    try:
        conn = await asyncpg.connect(embedded.dsn("postgres"), timeout=_CONNECT_TIMEOUT)
    except (OSError, asyncpg.PostgresError, TimeoutError) as e:
        raise DatabaseUnavailable(f"The embedded PostgreSQL does not answer: {_short(e)}.") from e
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = 'tongban'"):
            # Another process may create it between our check and our create.
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute("CREATE DATABASE tongban")
    finally:
        await conn.close()


def _redact(dsn: str) -> str:
    parts = urlsplit(dsn)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"postgresql://{host}{port}{parts.path}"


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]
