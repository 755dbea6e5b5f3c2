"""What every ``tongban`` command shares: output, settings, the department options and
client, the demo's data dir. The command modules import this, never each other, so
``commands`` can dispatch to them without an import circle."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tongban.client import Bundle, ExchangeClient
from tongban.exchange.db.embedded import temp_root
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.settings import Settings, load_settings

__all__ = [
    "department_client",
    "department_options",
    "emit",
    "fresh_demo_dir",
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
