"""The leaf encoding of an access-log entry, version 1 (see docs/audit-log.md).

A leaf is the RFC 8785 canonical JSON of an object with exactly these members:

    v         1
    at        the instant of the decision, RFC 3339 UTC with microseconds, e.g.
              "2026-11-23T09:00:00.123456Z"
    node      the node that decided
    caller    the calling department's code
    officer   the officer id sent by the caller, or null
    action    what was done, e.g. "query"
    dataset   the dataset code, or null
    fields    the fields asked for (array of strings)
    purpose   the purpose given, or null
    case_id   the case given, or null
    subject   base64 of HMAC-SHA256(log key, subject id), or null
    decision  "allowed" or "denied"
    reason    the denial's reason code, or null

Tools other than ours verify the tree over these bytes with RFC 6962 hashing; to read an
entry they parse the JSON. The subject id never appears in clear.
"""

from __future__ import annotations

import base64
import binascii
import json
from binascii import b2a_base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import Any, Literal

from tongban.errors import TongbanError

__all__ = [
    "LEAF_VERSION",
    "AccessEntry",
    "LeafInvalid",
    "decode_leaf",
    "encode_leaf",
    "leaf_of_columns",
    "sequenced_row",
]

LEAF_VERSION = 1
_TEXT_LIMIT = 200  # logged purposes, case ids and names are cut here (denials may carry junk)
_MEMBERS = {
    "v", "at", "node", "caller", "officer", "action", "dataset", "fields",
    "purpose", "case_id", "subject", "decision", "reason",
}  # fmt: skip


class LeafInvalid(TongbanError):
    reason = "LEAF_INVALID"
    status = "DATA_LOSS"


@dataclass(frozen=True)
class AccessEntry:
    """One decision about one subject's data (or about none, for malformed requests)."""

    at: datetime
    node: str
    caller: str
    officer: str | None
    action: str
    dataset: str | None
    fields: tuple[str, ...]
    purpose: str | None
    case_id: str | None
    subject_hmac: bytes | None
    decision: Literal["allowed", "denied"]
    reason: str | None

    def bounded(self) -> AccessEntry:
        """The entry with free texts cut to what the log keeps."""
        return AccessEntry(
            at=self.at.astimezone(UTC),
            node=self.node,
            caller=self.caller,
            officer=self.officer,
            action=self.action,
            dataset=_cut(self.dataset),
            fields=tuple(_cut(name) or "" for name in self.fields[:200]),
            purpose=_cut(self.purpose),
            case_id=_cut(self.case_id),
            subject_hmac=self.subject_hmac,
            decision=self.decision,
            reason=self.reason,
        )

    def columns(self) -> tuple[object, ...]:
        """Values of the searchable columns, in ``COLUMNS`` order."""
        return (
            self.at, self.node, self.caller, self.officer, self.action, self.dataset,
            list(self.fields), self.purpose, self.case_id, self.subject_hmac,
            self.decision, self.reason,
        )  # fmt: skip


def sequenced_row(entry: AccessEntry) -> tuple[object, ...]:
    """``(0, leaf, *columns)`` of ``entry`` cut to what the log keeps: ``bounded()``,
    ``encode_leaf()`` and ``columns()`` in one pass, without the intermediate entry (the
    sequencer's per-entry work). Raises ValueError for text that is not valid Unicode."""
    at = entry.at.astimezone(UTC)
    # ``text and text[:limit]`` cuts as _cut does, keeping None and "" (a short str's
    # slice is the str itself), without a call per text.
    dataset = entry.dataset and entry.dataset[:_TEXT_LIMIT]
    fields = [name[:_TEXT_LIMIT] for name in entry.fields[:200]]
    purpose = entry.purpose and entry.purpose[:_TEXT_LIMIT]
    case_id = entry.case_id and entry.case_id[:_TEXT_LIMIT]
    leaf = leaf_of_columns(
        at, entry.node, entry.caller, entry.officer, entry.action, dataset, fields,
        purpose, case_id, entry.subject_hmac, entry.decision, entry.reason,
    )  # fmt: skip
    return (
        0, leaf, at, entry.node, entry.caller, entry.officer, entry.action, dataset, fields,
        purpose, case_id, entry.subject_hmac, entry.decision, entry.reason,
    )  # fmt: skip


COLUMNS = (
    "at", "node", "caller", "officer", "action", "dataset", "fields",
    "purpose", "case_id", "subject_hmac", "decision", "reason",
)  # fmt: skip


def _cut(text: str | None) -> str | None:
    return None if text is None else text[:_TEXT_LIMIT]


def _instant(at: datetime) -> str:
    # isoformat, in C, of an instant in UTC gives YYYY-MM-DDTHH:MM:SS.ffffff+00:00, or no
    # fraction when it is .000000 (years 1000-9999, as timestamptz returns them). Without
    # arguments it is three times as fast as with timespec= on a naive copy.
    text = at.astimezone(UTC).isoformat()
    return text[:26] + "Z" if len(text) == 32 else text[:19] + ".000000Z"


def _parse_instant(text: str) -> datetime:
    if len(text) != 27 or text[-1] != "Z" or text[19] != ".":
        raise ValueError("not YYYY-MM-DDTHH:MM:SS.ffffffZ")
    return datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)


def encode_leaf(entry: AccessEntry) -> bytes:
    """The leaf bytes of an entry (call ``bounded()`` first; this does not cut).

    The members are written in RFC 8785 order (sorted; all names are ASCII) with the
    standard library's encoder, which escapes strings exactly as RFC 8785 does. Text that
    is not valid Unicode (a lone surrogate) is refused, as ``canonical_json`` would.
    ``tests/exchange/audit`` checks the result equals ``canonical_json`` of the same object.
    """
    return leaf_of_columns(
        entry.at, entry.node, entry.caller, entry.officer, entry.action, entry.dataset,
        entry.fields, entry.purpose, entry.case_id, entry.subject_hmac, entry.decision,
        entry.reason,
    )  # fmt: skip


def leaf_of_columns(
    at: datetime,
    node: str,
    caller: str,
    officer: str | None,
    action: str,
    dataset: str | None,
    fields: Sequence[str],
    purpose: str | None,
    case_id: str | None,
    subject_hmac: bytes | None,
    decision: str,
    reason: str | None,
) -> bytes:
    """The leaf bytes of the entry whose searchable columns (``COLUMNS`` order) hold these
    values: ``encode_leaf`` without building an ``AccessEntry``. ``audit verify`` compares
    it with each stored leaf, which checks the leaf canonical and its columns equal to it
    in one step. Raises ValueError for text that is not valid Unicode."""
    # Written member by member in RFC 8785 order (sorted; all names ASCII), each string by
    # the standard library's encoder (in C), which escapes exactly as RFC 8785 does: the
    # bytes json.dumps(..., ensure_ascii=False, separators=(",", ":")) gives, in a third
    # of its time. A lone surrogate passes the encoder but not UTF-8: refused below.
    subject = f'"{b2a_base64(subject_hmac, newline=False).decode()}"' if subject_hmac else "null"
    text = "".join(
        (
            '{"action":', _quote(action),
            ',"at":"', _instant(at),
            '","caller":', _quote(caller),
            ',"case_id":', "null" if case_id is None else _quote(case_id),
            ',"dataset":', "null" if dataset is None else _quote(dataset),
            ',"decision":', _quote(decision),
            ',"fields":[', ",".join(map(_quote, fields)),
            '],"node":', _quote(node),
            ',"officer":', "null" if officer is None else _quote(officer),
            ',"purpose":', "null" if purpose is None else _quote(purpose),
            ',"reason":', "null" if reason is None else _quote(reason),
            ',"subject":', subject,
            ',"v":', _VERSION, "}",
        )
    )  # fmt: skip
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("an access entry holds text that is not valid Unicode") from None


_quote: Callable[[str], str] = encode_basestring
_VERSION = str(LEAF_VERSION)


def decode_leaf(leaf: bytes) -> AccessEntry:
    """Parse leaf bytes; raise LeafInvalid unless they are exactly a canonical v1 leaf."""
    try:
        obj: Any = json.loads(leaf)
    except (ValueError, UnicodeDecodeError) as e:
        raise LeafInvalid("The leaf is not JSON.") from e
    if not isinstance(obj, dict) or set(obj) != _MEMBERS or obj["v"] != LEAF_VERSION:
        raise LeafInvalid("The leaf does not have the members of a version 1 entry.")
    try:
        subject = obj["subject"]
        entry = AccessEntry(
            at=_parse_instant(obj["at"]),
            node=obj["node"],
            caller=obj["caller"],
            officer=obj["officer"],
            action=obj["action"],
            dataset=obj["dataset"],
            fields=tuple(obj["fields"]),
            purpose=obj["purpose"],
            case_id=obj["case_id"],
            subject_hmac=base64.b64decode(subject, validate=True) if subject else None,
            decision=obj["decision"],
            reason=obj["reason"],
        )
    except (ValueError, TypeError, KeyError, binascii.Error) as e:
        raise LeafInvalid("A member of the leaf has the wrong type or format.") from e
    if encode_leaf(entry) != leaf:
        raise LeafInvalid("The leaf is not in canonical form.")
    return entry
