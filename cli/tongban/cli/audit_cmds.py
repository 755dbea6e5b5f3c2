"""``tongban audit``: the access log, read and verified directly from the node's database.

For operators and auditors on the node's host (``--data-dir``, as the other operator
commands). Departments with the auditor role use ``AuditService`` over gRPC instead.
A search or an export is an access-log entry itself (caller ``operator``), whatever its
filters, written before anything is read.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tongban.cli.common import emit, settings_from_args
from tongban.cli.witness_cmds import witness_key_argument, witnessed_summary
from tongban.exchange.audit.anomalies import find_anomalies
from tongban.exchange.audit.checkpoints import Checkpointer
from tongban.exchange.audit.covert import CovertCase, CovertCases
from tongban.exchange.audit.key_changes import key_at, key_schedule, read_key_changes
from tongban.exchange.audit.log import AccessLog, SubjectHasher
from tongban.exchange.audit.merkle import leaf_hash, verify_inclusion
from tongban.exchange.audit.note import NoteInvalid, open_checkpoint, parse_verifier_key
from tongban.exchange.audit.recorder import AccessRecorder
from tongban.exchange.audit.store import AuditStore, SearchFilters
from tongban.exchange.audit.verify import verify_log
from tongban.exchange.datadir import (
    first_log_verifier_key,
    load_log_key,
    load_log_signer,
    load_log_sm2_signer,
    log_origin,
    open_token,
)
from tongban.exchange.db.database import Database
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.licensing.follow_through import verify_follow_through
from tongban.exchange.licensing.ratings import verify_ratings
from tongban.exchange.settings import Settings
from tongban.signing.clock import SystemClock

__all__ = ["add_parsers", "run_audit"]


def _instant(value: str) -> datetime:
    """An ISO date or instant; one without a zone is given the offices' zone once the
    settings are read (``_in_zone``)."""
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO date or instant") from None


def _in_zone(value: datetime | None, zone: tzinfo) -> datetime | None:
    return value if value is None or value.tzinfo else value.replace(tzinfo=zone)


def _index(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not an entry index (0, 1, 2, ...)")
    return int(value)


def _quorum(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 16:
        raise argparse.ArgumentTypeError(f"--witnesses takes 1 to 16 witnesses, not {value!r}")
    return int(value)


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, parser_class: type[argparse.ArgumentParser]
) -> None:
    filters = parser_class(add_help=False)
    filters.add_argument("--subject", help="a subject id (USCC, citizen id); hashed, never stored")
    filters.add_argument("--caller", help="department code")
    filters.add_argument("--officer")
    filters.add_argument("--dataset")
    filters.add_argument("--purpose")
    filters.add_argument("--case", dest="case_id")
    filters.add_argument("--decision", choices=["allowed", "denied"])
    filters.add_argument(
        "--from", dest="start", type=_instant, help="ISO instant or date (office zone if none)"
    )
    filters.add_argument("--to", dest="end", type=_instant)

    audit = sub.add_parser("audit", help="the tamper-evident access log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, parser_class=parser_class)
    search = audit_sub.add_parser("search", parents=[common, filters], help="search entries")
    search.add_argument("--limit", type=int, default=100, help="at most this many (1-1000)")
    export = audit_sub.add_parser("export", parents=[common, filters], help="export entries")
    export.add_argument("--format", choices=["jsonl"], default="jsonl")
    export.add_argument("--out", type=Path, help="file to write (default: standard output)")
    audit_sub.add_parser("checkpoint", parents=[common], help="print the latest signed checkpoint")
    audit_sub.add_parser("key", parents=[common], help="print the log's verifier key")
    prove = audit_sub.add_parser(
        "prove", parents=[common], help="an entry with its inclusion proof"
    )
    prove.add_argument("index", type=_index)
    prove.add_argument("--size", type=_index, default=0, help="under the checkpoint of this size")
    verify = audit_sub.add_parser(
        "verify", parents=[common], help="recompute and check the whole log"
    )
    verify.add_argument(
        "--witnesses",
        type=_quorum,
        default=0,
        metavar="N",
        help="also require a checkpoint cosigned by N trusted witnesses (docs/audit-log.md)",
    )
    verify.add_argument(
        "--witness",
        action="append",
        type=witness_key_argument,
        metavar="VKEY",
        help="a trusted witness's key (repeatable; default: those of TONGBAN_WITNESSES)",
    )
    verify.add_argument(
        "--log-key",
        metavar="VKEY",
        help="the log's first checkpoint key, as published (default: the data dir's record "
        "of it, or the current key before any rotation); later keys are followed through "
        "their signed announcements",
    )
    trail = audit_sub.add_parser(
        "trail",
        parents=[common],
        help="a case across exchanges: local entries and each peer's, checked (federation)",
    )
    trail.add_argument("case", help="the case id")
    anomalies = audit_sub.add_parser("anomalies", parents=[common], help="unusual access patterns")
    anomalies.add_argument("--from", dest="start", type=_instant)
    anomalies.add_argument("--to", dest="end", type=_instant)
    covert = audit_sub.add_parser(
        "covert-cases", parents=[common], help="covert cases: the declaration in force of each"
    )
    covert.add_argument("--department", help="one department's cases (code)")
    covert.add_argument(
        "--all", dest="include_ended", action="store_true", help="also cases whose embargo ended"
    )


async def run_audit(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    # The offices' zone (TONGBAN_WORKING_UTC_OFFSET_HOURS): how instants are shown and
    # bare dates and times are read.
    zone = timezone(timedelta(hours=settings.working_utc_offset_hours))
    args.start = _in_zone(getattr(args, "start", None), zone)
    args.end = _in_zone(getattr(args, "end", None), zone)
    async with await Database.open(settings, pool_size=2) as db:
        store = AuditStore(db.pool)
        command = args.audit_command
        if command in ("search", "export"):
            if command == "search" and not 1 <= args.limit <= 1000:
                raise InvalidArgument(
                    "--limit must be 1 to 1,000; use `tongban audit export` for more."
                )
            subject = SubjectHasher(load_log_key(settings))(args.subject) if args.subject else None
            filters = SearchFilters(
                subject_hmac=subject,
                caller=args.caller,
                officer=args.officer,
                dataset=args.dataset,
                purpose=args.purpose,
                case_id=args.case_id,
                decision=args.decision,
                start=args.start,
                end=args.end,
            )
            # Logged before anything is read, whatever the filters, as the node logs its
            # auditors' reads: the operator reading everyone reads everyone.
            filters.where(1)
            await _log_read(db, settings.node_name, f"audit.{command}", filters)
            if command == "search":
                return await _search(args, store, filters, zone)
            return await _export(args, store, filters)
        if command == "trail":
            from tongban.cli.trail_cmds import run_trail

            case = SearchFilters(case_id=args.case)
            await _log_read(db, settings.node_name, "audit.trail", case)
            return await run_trail(args, settings, db, store, zone)
        if command == "covert-cases":
            return await _covert_cases(args, CovertCases(db.pool), zone)
        origin = log_origin(settings)
        token = await asyncio.to_thread(open_token)
        try:
            signer = load_log_signer(settings, token)
            checkpoints = Checkpointer(
                db.pool, signer, origin, SystemClock(), signer="cli",
                sm2=load_log_sm2_signer(settings),
            )  # fmt: skip
            return await _with_log_key(args, settings, db, store, checkpoints, origin)
        finally:
            if token is not None:
                token.close()


async def _with_log_key(
    args: argparse.Namespace,
    settings: Settings,
    db: Database,
    store: AuditStore,
    checkpoints: Checkpointer,
    origin: str,
) -> int:
    """``audit key|checkpoint|prove|verify``: what needs the log's checkpoint key."""
    command = args.audit_command
    if command == "key":
        emit(
            args,
            {"verifier_key": checkpoints.verifier_key, "origin": origin},
            checkpoints.verifier_key,
        )
    elif command == "checkpoint":
        row = await checkpoints.sign_now()
        if args.json:
            emit(
                args,
                {
                    "size": row.size,
                    "root": base64.b64encode(row.root).decode(),
                    "note": row.note,
                },
                "",
            )
        else:
            sys.stdout.write(row.note)
    elif command == "prove":
        row = await (checkpoints.at_size(args.size) if args.size else checkpoints.sign_now())
        entry = await store.entry(args.index)
        proof = await store.inclusion(args.index, row.size)
        epochs = key_schedule(
            origin, _first_key(args, settings, checkpoints), await read_key_changes(db.pool)
        )
        key = key_at(epochs, row.size).key
        signed = open_checkpoint(row.note, [(origin, key)], origin=origin)
        verify_inclusion(leaf_hash(entry.leaf), entry.index, signed.size, proof, signed.root)
        emit(
            args,
            {
                "entry": entry.to_dict(),
                "tree_size": row.size,
                "inclusion_proof": [base64.b64encode(h).decode() for h in proof],
                "checkpoint": row.note,
            },
            f"entry {entry.index} is in the log of {row.size:,} entries (proof of "
            f"{len(proof)} hashes verified against the signed checkpoint)\n"
            + json.dumps(entry.to_dict(), ensure_ascii=False, indent=2)
            + "\ninclusion proof:\n"
            + "\n".join(base64.b64encode(h).decode() for h in proof)
            + "\ncheckpoint:\n"
            + row.note,
        )
    elif command == "verify":

        def progress(done: int, total: int) -> None:
            if not args.json and sys.stderr.isatty():
                print(f"\rverified {done:,} of {total:,} entries", end="", file=sys.stderr)

        await checkpoints.sign_now()
        sm2 = load_log_sm2_signer(settings)
        report = await verify_log(
            db.pool,
            origin=origin,
            verifier=_first_key(args, settings, checkpoints),
            progress=progress,
            sm2_verifier=None if sm2 is None else sm2.public,
        )
        # The rows the log vouches for: ratings and their rectifications, deferred
        # materials and commitments, each against the entries its life wrote.
        ratings = await verify_ratings(db.pool)
        materials, _ = await verify_follow_through(db.pool)
        witnessed, said = (
            await witnessed_summary(args, settings, db, origin, checkpoints.public_key, report.size)
            if args.witnesses
            else (None, "")
        )
        emit(
            args,
            {
                "size": report.size,
                "root": base64.b64encode(report.root).decode(),
                "checkpoints": report.checkpoints,
                "sm2_checkpoints": report.sm2_checkpoints,
                "key_changes": report.key_changes,
                "seconds": round(report.seconds, 3),
                "ratings": ratings.ratings,
                "rectifications": ratings.rectifications,
                "case_materials": materials,
                "witnessed": witnessed,
            },
            f"\rthe access log is intact: {report.size:,} entries, {report.checkpoints} signed "
            f"checkpoints consistent"
            + (f" ({report.sm2_checkpoints} also SM2-signed)" if sm2 is not None else "")
            + (f", {report.key_changes} key rotations followed" if report.key_changes else "")
            + f", root {base64.b64encode(report.root).decode()} "
            f"({report.seconds:.1f} s); {ratings.ratings} ratings, "
            f"{ratings.rectifications} rectifications and {materials} deferred materials "
            "or commitments agree with it" + (f"; {said}" if said else ""),
        )
    elif command == "anomalies":
        end = args.end or SystemClock().now()
        start = args.start or end - timedelta(days=1)
        found = await find_anomalies(db.pool, start=start, end=end)
        emit(
            args,
            {
                "anomalies": [
                    {
                        "kind": a.kind,
                        "department": a.department,
                        "officer": a.officer,
                        "detail": a.detail,
                        "count": a.count,
                        "baseline": a.baseline,
                        "first_at": a.first_at.isoformat(),
                    }
                    for a in found
                ]
            },
            "\n".join(
                f"{a.kind:<14} {a.department:<12} {a.officer or '-':<12} {a.detail}" for a in found
            )
            or "no anomalies",
        )
    else:  # pragma: no cover - argparse limits the choices
        raise InvalidArgument(f"Unknown audit command {command!r}.")
    return 0


async def _log_read(db: Database, node: str, action: str, filters: SearchFilters) -> None:
    """Append the operator's read to the access log (caller ``operator``, as the other
    operator actions the command logs), and return once it is committed."""
    log = AccessLog(db.pool)
    await log.start()
    try:
        await log.append(
            [
                AccessRecorder(node).entry(
                    at=SystemClock().now(),
                    department="operator",
                    officer=None,
                    action=action,
                    purpose=f"audit {filters.described()}".strip(),
                    subject_hmac=filters.subject_hmac,
                )
            ]
        )
    finally:
        await log.stop()


def _first_key(
    args: argparse.Namespace, settings: Settings, checkpoints: Checkpointer
) -> Ed25519PublicKey:
    """The checkpoint key verification starts from: --log-key, else the data dir's record
    of the first key, else (before any rotation) the current one."""
    given = getattr(args, "log_key", None) or first_log_verifier_key(settings)
    if not given:
        return checkpoints.public_key
    try:
        name, key = parse_verifier_key(given)
    except NoteInvalid as e:
        raise InvalidArgument(f"--log-key is not a verifier key: {e.message}.") from None
    if name != checkpoints.origin:
        raise InvalidArgument(f"--log-key names the log {name!r}, not {checkpoints.origin!r}.")
    return key


async def _search(
    args: argparse.Namespace, store: AuditStore, filters: SearchFilters, zone: tzinfo
) -> int:
    entries, _ = await store.search(filters, page_size=args.limit)
    lines = [
        f"{e.index:>8}  {e.at.astimezone(zone):%Y-%m-%d %H:%M:%S}  {e.caller:<10} "
        f"{e.officer or '-':<10} {e.decision:<7} {e.reason or '':<18} {e.dataset or '-':<18} "
        f"{e.purpose or ''} {e.case_id or ''}"
        for e in entries
    ]
    emit(args, {"entries": [e.to_dict() for e in entries]}, "\n".join(lines) or "no entries")
    return 0


async def _export(args: argparse.Namespace, store: AuditStore, filters: SearchFilters) -> int:
    out = args.out.open("w", encoding="utf-8") if args.out else sys.stdout
    count = 0
    try:
        async for entry in store.export(filters):
            out.write(json.dumps(entry.to_dict(), ensure_ascii=False) + "\n")
            count += 1
    finally:
        if args.out:
            out.close()
    if args.out:
        emit(
            args,
            {"exported": count, "file": str(args.out)},
            f"exported {count:,} entries to {args.out}",
        )
    return 0


async def _covert_cases(args: argparse.Namespace, cases: CovertCases, zone: tzinfo) -> int:
    now = SystemClock().now()
    found: list[CovertCase] = []
    token = ""
    while True:
        page, token = await cases.list_cases(
            now=now,
            department=args.department,
            include_ended=args.include_ended,
            page_size=1000,
            page_token=token,
        )
        found += page
        if not token:
            break
    lines = [
        f"{c.department:<12} {c.case_id:<20} until {c.until.astimezone(zone):%Y-%m-%d %H:%M}  "
        f"{'in force' if c.in_force(now) else 'ended':<8}  declared "
        f"{c.declared_at.astimezone(zone):%Y-%m-%d %H:%M} by {c.declared_by or '-'}  "
        f"{c.legal_basis}"
        for c in found
    ]
    emit(
        args,
        {"covert_cases": [c.to_dict(now) for c in found]},
        "\n".join(lines) or "no covert cases" + ("" if args.include_ended else " in force"),
    )
    return 0
