"""One-time links and signed session cookies for the web console (docs/web.md).

A link carries a random 256-bit token; the database keeps only its SHA-256, the kind
(``login`` for a department officer, ``subject`` for a data subject), whom it is for, and
its expiry. Opening the link consumes it (one UPDATE that succeeds once) and the console
sets a session cookie: ``base64url(JSON) . base64url(HMAC-SHA256)`` under a key derived
from the exchange's log key, so every node of one exchange accepts every node's cookies
and nobody without the data dir can mint one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import asyncpg

from tongban.errors import TongbanError

__all__ = [
    "LINK_LIFETIME",
    "LinkInvalid",
    "LinkStore",
    "Session",
    "SessionKey",
]

LinkKind = Literal["login", "subject"]

LINK_LIFETIME = timedelta(minutes=30)
"""How long an unused link stays valid."""
SESSION_LIFETIME: dict[LinkKind, timedelta] = {
    "login": timedelta(hours=8),  # a working day
    "subject": timedelta(hours=1),
}


class LinkInvalid(TongbanError):
    reason = "LINK_INVALID"
    status = "UNAUTHENTICATED"


@dataclass(frozen=True)
class Session:
    """Who the browser is: a department officer (``login``) or a data subject."""

    kind: LinkKind
    principal: str
    """The department code, or the subject id."""
    officer: str | None
    expires: datetime


class SessionKey:
    """Signs and opens session cookies."""

    def __init__(self, log_key: bytes) -> None:
        self._key = hmac.digest(log_key, b"tongban web session v1", "sha256")

    def _mac(self, body: bytes) -> bytes:
        return hmac.digest(self._key, body, "sha256")

    def seal(self, session: Session) -> str:
        body = json.dumps(
            {
                "k": session.kind,
                "p": session.principal,
                "o": session.officer,
                "e": int(session.expires.timestamp()),
            },
            separators=(",", ":"),
        ).encode()
        return f"{_b64(body)}.{_b64(self._mac(body))}"

    def open(self, value: str, now: datetime) -> Session | None:
        """The session in a cookie, or None if it is absent, forged or expired."""
        body_text, _, mac_text = value.partition(".")
        try:
            body, mac = _unb64(body_text), _unb64(mac_text)
        except (ValueError, binascii.Error):
            return None
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            data = json.loads(body)
            kind, principal, officer, expires = data["k"], data["p"], data["o"], data["e"]
        except (ValueError, KeyError, TypeError):
            return None
        if kind not in ("login", "subject") or not isinstance(principal, str):
            return None
        if not isinstance(expires, int) or expires <= now.timestamp():
            return None
        return Session(
            kind,
            principal,
            officer if isinstance(officer, str) else None,
            datetime.fromtimestamp(expires, now.tzinfo),
        )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    if not text or len(text) > 4096:
        raise ValueError("empty or too long")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class LinkStore:
    """One-time links in PostgreSQL (table ``web_link``)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def issue(
        self,
        kind: LinkKind,
        principal: str,
        now: datetime,
        *,
        officer: str | None = None,
        lifetime: timedelta = LINK_LIFETIME,
    ) -> str:
        """Store a new link and return its token (shown once, never stored)."""
        principal = principal.strip()
        if not 1 <= len(principal) <= 64:
            raise LinkInvalid("Name whom the link is for (1-64 characters).")
        token = secrets.token_urlsafe(32)
        await self._pool.execute(
            "INSERT INTO web_link (token_hash, kind, principal, officer, created_at, expires_at)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            _hash(token),
            kind,
            principal,
            officer,
            now,
            now + lifetime,
        )
        return token

    async def consume(self, kind: LinkKind, token: str, now: datetime) -> Session:
        """Use a link once; return the session it opens or raise LinkInvalid."""
        if not 10 <= len(token) <= 100:
            raise LinkInvalid("This link is not valid.")
        row = await self._pool.fetchrow(
            "UPDATE web_link SET used_at = $3 WHERE token_hash = $1 AND kind = $2"
            " AND used_at IS NULL AND expires_at > $3 RETURNING principal, officer",
            _hash(token),
            kind,
            now,
        )
        if row is None:
            raise LinkInvalid("This link is not valid, was already used, or has expired.")
        return Session(kind, row["principal"], row["officer"], now + SESSION_LIFETIME[kind])
