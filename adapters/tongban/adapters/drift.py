"""Source schema drift: has a column the mapping needs gone or shrunk? Pure.

Legacy schemas change under adapters. An added column, a widened one, or a change to a
column the mapping does not read is harmless and accepted silently. A needed column that
is dropped or renamed, changes type family (text → integer), or is narrowed (a shorter
``varchar``, fewer digits, a smaller integer) stops the stream: the rows read since may
hold truncated or reinterpreted values, and publishing them would spread garbage to
every subscriber. For the cursor and key columns, which order the reads, any change of
type stops it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from tongban.adapters.errors import SourceSchemaChanged
from tongban.adapters.sdk import Column

__all__ = ["Drift", "check_drift", "schema_drift"]


@dataclass(frozen=True)
class Drift:
    """One needed column that changed for the worse."""

    column: str
    problem: str
    """``missing``, ``type_changed`` or ``narrowed``."""


def _narrower(before: int | None, after: int | None) -> bool:
    if after is None:
        return False
    return before is None or after < before


def schema_drift(
    previous: Sequence[Column] | None,
    current: Sequence[Column],
    needed: Collection[str],
    ordering: Collection[str] = (),
) -> list[Drift]:
    """Return how the ``needed`` columns got worse between ``previous`` (the accepted
    schema, ``None`` on a first run) and ``current``. ``ordering`` names the cursor and
    key columns, whose type must not change at all."""
    now = {c.name: c for c in current}
    before = {c.name: c for c in previous or ()}
    drifts: list[Drift] = []
    for name in needed:
        column = now.get(name)
        if column is None:
            drifts.append(Drift(name, "missing"))
            continue
        old = before.get(name)
        if old is None:
            continue
        if old.family != column.family or (name in ordering and old.type_name != column.type_name):
            drifts.append(Drift(name, "type_changed"))
        elif (
            _narrower(old.max_length, column.max_length)
            or _narrower(old.precision, column.precision)
            or _narrower(old.scale, column.scale)
        ):
            drifts.append(Drift(name, "narrowed"))
    return drifts


def check_drift(stream: str, source: str, drifts: Sequence[Drift]) -> None:
    """Return if ``drifts`` is empty; raise ``SourceSchemaChanged`` describing them."""
    if not drifts:
        return
    described = ", ".join(f"{d.column} ({d.problem.replace('_', ' ')})" for d in drifts)
    raise SourceSchemaChanged(
        f"Stream {stream} stopped: {source} changed columns the mapping needs: {described}; "
        f"fix the source or the mapping, then accept the new schema to resume.",
        metadata={
            "stream": stream,
            "columns": ",".join(d.column for d in drifts),
            "changes": ",".join(f"{d.column}:{d.problem}" for d in drifts),
        },
    )
