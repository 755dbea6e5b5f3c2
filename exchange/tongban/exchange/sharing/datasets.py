"""The catalogue: registering, versioning, publishing and searching datasets."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from tongban.exchange.catalogue.schema import DatasetSchema, schema_from_json, schema_to_json
from tongban.exchange.catalogue.subject_ids import SubjectKind
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.pagetokens import PageTokens
from tongban.exchange.sharing.errors import (
    DatasetNotFound,
    NotOwner,
    NotSharedNeedsBasis,
    SchemaIncompatible,
)
from tongban.exchange.sharing.model import DatasetEntry, LegalBasis, PersonalBasis, ShareClass
from tongban.exchange.sharing.storage import VERSION_BYTES, quota_checked

__all__ = [
    "MAX_VERSION",
    "DatasetSpec",
    "DatasetStore",
    "check_evolution",
    "is_dataset_code",
    "validate_spec",
]

DATASET_CODE = re.compile(r"^([a-z][a-z0-9-]{1,62})\.([a-z][a-z0-9_]{0,62})$")
MAX_PAGE = 500
MAX_VERSION = 2**31 - 1  # dataset_version.version is an integer column
_TOKENS = "catalogue.datasets"  # the scope of the catalogue's page tokens


@dataclass(frozen=True)
class DatasetSpec:
    """What an owner registers (see ``catalogue.proto``)."""

    code: str
    title: str
    description: str
    schema: DatasetSchema
    subject_kind: SubjectKind
    update_frequency: str
    share_class: ShareClass
    conditions: str
    legal_basis: LegalBasis | None
    personal_bases: tuple[PersonalBasis, ...] = ()


MAX_PERSONAL_BASES = 20


def _text(value: str, what: str, *, low: int, high: int) -> str:
    text = unicodedata.normalize("NFC", value.strip())
    if not low <= len(text) <= high:
        raise InvalidArgument(
            f"The {what} must have {low} to {high} characters (has {len(text)}).",
            metadata={"field": what},
        )
    if any(
        unicodedata.category(ch) in {"Cc", "Cs", "Co", "Cn"} and ch not in "\n\t" for ch in text
    ):
        raise InvalidArgument(
            f"The {what} contains control or unassigned characters.", metadata={"field": what}
        )
    return text


def validate_spec(spec: DatasetSpec, owner: str) -> DatasetSpec:
    """Return ``spec`` normalised; raise InvalidArgument, NotOwner or NotSharedNeedsBasis."""
    match = DATASET_CODE.match(spec.code)
    if match is None:
        raise InvalidArgument(
            f"Dataset code {spec.code[:100]!r} is not valid: use DEPARTMENT.NAME, e.g. "
            "samr.enterprise (lowercase letters, digits, '_' in the name).",
            metadata={"field": "code"},
        )
    if match[1] != owner:
        raise NotOwner(
            "Dataset codes start with the owner's department code: register it as "
            f"{owner}.{match[2]}.",
            metadata={"field": "code"},
        )
    basis = spec.legal_basis
    if basis is not None and not (basis.law.strip() or basis.article.strip()):
        basis = None
    if basis is not None:
        basis = LegalBasis(
            _text(basis.law, "legal basis law", low=1, high=200),
            _text(basis.article, "legal basis article", low=1, high=100),
        )
    if spec.share_class is ShareClass.NOT_SHARED and basis is None:
        raise NotSharedNeedsBasis(
            "A dataset that is not shared must cite its legal basis (law and article); sharing "
            "is the rule and not sharing the exception."
        )
    conditions = _text(spec.conditions, "conditions", low=0, high=2000)
    if spec.share_class is ShareClass.CONDITIONAL and not conditions:
        raise InvalidArgument(
            "A conditional dataset must state its conditions in words.",
            metadata={"field": "conditions"},
        )
    return DatasetSpec(
        code=spec.code,
        personal_bases=_personal_bases(spec),
        title=_text(spec.title, "title", low=1, high=200),
        description=_text(spec.description, "description", low=0, high=4000),
        schema=spec.schema,
        subject_kind=spec.subject_kind,
        update_frequency=_text(spec.update_frequency, "update frequency", low=0, high=100),
        share_class=spec.share_class,
        conditions=conditions,
        legal_basis=basis,
    )


def _personal_bases(spec: DatasetSpec) -> tuple[PersonalBasis, ...]:
    """The cited laws, normalised; each names personal fields of the schema, once."""
    if not spec.personal_bases:
        return ()
    if spec.share_class is not ShareClass.UNCONDITIONAL:
        raise InvalidArgument(
            "Only an unconditional dataset cites laws for sharing personal fields without a "
            "grant; a conditional dataset shares every field under grants.",
            metadata={"field": "personal_bases"},
        )
    if len(spec.personal_bases) > MAX_PERSONAL_BASES:
        raise InvalidArgument(
            f"A dataset cites at most {MAX_PERSONAL_BASES} laws for its personal fields.",
            metadata={"field": "personal_bases"},
        )
    seen: set[str] = set()
    bases = []
    for basis in spec.personal_bases:
        if not basis.fields:
            raise InvalidArgument(
                f"The law {basis.law[:100]!r} cited for personal fields names no field.",
                metadata={"field": "personal_bases"},
            )
        for name in basis.fields:
            field = spec.schema.field(name)
            if field is None or not field.personal:
                raise InvalidArgument(
                    f"{name[:64]!r} is not a personal field of {spec.code}; a law cited for "
                    "sharing personal fields names only fields marked personal.",
                    metadata={"field": "personal_bases"},
                )
            if name in seen:
                raise InvalidArgument(
                    f"Field {name} is named by more than one cited law; name it once.",
                    metadata={"field": "personal_bases"},
                )
            seen.add(name)
        bases.append(
            PersonalBasis(
                _text(basis.law, "personal basis law", low=1, high=200),
                _text(basis.article, "personal basis article", low=1, high=100),
                tuple(basis.fields),
            )
        )
    return tuple(bases)


def _bases_to_json(bases: Sequence[PersonalBasis]) -> str:
    return json.dumps(
        [{"law": b.law, "article": b.article, "fields": list(b.fields)} for b in bases],
        ensure_ascii=False,
    )


def _bases_from_json(text: str) -> tuple[PersonalBasis, ...]:
    return tuple(
        PersonalBasis(item["law"], item["article"], tuple(item["fields"]))
        for item in json.loads(text)
    )


def check_evolution(current: DatasetEntry, new: DatasetSpec) -> None:
    """Raise SchemaIncompatible if records stored under ``current`` would not fit ``new``.

    The key field and subject kind are fixed; a kept field keeps its type; a field may
    become required only if it was required before (old records may lack it otherwise).
    Adding optional fields, dropping fields, and changing texts or the share class are fine.
    """
    old = current.schema
    if new.schema.key_field != old.key_field:
        raise SchemaIncompatible(
            f"The key field of {current.code} is {old.key_field} and cannot change; register "
            "a new dataset instead."
        )
    if new.subject_kind != current.subject_kind:
        raise SchemaIncompatible(
            f"The subject kind of {current.code} is {current.subject_kind.value} and cannot change."
        )
    for field in new.schema.fields:
        before = old.field(field.name)
        if before is not None and before.type != field.type:
            raise SchemaIncompatible(
                f"Field {field.name} of {current.code} is {before.type.value} and cannot become "
                f"{field.type.value}; add a new field instead.",
                metadata={"field": field.name},
            )
        if field.required and (before is None or not before.required):
            raise SchemaIncompatible(
                f"Field {field.name} cannot become required: records already stored may lack "
                "it. Add it as optional.",
                metadata={"field": field.name},
            )


def _search_text(spec: DatasetSpec) -> str:
    parts = [spec.code, spec.title, spec.description, spec.conditions]
    parts += [f"{f.name} {f.description}" for f in spec.schema.fields]
    return " ".join(parts).lower()


_SELECT = """
    SELECT d.code, d.owner, d.published, d.created_at, v.version, v.title, v.description,
           v.schema, v.subject_kind, v.update_frequency, v.share_class, v.conditions,
           v.legal_basis_law, v.legal_basis_article, v.personal_bases,
           v.created_at AS version_created_at
    FROM dataset d JOIN dataset_version v ON v.dataset = d.code
"""


def _entry(row: asyncpg.Record) -> DatasetEntry:
    law, article = row["legal_basis_law"], row["legal_basis_article"]
    return DatasetEntry(
        code=row["code"],
        owner=row["owner"],
        version=row["version"],
        title=row["title"],
        description=row["description"],
        schema=schema_from_json(json.loads(row["schema"])),
        subject_kind=SubjectKind(row["subject_kind"]),
        update_frequency=row["update_frequency"],
        share_class=ShareClass(row["share_class"]),
        conditions=row["conditions"],
        legal_basis=LegalBasis(law, article) if law is not None else None,
        published=row["published"],
        created_at=row["created_at"],
        version_created_at=row["version_created_at"],
        personal_bases=_bases_from_json(row["personal_bases"]),
    )


def _same(entry: DatasetEntry, spec: DatasetSpec) -> bool:
    return (
        entry.title == spec.title
        and entry.description == spec.description
        and schema_to_json(entry.schema) == schema_to_json(spec.schema)
        and entry.subject_kind == spec.subject_kind
        and entry.update_frequency == spec.update_frequency
        and entry.share_class == spec.share_class
        and entry.conditions == spec.conditions
        and entry.legal_basis == spec.legal_basis
        and entry.personal_bases == spec.personal_bases
    )


def is_dataset_code(code: str) -> bool:
    """Whether ``code`` has the form every catalogued code has (so it may be looked up)."""
    return DATASET_CODE.match(code) is not None


class DatasetStore:
    def __init__(self, pool: asyncpg.Pool, tokens: PageTokens | None = None) -> None:
        """``tokens`` sign the search's page tokens (default: valid in this process only)."""
        self._pool = pool
        self._tokens = tokens or PageTokens.ephemeral()

    async def register(
        self, owner: str, spec: DatasetSpec, *, publish: bool, now: datetime
    ) -> DatasetEntry:
        """Create the dataset or add a version; an identical spec adds none. Raises the
        errors of ``validate_spec`` and ``check_evolution``."""
        spec = validate_spec(spec, owner)
        async with self._pool.acquire() as conn, conn.transaction():
            # Serialise registrations of one code, existing or not.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", spec.code)
            row = await conn.fetchrow(
                _SELECT + " WHERE d.code = $1 AND v.version = d.current_version", spec.code
            )
            if row is None:
                version = 1
                await conn.execute(
                    "INSERT INTO dataset (code, owner, current_version, published, created_at,"
                    " updated_at) VALUES ($1, $2, 1, $3, $4, $4)",
                    spec.code,
                    owner,
                    publish,
                    now,
                )
                # Its stream row, which counts the bytes its records take: every write
                # updates it, and the storage quota's check is a trigger on that update
                # (migration 0035).
                await conn.execute(
                    "INSERT INTO dataset_stream (dataset, next_position) VALUES ($1, 0)",
                    spec.code,
                )
            else:
                current = _entry(row)
                if current.owner != owner:
                    raise NotOwner(f"Dataset {spec.code} belongs to {current.owner}.")
                if _same(current, spec):
                    if not publish or current.published:
                        return current
                    # Publish here, on this connection: never wait for a second one.
                    await conn.execute(
                        "UPDATE dataset SET published = true, updated_at = $2 WHERE code = $1",
                        spec.code,
                        now,
                    )
                    row = await conn.fetchrow(
                        _SELECT + " WHERE d.code = $1 AND v.version = d.current_version",
                        spec.code,
                    )
                    assert row is not None
                    return _entry(row)
                check_evolution(current, spec)
                version = current.version + 1
            await conn.execute(
                """
                INSERT INTO dataset_version (dataset, version, title, description, schema,
                    key_field, subject_kind, update_frequency, share_class, conditions,
                    legal_basis_law, legal_basis_article, search_text, created_at,
                    personal_bases)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
                """,
                spec.code,
                version,
                spec.title,
                spec.description,
                json.dumps(schema_to_json(spec.schema), ensure_ascii=False),
                spec.schema.key_field,
                spec.subject_kind.value,
                spec.update_frequency,
                spec.share_class.value,
                spec.conditions,
                spec.legal_basis.law if spec.legal_basis else None,
                spec.legal_basis.article if spec.legal_basis else None,
                _search_text(spec),
                now,
                _bases_to_json(spec.personal_bases),
            )
            # A catalogue version is stored for good, as a record version is: it counts
            # toward the owner's storage quota the same way (its row as stored).
            with quota_checked():
                await conn.execute(
                    "UPDATE dataset_stream SET stored_bytes = stored_bytes + $3 + ("
                    "  SELECT pg_column_size(v.*) FROM dataset_version v"
                    "  WHERE v.dataset = $1 AND v.version = $2"
                    ") WHERE dataset = $1",
                    spec.code,
                    version,
                    VERSION_BYTES,
                )
            if version > 1:
                await conn.execute(
                    "UPDATE dataset SET current_version = $2, updated_at = $3,"
                    " published = published OR $4 WHERE code = $1",
                    spec.code,
                    version,
                    now,
                    publish,
                )
            row = await conn.fetchrow(
                _SELECT + " WHERE d.code = $1 AND v.version = d.current_version", spec.code
            )
        assert row is not None
        return _entry(row)

    async def get(self, code: str, version: int | None = None) -> DatasetEntry | None:
        """The current (or given) version, published or not; None if there is none.

        Raises InvalidArgument for a version below 1 or above ``MAX_VERSION``.
        """
        if version is not None and not 1 <= version <= MAX_VERSION:
            raise InvalidArgument(
                f"version must be 1 to {MAX_VERSION:,} (0 or unset for the current one).",
                metadata={"field": "version"},
            )
        if not is_dataset_code(code):
            return None  # no such code was ever registered; PostgreSQL need not be asked
        if version is None:
            row = await self._pool.fetchrow(
                _SELECT + " WHERE d.code = $1 AND v.version = d.current_version", code
            )
        else:
            row = await self._pool.fetchrow(
                _SELECT + " WHERE d.code = $1 AND v.version = $2", code, version
            )
        return None if row is None else _entry(row)

    async def get_visible(self, code: str, viewer: str, version: int | None = None) -> DatasetEntry:
        """Like ``get`` but as ``viewer`` sees it: unpublished datasets of others do not exist."""
        entry = await self.get(code, version)
        if entry is None or not (entry.published or entry.owner == viewer):
            raise DatasetNotFound(
                f"No dataset {code[:100]!r}"
                + (f" version {version}" if version else "")
                + " is in the catalogue.",
                metadata={"dataset": code[:100]},
            )
        return entry

    async def set_published(
        self, code: str, owner: str, published: bool, now: datetime
    ) -> DatasetEntry:
        """Publish or unpublish; raise DatasetNotFound or NotOwner."""
        entry = await self.get(code)
        if entry is None:
            raise DatasetNotFound(f"No dataset {code[:100]!r} is in the catalogue.")
        if entry.owner != owner:
            raise NotOwner(f"Only {entry.owner}, the owner of {code}, may publish or unpublish it.")
        await self._pool.execute(
            "UPDATE dataset SET published = $2, updated_at = $3 WHERE code = $1",
            code,
            published,
            now,
        )
        updated = await self.get(code)
        assert updated is not None
        return updated

    async def search(
        self,
        viewer: str,
        *,
        owner: str | None = None,
        keyword: str | None = None,
        share_class: ShareClass | None = None,
        subject_kind: SubjectKind | None = None,
        page_size: int = 100,
        page_token: str = "",
    ) -> tuple[list[DatasetEntry], str]:
        """Datasets visible to ``viewer`` matching the filters, by code; returns the page and
        the next page token ("" at the end)."""
        if not 0 <= page_size <= MAX_PAGE:
            raise InvalidArgument(
                f"page_size must be 1 to {MAX_PAGE}.", metadata={"field": "page_size"}
            )
        size = page_size or 100
        after = self._tokens.open(_TOKENS, page_token) or ""
        clauses = ["v.version = d.current_version", "(d.published OR d.owner = $1)", "d.code > $2"]
        args: list[object] = [viewer, after]
        if owner:
            args.append(owner)
            clauses.append(f"d.owner = ${len(args)}")
        if keyword:
            kw = unicodedata.normalize("NFC", keyword.strip()).lower()
            if len(kw) > 100:
                raise InvalidArgument(
                    "A keyword has at most 100 characters.", metadata={"field": "keyword"}
                )
            args.append(kw)
            clauses.append(f"strpos(v.search_text, ${len(args)}) > 0")
        if share_class is not None:
            args.append(share_class.value)
            clauses.append(f"v.share_class = ${len(args)}")
        if subject_kind is not None:
            args.append(subject_kind.value)
            clauses.append(f"v.subject_kind = ${len(args)}")
        args.append(size + 1)
        rows = await self._pool.fetch(
            _SELECT + " WHERE " + " AND ".join(clauses) + f" ORDER BY d.code LIMIT ${len(args)}",
            *args,
        )
        entries = [_entry(row) for row in rows[:size]]
        more = len(rows) > size
        return entries, (self._tokens.issue(_TOKENS, entries[-1].code) if more else "")


def fields_of(entry: DatasetEntry) -> Sequence[str]:
    return entry.schema.names
