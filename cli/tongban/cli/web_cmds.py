"""``tongban web login-link`` and ``tongban subject link``: one-time links to the web
console (docs/web.md), written straight to the node's database by an operator on its host;
and ``tongban subject authorise``: a holder's one-time authorisation code (授权用证,
docs/personal-data.md), made by an operator at the holder's request."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from tongban.cli.common import emit, settings_from_args
from tongban.exchange.audit.log import AccessLog, SubjectHasher
from tongban.exchange.datadir import load_log_key
from tongban.exchange.db.database import Database
from tongban.exchange.departments import DepartmentStore, Status
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.licensing.authorisations import authorise
from tongban.exchange.settings import Settings
from tongban.exchange.web.sessions import LINK_LIFETIME, LinkStore
from tongban.licence import BUILTIN_REGISTRY
from tongban.signing.clock import SystemClock

__all__ = ["add_parsers", "run_web"]


def _minutes(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 24 * 60:
        raise argparse.ArgumentTypeError("give 1 to 1440 minutes")
    return int(value)


def _hours(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 720:
        raise argparse.ArgumentTypeError("give 1 to 720 hours")
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
    authorise = subject_sub.add_parser(
        "authorise",
        parents=[common],
        help="a one-time code with which a holder lets one department see the personal "
        "claims of their licence, for one purpose and case (授权用证)",
    )
    authorise.add_argument("holder_id", metavar="ID", help="the holder's USCC or citizen id")
    authorise.add_argument("--department", required=True, help="who may use it, e.g. approval")
    authorise.add_argument("--purpose", required=True, help="e.g. 食品经营许可审批")
    authorise.add_argument("--case", dest="case_id", required=True, help="the case (办件编号)")
    authorise.add_argument("--licence-type", help="only this licence type (default: any)")
    authorise.add_argument(
        "--hours", type=_hours, default=24, help="how long it stays valid (default 24, max 720)"
    )


def _base_url(settings: Settings) -> str:
    if settings.public_url:
        return settings.public_url.rstrip("/")
    listen = settings.http_listen
    host = settings.node_hostnames[0] if listen.host in ("0.0.0.0", "::") else listen.host  # noqa: S104
    return f"http://{host}:{listen.port}"


async def _authorise(args: argparse.Namespace, settings: Settings) -> int:
    licence_type = args.licence_type.strip() if args.licence_type else None
    if licence_type:
        BUILTIN_REGISTRY.get(licence_type)  # LicenceTypeUnknown lists the known ones
    now = SystemClock().now()
    async with await Database.open(settings, pool_size=1) as db:
        log = AccessLog(db.pool)
        await log.start()
        try:
            code, made = await authorise(
                db.pool, log, SubjectHasher(load_log_key(settings)), node=settings.node_name,
                by="operator", holder_id=args.holder_id, department=args.department,
                purpose=args.purpose, case_id=args.case_id, licence_type=licence_type,
                valid_for=timedelta(hours=args.hours), now=now,
            )  # fmt: skip
        finally:
            await log.stop()
    emit(
        args,
        {
            "code": code,
            "id": str(made.id),
            "department": made.department,
            "purpose": made.purpose,
            "case_id": made.case_id,
            "licence_type": made.licence_type,
            "expires": made.expires_at.isoformat(),
        },
        f"{code}\n  for {made.department}, purpose {made.purpose}, case {made.case_id}"
        f"{', ' + made.licence_type if made.licence_type else ''}; one use, valid until "
        f"{made.expires_at:%Y-%m-%d %H:%M} UTC. Give it to the holder; it is not shown again.",
    )
    return 0


async def run_web(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.command == "subject" and args.subject_command == "authorise":
        return await _authorise(args, settings)
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
