"""Sources for legacy systems: SQL databases and drop folders of CSV/Excel exports.

``open_source(mapping)`` returns the source the mapping's ``source.kind`` names; use it
with ``async with``. REST and SOAP sources are configured in the mapping but not built
yet.
"""

from __future__ import annotations

from tongban.adapters.errors import SourceUnsupported
from tongban.adapters.mapping import AdapterMapping
from tongban.adapters.sdk import Source
from tongban.adapters.sources.files import DropFolderSource, detect_encoding
from tongban.adapters.sources.sql import PostgresSource, SqliteSource, quote_ident
from tongban.signing.clock import Clock

__all__ = [
    "DropFolderSource",
    "PostgresSource",
    "SqliteSource",
    "detect_encoding",
    "open_source",
    "quote_ident",
]


def open_source(mapping: AdapterMapping, *, clock: Clock | None = None) -> Source:
    """Return the source for ``mapping.source`` (not yet entered).

    Raises ``SourceUnsupported`` for a kind with no source implementation (rest, soap).
    """
    kind = mapping.source.kind
    if kind == "postgres":
        return PostgresSource(mapping)
    if kind == "sqlite":
        return SqliteSource(mapping)
    if kind in ("csv", "xlsx"):
        return DropFolderSource(mapping, clock=clock)
    raise SourceUnsupported(
        f"Sources of kind {kind} are not implemented yet; use postgres, sqlite, csv or xlsx.",
        metadata={"kind": kind},
    )
