"""The adapter runner: every stream's read loop and every write-back loop of one mapping.

``AdapterRunner.run()`` opens the state store and the legacy source, then runs

- per stream, a **read loop**: a ``StreamSync`` pass, then a wait of ``poll_seconds``,
  again until stopped;
- per ``write_back`` target, a ``WriteBackLoop`` fed by its subscription.

Both kinds share one lock: a write-back batch (apply, then record its command ids and
echoes) and a read batch (read, publish, commit) never interleave, which is what lets
``EchoGuard`` recognise the adapter's own writes in a table it also reads.

Retriable failures (the exchange or the legacy system unreachable) are retried with the
source's backoff; any other failure stops that loop and is reported (the others go on).
``stop`` ends every loop after the batch in hand is committed; ``once`` makes one pass per
stream and drains each subscription, then returns (for cron and tests). What happens is
reported as plain dicts (``on_event``), which the CLI prints as lines, JSON or a progress
bar.

The runner is handed its ``ExchangeClient`` and validators: the composition root (the
``tongban adapter`` command) builds them from the mapping's ``exchange`` settings and the
exchange's subject-id checks; the SDK itself depends only on ``tongban.client``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from tongban.adapters.errors import StorageFull
from tongban.adapters.exchange import ExchangeSink, WriteBackLoop, WriteBackReport, is_retriable
from tongban.adapters.mapping import (
    AdapterMapping,
    RetrySettings,
    SnapshotDiffMode,
    StreamMapping,
    WriteBackTarget,
)
from tongban.adapters.sdk import Source
from tongban.adapters.sources import open_source
from tongban.adapters.state import StateStore
from tongban.adapters.sync import ApplyReport, EchoGuard, StreamSync, SyncReport
from tongban.adapters.transform import Validator
from tongban.client import ExchangeClient
from tongban.errors import TongbanError
from tongban.signing.clock import Clock

__all__ = ["AdapterRunner", "RunSummary", "check_adapter", "replay_adapter"]

RunnerEvent = dict[str, Any]


@dataclass
class RunSummary:
    """What a run did: the last pass of each stream, each write-back loop, the errors."""

    passes: dict[str, SyncReport] = field(default_factory=dict)
    write_back: dict[str, WriteBackReport] = field(default_factory=dict)
    errors: list[RunnerEvent] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "passes": {name: _report_dict(r) for name, r in self.passes.items()},
            "write_back": {
                dataset: {k: v for k, v in asdict(r).items() if k != "applied_keys"}
                for dataset, r in self.write_back.items()
            },
            "errors": self.errors,
        }


def _report_dict(report: SyncReport) -> dict[str, Any]:
    out = asdict(report)
    out["upserts"] = report.upserts
    return out


def _error_event(where: dict[str, str], error: TongbanError) -> RunnerEvent:
    return {"event": "error", **where, "reason": error.reason, "message": str(error)}


def _retry_settings(mapping: AdapterMapping) -> RetrySettings:
    retry = getattr(mapping.source, "retry", None)
    return retry if isinstance(retry, RetrySettings) else RetrySettings()


class AdapterRunner:
    """Runs one adapter mapping against one exchange client (see the module docstring)."""

    def __init__(
        self,
        mapping: AdapterMapping,
        *,
        client: ExchangeClient,
        validators: Mapping[str, Validator],
        clock: Clock | None = None,
        on_event: Callable[[RunnerEvent], None] | None = None,
        poll_seconds: float | None = None,
    ) -> None:
        self.mapping = mapping
        self._client = client
        self._validators = validators
        self._clock = clock
        self._on_event = on_event
        self._poll = poll_seconds if poll_seconds is not None else mapping.poll_seconds
        self._retry = _retry_settings(mapping)

    def _emit(self, event: RunnerEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)

    async def run(self, *, once: bool = False, stop: asyncio.Event | None = None) -> RunSummary:
        """Run until ``stop`` is set (or, with ``once``, one pass and a drain); return the
        summary. Raises ``StateLocked``/``StateStoreUnusable`` (the state cannot be used)
        and ``ValidatorMissing``; every other failure is in ``RunSummary.errors``."""
        stop = stop or asyncio.Event()
        summary = RunSummary()
        with StateStore.open(self.mapping.state_path, clock=self._clock) as state:
            source = open_source(self.mapping, clock=self._clock)
            try:
                async with source:
                    await self._run_loops(source, state, stop, summary, once=once)
            except TongbanError as e:
                summary.errors.append(_error_event({"adapter": self.mapping.adapter}, e))
                self._emit(summary.errors[-1])
        return summary

    async def _run_loops(
        self,
        source: Source,
        state: StateStore,
        stop: asyncio.Event,
        summary: RunSummary,
        *,
        once: bool,
    ) -> None:
        sink = ExchangeSink(self._client)
        lock = asyncio.Lock()
        echo = EchoGuard(self.mapping, self._validators)
        syncs = [
            StreamSync(
                source,
                self.mapping,
                stream.name,
                state,
                sink,
                validators=self._validators,
                exclusive=lock,
                stop=stop,
                pipeline=not echo.reads(stream.name),
            )
            for stream in self.mapping.streams
        ]  # built first: a missing validator stops the run before anything is read
        loops = [
            self._read_loop(source, sync, stream, stop, summary, once=once)
            for sync, stream in zip(syncs, self.mapping.streams, strict=True)
        ]
        loops += [
            self._write_loop(source, state, target, echo, lock, stop, summary, once=once)
            for target in self.mapping.write_back
        ]
        await asyncio.gather(*loops)

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    async def _read_loop(
        self,
        source: Source,
        sync: StreamSync,
        stream: StreamMapping,
        stop: asyncio.Event,
        summary: RunSummary,
        *,
        once: bool,
    ) -> None:
        delay = self._retry.initial_delay_seconds
        where = {"stream": stream.name, "dataset": stream.dataset}
        while not stop.is_set():
            total = await self._estimate(source, stream)
            started = time.monotonic()
            self._emit({"event": "pass_start", **where, "total": total})

            def progress(
                report: SyncReport, started: float = started, total: int | None = total
            ) -> None:
                elapsed = max(time.monotonic() - started, 1e-9)
                rate = report.rows / elapsed
                eta = (total - report.rows) / rate if total and rate > 0 else None
                self._emit(
                    {
                        "event": "progress",
                        **where,
                        "rows": report.rows,
                        "total": total,
                        "rows_per_s": round(rate, 1),
                        "eta_s": None if eta is None else round(max(eta, 0.0), 1),
                    }
                )

            sync.set_progress(progress)
            try:
                report = await sync.run()
            except TongbanError as e:
                if is_retriable(e) and not once:
                    self._emit({**_error_event(where, e), "event": "retry", "delay_s": delay})
                    await self._wait(stop, delay)
                    delay = min(delay * 2, self._retry.max_delay_seconds)
                    continue
                summary.errors.append(_error_event(where, e))
                self._emit(summary.errors[-1])
                return
            delay = self._retry.initial_delay_seconds
            summary.passes[stream.name] = report
            seconds = time.monotonic() - started
            self._emit(
                {
                    "event": "pass",
                    **where,
                    **_report_dict(report),
                    "seconds": round(seconds, 3),
                    "rows_per_s": round(report.rows / seconds, 1) if seconds > 0 else None,
                }
            )
            if once:
                return
            await self._wait(stop, self._poll)

    async def _estimate(self, source: Source, stream: StreamMapping) -> int | None:
        """How many rows a snapshot pass will read, if the source can say cheaply."""
        if not isinstance(stream.mode, SnapshotDiffMode) or self._on_event is None:
            return None
        estimate = getattr(source, "estimate", None)
        if estimate is None:
            return None
        try:
            result = await estimate(stream.name)
        except TongbanError:
            return None  # only a progress hint; the pass reports the real problem
        return result if isinstance(result, int) else None

    async def _write_loop(
        self,
        source: Source,
        state: StateStore,
        target: WriteBackTarget,
        echo: EchoGuard,
        lock: asyncio.Lock,
        stop: asyncio.Event,
        summary: RunSummary,
        *,
        once: bool,
    ) -> None:
        where = {"dataset": target.dataset}

        def on_batch(report: WriteBackReport) -> None:
            event = {k: v for k, v in asdict(report).items() if k != "applied_keys"}
            self._emit({"event": "write_back", **event, "keys": report.applied_keys[:20]})

        def on_retry(error: TongbanError, delay: float) -> None:
            self._emit({**_error_event(where, error), "event": "retry", "delay_s": delay})

        loop = WriteBackLoop(
            client=self._client,
            source=source,
            state=state,
            mapping=self.mapping,
            target=target,
            echo=echo if echo.active else None,
            exclusive=lock,
            retry=self._retry,
            on_batch=on_batch,
            on_retry=on_retry,
        )
        summary.write_back[target.dataset] = loop.report
        try:
            await loop.run(stop, once=once)
        except TongbanError as e:
            summary.errors.append(_error_event(where, e))
            self._emit(summary.errors[-1])


async def check_adapter(
    mapping: AdapterMapping, client: ExchangeClient, *, clock: Clock | None = None
) -> list[RunnerEvent]:
    """Check that the adapter can run: the legacy system answers and has every table,
    file or endpoint; the exchange knows us; if we publish, our datasets have room left
    under our storage quota (the line says how much is used); each published dataset
    exists, is ours and has every mapped field; each written-back dataset has the fields
    the columns map.

    Returns one line per check; raises the first failure (a ``TongbanError``).
    """
    lines: list[RunnerEvent] = []
    async with open_source(mapping, clock=clock) as source:
        await source.check()
    lines.append({"check": "source", "ok": True, "kind": mapping.source.kind})
    me = await client.who_am_i()
    lines.append({"check": "exchange", "ok": True, "department": me.department})
    if mapping.streams:
        storage = await client.storage()
        if storage.stored_bytes >= storage.quota_bytes:
            raise StorageFull(
                f"{me.department}'s datasets hold {storage.stored_bytes:,} bytes, its whole "
                f"storage quota of {storage.quota_bytes:,}: the exchange will refuse what "
                "this adapter publishes until the operator raises the quota "
                f"(tongban dept limits {me.department} --stored SIZE).",
                metadata={
                    "stored_bytes": str(storage.stored_bytes),
                    "quota_bytes": str(storage.quota_bytes),
                },
            )
        lines.append(
            {
                "check": "storage",
                "ok": True,
                "stored_bytes": storage.stored_bytes,
                "quota_bytes": storage.quota_bytes,
                "used": f"{storage.stored_bytes / storage.quota_bytes:.1%}",
            }
        )
    for stream in mapping.streams:
        dataset = await client.get_dataset(stream.dataset)
        known = {f.name for f in dataset.spec.fields}
        missing = sorted(set(stream.fields) - known)
        if dataset.owner != me.department:
            raise MappingMismatch(
                f"Stream {stream.name} publishes {stream.dataset}, which belongs to "
                f"{dataset.owner}, not to {me.department}; publish your own datasets only.",
                metadata={"stream": stream.name, "dataset": stream.dataset},
            )
        if missing or dataset.spec.key_field != stream.key:
            raise MappingMismatch(
                f"Stream {stream.name} does not fit dataset {stream.dataset}: "
                + (f"fields {', '.join(missing)} are not in it" if missing else "")
                + ("; " if missing and dataset.spec.key_field != stream.key else "")
                + (
                    f"its key is {dataset.spec.key_field}, not {stream.key}"
                    if dataset.spec.key_field != stream.key
                    else ""
                )
                + ". Fix the mapping's fields.",
                metadata={"stream": stream.name, "dataset": stream.dataset},
            )
        lines.append(
            {"check": "stream", "ok": True, "stream": stream.name, "dataset": dataset.spec.code}
        )
    for target in mapping.write_back:
        dataset = await client.get_dataset(target.dataset)
        known = {f.name for f in dataset.spec.fields}
        mapped = {c.field for c in target.columns.values() if c.field is not None}
        missing = sorted(mapped - known)
        if missing:
            raise MappingMismatch(
                f"Write-back of {target.dataset} maps fields {', '.join(missing)}, which the "
                f"dataset does not have; fix the mapping's write_back columns.",
                metadata={"dataset": target.dataset},
            )
        lines.append({"check": "write_back", "ok": True, "dataset": target.dataset})
    return lines


class MappingMismatch(TongbanError):
    """The mapping does not fit the datasets registered on the exchange."""

    reason = "MAPPING_MISMATCH"
    status = "FAILED_PRECONDITION"


async def replay_adapter(
    mapping: AdapterMapping,
    client: ExchangeClient,
    *,
    validators: Mapping[str, Validator],
    clock: Clock | None = None,
) -> tuple[dict[str, SyncReport], ApplyReport | None, dict[str, int]]:
    """Try every rejected row (and refused write-back command) again; return each
    stream's replay report, the write-back replay, and the rejects left per stream."""
    from tongban.adapters.sync import replay_write_rejects

    reports: dict[str, SyncReport] = {}
    applied: ApplyReport | None = None
    with StateStore.open(mapping.state_path, clock=clock) as state:
        async with open_source(mapping, clock=clock) as source:
            sink = ExchangeSink(client)
            for stream in mapping.streams:
                sync = StreamSync(source, mapping, stream.name, state, sink, validators=validators)
                reports[stream.name] = await sync.replay_rejects()
            if mapping.write_back:
                echo = EchoGuard(mapping, validators)
                applied = await replay_write_rejects(
                    source, state, echo=echo if echo.active else None
                )
        left = {stream.name: state.reject_count(stream.name) for stream in mapping.streams}
    return reports, applied, left
