"""What the access-log calls answer (auditor role; covert cases: the covert role), as
typed values mirroring the ``tongban.v1`` audit messages field for field."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = [
    "Anomaly",
    "Checkpoint",
    "ConsistencyProof",
    "CovertCase",
    "CovertCasePage",
    "Entry",
    "EntryPage",
    "EntryWithProof",
    "SubjectAccess",
    "SubjectAccessPage",
]


@dataclass(frozen=True)
class Entry:
    """One access-log entry: ``leaf`` holds its exact leaf bytes (canonical JSON)."""

    index: int
    leaf: bytes
    at: datetime
    node: str
    caller: str
    officer: str
    action: str
    dataset: str
    fields: tuple[str, ...]
    purpose: str
    case_id: str
    subject_hmac: bytes  # HMAC-SHA256 of the subject id under the log key; empty if none
    decision: str  # "allowed" or "denied"
    reason: str


@dataclass(frozen=True)
class EntryPage:
    """A page of entries, oldest first; ``next_page_token`` is empty after the last."""

    entries: tuple[Entry, ...]
    next_page_token: str


@dataclass(frozen=True)
class Checkpoint:
    """A signed checkpoint: ``note`` exactly as signed, ``verifier_key`` the log's key
    (``<name>+<hex key hash>+<base64(0x01‖pubkey)>``)."""

    size: int
    root: bytes
    note: str
    signed_at: datetime
    verifier_key: str


@dataclass(frozen=True)
class EntryWithProof:
    """An entry with its RFC 9162 inclusion proof (bottom up) under ``checkpoint``."""

    entry: Entry
    checkpoint: Checkpoint
    inclusion_proof: tuple[bytes, ...]


@dataclass(frozen=True)
class ConsistencyProof:
    old_size: int
    new_size: int
    proof: tuple[bytes, ...]


@dataclass(frozen=True)
class SubjectAccess:
    """One access to a subject's data, as the subject view shows it."""

    index: int
    at: datetime
    department: str
    department_name: str
    officer: str
    dataset: str
    fields: tuple[str, ...]
    purpose: str
    case_id: str
    decision: str
    reason: str


@dataclass(frozen=True)
class SubjectAccessPage:
    """A page of the subject view; ``withheld`` counts the entries hidden by covert
    embargoes still running (not which)."""

    accesses: tuple[SubjectAccess, ...]
    next_page_token: str
    withheld: int


@dataclass(frozen=True)
class Anomaly:
    kind: str  # volume_jump, many_subjects, out_of_hours or denial_burst
    department: str
    officer: str
    detail: str
    count: int
    baseline: float
    first_at: datetime


@dataclass(frozen=True)
class CovertCase:
    """The declaration in force of a covert case; ``in_force``: its embargo still runs."""

    department: str
    case_id: str
    until: datetime
    legal_basis: str
    declared_at: datetime
    declared_by: str
    in_force: bool


@dataclass(frozen=True)
class CovertCasePage:
    cases: tuple[CovertCase, ...]
    next_page_token: str
