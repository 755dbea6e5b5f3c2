"""A verifier's cache of status list tokens, so that status checks keep working offline
until a cached list's ``exp``.

One file per list URI (named by the SHA-256 of the URI) holds the token exactly as
received; it is verified again when read, so a file altered on disk is refused. A newer
token (larger ``iat``) replaces an older one; an older one never replaces a newer one.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Collection, Sequence
from datetime import datetime
from pathlib import Path

from cryptography import x509

from tongban.licence.errors import LicenceFormatInvalid, VerificationFailed
from tongban.licence.status_list import StatusList, verify_status_list
from tongban.signing.files import write_atomic

__all__ = ["StatusListCache"]

_MAX_TOKEN_BYTES = 4 * 1024 * 1024


def _issued_at(token: str) -> int:
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        iat = claims.get("iat") if isinstance(claims, dict) else None
    except (IndexError, ValueError):
        return -1
    return iat if isinstance(iat, int) and not isinstance(iat, bool) else -1


class StatusListCache:
    """Status list tokens kept in directory ``path``."""

    def __init__(self, path: Path) -> None:
        self._path = path

    @property
    def path(self) -> Path:
        """The cache directory."""
        return self._path

    def _file(self, uri: str) -> Path:
        return self._path / (hashlib.sha256(uri.encode("utf-8")).hexdigest()[:32] + ".jwt")

    def token(self, uri: str) -> str | None:
        """Return the cached token for ``uri`` unverified, or None if there is none."""
        try:
            with self._file(uri).open("rb") as f:
                data = f.read(_MAX_TOKEN_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise LicenceFormatInvalid(
                f"The cached status list for {uri} could not be read ({e.strerror})."
            ) from e
        try:
            return data.decode("ascii")
        except UnicodeDecodeError:
            return None

    def load(
        self,
        uri: str,
        *,
        roots: Sequence[x509.Certificate],
        trusted: Collection[x509.Certificate],
        now: datetime,
    ) -> StatusList | None:
        """Return the cached list for ``uri`` verified at ``now``, or None if none is
        cached or the cached one no longer verifies (expired, signer withdrawn)."""
        token = self.token(uri)
        if token is None:
            return None
        try:
            return verify_status_list(token, uri=uri, roots=roots, now=now, trusted=trusted)
        except VerificationFailed:
            return None

    def store(
        self,
        token: str,
        *,
        uri: str,
        roots: Sequence[x509.Certificate],
        trusted: Collection[x509.Certificate],
        now: datetime,
    ) -> StatusList:
        """Verify ``token`` for ``uri`` and keep it unless the cached one is newer; return
        the list it carries.

        Raises what ``verify_status_list`` raises (nothing is written then).
        """
        status_list = verify_status_list(token, uri=uri, roots=roots, now=now, trusted=trusted)
        current = self.token(uri)
        if current is not None and current != token and _issued_at(current) > _issued_at(token):
            cached = self.load(uri, roots=roots, trusted=trusted, now=now)
            if cached is not None:
                return cached
        write_atomic(self._file(uri), token.encode("ascii"), mode=0o644, dir_mode=0o755)
        return status_list
