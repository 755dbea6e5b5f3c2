"""How a benchmark phase reports why it could not complete: one line, no traceback."""

from __future__ import annotations

from tongban.errors import TongbanError

__all__ = ["describe"]


def describe(error: BaseException) -> str:
    """One line for ``error`` (each of a group's, joined)."""
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(describe(e) for e in error.exceptions)
    if isinstance(error, TongbanError):
        return error.diagnostics()
    return f"{type(error).__name__}: {error}"
