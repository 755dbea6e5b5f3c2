"""``tongban adapter discover|check|run|rejects|replay CONFIG``: run an adapter beside a
legacy system.

CONFIG is the adapter's mapping file (docs/adapters.md); its ``exchange`` section says
where the exchange is and which department bundle to use. The adapter is a client of the
exchange like any department system: it calls the node over gRPC with that bundle.

``run`` runs every stream's read loop and every write-back loop until SIGTERM or SIGINT
(the batch in hand is finished and its state committed), or with ``--once`` one pass
and one drain of each subscription. Progress goes to stderr (a bar on a terminal, plain
lines otherwise); ``--json`` prints one JSON object per line on stdout instead. A failed
stream or write-back is reported with its reason code and the command exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from tongban.adapters import (
    AdapterError,
    AdapterMapping,
    StateStore,
    StateStoreUnusable,
    load_mapping,
)
from tongban.adapters.runner import AdapterRunner, RunnerEvent, check_adapter, replay_adapter
from tongban.adapters.sources import open_source
from tongban.adapters.transform import Validator
from tongban.cli.common import emit
from tongban.client import Bundle, ExchangeClient
from tongban.exchange.catalogue.subject_ids import SubjectKind, validate_subject_id

__all__ = ["VALIDATORS", "add_parsers", "exchange_client", "run_adapter"]

VALIDATORS: dict[str, Validator] = {
    "uscc": lambda value: validate_subject_id(SubjectKind.ENTERPRISE, value),
    "citizen_id": lambda value: validate_subject_id(SubjectKind.PERSON, value),
}
"""The subject-id checks a mapping's ``check:`` may name."""


class AdapterNotConfigured(AdapterError):
    """The mapping has no ``exchange`` section, so the adapter cannot reach an exchange."""

    reason = "ADAPTER_NOT_CONFIGURED"
    status = "FAILED_PRECONDITION"


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, parser_class: type[argparse.ArgumentParser]
) -> None:
    """Add ``tongban adapter ...`` to the ``tongban`` parser."""
    adapter = sub.add_parser("adapter", help="run an adapter beside a legacy system")
    adapter_sub = adapter.add_subparsers(
        dest="adapter_command", required=True, parser_class=parser_class
    )
    config = parser_class(add_help=False)
    config.add_argument("config", type=Path, metavar="CONFIG", help="the adapter's mapping file")
    adapter_sub.add_parser(
        "discover", parents=[common, config], help="list the legacy system's tables or files"
    )
    adapter_sub.add_parser(
        "check",
        parents=[common, config],
        help="check the legacy system, the exchange and the datasets the mapping names",
    )
    run = adapter_sub.add_parser(
        "run", parents=[common, config], help="publish and write back until stopped"
    )
    run.add_argument("--once", action="store_true", help="one pass, then exit (cron, tests)")
    rejects = adapter_sub.add_parser(
        "rejects", parents=[common, config], help="list rejected rows and refused write-backs"
    )
    rejects.add_argument("--stream", help="only this stream")
    rejects.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    adapter_sub.add_parser(
        "replay", parents=[common, config], help="read rejected rows again; publish those that pass"
    )


def _mapping(args: argparse.Namespace) -> AdapterMapping:
    return load_mapping(args.config, known_checks=VALIDATORS)


def exchange_client(mapping: AdapterMapping) -> ExchangeClient:
    """The client the mapping's ``exchange`` section describes; raises
    ``AdapterNotConfigured`` or ``BundleInvalid``."""
    settings = mapping.exchange
    if settings is None:
        raise AdapterNotConfigured(
            f"The mapping of adapter {mapping.adapter} has no 'exchange' section; add the "
            f"endpoint and the department bundle it runs as.",
            metadata={"adapter": mapping.adapter},
        )
    bundle = Bundle.load(mapping.resolve(settings.bundle))
    return ExchangeClient(bundle, target=settings.endpoint, officer_id=settings.officer)


async def run_adapter(args: argparse.Namespace) -> int:
    command = args.adapter_command
    if command == "discover":
        return await _discover(args)
    if command == "check":
        return await _check(args)
    if command == "run":
        return await _run(args)
    if command == "rejects":
        return await _rejects(args)
    return await _replay(args)


async def _discover(args: argparse.Namespace) -> int:
    mapping = load_mapping(args.config)
    async with open_source(mapping) as source:
        found = await source.discover()
    tables: list[dict[str, Any]] = []
    lines: list[str] = []
    for info in found:
        columns = [
            {"name": c.name, "type": c.type_name, "family": str(c.family)} for c in info.columns
        ]
        tables.append(
            {"name": info.name, "key": list(info.key), "cursor": info.cursor, "columns": columns}
        )
        key = f" key ({', '.join(info.key)})" if info.key else ""
        lines.append(f"{info.name}{key}")
        lines += [f"  {c.name:<24} {c.type_name}" for c in info.columns]
    emit(args, {"source": mapping.source.kind, "tables": tables}, "\n".join(lines) or "nothing")
    return 0


async def _check(args: argparse.Namespace) -> int:
    mapping = _mapping(args)
    async with exchange_client(mapping) as client:
        lines = await check_adapter(mapping, client)
    human = "\n".join(
        "ok  " + " ".join(f"{k}={v}" for k, v in line.items() if k not in ("ok",)) for line in lines
    )
    emit(args, {"checks": lines}, human)
    return 0


class _Printer:
    """Renders runner events: JSON lines, a progress bar on a terminal, or plain lines."""

    def __init__(self, as_json: bool, err: TextIO = sys.stderr, out: TextIO = sys.stdout) -> None:
        self._json = as_json
        self._err = err
        self._out = out
        self._tty = err.isatty() and not as_json
        self._last_progress: dict[str, float] = {}
        self._bar = False

    def __call__(self, event: RunnerEvent) -> None:
        kind = event["event"]
        if kind == "progress":
            self._progress(event)
            return
        if kind == "pass_start":
            return
        if self._json:
            print(json.dumps(event, ensure_ascii=False, default=str), file=self._out, flush=True)
            return
        self._clear_bar()
        if kind == "pass":
            print(
                f"{event['stream']} → {event['dataset']}: {event['rows']} rows read, "
                f"{event['inserts']} new, {event['changed']} changed, {event['deletes']} "
                f"deleted, {event['unchanged']} unchanged, {event['rejected']} rejected, "
                f"{event['echoes']} own write-backs skipped ({event['seconds']} s)",
                file=self._out,
                flush=True,
            )
        elif kind == "write_back":
            print(
                f"{event['dataset']} → legacy: {event['applied']} applied, "
                f"{event['duplicates']} already applied, {event['rejected']} refused; "
                f"acknowledged up to {event['acknowledged']}",
                file=self._out,
                flush=True,
            )
        elif kind == "retry":
            where = event.get("stream") or event.get("dataset")
            print(
                f"tongban: {where}: {event['message']} [{event['reason']}] — retrying in "
                f"{event['delay_s']:.1f} s",
                file=self._err,
                flush=True,
            )
        elif kind == "error":
            where = event.get("stream") or event.get("dataset") or event.get("adapter")
            print(f"tongban: {where}: {event['message']} [{event['reason']}]", file=self._err)

    def _progress(self, event: RunnerEvent) -> None:
        stream = str(event["stream"])
        now = time.monotonic()
        done = event["total"] is not None and event["rows"] >= event["total"]
        interval = 0.2 if self._tty else 2.0
        if now - self._last_progress.get(stream, 0.0) < interval and not done:
            return
        self._last_progress[stream] = now
        if self._json:
            print(json.dumps(event, ensure_ascii=False), file=self._out, flush=True)
            return
        rows, total, rate, eta = event["rows"], event["total"], event["rows_per_s"], event["eta_s"]
        if self._tty and total:
            width = 30
            filled = min(width, int(width * rows / max(total, 1)))
            eta_text = f"ETA {eta:.0f}s" if eta is not None else ""
            line = (
                f"\r{stream} [{'#' * filled}{'.' * (width - filled)}] {rows:,}/{total:,} rows "
                f"{rate:,.0f} rows/s {eta_text}"
            )
            print(line.ljust(100), end="", file=self._err, flush=True)
            self._bar = True
        else:
            of = f"/{total:,}" if total else ""
            eta_text = f", ETA {eta:.0f} s" if eta is not None else ""
            print(
                f"{stream}: {rows:,}{of} rows, {rate:,.0f} rows/s{eta_text}",
                file=self._err,
                flush=True,
            )

    def _clear_bar(self) -> None:
        if self._bar:
            print(file=self._err, flush=True)
            self._bar = False


def _install_stop(stop: asyncio.Event) -> Callable[[], None]:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def remove() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)

    return remove


async def _run(args: argparse.Namespace) -> int:
    mapping = _mapping(args)
    printer = _Printer(args.json)
    stop = asyncio.Event()
    remove = _install_stop(stop)
    try:
        async with exchange_client(mapping) as client:
            runner = AdapterRunner(mapping, client=client, validators=VALIDATORS, on_event=printer)
            summary = await runner.run(once=args.once, stop=stop)
    finally:
        remove()
    if args.json:
        line = {"event": "summary", "ok": summary.ok, "stopped": stop.is_set()}
        print(json.dumps({**line, **summary.as_dict()}, ensure_ascii=False, default=str))
    if not args.json and not args.once and stop.is_set():
        print("stopped; state committed", file=sys.stderr)
    return 0 if summary.ok else 1


async def _rejects(args: argparse.Namespace) -> int:
    mapping = load_mapping(args.config)
    if args.stream is not None:
        mapping.stream(args.stream)  # raises StreamNotFound
    try:
        store = StateStore.open_read_only(mapping.state_path)
    except StateStoreUnusable:
        if mapping.state_path.exists():
            raise
        emit(args, {"rejects": [], "write_rejects": []}, "no rejects (the adapter has not run)")
        return 0
    with store:
        rows = store.list_rejects(args.stream, limit=args.limit)
        total = store.reject_count(args.stream)
        refused = [] if args.stream else store.list_write_rejects(limit=args.limit)
    rejects = [
        {
            "stream": r.stream,
            "key": r.key,
            "location": r.location,
            "reason": r.reason,
            "field": r.field,
            "message": r.message,
            "count": r.count,
            "first_seen": r.first_seen.isoformat(),
            "last_seen": r.last_seen.isoformat(),
        }
        for r in rows
    ]
    write_rejects = [
        {
            "dataset": w.command.dataset,
            "key": w.command.key,
            "command_id": w.command.id,
            "reason": w.reason,
            "message": w.message,
            "count": w.count,
        }
        for w in refused
    ]
    lines = [
        f"{r['stream']:<16} {r['key'] or '-':<20} {r['reason']:<18} {r['field'] or '-':<14} "
        f"seen {r['count']}x  {r['location']}: {r['message']}"
        for r in rejects
    ]
    lines += [
        f"write-back {w['dataset']} {w['key']} {w['reason']} seen {w['count']}x: {w['message']}"
        for w in write_rejects
    ]
    human = "\n".join(lines) if lines else "no rejects"
    if total > len(rejects):
        human += f"\n({total} rejects in all; showing {len(rejects)})"
    emit(args, {"rejects": rejects, "total": total, "write_rejects": write_rejects}, human)
    return 0


async def _replay(args: argparse.Namespace) -> int:
    mapping = _mapping(args)
    async with exchange_client(mapping) as client:
        reports, applied, left = await replay_adapter(mapping, client, validators=VALIDATORS)
    streams = {
        name: {
            "published": r.upserts,
            "deleted": r.deletes,
            "cleared": r.cleared,
            "still_rejected": left[name],
        }
        for name, r in reports.items()
    }
    lines = [
        f"{name}: {s['cleared']} rejects now pass ({s['published']} published), "
        f"{s['still_rejected']} still rejected"
        for name, s in streams.items()
    ]
    payload: dict[str, Any] = {"streams": streams}
    if applied is not None:
        payload["write_back"] = {"applied": len(applied.applied), "still_refused": applied.rejected}
        lines.append(
            f"write-back: {len(applied.applied)} refused commands now applied, "
            f"{len(applied.rejected)} still refused"
        )
    emit(args, payload, "\n".join(lines) or "nothing to replay")
    return 0
