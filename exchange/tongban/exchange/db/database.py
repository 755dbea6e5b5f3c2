"""The node's PostgreSQL: an asyncpg pool over the embedded server or an external URL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

import asyncpg

from tongban.exchange.datadir import node_password
from tongban.exchange.db.embedded import EmbeddedPostgres
from tongban.exchange.db.fair_pool import create_fair_pool, share_of
from tongban.exchange.db.guard import one_per_task
from tongban.exchange.db.migrate import apply_migrations
from tongban.exchange.errors import DatabaseUnavailable
from tongban.exchange.settings import Settings

__all__ = ["Database"]

_log = logging.getLogger(__name__)

_CONNECT_TIMEOUT = 10.0
_LOG_POOL_SIZE = 1  # the access-log writer


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
        cls, settings: Settings, *, pool_size: int | None = None, migrate: bool = True
    ) -> Database:
        """Connect (starting the embedded server if needed) and apply migrations.

        Raises DatabaseUnavailable, DataDirUnusable or MigrationFailed.
        """
        embedded: EmbeddedPostgres | None = None
        if settings.database_url is not None:
            dsn = settings.database_url.get_secret_value()
            where = _redact(dsn)
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
            login = await _prepare(dsn, where, migrate=migrate, password=node_password(settings))
            pool = await _create_pool(dsn, where, size, login, name)
            log_pool = await _create_pool(dsn, where, _LOG_POOL_SIZE, login, name + "-log")
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
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
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


async def _prepare(dsn: str, where: str, *, migrate: bool, password: str | None) -> _Login:
    """Apply migrations as the login user (the schema's owner); return how the node's
    sessions log in.

    With ``password`` (the node's own, from its data dir) and a login user allowed to
    manage roles, ``tongban_node`` is given LOGIN and that password and the node logs in
    as it: a session that is not a superuser, owns no table and cannot SET ROLE to one
    that does, so SQL run by the node cannot change the log. Otherwise the node's
    sessions start as ``tongban_node`` from the login user, who could SET ROLE back: a
    warning says so."""
    try:
        conn = await asyncpg.connect(dsn, timeout=_CONNECT_TIMEOUT)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
        raise DatabaseUnavailable(
            f"Cannot connect to the database ({where}): {_short(e)}. "
            "Check TONGBAN_DATABASE_URL and that the server is running."
        ) from e
    try:
        if migrate:
            await apply_migrations(conn)
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
                # A utility statement takes no parameters; node_password() checked the
                # password is URL-safe base64, so it needs no quoting.
                async with conn.transaction():
                    # Nodes starting together would otherwise update the role's row at
                    # once ("tuple concurrently updated").
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock(hashtext('tongban_node role'))"
                    )
                    await conn.execute(
                        f"ALTER ROLE {NODE_ROLE} LOGIN{strip if power['rolsuper'] else ''}"
                        f" PASSWORD '{password}'"
                    )
            except asyncpg.InsufficientPrivilegeError:
                pass  # falls back to the session role, with the warning below
            else:
                return _Login(NODE_ROLE, password)
    finally:
        await conn.close()
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


async def _create_pool(
    dsn: str, where: str, size: int, login: _Login, application_name: str
) -> asyncpg.Pool:
    # The node's name, so pg_stat_activity and pg_locks tell the nodes' sessions apart
    # (which node holds the relay lock, which one is slow).
    server_settings = {"application_name": application_name}
    credentials: dict[str, str] = {}
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
            command_timeout=60,
            server_settings=server_settings,
            reset=_keep_session,
            setup=one_per_task,
            **credentials,
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
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
