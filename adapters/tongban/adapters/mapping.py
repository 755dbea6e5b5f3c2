"""The adapter's mapping file: which source, which streams, how rows become records.

The file is YAML, validated with pydantic (``extra="forbid"``, strict types). Every
problem is reported as ``file:line:column: field.path: message``: the YAML is composed
into nodes first, so each pydantic error location is traced back to the node it names.
``docs/adapters.md`` describes the format with an example.

Relative paths in the file (code tables, drop folders, the state file) are resolved
against ``base_dir``, which defaults to the mapping file's own directory.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from tongban.adapters._coerce import CoercionError, coerce
from tongban.adapters.errors import MappingInvalid, MappingProblem, StreamNotFound

__all__ = [
    "SQL_KINDS",
    "AdapterMapping",
    "BooleanField",
    "CodeField",
    "CsvSettings",
    "CursorMode",
    "DateField",
    "DateTimeField",
    "DecimalField",
    "ExchangeSettings",
    "FieldSpec",
    "Filter",
    "IntegerField",
    "OutboundSettings",
    "Paging",
    "PostgresSettings",
    "RestSettings",
    "RetrySettings",
    "SnapshotDiffMode",
    "SoapSettings",
    "SourceSettings",
    "SqliteSettings",
    "StreamMapping",
    "StringField",
    "WriteBackTarget",
    "WriteColumn",
    "WriteSubscription",
    "XlsxSettings",
    "load_mapping",
    "parse_mapping",
]

SQL_KINDS = frozenset({"postgres", "sqlite"})
FILE_KINDS = frozenset({"csv", "xlsx"})
WEB_KINDS = frozenset({"rest", "soap"})

_NAME = r"^[a-z][a-z0-9_]{0,62}$"
_DATASET = r"^[a-z][a-z0-9-]{1,62}\.[a-z][a-z0-9_]{0,62}$"
_OFFSET = r"^[+-](?:0\d|1[0-4]):[0-5]\d$"
_FIELD_NAME = re.compile(_NAME)

Name = Annotated[str, StringConstraints(pattern=_NAME)]
AdapterName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
DatasetCode = Annotated[str, StringConstraints(pattern=_DATASET)]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Offset = Annotated[str, StringConstraints(pattern=_OFFSET)]
Scalar = bool | int | float | str | date | datetime | Decimal
"""A constant or filter value as YAML gives it."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=False)


# --- the source -----------------------------------------------------------------------


class RetrySettings(_Model):
    """How often and how patiently to reconnect to a legacy system that went away."""

    attempts: int = Field(default=5, ge=1, le=100)
    """Attempts per operation, the first included."""
    initial_delay_seconds: float = Field(default=0.5, gt=0, le=600)
    """Delay before the second attempt; it doubles after each failure."""
    max_delay_seconds: float = Field(default=30.0, gt=0, le=3600)
    """The longest delay between two attempts."""


class PostgresSettings(_Model):
    """A PostgreSQL database, read with asyncpg."""

    kind: Literal["postgres"]
    dsn: str = Field(min_length=1)
    """An asyncpg DSN. Prefer a read-mostly role: the adapter writes only write-back
    tables."""
    db_schema: Identifier = Field(default="public", alias="schema")
    """The schema holding the stream and write-back tables."""
    connect_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    retry: RetrySettings = RetrySettings()


class SqliteSettings(_Model):
    """A SQLite database file, read with the standard library in a worker thread."""

    kind: Literal["sqlite"]
    path: str = Field(min_length=1)
    busy_timeout_seconds: float = Field(default=5.0, ge=0, le=600)
    """How long to wait for the legacy application's write lock."""
    retry: RetrySettings = RetrySettings()


class OutboundSettings(_Model):
    """Where write-back files for a drop-folder system go."""

    folder: str = Field(min_length=1)
    encoding: Literal["utf-8", "utf-8-sig", "gbk", "gb18030"] = "utf-8"
    """``utf-8-sig`` writes a BOM, which old Excel versions need to read UTF-8."""


class CsvSettings(_Model):
    """A folder where a nightly job drops CSV exports."""

    kind: Literal["csv"]
    folder: str = Field(min_length=1)
    encoding: Literal["auto", "utf-8", "gbk", "gb18030"] = "auto"
    """``auto`` tries UTF-8 (with or without BOM) strictly, then GB18030 (a superset of
    GBK and GB2312)."""
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    quotechar: str = Field(default='"', min_length=1, max_length=1)
    settle_seconds: float = Field(default=60.0, ge=0)
    """A file modified more recently than this is still being written and is skipped."""
    outbound: OutboundSettings | None = None


class XlsxSettings(_Model):
    """A folder where Excel (.xlsx) exports are dropped."""

    kind: Literal["xlsx"]
    folder: str = Field(min_length=1)
    settle_seconds: float = Field(default=60.0, ge=0)
    outbound: OutboundSettings | None = None


class Paging(_Model):
    """How a web service hands out a long list: one page per request.

    ``page``: ``?page=N&size=S`` from ``start`` (default 1); ``offset``: ``?offset=N&size=S``
    from 0; ``next_link``: the response names the next page's URL at ``next`` (a dotted
    path, e.g. ``links.next``) until it is missing or null; ``none``: one request returns
    everything. A page shorter than ``size`` (the stream's ``batch_size``) is the last.
    """

    kind: Literal["none", "page", "offset", "next_link"] = "none"
    page_param: str = Field(default="page", min_length=1)
    offset_param: str = Field(default="offset", min_length=1)
    size_param: str = Field(default="size", min_length=1)
    start: int = Field(default=1, ge=0)
    """The first page's number (``page`` paging)."""
    next: str = Field(default="next", min_length=1)
    """``next_link``: where the response holds the next page's URL."""


class RestSettings(_Model):
    """A REST/JSON service, called with httpx.

    Reads are ``GET base_url + stream.endpoint`` with the stream's paging; the records are
    the JSON list at ``items`` (a dotted path; empty: the body is the list). A ``429`` is
    waited out as its ``Retry-After`` says (up to ``max_retry_after_seconds`` a time);
    ``5xx``, timeouts and refused connections are retried with ``retry``'s backoff.
    """

    kind: Literal["rest"]
    base_url: str = Field(min_length=1)
    timeout_seconds: float = Field(default=30.0, gt=0)
    headers: dict[str, str] = Field(default_factory=dict)
    retry: RetrySettings = RetrySettings()
    paging: Paging = Paging()
    items: str = ""
    """Where the records are in a response: a dotted path (``data.items``), or empty."""
    params: dict[str, str] = Field(default_factory=dict)
    """Query parameters sent with every read."""
    rate_limit_per_second: float | None = Field(default=None, gt=0)
    """At most this many requests a second (the service's published limit)."""
    max_retry_after_seconds: float = Field(default=60.0, gt=0, le=3600)
    """The longest single wait a ``429 Retry-After`` may impose; longer is refused."""
    throttle_budget_seconds: float = Field(default=600.0, gt=0)
    """How long one call may wait in total for ``429``s before giving up (retriable)."""


class SoapSettings(_Model):
    """A SOAP service, called with zeep.

    Reads call the operation named in the stream's ``endpoint`` (with ``arguments``, and
    with the paging parameters for ``page``/``offset`` paging); the records are the list
    the operation returns (or the one at ``items``). Write-back calls the target's
    ``endpoint`` operation with the legacy columns as arguments. A SOAP fault is an
    answer, not an outage: on read it stops the stream (``SOURCE_READ_FAILED``), on
    write-back it rejects that command (``SOAP_FAULT``).
    """

    kind: Literal["soap"]
    wsdl: str = Field(min_length=1)
    service: str | None = None
    port: str | None = None
    timeout_seconds: float = Field(default=30.0, gt=0)
    retry: RetrySettings = RetrySettings()
    paging: Paging = Paging()
    items: str = ""
    arguments: dict[str, Scalar] = Field(default_factory=dict)
    """Arguments passed to every read operation."""


SourceSettings = Annotated[
    PostgresSettings | SqliteSettings | CsvSettings | XlsxSettings | RestSettings | SoapSettings,
    Field(discriminator="kind"),
]


# --- stream modes ---------------------------------------------------------------------


class CursorMode(_Model):
    """Read rows changed since the checkpoint, by a compound (cursor, key) cursor."""

    kind: Literal["cursor"]
    cursor_column: Identifier
    """A column every insert and update sets (``updated_at``), never NULL."""
    key_column: Identifier
    """A unique, never-NULL column (the primary key) that orders rows with equal cursors."""
    look_back: int = Field(default=300, ge=0)
    """Re-read this far behind the checkpoint to catch late commits: seconds for a time
    cursor, units for an integer cursor."""


class SnapshotDiffMode(_Model):
    """Read the whole source each time and publish only what differs."""

    kind: Literal["snapshot_diff"]
    key_column: Identifier | None = None
    """The unique column a SQL table is paged by (required for SQL sources)."""
    max_delete_ratio: float = Field(default=0.5, ge=0, le=1)
    """Stop instead of deleting more than this share of the published records in one
    snapshot: a truncated export looks just like mass deletion."""


Mode = Annotated[CursorMode | SnapshotDiffMode, Field(discriminator="kind")]


# --- fields ---------------------------------------------------------------------------


class _FieldBase(_Model):
    column: Identifier | None = None
    """The source column the value comes from."""
    constant: Scalar | None = None
    """A fixed value instead of a column."""
    required: bool = False
    """Reject rows where the value is missing (the stream's key field always is)."""
    check: Identifier | None = None
    """A validator by name (``uscc``, ``citizen_id``), supplied by the runner."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: object) -> object:
        return {"column": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _one_source(self) -> _FieldBase:
        has_constant = "constant" in self.model_fields_set
        if (self.column is None) == (not has_constant):
            raise ValueError("give exactly one of 'column' and 'constant'")
        return self

    @property
    def is_constant(self) -> bool:
        return "constant" in self.model_fields_set


class StringField(_FieldBase):
    type: Literal["string"] = "string"
    strip: bool = True
    """Remove surrounding whitespace (legacy CHAR columns pad with spaces)."""
    max_length: int | None = Field(default=None, ge=1, le=100_000)
    """Reject longer values (counted in characters after NFC normalisation)."""
    empty_as_null: bool = True


class IntegerField(_FieldBase):
    type: Literal["integer"]


class DecimalField(_FieldBase):
    type: Literal["decimal"]


class DateField(_FieldBase):
    type: Literal["date"]
    formats: list[str] = Field(default_factory=lambda: ["%Y-%m-%d"], min_length=1)
    """``strptime`` formats tried in order, e.g. ``%Y%m%d``, ``%Y/%m/%d``, ``%Y年%m月%d日``."""
    timezone: Offset = "+08:00"
    """The offset a timestamp value is in before its date is taken."""


class DateTimeField(_FieldBase):
    type: Literal["datetime"]
    formats: list[str] = Field(default_factory=list)
    """``strptime`` formats tried in order; empty: ISO 8601."""
    timezone: Offset = "+08:00"
    """The offset of values that carry none (legacy systems store local time)."""


class BooleanField(_FieldBase):
    type: Literal["boolean"]
    true_values: list[str] = Field(default_factory=lambda: ["1", "true", "y", "yes", "是"])
    false_values: list[str] = Field(default_factory=lambda: ["0", "false", "n", "no", "否"])


class CodeField(_FieldBase):
    """A code table lookup: the source value (as text) → the dataset value."""

    type: Literal["code"]
    table: dict[str, str] | None = None
    """The table inline. Quote codes: YAML reads ``01`` as the number 1."""
    table_file: str | None = None
    """A CSV file (code, value; UTF-8 or GB18030; a header row is allowed) or a YAML
    mapping. Loaded when the mapping is loaded."""
    default: str | None = None
    """The value for codes not in the table; without it such rows are rejected."""

    @field_validator("table", mode="before")
    @classmethod
    def _string_codes(cls, value: object) -> object:
        if isinstance(value, Mapping):
            for code, label in value.items():
                if not isinstance(code, str) or not isinstance(label, str):
                    # pydantic reports ValueError with the location; TypeError would escape.
                    raise ValueError(  # noqa: TRY004
                        "code table codes and values must be quoted strings "
                        "(YAML reads 01 as the number 1 and yes as true)"
                    )
        return value

    @model_validator(mode="after")
    def _one_table(self) -> CodeField:
        if (self.table is None) == (self.table_file is None):
            raise ValueError("give exactly one of 'table' and 'table_file'")
        return self


def _field_type(data: object) -> str:
    if isinstance(data, Mapping):
        kind = data.get("type", "string")
        return kind if isinstance(kind, str) else "string"
    return "string"


FieldSpec = Annotated[
    Annotated[StringField, Tag("string")]
    | Annotated[IntegerField, Tag("integer")]
    | Annotated[DecimalField, Tag("decimal")]
    | Annotated[DateField, Tag("date")]
    | Annotated[DateTimeField, Tag("datetime")]
    | Annotated[BooleanField, Tag("boolean")]
    | Annotated[CodeField, Tag("code")],
    Discriminator(
        _field_type,
        custom_error_type="field_type",
        custom_error_message=(
            "type must be one of string, integer, decimal, date, datetime, boolean, code"
        ),
    ),
]


class Filter(_Model):
    """Keep only rows whose column satisfies one condition. Values compare as text
    (``1`` matches ``"1"``); a row that stops passing is deleted from the dataset."""

    column: Identifier
    equals: Scalar | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in")
    not_in: list[Scalar] | None = None
    not_null: Literal[True] | None = None

    @model_validator(mode="after")
    def _one_condition(self) -> Filter:
        given = [
            name
            for name in ("equals", "in_", "not_in", "not_null")
            if name in self.model_fields_set
        ]
        if len(given) != 1:
            raise ValueError("give exactly one of 'equals', 'in', 'not_in' and 'not_null'")
        return self


class StreamMapping(_Model):
    """One source table, file pattern or endpoint published as one dataset."""

    name: Name
    dataset: DatasetCode
    table: Identifier | None = None
    """SQL sources: the table (in the source's schema)."""
    file: str | None = Field(default=None, min_length=1)
    """Drop folders: a glob pattern of the export's file name, e.g. ``qydj_*.csv``."""
    endpoint: str | None = Field(default=None, min_length=1)
    """REST/SOAP sources: the path or operation."""
    sheet: str | None = None
    """.xlsx: the worksheet; default the first."""
    header_row: int = Field(default=1, ge=1, le=1000)
    """.xlsx: the row holding the column names; data starts below it."""
    key: Name
    """The dataset field that is the record's key."""
    mode: Mode
    batch_size: int = Field(default=1000, ge=1, le=10_000)
    fields: dict[str, FieldSpec] = Field(min_length=1)
    filters: list[Filter] = Field(default_factory=list)

    def source_columns(self) -> list[str]:
        """Return every source column this stream reads, in a stable order."""
        wanted: list[str] = []
        if isinstance(self.mode, CursorMode):
            wanted += [self.mode.cursor_column, self.mode.key_column]
        elif self.mode.key_column is not None:
            wanted.append(self.mode.key_column)
        wanted += [spec.column for spec in self.fields.values() if spec.column is not None]
        wanted += [f.column for f in self.filters]
        return list(dict.fromkeys(wanted))

    @property
    def source_key_column(self) -> str | None:
        """The column that identifies a row in the source (for replays), if any."""
        return self.mode.key_column


# --- write-back -----------------------------------------------------------------------


class WriteColumn(_Model):
    """A legacy column's value in write-back: a dataset field or a constant."""

    field: Name | None = None
    constant: Scalar | None = None
    format: str | None = None
    """``strftime`` format to write a date or datetime as text (``%Y%m%d``)."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: object) -> object:
        return {"field": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _one_source(self) -> WriteColumn:
        if (self.field is None) == ("constant" not in self.model_fields_set):
            raise ValueError("give exactly one of 'field' and 'constant'")
        return self


class WriteSubscription(_Model):
    """The subscription a write-back target is fed by."""

    fields: list[Name] = Field(default_factory=list)
    """Fields to receive; default every field the columns map."""
    purpose: str = Field(default="数据同步", min_length=1, max_length=200)
    """The purpose recorded in the exchange's access log for each delivery."""
    batch_size: int = Field(default=500, ge=1, le=10_000)
    """Commands applied (and acknowledged) together, at most."""
    max_wait_seconds: float = Field(default=0.05, ge=0, le=60)
    """How long to wait for more events before applying a partial batch."""


class WriteBackTarget(_Model):
    """Where another department's dataset is written into the legacy system."""

    dataset: DatasetCode
    table: Identifier | None = None
    """SQL sources: the table; needs a unique constraint on ``key_column``."""
    key_column: Identifier
    """The legacy column that receives the record key."""
    columns: dict[str, WriteColumn] = Field(default_factory=dict)
    """Legacy column → dataset field (or constant)."""
    op_column: Identifier | None = "op"
    """Files: the column saying ``upsert`` or ``delete``; ``null`` for none."""
    timezone: Offset = "+08:00"
    """Datetimes are written in this offset into columns without a time zone."""
    endpoint: str | None = Field(default=None, min_length=1)
    """REST: the path an upsert is sent to, with ``{key}`` for the record key (e.g.
    ``/enterprises/{key}``); SOAP: the operation to call."""
    method: Literal["PUT", "POST"] = "PUT"
    """REST: how an upsert is sent (a delete is ``DELETE`` on the same path)."""
    subscribe: WriteSubscription | None = None
    """How the runner subscribes to the dataset (default: every mapped field)."""


# --- the file -------------------------------------------------------------------------


class ExchangeSettings(_Model):
    """How the adapter reaches its exchange (used by the runner, not by the SDK)."""

    endpoint: str = Field(min_length=1)
    """``host:port`` of the exchange's gRPC endpoint."""
    bundle: str = Field(min_length=1)
    """The department's certificate bundle."""
    officer: str | None = None
    """The officer id sent with every call, for the audit log."""


class AdapterMapping(_Model):
    """A whole mapping file."""

    version: Literal[1] = 1
    adapter: AdapterName
    """The adapter's name (lower-case letters, digits, ``-`` and ``_``); it names the
    default state file."""
    base_dir: str | None = None
    """Where relative paths are resolved; default the mapping file's directory."""
    state: str | None = None
    """The state file; default ``<adapter>.state.sqlite`` in ``base_dir``."""
    exchange: ExchangeSettings | None = None
    poll_seconds: float = Field(default=5.0, gt=0, le=86_400)
    """How long the runner waits between passes over each stream."""
    source: SourceSettings
    streams: list[StreamMapping] = Field(default_factory=list)
    write_back: list[WriteBackTarget] = Field(default_factory=list)

    def stream(self, name: str) -> StreamMapping:
        """Return stream ``name``; raises ``StreamNotFound``."""
        for stream in self.streams:
            if stream.name == name:
                return stream
        raise StreamNotFound(
            f"The mapping has no stream called {name!r}; add it under 'streams'.",
            metadata={"stream": name},
        )

    def write_back_target(self, dataset: str) -> WriteBackTarget:
        """Return the write-back target of ``dataset``; raises ``StreamNotFound``."""
        for target in self.write_back:
            if target.dataset == dataset:
                return target
        raise StreamNotFound(
            f"The mapping has no write-back target for dataset {dataset}; add one under "
            f"'write_back' or stop subscribing to it.",
            metadata={"dataset": dataset},
        )

    def resolve(self, path: str) -> Path:
        """Return ``path`` resolved against ``base_dir``."""
        candidate = Path(path).expanduser()
        if candidate.is_absolute() or self.base_dir is None:
            return candidate
        return Path(self.base_dir) / candidate

    @property
    def state_path(self) -> Path:
        """The state file's path."""
        return self.resolve(self.state or f"{self.adapter}.state.sqlite")


# --- loading --------------------------------------------------------------------------

_Loc = tuple[int | str, ...]


def load_mapping(
    path: Path | str, *, known_checks: Collection[str] | None = None
) -> AdapterMapping:
    """Read, validate and return the mapping file at ``path``, code tables loaded.

    ``known_checks`` are the validator names the runner supplies; a field naming another
    is an error (``None`` skips that check, for tools that only read the file).

    Raises ``MappingInvalid`` listing every problem with its line, column and field path.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        problem = MappingProblem(str(path), 1, 1, "", f"cannot read the file: {e.strerror}")
        raise MappingInvalid(str(path), [problem]) from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        problem = MappingProblem(str(path), line, 1, "", "the file is not UTF-8; save it as UTF-8")
        raise MappingInvalid(str(path), [problem]) from e
    return parse_mapping(text, file=str(path), base_dir=path.parent, known_checks=known_checks)


def parse_mapping(
    text: str,
    *,
    file: str = "<mapping>",
    base_dir: Path | None = None,
    known_checks: Collection[str] | None = None,
) -> AdapterMapping:
    """Validate mapping ``text`` (named ``file`` in problems) and return it.

    Relative paths resolve against the file's ``base_dir`` setting, or ``base_dir``.
    Raises ``MappingInvalid``.
    """
    node, data = _compose(text, file)
    problems = [MappingProblem(file, line, col, path, msg) for line, col, path, msg in _dupes(node)]
    if problems:
        raise MappingInvalid(file, problems)
    if isinstance(data, dict) and base_dir is not None:
        given = data.get("base_dir")
        if isinstance(given, str):
            data = {**data, "base_dir": str(base_dir / Path(given).expanduser())}
        elif given is None:
            data = {**data, "base_dir": str(base_dir)}
    try:
        mapping = AdapterMapping.model_validate(data)
    except ValidationError as e:
        for error in e.errors():
            problems.append(_problem(file, node, error["loc"], error["type"], error["msg"]))
        raise MappingInvalid(file, problems) from None
    found: list[tuple[_Loc, str]] = []
    mapping = _cross_check(mapping, known_checks, found)
    if found:
        problems = [_problem(file, node, loc, "cross_check", msg) for loc, msg in found]
        raise MappingInvalid(file, problems)
    return mapping


def _compose(text: str, file: str) -> tuple[yaml.Node | None, object]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        message = " ".join(part for part in (e.context, e.problem) if part)
        raise MappingInvalid(file, [MappingProblem(file, line, col, "", message)]) from None
    except yaml.YAMLError as e:
        raise MappingInvalid(file, [MappingProblem(file, 1, 1, "", str(e))]) from None
    finally:
        loader.dispose()
    if data is None:
        data = {}
    return node, data


def _dupes(node: yaml.Node | None, path: str = "") -> Iterator[tuple[int, int, str, str]]:
    """Yield duplicate mapping keys (YAML would silently keep the last)."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else ""
            here = f"{path}.{key}" if path else key
            if key and key != "<<":
                if key in seen:
                    mark = key_node.start_mark
                    yield mark.line + 1, mark.column + 1, here, "this key is given twice"
                seen.add(key)
            yield from _dupes(value_node, here)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _dupes(item, f"{path}.{i}" if path else str(i))


def _child(node: yaml.Node | None, part: int | str) -> tuple[yaml.Node, yaml.Node] | None:
    """Return (key node, value node) for ``part`` under ``node``, if it is there."""
    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        for key_node, value_node in reversed(node.value):
            if isinstance(key_node, yaml.ScalarNode) and str(key_node.value) == part:
                return key_node, value_node
    if (
        isinstance(node, yaml.SequenceNode)
        and isinstance(part, int)
        and 0 <= part < len(node.value)
    ):
        item = node.value[part]
        return item, item
    return None


def _problem(
    file: str, root: yaml.Node | None, loc: Sequence[int | str], kind: str, msg: str
) -> MappingProblem:
    node = root
    key_node = root
    path: list[str] = []
    for i, part in enumerate(loc):
        found = _child(node, part)
        if found is not None:
            key_node, node = found
            path.append(str(part))
        elif kind == "cross_check" or (i == len(loc) - 1 and kind == "missing"):
            path.append(str(part))
        # Anything else is a union member's tag, which the file does not spell out.
    at = key_node if kind == "extra_forbidden" else node
    line, col = (at.start_mark.line + 1, at.start_mark.column + 1) if at is not None else (1, 1)
    message = msg.removeprefix("Value error, ")
    if kind == "extra_forbidden":
        message = "this setting is not known here (check its spelling and indentation)"
    return MappingProblem(file, line, col, ".".join(path), message)


# --- checks across fields ---------------------------------------------------------------


def _cross_check(
    mapping: AdapterMapping,
    known_checks: Collection[str] | None,
    found: list[tuple[_Loc, str]],
) -> AdapterMapping:
    kind = mapping.source.kind
    names: set[str] = set()
    streams: list[StreamMapping] = []
    for i, stream in enumerate(mapping.streams):
        at: _Loc = ("streams", i)
        if stream.name in names:
            found.append(((*at, "name"), f"another stream is already called {stream.name!r}"))
        names.add(stream.name)
        _check_stream_source(kind, stream, at, found)
        if stream.key not in stream.fields:
            found.append(
                ((*at, "key"), f"the key {stream.key!r} is not one of the stream's fields")
            )
        elif stream.fields[stream.key].is_constant:
            found.append(((*at, "key"), "the key field must come from a column, not a constant"))
        fields = dict(stream.fields)
        for name, spec in stream.fields.items():
            where: _Loc = (*at, "fields", name)
            if not _FIELD_NAME.match(name):
                found.append((where, "a field name is lower-case letters, digits and _"))
            if (
                spec.check is not None
                and known_checks is not None
                and spec.check not in known_checks
            ):
                known = ", ".join(sorted(known_checks)) or "none"
                found.append(((*where, "check"), f"unknown check (known: {known})"))
            fields[name] = _check_field(mapping, spec, where, found)
        streams.append(stream.model_copy(update={"fields": fields}))
    datasets: set[str] = set()
    for i, target in enumerate(mapping.write_back):
        at = ("write_back", i)
        if target.dataset in datasets:
            found.append(((*at, "dataset"), "this dataset already has a write-back target"))
        datasets.add(target.dataset)
        if kind in SQL_KINDS and target.table is None:
            found.append(((*at, "table"), "a SQL source writes back into a table; name it"))
        web = isinstance(mapping.source, RestSettings | SoapSettings)
        if web and target.endpoint is None:
            found.append(((*at,), f"a {kind} source writes back to an endpoint; name it"))
        if not web and target.endpoint is not None:
            found.append(((*at, "endpoint"), f"a {kind} source has no endpoints"))
        if isinstance(mapping.source, CsvSettings | XlsxSettings):
            if target.table is not None:
                found.append(((*at, "table"), "a drop folder writes files, not tables"))
            if mapping.source.outbound is None:
                found.append(((*at,), "set source.outbound to the folder write-back files go to"))
        for column, written in target.columns.items():
            if written.format is not None and not _format_round_trips(written.format):
                found.append(((*at, "columns", column, "format"), "not a usable strftime format"))
    return mapping.model_copy(update={"streams": streams})


def _check_stream_source(
    kind: str, stream: StreamMapping, at: _Loc, found: list[tuple[_Loc, str]]
) -> None:
    wants = "table" if kind in SQL_KINDS else "file" if kind in FILE_KINDS else "endpoint"
    for attr in ("table", "file", "endpoint"):
        given = getattr(stream, attr) is not None
        if attr == wants and not given:
            found.append(((*at,), f"a {kind} source needs '{attr}' on each stream"))
        elif attr != wants and given:
            found.append(((*at, attr), f"a {kind} source reads '{wants}', not '{attr}'"))
    if kind != "xlsx":
        for attr in ("sheet", "header_row"):
            if attr in stream.model_fields_set:
                found.append(((*at, attr), f"'{attr}' applies to .xlsx sources only"))
    mode = stream.mode
    if isinstance(mode, CursorMode) and kind in FILE_KINDS:
        found.append(((*at, "mode", "kind"), "a drop folder has no cursor; use snapshot_diff"))
    if isinstance(mode, CursorMode) and kind in WEB_KINDS:
        found.append(((*at, "mode", "kind"), f"a {kind} source is read whole; use snapshot_diff"))
    if isinstance(mode, SnapshotDiffMode) and kind in SQL_KINDS and mode.key_column is None:
        found.append(((*at, "mode"), "a SQL snapshot needs 'key_column' to page by"))


def _check_field(
    mapping: AdapterMapping, spec: Any, where: _Loc, found: list[tuple[_Loc, str]]
) -> Any:
    if isinstance(spec, DateField | DateTimeField):
        for j, fmt in enumerate(spec.formats):
            if not _format_round_trips(fmt):
                found.append(((*where, "formats", j), "not a usable strptime format"))
    if isinstance(spec, CodeField) and spec.table_file is not None:
        try:
            table = _read_code_table(mapping.resolve(spec.table_file))
        except (OSError, ValueError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            found.append(((*where, "table_file"), f"cannot load the code table: {reason}"))
            return spec
        spec = spec.model_copy(update={"table": table})
    if spec.is_constant:
        try:
            coerce(spec, spec.constant)
        except CoercionError as e:
            found.append(((*where, "constant"), e.message))
    return spec


def _format_round_trips(fmt: str) -> bool:
    sample = datetime(2001, 2, 3, 4, 5, 6)  # noqa: DTZ001 - a naive sample for the format
    try:
        datetime.strptime(sample.strftime(fmt), fmt)  # noqa: DTZ007 - only the format is tested
    except ValueError:
        return False
    return "%" in fmt


def _read_code_table(path: Path) -> dict[str, str]:
    """Read a code table: a YAML mapping (``.yaml``/``.yml``) or a two-column CSV."""
    raw = path.read_bytes()
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise ValueError("the file is neither UTF-8 nor GB18030")
    if path.suffix.lower() in {".yaml", ".yml"}:
        data = yaml.safe_load(text)
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise ValueError("a YAML code table is a mapping of quoted codes to quoted values")
        return dict(data)
    table: dict[str, str] = {}
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise ValueError(f"line {number} has {len(row)} fields; a code table has 2")
        code, value = row[0].strip(), row[1].strip()
        if number == 1 and code.lower() in {"code", "代码", "编码"}:
            continue  # a header row
        if code in table:
            raise ValueError(f"line {number} repeats a code")
        table[code] = value
    if not table:
        raise ValueError("the code table is empty")
    return table
