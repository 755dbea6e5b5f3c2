"""The shared record store: upserts and deletions with full version history."""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import asyncpg

from tongban.exchange.catalogue.schema import (
    DatasetSchema,
    FieldType,
    canonical_to_json,
    value_from_json,
)
from tongban.exchange.fairness import yield_fairly
from tongban.exchange.sharing.errors import ConcurrentChange
from tongban.exchange.sharing.model import DatasetEntry
from tongban.exchange.sharing.storage import VERSION_BYTES, quota_checked
from tongban.signing.ids import uuid5_hex

__all__ = [
    "VALUE_SEP",
    "Change",
    "Form",
    "FreshBatch",
    "PublishCounts",
    "RecordStore",
    "StoredRecord",
    "fresh_batch",
    "storage_forms",
    "string_field_names",
]

_RETRIES = 3
_AS_STORED = frozenset({FieldType.STRING, FieldType.INTEGER, FieldType.BOOLEAN})


@dataclass(frozen=True)
class Change:
    """An upsert (``values`` validated against the schema) or a deletion (``values`` None)."""

    key: str
    values: dict[str, object] | None


@dataclass
class PublishCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    # (key, new version) of every change that made a version, for events later.
    versions: list[tuple[str, int]] = field(default_factory=list)


@dataclass(frozen=True)
class StoredRecord:
    key: str
    version: int
    valid_from: datetime
    data: dict[str, Any]  # JSON storage form; see ``values``

    def values(self, entry: DatasetEntry, fields: Sequence[str]) -> dict[str, object]:
        """The asked ``fields`` as Python values (fields absent from an older version: None)."""
        out: dict[str, object] = {}
        for name in fields:
            spec = entry.schema.field(name)
            assert spec is not None  # the policy admitted only schema fields
            stored = self.data.get(name)
            # Strings, integers and booleans are stored as themselves, validated on the way
            # in; only the other types need converting back.
            if stored is None or spec.type in _AS_STORED:
                out[name] = stored
            else:
                out[name] = value_from_json(spec.type, stored)
        return out


Form = tuple[dict[str, object] | None, str | None]  # storage form and its JSON, or None
_YIELD_EVERY = 500  # records encoded between two turns of other calls
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
# What _dumps writes for a str; typed for any value, since a value that is not a str is
# refused (TypeError) and then written by _dumps.
_string_json = cast("Callable[[object], str]", json.encoder.encode_basestring)


def _members(entry: DatasetEntry) -> dict[str, str]:
    """Each field's name as ``_dumps`` writes it before its value (``"name":``)."""
    return {spec.name: _string_json(spec.name) + ":" for spec in entry.schema.fields}


def _json(values: dict[str, object], members: dict[str, str]) -> str:
    """``_dumps(values)``, three times quicker when every value is a string (a storage
    form's decimals, dates and datetimes are strings too): each member's text joined in
    the dict's order, values written by the encoder's own string writer. Any other value
    (None, a number, a boolean) or field takes ``_dumps``."""
    try:
        heads = map(members.__getitem__, values)
        return "{" + ",".join(map(str.__add__, heads, map(_string_json, values.values()))) + "}"
    except (KeyError, TypeError):
        return _dumps(values)


def _converted(entry: DatasetEntry) -> list[str]:
    """The fields whose values are not stored as they are (decimals, dates, datetimes)."""
    return [spec.name for spec in entry.schema.fields if spec.type not in _AS_STORED]


def _form(
    values: dict[str, object] | None, converted: Sequence[str], members: dict[str, str]
) -> Form:
    """The storage form of a validated record and its JSON. ``validate_record`` gives
    every field of the schema, in its order, canonical; strings, integers and booleans
    are stored as they are, so a schema of only those (most legacy tables) needs no
    conversion per record."""
    if values is None:
        return None, None
    if converted:
        values = dict(values)
        for name in converted:
            values[name] = canonical_to_json(values[name])
    return values, _json(values, members)


async def storage_forms(entry: DatasetEntry, changes: Sequence[Change]) -> list[Form]:
    """The storage forms of a batch, in slices that let other calls run. A schema of
    only string fields stores its validated records as they are, and their JSON is left
    out (None): a batch of new keys sends the values themselves (``fresh_batch``), and
    ``publish_in`` writes the JSON of the others."""
    if string_field_names(entry.schema) is not None:
        return [(change.values, None) for change in changes]
    converted = _converted(entry)
    members = _members(entry)
    forms: list[Form] = []
    started = time.perf_counter()
    for index, change in enumerate(changes):
        if index and index % _YIELD_EVERY == 0:
            await yield_fairly(time.perf_counter() - started)
            started = time.perf_counter()
        forms.append(_form(change.values, converted, members))
    return forms


@functools.lru_cache(maxsize=256)
def string_field_names(schema: DatasetSchema) -> tuple[str, ...] | None:
    """The field names of a schema of only string fields (most legacy tables), in its
    order; None for any other schema."""
    if any(spec.type is not FieldType.STRING for spec in schema.fields):
        return None
    return tuple(spec.name for spec in schema.fields)


_SEP = "\x1e"
"""Between the keys, and between the records' texts, of a batch sent as one text each
(``_WRITE_FRESH``, ``_WRITE_JOINED``): no storage JSON holds it (the encoder escapes every control
character), and no valid subject id or string value does (control characters are
refused); a text that holds it anyway is sent as arrays (``_WRITE_VERSIONS``)."""
VALUE_SEP = "\x1f"
"""Between the values of a record of only string fields, sent as they are and made
JSON by PostgreSQL (``jsonb_object``), which costs it less than parsing JSON text."""
_NULL = "\x1d"
"""A null value among them."""
_DELETED = "null"
"""A deletion among a batch's joined storage JSON texts (a record's JSON is an object)."""


@dataclass(frozen=True)
class FreshBatch:
    """The write statement's parameters for a batch whose keys are all new (version 1),
    made before the write, beside the checks of the batch (``fresh_batch``): a bulk load
    then spends no time in its transaction, which the next batch's write waits for, on
    encoding or on event ids."""

    keys: list[str]
    joined_keys: str
    joined_data: str
    joined_ids: str
    names: list[str] | None
    """The field names, when ``joined_data`` holds each record's values (in this order,
    joined by VALUE_SEP) rather than its JSON."""


def fresh_batch(
    entry: DatasetEntry,
    changes: Sequence[Change],
    forms: Sequence[Form],
    texts: Sequence[str | None] = (),
) -> FreshBatch | None:
    """``FreshBatch`` of ``changes`` (validated: every field of the schema, in its order)
    with their ``forms``, or None if one is a deletion (a deletion of an absent key writes
    nothing) or the joined texts would be ambiguous. ``texts`` may give, for a schema of
    only strings, a record's values already joined by VALUE_SEP (None: not given)."""
    keys = [change.key for change in changes]
    names = string_field_names(entry.schema)
    data: list[str] = []
    nulls = 0
    for index, (stored, text) in enumerate(forms):
        if stored is None:
            return None
        if names is None:
            if text is None:
                return None
            data.append(text)
            continue
        joined = texts[index] if index < len(texts) else None
        if joined is not None:
            data.append(joined)
            continue
        try:
            data.append(VALUE_SEP.join(stored.values()))  # type: ignore[arg-type]
        except TypeError:  # a null (optional) field
            values = [_NULL if value is None else value for value in stored.values()]
            nulls += values.count(_NULL)
            try:
                data.append(VALUE_SEP.join(values))  # type: ignore[arg-type]
            except TypeError:
                return None
    joined_keys, joined_data = _SEP.join(keys), _SEP.join(data)
    if not (_unambiguous(joined_keys, len(keys)) and _unambiguous(joined_data, len(data))):
        return None
    if names is not None and (
        joined_data.count(VALUE_SEP) != len(data) * (len(names) - 1)
        or joined_data.count(_NULL) != nulls
    ):
        return None
    ids = ",".join([event_id(entry.code, key, 1) for key in keys])
    return FreshBatch(keys, joined_keys, joined_data, ids, None if names is None else list(names))


def _unambiguous(joined: str, parts: int) -> bool:
    # An empty text would be read as no part at all (string_to_array).
    return joined != "" and joined.count(_SEP) == parts - 1


class RecordStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def publish(
        self,
        entry: DatasetEntry,
        changes: Sequence[Change],
        now: datetime,
        forms: Sequence[Form] | None = None,
        fresh: FreshBatch | None = None,
    ) -> PublishCounts:
        """Apply ``changes`` (distinct keys, already validated) in one transaction.

        The records' storage forms (``forms``, from ``storage_forms``, or made here) are
        made before a connection is taken, in slices that let other departments' calls
        run (``fairness.yield_fairly``): a bulk load's 5,000 records then hold neither the
        loop nor a transaction while they are encoded."""
        if forms is None:
            forms = await storage_forms(entry, changes)
        for _ in range(_RETRIES):
            try:
                return await self._publish_once(entry, changes, now, forms, fresh)
            except asyncpg.UniqueViolationError:
                # Another publisher created one of these keys between our read and write:
                # read again (the keys exist now) and write on top.
                continue
        raise ConcurrentChange(
            f"Other publishers created the same new records of {entry.code} at the same "
            f"moment, {_RETRIES} times over; nothing of this call was written. Retry it.",
        )

    async def _publish_once(
        self,
        entry: DatasetEntry,
        changes: Sequence[Change],
        now: datetime,
        forms: Sequence[Form],
        fresh: FreshBatch | None,
    ) -> PublishCounts:
        async with self._pool.acquire() as conn:
            if fresh is not None and await _write_fresh(conn, entry.code, fresh, now):
                return PublishCounts(
                    inserted=len(fresh.keys), versions=[(key, 1) for key in fresh.keys]
                )
            async with conn.transaction():
                return await self.publish_in(conn, entry, changes, now, forms=forms)

    async def publish_in(
        self,
        conn: Any,
        entry: DatasetEntry,
        changes: Sequence[Change],
        now: datetime,
        *,
        forms: Sequence[Form] | None = None,
        extra_bytes: int = 0,
    ) -> PublishCounts:
        """Apply ``changes`` (distinct keys, already validated) and write their events,
        inside the caller's transaction on ``conn``: for writers whose own rows and the
        change events must commit together (licence issuance). ``extra_bytes``: what
        the caller's own rows take, counted toward the owner's storage quota with the
        versions (StorageQuotaExceeded past it). Raises asyncpg.UniqueViolationError if
        another publisher created one of the keys concurrently (the caller retries its
        transaction)."""
        counts = PublishCounts()
        current = await _lock_current(conn, entry.code, [change.key for change in changes])
        superseded: list[str] = []
        new_rows: list[tuple[object, ...]] = []
        converted, members = _converted(entry), _members(entry)
        if forms is None:
            forms = [_form(change.values, converted, members) for change in changes]
        for change, (stored, data) in zip(changes, forms, strict=True):
            row = current.get(change.key)
            live = row is not None and not row["deleted"]
            version = row["version"] + 1 if row is not None else 1
            if change.values is None:
                if not live:
                    counts.unchanged += 1
                    continue
                new_rows.append((entry.code, change.key, version, None, True, now, None))
                counts.deleted += 1
            else:
                if live and row is not None and json.loads(row["data"]) == stored:
                    counts.unchanged += 1
                    continue
                if data is None and stored is not None:  # left out by storage_forms
                    data = _json(stored, members)
                new_rows.append((entry.code, change.key, version, data, False, now, None))
                if live:
                    counts.updated += 1
                else:
                    counts.inserted += 1
            if row is not None:
                superseded.append(change.key)
            counts.versions.append((change.key, version))
        if superseded:
            await conn.execute(
                "UPDATE record SET valid_to = $3 WHERE dataset = $1"
                " AND key = ANY($2::text[]) AND valid_to IS NULL",
                entry.code,
                superseded,
                now,
            )
        if new_rows:
            await _write_versions(conn, entry.code, new_rows, now, extra_bytes)
        return counts

    async def fetch(
        self, dataset: str, keys: Sequence[str], as_of: datetime | None = None
    ) -> dict[str, StoredRecord]:
        """The live records for ``keys`` now (or at ``as_of``), by key; absent keys are absent."""
        if as_of is None:
            return await self._fetch_current(dataset, keys)
        return await self._fetch_at(dataset, keys, as_of)

    async def _fetch_current(self, dataset: str, keys: Sequence[str]) -> dict[str, StoredRecord]:
        rows = await self._pool.fetch(
            "SELECT key, version, data, valid_from FROM record WHERE dataset = $1"
            " AND key = ANY($2::text[]) AND valid_to IS NULL AND NOT deleted",
            dataset,
            list(keys),
        )
        return _by_key(rows)

    async def _fetch_at(
        self, dataset: str, keys: Sequence[str], as_of: datetime
    ) -> dict[str, StoredRecord]:
        rows = await self._pool.fetch(
            "SELECT * FROM (SELECT DISTINCT ON (key) key, version, data, deleted, valid_from"
            " FROM record WHERE dataset = $1 AND key = ANY($2::text[]) AND valid_from <= $3"
            " ORDER BY key, version DESC) AS at_time WHERE NOT deleted",
            dataset,
            list(keys),
            as_of,
        )
        return _by_key(rows)


async def _lock_current(conn: Any, dataset: str, keys: list[str]) -> dict[str, asyncpg.Record]:
    """The current rows of ``keys``, by key, locked until the commit.

    A row another transaction was replacing when we asked is left out of the answer:
    under READ COMMITTED, once that transaction commits, the row it superseded no longer
    matches ``valid_to IS NULL``, and the version it wrote is newer than the statement's
    snapshot. Taking such a key for a new record would write its version 1 again
    (a unique violation: before, 16 publishes of the same 40 records at once answered a
    third of them INTERNAL). So the keys that came back without a row are asked for again,
    each time in a statement with a newer snapshot (which may wait, and lose rows, the
    same way), for as long as one of them has a current row committed: what is left is
    new (another publisher creating one of them at the same moment still ends in a
    unique violation, which ``RecordStore.publish`` retries)."""
    rows = await conn.fetch(_LOCK_CURRENT, dataset, keys)
    current = {row["key"]: row for row in rows}
    missing = [key for key in keys if key not in current] if len(rows) < len(keys) else []
    for _ in range(_RELOCKS):
        if not missing or not await conn.fetchval(_ANY_CURRENT, dataset, missing):
            break
        current.update(
            (row["key"], row) for row in await conn.fetch(_LOCK_CURRENT, dataset, missing)
        )
        missing = [key for key in missing if key not in current]
    return current


# The current rows of a batch's keys, locked until the commit: the versions to supersede.
# Whether any of the keys has a current row committed (no lock, no wait).
_ANY_CURRENT = (
    "SELECT EXISTS (SELECT 1 FROM record WHERE dataset = $1"
    " AND key = ANY($2::text[]) AND valid_to IS NULL)"
)
_RELOCKS = 64
"""Rounds of ``_lock_current`` asking again: each one follows another publisher's commit
of the same records, and a department has at most 64 calls in progress by default."""
_LOCK_CURRENT = (
    "SELECT key, version, data, deleted FROM record WHERE dataset = $1"
    " AND key = ANY($2::text[]) AND valid_to IS NULL FOR UPDATE"
)
EVENT_NAMESPACE = uuid.UUID("6f1f9a52-3c1e-5b0e-9d55-74f0b4a6c2d1")


def event_id(dataset: str, key: str, version: int) -> str:
    """The event of a record version, the same on every replay: the UUIDv5 of dataset,
    key and version, as 32 hex digits (what asyncpg sends as a uuid)."""
    return uuid5_hex(EVENT_NAMESPACE, f"{dataset}\n{key}\n{version}".encode())


# The new versions and their events in one statement (one round trip); an event names its
# record version and holds no copy of its data (migration 0019). The stream's row
# is advanced by the number of events (an upsert, which locks it until the commit, so
# publishers of one dataset serialise on it and positions stay contiguous), then the
# record rows and the events at the positions it freed, then the NOTIFY that wakes the
# feeds. Inserting the rows needs the old versions closed first (record_current is
# unique): publish_in does that in the statement before. The same upsert adds the bytes
# the versions take to the row's stored_bytes, which the storage quota's trigger checks
# (sharing/storage.py, migration 0035): $8 here, the texts' lengths (and in
# _WRITE_JOINED, $8: the caller's own rows, publish_in's extra_bytes) in the others.
_STREAM_UPSERT = """
        ON CONFLICT (dataset) DO UPDATE SET next_position = s.next_position + $2,
            stored_bytes = s.stored_bytes + EXCLUDED.stored_bytes
        RETURNING s.next_position - $2 AS start"""
_WRITE_VERSIONS = f"""
    WITH stream AS (
        INSERT INTO dataset_stream AS s (dataset, next_position, stored_bytes)
        VALUES ($1, $2, $8 + $2::bigint * {VERSION_BYTES}){_STREAM_UPSERT}
    ), versions AS (
        INSERT INTO record (dataset, key, version, data, deleted, valid_from, valid_to)
        SELECT $1, key, version, data::jsonb, data IS NULL, $3, NULL
        FROM unnest($4::text[], $5::integer[], $6::text[]) AS v(key, version, data)
    ), events AS (
        INSERT INTO event_outbox (dataset, position, event_id, key, version, op, at)
        SELECT $1, stream.start + v.n - 1, v.id, v.key, v.version,
               CASE WHEN v.data IS NULL THEN 'delete' ELSE 'upsert' END, $3
        FROM stream, unnest($7::uuid[], $4::text[], $5::integer[], $6::text[])
             WITH ORDINALITY AS v(id, key, version, data, n)
    )
    SELECT pg_notify('tongban_events', $1)
"""  # noqa: S608 - constants only

# _WRITE_VERSIONS with each array sent as one text (keys and storage JSON joined by
# _SEP, a deletion's JSON as _DELETED; versions and event ids joined by commas): asyncpg
# encodes a text in C but looks at every element of an array in Python (~1 us a record
# for the four arrays, on the node's busy main thread).
_WRITE_JOINED = f"""
    WITH stream AS (
        INSERT INTO dataset_stream AS s (dataset, next_position, stored_bytes)
        VALUES ($1, $2, octet_length($4) + octet_length($6) + $2::bigint * {VERSION_BYTES} + $8)
        {_STREAM_UPSERT}
    ), v AS MATERIALIZED (
        SELECT key, version::integer AS version, data, id::uuid AS id, n
        FROM unnest(string_to_array($4, E'\\x1e'), string_to_array($5, ','),
                    string_to_array($6, E'\\x1e', 'null'), string_to_array($7, ','))
             WITH ORDINALITY AS v(key, version, data, id, n)
    ), versions AS (
        INSERT INTO record (dataset, key, version, data, deleted, valid_from, valid_to)
        SELECT $1, key, version, data::jsonb, data IS NULL, $3, NULL FROM v
    ), events AS (
        INSERT INTO event_outbox (dataset, position, event_id, key, version, op, at)
        SELECT $1, stream.start + v.n - 1, v.id, v.key, v.version,
               CASE WHEN v.data IS NULL THEN 'delete' ELSE 'upsert' END, $3
        FROM stream, v
    )
    SELECT pg_notify('tongban_events', $1)
"""  # noqa: S608 - constants only
# A batch whose keys are all new (``fresh_batch``) in one statement outside any explicit
# transaction, so one round trip in all (no BEGIN, locking read or COMMIT of their own):
# it writes the batch, as _WRITE_JOINED does with every version 1, only if none of its
# keys has a current record in its snapshot, and says whether it did. A key that
# another publisher creates meanwhile meets the unique index (record_current), and the
# statement fails as a whole (RecordStore.publish retries). The stream's row orders the
# positions as in _WRITE_VERSIONS. It notifies the feeds even when it wrote nothing
# (they then read nothing new; the general path that follows notifies again).
_WRITE_FRESH_TEMPLATE = f"""
    WITH known AS MATERIALIZED (
        SELECT EXISTS (
            SELECT 1 FROM record WHERE dataset = $1
            AND key = ANY(string_to_array($4, E'\\x1e')) AND valid_to IS NULL
        ) AS found
    ), v AS MATERIALIZED (
        SELECT key, data, id::uuid AS id, n
        FROM known, unnest(string_to_array($4, E'\\x1e'), string_to_array($5, E'\\x1e'),
                           string_to_array($6, ','))
             WITH ORDINALITY AS v(key, data, id, n)
        WHERE NOT known.found
    ), stream AS (
        INSERT INTO dataset_stream AS s (dataset, next_position, stored_bytes)
        SELECT $1, $2,
               octet_length($4) + octet_length($5) + $2::bigint * ({VERSION_BYTES} + {{json}})
        FROM known WHERE NOT known.found{_STREAM_UPSERT}
    ), versions AS (
        INSERT INTO record (dataset, key, version, data, deleted, valid_from, valid_to)
        SELECT $1, key, 1, {{data}}, false, $3, NULL FROM v
    ), events AS (
        INSERT INTO event_outbox (dataset, position, event_id, key, version, op, at)
        SELECT $1, stream.start + v.n - 1, v.id, v.key, 1, 'upsert', $3
        FROM stream, v
    )
    SELECT NOT found AS written, pg_notify('tongban_events', $1) FROM known
"""  # noqa: S608 - constants only
_WRITE_FRESH = _WRITE_FRESH_TEMPLATE.replace("{data}", "data::jsonb").replace("{json}", "0")
# The same for a schema of only strings: each record's values joined by VALUE_SEP (a null
# as _NULL), made JSON with the field names in $7. Its JSON also holds the names, and
# six characters a field more (quotes, colon, comma) than the values it was sent.
_WRITE_FRESH_STRINGS = _WRITE_FRESH_TEMPLATE.replace(
    "{data}", "jsonb_object($7::text[], string_to_array(data, E'\\x1f', E'\\x1d'))"
).replace("{json}", "octet_length(array_to_string($7::text[], '')) + 6 * cardinality($7::text[])")


async def _write_fresh(conn: Any, dataset: str, fresh: FreshBatch, now: datetime) -> bool:
    """Write ``fresh`` if none of its keys has a record yet (``_WRITE_FRESH``); whether
    it did. Raises asyncpg.UniqueViolationError as ``publish_in`` does."""
    args: list[object] = [dataset, len(fresh.keys), now, fresh.joined_keys, fresh.joined_data]
    args.append(fresh.joined_ids)
    with quota_checked():
        if fresh.names is None:
            row = await conn.fetchrow(_WRITE_FRESH, *args)
        else:
            row = await conn.fetchrow(_WRITE_FRESH_STRINGS, *args, fresh.names)
    return bool(row["written"])


async def _write_versions(
    conn: Any, dataset: str, new_rows: list[tuple[object, ...]], now: datetime, extra: int = 0
) -> None:
    """Insert the new record versions and append one event each, in the caller's
    transaction (the outbox)."""
    keys: list[str] = []
    versions: list[int] = []
    datas: list[str | None] = []
    for _, key, version, data, deleted, valid_from, _ in new_rows:
        assert isinstance(key, str)
        assert isinstance(version, int)
        assert valid_from == now
        keys.append(key)
        versions.append(version)
        datas.append(None if deleted else str(data))
    # In one go, holding the loop as long as one slice of a batch's checks does (5,000 ids
    # take ~6 ms): in slices, each turn handed back let the next batch's checks run a
    # slice first, and the transaction, holding the dataset's stream row that the next
    # batch waits for, took ~60 ms longer.
    ids = [event_id(dataset, k, v) for k, v in zip(keys, versions, strict=True)]
    joined_keys = _SEP.join(keys)
    joined_data = _SEP.join([_DELETED if data is None else data for data in datas])
    with quota_checked():
        if _unambiguous(joined_keys, len(keys)) and _unambiguous(joined_data, len(datas)):
            await conn.execute(
                _WRITE_JOINED, dataset, len(keys), now, joined_keys,
                ",".join(map(str, versions)), joined_data, ",".join(ids), extra,
            )  # fmt: skip
        else:
            size = extra + sum(
                len(k.encode()) + len((d or "").encode()) for k, d in zip(keys, datas, strict=True)
            )
            await conn.execute(
                _WRITE_VERSIONS, dataset, len(keys), now, keys, versions, datas, ids, size
            )


def _by_key(rows: Sequence[asyncpg.Record]) -> dict[str, StoredRecord]:
    return {
        row["key"]: StoredRecord(
            row["key"], row["version"], row["valid_from"], json.loads(row["data"])
        )
        for row in rows
    }
