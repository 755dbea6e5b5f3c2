"""Canonical JSON bytes for signing: the JSON Canonicalization Scheme (RFC 8785, JCS).

Two parties that hold equal data produce the same bytes, whatever language or JSON
library they use, so a signature over the bytes verifies on both sides.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

__all__ = ["MAX_SAFE_INTEGER", "canonical_json"]

MAX_SAFE_INTEGER = 2**53 - 1
"""The largest integer magnitude JCS can carry exactly (JCS numbers are IEEE doubles)."""

# RFC 8785 section 3.2.2.2: escape only '"', '\' and U+0000-U+001F; the five with a short
# form use it, the rest \u00xx in lower-case hex. Everything else is written as UTF-8.
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1F]')
_SHORT_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}
_SURROGATE = re.compile(r"[\uD800-\uDFFF]")
# Member names with these characters may sort differently by code point and by UTF-16.
_HIGH = re.compile(r"[\uE000-\U0010FFFF]")


def canonical_json(value: object) -> bytes:
    """Return the RFC 8785 canonical UTF-8 encoding of ``value``.

    ``value`` is built from ``None``, ``bool``, ``int``, ``str``, mappings with ``str``
    keys, lists and tuples. Objects' members are sorted by the UTF-16 code units of their
    names, no whitespace is written, and strings are escaped minimally.

    Floats are refused (``TypeError``) rather than serialised: JCS writes numbers the way
    ECMAScript does, a rule every verifier would have to reproduce bit for bit, and a
    float in data we sign is more likely a bug than a need. Send decimals as strings.

    Raises ``TypeError`` for a float or any other unsupported type (including non-string
    keys) and ``ValueError`` for an integer beyond ±(2**53 - 1) or a string that is not
    valid Unicode (an unpaired surrogate).
    """
    if _fast_path_ok(value):
        # The standard library writes exactly the JCS form for such values: minimal
        # escapes with lower-case \u00xx, literal UTF-8 otherwise, members sorted by code
        # point (the same order as UTF-16 code units when no name has a character at or
        # above U+E000 next to one above U+FFFF; _fast_path_ok sends those the slow way).
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode(
            "utf-8"
        )
    out: list[str] = []
    _write(value, out)
    return "".join(out).encode("utf-8")


def _fast_path_ok(value: object) -> bool:
    """Check ``value`` as ``_write`` would (raising the same errors); return whether
    ``json.dumps`` produces its canonical form."""
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return abs(value) <= MAX_SAFE_INTEGER  # beyond it, the slow path raises precisely
    if isinstance(value, str):
        return _SURROGATE.search(value) is None
    if isinstance(value, list | tuple):
        return all(_fast_path_ok(item) for item in value)
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str) or _SURROGATE.search(key) or _HIGH.search(key):
                return False
            if not _fast_path_ok(item):
                return False
        return True
    return False  # floats and other types: the slow path raises TypeError


def _write(value: object, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif isinstance(value, bool):
        out.append("true" if value else "false")
    elif isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise ValueError(
                f"canonical JSON cannot carry the integer {value} exactly; JCS numbers are "
                f"IEEE doubles, so send integers beyond ±(2**53 - 1) as strings"
            )
        out.append(str(int(value)))
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise TypeError(f"canonical JSON object keys must be str, not {type(key).__name__}")
            _string(key)  # refuse an unpaired surrogate before sorting by UTF-16
        out.append("{")
        for i, key in enumerate(sorted(value, key=_utf16_units)):
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _write(value[key], out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise TypeError(f"canonical JSON cannot represent a {type(value).__name__}")


def _string(text: str) -> str:
    if _SURROGATE.search(text):
        raise ValueError("canonical JSON strings must be valid Unicode (no unpaired surrogates)")
    return '"' + _NEEDS_ESCAPE.sub(_escape, text) + '"'


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _SHORT_ESCAPES.get(char) or f"\\u{ord(char):04x}"


def _utf16_units(key: str) -> bytes:
    # Big-endian UTF-16 compares byte-wise exactly as its code units compare.
    return key.encode("utf-16-be")
