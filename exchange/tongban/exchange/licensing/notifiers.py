"""Notifiers: telling the applicant that their case (办件) changed state.

A ``CaseNotice`` is what one transition says, and only that: the case, the item, the
department, the applicant's subject id, the new state, the outcome and licence of a
decision, and the due dates as they stand. Officers' free-text reasons are never in a
notice. A ``Notifier`` delivers notices; SMS gateways differ per province, so the node
ships two that hand the notice on to whatever sends the message:

- ``FileNotifier`` appends one JSON line per notice to a local file (mode 0600, fsync'd);
- ``WebhookNotifier`` POSTs the same JSON, signed with HMAC-SHA256, retrying outages.

A notifier raises only ``NotifyFailed``. Notices are sent after the case moved: a failed
notice is logged and never undoes the move. See ``docs/notifiers.md``.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import hmac
import ipaddress
import json
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self
from urllib.parse import urlsplit

import httpx

from tongban.errors import TongbanError
from tongban.exchange.errors import ConfigInvalid
from tongban.exchange.licensing.cases import Case, CaseState, Outcome, Transition

__all__ = [
    "MIN_SECRET_BYTES",
    "CaseNotice",
    "FileNotifier",
    "Notifier",
    "NotifyFailed",
    "WebhookNotifier",
    "notice_of",
    "notifier_from_setting",
]

MIN_SECRET_BYTES = 16
"""The shortest webhook signing secret accepted."""

_FIRST_DELAY = 0.5  # seconds before the second attempt; doubled after each failure
_MAX_DELAY = 30.0  # the longest wait between attempts, a 429's Retry-After included


class NotifyFailed(TongbanError):
    """A notice could not be delivered (after its retries). The case move it reports
    stands; the caller logs this and carries on."""

    reason = "NOTIFY_FAILED"
    status = "UNAVAILABLE"

    def __init__(self, event_id: str, last_error: str, *, attempts: int, where: str) -> None:
        super().__init__(
            f"Notice {event_id} was not delivered to {where} after {attempts} attempt(s), "
            f"last: {last_error}; check that the receiver is up and accepts it.",
            metadata={"event_id": event_id, "last_error": last_error, "attempts": str(attempts)},
        )
        self.event_id = event_id
        self.last_error = last_error
        """What went wrong last: ``HTTP 503``, ``timeout``, ``OSError ENOSPC`` …"""
        self.attempts = attempts


@dataclass(frozen=True)
class CaseNotice:
    """One state change of a case, as the applicant is told it. No free text, and no
    personal data but the applicant's subject id (the receiver needs it to reach them)."""

    event_id: str
    """Unique per transition (``{case_number}:{seq}``): the same on every retry, so a
    receiver can drop duplicates."""
    case_number: str
    item_code: str
    item_name: str
    department: str
    """The handling department's code."""
    applicant: str
    """The applicant's subject id (统一社会信用代码 or 公民身份号码)."""
    state: str
    """The state the case arrived in (a ``CaseState`` value: ``accepted``, ``correction`` …)."""
    outcome: str | None
    """For ``decided``: ``approved`` or ``refused``; otherwise None."""
    licence_number: str | None
    """For an approval: the number of the licence issued; otherwise None."""
    at: datetime
    """When the transition happened."""
    promised_due_at: datetime
    legal_due_at: datetime
    rating_link: str | None = None
    """For ``decided``: the applicant's one-time link to rate the case (好差评), when the
    node makes one; otherwise None, and the key is left out of the JSON."""

    def __post_init__(self) -> None:
        # Misuse by the caller, not a delivery failure: raise at once.
        for name in ("at", "promised_due_at", "legal_due_at"):
            value: datetime = getattr(self, name)
            if value.tzinfo is None or value.utcoffset() is None:
                raise ValueError(f"CaseNotice.{name} must be an aware datetime")
        if self.state not in set(CaseState):
            raise ValueError(f"CaseNotice.state {self.state!r} is not a case state")
        if self.outcome is not None and self.outcome not in set(Outcome):
            raise ValueError(f"CaseNotice.outcome {self.outcome!r} is not an outcome")
        if not self.event_id:
            raise ValueError("CaseNotice.event_id must not be empty")

    def to_dict(self) -> dict[str, str | None]:
        """The notice as JSON values (times in ISO 8601 with their offset); ``rating_link``
        only when set."""
        return {
            "event_id": self.event_id,
            "case_number": self.case_number,
            "item_code": self.item_code,
            "item_name": self.item_name,
            "department": self.department,
            "applicant": self.applicant,
            "state": str(self.state),
            "outcome": None if self.outcome is None else str(self.outcome),
            "licence_number": self.licence_number,
            "at": self.at.isoformat(),
            "promised_due_at": self.promised_due_at.isoformat(),
            "legal_due_at": self.legal_due_at.isoformat(),
        } | ({"rating_link": self.rating_link} if self.rating_link is not None else {})

    def to_json(self) -> bytes:
        """The notice as one line of UTF-8 JSON (sorted keys, no newline): the exact bytes
        a webhook signs and sends and a file notifier writes."""
        text = json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return text.encode("utf-8")


def notice_of(
    case: Case, transition: Transition, *, item_name: str, rating_link: str | None = None
) -> CaseNotice:
    """The notice of ``transition``, which brought ``case`` to its present state (the case
    as it stands right after the move), with ``rating_link`` for a decision. Raises
    ValueError if the transition did not end in the case's state, or if a rating link is
    given for another state."""
    if rating_link is not None and case.state is not CaseState.DECIDED:
        raise ValueError(f"only a decision's notice carries a rating link, not {case.state}")
    if transition.to_state is not case.state:
        raise ValueError(
            f"transition {transition.seq} ends in {transition.to_state}, case {case.number} "
            f"is in {case.state}"
        )
    return CaseNotice(
        event_id=f"{case.number}:{transition.seq}",
        case_number=case.number,
        item_code=case.item,
        item_name=item_name,
        department=case.department,
        applicant=case.applicant,
        state=case.state.value,
        outcome=None if case.outcome is None else case.outcome.value,
        licence_number=case.licence_number,
        at=transition.at,
        promised_due_at=case.promised_due_at,
        legal_due_at=case.legal_due_at,
        rating_link=rating_link,
    )


class Notifier(Protocol):
    """Delivers case notices. ``notify`` returns once the notice is delivered and raises
    only ``NotifyFailed``; ``aclose`` releases what the notifier holds."""

    async def notify(self, notice: CaseNotice) -> None: ...

    async def aclose(self) -> None: ...


class FileNotifier:
    """Appends each notice as one JSON line to ``path`` (created with mode 0600; an
    existing file others may read or write is refused). Each line is written whole and
    fsync'd before ``notify`` returns, in a worker thread, one at a time."""

    def __init__(self, path: Path | str) -> None:
        self._path = Path(path)
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def path(self) -> Path:
        return self._path

    async def notify(self, notice: CaseNotice) -> None:
        """Append ``notice``. Raises NotifyFailed if the file cannot be written."""
        if self._closed:
            raise NotifyFailed(notice.event_id, "notifier closed", attempts=0, where="file")
        line = notice.to_json() + b"\n"
        try:
            async with self._lock:
                await asyncio.to_thread(_append, self._path, line)
        except _FileRefused as e:
            raise NotifyFailed(notice.event_id, str(e), attempts=1, where=str(self._path)) from None
        except OSError as e:
            kind = f"OSError {errno.errorcode.get(e.errno or 0, type(e).__name__)}"
            raise NotifyFailed(notice.event_id, kind, attempts=1, where=str(self._path)) from e
        except Exception as e:  # a fault, not an outage: see WebhookNotifier.notify
            raise NotifyFailed(
                notice.event_id, f"unexpected {type(e).__name__}", attempts=1, where=str(self._path)
            ) from e

    async def aclose(self) -> None:
        """Refuse further notices (the file is opened per notice, so nothing is held)."""
        self._closed = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class _FileRefused(Exception):
    """The notice file exists but is not one to write personal data to."""


def _append(path: Path, line: bytes) -> None:
    # Opened per notice, so a rotated file (moved away by logrotate) is recreated.
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _FileRefused("not a regular file")
        if info.st_mode & 0o077:
            raise _FileRefused(
                f"mode {stat.S_IMODE(info.st_mode):04o} lets others read it; chmod 600 the file"
            )
        # A write torn earlier (disk full, crash) left no newline: end that line first, so
        # it stays one unreadable line instead of spoiling this one.
        if info.st_size and os.pread(fd, 1, info.st_size - 1) != b"\n":
            line = b"\n" + line
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


class WebhookNotifier:
    """POSTs each notice's JSON to ``url`` with ``Tongban-Event-Id`` and
    ``Tongban-Signature: sha256=<hex HMAC-SHA256 of the body under secret>``.

    Connect errors, timeouts (``timeout`` seconds per attempt, all of it), 429 and 5xx are
    retried up to ``attempts`` in all, waiting 0.5 s, 1 s, 2 s … (at most 30 s; longer if a
    429 or 503 says ``Retry-After``) with ``sleep``. Any 2xx is delivered; any other answer
    (a 4xx, a redirect) is final. Only http(s) URLs without credentials; https unless the
    host is loopback. Raises ConfigInvalid for a bad URL, secret, timeout or attempts.

    A ``client`` passed in is used (with this notifier's timeout, never following
    redirects) and left open by ``aclose``; otherwise the notifier makes and closes its own.
    """

    def __init__(
        self,
        url: str,
        *,
        secret: bytes,
        timeout: float = 5.0,
        attempts: int = 3,
        client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._url, self._host, loopback = _check_url(url)
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigInvalid(
                f"The webhook notifier's signing secret has {len(secret)} bytes; give one of "
                f"at least {MIN_SECRET_BYTES} random bytes, shared with the receiver."
            )
        if not timeout > 0:
            raise ConfigInvalid(
                f"The webhook notifier's timeout must be more than 0 seconds, not {timeout}."
            )
        if attempts < 1:
            raise ConfigInvalid(
                f"The webhook notifier needs at least 1 attempt per notice, not {attempts}."
            )
        self._secret = bytes(secret)
        self._timeout = timeout
        self._attempts = attempts
        self._sleep = sleep
        self._owns_client = client is None
        # A proxy cannot reach this node's loopback, so proxy settings apply only elsewhere.
        self._client = client or httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, trust_env=not loopback
        )
        self._closed = False

    @property
    def url(self) -> str:
        return self._url

    def signature(self, body: bytes) -> str:
        """The ``Tongban-Signature`` header value of ``body``."""
        return "sha256=" + hmac.new(self._secret, body, hashlib.sha256).hexdigest()

    async def notify(self, notice: CaseNotice) -> None:
        """Deliver ``notice``, retrying outages. Raises NotifyFailed if it was not
        delivered (its message names the last error and the attempts made)."""
        try:
            await self._deliver(notice)
        except NotifyFailed:
            raise
        except Exception as e:
            # The case has already moved; a fault in delivery must reach the caller as a
            # failed notice (cause kept), never as a failed move.
            raise NotifyFailed(
                notice.event_id, f"unexpected {type(e).__name__}", attempts=1, where=self._host
            ) from e

    async def _deliver(self, notice: CaseNotice) -> None:
        if self._closed:
            raise NotifyFailed(notice.event_id, "notifier closed", attempts=0, where=self._host)
        body = notice.to_json()
        headers = {
            "Content-Type": "application/json",
            "Tongban-Event-Id": notice.event_id,
            "Tongban-Signature": self.signature(body),
        }
        delay = _FIRST_DELAY
        last = ""
        for attempt in range(1, self._attempts + 1):
            asked_wait: float | None = None
            try:
                async with asyncio.timeout(self._timeout):
                    async with self._client.stream(
                        "POST",
                        self._url,
                        content=body,
                        headers=headers,
                        timeout=self._timeout,
                        follow_redirects=False,
                    ) as response:  # the body is never read: only the status counts
                        status = response.status_code
                        retry_after = response.headers.get("retry-after")
            except (TimeoutError, httpx.TimeoutException):
                last = "timeout"
            except httpx.ConnectError:
                last = "connect error"
            except httpx.TransportError as e:
                last = f"transport error ({type(e).__name__})"
            else:
                if 200 <= status < 300:
                    return
                last = f"HTTP {status}"
                if status != 429 and status < 500:
                    raise NotifyFailed(notice.event_id, last, attempts=attempt, where=self._host)
                asked_wait = _retry_after(retry_after)
            if attempt == self._attempts:
                break
            wait = delay if asked_wait is None else max(delay, min(asked_wait, _MAX_DELAY))
            await self._sleep(wait)
            delay = min(delay * 2, _MAX_DELAY)
        raise NotifyFailed(notice.event_id, last, attempts=self._attempts, where=self._host)

    async def aclose(self) -> None:
        """Refuse further notices and close the HTTP client if this notifier made it."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (its seconds form only: the date form
    would need the clock, and the backoff covers it)."""
    text = (value or "").strip()
    return float(text) if text.isdigit() else None


def _check_url(url: str) -> tuple[str, str, bool]:
    """The URL, its host (for messages: the path and query may hold a token), and whether
    the host is loopback. Raises ConfigInvalid for anything but an http(s) URL without
    credentials, https unless loopback."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 -- raises ValueError for a bad port
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL):
        raise ConfigInvalid(
            "The webhook notifier's URL cannot be parsed; give one like https://host/path."
        ) from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigInvalid(
            f"The webhook notifier's URL must be an http(s) URL with a host, like "
            f"https://host/path, not a {parts.scheme or 'schemeless'} URL."
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigInvalid(
            "The webhook notifier's URL must not hold a user name or password; remove them "
            "(notices are authenticated by their signature)."
        )
    loopback = _is_loopback(host)
    if parts.scheme != "https" and not loopback:
        raise ConfigInvalid(
            f"The webhook notifier's URL must use https for host {host} "
            "(plain http is allowed only on loopback: 127.0.0.0/8, ::1, localhost)."
        )
    return url, host, loopback


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback


def notifier_from_setting(text: str, *, secret: bytes) -> Notifier | None:
    """The notifier a setting names: ``""`` none, ``file:/abs/path.jsonl`` a FileNotifier,
    ``webhook:https://host/path`` a WebhookNotifier signing with ``secret`` (which only a
    webhook needs). Raises ConfigInvalid for any other value."""
    value = text.strip()
    if not value:
        return None
    kind, _, rest = value.partition(":")
    if kind == "file":
        if not rest or not os.path.isabs(rest):
            raise ConfigInvalid(
                "A file notifier needs an absolute path, like file:/var/lib/tongban/notices.jsonl."
            )
        return FileNotifier(Path(rest))
    if kind == "webhook":
        return WebhookNotifier(rest, secret=secret)
    raise ConfigInvalid(
        "The case notifier setting must be empty (none), file:/absolute/path.jsonl or "
        "webhook:https://host/path."
    )
