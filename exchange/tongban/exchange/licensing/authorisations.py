"""The holder's authorisation to use their licence (授权用证; docs/personal-data.md).

A licence's personal claims (the legal representative's name on a business licence)
are disclosed to a department only under a grant from the issuer for the purpose, or
with the holder's own consent for one use: a one-time code the holder makes for one
department, one purpose and one case, with an expiry. The holder makes it in the
console's subject view (signed in by their one-time link) or an operator makes it at
their request (``tongban subject authorise``), and gives it to the department that
handles the case, which passes it with ``LicenceService/Fetch``.

The code is 60 random bits, written as 12 Crockford base32 characters in three groups
(``K7Q2-M9XD-3PAB``) so a person can read it out at a counter. Only its SHA-256 is kept.
It is spent by one UPDATE that matches the department, holder, purpose, case (and licence
type, when it names one) and that it is unspent and unexpired, so it opens exactly one
fetch; a guess costs the guesser a logged denial.
"""

from __future__ import annotations

import hashlib
import secrets
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import asyncpg

from tongban.errors import TongbanError
from tongban.exchange.audit.log import AccessLog, SubjectHasher
from tongban.exchange.audit.recorder import AccessRecorder
from tongban.exchange.catalogue.subject_ids import SubjectKind, validate_subject_id
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.sharing.model import normalise_purpose
from tongban.exchange.sharing.policy import MAX_CASE_ID, MAX_PURPOSE

__all__ = [
    "DEFAULT_VALIDITY",
    "MAX_VALIDITY",
    "AuthorisationInvalid",
    "HolderAuthorisation",
    "HolderAuthorisations",
    "authorise",
    "normalise_code",
    "valid_holder",
]

DEFAULT_VALIDITY = timedelta(days=1)
MAX_VALIDITY = timedelta(days=30)
_MIN_VALIDITY = timedelta(minutes=5)
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford: no I, L, O, U
_LOOKALIKES = str.maketrans({"O": "0", "I": "1", "L": "1"})
_CODE_CHARS = 12

MadeVia = Literal["console", "cli"]


class AuthorisationInvalid(TongbanError):
    reason = "AUTHORISATION_INVALID"
    status = "PERMISSION_DENIED"


@dataclass(frozen=True)
class HolderAuthorisation:
    id: uuid.UUID
    holder_id: str
    department: str
    purpose: str
    case_id: str
    licence_type: str | None
    made_via: MadeVia
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    used_number: str | None


def _new_code() -> str:
    chars = "".join(secrets.choice(_ALPHABET) for _ in range(_CODE_CHARS))
    return "-".join(chars[i : i + 4] for i in range(0, _CODE_CHARS, 4))


def normalise_code(text: str) -> str | None:
    """The code's 12 characters, upper-cased, without separators and with look-alikes
    mapped (O→0, I/L→1); None if it cannot be a code."""
    plain = unicodedata.normalize("NFKC", text).upper().translate(_LOOKALIKES)
    plain = "".join(ch for ch in plain if ch not in "- \t")
    if len(plain) != _CODE_CHARS or any(ch not in _ALPHABET for ch in plain):
        return None
    return plain


def _hash(code: str) -> bytes:
    return hashlib.sha256(code.encode()).digest()


def _row(row: asyncpg.Record) -> HolderAuthorisation:
    return HolderAuthorisation(
        id=row["id"],
        holder_id=row["holder_id"],
        department=row["department"],
        purpose=row["purpose"],
        case_id=row["case_id"],
        licence_type=row["licence_type"],
        made_via=row["made_via"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        used_at=row["used_at"],
        used_number=row["used_number"],
    )


class HolderAuthorisations:
    """Makes, spends and lists holders' authorisation codes."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(
        self,
        conn: Any,
        *,
        holder_id: str,
        department: str,
        purpose: str,
        case_id: str,
        licence_type: str | None,
        valid_for: timedelta,
        made_via: MadeVia,
        now: datetime,
    ) -> tuple[str, HolderAuthorisation]:
        """Make a code on ``conn``; return it (shown once, never stored) and its record.

        ``holder_id`` and ``licence_type`` must already be checked by the caller. Raises
        InvalidArgument for an unknown or suspended department, a purpose or case out of
        bounds, or a validity outside 5 minutes to 30 days."""
        purpose = normalise_purpose(purpose)
        if not 1 <= len(purpose) <= MAX_PURPOSE:
            raise InvalidArgument(
                f"Name the purpose the department will use your licence for (1-{MAX_PURPOSE} "
                "characters), e.g. 食品经营许可审批.",
                metadata={"field": "purpose"},
            )
        case_id = case_id.strip()
        if not 1 <= len(case_id) <= MAX_CASE_ID or not case_id.isprintable():
            raise InvalidArgument(
                f"Name the case (办件编号) it is for: 1-{MAX_CASE_ID} printable characters.",
                metadata={"field": "case_id"},
            )
        if not _MIN_VALIDITY <= valid_for <= MAX_VALIDITY:
            raise InvalidArgument(
                "An authorisation is valid for 5 minutes to 30 days.",
                metadata={"field": "valid_for"},
            )
        status = await conn.fetchval(
            "SELECT status FROM department WHERE code = $1", department.strip()
        )
        if status != "active":
            raise InvalidArgument(
                f"No active department {department.strip()[:64]!r} is registered; give the "
                "code of the department that handles the case (e.g. approval).",
                metadata={"field": "department"},
            )
        code = _new_code()
        row = await conn.fetchrow(
            """
            INSERT INTO holder_authorisation (id, code_hash, holder_id, department, purpose,
                case_id, licence_type, made_via, created_at, expires_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
            RETURNING *
            """,
            uuid.uuid4(),
            _hash(code.replace("-", "")),
            holder_id,
            department.strip(),
            purpose,
            case_id,
            licence_type,
            made_via,
            now,
            now + valid_for,
        )
        assert row is not None
        return code, _row(row)

    async def spend(
        self,
        conn: Any,
        code: str,
        *,
        department: str,
        holder_id: str,
        purpose: str,
        case_id: str,
        licence_type: str,
        number: str,
        now: datetime,
    ) -> HolderAuthorisation | None:
        """Spend ``code`` on fetching licence ``number``, on ``conn`` (in the transaction
        that logs the fetch): the authorisation if it matches and was unspent and
        unexpired, else None (and nothing changes)."""
        plain = normalise_code(code)
        if plain is None:
            return None
        row = await conn.fetchrow(
            """
            UPDATE holder_authorisation SET used_at = $7, used_number = $8
            WHERE code_hash = $1 AND department = $2 AND holder_id = $3 AND purpose = $4
              AND case_id = $5 AND (licence_type IS NULL OR licence_type = $6)
              AND used_at IS NULL AND expires_at > $7
            RETURNING *
            """,
            _hash(plain),
            department,
            holder_id,
            normalise_purpose(purpose),
            case_id.strip(),
            licence_type,
            now,
            number,
        )
        return None if row is None else _row(row)

    async def of_holder(self, holder_id: str, limit: int = 200) -> list[HolderAuthorisation]:
        """The holder's authorisations, newest first."""
        rows = await self._pool.fetch(
            "SELECT * FROM holder_authorisation WHERE holder_id = $1"
            " ORDER BY created_at DESC LIMIT $2",
            holder_id,
            limit,
        )
        return [_row(row) for row in rows]


def valid_holder(holder_id: str) -> str:
    """``holder_id`` as a valid citizen id or USCC; raises InvalidSubjectId or
    InvalidArgument naming what is wrong."""
    text = holder_id.strip()
    if not text:
        raise InvalidArgument("Give the holder's id (USCC or citizen id).")
    kind = (
        SubjectKind.PERSON
        if text[:1].isdigit() and len(text) == 18 and (text[6:8] in ("19", "20"))
        else SubjectKind.ENTERPRISE
    )
    try:
        return validate_subject_id(kind, text)
    except TongbanError:
        other = SubjectKind.ENTERPRISE if kind is SubjectKind.PERSON else SubjectKind.PERSON
        try:
            return validate_subject_id(other, text)
        except TongbanError:
            pass
        raise


async def authorise(
    pool: asyncpg.Pool,
    log: AccessLog,
    hasher: SubjectHasher,
    *,
    node: str,
    by: Literal["subject", "operator"],
    holder_id: str,
    department: str,
    purpose: str,
    case_id: str,
    licence_type: str | None,
    valid_for: timedelta,
    now: datetime,
) -> tuple[str, HolderAuthorisation]:
    """Make a holder's authorisation and log it (action ``licence-authorise``, caller
    ``subject`` from the console or ``operator`` from the CLI, reason naming the
    authorisation and the department) in one transaction; return the code and record.

    ``licence_type`` must be a known type or None (checked by the caller)."""
    holder = valid_holder(holder_id)
    async with pool.acquire() as conn, log.transaction(conn) as tx:
        code, record = await HolderAuthorisations(pool).create(
            conn, holder_id=holder, department=department, purpose=purpose,
            case_id=case_id, licence_type=licence_type, valid_for=valid_for,
            made_via="console" if by == "subject" else "cli", now=now,
        )  # fmt: skip
        tx.record(
            [
                AccessRecorder(node, hasher).entry(
                    at=now,
                    department=by,
                    officer=None,
                    action="licence-authorise",
                    purpose=record.purpose,
                    case_id=record.case_id,
                    subject=holder,
                    reason=f"authorisation:{record.id} for {record.department}",
                )
            ]
        )
    return code, record
