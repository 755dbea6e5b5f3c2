"""What every ``tongban`` command shares: output, settings, the department options and
client, the demo's data dir, listings and times. The command modules import this, not
``commands``, so ``commands`` can dispatch to them without an import circle."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, overload

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from tongban.cli.wire_json import message_json
from tongban.client import Bundle, ExchangeClient
from tongban.exchange.db.embedded import temp_root
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.settings import Settings, load_settings

__all__ = [
    "add_utc_offset",
    "department_client",
    "department_options",
    "emit",
    "emit_listing",
    "fresh_demo_dir",
    "local_time",
    "message_dict",
    "office_zone",
    "running_loop_name",
    "settings_from_args",
]


def emit(args: argparse.Namespace, payload: dict[str, Any], human: str) -> None:
    if args.json:
        print(json.dumps({"ok": True, **payload}, ensure_ascii=False, default=str), flush=True)
    elif human:
        print(human, flush=True)


def department_options(
    parser_class: type[argparse.ArgumentParser], *, required: bool = True
) -> argparse.ArgumentParser:
    """A parent parser with --as BUNDLE, --endpoint and --officer: the options of every
    command that calls the node as a department (``required=False``: the operator's view
    without --as)."""
    parent = parser_class(add_help=False)
    parent.add_argument(
        "--as",
        dest="bundle",
        type=Path,
        required=required,
        metavar="BUNDLE",
        help="act as the department of this bundle directory"
        if required
        else "act as this department (default: operator view)",
    )
    parent.add_argument("--endpoint", help="node address (default: the bundle's)")
    parent.add_argument("--officer", help="officer id (工号) sent with the calls")
    return parent


def department_client(args: argparse.Namespace) -> ExchangeClient:
    """The client of the department of ``args.bundle`` (see ``department_options``)."""
    return ExchangeClient(Bundle.load(args.bundle), target=args.endpoint, officer_id=args.officer)


def settings_from_args(args: argparse.Namespace, **extra: Any) -> Settings:
    """Settings from the environment, with --data-dir and ``extra`` options on top."""
    return load_settings(data_dir=args.data_dir, **extra)


def fresh_demo_dir(given: Path | None) -> Path:
    """Return the demo's data dir: ``given`` if absent or empty, else a new temporary one."""
    if given is None:
        return temp_root("tongban-demo-")  # as root, PostgreSQL runs as another user
    if given.exists() and any(given.iterdir()):
        raise InvalidArgument(
            f"The demo needs a fresh data dir and {given} is not empty; give a new path."
        )
    return given


def add_utc_offset(parser: argparse.ArgumentParser) -> None:
    """``--utc-offset HOURS``: the zone a command shows times in (see ``office_zone``)."""
    parser.add_argument(
        "--utc-offset",
        type=int,
        choices=range(-12, 15),
        default=8,
        metavar="HOURS",
        help="show times at this offset from UTC (default 8, as the offices keep them)",
    )


def office_zone(args: argparse.Namespace) -> timezone:
    """The zone of ``--utc-offset``."""
    return timezone(timedelta(hours=args.utc_offset))


def local_time(at: datetime, zone: timezone) -> str:
    """An aware instant as the minute it is in ``zone``."""
    return at.astimezone(zone).strftime("%Y-%m-%d %H:%M")


@overload
def message_dict(value: Message) -> dict[str, Any]: ...
@overload
def message_dict(value: object, message: type[Message]) -> dict[str, Any]: ...
def message_dict(value: object, message: type[Message] | None = None) -> dict[str, Any]:
    """The JSON the ``--json`` output carries for a message, or for a typed value of the
    client and the ``message`` it mirrors: field names as in the ``.proto``, every field
    present. Raises TypeError for a typed value without its message."""
    if isinstance(value, Message):
        return MessageToDict(
            value, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    if message is None:
        raise TypeError(f"say which message a {type(value).__name__} mirrors")
    return message_json(value, message, every_field=True)


def emit_listing(
    args: argparse.Namespace,
    key: str,
    found: Sequence[object],
    message: type[Message],
    lines: list[str],
    *,
    more: bool,
    empty: str,
) -> None:
    """Emit a page of a listing: ``found`` (typed values mirroring ``message``) under
    ``key`` (and ``more``) as JSON, or its ``lines``, a note to raise ``--limit`` when
    there is more, or ``empty``."""
    if more:
        lines = [*lines, f"… more; raise --limit (now {args.limit}) to see them"]
    emit(
        args,
        {key: [message_dict(m, message) for m in found], "more": more},
        "\n".join(lines) or empty,
    )


def running_loop_name() -> str:
    """``uvloop`` or ``asyncio``: the event loop this process runs on
    (``TONGBAN_EVENT_LOOP``), as the ready line reports it."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"
