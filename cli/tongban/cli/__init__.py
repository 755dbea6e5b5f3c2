"""The ``tongban`` command.

Exit codes: 0 success, 1 the command failed (a message and a reason code say why),
2 usage error. Every command takes ``--json`` for machine-readable output on stdout: one
JSON object (or one per line for streaming commands such as ``demo``); failures are
``{"ok": false, "reason": ..., "message": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from tongban.errors import TongbanError
from tongban.exchange.departments import Level
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.settings import parse_listen_address
from tongban.exchange.sizes import parse_size

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors honour --json and always exit 2."""

    def error(self, message: str) -> NoReturn:
        if "--json" in sys.argv[1:]:
            out = {"ok": False, "reason": "USAGE", "message": message}
            print(json.dumps(out, ensure_ascii=False))
        else:
            self.print_usage(sys.stderr)
            print(f"tongban: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _size(text: str) -> int | None:
    """A storage quota: a size such as 50GiB, or 'default' (the node's setting) as None."""
    if text == "default":
        return None
    try:
        return parse_size(text)
    except InvalidArgument as e:
        raise argparse.ArgumentTypeError(
            f"{e.message} Or 'default' for the node's setting."
        ) from None


def _limit(kind: type[int] | type[float]) -> Callable[[str], float | None]:
    """A limit's parser: a number, or 'default' (the node's setting) as None."""

    def parse(text: str) -> float | None:
        if text == "default":
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a number; give one, or 'default' for the node's setting"
            ) from None

    return parse


def _listen(value: str) -> str:
    try:
        parse_listen_address(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"invalid address {value!r}: {e}") from None
    return value


def _workers(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        count = 0
    if not 1 <= count <= 64:
        raise argparse.ArgumentTypeError(f"--workers takes 1 to 64 processes, not {value!r}")
    return count


def _data_dir(value: str) -> Path:
    if not value.strip() or "\x00" in value:
        raise argparse.ArgumentTypeError("the data directory must be a non-empty path")
    return Path(value)


_COMMAND_MODULES = {
    "catalogue": "sharing_cmds",
    "query": "sharing_cmds",
    "grant": "sharing_cmds",
    "subscription": "sharing_cmds",
    "audit": "audit_cmds",
    "licence": "licence_cmds",
    "seal": "licence_cmds",
    "item": "item_cmds",
    "case": "case_cmds",
    "supervision": "supervision_cmds",
    "package": "package_cmds",
    "rating": "rating_cmds",
    "adapter": "adapter_cmds",
    "web": "web_cmds",
    "subject": "web_cmds",
    "key": "key_cmds",
    "witness": "witness_cmds",
    "peer": "peer_cmds",
}
"""The commands each ``tongban.cli.*_cmds`` module adds (its ``add_parsers``). Those
modules import what their commands run (the client, the adapters' sources, the audit
log, PDF sealing...), so the parser imports only the one the command line names: a
command starts in a fraction of the time all of them took (about 1.5 s on the reference
machine). With no command, or one not here, all are added (``--help`` lists them all;
a mistyped command is told the choices)."""


_OWN_COMMANDS = frozenset({"init", "migrate", "serve", "demo", "dept", "ca"})
"""The commands ``_build_parser`` defines itself."""


def _build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``tongban`` parser; given the ``command`` the command line names, only the
    subcommands of that one beside the few defined here."""
    common = _Parser(add_help=False)
    common.add_argument(
        "--data-dir",
        type=_data_dir,
        default=None,
        help="data directory (default: $TONGBAN_DATA_DIR or ./var/tongban)",
    )
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")

    parser = _Parser(
        prog="tongban",
        description="Tongban exchange node: share data, enter once, verify licences, audit.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser(
        "init", parents=[common], help="create the data dir, root CA and node certificate"
    )

    sub.add_parser(
        "migrate",
        parents=[common],
        help="apply the database migrations as the schema's owner "
        "(TONGBAN_MIGRATION_DATABASE_URL) and give tongban_node its login",
    )

    serve = sub.add_parser("serve", parents=[common], help="run an exchange node")
    serve.add_argument("--grpc-listen", type=_listen, help="gRPC address (default 127.0.0.1:50051)")
    serve.add_argument("--http-listen", type=_listen, help="HTTP address (default 127.0.0.1:8080)")
    serve.add_argument(
        "--demo", action="store_true", help="register the story's departments and write bundles"
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        default=None,
        metavar="N",
        help="run N node processes sharing the ports (default: one per usable core, fewer "
        "if the database cannot take their connections)",
    )

    demo = sub.add_parser("demo", parents=[common], help="run the end-to-end story on a fresh node")
    demo.set_defaults(demo=True)

    dept = sub.add_parser("dept", help="manage the department registry")
    dept_sub = dept.add_subparsers(dest="dept_command", required=True, parser_class=_Parser)
    add = dept_sub.add_parser(
        "add", parents=[common], help="register a department, write its bundle"
    )
    add.add_argument("code", help="department code, e.g. samr-county")
    add.add_argument("--name", required=True, help="department name, e.g. 县市场监督管理局")
    add.add_argument("--level", required=True, choices=[level.value for level in Level])
    add.add_argument("--parent", help="code of the parent department")
    add.add_argument(
        "--role",
        action="append",
        default=[],
        choices=["auditor", "covert"],
        help="extra role: auditor (reads the access log), covert (may declare covert cases)",
    )
    add.add_argument(
        "--out", type=_data_dir, help="bundle directory (default DATA_DIR/bundles/CODE)"
    )
    add.add_argument("--grpc-endpoint", type=_listen, help="node address written into the bundle")
    dept_sub.add_parser("list", parents=[common], help="list registered departments")
    add_demo = dept_sub.add_parser(
        "add-demo",
        parents=[common],
        help="register the story's departments not registered yet and write their bundles "
        "(what serve --demo does)",
    )
    add_demo.add_argument(
        "--grpc-endpoint", type=_listen, help="node address written into the bundles"
    )
    roles = dept_sub.add_parser(
        "roles", parents=[common], help="show, give or take a department's extra roles"
    )
    roles.add_argument("code")
    for option, what in (("--add", "give"), ("--remove", "take away")):
        roles.add_argument(
            option,
            action="append",
            default=[],
            choices=["auditor", "covert"],
            metavar="ROLE",
            help=f"{what} a role: auditor or covert (repeatable)",
        )
    suspend = dept_sub.add_parser("suspend", parents=[common], help="refuse a department's calls")
    suspend.add_argument("code")
    activate = dept_sub.add_parser("activate", parents=[common], help="lift a suspension")
    activate.add_argument("code")
    limits = dept_sub.add_parser(
        "limits",
        parents=[common],
        help="show or set a department's own call limits (fairness; 'default' resets one)",
    )
    limits.add_argument("code")
    # An option not given is absent from the namespace (SUPPRESS): that limit is kept.
    for option, kind, what in (
        ("--concurrent", int, "calls in progress at once"),
        ("--per-second", float, "calls started per second"),
        ("--subscriptions", int, "open subscriptions"),
    ):
        limits.add_argument(
            option, type=_limit(kind), default=argparse.SUPPRESS, help=f"{what}, or 'default'"
        )
    limits.add_argument(
        "--stored",
        type=_size,
        default=argparse.SUPPRESS,
        help="what its datasets may hold (storage quota), such as 50GiB, or 'default'",
    )

    everything = command not in _COMMAND_MODULES and command not in _OWN_COMMANDS
    for module in dict.fromkeys(_COMMAND_MODULES.values()):
        if everything or module == _COMMAND_MODULES.get(command or ""):
            importlib.import_module(f"tongban.cli.{module}").add_parsers(sub, common, _Parser)

    ca = sub.add_parser("ca", help="the exchange root CA")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True, parser_class=_Parser)
    ca_sub.add_parser("export", parents=[common], help="print the root CA certificate (PEM)")
    return parser


def _loop_factory(command: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop of ``tongban serve`` (and so of its workers): uvloop unless
    ``TONGBAN_EVENT_LOOP=asyncio``; the node's settings refuse any other value at start.
    Every other command runs on the standard library's loop (None)."""
    if command != "serve" or os.environ.get("TONGBAN_EVENT_LOOP", "uvloop") != "uvloop":
        return None
    import uvloop

    return uvloop.new_event_loop


def _failed(error: TongbanError, as_json: bool) -> int:
    if as_json:
        print(json.dumps(error.to_dict(), ensure_ascii=False), flush=True)
    else:
        print(f"tongban: {error.diagnostics()}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tongban`` command; return its exit code."""
    # gRPC core logs every failed TLS handshake and fork at INFO on stderr; the node
    # reports what matters itself (metrics, log lines). It reads this when gRPC is first
    # imported, hence before the parser (whose commands import the client) is built.
    # GRPC_VERBOSITY set by the user still wins.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    argv = sys.argv[1:] if argv is None else list(argv)
    named = next((a for a in argv if not a.startswith("-")), None)
    args = _build_parser(named).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose or args.command == "serve" else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from tongban.cli import commands  # imported late: keeps --help fast
    from tongban.exchange.db import trouble

    try:
        with asyncio.Runner(loop_factory=_loop_factory(args.command)) as runner:
            result: Any = runner.run(commands.run(args))
    except TongbanError as e:
        return _failed(e, args.json)
    except trouble.DATABASE_TROUBLE as e:
        # Out of disk, read-only, gone mid-command: the command's transaction rolled back.
        return _failed(trouble.refusal(e), args.json)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`tongban ... | head`): stop quietly, as Unix tools do.
        # Point stdout at /dev/null so the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
