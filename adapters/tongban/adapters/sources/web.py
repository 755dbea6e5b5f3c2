"""Web service sources: a REST/JSON service (httpx) and a SOAP service (zeep).

Both are read whole, as ``snapshot_diff`` streams: a web service lists its records page
by page but rarely offers an ordered, resumable change feed. A generation's checkpoint
is the next page to ask for (a page number, an offset, or the next link), so a crashed
pass resumes after its last committed page. A JSON service declares no schema, so
``describe`` returns ``None`` and no drift check runs; a field the mapping needs that a
record lacks is rejected like any missing value.

**Failures.** A ``429 Too Many Requests`` is waited out as its ``Retry-After`` says (in
seconds or as a date), without using up an attempt, up to ``max_retry_after_seconds``
per wait and ``throttle_budget_seconds`` per call. ``5xx`` answers, timeouts and refused
connections are retried with the ``retry`` backoff; after the last attempt the call
raises ``SourceUnavailable`` (retriable: nothing past the last committed page was
committed). Any other ``4xx`` is an answer: on read it stops the stream
(``SOURCE_READ_FAILED``; ``STREAM_NOT_FOUND`` for a 404), on write-back it rejects that
command (``HTTP_409`` …) and the rest of the batch is applied. A SOAP fault is the
same kind of answer (``SOURCE_READ_FAILED`` on read, ``SOAP_FAULT`` on write-back).

**Write-back.** REST: an upsert is ``PUT`` (or ``POST``) of the legacy columns as a JSON
object to the target's ``endpoint`` with ``{key}`` filled in; a delete is ``DELETE`` of
the same path, and a 404 to it means already gone. SOAP: the target's operation is called
with the legacy columns as arguments (and ``op_column`` set to ``upsert``/``delete``).
A batch that fails part-way with an outage is applied again whole later, so the
service must treat a repeated ``PUT`` (or call) of the same values as a no-op — which
``PUT`` by definition is.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx

from tongban.adapters._coerce import offset
from tongban.adapters.errors import (
    SourceReadFailed,
    SourceUnavailable,
    SourceUnsupported,
    StreamNotFound,
    WriteBackTargetInvalid,
)
from tongban.adapters.mapping import (
    AdapterMapping,
    Paging,
    RestSettings,
    SoapSettings,
    StreamMapping,
    WriteBackTarget,
)
from tongban.adapters.sdk import (
    Batch,
    Checkpoint,
    CommandRejected,
    KeyValue,
    Op,
    SnapshotCheckpoint,
    SourceRow,
    StreamInfo,
    UnreadableRow,
    WriteBatch,
    WriteCommand,
    WriteOutcome,
)
from tongban.adapters.sources._write import row_values
from tongban.signing.clock import Clock, SystemClock

__all__ = ["RestSource", "SoapSource"]

_T = TypeVar("_T")
_TRANSIENT_STATUS = frozenset({500, 502, 503, 504, 408})


class _Transient(Exception):
    """A failure worth another attempt."""

    def __init__(self, detail: str, wait: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.wait = wait


def _path(data: object, dotted: str) -> object:
    """The value at ``dotted`` (``a.b``) in JSON ``data``; ``data`` itself for ``""``."""
    for part in filter(None, dotted.split(".")):
        if not isinstance(data, Mapping):
            return None
        data = data.get(part)
    return data


def _jsonable(value: object, timezone: str) -> object:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(offset(timezone))
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value


def _rows(
    items: object, stream: StreamMapping, where: str, first: int
) -> list[SourceRow | UnreadableRow]:
    if not isinstance(items, list):
        raise SourceReadFailed(
            f"The service's answer for stream {stream.name} holds no list of records at the "
            f"configured place; check the source's 'items' setting.",
            metadata={"stream": stream.name},
        )
    rows: list[SourceRow | UnreadableRow] = []
    for i, item in enumerate(items, start=first):
        location = f"{where} #{i}"
        if isinstance(item, Mapping):
            rows.append(SourceRow(dict(item), location))
        else:
            rows.append(
                UnreadableRow(location, "MALFORMED_ITEM", "the item is not an object (a record)")
            )
    return rows


class _Paged:
    """Page-by-page snapshot reading shared by REST and SOAP: generations, positions."""

    _mapping: AdapterMapping
    _paging: Paging

    def _start(
        self, stream: StreamMapping, checkpoint: SnapshotCheckpoint | None, source_id: str
    ) -> tuple[int, KeyValue | None]:
        if checkpoint is not None and not checkpoint.complete and checkpoint.source_id == source_id:
            return checkpoint.generation, checkpoint.position
        generation = checkpoint.generation + 1 if checkpoint is not None else 1
        return generation, None

    def _first_position(self) -> int:
        return self._paging.start if self._paging.kind == "page" else 0

    def _page_params(self, position: KeyValue | None, size: int) -> dict[str, object]:
        paging = self._paging
        if paging.kind == "page":
            page = position if isinstance(position, int) else paging.start
            return {paging.page_param: page, paging.size_param: size}
        if paging.kind == "offset":
            start = position if isinstance(position, int) else 0
            return {paging.offset_param: start, paging.size_param: size}
        return {}

    def _next_position(self, position: KeyValue | None, count: int) -> int:
        base = position if isinstance(position, int) else self._first_position()
        return base + 1 if self._paging.kind == "page" else base + count

    def _first_index(self, position: KeyValue | None) -> int:
        """The number of the first record of the page at ``position`` (for locations)."""
        if self._paging.kind == "offset" and isinstance(position, int):
            return position
        return 0

    def _checked(self, stream: str) -> StreamMapping:
        config = self._mapping.stream(stream)
        if config.mode.kind != "snapshot_diff":
            raise SourceUnsupported(
                f"Stream {stream} reads a web service, which is read whole; use snapshot_diff.",
                metadata={"stream": stream},
            )
        return config

    # -- reading, the same for both: a stream is read whole, page by page ------------

    _kind: str
    """``rest`` or ``soap``: names the source in its checkpoints."""

    async def _page(
        self, stream: StreamMapping, position: KeyValue | None
    ) -> tuple[list[SourceRow | UnreadableRow], KeyValue | None, bool]:
        """Return one page's rows, the position after it, and whether it was the last."""
        raise NotImplementedError

    async def discover(self) -> list[StreamInfo]:
        """Return each stream's endpoint with the fields of its first record."""
        found: list[StreamInfo] = []
        for stream in self._mapping.streams:
            rows, _, _ = await self._page(stream, None)
            first = next((r for r in rows if isinstance(r, SourceRow)), None)
            names = list(first.values) if first is not None else []
            found.append(StreamInfo(str(stream.endpoint), tuple(_json_columns(first, names))))
        return found

    def read(self, stream: str, checkpoint: Checkpoint | None) -> AsyncIterator[Batch]:
        """Yield the endpoint's records page by page as one snapshot generation."""
        config = self._checked(stream)
        snapshot = checkpoint if isinstance(checkpoint, SnapshotCheckpoint) else None
        return self._read(config, snapshot)

    async def _read(
        self, stream: StreamMapping, checkpoint: SnapshotCheckpoint | None
    ) -> AsyncIterator[Batch]:
        source_id = f"{self._kind}:{stream.endpoint}"
        generation, position = self._start(stream, checkpoint, source_id)
        while True:
            rows, after, last = await self._page(stream, position)
            position = after
            yield Batch(
                tuple(rows), SnapshotCheckpoint(generation, source_id, position, complete=last)
            )
            if last:
                return

    async def fetch(self, stream: str, source_keys: Sequence[KeyValue]) -> list[SourceRow]:
        """Not offered: web service streams replay by reading a full snapshot again."""
        raise SourceUnsupported(
            "A web service stream cannot fetch rows by key; it replays by a full read.",
            metadata={"stream": stream},
        )


# --- REST -------------------------------------------------------------------------------


class RestSource(_Paged):
    """A REST/JSON service. Use as ``async with RestSource(mapping) as source``."""

    _kind = "rest"

    def __init__(self, mapping: AdapterMapping, *, clock: Clock | None = None) -> None:
        assert isinstance(mapping.source, RestSettings)
        self._mapping = mapping
        self._settings = mapping.source
        self._paging = mapping.source.paging
        self._clock = clock or SystemClock()
        self._client: httpx.AsyncClient | None = None
        self._pace_lock = asyncio.Lock()
        self._next_request_at = 0.0
        self.throttled_seconds = 0.0
        """Time spent waiting out 429s (for reports and tests)."""
        self.retries = 0
        """Attempts repeated after a 5xx, a timeout or a refused connection."""

    async def __aenter__(self) -> Self:
        self._client = httpx.AsyncClient(
            base_url=self._settings.base_url,
            timeout=self._settings.timeout_seconds,
            headers=self._settings.headers,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- requests ---------------------------------------------------------------------

    async def _pace(self) -> None:
        rate = self._settings.rate_limit_per_second
        if rate is None:
            return
        async with self._pace_lock:
            now = time.monotonic()
            wait = self._next_request_at - now
            if wait > 0:
                await asyncio.sleep(wait)
            self._next_request_at = max(now, self._next_request_at) + 1.0 / rate

    def _retry_after(self, response: httpx.Response) -> float | None:
        text = response.headers.get("retry-after", "").strip()
        if not text:
            return None
        if text.isdigit():
            return float(text)
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max((when - self._clock.now()).total_seconds(), 0.0)

    async def _request(self, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
        """Send a request, waiting out 429s and retrying outages; return the answer
        (any status but 429 and 5xx). Raises ``SourceUnavailable``."""
        client = self._client
        if client is None:
            raise RuntimeError("use the source with 'async with'")
        retry = self._settings.retry
        delay = retry.initial_delay_seconds
        throttled = 0.0
        attempt = 0
        while True:
            await self._pace()
            try:
                response = await client.request(method, url, **kwargs)
            except httpx.TransportError as e:
                failure = _Transient(type(e).__name__)
            else:
                if response.status_code == 429:
                    wait = self._retry_after(response)
                    wait = delay if wait is None else wait
                    if wait > self._settings.max_retry_after_seconds:
                        raise self._unavailable(
                            what,
                            f"it asks to wait {wait:.0f} s (429), longer than "
                            f"max_retry_after_seconds",
                        )
                    if throttled + wait > self._settings.throttle_budget_seconds:
                        raise self._unavailable(
                            what, f"it kept answering 429 for {throttled:.0f} s"
                        )
                    throttled += wait
                    self.throttled_seconds += wait
                    await asyncio.sleep(wait)
                    continue
                if response.status_code in _TRANSIENT_STATUS or response.status_code >= 500:
                    failure = _Transient(
                        f"HTTP {response.status_code}", self._retry_after(response)
                    )
                else:
                    return response
            attempt += 1
            if attempt >= retry.attempts:
                raise self._unavailable(
                    what, f"{failure.detail} after {attempt} attempts"
                ) from failure
            self.retries += 1
            wait = delay if failure.wait is None else min(failure.wait, retry.max_delay_seconds)
            await asyncio.sleep(wait)
            delay = min(delay * 2, retry.max_delay_seconds)

    def _unavailable(self, what: str, detail: str) -> SourceUnavailable:
        return SourceUnavailable(
            f"The REST service {self._settings.base_url} could not be used to {what} "
            f"({detail}); check that it is running, then run the adapter again.",
            metadata={"source": "rest", "url": self._settings.base_url},
        )

    def _json(self, response: httpx.Response, stream: StreamMapping) -> object:
        try:
            return response.json()
        except ValueError:
            raise SourceReadFailed(
                f"The REST service answered stream {stream.name} with something that is not "
                f"JSON (HTTP {response.status_code}); check the endpoint.",
                metadata={"stream": stream.name, "status": str(response.status_code)},
            ) from None

    def _refused(self, response: httpx.Response, stream: StreamMapping) -> Exception:
        status = response.status_code
        if status == 404:
            return StreamNotFound(
                f"Stream {stream.name} reads {stream.endpoint}, which the REST service does not "
                f"have (HTTP 404); check the endpoint.",
                metadata={"stream": stream.name, "status": "404"},
            )
        hint = (
            "check the credentials in source.headers"
            if status in (401, 403)
            else "check the mapping"
        )
        return SourceReadFailed(
            f"The REST service refused to read stream {stream.name} (HTTP {status}); {hint}.",
            metadata={"stream": stream.name, "status": str(status)},
        )

    async def _page(
        self, stream: StreamMapping, position: KeyValue | None
    ) -> tuple[list[SourceRow | UnreadableRow], KeyValue | None, bool]:
        """Return one page's rows, the position after it, and whether it was the last."""
        assert stream.endpoint is not None
        size = stream.batch_size
        if self._paging.kind == "next_link" and isinstance(position, str):
            url, params = position, None
        else:
            url = stream.endpoint
            params = {**self._settings.params, **self._page_params(position, size)}
        response = await self._request("GET", url, f"read stream {stream.name}", params=params)
        if response.status_code >= 400:
            raise self._refused(response, stream)
        body = self._json(response, stream)
        first = self._first_index(position)
        rows = _rows(_path(body, self._settings.items), stream, stream.endpoint, first)
        if self._paging.kind == "none":
            return rows, None, True
        if self._paging.kind == "next_link":
            link = _path(body, self._paging.next)
            if not isinstance(link, str) or not link:
                return rows, position, True
            return rows, link, False
        return rows, self._next_position(position, len(rows)), len(rows) < size

    # --- Source ------------------------------------------------------------------------

    async def check(self) -> None:
        """Return if the service answers every stream's endpoint (one page of each)."""
        for stream in self._mapping.streams:
            self._checked(stream.name)
            await self._page(stream, None)
        if not self._mapping.streams:
            await self._request("GET", "/", "check")  # reachable: any answer but 5xx

    async def describe(self, stream: str) -> StreamInfo | None:
        """``None``: a JSON service declares no schema to check for drift."""
        self._checked(stream)
        return None

    async def apply(self, batch: WriteBatch) -> WriteOutcome:
        """Send each command to its target endpoint (see the module docstring)."""
        applied: list[str] = []
        rejected: list[CommandRejected] = []
        for command in batch.commands:
            target = self._mapping.write_back_target(command.dataset)
            refusal = await self._send(target, command)
            if refusal is None:
                applied.append(command.id)
            else:
                rejected.append(refusal)
        return WriteOutcome(tuple(applied), tuple(rejected))

    async def _send(self, target: WriteBackTarget, command: WriteCommand) -> CommandRejected | None:
        assert target.endpoint is not None
        templated = "{key}" in target.endpoint
        url = target.endpoint.replace("{key}", quote(command.key, safe=""))
        what = f"write back {target.dataset}"
        if command.op is Op.DELETE and templated:
            response = await self._request("DELETE", url, what)
            if response.status_code == 404:
                return None  # already gone
        else:
            body = (
                {
                    name: _jsonable(v, target.timezone)
                    for name, v in row_values(target, command).items()
                }
                if command.op is Op.UPSERT
                else {target.key_column: command.key}
            )
            if target.op_column is not None and not templated:
                body[target.op_column] = str(command.op)
            response = await self._request(target.method, url, what, json=body)
        status = response.status_code
        if status < 300:
            return None
        if status in (401, 403):
            raise WriteBackTargetInvalid(
                f"The REST service refused write-back of {target.dataset} (HTTP {status}); "
                f"check the credentials in source.headers.",
                metadata={"dataset": target.dataset, "status": str(status)},
            )
        if status in (404, 405) and command.op is Op.UPSERT:
            raise WriteBackTargetInvalid(
                f"The REST service has no {target.method} at {target.endpoint} (HTTP {status}); "
                f"fix the write-back endpoint.",
                metadata={"dataset": target.dataset, "status": str(status)},
            )
        return CommandRejected(
            command.id,
            f"HTTP_{status}",
            f"The REST service refused the record (HTTP {status}); fix the data or the "
            f"service, then replay.",
        )


def _json_columns(first: SourceRow | None, names: list[str]) -> list[Any]:
    from tongban.adapters.sdk import Column, ColumnFamily

    families: dict[type, ColumnFamily] = {
        bool: ColumnFamily.BOOLEAN,
        int: ColumnFamily.INTEGER,
        float: ColumnFamily.FLOAT,
        str: ColumnFamily.STRING,
    }
    columns = []
    for name in names:
        value = first.values.get(name) if first is not None else None
        family = families.get(type(value), ColumnFamily.OTHER)
        columns.append(Column(name, type(value).__name__, family))
    return columns


# --- SOAP -------------------------------------------------------------------------------


class SoapSource(_Paged):
    """A SOAP service, called with zeep in worker threads. Use with ``async with``."""

    _kind = "soap"

    def __init__(self, mapping: AdapterMapping) -> None:
        assert isinstance(mapping.source, SoapSettings)
        self._mapping = mapping
        self._settings = mapping.source
        self._paging = mapping.source.paging
        self._service: Any = None
        self.retries = 0

    async def __aenter__(self) -> Self:
        self._service = await self._retrying("load its WSDL", self._connect)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._service = None

    def _connect(self) -> Any:
        import zeep
        from zeep.transports import Transport

        transport = Transport(  # type: ignore[no-untyped-call]
            timeout=self._settings.timeout_seconds,
            operation_timeout=self._settings.timeout_seconds,
        )
        client = zeep.Client(  # type: ignore[no-untyped-call]
            self._settings.wsdl,
            transport=transport,
            service_name=self._settings.service,
            port_name=self._settings.port,
        )
        return client.service

    async def _retrying(self, what: str, op: Callable[[], _T]) -> _T:
        import requests
        import zeep.exceptions

        retry = self._settings.retry
        delay = retry.initial_delay_seconds
        for attempt in range(1, retry.attempts + 1):
            try:
                return await asyncio.to_thread(op)
            except (
                requests.ConnectionError,
                requests.Timeout,
                zeep.exceptions.TransportError,
            ) as e:
                detail = type(e).__name__
                status = getattr(e, "status_code", None)
                if status is not None:
                    detail = f"HTTP {status}"
                if attempt == retry.attempts:
                    raise SourceUnavailable(
                        f"The SOAP service {self._settings.wsdl} could not be used to {what} "
                        f"({detail} after {attempt} attempts); check that it is running, then "
                        f"run the adapter again.",
                        metadata={"source": "soap"},
                    ) from e
            self.retries += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, retry.max_delay_seconds)
        raise AssertionError("unreachable")

    def _operation(self, name: str, stream_or_dataset: str) -> Callable[..., Any]:
        try:
            return getattr(self._service, name)  # type: ignore[no-any-return]
        except AttributeError:
            raise StreamNotFound(
                f"{stream_or_dataset} calls SOAP operation {name}, which the service does not "
                f"offer; check the endpoint name against the WSDL.",
                metadata={"operation": name},
            ) from None

    async def _call(self, operation: Callable[..., Any], what: str, **arguments: Any) -> Any:
        from zeep.helpers import serialize_object

        def call() -> Any:
            result = operation(**arguments)
            return serialize_object(result, dict)  # type: ignore[no-untyped-call]

        return await self._retrying(what, call)

    async def _page(
        self, stream: StreamMapping, position: KeyValue | None
    ) -> tuple[list[SourceRow | UnreadableRow], KeyValue | None, bool]:
        import zeep.exceptions

        assert stream.endpoint is not None
        if self._paging.kind == "next_link":
            raise SourceUnsupported(
                "A SOAP source pages by page or offset, not by next link.",
                metadata={"stream": stream.name},
            )
        operation = self._operation(stream.endpoint, f"Stream {stream.name}")
        size = stream.batch_size
        arguments = {**self._settings.arguments, **self._page_params(position, size)}
        try:
            result = await self._call(operation, f"read stream {stream.name}", **arguments)
        except zeep.exceptions.Fault as e:
            code = str(getattr(e, "code", "") or "unspecified")
            raise SourceReadFailed(
                f"The SOAP service answered {stream.endpoint} for stream {stream.name} with a "
                f"fault (code {code[:80]}); check the operation's arguments and the service.",
                metadata={"stream": stream.name, "fault_code": code[:80]},
            ) from None
        items = _path(result, self._settings.items) if self._settings.items else result
        if items is None:
            items = []
        first = self._first_index(position)
        rows = _rows(items, stream, stream.endpoint, first)
        if self._paging.kind == "none":
            return rows, None, True
        return rows, self._next_position(position, len(rows)), len(rows) < size

    async def check(self) -> None:
        """Return if the WSDL loaded (on entry) and every operation named exists."""
        for stream in self._mapping.streams:
            self._checked(stream.name)
            assert stream.endpoint is not None
            self._operation(stream.endpoint, f"Stream {stream.name}")
        for target in self._mapping.write_back:
            assert target.endpoint is not None
            self._operation(target.endpoint, f"Write-back of {target.dataset}")

    async def describe(self, stream: str) -> StreamInfo | None:
        """``None``: the WSDL's types are checked by zeep on every call instead."""
        self._checked(stream)
        return None

    async def apply(self, batch: WriteBatch) -> WriteOutcome:
        """Call each command's target operation (see the module docstring)."""
        import zeep.exceptions

        applied: list[str] = []
        rejected: list[CommandRejected] = []
        for command in batch.commands:
            target = self._mapping.write_back_target(command.dataset)
            assert target.endpoint is not None
            operation = self._operation(target.endpoint, f"Write-back of {target.dataset}")
            arguments: dict[str, object] = (
                {n: _soap_value(v) for n, v in row_values(target, command).items()}
                if command.op is Op.UPSERT
                else {target.key_column: command.key}
            )
            if target.op_column is not None:
                arguments[target.op_column] = str(command.op)
            try:
                await self._call(operation, f"write back {target.dataset}", **arguments)
            except zeep.exceptions.Fault as e:
                rejected.append(
                    CommandRejected(
                        command.id,
                        "SOAP_FAULT",
                        f"The SOAP service refused the record with a fault "
                        f"({str(e.message or '')[:200]}); fix the data or the service, then "
                        f"replay.",
                    )
                )
                continue
            except zeep.exceptions.ValidationError:
                rejected.append(
                    CommandRejected(
                        command.id,
                        "VALUE_UNFIT",
                        "A value does not fit the operation's argument types; map another "
                        "field or add a format, then replay.",
                    )
                )
                continue
            except TypeError as e:
                raise WriteBackTargetInvalid(
                    f"SOAP operation {target.endpoint} does not take the write-back columns "
                    f"({e}); fix the mapping's write_back columns.",
                    metadata={"dataset": target.dataset},
                ) from None
            applied.append(command.id)
        return WriteOutcome(tuple(applied), tuple(rejected))


def _soap_value(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
