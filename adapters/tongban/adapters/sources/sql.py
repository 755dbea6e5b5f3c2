"""SQL sources: PostgreSQL (asyncpg) and SQLite (the standard library, in a thread).

Both read a stream in one of two modes:

- **cursor**: ``WHERE (cursor, key) > ($1, $2) ORDER BY cursor, key LIMIT n``, paged and
  checkpointed by ``tongban.adapters.cursor``, each pass starting ``look_back`` behind
  the checkpoint (``WHERE cursor >= $1``). Text columns are compared and ordered by code
  point (``COLLATE "C"`` in PostgreSQL; SQLite's default). Rows whose cursor is NULL
  cannot be ordered; they are yielded as ``NULL_CURSOR`` rejects at the start of every
  pass (up to 10,000) rather than silently skipped.
- **snapshot_diff**: the whole table, paged by its key column, each page a batch; the
  last batch completes the generation.

Only the columns the mapping needs are selected, so columns added to the table change
nothing. A needed column that disappears mid-pass raises ``SourceSchemaChanged``.

**Connection loss.** Every statement runs under a retry policy (``retry:`` in the
mapping): a lost connection, a server that is restarting or refusing connections, or a
locked SQLite file is retried with exponential backoff on a fresh connection. A read is
simply repeated; the pager's position lives in the adapter, so the pass continues where
it was. After the last attempt the call raises ``SourceUnavailable`` (retriable) and
nothing past the last committed batch is lost.

**Write-back** upserts by the target's key column
(``INSERT ... ON CONFLICT (key) DO UPDATE``, which needs a unique constraint on it) or
deletes by it, all commands of a batch in one transaction with a savepoint per command:
a command the table refuses (a constraint, a value too long) is rejected alone and the
others are applied. Idempotency on the command id is kept by ``sync.apply_commands`` in
the state store, *after* this transaction commits. Killed in between, the command is
applied again on re-delivery; an upsert of the same values by the same key (or a delete
of a missing row) changes nothing, which closes that window.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import asyncpg

from tongban.adapters.cursor import CursorPager, PageRequest
from tongban.adapters.drift import check_drift, schema_drift
from tongban.adapters.errors import (
    SourceReadFailed,
    SourceUnavailable,
    SourceUnsupported,
    StreamNotFound,
    WriteBackTargetInvalid,
)
from tongban.adapters.mapping import (
    AdapterMapping,
    CursorMode,
    PostgresSettings,
    RetrySettings,
    SqliteSettings,
    StreamMapping,
    WriteBackTarget,
)
from tongban.adapters.sdk import (
    Batch,
    Checkpoint,
    Column,
    ColumnFamily,
    CommandRejected,
    CursorCheckpoint,
    CursorValue,
    KeyValue,
    Op,
    RejectReason,
    SnapshotCheckpoint,
    SourceRow,
    StreamInfo,
    UnreadableRow,
    WriteBatch,
    WriteCommand,
    WriteOutcome,
)
from tongban.adapters.sources._write import Unfit, fit, row_values

__all__ = ["PostgresSource", "SqliteSource", "quote_ident"]

_T = TypeVar("_T")
_NULL_CURSOR_LIMIT = 10_000
_FETCH_CHUNK = 500


def quote_ident(name: str) -> str:
    """Return ``name`` as a quoted SQL identifier (``"a""b"`` for ``a"b``)."""
    return '"' + name.replace('"', '""') + '"'


class _Transient(Exception):
    """A failure worth retrying on a fresh connection."""

    def __init__(self, detail: str, metadata: Mapping[str, str]) -> None:
        super().__init__(detail)
        self.detail = detail
        self.metadata = dict(metadata)


class _QueryFailed(Exception):
    """A statement failed for good; ``schema`` if a missing table or column may be why."""

    def __init__(self, detail: str, metadata: Mapping[str, str], *, schema: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.metadata = dict(metadata)
        self.schema = schema


def _cursor_value(value: object, column: str) -> CursorValue:
    if isinstance(value, bool) or not isinstance(value, datetime | date | int | Decimal | str):
        raise SourceUnsupported(
            f"Cursor column {column} holds {type(value).__name__} values; a cursor must be a "
            f"timestamp, date, number or ISO 8601 text.",
            metadata={"column": column},
        )
    return value


def _key_value(value: object, column: str) -> KeyValue:
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal | uuid.UUID):
        raise SourceUnsupported(
            f"Key column {column} holds {type(value).__name__} values; a key must be a "
            f"number, text or UUID, unique and never NULL.",
            metadata={"column": column},
        )
    return value


class _SqlSource:
    """The read and write logic both SQL sources share, over a few primitives."""

    _label: str

    def __init__(self, mapping: AdapterMapping, retry: RetrySettings) -> None:
        self._mapping = mapping
        self._retry = retry
        self._tables: dict[str, StreamInfo] = {}

    # --- primitives ---------------------------------------------------------------------

    async def _query(self, sql: str, params: Sequence[object]) -> list[dict[str, object]]:
        raise NotImplementedError

    async def _table(self, table: str) -> StreamInfo | None:
        raise NotImplementedError

    async def _all_tables(self) -> list[StreamInfo]:
        raise NotImplementedError

    async def _write(self, batch: WriteBatch, tables: Mapping[str, StreamInfo]) -> WriteOutcome:
        raise NotImplementedError

    def _param(self, n: int) -> str:
        raise NotImplementedError

    def _qualified(self, table: str) -> str:
        raise NotImplementedError

    def _quote(self, name: str) -> str:
        return quote_ident(name)

    def _ordered(self, column: Column) -> str:
        return self._quote(column.name)

    def _in(self, column: str, first: int, count: int) -> str:
        placeholders = ", ".join(self._param(first + i) for i in range(count))
        return f"{column} IN ({placeholders})"

    # --- retries ------------------------------------------------------------------------

    async def _retrying(self, what: str, op: Callable[[], Awaitable[_T]]) -> _T:
        delay = self._retry.initial_delay_seconds
        attempts = self._retry.attempts
        for attempt in range(1, attempts + 1):
            try:
                return await op()
            except _Transient as e:
                if attempt == attempts:
                    raise SourceUnavailable(
                        f"The {self._label} could not be reached to {what} after {attempts} "
                        f"attempts ({e.detail}); check that it is running and reachable, "
                        f"then run the adapter again.",
                        metadata={"source": self._label, **e.metadata},
                    ) from e
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry.max_delay_seconds)
        raise AssertionError("unreachable")

    async def _select(
        self, stream: StreamMapping, sql: str, params: Sequence[object]
    ) -> list[dict[str, object]]:
        try:
            return await self._retrying("read", lambda: self._query(sql, params))
        except _QueryFailed as e:
            if e.schema:
                # A missing table or column: say which, or that it is something else.
                info = await self.describe(stream.name)
                check_drift(
                    stream.name,
                    info.name,
                    schema_drift(None, info.columns, stream.source_columns()),
                )
            raise SourceReadFailed(
                f"The {self._label} refused to read stream {stream.name} ({e.detail}); check "
                f"the adapter's database role and the mapping.",
                metadata={"source": self._label, "stream": stream.name, **e.metadata},
            ) from e

    # --- Source -------------------------------------------------------------------------

    async def check(self) -> None:
        """Return if the database answers and every configured table exists."""
        for stream in self._mapping.streams:
            await self.describe(stream.name)
        for target in self._mapping.write_back:
            await self._target_table(target)
        if not self._mapping.streams and not self._mapping.write_back:
            await self._retrying("check", lambda: self._query("SELECT 1", ()))

    async def discover(self) -> list[StreamInfo]:
        """Return every table and view with its columns and primary key."""
        found = await self._all_tables()
        cursors = {
            s.table: s.mode.cursor_column
            for s in self._mapping.streams
            if isinstance(s.mode, CursorMode)
        }
        return [
            StreamInfo(info.name, info.columns, info.key, cursors.get(info.name)) for info in found
        ]

    async def describe(self, stream: str) -> StreamInfo:
        """Return the stream's table as it is now; raises ``StreamNotFound``."""
        config = self._mapping.stream(stream)
        assert config.table is not None
        info = await self._table(config.table)
        if info is None:
            raise StreamNotFound(
                f"Stream {stream} reads table {config.table}, which the {self._label} does "
                f"not have (or the adapter may not see); check the table name and grants.",
                metadata={"stream": stream, "table": config.table},
            )
        self._tables[config.table] = info
        mode = config.mode
        cursor = mode.cursor_column if isinstance(mode, CursorMode) else None
        return StreamInfo(info.name, info.columns, info.key, cursor)

    async def _info(self, stream: StreamMapping) -> StreamInfo:
        assert stream.table is not None
        cached = self._tables.get(stream.table)
        return cached if cached is not None else await self.describe(stream.name)

    async def estimate(self, stream: str) -> int:
        """Return how many rows the stream's table holds now (a progress bar's total)."""
        config = self._mapping.stream(stream)
        assert config.table is not None
        table = self._qualified(config.table)
        rows = await self._select(config, f"SELECT count(*) AS n FROM {table}", [])  # noqa: S608
        return int(str(rows[0]["n"]))

    def read(self, stream: str, checkpoint: Checkpoint | None) -> AsyncIterator[Batch]:
        """Yield the stream's rows after ``checkpoint`` (see the module docstring)."""
        config = self._mapping.stream(stream)
        if isinstance(config.mode, CursorMode):
            cursor = checkpoint if isinstance(checkpoint, CursorCheckpoint) else None
            return self._read_cursor(config, config.mode, cursor)
        snapshot = checkpoint if isinstance(checkpoint, SnapshotCheckpoint) else None
        return self._read_snapshot(config, snapshot)

    async def _columns_of(self, stream: StreamMapping, *names: str) -> list[Column]:
        info = await self._info(stream)
        check_drift(stream.name, info.name, schema_drift(None, info.columns, names))
        columns = []
        for name in names:
            column = info.column(name)
            assert column is not None
            columns.append(column)
        return columns

    def _location(self, stream: StreamMapping, key_column: str, row: Mapping[str, object]) -> str:
        return f"{stream.table} {key_column}={row.get(key_column)}"

    async def _read_cursor(
        self, stream: StreamMapping, mode: CursorMode, checkpoint: CursorCheckpoint | None
    ) -> AsyncIterator[Batch]:
        cursor_col, key_col = await self._columns_of(stream, mode.cursor_column, mode.key_column)
        assert stream.table is not None
        table = self._qualified(stream.table)
        columns = ", ".join(self._quote(c) for c in stream.source_columns())
        c, k = self._ordered(cursor_col), self._ordered(key_col)

        nulls = await self._select(
            stream,
            f"SELECT {columns} FROM {table} WHERE {self._quote(cursor_col.name)} IS NULL "  # noqa: S608 - quoted identifiers
            f"ORDER BY {k} LIMIT {self._param(1)}",
            [_NULL_CURSOR_LIMIT],
        )
        if nulls:
            message = (
                f"The row's cursor column {cursor_col.name} is NULL, so changes to it cannot "
                f"be tracked; set it in the source (and make the column NOT NULL)."
            )
            yield Batch(
                tuple(
                    UnreadableRow(
                        self._location(stream, key_col.name, row),
                        RejectReason.NULL_CURSOR,
                        message,
                        row,
                    )
                    for row in nulls
                ),
                None,
            )

        pager: CursorPager[dict[str, object]] = CursorPager(
            checkpoint,
            position=lambda row: CursorCheckpoint(
                _cursor_value(row[cursor_col.name], cursor_col.name),
                _key_value(row[key_col.name], key_col.name),
            ),
            look_back=mode.look_back,
            page_size=stream.batch_size,
        )
        while True:
            request = pager.request()
            sql, params = self._cursor_page(table, columns, cursor_col, c, k, request)
            rows = await self._select(stream, sql, params)
            result = pager.accept(rows)
            if result.rows:
                yield Batch(
                    tuple(
                        SourceRow(row, self._location(stream, key_col.name, row))
                        for row in result.rows
                    ),
                    result.checkpoint,
                )
            if result.done:
                return

    def _cursor_page(
        self,
        table: str,
        columns: str,
        cursor_col: Column,
        c: str,
        k: str,
        request: PageRequest,
    ) -> tuple[str, list[object]]:
        start = request.start
        params: list[object]
        if start is None:
            where, params = f"{self._quote(cursor_col.name)} IS NOT NULL", []
        elif start.key is None:
            where, params = f"{c} >= {self._param(1)}", [start.cursor]
        else:
            where = f"({c}, {k}) > ({self._param(1)}, {self._param(2)})"
            params = [start.cursor, start.key]
        limit = self._param(len(params) + 1)
        sql = (
            f"SELECT {columns} FROM {table} WHERE {where} "  # noqa: S608 - quoted identifiers
            f"ORDER BY {c}, {k} LIMIT {limit}"
        )
        return sql, [*params, request.limit]

    async def _read_snapshot(
        self, stream: StreamMapping, checkpoint: SnapshotCheckpoint | None
    ) -> AsyncIterator[Batch]:
        key_name = stream.mode.key_column
        assert key_name is not None
        assert stream.table is not None
        (key_col,) = await self._columns_of(stream, key_name)
        table = self._qualified(stream.table)
        columns = ", ".join(self._quote(c) for c in stream.source_columns())
        k = self._ordered(key_col)
        source_id = f"table:{stream.table}"
        if checkpoint is not None and not checkpoint.complete and checkpoint.source_id == source_id:
            generation, after = checkpoint.generation, checkpoint.position
        else:
            generation = checkpoint.generation + 1 if checkpoint is not None else 1
            after = None
        while True:
            if after is None:
                where, params = f"{self._quote(key_name)} IS NOT NULL", []
            else:
                where, params = f"{k} > {self._param(1)}", [after]
            rows = await self._select(
                stream,
                f"SELECT {columns} FROM {table} WHERE {where} "  # noqa: S608 - quoted identifiers
                f"ORDER BY {k} LIMIT {self._param(len(params) + 1)}",
                [*params, stream.batch_size],
            )
            last = len(rows) < stream.batch_size
            if rows:
                after = _key_value(rows[-1][key_name], key_name)
            yield Batch(
                tuple(SourceRow(row, self._location(stream, key_name, row)) for row in rows),
                SnapshotCheckpoint(generation, source_id, after, complete=last),
            )
            if last:
                return

    async def fetch(self, stream: str, source_keys: Sequence[KeyValue]) -> list[SourceRow]:
        """Return the stream's current rows with these key column values."""
        config = self._mapping.stream(stream)
        key_name = config.mode.key_column
        assert key_name is not None
        assert config.table is not None
        table = self._qualified(config.table)
        columns = ", ".join(self._quote(c) for c in config.source_columns())
        found: list[SourceRow] = []
        for start in range(0, len(source_keys), _FETCH_CHUNK):
            chunk = list(source_keys[start : start + _FETCH_CHUNK])
            rows = await self._select(
                config,
                f"SELECT {columns} FROM {table} "  # noqa: S608 - quoted identifiers
                f"WHERE {self._in(self._quote(key_name), 1, len(chunk))}",
                chunk,
            )
            found += [SourceRow(row, self._location(config, key_name, row)) for row in rows]
        return found

    async def _target_table(self, target: WriteBackTarget) -> StreamInfo:
        assert target.table is not None
        info = await self._table(target.table)
        if info is None:
            raise WriteBackTargetInvalid(
                f"Write-back of {target.dataset} goes to table {target.table}, which the "
                f"{self._label} does not have; create it or fix the mapping.",
                metadata={"dataset": target.dataset, "table": target.table},
            )
        missing = [
            name for name in (target.key_column, *target.columns) if info.column(name) is None
        ]
        if missing:
            raise WriteBackTargetInvalid(
                f"Write-back table {target.table} has no column {', '.join(missing)}; fix the "
                f"mapping's write_back columns.",
                metadata={"dataset": target.dataset, "columns": ",".join(missing)},
            )
        return info

    async def apply(self, batch: WriteBatch) -> WriteOutcome:
        """Upsert or delete each command by key in one transaction (see the module
        docstring); raises ``StreamNotFound``, ``WriteBackTargetInvalid`` or
        ``SourceUnavailable``."""
        tables: dict[str, StreamInfo] = {}
        for command in batch.commands:
            if command.dataset not in tables:
                target = self._mapping.write_back_target(command.dataset)
                tables[command.dataset] = await self._target_table(target)
        if not batch.commands:
            return WriteOutcome(())
        return await self._retrying("write back", lambda: self._write(batch, tables))

    def _statement(
        self, target: WriteBackTarget, command: WriteCommand, info: StreamInfo
    ) -> tuple[str, list[object]]:
        """Return the upsert or delete for ``command``; raises ``Unfit``."""
        assert target.table is not None
        table = self._qualified(target.table)
        key = self._quote(target.key_column)
        key_column = info.column(target.key_column)
        assert key_column is not None
        if command.op is Op.DELETE:
            value = self._fit(key_column, command.key, target)
            return (
                f"DELETE FROM {table} WHERE {key} = {self._param(1)} RETURNING *",  # noqa: S608
                [value],
            )
        values = row_values(target, command)
        names = list(values)
        params = []
        for name in names:
            column = info.column(name)
            assert column is not None
            params.append(self._fit(column, values[name], target))
        updates = ", ".join(
            f"{self._quote(n)} = excluded.{self._quote(n)}" for n in names if n != target.key_column
        )
        conflict = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
        placeholders = ", ".join(self._param(i + 1) for i in range(len(names)))
        sql = (
            f"INSERT INTO {table} ({', '.join(self._quote(n) for n in names)}) "  # noqa: S608
            f"VALUES ({placeholders}) ON CONFLICT ({key}) {conflict} RETURNING *"
        )
        return sql, params

    def _fit(self, column: Column, value: object, target: WriteBackTarget) -> object:
        return fit(column, value, timezone=target.timezone, naive_datetimes=True)


def _unfit_rejection(command: WriteCommand, e: Unfit) -> CommandRejected:
    return CommandRejected(command.id, "VALUE_UNFIT", e.message)


# --- PostgreSQL -----------------------------------------------------------------------

_PG_FAMILIES: dict[str, ColumnFamily] = {
    "int2": ColumnFamily.INTEGER,
    "int4": ColumnFamily.INTEGER,
    "int8": ColumnFamily.INTEGER,
    "numeric": ColumnFamily.DECIMAL,
    "float4": ColumnFamily.FLOAT,
    "float8": ColumnFamily.FLOAT,
    "varchar": ColumnFamily.STRING,
    "bpchar": ColumnFamily.STRING,
    "text": ColumnFamily.STRING,
    "citext": ColumnFamily.STRING,
    "name": ColumnFamily.STRING,
    "date": ColumnFamily.DATE,
    "timestamp": ColumnFamily.DATETIME,
    "timestamptz": ColumnFamily.DATETIME,
    "time": ColumnFamily.TIME,
    "timetz": ColumnFamily.TIME,
    "bool": ColumnFamily.BOOLEAN,
    "bytea": ColumnFamily.BYTES,
}
# Lost or refused connections, shutdowns and restarts, too many clients, and
# serialization failures: all worth a fresh attempt.
_PG_TRANSIENT = {"57P01", "57P02", "57P03", "53300", "40001", "40P01"}
_PG_COLUMNS_SQL = """
SELECT c.table_name, c.column_name, c.data_type, c.udt_name, c.is_nullable,
       c.character_maximum_length, c.numeric_precision, c.numeric_scale
FROM information_schema.columns c
WHERE c.table_schema = $1 AND ($2::text IS NULL OR c.table_name = $2)
ORDER BY c.table_name, c.ordinal_position
"""
_PG_KEYS_SQL = """
SELECT tc.table_name, kcu.column_name
FROM information_schema.table_constraints tc
JOIN information_schema.key_column_usage kcu
  ON kcu.constraint_schema = tc.constraint_schema
 AND kcu.constraint_name = tc.constraint_name
 AND kcu.table_name = tc.table_name
WHERE tc.table_schema = $1 AND tc.constraint_type = 'PRIMARY KEY'
  AND ($2::text IS NULL OR tc.table_name = $2)
ORDER BY tc.table_name, kcu.ordinal_position
"""


def _pg_column(row: Mapping[str, Any]) -> Column:
    udt = str(row["udt_name"])
    family = _PG_FAMILIES.get(udt, ColumnFamily.OTHER)
    data_type = str(row["data_type"])
    length = row["character_maximum_length"]
    precision = row["numeric_precision"]
    scale = row["numeric_scale"]
    type_name = data_type
    if length is not None:
        type_name = f"{data_type}({length})"
    elif udt == "numeric" and precision is not None:
        type_name = f"numeric({precision},{scale})"
    return Column(
        name=str(row["column_name"]),
        type_name=type_name,
        family=family,
        nullable=row["is_nullable"] == "YES",
        max_length=length,
        precision=precision if family in (ColumnFamily.INTEGER, ColumnFamily.DECIMAL) else None,
        scale=scale if family is ColumnFamily.DECIMAL else None,
    )


def _broken(conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record]) -> _Transient:
    """Drop a connection asyncpg found in an impossible state (a server that killed the
    backend while it was idle can leave it mid-message) and ask for a retry."""
    conn.terminate()
    return _Transient("connection left in a broken state", {})


def _pg_failure(e: BaseException) -> Exception | None:
    """Return ``_Transient`` or ``_QueryFailed`` for an asyncpg or socket error."""
    if isinstance(e, OSError):
        return _Transient(type(e).__name__, {})
    if isinstance(e, asyncpg.exceptions.InvalidCachedStatementError):
        # A write-back table changed shape since this connection prepared its upsert
        # (whose RETURNING row type is cached); asyncpg has dropped the plan, so the
        # batch succeeds when run again.
        return _Transient("the table changed since the statement was prepared", {})
    if isinstance(e, asyncpg.PostgresError):
        state = str(e.sqlstate)
        metadata = {"sqlstate": state}
        if state.startswith("08") or state in _PG_TRANSIENT:
            return _Transient(f"SQLSTATE {state}", metadata)
        return _QueryFailed(f"SQLSTATE {state}", metadata, schema=state in {"42703", "42P01"})
    return None


class PostgresSource(_SqlSource):
    """A legacy PostgreSQL database. Use as ``async with PostgresSource(mapping) as src``.

    Connections come from a small pool opened on entry and closed on exit; a connection
    the server drops is replaced on the next attempt.
    """

    def __init__(self, mapping: AdapterMapping) -> None:
        settings = mapping.source
        if not isinstance(settings, PostgresSettings):
            raise SourceUnsupported(
                f"The mapping's source is {settings.kind}, not postgres.",
                metadata={"kind": settings.kind},
            )
        super().__init__(mapping, settings.retry)
        self._settings = settings
        self._label = f"PostgreSQL database (schema {settings.db_schema})"
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None

    async def __aenter__(self) -> Self:
        if self._pool is not None:
            raise RuntimeError("PostgresSource is already open")
        # min_size=0: opening never fails because the database is down; the first
        # statement connects, under the retry policy.
        self._pool = await asyncpg.create_pool(
            self._settings.dsn,
            min_size=0,
            max_size=2,
            timeout=self._settings.connect_timeout_seconds,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def __del__(self) -> None:
        if getattr(self, "_pool", None) is not None:
            warnings.warn(
                "PostgresSource was not closed; use it with 'async with'",
                ResourceWarning,
                stacklevel=1,
            )

    def _require_pool(self) -> asyncpg.Pool[asyncpg.Record]:
        if self._pool is None:
            raise RuntimeError("PostgresSource is not open; use it with 'async with'")
        return self._pool

    def _param(self, n: int) -> str:
        return f"${n}"

    def _qualified(self, table: str) -> str:
        return f"{self._quote(self._settings.db_schema)}.{self._quote(table)}"

    def _ordered(self, column: Column) -> str:
        if column.family is ColumnFamily.STRING:
            return f'{self._quote(column.name)} COLLATE "C"'
        return self._quote(column.name)

    async def fetch(self, stream: str, source_keys: Sequence[KeyValue]) -> list[SourceRow]:
        """Return the stream's current rows with these key column values."""
        config = self._mapping.stream(stream)
        key_name = config.mode.key_column
        assert key_name is not None
        assert config.table is not None
        table = self._qualified(config.table)
        columns = ", ".join(self._quote(c) for c in config.source_columns())
        rows = await self._select(
            config,
            f"SELECT {columns} FROM {table} WHERE {self._quote(key_name)} = ANY($1)",  # noqa: S608
            [list(source_keys)],
        )
        return [SourceRow(row, self._location(config, key_name, row)) for row in rows]

    async def _query(self, sql: str, params: Sequence[object]) -> list[dict[str, object]]:
        pool = self._require_pool()
        try:
            async with pool.acquire() as conn:
                try:
                    rows = await conn.fetch(sql, *params)
                except asyncpg.exceptions.InternalClientError as e:
                    raise _broken(conn) from e
        except (OSError, asyncpg.PostgresError) as e:
            failure = _pg_failure(e)
            assert failure is not None
            raise failure from e
        return [dict(row) for row in rows]

    async def _describe(self, table: str | None) -> list[StreamInfo]:
        schema = self._settings.db_schema
        columns = await self._retrying(
            "describe", lambda: self._query(_PG_COLUMNS_SQL, (schema, table))
        )
        keys = await self._retrying("describe", lambda: self._query(_PG_KEYS_SQL, (schema, table)))
        by_table: dict[str, list[Column]] = {}
        for row in columns:
            by_table.setdefault(str(row["table_name"]), []).append(_pg_column(row))
        primary: dict[str, list[str]] = {}
        for row in keys:
            primary.setdefault(str(row["table_name"]), []).append(str(row["column_name"]))
        return [
            StreamInfo(name, tuple(cols), tuple(primary.get(name, ())))
            for name, cols in by_table.items()
        ]

    async def _table(self, table: str) -> StreamInfo | None:
        found = await self._describe(table)
        return found[0] if found else None

    async def _all_tables(self) -> list[StreamInfo]:
        return await self._describe(None)

    def _fit(self, column: Column, value: object, target: WriteBackTarget) -> object:
        naive = column.type_name == "timestamp without time zone"
        return fit(column, value, timezone=target.timezone, naive_datetimes=naive)

    async def _write(self, batch: WriteBatch, tables: Mapping[str, StreamInfo]) -> WriteOutcome:
        pool = self._require_pool()
        applied: list[str] = []
        rejected: list[CommandRejected] = []
        written: dict[str, Mapping[str, object]] = {}
        try:
            async with pool.acquire() as conn:
                try:
                    async with conn.transaction():
                        await self._write_commands(conn, batch, tables, applied, rejected, written)
                except asyncpg.exceptions.InternalClientError as e:
                    raise _broken(conn) from e
        except (OSError, asyncpg.PostgresError) as e:
            failure = _pg_failure(e)
            if isinstance(failure, _Transient):
                raise failure from e
            raise WriteBackTargetInvalid(
                f"The {self._label} refused the write-back batch ({failure}); check the "
                f"write-back tables, their unique constraints and the adapter's grants.",
                metadata={"source": self._label, **getattr(failure, "metadata", {})},
            ) from e
        return WriteOutcome(tuple(applied), tuple(rejected), written)

    async def _write_commands(
        self,
        conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record],
        batch: WriteBatch,
        tables: Mapping[str, StreamInfo],
        applied: list[str],
        rejected: list[CommandRejected],
        written: dict[str, Mapping[str, object]],
    ) -> None:
        for command in batch.commands:
            target = self._mapping.write_back_target(command.dataset)
            try:
                sql, params = self._statement(target, command, tables[command.dataset])
            except Unfit as e:
                rejected.append(_unfit_rejection(command, e))
                continue
            refusal = await self._execute_one(conn, sql, params)
            if isinstance(refusal, tuple):
                rejected.append(CommandRejected(command.id, *refusal))
            else:
                applied.append(command.id)
                if refusal is not None:
                    written[command.id] = refusal

    async def _execute_one(
        self, conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record], sql: str, params: list[object]
    ) -> tuple[str, str] | dict[str, object] | None:
        """Run one command in a savepoint; return (reason, message) if the row is refused,
        else the row as written (``None`` when the statement touched none)."""
        try:
            async with conn.transaction():
                row = await conn.fetchrow(sql, *params)
        except asyncpg.PostgresError as e:
            state = str(e.sqlstate)
            if state.startswith("23"):
                return (
                    "CONSTRAINT_VIOLATED",
                    f"The legacy table refused the row (SQLSTATE {state}, a constraint); "
                    f"fix the data or the constraint, then replay.",
                )
            if state.startswith("22"):
                return (
                    "VALUE_REFUSED",
                    f"The legacy table refused a value (SQLSTATE {state}: too long, out of "
                    f"range or malformed); widen the column or map another field, then replay.",
                )
            raise
        except ValueError:
            # asyncpg's client-side DataError: the value cannot be encoded for the column.
            return (
                "VALUE_UNFIT",
                "A value cannot be sent to its legacy column's type; map another field or "
                "add a format, then replay.",
            )
        return None if row is None else dict(row)


# --- SQLite ---------------------------------------------------------------------------

_SQLITE_TRANSIENT = {
    5,  # SQLITE_BUSY: the legacy application holds a lock
    6,  # SQLITE_LOCKED
    10,  # SQLITE_IOERR: a network share that went away
    14,  # SQLITE_CANTOPEN: the file is missing or its share is not mounted
}
_SQLITE_ERROR = 1
_SIZE = re.compile(r"\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)")


def _sqlite_column(name: str, declared: str, notnull: bool) -> Column:
    upper = declared.upper()
    size = _SIZE.search(upper)
    first = int(size.group(1)) if size else None
    second = int(size.group(2)) if size and size.group(2) else None
    family = ColumnFamily.OTHER
    max_length = precision = scale = None
    if "INT" in upper:
        family = ColumnFamily.INTEGER
    elif any(word in upper for word in ("CHAR", "CLOB", "TEXT")):
        family, max_length = ColumnFamily.STRING, first
    elif upper.startswith("DATETIME") or "TIMESTAMP" in upper:
        family = ColumnFamily.DATETIME
    elif upper.startswith("DATE"):
        family = ColumnFamily.DATE
    elif upper.startswith("TIME"):
        family = ColumnFamily.TIME
    elif any(word in upper for word in ("REAL", "FLOA", "DOUB")):
        family = ColumnFamily.FLOAT
    elif "BOOL" in upper:
        family = ColumnFamily.BOOLEAN
    elif "DEC" in upper or "NUMERIC" in upper:
        family, precision, scale = ColumnFamily.DECIMAL, first, second
    elif "BLOB" in upper:
        family = ColumnFamily.BYTES
    return Column(
        name=name,
        type_name=declared,
        family=family,
        nullable=not notnull,
        max_length=max_length,
        precision=precision,
        scale=scale,
    )


def _sqlite_failure(e: sqlite3.Error, path: Path) -> Exception:
    code = getattr(e, "sqlite_errorcode", None)
    name = str(getattr(e, "sqlite_errorname", type(e).__name__))
    metadata = {"sqlite_error": name, "path": str(path)}
    if code is not None and code & 0xFF in _SQLITE_TRANSIENT:
        return _Transient(name, metadata)
    schema = code is not None and code & 0xFF == _SQLITE_ERROR
    return _QueryFailed(name, metadata, schema=schema)


def _sqlite_param(value: object) -> object:
    """Return ``value`` as the sqlite3 module binds it without deprecated adapters."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    return value


class SqliteSource(_SqlSource):
    """A legacy SQLite database file, opened per statement in a worker thread (read-only
    for reads, read-write for write-back). Use as ``async with SqliteSource(mapping)``."""

    def __init__(self, mapping: AdapterMapping) -> None:
        settings = mapping.source
        if not isinstance(settings, SqliteSettings):
            raise SourceUnsupported(
                f"The mapping's source is {settings.kind}, not sqlite.",
                metadata={"kind": settings.kind},
            )
        super().__init__(mapping, settings.retry)
        self._settings = settings
        self._path = mapping.resolve(settings.path)
        self._label = f"SQLite database {self._path}"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def _param(self, n: int) -> str:
        del n
        return "?"

    def _quote(self, name: str) -> str:
        # Backticks, not double quotes: SQLite reads a double-quoted name that matches
        # no column as a string literal, so a dropped column would read as its own name.
        return "`" + name.replace("`", "``") + "`"

    def _qualified(self, table: str) -> str:
        return self._quote(table)

    def _connect(self, *, write: bool) -> sqlite3.Connection:
        uri = self._path.resolve().as_uri() + ("?mode=rw" if write else "?mode=ro")
        conn = sqlite3.connect(
            uri, uri=True, isolation_level=None, timeout=self._settings.busy_timeout_seconds
        )
        conn.row_factory = sqlite3.Row
        return conn

    def _query_sync(self, sql: str, params: Sequence[object]) -> list[dict[str, object]]:
        try:
            conn = self._connect(write=False)
            try:
                rows = conn.execute(sql, [_sqlite_param(p) for p in params]).fetchall()
            finally:
                conn.close()
        except sqlite3.Error as e:
            raise _sqlite_failure(e, self._path) from e
        return [dict(row) for row in rows]

    async def _query(self, sql: str, params: Sequence[object]) -> list[dict[str, object]]:
        return await asyncio.to_thread(self._query_sync, sql, params)

    async def _table(self, table: str) -> StreamInfo | None:
        rows = await self._retrying(
            "describe",
            lambda: self._query(
                'SELECT name, type, "notnull", pk FROM pragma_table_info(?)', (table,)
            ),
        )
        if not rows:
            return None
        columns = tuple(
            _sqlite_column(str(r["name"]), str(r["type"] or ""), bool(r["notnull"])) for r in rows
        )
        keyed = sorted((int(str(r["pk"])), str(r["name"])) for r in rows if r["pk"])
        return StreamInfo(table, columns, tuple(name for _, name in keyed))

    async def _all_tables(self) -> list[StreamInfo]:
        rows = await self._retrying(
            "discover",
            lambda: self._query(
                "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name",
                (),
            ),
        )
        found = []
        for row in rows:
            info = await self._table(str(row["name"]))
            if info is not None:
                found.append(info)
        return found

    async def _write(self, batch: WriteBatch, tables: Mapping[str, StreamInfo]) -> WriteOutcome:
        return await asyncio.to_thread(self._write_sync, batch, tables)

    def _write_sync(self, batch: WriteBatch, tables: Mapping[str, StreamInfo]) -> WriteOutcome:
        applied: list[str] = []
        rejected: list[CommandRejected] = []
        written: dict[str, Mapping[str, object]] = {}
        try:
            conn = self._connect(write=True)
        except sqlite3.Error as e:
            raise _sqlite_failure(e, self._path) from e
        try:
            conn.execute("BEGIN IMMEDIATE")
            for command in batch.commands:
                target = self._mapping.write_back_target(command.dataset)
                try:
                    sql, params = self._statement(target, command, tables[command.dataset])
                except Unfit as e:
                    rejected.append(_unfit_rejection(command, e))
                    continue
                conn.execute("SAVEPOINT command")
                try:
                    cursor = conn.execute(sql, [_sqlite_param(p) for p in params])
                    rows = cursor.fetchall()
                except (sqlite3.IntegrityError, sqlite3.DataError) as e:
                    conn.execute("ROLLBACK TO command")
                    conn.execute("RELEASE command")
                    name = getattr(e, "sqlite_errorname", type(e).__name__)
                    reason = (
                        "CONSTRAINT_VIOLATED"
                        if isinstance(e, sqlite3.IntegrityError)
                        else "VALUE_REFUSED"
                    )
                    rejected.append(
                        CommandRejected(
                            command.id,
                            reason,
                            f"The legacy table refused the row ({name}); fix the data or "
                            f"the table, then replay.",
                        )
                    )
                    continue
                conn.execute("RELEASE command")
                applied.append(command.id)
                if rows:
                    names = [d[0] for d in cursor.description]
                    written[command.id] = dict(zip(names, rows[0], strict=True))
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            failure = _sqlite_failure(e, self._path)
            if isinstance(failure, _Transient):
                raise failure from e
            raise WriteBackTargetInvalid(
                f"The {self._label} refused the write-back batch ({failure}); check that "
                f"each write-back table has a unique constraint on its key column.",
                metadata=getattr(failure, "metadata", {}),
            ) from e
        finally:
            conn.close()
        return WriteOutcome(tuple(applied), tuple(rejected), written)
