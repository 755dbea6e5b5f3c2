"""The service-item catalogue in PostgreSQL: registering items and their versions,
getting one, listing them. The checks are ``items.validate_item``'s."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

from tongban.exchange.errors import InvalidArgument
from tongban.exchange.licensing.errors import ServiceItemNotOwner, ServiceItemUnknown
from tongban.exchange.licensing.items import (
    DataSource,
    ItemSpec,
    KeyFrom,
    LicenceSource,
    Material,
    ServiceItem,
    SubmittedSource,
    datasets_named,
    is_item_code,
    validate_item,
)
from tongban.exchange.pagetokens import PageTokens
from tongban.exchange.sharing.datasets import DatasetStore, is_dataset_code
from tongban.exchange.sharing.errors import DatasetNotFound
from tongban.exchange.sharing.model import DatasetEntry
from tongban.licence import LicenceTypeRegistry

__all__ = ["ServiceItemStore"]

MAX_PAGE = 500
MAX_VERSION = 2**31 - 1  # service_item_version.version is an integer column
_TOKENS = "items.list"  # the scope of the listing's page tokens
# pg_advisory_xact_lock(int, int): this namespace, then the item code's hash, so that item
# locks never wait on dataset locks (which take the one-argument form).
_LOCK_SPACE = "service_item"

_SELECT = """
    SELECT i.code, i.department, i.created_at, v.version, v.name, v.legal_basis, v.purpose,
           v.legal_limit_days, v.promised_limit_days, v.immediate, v.materials,
           v.issues_licence, v.on_breach, v.supervisors, v.created_at AS version_created_at
    FROM service_item i JOIN service_item_version v ON v.item = i.code
"""


def _source_to_json(source: LicenceSource | DataSource | SubmittedSource) -> dict[str, Any]:
    if isinstance(source, LicenceSource):
        return {"licence": {"licence_type": source.licence_type, "disclose": source.disclose}}
    if isinstance(source, DataSource):
        out: dict[str, Any] = {"dataset": source.dataset, "fields": source.fields}
        if source.key_from is not None:
            out["key_from"] = {"material": source.key_from.material, "field": source.key_from.field}
        return {"dataset": out}
    return {"submitted": {}}


def _source_from_json(data: dict[str, Any]) -> LicenceSource | DataSource | SubmittedSource:
    if "licence" in data:
        lic = data["licence"]
        return LicenceSource(lic["licence_type"], tuple(lic["disclose"]))
    if "dataset" in data:
        ds = data["dataset"]
        key = ds.get("key_from")
        return DataSource(
            ds["dataset"],
            tuple(ds["fields"]),
            KeyFrom(key["material"], key["field"]) if key else None,
        )
    return SubmittedSource()


def _materials_to_json(materials: tuple[Material, ...]) -> str:
    return json.dumps(
        [
            {
                "code": m.code,
                "name": m.name,
                "required": m.required,
                "source": _source_to_json(m.source),
                "defer_days": m.defer_days,
                "commitment_check_days": m.commitment_check_days,
            }
            for m in materials
        ],
        ensure_ascii=False,
    )


def _materials_from_json(text: str) -> tuple[Material, ...]:
    return tuple(
        Material(
            code=m["code"],
            name=m["name"],
            source=_source_from_json(m["source"]),
            required=m["required"],
            defer_days=m["defer_days"],
            commitment_check_days=m["commitment_check_days"],
        )
        for m in json.loads(text)
    )


def _item(row: asyncpg.Record) -> ServiceItem:
    return ServiceItem(
        spec=ItemSpec(
            code=row["code"],
            name=row["name"],
            legal_basis=row["legal_basis"],
            purpose=row["purpose"],
            legal_limit_days=row["legal_limit_days"],
            promised_limit_days=row["promised_limit_days"],
            immediate=row["immediate"],
            materials=_materials_from_json(row["materials"]),
            issues_licence=row["issues_licence"] or "",
            on_breach=row["on_breach"] or "",
            supervisors=tuple(row["supervisors"]),
        ),
        department=row["department"],
        version=row["version"],
        created_at=row["created_at"],
        version_created_at=row["version_created_at"],
    )


class ServiceItemStore:
    """Items in PostgreSQL, checked against the catalogue ``datasets`` and ``registry``."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        datasets: DatasetStore,
        registry: LicenceTypeRegistry,
        tokens: PageTokens | None = None,
    ) -> None:
        """``tokens`` sign the listing's page tokens (default: valid in this process only)."""
        self._pool = pool
        self._datasets = datasets
        self._registry = registry
        self._tokens = tokens or PageTokens.ephemeral()

    async def _catalogue(self, spec: ItemSpec, viewer: str) -> dict[str, DatasetEntry | None]:
        """The datasets ``spec`` names, as ``viewer`` sees them (None: not there for it)."""
        found: dict[str, DatasetEntry | None] = {}
        for code in sorted(datasets_named(spec)):
            if not is_dataset_code(code):
                found[code] = None
                continue
            try:
                found[code] = await self._datasets.get_visible(code, viewer)
            except DatasetNotFound:
                found[code] = None
        return found

    async def register(self, department: str, spec: ItemSpec, *, now: datetime) -> ServiceItem:
        """Create the item (``department`` handles it) or add a version; an identical spec
        adds none. Raises the errors of ``validate_item``, and ServiceItemNotOwner when
        the item is another department's."""
        # Checked before a connection is taken for the transaction: the catalogue lookups
        # take their own, and a task never holds two.
        spec = validate_item(
            spec, catalogue=await self._catalogue(spec, department), registry=self._registry
        )
        async with self._pool.acquire() as conn, conn.transaction():
            # Serialise registrations of one code, existing or not.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))", _LOCK_SPACE, spec.code
            )
            row = await conn.fetchrow(
                _SELECT + " WHERE i.code = $1 AND v.version = i.current_version", spec.code
            )
            if row is None:
                version = 1
                await conn.execute(
                    "INSERT INTO service_item (code, department, current_version, created_at,"
                    " updated_at) VALUES ($1, $2, 1, $3, $3)",
                    spec.code,
                    department,
                    now,
                )
            else:
                current = _item(row)
                if current.department != department:
                    raise ServiceItemNotOwner(
                        f"Service item {spec.code} is handled by {current.department}; only it "
                        "registers new versions. Register your own item under its own code.",
                        metadata={"service_item": spec.code, "department": current.department},
                    )
                if current.spec == spec:
                    return current
                version = current.version + 1
                if version > MAX_VERSION:
                    raise InvalidArgument(
                        f"Service item {spec.code} has {MAX_VERSION:,} versions; register a "
                        "new item instead.",
                        metadata={"field": "code"},
                    )
            await conn.execute(
                """
                INSERT INTO service_item_version (item, version, name, legal_basis, purpose,
                    legal_limit_days, promised_limit_days, immediate, materials, created_at,
                    issues_licence, on_breach, supervisors)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                """,
                spec.code,
                version,
                spec.name,
                spec.legal_basis,
                spec.purpose,
                spec.legal_limit_days,
                spec.promised_limit_days,
                spec.immediate,
                _materials_to_json(spec.materials),
                now,
                spec.issues_licence or None,
                spec.on_breach or None,
                list(spec.supervisors),
            )
            if version > 1:
                await conn.execute(
                    "UPDATE service_item SET current_version = $2, updated_at = $3 WHERE code = $1",
                    spec.code,
                    version,
                    now,
                )
            row = await conn.fetchrow(
                _SELECT + " WHERE i.code = $1 AND v.version = i.current_version", spec.code
            )
        assert row is not None
        return _item(row)

    async def get(self, code: str, version: int | None = None) -> ServiceItem:
        """The current (or given) version. Raises ServiceItemUnknown if there is none, and
        InvalidArgument for a version below 1 or above ``MAX_VERSION``."""
        if version is not None and not 1 <= version <= MAX_VERSION:
            raise InvalidArgument(
                f"version must be 1 to {MAX_VERSION:,} (0 or unset for the current one).",
                metadata={"field": "version"},
            )
        row = None
        if is_item_code(code):  # else no such code was ever registered
            if version is None:
                row = await self._pool.fetchrow(
                    _SELECT + " WHERE i.code = $1 AND v.version = i.current_version", code
                )
            else:
                row = await self._pool.fetchrow(
                    _SELECT + " WHERE i.code = $1 AND v.version = $2", code, version
                )
        if row is None:
            raise ServiceItemUnknown(
                f"There is no service item {code[:100]!r}"
                + (f" version {version}" if version else "")
                + " in the item catalogue; `tongban item list` shows the registered ones.",
                metadata={"service_item": code[:100]},
            )
        return _item(row)

    async def list(
        self, *, department: str = "", page_size: int = 100, page_token: str = ""
    ) -> tuple[list[ServiceItem], str]:
        """Current versions by code (of ``department`` if given): the page and the next
        page token ("" at the end). Raises InvalidArgument, PageTokenInvalid."""
        if not 0 <= page_size <= MAX_PAGE:
            raise InvalidArgument(
                f"page_size must be 1 to {MAX_PAGE}.", metadata={"field": "page_size"}
            )
        size = page_size or 100
        after = self._tokens.open(_TOKENS, page_token) or ""
        clauses = ["v.version = i.current_version", "i.code > $1"]
        args: list[object] = [after]
        if department:
            args.append(department)
            clauses.append(f"i.department = ${len(args)}")
        args.append(size + 1)
        rows = await self._pool.fetch(
            _SELECT + " WHERE " + " AND ".join(clauses) + f" ORDER BY i.code LIMIT ${len(args)}",
            *args,
        )
        items = [_item(row) for row in rows[:size]]
        more = len(rows) > size
        return items, (self._tokens.issue(_TOKENS, items[-1].code) if more else "")
