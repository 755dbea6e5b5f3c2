"""One department cannot take every pooled connection (db/fair_pool.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import pytest

from tongban.exchange.db.fair_pool import (
    DatabaseUnreachable,
    FairPool,
    create_fair_pool,
    department,
    share_of,
)
from tongban.exchange.db.trouble import DATABASE_TROUBLE, condition, refusal


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[FairPool]:
    created = await create_fair_pool(database_url, share=2, min_size=1, max_size=4)
    yield created
    await created.close()


async def _hold(pool: FairPool, code: str | None, held: asyncio.Event, go: asyncio.Event) -> None:
    department.set(code)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT 1") == 1
        held.set()
        await go.wait()


async def test_a_department_past_its_share_waits_and_others_do_not(pool: FairPool) -> None:
    go = asyncio.Event()
    holding = [asyncio.Event() for _ in range(3)]
    tasks = [asyncio.create_task(_hold(pool, "samr", h, go)) for h in holding]
    await asyncio.wait_for(asyncio.gather(holding[0].wait(), holding[1].wait()), 5)
    await asyncio.sleep(0.2)
    assert not holding[2].is_set(), "samr's third call waits for one of samr's own"
    # tax, and the node's own work, get connections while samr waits.
    tax_held = asyncio.Event()
    tax = asyncio.create_task(_hold(pool, "tax", tax_held, go))
    await asyncio.wait_for(tax_held.wait(), 5)
    assert await asyncio.wait_for(pool.fetchval("SELECT 2"), 5) == 2
    go.set()
    await asyncio.wait_for(asyncio.gather(*tasks, tax), 5)
    assert holding[2].is_set()
    # Every share came back: samr can hold two at once again.
    again = [asyncio.Event(), asyncio.Event()]
    done = asyncio.Event()
    second = [asyncio.create_task(_hold(pool, "samr", e, done)) for e in again]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in again)), 5)
    done.set()
    await asyncio.gather(*second)


async def _acquire_within(pool: FairPool, seconds: float) -> None:
    async with asyncio.timeout(seconds), pool.acquire():
        pass


async def test_a_failed_acquire_gives_its_share_back(pool: FairPool) -> None:
    department.set("samr")
    for _ in range(3):  # more than the share: each failure must have returned its place
        with pytest.raises(TimeoutError):
            await _acquire_within(pool, 0)
    async with pool.acquire() as first, pool.acquire() as second:
        assert first is not second


def test_the_share_is_half_the_pool() -> None:
    assert [share_of(n) for n in (1, 2, 10, 11)] == [1, 1, 5, 5]


class _LateClosingProxy:
    """A TCP listener in front of the server's Unix socket that passes every byte on,
    but closes the client's side only when told to after the server has closed its own:
    the window in which a pooled connection has read the server's FATAL message and not
    yet its end of file, made as wide as the test needs."""

    def __init__(self, socket_path: str) -> None:
        self._socket_path = socket_path
        self.server_closed = asyncio.Event()
        self.close_client = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> _LateClosingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close_client.set()
        assert self._server is not None
        self._server.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_unix_connection(self._socket_path)

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()

        upstream = asyncio.create_task(pump(client_r, server_w))
        try:
            await pump(server_r, client_w)  # until the server closes
            self.server_closed.set()
            await self.close_client.wait()
        finally:
            upstream.cancel()
            client_w.close()
            server_w.close()


async def test_a_connection_the_server_ended_while_idle_is_not_used_again(
    admin_dsn: str,
) -> None:
    """A pooled connection whose session the server ends while it sits idle (an
    operator's pg_terminate_backend, a failover) has read the server's FATAL message
    before its end of file. asyncpg hands it out in that state and the next statement
    fails with InternalClientError (MagicStack/asyncpg#1069), which the node answered
    INTERNAL. The pool closes such a connection and raises DatabaseUnreachable (the call
    is answered UNAVAILABLE); the next acquire opens a new one."""
    socket_dir = urlsplit(admin_dsn).query.removeprefix("host=")
    admin = await asyncpg.connect(admin_dsn)
    async with _LateClosingProxy(f"{socket_dir}/.s.PGSQL.5432") as proxy:
        pool = await create_fair_pool(
            f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres",
            share=1,
            min_size=1,
            max_size=1,
        )
        try:
            pid = await pool.fetchval("SELECT pg_backend_pid()")
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
            await asyncio.wait_for(proxy.server_closed.wait(), 10)
            with pytest.raises(DatabaseUnreachable) as caught:
                await pool.fetchval("SELECT 1")
            assert isinstance(caught.value.__cause__, asyncpg.InternalClientError)
            assert isinstance(caught.value, DATABASE_TROUBLE)
            proxy.close_client.set()
            assert await pool.fetchval("SELECT 2") == 2
            assert await pool.fetchval("SELECT pg_backend_pid()") != pid
        finally:
            await admin.close()
            await pool.close()


async def test_a_statement_the_server_does_not_answer_in_time_is_unreachable(
    database_url: str,
) -> None:
    """The driver's own timeout (``command_timeout``: the server's statement_timeout
    and a grace, for a server that hangs or a network cut) leaves the block as
    DatabaseUnreachable, condition ``no_answer``, not a bare TimeoutError (answered
    INTERNAL); the connection serves the next statement once the server has cancelled
    the first."""
    pool = await create_fair_pool(
        database_url, share=1, min_size=1, max_size=1, command_timeout=0.2
    )
    try:
        with pytest.raises(DatabaseUnreachable) as caught:
            await pool.fetchval("SELECT pg_sleep(5)")
        assert isinstance(caught.value.__cause__, TimeoutError)
        assert condition(caught.value) == "no_answer"
        assert "look whether it did" in refusal(caught.value).message
        assert await pool.fetchval("SELECT 3") == 3
    finally:
        await pool.close()
