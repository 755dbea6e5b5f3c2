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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from tongban.errors import TongbanError
from tongban.exchange.catalogue.canonical import canonical_json

__all__ = ["LEAF_VERSION", "AccessEntry", "LeafInvalid", "decode_leaf", "encode_leaf"]

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


COLUMNS = (
    "at", "node", "caller", "officer", "action", "dataset", "fields",
    "purpose", "case_id", "subject_hmac", "decision", "reason",
)  # fmt: skip


def _cut(text: str | None) -> str | None:
    return None if text is None else text[:_TEXT_LIMIT]


def _instant(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def encode_leaf(entry: AccessEntry) -> bytes:
    """The leaf bytes of an entry (call ``bounded()`` first; this does not cut)."""
    return canonical_json(
        {
            "v": LEAF_VERSION,
            "at": _instant(entry.at),
            "node": entry.node,
            "caller": entry.caller,
            "officer": entry.officer,
            "action": entry.action,
            "dataset": entry.dataset,
            "fields": list(entry.fields),
            "purpose": entry.purpose,
            "case_id": entry.case_id,
            "subject": (
                base64.b64encode(entry.subject_hmac).decode() if entry.subject_hmac else None
            ),
            "decision": entry.decision,
            "reason": entry.reason,
        }
    )


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
            at=datetime.strptime(obj["at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC),
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
