"""Sizes in bytes as people write and read them: ``20GiB``, ``500MB``, ``1048576``."""

from __future__ import annotations

import re

from tongban.exchange.errors import InvalidArgument

__all__ = ["format_size", "parse_size"]

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"\s*(\d{1,15}(?:\.\d{1,6})?)\s*([a-z]{0,3})\s*", re.IGNORECASE)
_MAX = 2**63 - 1  # a bigint column


def parse_size(text: str) -> int:
    """Bytes from ``text``: a number with an optional unit (B, KB, MB, GB, TB in powers of
    1000; KiB, MiB, GiB, TiB in powers of 1024), as ``20GiB`` or ``1.5 TB``. Raises
    InvalidArgument for anything else."""
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise InvalidArgument(
            f"{text[:40]!r} is not a size: give a number of bytes, or one with a unit "
            "such as 500MB or 20GiB.",
            metadata={"field": "size"},
        )
    number = float(match.group(1)) if "." in match.group(1) else int(match.group(1))
    size = int(number * _UNITS[unit])
    if size > _MAX:
        raise InvalidArgument(
            f"{text[:40]!r} is more bytes than can be counted (at most 8 EiB).",
            metadata={"field": "size"},
        )
    return size


def format_size(size: int) -> str:
    """``size`` bytes in the largest binary unit that keeps it at 1 or more: ``20.0 GiB``,
    ``512 B``."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")
