"""What every page of the web console shares: its state, sessions, the page and message
renderers, the checks on forms and origins (docs/web.md)."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import asyncpg
import jinja2
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from multidict import MultiDict, MultiDictProxy
from yarl import URL

from tongban.errors import TongbanError
from tongban.exchange.audit.checkpoints import Checkpointer
from tongban.exchange.audit.covert import CovertCases
from tongban.exchange.audit.log import AccessLog, SubjectHasher
from tongban.exchange.audit.recorder import AccessRecorder
from tongban.exchange.audit.store import AuditStore
from tongban.exchange.departments import Department, DepartmentStore
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.federation.trail import CaseTrail
from tongban.exchange.licensing.case_store import CaseStore
from tongban.exchange.licensing.item_store import ServiceItemStore
from tongban.exchange.licensing.package_store import PackageStore
from tongban.exchange.licensing.ratings import RatingStore
from tongban.exchange.licensing.service import Licensing
from tongban.exchange.licensing.supervision_cases import (
    SupervisedCasesReader,
)
from tongban.exchange.metrics import NodeMetrics
from tongban.exchange.sharing.service import Sharing
from tongban.exchange.web.i18n import translator
from tongban.exchange.web.sessions import Session, SessionStore
from tongban.licence import VerificationResult
from tongban.licence.uploads import (
    RenderSlots,
)
from tongban.signing.clock import Clock

__all__ = ["ConsoleBase", "CrossSiteRequest", "FormUnreadable"]

_log = logging.getLogger(__name__)

_COOKIE = "tongban_session"
_SESSION = web.RequestKey[Session | None]("tongban.session")
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_LANG_COOKIE = "tongban_lang"
_PAGE = 50
_DRAIN = 64 * 1024 * 1024  # read (and drop) at most this much of an oversized upload
_VOLUME_DAYS = 14
_FILTERS = ("subject", "caller", "officer", "dataset", "purpose", "case", "decision", "from", "to")
_FORGED_CHECKS = {"signature", "issuer", "trust-list", "disclosure"}
_COLOURS = ("#1f5fa8", "#c0392b", "#2e8b57", "#b8860b", "#6a3d9a", "#008b8b", "#d2691e", "#555")
# ASCII digits only: str.isdigit() also accepts "²" and "٣", which int() may refuse.
_INDEX = re.compile(r"[0-9]{1,18}")
_ASSETS = {"console.css": "text/css", "console.js": "text/javascript"}
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9999, 1, 1, tzinfo=UTC)
#: aiohttp's own refusals (no such page, wrong method, form too large) on console paths:
#: their reason code and message key.
_REFUSALS = {
    400: ("INVALID_ARGUMENT", "error.bad_request"),
    404: ("NOT_FOUND", "error.not_found"),
    405: ("METHOD_NOT_ALLOWED", "error.method"),
    413: ("PAYLOAD_TOO_LARGE", "error.form_too_large"),
}


class CrossSiteRequest(TongbanError):
    """A console form sent from another site (login CSRF and the like)."""

    reason = "CROSS_SITE_REQUEST"
    status = "PERMISSION_DENIED"


class FormUnreadable(TongbanError):
    """A posted form that is not what a browser sends (malformed multipart, a charset
    that is not one, bytes that are not text)."""

    reason = "FORM_UNREADABLE"
    status = "INVALID_ARGUMENT"


@dataclass
class _VerifyJob:
    done: int = 0
    total: int = 0
    state: str = "running"  # running, ok, corrupt, failed
    message: str = ""
    result: dict[str, object] = field(default_factory=dict)


def _outcome(result: VerificationResult) -> str:
    if result.verified:
        return "valid"
    if result.status in ("revoked", "suspended", "cancelled", "superseded"):
        return result.status
    if result.check == "validity":
        return "expired"
    if result.check in _FORGED_CHECKS:
        return "forged"
    if result.check == "format":
        return "unreadable"
    return "invalid"


def _instant(value: str, name: str, zone: tzinfo) -> datetime | None:
    value = value.strip()
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
        parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=zone)
        # Converting to UTC (the database, the page) must not leave datetime's range.
        in_range = _EARLIEST <= parsed < _LATEST
    except (ValueError, OverflowError):
        in_range = False
    if not in_range:
        raise InvalidArgument(
            f"'{name}' must be a date or time from 1970 to 9998, like 2025-06-01 or "
            "2025-06-01T09:30.",
            metadata={"field": name},
        )
    return parsed


def _origin_key(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of an origin or URL, the port filled in for http and https;
    None for ``null``, a relative or malformed URL, or one without a host."""
    try:
        parsed = URL(url)
        if not parsed.absolute or not parsed.host:
            return None
        return parsed.scheme.lower(), parsed.host.lower(), parsed.port
    except ValueError:
        return None


def _no_nul(request: web.Request) -> None:
    """Refuse a NUL character in the query: no text column can hold one."""
    for name, value in request.query.items():
        if "\x00" in name or "\x00" in value:
            raise InvalidArgument(
                f"The query parameter {name[:40]!r} contains a NUL character; remove it.",
                metadata={"field": name[:40]},
            )


async def _form(request: web.Request) -> MultiDictProxy[Any]:
    """The fields of a posted URL-encoded form (none for any other type: the console's
    forms send nothing else, and the verify page reads its uploads itself, without the
    temporary files aiohttp would spool); raise FormUnreadable if it cannot be parsed."""
    if request.content_type != "application/x-www-form-urlencoded":
        return MultiDictProxy(MultiDict())
    try:
        return await request.post()
    except (ValueError, LookupError) as e:  # UnicodeDecodeError is a ValueError
        raise FormUnreadable(
            "The form could not be read (it is not what a browser sends); send it again "
            "from the page."
        ) from e


class ConsoleBase:
    """The console's state and the helpers its page families use."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        licensing: Licensing,
        sharing: Sharing,
        access_log: AccessLog,
        hasher: SubjectHasher,
        checkpointer: Checkpointer,
        log_origin: str,
        log_verifier: Ed25519PublicKey,
        clock: Clock,
        node_name: str,
        public_url: str | None = None,
        cases: CaseStore | None = None,
        packages: PackageStore | None = None,
        items: ServiceItemStore | None = None,
        ratings: RatingStore | None = None,
        working_offset: timedelta = timedelta(hours=8),
        trails: Callable[[str], Awaitable[CaseTrail]] | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        """``trails(case_id)``: the case followed across exchanges (the federation's
        ``CaseTrails.follow``); None without federation, and the trail page shows only
        the local entries then. ``metrics``: where pages the database could not serve
        are counted (``tongban_database_unavailable``)."""
        self._trails = trails
        self._metrics = metrics
        self._pool = pool
        self._working_offset = working_offset
        # Where the offices are: how instants are shown, bare times read and days counted.
        self._zone = timezone(working_offset)
        self._cases = cases
        self._packages = packages
        self._items = items
        self._ratings = ratings
        self._licensing = licensing
        self._sharing = sharing
        self._log = access_log
        self._hasher = hasher
        self._checkpoints = checkpointer
        self._store = AuditStore(pool, hasher.page_tokens())  # the same tokens on every node
        self._covert = CovertCases(pool, hasher.page_tokens())
        self._supervised = SupervisedCasesReader(
            pool, access_log, hasher.page_tokens(), node_name, offset=working_offset
        )
        self._departments = DepartmentStore(pool)
        self._sessions = SessionStore(pool)
        self._public_url = public_url
        self._public_origin = _origin_key(public_url) if public_url else None
        # Behind a proxy that ends TLS the request is plain HTTP, but the browser's is not.
        self._https = bool(public_url and public_url.startswith("https://"))
        self.renders = RenderSlots()
        """Bounds the PDF and image decodes of uploads (docs/web.md, "Verification")."""
        self._origin = log_origin
        self._verifier = log_verifier
        self._clock = clock
        self._node = node_name
        self._recorder = AccessRecorder(node_name)
        self._jobs: dict[str, _VerifyJob] = {}
        self._assets = _load_assets()
        self._tasks: set[asyncio.Task[None]] = set()
        self._env = jinja2.Environment(
            loader=jinja2.PackageLoader("tongban.exchange.web", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self._env.filters["local_time"] = lambda d: d.astimezone(self._zone).strftime(
            "%Y-%m-%d %H:%M:%S"
        )
        self._env.filters["b64"] = lambda b: base64.b64encode(b).decode() if b else ""

    # ---- helpers ------------------------------------------------------------------------

    @staticmethod
    async def _to_console(request: web.Request) -> web.Response:
        raise web.HTTPSeeOther("/console/")

    def _lang(self, request: web.Request) -> str:
        asked = request.query.get("lang")
        if asked in ("zh", "en"):
            return asked
        cookie = request.cookies.get(_LANG_COOKIE)
        if cookie in ("zh", "en"):
            return cookie
        accept = request.headers.get("Accept-Language", "").lower()
        return "en" if accept.startswith("en") else "zh"

    def _session(self, request: web.Request) -> Session | None:
        """The browser's session, as looked up before the handler ran (None if none)."""
        return request.get(_SESSION)

    async def _find_session(self, request: web.Request) -> None:
        value = request.cookies.get(_COOKIE)
        found = await self._sessions.find(value, self._clock.now()) if value else None
        request[_SESSION] = found

    def _secure(self, request: web.Request) -> bool:
        """Whether cookies get the Secure flag: the browser reached the console over TLS."""
        return self._https or request.secure

    def _same_origin(self, request: web.Request) -> None:
        """Refuse a state-changing request that another site made the browser send.

        ``Sec-Fetch-Site`` decides when the browser sends it (web content cannot set it):
        ``cross-site`` and ``same-site`` are refused, ``same-origin`` and ``none`` (the
        user's own action) pass. Without it (older browsers, curl), an ``Origin`` that is
        neither TONGBAN_PUBLIC_URL's origin nor the host the request was sent to is
        refused, ``null`` included; no ``Origin`` passes. See docs/web.md, "Signing in"."""
        if request.method in _SAFE_METHODS:
            return
        fetch_site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
        origin = request.headers.get("Origin")
        if fetch_site in ("same-origin", "none"):
            return
        if fetch_site not in ("cross-site", "same-site"):
            if origin is None:
                return
            sent_from = _origin_key(origin)
            if sent_from is not None and sent_from in (
                self._public_origin,
                _origin_key(f"{sent_from[0]}://{request.host}"),
            ):
                return
        where = f" at {self._public_url}" if self._public_url else " directly"
        raise CrossSiteRequest(
            "This form was sent from another site, so the console refused it; open the "
            f"console{where} and send the form from its own page.",
            metadata={"origin": (origin or "")[:100], "sec_fetch_site": fetch_site[:20]},
        )

    def _page(
        self, request: web.Request, template: str, status: int = 200, **context: Any
    ) -> web.Response:
        lang = self._lang(request)
        html = self._env.get_template(template).render(
            t=translator(lang),
            lang=lang,
            path=request.path,
            query=dict(request.query),
            session=self._session(request),
            **context,
        )
        response = web.Response(
            text=html,
            status=status,
            content_type="text/html",
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                "media-src 'self' blob:; style-src 'self'; script-src 'self'; "
                "frame-ancestors 'none'; form-action 'self'",
                "X-Content-Type-Options": "nosniff",
                # Not no-referrer: under it browsers send "Origin: null" on the console's
                # own forms, which the same-origin check must then refuse. No page links
                # elsewhere, so a referrer never leaves the console's origin.
                "Referrer-Policy": "same-origin",
            },
        )
        if request.query.get("lang") in ("zh", "en"):
            response.set_cookie(
                _LANG_COOKIE,
                lang,
                max_age=365 * 86400,
                samesite="Strict",
                httponly=True,
                secure=self._secure(request),
            )
        return response

    def _message(
        self, request: web.Request, status: int, message: str, *, reason: str = ""
    ) -> web.Response:
        return self._page(request, "message.html", status=status, message=message, reason=reason)

    async def _department_session(
        self, request: web.Request, *, auditor: bool
    ) -> tuple[Session, Department] | web.Response:
        t = translator(self._lang(request))
        session = self._session(request)
        if session is None or session.kind != "login":
            return self._message(request, 401, t("login.required"), reason="LOGIN_REQUIRED")
        department = await self._departments.find(session.principal)
        if department is None or department.status.value != "active":
            return self._message(request, 403, t("login.required"), reason="DEPARTMENT_INACTIVE")
        if auditor and "auditor" not in department.roles:
            return self._message(request, 403, t("login.auditor"), reason="AUDITOR_ROLE_REQUIRED")
        return session, department

    async def _log_view(
        self,
        caller: str,
        officer: str | None,
        action: str,
        subject_hmac: bytes | None,
        purpose: str,
    ) -> None:
        """Write a page view of personal data to the access log before the page is sent."""
        await self._log.append(
            [
                self._recorder.entry(
                    at=self._clock.now(),
                    department=caller,
                    officer=officer,
                    action=action,
                    purpose=purpose,
                    subject_hmac=subject_hmac,
                )
            ]
        )


def _load_assets() -> dict[str, tuple[bytes, str]]:
    """The console's static files (name: content and type), read once from the package."""
    from importlib import resources

    root = resources.files("tongban.exchange.web") / "static"
    return {name: ((root / name).read_bytes(), kind) for name, kind in _ASSETS.items()}
