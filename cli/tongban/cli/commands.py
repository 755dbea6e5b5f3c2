"""What each ``tongban`` subcommand does. Parsing and exit codes live in ``__init__``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import signal
import sys

from tongban.cli.common import emit, running_loop_name, settings_from_args
from tongban.exchange.datadir import ca_certificate_pem, init_data_dir, is_initialised
from tongban.exchange.db.database import Database, migrate_database
from tongban.exchange.departments import CallLimits, DepartmentStore, Level, Status
from tongban.exchange.enrolment import enrol_demo_departments, enrol_department
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.sharing.storage import storage_usage
from tongban.exchange.sizes import format_size
from tongban.signing.clock import SystemClock

__all__ = ["run"]


async def run(args: argparse.Namespace) -> int:
    if args.command == "init":
        return await _init(args)
    if args.command == "migrate":
        return await _migrate(args)
    if args.command == "serve":
        return await _serve(args)
    if args.command == "demo":
        from tongban.cli.demo import run_demo

        return await run_demo(args)
    if args.command == "dept":
        return await _dept(args)
    if args.command == "ca":
        return await _ca_export(args)
    if args.command == "audit":
        from tongban.cli.audit_cmds import run_audit

        return await run_audit(args)
    if args.command in ("licence", "seal"):
        from tongban.cli import licence_cmds

        if args.command == "licence":
            return await licence_cmds.run_licence(args)
        return await licence_cmds.run_seal(args)
    if args.command == "item":
        from tongban.cli.item_cmds import run_item

        return await run_item(args)
    if args.command == "case":
        from tongban.cli.case_cmds import run_case

        return await run_case(args)
    if args.command == "supervision":
        from tongban.cli.supervision_cmds import run_supervision

        return await run_supervision(args)
    if args.command == "package":
        from tongban.cli.package_cmds import run_package

        return await run_package(args)
    if args.command == "rating":
        from tongban.cli.rating_cmds import run_rating

        return await run_rating(args)
    if args.command == "adapter":
        from tongban.cli.adapter_cmds import run_adapter

        return await run_adapter(args)
    if args.command in ("web", "subject"):
        from tongban.cli.web_cmds import run_web

        return await run_web(args)
    if args.command == "peer":
        from tongban.cli.peer_cmds import run_peer

        return await run_peer(args)
    if args.command == "key":
        from tongban.cli.key_cmds import run_key

        return await run_key(args)
    if args.command == "witness":
        from tongban.cli.witness_cmds import run_witness

        return await run_witness(args)
    if args.command in ("catalogue", "query", "grant", "subscription"):
        from tongban.cli.sharing_cmds import run_sharing

        return await run_sharing(args)
    raise InvalidArgument(f"Unknown command {args.command!r}.")  # argparse prevents this


async def _init(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    result = await asyncio.to_thread(init_data_dir, settings, SystemClock().now())
    verb = "initialised" if result.created else "already initialised"
    emit(
        args,
        {
            "created": result.created,
            "data_dir": str(result.data_dir),
            "ca_fingerprint": result.ca_fingerprint,
            "node_fingerprint": result.node_fingerprint,
        },
        f"{result.data_dir}: {verb}\n  root CA sha256 {result.ca_fingerprint}",
    )
    return 0


async def _migrate(args: argparse.Namespace) -> int:
    report = await migrate_database(settings_from_args(args))
    applied = ", ".join(report.applied) or "none (up to date)"
    login = (
        "tongban_node logs in with the node's password"
        if report.node_login
        else "tongban_node has no login of its own: nodes start their sessions as it from "
        "the migrating login (see the warning above)"
    )
    emit(
        args,
        {
            "database": report.where,
            "applied": list(report.applied),
            "node_login": report.node_login,
        },
        f"{report.where}: migrations applied: {applied}\n  {login}",
    )
    return 0


GC_THRESHOLDS = (50_000, 20, 100)
"""The serving process's collector thresholds (CPython's defaults: 700, 10, 10)."""


def settle_garbage_collector() -> None:
    """Once the node is up: move everything made so far (modules, caches, the node's
    objects) out of the collector's sight (``gc.freeze``), and collect young objects far
    less often. Each call makes thousands of short-lived objects; at the default
    thresholds the collector ran a young collection every few calls and an old one every
    few hundred, walking everything the node holds: on the 2-core machine an audited
    query's p99 went from ~125 to ~65 ms and its rate up ~15% with the collector off
    (``bench --quick``). Cycles are still collected, so memory stays bounded."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


OPEN_FILES = 65_536
"""Open files ``serve`` asks for (its soft limit), as far as the hard limit allows."""


def raise_open_files_limit(wanted: int = OPEN_FILES) -> int:
    """Raise this process's soft limit on open files towards ``wanted``, never above the
    hard limit nor below where it is; return the limit now. Every client connection is a
    file, and a service manager's usual soft limit (1,024) would let a few hundred
    department systems, or one that leaks channels, leave the node unable to accept a
    connection or open a database one. Worker processes inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


async def _serve(args: argparse.Namespace) -> int:
    from tongban.cli.workers import run_workers, usable_cores

    raise_open_files_limit()
    requested: int | None = getattr(args, "workers", None)
    if (requested or usable_cores()) > 1:
        return await run_workers(args, requested)
    settings = settings_from_args(args, grpc_listen=args.grpc_listen, http_listen=args.http_listen)
    clock = SystemClock()
    if not is_initialised(settings.data_dir):
        await asyncio.to_thread(init_data_dir, settings, clock.now())
    from tongban.exchange.node import Node  # only serve needs the node (~0.8 s to import)

    node = Node(settings, clock=clock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    try:
        enrolled = []
        if args.demo:
            # The registry is written with the owner's login; the node's may only read it.
            async with await Database.open(settings, pool_size=1, owner=True) as owner:
                enrolled = await enrol_demo_departments(owner, settings, clock.now())
        bundles = settings.data_dir / "bundles"
        settle_garbage_collector()
        emit(
            args,
            {
                "event": "ready",
                "node": settings.node_name,
                "grpc": f"{settings.grpc_listen.host}:{node.grpc_port}",
                "http": f"{settings.http_listen.host}:{node.http_port}",
                "data_dir": str(settings.data_dir),
                "bundles": str(bundles),
                "enrolled": [dept.code for dept, _ in enrolled],
                "event_loop": running_loop_name(),
                "open_files": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            },
            f"tongban node {settings.node_name} ready: gRPC {settings.grpc_listen.host}:"
            f"{node.grpc_port} (mutual TLS), HTTP http://{settings.http_listen.host}:"
            f"{node.http_port}/healthz\n  department bundles in {bundles}"
            + (f" (new: {', '.join(d.code for d, _ in enrolled)})" if enrolled else "")
            + "\n  stop with Ctrl-C",
        )
        await stop.wait()
        # A second signal while draining stops at once.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(node.stop(grace=0)))
    finally:
        await node.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    emit(args, {"event": "stopped"}, "")
    return 0


async def _dept(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, grpc_listen=getattr(args, "grpc_endpoint", None))
    # Changes to the registry are made with the schema owner's login: the node's role
    # (tongban_node) may only read it (migration 0021).
    owner = args.dept_command != "list"
    async with await Database.open(settings, pool_size=2, owner=owner) as db:
        store = DepartmentStore(db.pool)
        if args.dept_command == "add-demo":
            enrolled = await enrol_demo_departments(db, settings, SystemClock().now())
            emit(
                args,
                {
                    "enrolled": [dept.code for dept, _ in enrolled],
                    "bundles": str(settings.data_dir / "bundles"),
                },
                f"registered {', '.join(d.code for d, _ in enrolled) or 'nothing new'}; "
                f"bundles in {settings.data_dir / 'bundles'}",
            )
            return 0
        if args.dept_command == "add":
            department, bundle = await enrol_department(
                db,
                settings,
                code=args.code,
                name=args.name,
                level=Level(args.level),
                parent=args.parent,
                roles=args.role,
                out=args.out,
                now=SystemClock().now(),
            )
            emit(
                args,
                {"department": department.to_dict(), "bundle": str(bundle)},
                f"registered {department.code} ({department.name}); bundle written to {bundle}",
            )
        elif args.dept_command == "list":
            departments = await store.list()
            lines = [
                f"{d.code:<20} {d.level.value:<9} {d.status.value:<10} "
                f"{','.join(sorted(d.roles)) or '-':<8} {d.parent or '-':<12} {d.name}"
                for d in departments
            ]
            header = f"{'CODE':<20} {'LEVEL':<9} {'STATUS':<10} {'ROLES':<8} {'PARENT':<12} NAME"
            emit(
                args,
                {"departments": [d.to_dict() for d in departments]},
                "\n".join([header, *lines]) if lines else "no departments registered",
            )
        elif args.dept_command == "roles":
            department = await store.get(args.code)
            if args.add or args.remove:
                wanted = (department.roles | set(args.add)) - set(args.remove)
                department = await store.set_roles(args.code, sorted(wanted))
            emit(
                args,
                {"department": department.to_dict()},
                f"{department.code}: {', '.join(sorted(department.roles)) or 'no extra roles'}",
            )
        elif args.dept_command == "limits":
            department = await store.get(args.code)
            own = department.limits
            if any(hasattr(args, n) for n in ("concurrent", "per_second", "subscriptions")):
                own = CallLimits(
                    getattr(args, "concurrent", own.concurrent),
                    getattr(args, "per_second", own.per_second),
                    getattr(args, "subscriptions", own.subscriptions),
                )
                department = await store.set_limits(args.code, own)
            if hasattr(args, "stored"):
                department = await store.set_storage_quota(args.code, args.stored)
            shown = {
                "concurrent": (own.concurrent, settings.dept_max_concurrent_calls),
                "per_second": (own.per_second, settings.dept_calls_per_second),
                "subscriptions": (own.subscriptions, settings.dept_max_subscriptions),
            }
            lines = [
                f"{name:<14} {f'{value:g}' if value is not None else f'{default:g} (default)'}"
                for name, (value, default) in shown.items()
            ]
            (usage,) = await storage_usage(db.pool, args.code)
            quota = usage.quota_or(settings.dept_max_stored_bytes)
            which = " (default)" if usage.quota_bytes is None else ""
            lines.append(f"{'stored':<14} {format_size(quota)}{which}")
            share = f" ({usage.stored_bytes / quota:.0%})" if quota else ""
            lines.append(
                f"{'in use':<14} {format_size(usage.stored_bytes)}{share}"
                f" in {usage.datasets} dataset{'' if usage.datasets == 1 else 's'}"
            )
            emit(
                args,
                {
                    "department": department.to_dict(),
                    "storage": {**usage.to_dict(), "quota_bytes": quota},
                },
                "\n".join(lines),
            )
        else:
            status = Status.SUSPENDED if args.dept_command == "suspend" else Status.ACTIVE
            department = await store.set_status(args.code, status)
            emit(
                args,
                {"department": department.to_dict()},
                f"{department.code} is now {department.status.value}",
            )
    return 0


async def _ca_export(args: argparse.Namespace) -> int:
    pem = ca_certificate_pem(settings_from_args(args))
    if args.json:
        emit(args, {"certificate": pem.decode()}, "")
    else:
        sys.stdout.write(pem.decode())
    return 0
