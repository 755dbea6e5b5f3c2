"""Sources for legacy systems: SQL databases, drop folders of CSV/Excel exports, and
REST and SOAP services.

``open_source(mapping)`` returns the source the mapping's ``source.kind`` names; use it
with ``async with``.
"""

from __future__ import annotations

from tongban.adapters.errors import SourceUnsupported
from tongban.adapters.mapping import AdapterMapping
from tongban.adapters.sdk import Source
from tongban.adapters.sources.files import DropFolderSource, detect_encoding
from tongban.adapters.sources.sql import PostgresSource, SqliteSource, quote_ident
from tongban.adapters.sources.web import RestSource, SoapSource
from tongban.signing.clock import Clock

__all__ = [
    "DropFolderSource",
    "PostgresSource",
    "RestSource",
    "SoapSource",
    "SqliteSource",
    "detect_encoding",
    "open_source",
    "quote_ident",
]


def open_source(mapping: AdapterMapping, *, clock: Clock | None = None) -> Source:
    """Return the source for ``mapping.source`` (not yet entered)."""
    kind = mapping.source.kind
    if kind == "postgres":
        return PostgresSource(mapping)
    if kind == "sqlite":
        return SqliteSource(mapping)
    if kind in ("csv", "xlsx"):
        return DropFolderSource(mapping, clock=clock)
    if kind == "rest":
        return RestSource(mapping, clock=clock)
    if kind == "soap":
        return SoapSource(mapping)
    raise SourceUnsupported(
        f"Sources of kind {kind} are not known; use postgres, sqlite, csv, xlsx, rest or soap.",
        metadata={"kind": kind},
    )
