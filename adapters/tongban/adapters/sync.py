"""The pipeline: source rows → records → published changes → committed state.

``StreamSync.run()`` makes one pass over a stream. For each batch the source yields it

1. maps every row (``transform``): a record, a reject, or a row the filters leave out;
2. compares records with the fingerprints already published and keeps only inserts and
   changes (rows the look-back window re-read, and unchanged snapshot rows, drop out);
3. publishes those changes through the ``Sink``;
4. commits the batch's checkpoint, fingerprints and rejects in one transaction.

The order of 3 and 4 is the crash contract described in ``tongban.adapters.state``: a
failed or interrupted publish never advances the checkpoint, and a batch published but
not committed is published again, identically, on the next run.

Rejected rows never stop a stream: they go to the state's reject store with the reason
and field, and ``replay_rejects()`` tries them again once the source (or the mapping) is
fixed. What does stop a stream is an error only a person can resolve: a needed column
changed (``SourceSchemaChanged``) or a snapshot that would delete too much
(``SnapshotShrank``).

``apply_commands()`` is the write-back path: idempotent on command id, stale versions
skipped, refused commands kept for ``replay_write_rejects()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from tongban.adapters import _tagged_json
from tongban.adapters.diff import ChangeKind, check_delete_ratio, classify
from tongban.adapters.drift import check_drift, schema_drift
from tongban.adapters.mapping import SQL_KINDS, AdapterMapping, CursorMode, SnapshotDiffMode
from tongban.adapters.sdk import (
    Batch,
    Change,
    KeyValue,
    Op,
    RejectReason,
    Sink,
    SnapshotCheckpoint,
    Source,
    SourceRow,
    UnreadableRow,
    WriteBatch,
    WriteCommand,
    WriteOutcome,
    change_id,
)
from tongban.adapters.state import BatchCommit, NewReject, StateStore
from tongban.adapters.transform import Excluded, Record, Rejected, StreamTransform, Validator

__all__ = [
    "DELETED_ECHO",
    "ApplyReport",
    "EchoGuard",
    "StreamSync",
    "SyncReport",
    "apply_commands",
    "replay_write_rejects",
]


@dataclass
class SyncReport:
    """What one pass (or replay) of a stream did."""

    stream: str
    batches: int = 0
    inserts: int = 0
    """Records published for the first time."""
    changed: int = 0
    """Records published again with different values."""
    deletes: int = 0
    unchanged: int = 0
    """Rows read again (look-back, snapshot) that matched what was published."""
    rejected: int = 0
    cleared: int = 0
    """Rejects resolved: their rows now pass, are filtered out, or are gone."""
    excluded: int = 0
    deletes_withheld: int = 0
    """snapshot_diff: deletes not made because some rows of the snapshot were
    unreadable (the missing keys may be among them)."""
    echoes: int = 0
    """Rows that are what the adapter itself wrote back into the table: not published."""
    rows: int = 0
    """Rows read (records, rejects and exclusions)."""

    @property
    def upserts(self) -> int:
        """Records published (inserted or changed)."""
        return self.inserts + self.changed


@dataclass
class _Pending:
    """A batch's effects, gathered before publishing."""

    changes: list[Change] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    rejects: list[NewReject] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)
    keyless_rejects: int = 0
    echoes_read: list[str] = field(default_factory=list)


_MAP_SLICE = 250
_Outcomes = list[tuple[SourceRow | UnreadableRow, Record | Rejected | Excluded]]


@dataclass
class _Mapped:
    """A batch read and mapped; ``classified`` when it was compared with the state ahead
    of time (its pending effects and its share of the report)."""

    batch: Batch
    outcomes: _Outcomes
    classified: tuple[_Pending, SyncReport] | None = None


def _ref(source_key: object, key: str | None, location: str) -> str:
    """Identify a row for the reject store: by source key, else record key, else place."""
    if source_key is not None:
        return "src:" + _tagged_json.scalar_dumps(source_key)
    if key is not None:
        return "key:" + key
    return "at:" + location


def _source_key(value: object) -> KeyValue | None:
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal | uuid.UUID):
        return None
    return value


def _add_counts(report: SyncReport, share: SyncReport) -> None:
    """Add the counts of ``share`` (one batch's) to ``report``."""
    for name, value in vars(share).items():
        if isinstance(value, int):
            setattr(report, name, getattr(report, name) + value)


class StreamSync:
    """Publishes one stream of a source through a sink, keeping its state.

    ``exclusive`` (the runner's write-back lock) is held while each batch is read and
    committed; ``progress`` is called after each batch with the pass's report so far;
    once ``stop`` is set, a pass ends after the batch in hand is committed. With
    ``pipeline`` the next batch is read and mapped while one is published (turn it off
    when the adapter writes back into the stream's own table: a row read ahead, outside
    the lock, could miss the echo of a write made meanwhile).

    Raises ``ValidatorMissing`` if the stream's mapping names a check that
    ``validators`` does not supply, and ``StreamNotFound`` for an unknown stream.
    """

    def __init__(
        self,
        source: Source,
        mapping: AdapterMapping,
        stream: str,
        state: StateStore,
        sink: Sink,
        *,
        validators: Mapping[str, Validator],
        exclusive: asyncio.Lock | None = None,
        progress: Callable[[SyncReport], None] | None = None,
        stop: asyncio.Event | None = None,
        pipeline: bool = True,
    ) -> None:
        self._source = source
        self._stream = mapping.stream(stream)
        self._state = state
        self._sink = sink
        self._transform = StreamTransform(self._stream, validators)
        self._exclusive = exclusive
        self._progress = progress
        self._stop = stop
        self._pipeline = pipeline
        self.name = self._stream.name

    def set_progress(self, progress: Callable[[SyncReport], None] | None) -> None:
        """Call ``progress`` after each batch of the following passes."""
        self._progress = progress

    async def run(self) -> SyncReport:
        """Make one pass: check the source's schema, then read, publish and commit batch
        by batch until the source has nothing more.

        Raises ``SourceSchemaChanged`` (nothing read), ``SnapshotShrank``,
        ``SourceUnavailable`` (batches before the failure stay committed), and whatever
        the sink raises (the batch is not committed).
        """
        return await self._pass(force=False)

    async def replay_rejects(self) -> SyncReport:
        """Try the stream's rejected rows again, as the source holds them now.

        A cursor stream fetches the rejected rows by source key: rows that now pass are
        published and their rejects cleared; rows still bad stay rejected (counted
        again); rows gone from the source are cleared (and deleted if published). A
        snapshot_diff stream reads a full new snapshot, even of an unchanged file, which
        clears every reject that no longer occurs.
        """
        if isinstance(self._stream.mode, SnapshotDiffMode):
            return await self._pass(force=True)
        return await self._replay_cursor()

    # --- passes -----------------------------------------------------------------------

    async def _pass(self, *, force: bool) -> SyncReport:
        report = SyncReport(self.name)
        await self._check_schema()
        checkpoint = self._state.checkpoint(self.name)
        if force and isinstance(checkpoint, SnapshotCheckpoint):
            # A completed checkpoint naming no source: the source starts a new generation.
            checkpoint = SnapshotCheckpoint(checkpoint.generation, "", None, complete=True)
        batches = aiter(self._source.read(self.name, checkpoint))
        ahead: asyncio.Task[_Mapped | None] | None = None
        try:
            while True:
                # Reading a batch and committing it happen under the adapter's write-back
                # lock, so a row the adapter writes back is either read after its echo
                # is recorded or not read in this batch at all.
                async with self._exclusive or contextlib.nullcontext():
                    mapped = await (ahead if ahead is not None else self._read_mapped(batches))
                    ahead = None
                    if mapped is None:
                        break
                    batch = mapped.batch
                    if mapped.classified is None:
                        pending = self._classify(batch, mapped.outcomes, report)
                    else:
                        pending, share = mapped.classified
                        _add_counts(report, share)
                    if self._pipeline and not (self._stop is not None and self._stop.is_set()):
                        # Read, map and (when it cannot depend on this batch) classify the
                        # next batch while this one is published.
                        ahead = asyncio.create_task(self._read_ahead(batches, pending))
                    await self._publish(pending.changes)
                    self._commit(batch, pending, report)
                if self._progress is not None:
                    self._progress(report)
                if self._stop is not None and self._stop.is_set():
                    break  # a graceful stop: the batch in hand is committed
        finally:
            if ahead is not None:
                ahead.cancel()
                await asyncio.wait([ahead])
                if not ahead.cancelled():
                    ahead.exception()  # retrieved: the failure that matters is raised
            closing = getattr(batches, "aclose", None)
            if closing is not None:
                await closing()
        return report

    async def _read_mapped(self, batches: AsyncIterator[Batch]) -> _Mapped | None:
        """The source's next batch with each row mapped, or ``None`` after the last."""
        try:
            batch = await anext(batches)
        except StopAsyncIteration:
            return None
        mapped: _Outcomes = []
        for start in range(0, len(batch.rows), _MAP_SLICE):
            if start:
                # Let the event loop move the batch being published meanwhile (gRPC's
                # socket I/O runs on it): mapping a whole batch at once would hold the
                # request back until it is done.
                await asyncio.sleep(0)
            mapped += [(row, self._map(row)) for row in batch.rows[start : start + _MAP_SLICE]]
        return _Mapped(batch, mapped)

    async def _read_ahead(
        self, batches: AsyncIterator[Batch], previous: _Pending
    ) -> _Mapped | None:
        """``_read_mapped``, and the batch classified at once when the outcome cannot
        depend on whether ``previous`` (being published meanwhile) is committed yet.

        Classifying reads the state for the batch's own keys only (stored fingerprints,
        echoes, keys the generation has seen), and committing ``previous`` writes the
        state only for the keys ``previous`` touched. When the two sets are disjoint the
        reads give the same answers before and after that commit, so the batch is
        classified exactly as it would be after it. Otherwise, and for the batch that
        completes a snapshot (which reads the whole generation), it is classified after
        the commit, as before. Classification is synchronous: it never sees a commit
        half done."""
        mapped = await self._read_mapped(batches)
        if mapped is None:
            return None
        checkpoint = mapped.batch.checkpoint
        if isinstance(checkpoint, SnapshotCheckpoint) and checkpoint.complete:
            return mapped
        touched = (previous.fingerprints.keys() | previous.seen | set(previous.deleted)).union(
            previous.echoes_read
        )
        if any(o.key in touched for _, o in mapped.outcomes if o.key is not None):
            return mapped
        share = SyncReport(self.name)
        mapped.classified = (self._classify(mapped.batch, mapped.outcomes, share), share)
        return mapped

    async def _check_schema(self) -> None:
        info = await self._source.describe(self.name)
        if info is None:
            return
        mode = self._stream.mode
        ordering = [mode.cursor_column, mode.key_column] if isinstance(mode, CursorMode) else []
        previous = self._state.source_schema(self.name)
        drifts = schema_drift(previous, info.columns, self._stream.source_columns(), ordering)
        check_drift(self.name, info.name, drifts)
        if previous is None or tuple(previous) != tuple(info.columns):
            self._state.save_source_schema(self.name, info.columns)

    def _classify(self, batch: Batch, outcomes: _Outcomes, report: SyncReport) -> _Pending:
        """Compare a mapped batch with the state: what to publish, reject and commit."""
        checkpoint = batch.checkpoint
        snapshot = checkpoint if isinstance(checkpoint, SnapshotCheckpoint) else None
        pending = _Pending()
        report.rows += len(outcomes)
        keys = {o.key for _, o in outcomes if o.key is not None}
        stored = self._state.fingerprints(self.name, keys)
        echoes = self._state.echoes(self.name, keys) if keys else {}
        already_seen = (
            self._state.seen_in(self.name, keys, snapshot.generation) if snapshot else set()
        )
        for row, outcome in outcomes:
            if (
                isinstance(outcome, Record)
                and echoes.get(outcome.key) == outcome.fingerprint
                and not (snapshot is not None and outcome.key in pending.seen)
            ):
                self._echo(outcome, snapshot, pending, report)
                continue
            self._apply_outcome(row, outcome, stored, already_seen, snapshot, pending, report)
        pending.echoes_read += [k for k in echoes if k not in pending.echoes_read]
        if snapshot is not None and snapshot.complete:
            self._complete_snapshot(snapshot, pending, report)
        return pending

    def _commit(self, batch: Batch, pending: _Pending, report: SyncReport) -> None:
        checkpoint = batch.checkpoint
        snapshot = checkpoint if isinstance(checkpoint, SnapshotCheckpoint) else None
        self._state.commit(
            BatchCommit(
                stream=self.name,
                checkpoint=checkpoint,
                fingerprints=pending.fingerprints,
                deleted=pending.deleted,
                seen_generation=snapshot.generation if snapshot else None,
                seen_keys=pending.seen,
                rejects=pending.rejects,
                cleared_rejects=pending.cleared,
                clear_rejects_unseen_in=(
                    snapshot.generation if snapshot is not None and snapshot.complete else None
                ),
                cleared_echoes=pending.echoes_read,
            )
        )
        report.batches += 1

    def _echo(
        self,
        record: Record,
        snapshot: SnapshotCheckpoint | None,
        pending: _Pending,
        report: SyncReport,
    ) -> None:
        """The row is what the adapter wrote back into the table: take it as the record's
        state without publishing it (it came from the exchange; publishing it again as
        this system's own change would echo it back)."""
        report.echoes += 1
        pending.fingerprints[record.key] = record.fingerprint
        if snapshot is not None:
            pending.seen.add(record.key)

    def _map(self, row: SourceRow | UnreadableRow) -> Record | Rejected | Excluded:
        if isinstance(row, UnreadableRow):
            key = self._transform.key_of(row.values) if row.values else None
            return Rejected(row.reason, None, row.message, key)
        return self._transform.apply(row.values)

    def _row_source_key(self, row: SourceRow | UnreadableRow) -> KeyValue | None:
        column = self._stream.source_key_column
        return None if column is None else _source_key(row.values.get(column))

    def _apply_outcome(
        self,
        row: SourceRow | UnreadableRow,
        outcome: Record | Rejected | Excluded,
        stored: Mapping[str, str],
        already_seen: set[str],
        snapshot: SnapshotCheckpoint | None,
        pending: _Pending,
        report: SyncReport,
    ) -> None:
        source_key = self._row_source_key(row)
        if isinstance(outcome, Rejected):
            self._reject(row, outcome, source_key, pending, report)
            if outcome.key is not None and outcome.key in stored:
                pending.seen.add(outcome.key)  # keep the published record: the row exists
            return
        ref = _ref(source_key, outcome.key, row.location)
        if isinstance(outcome, Excluded):
            report.excluded += 1
            pending.cleared.append(ref)
            if snapshot is None and outcome.key is not None:
                self._delete(outcome.key, stored, pending, report)
            return
        key = outcome.key
        if snapshot is not None and (key in already_seen or key in pending.seen):
            duplicate = Rejected(
                RejectReason.DUPLICATE_KEY,
                self._stream.key,
                "another row of this snapshot, read earlier, has the same key; the earlier "
                "one is kept. Remove the duplicate in the source.",
                key,
            )
            self._reject(row, duplicate, source_key, pending, report, ref=f"dup:{row.location}")
            return
        pending.cleared.append(ref)
        if snapshot is not None:
            pending.seen.add(key)
        previous = pending.fingerprints.get(key, stored.get(key))
        kind = classify(outcome.fingerprint, previous)
        if kind is None:
            report.unchanged += 1
            return
        if kind is ChangeKind.INSERT:
            report.inserts += 1
        else:
            report.changed += 1
        pending.fingerprints[key] = outcome.fingerprint
        pending.changes.append(
            Change(
                id=change_id(self._stream.dataset, key, previous, outcome.fingerprint),
                op=Op.UPSERT,
                key=key,
                values=outcome.values,
                fingerprint=outcome.fingerprint,
            )
        )

    def _reject(
        self,
        row: SourceRow | UnreadableRow,
        outcome: Rejected,
        source_key: KeyValue | None,
        pending: _Pending,
        report: SyncReport,
        *,
        ref: str | None = None,
    ) -> None:
        if outcome.key is None:
            pending.keyless_rejects += 1  # it may be the record a snapshot seems to miss
        pending.rejects.append(
            NewReject(
                ref=ref or _ref(source_key, outcome.key, row.location),
                location=row.location,
                row=row.values,
                reason=outcome.reason_code,
                field=outcome.field,
                message=outcome.message,
                key=outcome.key,
                source_key=source_key,
            )
        )
        report.rejected += 1

    def _delete(
        self, key: str, stored: Mapping[str, str], pending: _Pending, report: SyncReport
    ) -> None:
        published = pending.fingerprints.pop(key, None) or stored.get(key)
        if published is None:
            return
        pending.deleted.append(key)
        pending.changes.append(
            Change(
                id=change_id(self._stream.dataset, key, published, None),
                op=Op.DELETE,
                key=key,
                values={},
                fingerprint=published,
            )
        )
        report.deletes += 1

    def _complete_snapshot(
        self, snapshot: SnapshotCheckpoint, pending: _Pending, report: SyncReport
    ) -> None:
        mode = self._stream.mode
        assert isinstance(mode, SnapshotDiffMode)
        unseen = self._state.unseen(self.name, snapshot.generation)
        for key in pending.seen:
            unseen.pop(key, None)
        for key in pending.fingerprints:
            unseen.pop(key, None)
        # Rows the adapter deleted by write-back: forget them without publishing a delete.
        gone = self._state.echoes(self.name, unseen)
        for key, mark in gone.items():
            if mark == DELETED_ECHO:
                unseen.pop(key)
                pending.deleted.append(key)
                pending.echoes_read.append(key)
                report.echoes += 1
        if not unseen:
            return
        keyless = pending.keyless_rejects + self._state.keyless_rejects(
            self.name, snapshot.generation
        )
        if keyless:
            report.deletes_withheld += len(unseen)
            return
        check_delete_ratio(
            self.name, len(unseen), self._state.published_count(self.name), mode.max_delete_ratio
        )
        for key in sorted(unseen):
            self._delete(key, unseen, pending, report)

    async def _publish(self, changes: Sequence[Change]) -> None:
        size = self._stream.batch_size
        for start in range(0, len(changes), size):
            await self._sink.publish(self._stream.dataset, changes[start : start + size])

    # --- replay of a cursor stream ----------------------------------------------------

    async def _replay_cursor(self) -> SyncReport:
        report = SyncReport(self.name)
        mode = self._stream.mode
        assert isinstance(mode, CursorMode)
        await self._check_schema()
        rejects = []
        offset = 0
        while page := self._state.list_rejects(self.name, limit=1000, offset=offset):
            rejects += [r for r in page if r.source_key is not None]
            offset += len(page)
        size = self._stream.batch_size
        for start in range(0, len(rejects), size):
            chunk = rejects[start : start + size]
            source_keys = [r.source_key for r in chunk if r.source_key is not None]
            rows = await self._source.fetch(self.name, source_keys)
            by_key = {_tagged_json.dumps(row.values.get(mode.key_column)): row for row in rows}
            pending = _Pending()
            gone: list[str] = []
            outcomes: _Outcomes = []
            for entry in chunk:
                found = by_key.get(_tagged_json.dumps(entry.source_key))
                if found is None:
                    pending.cleared.append(entry.ref)
                    report.cleared += 1
                    if entry.key is not None:
                        gone.append(entry.key)
                    continue
                if found.values.get(mode.cursor_column) is None:
                    unreadable = UnreadableRow(
                        found.location,
                        RejectReason.NULL_CURSOR,
                        entry.message,
                        found.values,
                    )
                    outcomes.append((unreadable, self._map(unreadable)))
                else:
                    outcomes.append((found, self._map(found)))
            keys = {o.key for _, o in outcomes if o.key is not None} | set(gone)
            stored = self._state.fingerprints(self.name, keys)
            for key in gone:
                self._delete(key, stored, pending, report)
            for row, outcome in outcomes:
                before = len(pending.rejects)
                self._apply_outcome(row, outcome, stored, set(), None, pending, report)
                if len(pending.rejects) == before:
                    report.cleared += 1
            await self._publish(pending.changes)
            self._state.commit(
                BatchCommit(
                    stream=self.name,
                    checkpoint=None,
                    fingerprints=pending.fingerprints,
                    deleted=pending.deleted,
                    rejects=pending.rejects,
                    cleared_rejects=pending.cleared,
                )
            )
            report.batches += 1
        return report


# --- write-back -----------------------------------------------------------------------


@dataclass
class ApplyReport:
    """What became of a list of write-back commands."""

    applied: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    """Already handled earlier (re-delivered): skipped."""
    stale: list[str] = field(default_factory=list)
    """Older than a version already applied to the same key: skipped."""
    rejected: list[str] = field(default_factory=list)
    """Refused by the legacy system; kept for ``replay_write_rejects``."""


async def apply_commands(
    source: Source,
    state: StateStore,
    commands: Sequence[WriteCommand],
    *,
    echo: EchoGuard | None = None,
) -> ApplyReport:
    """Apply ``commands`` to the legacy system, each at most once.

    Commands whose id the state already holds are skipped, as are commands older than a
    version already applied to their key; the rest go to ``source.apply`` as one batch,
    and every outcome is recorded in one transaction afterwards. Killed between the two,
    the commands are applied again on re-delivery: an upsert by key (or a delete) of the
    same values leaves the legacy rows unchanged.

    Raises what ``source.apply`` raises (``SourceUnavailable``: retry later, nothing is
    recorded).
    """
    report = ApplyReport()
    unique: dict[str, WriteCommand] = {}
    for command in commands:
        unique.setdefault(command.id, command)
    handled = state.applied(unique)
    report.duplicates = [c for c in unique if c in handled]
    fresh = [c for c in unique.values() if c.id not in handled]
    return await _apply(source, state, fresh, report, echo)


async def replay_write_rejects(
    source: Source, state: StateStore, dataset: str | None = None, *, echo: EchoGuard | None = None
) -> ApplyReport:
    """Apply the refused write-back commands again (after the legacy system was fixed).

    Commands that now apply leave the reject list; the others stay, counted again.
    """
    rejects = []
    offset = 0
    while page := state.list_write_rejects(dataset, limit=1000, offset=offset):
        rejects += page
        offset += len(page)
    return await _apply(source, state, [r.command for r in rejects], ApplyReport(), echo)


async def _apply(
    source: Source,
    state: StateStore,
    commands: Sequence[WriteCommand],
    report: ApplyReport,
    echo: EchoGuard | None,
) -> ApplyReport:
    latest: dict[tuple[str, str], int] = {}
    for dataset in {c.dataset for c in commands}:
        versions = state.key_versions(dataset, [c.key for c in commands if c.dataset == dataset])
        latest.update({(dataset, key): version for key, version in versions.items()})
    to_apply: list[WriteCommand] = []
    stale: list[WriteCommand] = []
    for command in commands:
        if command.version is not None:
            seen = latest.get((command.dataset, command.key))
            if seen is not None and seen >= command.version:
                stale.append(command)
                continue
            latest[(command.dataset, command.key)] = command.version
        to_apply.append(command)
    applied: list[WriteCommand] = []
    refused: list[tuple[WriteCommand, str, str]] = []
    echoes: list[tuple[str, str, str]] = []
    if to_apply:
        sequence = state.next_sequence("write_back")
        outcome = await source.apply(WriteBatch(sequence, tuple(to_apply)))
        by_id = {c.id: c for c in to_apply}
        applied = [by_id[i] for i in outcome.applied]
        refused = [(by_id[r.command_id], r.reason, r.message) for r in outcome.rejected]
        if echo is not None:
            echoes = echo.echoes(applied, outcome)
    state.record_commands(applied=applied, stale=stale, rejected=refused, echoes=echoes)
    report.applied += [c.id for c in applied]
    report.stale += [c.id for c in stale]
    report.rejected += [c.id for c, _, _ in refused]
    return report


DELETED_ECHO = "-"
"""The echo mark of a row the adapter deleted by write-back."""


class EchoGuard:
    """Recognises the adapter's own writes when a stream reads the table it writes back to.

    A write-back target's table may also be a stream's table (a register both sides
    keep). The row a write-back leaves there would otherwise be read as a change of this
    system and published as its own — the record entering the exchange a second time, and
    between two adapters doing the same, a loop. For each applied command the source
    reports the row as written (``WriteOutcome.written``); the guard maps it with every
    stream reading that table and returns ``(stream, key, fingerprint)``: the state store
    keeps it with the command ids, and ``StreamSync`` takes a row with exactly that
    fingerprint as the record's state without publishing it. A later change to the row
    by the legacy system has another fingerprint and is published as usual.
    """

    def __init__(self, mapping: AdapterMapping, validators: Mapping[str, Validator]) -> None:
        self._mapping = mapping
        self._streams: dict[str, list[StreamTransform]] = {}
        if mapping.source.kind not in SQL_KINDS:
            return
        for stream in mapping.streams:
            if stream.table is not None and any(
                t.table == stream.table for t in mapping.write_back
            ):
                transform = StreamTransform(stream, validators)
                self._streams.setdefault(stream.table, []).append(transform)

    @property
    def active(self) -> bool:
        """Whether any stream reads a table that is written back to."""
        return bool(self._streams)

    def reads(self, stream: str) -> bool:
        """Whether ``stream`` reads a table the adapter writes back to."""
        return any(t.stream.name == stream for ts in self._streams.values() for t in ts)

    def echoes(
        self, applied: Sequence[WriteCommand], outcome: WriteOutcome
    ) -> list[tuple[str, str, str]]:
        """Return ``(stream, record key, fingerprint)`` for the rows ``applied`` left in
        tables that streams read (``DELETED_ECHO`` for rows they deleted)."""
        found: list[tuple[str, str, str]] = []
        for command in applied:
            row = outcome.written.get(command.id)
            table = self._mapping.write_back_target(command.dataset).table
            if row is None or table is None:
                continue
            for transform in self._streams.get(table, ()):
                result = transform.apply(row)
                if not isinstance(result, Record):
                    continue
                mark = DELETED_ECHO if command.op is Op.DELETE else result.fingerprint
                found.append((transform.stream.name, result.key, mark))
        return found
