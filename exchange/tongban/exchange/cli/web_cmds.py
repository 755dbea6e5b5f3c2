"""``tongban web login-link`` and ``tongban subject link``: one-time links to the web
console (docs/web.md), written straight to the node's database by an operator on its host."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from tongban.exchange.cli.commands import emit, settings_from_args
from tongban.exchange.db.database import Database
from tongban.exchange.departments import DepartmentStore, Status
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.settings import Settings
from tongban.exchange.web.sessions import LINK_LIFETIME, LinkStore
from tongban.signing.clock import SystemClock

__all__ = ["add_parsers", "run_web"]


def _minutes(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 24 * 60:
        raise argparse.ArgumentTypeError("give 1 to 1440 minutes")
    return int(value)


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, parser_class: type[argparse.ArgumentParser]
) -> None:
    lifetime = parser_class(add_help=False)
    lifetime.add_argument(
        "--minutes",
        type=_minutes,
        default=int(LINK_LIFETIME.total_seconds() // 60),
        help="how long the unused link stays valid (default 30)",
    )
    web = sub.add_parser("web", help="the web console")
    web_sub = web.add_subparsers(dest="web_command", required=True, parser_class=parser_class)
    login = web_sub.add_parser(
        "login-link",
        parents=[common, lifetime],
        help="a one-time sign-in link for a department's officer (auditors: the audit pages)",
    )
    login.add_argument("department", help="department code, e.g. audit")
    login.add_argument("--officer", help="the officer's id, written to the log with each view")

    subject = sub.add_parser("subject", help="data subjects (citizens, enterprises)")
    subject_sub = subject.add_subparsers(
        dest="subject_command", required=True, parser_class=parser_class
    )
    link = subject_sub.add_parser(
        "link",
        parents=[common, lifetime],
        help="a one-time link to the subject view, for a subject whose identity was checked",
    )
    link.add_argument("subject_id", metavar="ID", help="USCC or citizen id")


def _base_url(settings: Settings) -> str:
    if settings.public_url:
        return settings.public_url.rstrip("/")
    listen = settings.http_listen
    host = settings.node_hostnames[0] if listen.host in ("0.0.0.0", "::") else listen.host  # noqa: S104
    return f"http://{host}:{listen.port}"


async def run_web(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    now = SystemClock().now()
    lifetime = timedelta(minutes=args.minutes)
    async with await Database.open(settings, pool_size=1) as db:
        links = LinkStore(db.pool)
        if args.command == "web":
            department = await DepartmentStore(db.pool).find(args.department)
            if department is None or department.status is not Status.ACTIVE:
                raise InvalidArgument(
                    f"No active department {args.department!r}; see `tongban dept list`."
                )
            officer = (args.officer or "").strip() or None
            token = await links.issue(
                "login", department.code, now, officer=officer, lifetime=lifetime
            )
            kind, whom = "login", f"{department.code} ({department.name})"
        else:
            subject_id = args.subject_id.strip()
            if not 1 <= len(subject_id) <= 64:
                raise InvalidArgument("Give the subject's id (USCC or citizen id).")
            token = await links.issue("subject", subject_id, now, lifetime=lifetime)
            kind, whom = "subject", subject_id
    url = f"{_base_url(settings)}/console/link/{kind}?token={token}"
    expires = now + lifetime
    emit(
        args,
        {"url": url, "kind": kind, "expires": expires.isoformat()},
        f"{url}\n  one-time link for {whom}, valid until {expires:%Y-%m-%d %H:%M} UTC",
    )
    return 0
