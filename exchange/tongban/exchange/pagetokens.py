"""Page tokens: where a listing's next page starts, authenticated by the node.

A caller hands back the ``next_page_token`` of one page to get the next. The position
inside (a dataset code, a log index) goes straight into SQL, so a caller must not choose
it: a token is the position and an HMAC-SHA256 tag over it and the listing it belongs to,
base64url. A token that was not issued by a node holding the same key, that belongs to
another listing, or that was altered in any way is refused with ``PageTokenInvalid``
before anything reads it.

The node's key is derived (HKDF) from the access-log key in ``DATA_DIR/secrets``, so every
node of one exchange accepts the tokens of the others and a restart keeps them valid;
``PageTokens.ephemeral()`` is for stores built without it (tokens then last as long as
the process). Tokens carry no expiry: the position is not secret, only unforgeable.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tongban.exchange.errors import InvalidArgument

__all__ = ["PageTokenInvalid", "PageTokens", "peek_unverified"]

_KEY_INFO = b"tongban page tokens v1"
_TAG = 16  # bytes of the HMAC kept: 128 bits, not worth guessing
_MAX_TOKEN = 512  # characters; issued tokens hold a dataset code or a number


class PageTokenInvalid(InvalidArgument):
    """A page token this node did not issue (forged, altered, or from another listing)."""

    reason = "PAGE_TOKEN_INVALID"
    status = "INVALID_ARGUMENT"


class PageTokens:
    """Issues and opens the page tokens of the listings named by ``scope``."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("a page token key must be at least 32 bytes")
        self._key = key

    @classmethod
    def from_log_key(cls, log_key: bytes) -> PageTokens:
        """The node's tokens: the key is derived from the access-log key."""
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_INFO)
        return cls(hkdf.derive(log_key))

    @classmethod
    def ephemeral(cls) -> PageTokens:
        """Tokens under a random key: valid only in this process."""
        return cls(secrets.token_bytes(32))

    def _tag(self, scope: str, position: bytes) -> bytes:
        return hmac.digest(self._key, scope.encode() + b"\x00" + position, "sha256")[:_TAG]

    def issue(self, scope: str, position: str) -> str:
        """The token of ``position`` in the listing ``scope``."""
        data = position.encode()
        return base64.urlsafe_b64encode(data + self._tag(scope, data)).decode().rstrip("=")

    def open(self, scope: str, token: str, *, field: str = "page_token") -> str | None:
        """The position in ``token``, or None for "" (the first page).

        Raises ``PageTokenInvalid`` (naming ``field``) for any token not issued for
        ``scope`` under this key.
        """
        if not token:
            return None
        position, tag = _split(token)
        if not position or not hmac.compare_digest(tag, self._tag(scope, position)):
            raise _invalid(field)
        return position.decode()


def peek_unverified(token: str, *, field: str = "page_token") -> str | None:
    """The position ``token`` claims, WITHOUT checking its tag: None for "".

    Only for a pre-check of the token's form before it reaches ``PageTokens.open``,
    which decides. Raises ``PageTokenInvalid`` if ``token`` is not a token at all.
    """
    if not token:
        return None
    position, _ = _split(token)
    try:
        text = position.decode()
    except UnicodeDecodeError:
        text = ""
    if not text:
        raise _invalid(field)
    return text


def _split(token: str) -> tuple[bytes, bytes]:
    """The position and tag of ``token`` (b"" and b"" if it is not base64url)."""
    if len(token) > _MAX_TOKEN or not token.isascii():
        return b"", b""
    try:
        data = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
    except binascii.Error:
        return b"", b""
    if base64.urlsafe_b64encode(data).decode().rstrip("=") != token:
        return b"", b""  # not the one spelling we issue (stray bits in the last character)
    return data[:-_TAG], data[-_TAG:]


def _invalid(field: str) -> PageTokenInvalid:
    return PageTokenInvalid(
        f"The {field} is not one this node issued for this listing; start again without it.",
        metadata={"field": field},
    )
