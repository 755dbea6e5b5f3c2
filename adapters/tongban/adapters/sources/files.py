"""A drop folder: CSV or Excel exports a legacy job leaves in a folder, and write-back
files for a job that imports them.

**Which file.** Each stream names a glob pattern (``qydj_*.csv``). The newest *complete*
file matching it is read: files still being written are skipped, recognised by a
``.tmp``, ``.part``, ``.partial``, ``.crdownload`` or ``.filepart`` suffix, a leading
``.`` or ``~$`` (Excel's lock files), or a modification time less than
``settle_seconds`` ago. Each export is a full snapshot, so only the newest counts;
streams over a drop folder use ``snapshot_diff``. A file is identified by its name and
the SHA-256 of its content: the same file is not read twice, and an identical export
under a new name produces no changes.

**CSV.** ``encoding: auto`` takes a UTF-8 BOM as UTF-8; otherwise it decodes every line
strictly as UTF-8 and as GB18030 (a superset of GBK and GB2312) and picks the encoding
under which the fewest lines fail (UTF-8 on a tie). A line that does not decode becomes
an ``UNDECODABLE`` reject with its line number; a record with the wrong number of fields
or broken quoting a ``BROKEN_LINE`` reject. The rows around them keep flowing. A broken
line's fields are not trusted (they may be shifted), so its key is unknown and the
snapshot withholds its deletes rather than delete a record that may only be hidden in it.

**Excel (.xlsx)**, read with openpyxl in read-only mode (cached formula values). Merged
cells get one rule, chosen to match what a person reading the sheet sees:

- a range merged *down one column* (a district name spanning the rows of its
  enterprises) gives its value to every row it covers;
- a range merged *across columns* that a mapping reads (a ``合计`` total line, a note
  written across the table) makes every row it covers a ``MERGED_CELLS`` reject: one
  value for several fields is a layout artefact, not a record.

**Write-back** writes one CSV file per dataset per batch into the outbound folder,
named ``<sequence:012d>_<dataset>_<digest>.csv`` so the files sort in the order they were
written; ``digest`` hashes the batch's command ids. The file is written under a
``.<name>.tmp`` name, flushed to disk and renamed, so an importer never sees half a
file. If a crash came between the rename and recording the commands as applied, the
re-delivered batch finds its file already there (same digest) and is not written again.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import os
import warnings
import zipfile
from collections.abc import AsyncIterator, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Self
from xml.etree import ElementTree

import openpyxl
from openpyxl.utils.cell import range_boundaries

from tongban.adapters.drift import Drift, check_drift
from tongban.adapters.errors import (
    SourceReadFailed,
    SourceUnavailable,
    SourceUnsupported,
    WriteBackTargetInvalid,
)
from tongban.adapters.mapping import (
    AdapterMapping,
    CsvSettings,
    StreamMapping,
    WriteBackTarget,
    XlsxSettings,
)
from tongban.adapters.sdk import (
    Batch,
    Checkpoint,
    Column,
    ColumnFamily,
    CommandRejected,
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
from tongban.adapters.sources._write import fit, row_values
from tongban.signing.clock import Clock, SystemClock

__all__ = ["DropFolderSource", "detect_encoding"]

_Records = Generator[list[str] | SourceRow | UnreadableRow, None, None]
_PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart")
_TEXT = Column("value", "text", ColumnFamily.STRING)


def _incomplete(name: str) -> bool:
    return name.startswith((".", "~$")) or name.lower().endswith(_PARTIAL_SUFFIXES)


class _EncodingVote:
    """Counts, line by line, which candidate encoding fails less."""

    def __init__(self) -> None:
        self._bom: bool | None = None
        self._failures = {"utf-8": 0, "gb18030": 0}

    def add(self, line: bytes) -> None:
        if self._bom is None:
            self._bom = line.startswith(b"\xef\xbb\xbf")
        if self._bom:
            return
        for encoding in self._failures:
            try:
                line.decode(encoding)
            except UnicodeDecodeError:
                self._failures[encoding] += 1

    def result(self) -> str:
        if self._bom:
            return "utf-8-sig"
        utf8, gb18030 = self._failures["utf-8"], self._failures["gb18030"]
        return "utf-8" if utf8 <= gb18030 else "gb18030"


def detect_encoding(lines: Iterable[bytes]) -> str:
    """Return the encoding most of ``lines`` decode in: ``utf-8-sig`` for a UTF-8 BOM,
    else ``utf-8`` or ``gb18030``, whichever fails on fewer lines (UTF-8 on a tie)."""
    vote = _EncodingVote()
    for line in lines:
        vote.add(line)
    return vote.result()


@dataclass(frozen=True)
class _Snapshot:
    path: Path
    source_id: str


class DropFolderSource:
    """A folder of CSV or .xlsx exports (see the module docstring).

    ``clock`` decides which files have settled. Use as ``async with``.
    """

    def __init__(self, mapping: AdapterMapping, *, clock: Clock | None = None) -> None:
        settings = mapping.source
        if not isinstance(settings, CsvSettings | XlsxSettings):
            raise SourceUnsupported(
                f"The mapping's source is {settings.kind}, not a drop folder (csv or xlsx).",
                metadata={"kind": settings.kind},
            )
        self._mapping = mapping
        self._settings = settings
        self._folder = mapping.resolve(settings.folder)
        self._outbound = (
            mapping.resolve(settings.outbound.folder) if settings.outbound is not None else None
        )
        self._clock = clock or SystemClock()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    # --- finding files ----------------------------------------------------------------

    def _newest(self, stream: StreamMapping) -> Path | None:
        assert stream.file is not None
        if not self._folder.is_dir():
            raise SourceUnavailable(
                f"The drop folder {self._folder} does not exist or is not mounted; check the "
                f"share, then run the adapter again.",
                metadata={"folder": str(self._folder)},
            )
        settled_before = self._clock.now().timestamp() - self._settings.settle_seconds
        candidates: list[tuple[float, str, Path]] = []
        for path in self._folder.glob(stream.file):
            if _incomplete(path.name) or not path.is_file():
                continue
            mtime = path.stat().st_mtime
            if mtime <= settled_before:
                candidates.append((mtime, path.name, path))
        return max(candidates)[2] if candidates else None

    # --- Source -----------------------------------------------------------------------

    async def check(self) -> None:
        """Return if the drop folder (and the outbound folder, if any) exist."""
        if not self._folder.is_dir():
            raise SourceUnavailable(
                f"The drop folder {self._folder} does not exist or is not mounted.",
                metadata={"folder": str(self._folder)},
            )
        if self._mapping.write_back and (self._outbound is None or not self._outbound.is_dir()):
            raise WriteBackTargetInvalid(
                f"The outbound folder {self._outbound} does not exist; create it.",
                metadata={"folder": str(self._outbound)},
            )

    async def discover(self) -> list[StreamInfo]:
        """Return the newest file of each configured stream with its header."""
        found = []
        for stream in self._mapping.streams:
            info = await self.describe(stream.name)
            if info is not None:
                found.append(info)
        return found

    async def describe(self, stream: str) -> StreamInfo | None:
        """Return the newest complete file's columns, or ``None`` if there is none yet."""
        config = self._mapping.stream(stream)
        path = self._newest(config)
        if path is None:
            return None
        header = await asyncio.to_thread(self._header, config, path)
        columns = tuple(Column(name, "text", ColumnFamily.STRING) for name in header)
        return StreamInfo(path.name, columns)

    def _header(self, stream: StreamMapping, path: Path) -> list[str]:
        records = self._records(stream, path, encoding=None)
        try:
            header = next(records, None)
        finally:
            records.close()
        return header if isinstance(header, list) else []

    def read(self, stream: str, checkpoint: Checkpoint | None) -> AsyncIterator[Batch]:
        """Yield the newest complete file's rows as snapshot_diff batches."""
        config = self._mapping.stream(stream)
        snapshot = checkpoint if isinstance(checkpoint, SnapshotCheckpoint) else None
        return self._read(config, snapshot)

    async def _read(
        self, stream: StreamMapping, checkpoint: SnapshotCheckpoint | None
    ) -> AsyncIterator[Batch]:
        path = self._newest(stream)
        if path is None:
            return
        snapshot, encoding = await asyncio.to_thread(self._identify, path)
        if checkpoint is not None and checkpoint.source_id == snapshot.source_id:
            if checkpoint.complete:
                return  # this export was read whole already
            generation = checkpoint.generation
            position = int(checkpoint.position or 0)
        else:
            generation = checkpoint.generation + 1 if checkpoint is not None else 1
            position = 0
        records = self._records(stream, path, encoding=encoding)
        try:
            header = await asyncio.to_thread(next, records, None)
            if not isinstance(header, list):  # an empty file: an empty snapshot
                yield Batch((), SnapshotCheckpoint(generation, snapshot.source_id, 0, True))
                return
            skip = position  # rows a crashed run already committed
            while True:
                rows = await asyncio.to_thread(_take, records, stream.batch_size, skip)
                skip = 0
                position += len(rows)
                last = len(rows) < stream.batch_size
                yield Batch(
                    tuple(rows),
                    SnapshotCheckpoint(generation, snapshot.source_id, position, complete=last),
                )
                if last:
                    return
        finally:
            records.close()

    def _identify(self, path: Path) -> tuple[_Snapshot, str | None]:
        """Hash the file and, for an ``auto`` CSV, choose its encoding (one read)."""
        digest = hashlib.sha256()
        vote = _EncodingVote()
        detect = isinstance(self._settings, CsvSettings) and self._settings.encoding == "auto"
        with path.open("rb") as f:
            for line in f:
                digest.update(line)
                if detect:
                    vote.add(line)
        encoding = vote.result() if detect else None
        return _Snapshot(path, f"{path.name}:{digest.hexdigest()}"), encoding

    def _records(self, stream: StreamMapping, path: Path, *, encoding: str | None) -> _Records:
        """Yield the header (a list of names), then each row."""
        if isinstance(self._settings, CsvSettings):
            return _csv_records(stream, path, self._settings, encoding)
        return _xlsx_records(stream, path)

    async def fetch(self, stream: str, source_keys: Sequence[KeyValue]) -> list[SourceRow]:
        """Not offered: drop-folder streams replay by reading a full snapshot again."""
        raise SourceUnsupported(
            "A drop folder cannot fetch rows by key; replay a snapshot_diff stream instead.",
            metadata={"stream": stream},
        )

    # --- write-back -------------------------------------------------------------------

    async def apply(self, batch: WriteBatch) -> WriteOutcome:
        """Write the batch as one CSV file per dataset into the outbound folder."""
        by_dataset: dict[str, list[WriteCommand]] = {}
        for command in batch.commands:
            by_dataset.setdefault(command.dataset, []).append(command)
        targets = {d: self._mapping.write_back_target(d) for d in by_dataset}
        outbound = self._outbound
        if outbound is None or not outbound.is_dir():
            raise WriteBackTargetInvalid(
                f"The outbound folder {outbound} does not exist; create it (source.outbound).",
                metadata={"folder": str(outbound)},
            )
        applied: list[str] = []
        rejected: list[CommandRejected] = []
        for dataset, commands in by_dataset.items():
            done, refused = await asyncio.to_thread(
                self._write_file, outbound, batch.sequence, targets[dataset], commands
            )
            applied += done
            rejected += refused
        return WriteOutcome(tuple(applied), tuple(rejected))

    def _write_file(
        self,
        folder: Path,
        sequence: int,
        target: WriteBackTarget,
        commands: Sequence[WriteCommand],
    ) -> tuple[list[str], list[CommandRejected]]:
        settings = self._settings.outbound
        assert settings is not None
        encoding = settings.encoding
        header = [target.key_column, *target.columns]
        if target.op_column is not None:
            header.insert(0, target.op_column)
        lines: list[bytes] = []
        applied: list[str] = []
        rejected: list[CommandRejected] = []
        for command in commands:
            values = row_values(target, command) if command.op is Op.UPSERT else {}
            values[target.key_column] = command.key
            row = [_text(values.get(name), target) for name in header]
            if target.op_column is not None:
                row[0] = str(command.op)
            try:
                lines.append(_csv_line(row).encode(encoding))
            except UnicodeEncodeError:
                rejected.append(
                    CommandRejected(
                        command.id,
                        "VALUE_UNFIT",
                        f"A value has characters the outbound encoding {encoding} cannot "
                        f"write; use gb18030 or utf-8 for the outbound folder, then replay.",
                    )
                )
                continue
            applied.append(command.id)
        if not applied:
            return applied, rejected
        digest = hashlib.sha256("\n".join(applied).encode()).hexdigest()[:16]
        name = f"{sequence:012d}_{target.dataset}_{digest}.csv"
        try:
            if not any(folder.glob(f"*_{target.dataset}_{digest}.csv")):
                data = _csv_line(header).encode(encoding) + b"".join(lines)
                _write_atomic(folder / name, data)
        except PermissionError as e:
            raise WriteBackTargetInvalid(
                f"The outbound folder {folder} is not writable; fix its permissions.",
                metadata={"folder": str(folder)},
            ) from e
        except OSError as e:
            raise SourceUnavailable(
                f"Writing to the outbound folder {folder} failed ({e.strerror}); check the "
                f"disk or share, then retry.",
                metadata={"folder": str(folder)},
            ) from e
        return applied, rejected


def _take(records: _Records, count: int, skip: int) -> list[SourceRow | UnreadableRow]:
    """Return the next ``count`` rows after skipping ``skip`` (a resumed snapshot)."""
    rows: list[SourceRow | UnreadableRow] = []
    for record in records:
        if isinstance(record, list):
            continue
        if skip:
            skip -= 1
            continue
        rows.append(record)
        if len(rows) >= count:
            break
    return rows


def _text(value: object, target: WriteBackTarget) -> str:
    if value is None:
        return ""
    return str(fit(_TEXT, value, timezone=target.timezone, naive_datetimes=True))


def _csv_line(row: Sequence[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(row)
    return buffer.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    try:
        with temp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _missing_columns(stream: StreamMapping, header: Sequence[str], source: str) -> None:
    present = set(header)
    drifts = [Drift(c, "missing") for c in stream.source_columns() if c not in present]
    check_drift(stream.name, source, drifts)


def _duplicate_columns(header: Sequence[str], path: Path) -> None:
    seen: set[str] = set()
    for name in header:
        if name and name in seen:
            raise SourceReadFailed(
                f"The export {path.name} names column {name} twice in its header; fix the "
                f"export job.",
                metadata={"file": path.name, "column": name},
            )
        seen.add(name)


# --- CSV ------------------------------------------------------------------------------


class _Lines:
    """Decoded physical lines, remembering which failed to decode and where each began."""

    def __init__(self, path: Path, encoding: str) -> None:
        self._path = path
        self._encoding = encoding
        self.undecodable: list[int] = []
        self.numbers: list[int] = []

    def __iter__(self) -> Iterator[str]:
        with self._path.open("rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    text = raw.decode(self._encoding)
                except UnicodeDecodeError:
                    self.undecodable.append(number)
                    continue
                self.numbers.append(number)
                yield text


def _csv_records(
    stream: StreamMapping, path: Path, settings: CsvSettings, encoding: str | None
) -> _Records:
    if encoding is None:
        if settings.encoding == "auto":
            with path.open("rb") as f:
                encoding = detect_encoding(f)
        else:
            encoding = settings.encoding
    lines = _Lines(path, encoding)
    reader = csv.reader(
        lines, delimiter=settings.delimiter, quotechar=settings.quotechar, strict=True
    )
    header: list[str] | None = None
    consumed = 0
    while True:
        try:
            fields = next(reader)
            error = None
        except StopIteration:
            fields, error = None, None
        except csv.Error as e:
            fields, error = [], e
        yield from _undecodable(lines, path, encoding)
        if fields is None:
            return
        numbers = lines.numbers[consumed:]
        consumed = len(lines.numbers)
        start = numbers[0] if numbers else 0
        location = f"{path.name}:{start}"
        if error is not None:
            yield UnreadableRow(
                location,
                RejectReason.BROKEN_LINE,
                f"Line {start} of {path.name} is not valid CSV ({error}); fix the quoting in "
                f"the export.",
            )
            continue
        if not fields or all(not f.strip() for f in fields):
            continue
        if header is None:
            header = [f.strip().lstrip("\ufeff") for f in fields]
            _duplicate_columns(header, path)
            _missing_columns(stream, header, path.name)
            yield header
            continue
        if len(fields) != len(header):
            yield UnreadableRow(
                location,
                RejectReason.BROKEN_LINE,
                f"Line {start} of {path.name} has {len(fields)} fields but the header has "
                f"{len(header)}; a separator or quote is missing or extra in that line.",
                {"line": settings.delimiter.join(fields)},
            )
            continue
        yield SourceRow(dict(zip(header, fields, strict=True)), location)


def _undecodable(lines: _Lines, path: Path, encoding: str) -> Iterator[UnreadableRow]:
    while lines.undecodable:
        number = lines.undecodable.pop(0)
        yield UnreadableRow(
            f"{path.name}:{number}",
            RejectReason.UNDECODABLE,
            f"Line {number} of {path.name} is not valid {encoding} text; re-export the file "
            f"in one encoding (UTF-8 or GB18030), or fix that line.",
        )


# --- Excel ----------------------------------------------------------------------------

_MergedRange = tuple[int, int, int, int]  # min_col, min_row, max_col, max_row


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _sheet_part(archive: zipfile.ZipFile, title: str) -> str | None:
    """Return the zip path of worksheet ``title``, from the workbook's relationships."""
    # The workbook and its relationships are small parts of the file we were asked to
    # read; openpyxl parses them with the same standard-library parser.
    workbook = ElementTree.fromstring(archive.read("xl/workbook.xml"))  # noqa: S314
    rels = ElementTree.fromstring(archive.read("xl/_rels/workbook.xml.rels"))  # noqa: S314
    rel_id = None
    for element in workbook.iter():
        if _local(element.tag) == "sheet" and element.get("name") == title:
            rel_id = next((v for k, v in element.attrib.items() if _local(k) == "id"), None)
    for element in rels.iter():
        if _local(element.tag) == "Relationship" and element.get("Id") == rel_id:
            target = element.get("Target", "")
            if target.startswith("/"):
                return target.lstrip("/")
            return str(PurePosixPath("xl") / target)
    return None


def _merged_ranges(path: Path, title: str) -> list[_MergedRange]:
    """Return the sheet's merged ranges (read-only mode does not expose them)."""
    with zipfile.ZipFile(path) as archive:
        part = _sheet_part(archive, title)
        if part is None:
            return []
        ranges: list[_MergedRange] = []
        with archive.open(part) as source:
            for _, element in ElementTree.iterparse(source):  # noqa: S314 - see _sheet_part
                if _local(element.tag) == "mergeCell":
                    ref = element.get("ref")
                    if ref:
                        min_col, min_row, max_col, max_row = range_boundaries(ref)
                        if None not in (min_col, min_row, max_col, max_row):
                            ranges.append((min_col, min_row, max_col, max_row))  # type: ignore[arg-type]
                element.clear()
        return ranges


def _xlsx_records(stream: StreamMapping, path: Path) -> _Records:
    with warnings.catch_warnings():
        # openpyxl warns about workbook features it does not read (data validation,
        # conditional formatting); they do not affect cell values.
        warnings.filterwarnings("ignore", category=UserWarning, module="openpyxl")
        try:
            workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
        except (zipfile.BadZipFile, KeyError, OSError) as e:
            raise SourceReadFailed(
                f"{path.name} is not a readable .xlsx workbook; re-export it.",
                metadata={"file": path.name},
            ) from e
    try:
        wanted = stream.sheet
        sheets = [ws for ws in workbook.worksheets if wanted is None or ws.title == wanted]
        if not sheets:
            raise SourceReadFailed(
                f"{path.name} has no worksheet {wanted}; fix the mapping's sheet.",
                metadata={"file": path.name, "sheet": str(wanted)},
            )
        sheet = sheets[0]
        title = sheet.title
        if hasattr(sheet, "reset_dimensions"):
            sheet.reset_dimensions()  # exports often record wrong dimensions
        merged = _merged_ranges(path, title)
        yield from _sheet_records(stream, path, title, sheet.iter_rows(values_only=True), merged)
    finally:
        workbook.close()


def _sheet_records(
    stream: StreamMapping,
    path: Path,
    title: str,
    rows: Iterator[tuple[object, ...]],
    merged: Sequence[_MergedRange],
) -> _Records:
    header_row = stream.header_row
    header: list[str] = []
    index: dict[str, int] = {}
    fill: dict[tuple[int, int], tuple[int, int]] = {}  # (row, col) → merge anchor
    across: set[int] = set()
    anchor_cells = set(fill.values())
    anchors: dict[tuple[int, int], object] = {}
    for number, values in enumerate(rows, start=1):
        if number < header_row:
            continue
        if number == header_row:
            header = ["" if v is None else str(v).strip() for v in values]
            _duplicate_columns(header, path)
            _missing_columns(stream, header, path.name)
            index = {name: i + 1 for i, name in enumerate(header) if name}
            needed = {index[c] for c in stream.source_columns() if c in index}
            fill, across = _merge_rules(merged, header_row, needed)
            anchor_cells = set(fill.values())
            yield header
            continue
        row = {
            name: (values[col - 1] if col - 1 < len(values) else None)
            for name, col in index.items()
        }
        for name, col in index.items():
            if (number, col) in fill:
                row[name] = anchors.get(fill[(number, col)])
            if (number, col) in anchor_cells:
                anchors[(number, col)] = row[name]
        location = f"{path.name}!{title}:{number}"
        if number in across:
            yield UnreadableRow(
                location,
                RejectReason.MERGED_CELLS,
                f"Row {number} of {path.name} is covered by cells merged across columns (a "
                f"total line or a note?); unmerge them or remove the row from the export.",
                {"row": " | ".join("" if v is None else str(v) for v in values)},
            )
            continue
        if all(v is None or (isinstance(v, str) and not v.strip()) for v in values):
            continue
        yield SourceRow(row, location)


def _merge_rules(
    merged: Sequence[_MergedRange], header_row: int, needed: set[int]
) -> tuple[dict[tuple[int, int], tuple[int, int]], set[int]]:
    """Return the cells filled from a vertical merge's anchor and the rows to reject."""
    fill: dict[tuple[int, int], tuple[int, int]] = {}
    across: set[int] = set()
    for min_col, min_row, max_col, max_row in merged:
        if max_row <= header_row:
            continue
        first = max(min_row, header_row + 1)
        if min_col == max_col and min_row > header_row:
            for row in range(min_row + 1, max_row + 1):
                fill[(row, min_col)] = (min_row, min_col)
        elif any(col in needed for col in range(min_col, max_col + 1)):
            across.update(range(first, max_row + 1))
    return fill, across
