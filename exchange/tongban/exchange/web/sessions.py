"""One-time links and server-side sessions for the web console (docs/web.md).

A link carries a random 256-bit token; the database keeps only its SHA-256, the kind
(``login`` for a department officer, ``subject`` for a data subject), whom it is for, and
its expiry. Opening the link consumes it and starts a session in one statement: the
browser's cookie carries another random 256-bit token, and table ``web_session`` keeps
only its SHA-256 with the kind, whom it is for, the expiry and, once the browser signs
out, when it was revoked. Every node of an exchange shares the database, so a session
works on every node and a revoked one on none. Nothing is signed: the cookie opens a
session only while its row says so, and no key can mint one.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import asyncpg

from tongban.errors import TongbanError

__all__ = [
    "LINK_LIFETIME",
    "SESSION_LIFETIME",
    "LinkInvalid",
    "LinkStore",
    "Session",
    "SessionStore",
]

LinkKind = Literal["login", "subject"]

LINK_LIFETIME = timedelta(minutes=30)
"""How long an unused link stays valid."""
SESSION_LIFETIME: dict[LinkKind, timedelta] = {
    "login": timedelta(hours=8),  # a working day
    "subject": timedelta(hours=1),
}

# secrets.token_urlsafe(32): 43 characters of base64url. Anything else in a cookie is
# not a session, and costs no query.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")


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


class SessionStore:
    """Console sessions in PostgreSQL (table ``web_session``)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def start(self, kind: LinkKind, link_token: str, now: datetime) -> tuple[str, Session]:
        """Consume the one-time link ``link_token`` and start a session, in one statement
        (a link is never spent without a session, nor a session started twice from one
        link). Return the cookie's token (never stored) and the session; raise
        LinkInvalid. Expired sessions are deleted on the way."""
        if not 10 <= len(link_token) <= 100:
            raise LinkInvalid("This link is not valid.")
        token = secrets.token_urlsafe(32)
        expires = now + SESSION_LIFETIME[kind]
        row = await self._pool.fetchrow(
            """
            WITH used AS (
                UPDATE web_link SET used_at = $3
                WHERE token_hash = $1 AND kind = $2 AND used_at IS NULL AND expires_at > $3
                RETURNING kind, principal, officer
            ), expired AS (
                DELETE FROM web_session WHERE expires_at <= $3
            )
            INSERT INTO web_session (token_hash, kind, principal, officer, created_at, expires_at)
            SELECT $4, kind, principal, officer, $3, $5 FROM used
            RETURNING principal, officer
            """,
            _hash(link_token),
            kind,
            now,
            _hash(token),
            expires,
        )
        if row is None:
            raise LinkInvalid("This link is not valid, was already used, or has expired.")
        return token, Session(kind, row["principal"], row["officer"], expires)

    async def find(self, token: str, now: datetime) -> Session | None:
        """The session a cookie's token opens, or None if it is malformed, unknown,
        expired or revoked."""
        if not _TOKEN.fullmatch(token):
            return None
        row = await self._pool.fetchrow(
            "SELECT kind, principal, officer, expires_at FROM web_session"
            " WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > $2",
            _hash(token),
            now,
        )
        if row is None:
            return None
        return Session(row["kind"], row["principal"], row["officer"], row["expires_at"])

    async def revoke(self, token: str, now: datetime) -> None:
        """End the session a cookie's token opens (nothing if there is none): no node
        accepts the token afterwards."""
        if not _TOKEN.fullmatch(token):
            return
        await self._pool.execute(
            "UPDATE web_session SET revoked_at = $2 WHERE token_hash = $1 AND revoked_at IS NULL",
            _hash(token),
            now,
        )
