"""``tongban catalogue|query|grant``: a department's view, over gRPC with its bundle.

These commands act as the department whose bundle is given with ``--as``, through the same
public API a department system uses. ``tongban grant list`` without ``--as`` is the
operator's view of every grant, read from the database.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tongban.cli.common import (
    department_client,
    department_options,
    emit,
    settings_from_args,
)
from tongban.cli.wire_json import message_json
from tongban.client import Bundle, Dataset, DatasetSpec, Grant, ShareClass, SubjectKind
from tongban.exchange.catalogue.calendar import WorkingCalendar
from tongban.exchange.db.database import Database
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.sharing.events import EventStore
from tongban.exchange.sharing.grants import GrantStore
from tongban.signing.clock import SystemClock
from tongban.v1 import catalogue_pb2, grants_pb2, values_pb2

__all__ = ["add_parsers", "run_sharing"]

_FIELD_TYPES = {
    "string": values_pb2.FIELD_TYPE_STRING,
    "integer": values_pb2.FIELD_TYPE_INTEGER,
    "decimal": values_pb2.FIELD_TYPE_DECIMAL,
    "boolean": values_pb2.FIELD_TYPE_BOOLEAN,
    "date": values_pb2.FIELD_TYPE_DATE,
    "datetime": values_pb2.FIELD_TYPE_DATETIME,
}
_SHARE_CLASSES = {
    "unconditional": catalogue_pb2.SHARE_CLASS_UNCONDITIONAL,
    "conditional": catalogue_pb2.SHARE_CLASS_CONDITIONAL,
    "not_shared": catalogue_pb2.SHARE_CLASS_NOT_SHARED,
}
_SUBJECT_KINDS = {
    "enterprise": catalogue_pb2.SUBJECT_KIND_ENTERPRISE,
    "person": catalogue_pb2.SUBJECT_KIND_PERSON,
    "other": catalogue_pb2.SUBJECT_KIND_OTHER,
}


# -- the dataset file of `catalogue register` (validated at the edge) ----------------------


class _Field(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    type: Literal["string", "integer", "decimal", "boolean", "date", "datetime"]
    description: str = ""
    personal: bool = False
    required: bool = False
    max_length: int = Field(default=0, ge=0, le=100_000)


class _LegalBasis(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    law: str
    article: str


class _PersonalBasis(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    law: str
    article: str
    fields: list[str]


class _DatasetFile(BaseModel):
    """A dataset description, e.g. ``docs/examples/samr.enterprise.json``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    code: str
    title: str
    description: str = ""
    fields: list[_Field]
    key_field: str
    subject_kind: Literal["enterprise", "person", "other"]
    update_frequency: str = ""
    share_class: Literal["unconditional", "conditional", "not_shared"] = "unconditional"
    conditions: str = ""
    legal_basis: _LegalBasis | None = None
    personal_bases: list[_PersonalBasis] = []

    def to_message(self) -> catalogue_pb2.DatasetSpec:
        spec = catalogue_pb2.DatasetSpec(
            code=self.code,
            title=self.title,
            description=self.description,
            fields=[
                catalogue_pb2.FieldSpec(
                    name=f.name,
                    type=_FIELD_TYPES[f.type],
                    description=f.description,
                    personal=f.personal,
                    required=f.required,
                    max_length=f.max_length,
                )
                for f in self.fields
            ],
            key_field=self.key_field,
            subject_kind=_SUBJECT_KINDS[self.subject_kind],
            update_frequency=self.update_frequency,
            share_class=_SHARE_CLASSES[self.share_class],
            conditions=self.conditions,
            personal_bases=[
                catalogue_pb2.PersonalBasis(law=b.law, article=b.article, fields=b.fields)
                for b in self.personal_bases
            ],
        )
        if self.legal_basis is not None:
            spec.legal_basis.law = self.legal_basis.law
            spec.legal_basis.article = self.legal_basis.article
        return spec


def load_dataset_file(path: Path) -> catalogue_pb2.DatasetSpec:
    """Read and validate a dataset file; raise InvalidArgument naming each problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"Cannot read {path} as UTF-8 text: {e}.") from None
    try:
        return _DatasetFile.model_validate_json(text).to_message()
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item['loc']) or '(file)'}: {item['msg']}"
            for item in e.errors(include_url=False)[:10]
        )
        raise InvalidArgument(f"{path} is not a valid dataset description: {problems}.") from None


# -- parsers -------------------------------------------------------------------------------


def _csv(value: str) -> list[str]:
    items = [part.strip() for part in value.split(",") if part.strip()]
    if not items:
        raise argparse.ArgumentTypeError("give at least one name, comma-separated")
    return items


def _day_or_instant(value: str) -> datetime:
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time(23, 59, 59), tzinfo=UTC)
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a date (YYYY-MM-DD) or ISO instant"
        ) from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError("give the time zone, e.g. 2026-12-31T18:00:00+08:00")
    return parsed


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, parser_class: type[argparse.ArgumentParser]
) -> None:
    """Add the catalogue, query and grant commands to the ``tongban`` parser."""
    dept = department_options(parser_class)
    optional_dept = department_options(parser_class, required=False)

    cat = sub.add_parser("catalogue", help="the dataset catalogue (政务信息资源目录)")
    cat_sub = cat.add_subparsers(dest="catalogue_command", required=True, parser_class=parser_class)
    listing = cat_sub.add_parser("list", parents=[common, dept], help="search datasets")
    listing.add_argument("--owner", default="")
    listing.add_argument("--keyword", default="", help="matched in codes, titles, descriptions")
    listing.add_argument("--share-class", choices=sorted(_SHARE_CLASSES))
    listing.add_argument("--subject-kind", choices=sorted(_SUBJECT_KINDS))
    show = cat_sub.add_parser("show", parents=[common, dept], help="one dataset, with its fields")
    show.add_argument("code")
    show.add_argument("--version", type=int, default=0)
    register = cat_sub.add_parser(
        "register", parents=[common, dept], help="register a dataset from a JSON file"
    )
    register.add_argument("file", type=Path)
    register.add_argument("--publish", action="store_true")
    publish = cat_sub.add_parser(
        "publish", parents=[common, dept], help="publish (or --unpublish) a dataset"
    )
    publish.add_argument("code")
    publish.add_argument("--unpublish", action="store_true")
    from tongban.cli.federation_cmds import add_catalogue_parsers

    add_catalogue_parsers(cat_sub, [common, dept])

    query = sub.add_parser("query", parents=[common, dept], help="query a dataset by subject key")
    query.add_argument("dataset")
    query.add_argument("keys", nargs="+", metavar="KEY")
    query.add_argument("--fields", type=_csv, required=True, help="comma-separated field names")
    query.add_argument("--purpose", required=True, help="why, e.g. 食品经营许可审批")
    query.add_argument("--case", required=True, dest="case_id", help="the case (办件编号)")
    query.add_argument("--sign", action="store_true", help="ask for a signed answer")
    query.add_argument("--as-of", type=_day_or_instant, help="answer as of this date or instant")

    grant = sub.add_parser("grant", help="grants for conditional datasets (有条件共享)")
    grant_sub = grant.add_subparsers(dest="grant_command", required=True, parser_class=parser_class)
    glist = grant_sub.add_parser("list", parents=[common, optional_dept], help="list grants")
    glist.add_argument("--overdue", action="store_true", help="only requests past their due date")
    glist.add_argument("--dataset", default="")
    request = grant_sub.add_parser("request", parents=[common, dept], help="request a grant")
    request.add_argument("dataset")
    request.add_argument("--fields", type=_csv, required=True)
    request.add_argument("--purpose", required=True)
    request.add_argument("--legal-basis", required=True)
    request.add_argument("--expires", type=_day_or_instant, required=True)
    approve = grant_sub.add_parser("approve", parents=[common, dept], help="approve a request")
    approve.add_argument("id")
    approve.add_argument("--fields", type=_csv, default=[], help="a subset of those requested")
    approve.add_argument("--expires", type=_day_or_instant, help="no later than requested")
    approve.add_argument("--reason", default="")
    refuse = grant_sub.add_parser("refuse", parents=[common, dept], help="refuse a request")
    refuse.add_argument("id")
    refuse.add_argument("--reason", required=True)
    revoke = grant_sub.add_parser("revoke", parents=[common, dept], help="revoke a grant")
    revoke.add_argument("id")
    revoke.add_argument("--reason", default="")

    subscription = sub.add_parser(
        "subscription", help="subscriptions to change events (enter once, 一次录入)"
    )
    subscription_sub = subscription.add_subparsers(
        dest="subscription_command", required=True, metavar="COMMAND"
    )
    subscription_sub.add_parser(
        "list",
        parents=[common, optional_dept],
        help="subscriptions with their lag (events not acknowledged, age of the oldest)",
    )


# -- running -------------------------------------------------------------------------------


def _dataset_dict(dataset: Dataset) -> dict[str, Any]:
    return message_json(dataset, catalogue_pb2.Dataset)


def _grant_dict(grant: Grant) -> dict[str, Any]:
    return message_json(grant, grants_pb2.Grant)


def _share_name(value: ShareClass) -> str:
    return value.name.lower()


def _kind_name(value: SubjectKind) -> str:
    return value.name.lower()


def _plain(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, date | datetime):
        return value.isoformat()
    return value


async def run_sharing(args: argparse.Namespace) -> int:
    if args.command == "catalogue":
        return await _catalogue(args)
    if args.command == "query":
        return await _query(args)
    if args.command == "subscription":
        return await _subscription_list(args)
    return await _grant(args)


def _personal_lines(spec: DatasetSpec) -> list[str]:
    """Which personal fields others get without a grant, under which law, and which need one."""
    if spec.share_class is ShareClass.NOT_SHARED:
        return []
    by_law = [f"  {b.law} {b.article}: {', '.join(b.fields)}" for b in spec.personal_bases]
    covered = {name for b in spec.personal_bases for name in b.fields}
    granted = [f.name for f in spec.fields if f.personal and f.name not in covered]
    lines = ["personal fields shared without a grant, by law:", *by_law] if by_law else []
    if granted:
        lines.append(f"personal fields shared only under a grant: {', '.join(granted)}")
    return lines


async def _catalogue(args: argparse.Namespace) -> int:
    if args.catalogue_command in ("federate", "remote"):
        from tongban.cli.federation_cmds import run_federation

        return await run_federation(args)
    if args.catalogue_command == "register":
        spec = load_dataset_file(args.file)
    async with department_client(args) as client:
        if args.catalogue_command == "list":
            found = await client.list_datasets(
                owner=args.owner,
                keyword=args.keyword,
                share_class=_SHARE_CLASSES.get(args.share_class or "", 0),
                subject_kind=_SUBJECT_KINDS.get(args.subject_kind or "", 0),
            )
            lines = [
                f"{d.spec.code:<28} v{d.version:<3} {_share_name(d.spec.share_class):<13} "
                f"{'published' if d.published else 'draft':<9} {d.spec.title}"
                for d in found
            ]
            emit(
                args,
                {"datasets": [_dataset_dict(d) for d in found]},
                "\n".join(lines) or "no datasets",
            )
        elif args.catalogue_command == "show":
            dataset = await client.get_dataset(args.code, args.version)
            shown = dataset.spec
            basis = shown.legal_basis
            lines = [
                f"{shown.code} v{dataset.version} — {shown.title} (owner {dataset.owner}, "
                f"{_share_name(shown.share_class)}, "
                f"{'published' if dataset.published else 'draft'})",
                *([shown.description] if shown.description else []),
                *([f"conditions: {shown.conditions}"] if shown.conditions else []),
                *([f"legal basis: {basis.law} {basis.article}"] if basis is not None else []),
                f"key: {shown.key_field} ({_kind_name(shown.subject_kind)})",
                *(
                    f"  {f.name:<28} {f.type.name.lower():<9}"
                    f"{' personal' if f.personal else '':<10}{f.description}"
                    for f in shown.fields
                ),
                *_personal_lines(shown),
            ]
            emit(args, {"dataset": _dataset_dict(dataset)}, "\n".join(lines))
        elif args.catalogue_command == "register":
            dataset = await client.register_dataset(spec, publish=args.publish)
            emit(
                args,
                {"dataset": _dataset_dict(dataset)},
                f"registered {dataset.spec.code} version {dataset.version}"
                + (" (published)" if dataset.published else " (draft; publish when loaded)"),
            )
        else:
            dataset = await client.set_published(args.code, not args.unpublish)
            emit(
                args,
                {"dataset": _dataset_dict(dataset)},
                f"{dataset.spec.code} is {'published' if dataset.published else 'unpublished'}",
            )
    return 0


async def _query(args: argparse.Namespace) -> int:
    async with department_client(args) as client:
        answer = await client.query(
            args.dataset,
            args.keys,
            fields=args.fields,
            purpose=args.purpose,
            case_id=args.case_id,
            sign=args.sign,
            as_of=args.as_of,
        )
    records = [
        {
            "key": r.key,
            "version": r.version,
            "valid_from": r.valid_from.isoformat(),
            "fields": {k: _plain(v) for k, v in r.fields.items()},
        }
        for r in answer.records
    ]
    payload: dict[str, Any] = {
        "dataset": answer.dataset,
        "dataset_version": answer.dataset_version,
        "records": records,
        "missing_keys": answer.missing_keys,
    }
    if args.sign:
        payload["signed_payload"] = answer.signed_payload.decode()
        payload["signature"] = answer.signature
    lines = []
    for answered in answer.records:
        lines.append(f"{answered.key} (version {answered.version})")
        lines += [f"  {name}: {_plain(value)}" for name, value in answered.fields.items()]
    lines += [f"{key}: no record" for key in answer.missing_keys]
    if args.sign:
        lines.append(
            f"signature: {answer.signature[:40]}… (detached JWS over the canonical answer)"
        )
    emit(args, payload, "\n".join(lines))
    return 0


def _grant_line(g: dict[str, Any]) -> str:
    fields = ",".join(g.get("fields") or g.get("requested_fields") or [])
    return (
        f"{g['id']}  {g['dataset']:<20} {g['consumer']:<10} {g['status'][13:].lower():<9} "
        f"due {g.get('due_at', '-')[:10]}  [{fields}] {g['purpose']}"
    )


async def _grant(args: argparse.Namespace) -> int:
    if args.grant_command == "list" and args.bundle is None:
        return await _grant_list_operator(args)
    async with department_client(args) as client:
        if args.grant_command == "list":
            grants = [
                _grant_dict(g)
                for g in await client.list_grants(dataset=args.dataset, overdue=args.overdue)
            ]
            emit(args, {"grants": grants}, "\n".join(_grant_line(g) for g in grants) or "no grants")
            return 0
        if args.grant_command == "request":
            grant = await client.request_grant(
                args.dataset, args.fields, args.purpose, args.legal_basis, args.expires
            )
        elif args.grant_command == "approve":
            grant = await client.decide_grant(
                args.id, approve=True, fields=args.fields, expiry=args.expires, reason=args.reason
            )
        elif args.grant_command == "refuse":
            grant = await client.decide_grant(args.id, approve=False, reason=args.reason)
        else:
            grant = await client.revoke_grant(args.id, args.reason)
    shown = _grant_dict(grant)
    emit(args, {"grant": shown}, _grant_line(shown))
    return 0


async def _grant_list_operator(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    now = SystemClock().now()
    async with await Database.open(settings, pool_size=2) as db:
        store = GrantStore(db.pool, WorkingCalendar(), settings.grant_answer_days)
        grants = await store.list(
            caller=None, dataset=args.dataset or None, overdue=args.overdue, now=now
        )
    rows = [
        {
            "id": str(g.id),
            "dataset": g.dataset,
            "owner": g.owner,
            "consumer": g.consumer,
            "status": "GRANT_STATUS_" + g.status_at(now).value.upper(),
            "requested_fields": list(g.requested_fields),
            "fields": list(g.fields),
            "purpose": g.purpose,
            "requested_at": g.requested_at.isoformat(),
            "due_at": g.due_at.isoformat(),
            "overdue_days": max(0, (now - g.due_at) // timedelta(days=1)) if g.due_at < now else 0,
        }
        for g in grants
    ]
    emit(args, {"grants": rows}, "\n".join(_grant_line(r) for r in rows) or "no grants")
    return 0


async def _subscription_list(args: argparse.Namespace) -> int:
    """Subscriptions and their lag: the department's own over gRPC (``--as``), those held
    for it at peer exchanges included, or every department's from the database (operator
    view)."""
    unlisted: list[dict[str, str]] = []
    if args.bundle is not None:
        consumer = Bundle.load(args.bundle).department
        async with department_client(args) as client:
            listing = await client.subscription_listing()
        # Ids of subscriptions held at peers are "<peer>:<id>", not UUIDs: kept as text.
        rows = [
            dict(asdict(s), consumer=consumer, fields=list(s.fields),
                 lag_seconds=round(s.lag_seconds, 3))
            for s in listing.subscriptions
        ]  # fmt: skip
        unlisted = [asdict(u) for u in listing.unlisted]
    else:
        settings = settings_from_args(args)
        async with await Database.open(settings, pool_size=2) as db:
            found = await EventStore(db.pool).of_consumer(None)
        rows = [
            dict(asdict(s), id=str(s.id), fields=list(s.fields),
                 lag_seconds=round(s.lag_seconds, 3))
            for s in found
        ]  # fmt: skip
    lines = [
        f"{r['consumer']:<10} {r['dataset']:<24} acked {r['acked_position']:<7} "
        f"lag {r['lag_events']} events, {r['lag_seconds']:.1f} s  {r['purpose']}"
        for r in rows
    ]
    lines += [f"not listed: peer {u['peer']} ({u['reason']}: {u['message']})" for u in unlisted]
    payload: dict[str, object] = {"subscriptions": rows}
    if args.bundle is not None:
        payload["unlisted"] = unlisted
    emit(args, payload, "\n".join(lines) or "no subscriptions")
    return 0
