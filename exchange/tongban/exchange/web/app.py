"""The web console's routes (server-rendered, jinja2 with autoescape; docs/web.md)."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import logging
import math
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from typing import Any

import asyncpg
import jinja2
from aiohttp import BodyPartReader, web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from multidict import MultiDict, MultiDictProxy
from yarl import URL

from tongban.errors import TongbanError
from tongban.exchange.audit.anomalies import MAX_PERIOD, find_anomalies
from tongban.exchange.audit.checkpoints import Checkpointer
from tongban.exchange.audit.covert import CovertCases
from tongban.exchange.audit.log import AccessLog, SubjectHasher
from tongban.exchange.audit.merkle import leaf_hash, verify_inclusion
from tongban.exchange.audit.note import open_checkpoint
from tongban.exchange.audit.recorder import AccessRecorder
from tongban.exchange.audit.store import AuditStore, SearchFilters
from tongban.exchange.audit.verify import verify_log
from tongban.exchange.departments import Department, DepartmentStore
from tongban.exchange.errors import DepartmentNotFound, InvalidArgument
from tongban.exchange.http import http_status
from tongban.exchange.licensing.authorisations import HolderAuthorisation, authorise
from tongban.exchange.licensing.case_store import CaseStore
from tongban.exchange.licensing.errors import ServiceItemUnknown
from tongban.exchange.licensing.item_store import ServiceItemStore
from tongban.exchange.licensing.items import (
    DataSource,
    LicenceSource,
    Material,
    ServiceItem,
)
from tongban.exchange.licensing.package_store import OpenedPackage, PackageStore
from tongban.exchange.licensing.packages import Step
from tongban.exchange.licensing.ratings import Rating, RatingStore
from tongban.exchange.licensing.service import Licensing
from tongban.exchange.licensing.supervision import (
    SupervisionRow,
    month_range,
    supervision_report,
)
from tongban.exchange.licensing.supervision_cases import (
    SupervisedCaseKind,
    SupervisedCasesReader,
)
from tongban.exchange.sharing.model import ShareClass
from tongban.exchange.sharing.service import Sharing
from tongban.exchange.web.i18n import translator
from tongban.exchange.web.sessions import LinkInvalid, LinkKind, Session, SessionStore
from tongban.licence import BUILTIN_REGISTRY, VerificationResult
from tongban.licence.uploads import (
    MAX_UPLOAD,
    RenderSlots,
    UploadUnreadable,
    licence_text_from_upload,
)
from tongban.signing.clock import Clock

__all__ = ["WebConsole"]

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


class WebConsole:
    """The console's pages on the node's HTTP app; see docs/web.md."""

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
    ) -> None:
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

    # ---- wiring -------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        app.middlewares.append(self._errors)
        r = app.router
        r.add_get("/", self._to_console)
        r.add_get("/console", self._to_console)
        r.add_get("/console/", self._home)
        r.add_get("/console/verify", self._verify)
        r.add_post("/console/verify", self._verify)
        r.add_get("/console/link/{kind}", self._link_form)
        r.add_post("/console/link/{kind}", self._link_open)
        r.add_post("/console/logout", self._logout)
        r.add_get("/console/audit", self._audit_search)
        r.add_get("/console/audit/entry/{index}", self._audit_entry)
        r.add_get("/console/audit/export.{fmt}", self._audit_export)
        r.add_get("/console/audit/verify", self._audit_verify_page)
        r.add_post("/console/audit/verify", self._audit_verify_start)
        r.add_get("/console/audit/verify/status", self._audit_verify_status)
        r.add_get("/console/audit/anomalies", self._audit_anomalies)
        r.add_get("/console/audit/volume", self._audit_volume)
        r.add_get("/console/audit/covert", self._audit_covert)
        r.add_get("/console/subject", self._subject)
        r.add_post("/console/subject/authorise", self._subject_authorise)
        r.add_post("/console/subject/rate", self._subject_rate)
        r.add_get("/console/rate/{token}", self._rate_page)
        r.add_post("/console/rate/{token}", self._rate_page)
        r.add_get("/console/catalogue", self._catalogue)
        r.add_get("/console/items", self._item_catalogue)
        r.add_get("/console/supervision", self._supervision)
        r.add_get("/console/supervision/cases", self._supervision_cases)
        # Two known files, served from memory: a path from the request never reaches the
        # file system (aiohttp's static handler raised on names too long for it).
        r.add_get("/console/static/{name}", self._static)
        app.on_cleanup.append(self._cancel_jobs)

    async def _cancel_jobs(self, app: web.Application) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

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

    # ---- errors -------------------------------------------------------------------------

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not request.path.startswith("/console"):
            return await handler(request)
        t = translator(self._lang(request))
        try:
            _no_nul(request)
            self._same_origin(request)
            if not request.path.startswith("/console/static/"):
                await self._find_session(request)
            return await handler(request)
        except web.HTTPException as e:
            refusal = _REFUSALS.get(e.status)
            if refusal is None:  # a redirect
                raise
            reason, key = refusal
            return self._message(request, e.status, t(key), reason=reason)
        except TongbanError as e:
            page = self._message(request, http_status(e), e.message, reason=e.reason)
            if e.retry_after is not None:
                page.headers["Retry-After"] = str(math.ceil(e.retry_after))
            return page
        except Exception:  # noqa: BLE001 - a page, never a stack trace; the log has it
            incident = secrets.token_hex(6)
            _log.exception("incident %s on %s", incident, request.path)
            return self._message(
                request, 500, t("error.internal", incident=incident), reason="INTERNAL"
            )

    # ---- pages --------------------------------------------------------------------------

    async def _static(self, request: web.Request) -> web.Response:
        asset = self._assets.get(request.match_info["name"])
        if asset is None:
            raise web.HTTPNotFound
        body, kind = asset
        return web.Response(
            body=body,
            content_type=kind,
            charset="utf-8",
            headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
        )

    async def _home(self, request: web.Request) -> web.Response:
        return self._page(request, "home.html")

    async def _verify(self, request: web.Request) -> web.StreamResponse:
        t = translator(self._lang(request))
        if request.method == "GET" and "qr" not in request.query:
            return self._page(request, "verify.html", result=None, outcome=None, text="")
        if request.method == "GET":
            text = request.query.get("qr", "")
        else:
            given = await self._verify_input(request)
            if isinstance(given, web.StreamResponse):
                return given
            text = given
        text = text.strip()
        if not text:
            return self._page(
                request, "verify.html", status=400, result=None, outcome=None, text="",
                error=t("verify.none"), reason="INVALID_ARGUMENT",
            )  # fmt: skip
        if len(text) > 64 * 1024:
            raise UploadUnreadable("The text is over 64 KiB; it is not a licence.")
        result = await self._licensing.verify(text)
        issuer = await self._departments.find(result.issuer) if result.issuer else None
        return self._page(
            request,
            "verify.html",
            result=result,
            outcome=_outcome(result),
            issuer_name=issuer.name if issuer else "",
            type_names=_type_names(result.licence_type),
            checked_at=self._clock.now(),
            text="" if text.count(".") >= 2 else text,
        )

    async def _verify_input(self, request: web.Request) -> str | web.StreamResponse:
        """The text to verify from a posted form: the text field, else the uploaded file."""
        t = translator(self._lang(request))
        too_large = self._message(
            request, 413, t("error.too_large", mb=MAX_UPLOAD // 2**20), reason="PAYLOAD_TOO_LARGE"
        )
        if request.content_length is not None and request.content_length > MAX_UPLOAD + 65536:
            # Read and drop what the browser sends, so that it gets the page, not a reset.
            await _drain(request)
            return too_large
        if request.content_type != "multipart/form-data":
            form = await _form(request)
            return str(form.get("qr", ""))
        text = ""
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader) or part.name is None:
                    continue
                data = bytearray()
                while chunk := await part.read_chunk(65536):
                    data += chunk
                    if len(data) > MAX_UPLOAD:
                        await _drain(request)
                        return too_large
                if part.name == "qr" and data.strip():
                    text = data.decode("utf-8", "replace")
                elif part.name == "file" and data and not text:
                    text = await licence_text_from_upload(bytes(data), self.renders)
        except ValueError as e:  # a missing boundary, a malformed part
            raise FormUnreadable(
                "The upload could not be read (the form is malformed); choose the file "
                "again and send it from the page."
            ) from e
        return text

    async def _link_form(self, request: web.Request) -> web.Response:
        kind = _kind(request)
        return self._page(request, "link.html", kind=kind, token=request.query.get("token", ""))

    async def _link_open(self, request: web.Request) -> web.Response:
        kind = _kind(request)
        form = await _form(request)
        now = self._clock.now()
        try:
            token, session = await self._sessions.start(kind, str(form.get("token", "")), now)
        except LinkInvalid as e:
            return self._message(request, 403, e.message, reason=e.reason)
        if previous := request.cookies.get(_COOKIE):  # one session per browser
            await self._sessions.revoke(previous, now)
        to = "/console/subject"
        if kind == "login":
            department = await self._departments.find(session.principal)
            auditor = department is not None and "auditor" in department.roles
            to = "/console/audit" if auditor else "/console/catalogue"
        response = web.HTTPSeeOther(to)
        response.set_cookie(
            _COOKIE,
            token,
            max_age=int((session.expires - now).total_seconds()),
            httponly=True,
            samesite="Strict",
            path="/console",
            secure=self._secure(request),
        )
        raise response

    async def _logout(self, request: web.Request) -> web.Response:
        """Revoke the session (on every node) and drop the cookie."""
        if value := request.cookies.get(_COOKIE):
            await self._sessions.revoke(value, self._clock.now())
        response = web.HTTPSeeOther("/console/")
        response.del_cookie(
            _COOKIE, path="/console", secure=self._secure(request), httponly=True, samesite="Strict"
        )
        raise response

    # ---- audit --------------------------------------------------------------------------

    async def _filters(self, request: web.Request, who: Session, action: str) -> SearchFilters:
        q = request.query
        for name in _FILTERS:
            if len(q.get(name, "")) > 200:
                raise InvalidArgument(f"'{name}' is too long (at most 200 characters).")
        decision = q.get("decision", "").strip() or None
        if decision not in (None, "allowed", "denied"):
            raise InvalidArgument("'decision' must be allowed, denied or empty.")
        subject = q.get("subject", "").strip()
        filters = SearchFilters(
            subject_hmac=self._hasher(subject) if subject else None,
            caller=q.get("caller", "").strip() or None,
            officer=q.get("officer", "").strip() or None,
            dataset=q.get("dataset", "").strip() or None,
            purpose=q.get("purpose", "").strip() or None,
            case_id=q.get("case", "").strip() or None,
            decision=decision,
            start=_instant(q.get("from", ""), "from", self._zone),
            end=_instant(q.get("to", ""), "to", self._zone),
        )
        filters.where(1)  # validate (start before end) before anything is logged
        # Logged whatever the filters: a search or an export of everyone reads everyone.
        await self._log_view(who.principal, who.officer, action, filters.subject_hmac, "audit")
        return filters

    async def _audit_search(self, request: web.Request) -> web.Response:
        auth = await self._department_session(request, auditor=True)
        if isinstance(auth, web.Response):
            return auth
        session, _ = auth
        searched = any(request.query.get(n, "").strip() for n in _FILTERS) or (
            "page" in request.query
        )
        entries: list[Any] = []
        token = ""
        if searched:
            filters = await self._filters(request, session, "audit.search")
            entries, token = await self._store.search(
                filters, page_size=_PAGE, page_token=request.query.get("page", "")
            )
        params = {k: v for k, v in request.query.items() if k in _FILTERS and v}
        return self._page(
            request,
            "audit_search.html",
            entries=entries,
            searched=searched,
            next_token=token,
            params=params,
            logged=bool(params.get("subject")),
        )

    async def _audit_entry(self, request: web.Request) -> web.Response:
        auth = await self._department_session(request, auditor=True)
        if isinstance(auth, web.Response):
            return auth
        session, _ = auth
        text = request.match_info["index"]
        if not _INDEX.fullmatch(text):
            raise InvalidArgument("The entry index must be a whole number (0, 1, 2, ...).")
        entry = await self._store.entry(int(text))
        checkpoint = await self._checkpoints.latest()
        if checkpoint.size <= entry.index:
            checkpoint = await self._checkpoints.sign_now()
        proof = await self._store.inclusion(entry.index, checkpoint.size)
        signed = open_checkpoint(
            checkpoint.note, [(self._origin, self._verifier)], origin=self._origin
        )
        verify_inclusion(leaf_hash(entry.leaf), entry.index, signed.size, proof, signed.root)
        if entry.subject_hmac is not None:
            await self._log_view(
                session.principal, session.officer, "audit.entry", entry.subject_hmac, "audit"
            )
        return self._page(
            request,
            "audit_entry.html",
            entry=entry,
            proof=proof,
            checkpoint=checkpoint,
            verifier_key=self._checkpoints.verifier_key,
        )

    async def _audit_export(self, request: web.Request) -> web.StreamResponse:
        auth = await self._department_session(request, auditor=True)
        if isinstance(auth, web.Response):
            return auth
        session, _ = auth
        fmt = request.match_info["fmt"]
        if fmt not in ("csv", "jsonl"):
            raise web.HTTPNotFound
        filters = await self._filters(request, session, "audit.export")
        stamp = self._clock.now().astimezone(self._zone).strftime("%Y%m%d-%H%M%S")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/csv; charset=utf-8"
                if fmt == "csv"
                else "application/jsonl; charset=utf-8",
                "Content-Disposition": f'attachment; filename="access-log-{stamp}.{fmt}"',
                "Cache-Control": "no-store",
            }
        )
        await response.prepare(request)
        columns = list(_export_columns())
        if fmt == "csv":
            await response.write("\ufeff".encode() + _csv_line(columns))  # BOM: Excel reads UTF-8
        async for entry in self._store.export(filters):
            row = entry.to_dict()
            if fmt == "csv":
                row["fields"] = " ".join(entry.fields)
                await response.write(_csv_line([row[c] for c in columns]))
            else:
                await response.write((json.dumps(row, ensure_ascii=False) + "\n").encode())
        await response.write_eof()
        return response

    async def _audit_verify_page(self, request: web.Request) -> web.Response:
        auth = await self._department_session(request, auditor=True)
        if isinstance(auth, web.Response):
            return auth
        job = request.query.get("job", "")
        return self._page(
            request,
            "audit_verify.html",
            job=job if job in self._jobs else "",
            state=self._jobs.get(job),
        )

    async def _audit_verify_start(self, request: web.Request) -> web.Response:
        auth = await self._department_session(request, auditor=True)
        if isinstance(auth, web.Response):
            return auth
        running = [k for k, j in self._jobs.items() if j.state == "running"]
        if running:  # one full check at a time per node
            raise web.HTTPSeeOther(f"/console/audit/verify?job={running[0]}")
        job_id = secrets.token_urlsafe(9)
        job = _VerifyJob()
        self._jobs = {job_id: job}  # keep only the latest result
        task = asyncio.get_running_loop().create_task(self._run_verify(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        raise web.HTTPSeeOther(f"/console/audit/verify?job={job_id}")

    async def _run_verify(self, job: _VerifyJob) -> None:
        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total

        try:
            await self._checkpoints.sign_now()
            report = await verify_log(
                self._pool, origin=self._origin, verifier=self._verifier, progress=progress
            )
        except TongbanError as e:
            job.state, job.message = (
                ("corrupt" if e.reason == "LOG_CORRUPT" else "failed"),
                e.message,
            )
            return
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            job.state, job.message = (
                "failed",
                f"The database could not be read ({type(e).__name__}).",
            )
            return
        job.state = "ok"
        job.done = job.total = report.size
        job.result = {
            "size": report.size,
            "checkpoints": report.checkpoints,
            "seconds": round(report.seconds, 2),
            "root": base64.b64encode(report.root).decode(),
        }

    async def _audit_verify_status(self, request: web.Request) -> web.Response:
        auth = await self._department_session(request, auditor=True)
        if isinstance(auth, web.Response):
            return web.json_response({"state": "refused"}, status=auth.status)
        job = self._jobs.get(request.query.get("job", ""))
        if job is None:
            return web.json_response({"state": "unknown"}, status=404)
        t = translator(self._lang(request))
        text = (
            t("verifylog.ok", **job.result)
            if job.state == "ok"
            else t("verifylog.bad", message=job.message)
            if job.state in ("corrupt", "failed")
            else t("verifylog.running")
        )
        return web.json_response(
            {"state": job.state, "done": job.done, "total": job.total, "text": text},
            headers={"Cache-Control": "no-store"},
        )

    async def _audit_anomalies(self, request: web.Request) -> web.Response:
        auth = await self._department_session(request, auditor=True)
        if isinstance(auth, web.Response):
            return auth
        end = _instant(request.query.get("to", ""), "to", self._zone) or self._clock.now()
        start = _instant(request.query.get("from", ""), "from", self._zone) or end - timedelta(
            days=1
        )
        if start >= end or end - start > MAX_PERIOD:
            raise InvalidArgument("The period must be 1 second to 31 days long.")
        found = await find_anomalies(self._pool, start=start, end=end)
        return self._page(request, "audit_anomalies.html", anomalies=found, start=start, end=end)

    async def _audit_volume(self, request: web.Request) -> web.Response:
        auth = await self._department_session(request, auditor=True)
        if isinstance(auth, web.Response):
            return auth
        today = self._clock.now().astimezone(self._zone).date()
        first = today - timedelta(days=_VOLUME_DAYS - 1)
        series = await self._store.daily_volume(first, _VOLUME_DAYS, self._working_offset)
        days = [first + timedelta(days=i) for i in range(_VOLUME_DAYS)]
        return self._page(
            request, "audit_volume.html", chart=_chart(days, series), days=_VOLUME_DAYS
        )

    async def _audit_covert(self, request: web.Request) -> web.Response:
        """The covert cases (the declaration in force of each); the look is logged."""
        auth = await self._department_session(request, auditor=True)
        if isinstance(auth, web.Response):
            return auth
        session, _ = auth
        department = request.query.get("department", "").strip()
        if len(department) > 63:
            raise InvalidArgument(
                "'department' is too long: a department code has at most 63 characters.",
                metadata={"field": "department"},
            )
        include_ended = request.query.get("all", "") == "1"
        now = self._clock.now()
        cases, token = await self._covert.list_cases(
            now=now,
            department=department or None,
            include_ended=include_ended,
            page_size=_PAGE,
            page_token=request.query.get("page", ""),
        )
        described = f"covert cases department={department}" if department else "covert cases"
        await self._log_view(
            session.principal,
            session.officer,
            "audit.covert",
            None,
            described + (" include_ended" if include_ended else ""),
        )
        params = {"department": department, "all": "1" if include_ended else ""}
        return self._page(
            request,
            "audit_covert.html",
            cases=cases,
            now=now,
            next_token=token,
            params={k: v for k, v in params.items() if v},
        )

    # ---- subject and catalogue -------------------------------------------------------------

    async def _subject(self, request: web.Request) -> web.Response:
        return await self._subject_page(request)

    async def _subject_page(
        self,
        request: web.Request,
        *,
        made: tuple[str, HolderAuthorisation] | None = None,
        rated: Rating | None = None,
    ) -> web.Response:
        t = translator(self._lang(request))
        session = self._session(request)
        if session is None or session.kind != "subject":
            return self._message(
                request, 401, t("login.required").split("（")[0].split(" (")[0],
                reason="LINK_REQUIRED",
            )  # fmt: skip
        subject = self._hasher(session.principal)
        # The view itself is logged first, so it is part of what the subject sees.
        await self._log_view("subject", None, "subject.view", subject, "subject view")
        accesses, token, withheld = await self._store.subject_accesses(
            subject, self._clock.now(), page_size=1000, page_token=request.query.get("page", "")
        )
        departments = [d for d in await self._departments.list() if d.status.value == "active"]
        return self._page(
            request,
            "subject.html",
            subject_id=session.principal,
            accesses=accesses,
            withheld=withheld,
            next_token=token,
            authorisations=await self._licensing.authorisations.of_holder(session.principal),
            departments=departments,
            licence_types=list(self._licensing.registry),
            made=made,
            now=self._clock.now(),
            cases=await self._applicant_cases(session.principal),
            **await self._applicant_packages(session.principal),
            ratings=await self._ratings.of_applicant(session.principal) if self._ratings else {},
            rated=rated,
            rating_enabled=self._ratings is not None,
        )

    async def _applicant_cases(self, applicant: str) -> list[dict[str, Any]]:
        """The applicant's cases with their due dates as they stand and how overdue they
        are (进度查询)."""
        if self._cases is None:
            return []
        now = self._clock.now()
        clock = self._cases.clock
        shown = []
        for case in await self._cases.of_applicant(applicant):
            promised, legal, _ = clock.current_due(case, now)
            shown.append(
                {
                    "case": case,
                    "promised": promised,
                    "legal": legal,
                    "overdue": clock.overdue(case, now).name.lower(),
                }
            )
        return shown

    async def _applicant_packages(self, applicant: str) -> dict[str, Any]:
        """The packages (一件事) opened for the applicant, newest first, with each step's
        item name (进度查询): ``packages`` (package, steps in order) and ``item_names``."""
        if self._packages is None:
            return {"packages": [], "item_names": {}}
        opened = await self._packages.of_applicant(applicant)
        names = await self._item_names({s.item for p in opened for s in p.steps})
        shown: list[tuple[OpenedPackage, list[Step]]] = [(p, _in_order(p.steps)) for p in opened]
        return {"packages": shown, "item_names": names}

    async def _item_names(self, codes: set[str]) -> dict[str, str]:
        """Item code to its current name, for the codes still in the catalogue."""
        names: dict[str, str] = {}
        if self._items is None:
            return names
        for code in sorted(codes):
            try:
                names[code] = (await self._items.get(code)).spec.name
            except ServiceItemUnknown:
                continue  # the code alone is shown
        return names

    async def _subject_authorise(self, request: web.Request) -> web.Response:
        """The holder makes a one-time authorisation code (授权用证) for one department,
        purpose and case; the page shows it once."""
        t = translator(self._lang(request))
        session = self._session(request)
        if session is None or session.kind != "subject":
            return self._message(request, 401, t("login.required"), reason="LINK_REQUIRED")
        form = await _form(request)
        hours = str(form.get("hours", "24")).strip()
        licence_type = str(form.get("licence_type", "")).strip() or None
        if licence_type is not None:
            self._licensing.registry.get(licence_type)  # LicenceTypeUnknown: a 400 page
        if not hours.isdigit() or not 1 <= int(hours) <= 720:
            raise InvalidArgument(
                "Give how long the code stays valid: 1 to 720 hours.", metadata={"field": "hours"}
            )
        made = await authorise(
            self._pool, self._log, self._hasher, node=self._node, by="subject",
            holder_id=session.principal, department=str(form.get("department", "")),
            purpose=str(form.get("purpose", "")), case_id=str(form.get("case_id", "")),
            licence_type=licence_type, valid_for=timedelta(hours=int(hours)),
            now=self._clock.now(),
        )  # fmt: skip
        return await self._subject_page(request, made=made)

    async def _subject_rate(self, request: web.Request) -> web.Response:
        """The signed-in applicant rates a decided case of theirs (好差评), or rates it again
        after the department answered its rectification."""
        t = translator(self._lang(request))
        session = self._session(request)
        if session is None or session.kind != "subject":
            return self._message(request, 401, t("login.required"), reason="LINK_REQUIRED")
        if self._ratings is None:
            raise web.HTTPNotFound
        form = await _form(request)
        rating = await self._ratings.rate(
            session.principal,
            str(form.get("case", "")),
            str(form.get("score", "")),
            str(form.get("comment", "")),
            self._clock.now(),
        )
        return await self._subject_page(request, rated=rating)

    async def _rate_page(self, request: web.Request) -> web.Response:
        """A decision's one-time rating link: GET shows the case and the form, POST rates
        (spending the link)."""
        if self._ratings is None:
            raise web.HTTPNotFound
        token = request.match_info["token"]
        now = self._clock.now()
        if request.method == "POST":
            form = await _form(request)
            rating = await self._ratings.rate_by_link(
                token, str(form.get("score", "")), str(form.get("comment", "")), now
            )
            return self._page(request, "rate.html", case=None, rating=rating, token="")
        case = await self._ratings.link_case(token, now)
        names = await self._item_names({case.item})
        return self._page(
            request, "rate.html", case=case, rating=None, token=token, item_name=names
        )

    async def _catalogue(self, request: web.Request) -> web.Response:
        auth = await self._department_session(request, auditor=False)
        if isinstance(auth, web.Response):
            return auth
        _, department = auth
        q = request.query
        share = q.get("class", "")
        try:
            share_class = ShareClass(share) if share else None
        except ValueError:
            raise InvalidArgument("Choose a share class from the list.") from None
        datasets, token = await self._sharing.datasets.search(
            department.code,
            keyword=q.get("keyword", "").strip() or None,
            owner=q.get("owner", "").strip() or None,
            share_class=share_class,
            page_size=_PAGE,
            page_token=q.get("page", ""),
        )
        now = self._clock.now()
        pending = [
            g
            for g in await self._sharing.grants.list(caller=department.code, now=now)
            if g.status.value == "pending"
        ]
        return self._page(
            request,
            "catalogue.html",
            datasets=datasets,
            next_token=token,
            department=department,
            pending=pending,
            now=now,
        )

    async def _item_catalogue(self, request: web.Request) -> web.Response:
        """The service items (事项目录): what each asks for and where each material comes
        from. For departments, as the dataset catalogue is: the material sources name the
        datasets and fields a case looks up."""
        auth = await self._department_session(request, auditor=False)
        if isinstance(auth, web.Response):
            return auth
        if self._items is None:
            raise web.HTTPNotFound
        department = request.query.get("department", "").strip()
        if len(department) > 63:
            raise InvalidArgument(
                "'department' is too long: a department code has at most 63 characters.",
                metadata={"field": "department"},
            )
        items, token = await self._items.list(
            department=department, page_size=_PAGE, page_token=request.query.get("page", "")
        )
        names = {d.code: d.name for d in await self._departments.list()}
        # The packages (一件事) coordinated by the department asked for (all of them
        # without one), on the first page: each step's item links to its entry above.
        packages = (
            await self._packages.list_current(department=department)
            if self._packages is not None and not request.query.get("page")
            else []
        )
        return self._page(
            request,
            "items.html",
            items=[_item_view(item) for item in items],
            packages=packages,
            department_names=names,
            next_token=token,
            params={"department": department} if department else {},
        )

    async def _supervision(self, request: web.Request) -> web.Response:
        """The supervision report (电子监察) for auditors: a chart and the figures per
        department and month the cases were opened in (docs/supervision.md). By default
        the last 12 months; the counts name nobody, so the view is not logged."""
        auth = await self._department_session(request, auditor=True)
        if isinstance(auth, web.Response):
            return auth
        department = request.query.get("department", "").strip()
        if len(department) > 63:
            raise InvalidArgument(
                "'department' is too long: a department code has at most 63 characters.",
                metadata={"field": "department"},
            )
        now = self._clock.now()
        first, last = month_range(
            request.query.get("from", ""), request.query.get("to", ""), fields=("from", "to")
        )
        if first is None and last is None:
            last = now.astimezone(timezone(self._working_offset)).date().replace(day=1)
            first = date(last.year - (last.month < 12), last.month % 12 + 1, 1)
        if department and await self._departments.find(department) is None:
            raise DepartmentNotFound(f"No department {department!r} is registered.")
        report = await supervision_report(
            self._pool,
            now=now,
            offset=self._working_offset,
            department=department or None,
            first_month=first,
            last_month=last,
        )
        by_department: dict[str, list[SupervisionRow]] = {}
        for row in report.rows:
            by_department.setdefault(row.department, []).append(row)
        return self._page(
            request,
            "supervision.html",
            now=now,
            first=first.strftime("%Y-%m") if first else "",
            last=last.strftime("%Y-%m") if last else "",
            charts=[
                {"department": code, "rows": rows, "chart": _month_bars(rows)}
                for code, rows in by_department.items()
            ],
        )

    async def _supervision_cases(self, request: web.Request) -> web.Response:
        """The cases behind a figure of the supervision report (auditors): decided late,
        past the legal date, or sent to 补正 more than once, of a department and month
        opened, a page at a time with the node's page tokens. They name applicants: each
        view is one access-log entry (``case.supervision``), written by the reader."""
        auth = await self._department_session(request, auditor=True)
        if isinstance(auth, web.Response):
            return auth
        session, reader = auth
        department = request.query.get("department", "").strip()
        if len(department) > 63:
            raise InvalidArgument(
                "'department' is too long: a department code has at most 63 characters.",
                metadata={"field": "department"},
            )
        word = request.query.get("kind", "")
        kind = next((k for k in SupervisedCaseKind if k.value == word), None)
        month = request.query.get("month", "")
        page = await self._supervised.cases(
            reader,
            session.officer,
            kind,
            department,
            month,
            page_size=_PAGE,
            page_token=request.query.get("page", ""),
            now=self._clock.now(),
        )
        params = {"kind": word}
        if department:
            params["department"] = department
        if month.strip():
            params["month"] = month.strip()
        return self._page(
            request,
            "supervision_cases.html",
            kind=word,
            cases=page.cases,
            next_token=page.next_page_token,
            params=params,
        )


def _month_bars(rows: Sequence[SupervisionRow]) -> dict[str, Any]:
    """A stacked bar per month, scaled to 640 by 200: decided within the promised limit,
    decided late, and open past a due date now (overdue)."""
    width, height, left, bottom, top_gap = 640, 200, 40, 24, 10
    series: tuple[tuple[str, str, Callable[[SupervisionRow], int]], ...] = (
        ("within", _COLOURS[2], lambda r: r.decided_within_promised),
        ("late", _COLOURS[3], lambda r: r.decided_late),
        ("overdue", _COLOURS[1], lambda r: r.overdue_promised + r.overdue_legal),
    )
    top = max((sum(f(r) for _, _, f in series) for r in rows), default=0) or 1
    slot = (width - left - 10) / max(len(rows), 1)
    bar = min(40.0, slot * 0.7)
    scale = (height - bottom - top_gap) / top
    bars = []
    for i, row in enumerate(rows):
        x = round(left + i * slot + (slot - bar) / 2, 1)
        base = float(height - bottom)
        parts = []
        for name, colour, count in series:
            n = count(row)
            if n:
                h = round(n * scale, 1)
                base -= h
                parts.append({"name": name, "colour": colour, "y": round(base, 1), "h": h, "n": n})
        bars.append(
            {
                "x": x,
                "w": round(bar, 1),
                "cx": round(x + bar / 2, 1),
                "month": row.month,
                "parts": parts,
            }
        )
    return {
        "width": width,
        "height": height,
        "left": left,
        "top": top,
        "y_top": top_gap,
        "y_zero": height - bottom,
        "bars": bars,
        "series": [(name, colour) for name, colour, _ in series],
    }


def _in_order(steps: Sequence[Step]) -> list[Step]:
    """The steps in the order they can be handled: those waiting for nothing first, then
    those after them, and so on (by item code within a level)."""
    after = {s.item: s.after for s in steps}
    depth: dict[str, int] = {}

    def level(item: str, seen: frozenset[str] = frozenset()) -> int:
        # ``seen``: packages are checked for cycles when registered; a bad row must
        # still not recurse forever on a page.
        if item not in depth:
            earlier = [a for a in after.get(item, ()) if a in after and a not in seen]
            depth[item] = 1 + max((level(a, seen | {item}) for a in earlier), default=-1)
        return depth[item]

    return sorted(steps, key=lambda s: (level(s.item), s.item))


def _material_view(material: Material) -> dict[str, Any]:
    """A material with its source spelled out for the item catalogue page."""
    source = material.source
    if isinstance(source, LicenceSource):
        return {
            "m": material,
            "kind": "licence",
            "licence_type": source.licence_type,
            "type_names": _type_names(source.licence_type),
            "names": source.disclose,
        }
    if isinstance(source, DataSource):
        return {
            "m": material,
            "kind": "dataset",
            "dataset": source.dataset,
            "names": source.fields,
            "key_from": source.key_from,
        }
    return {"m": material, "kind": "submitted"}


def _item_view(item: ServiceItem) -> dict[str, Any]:
    issues = item.spec.issues_licence
    return {
        "item": item,
        "issues": issues,
        "issues_names": _type_names(issues) if issues else ("", ""),
        "materials": [_material_view(m) for m in item.spec.materials],
    }


def _kind(request: web.Request) -> LinkKind:
    kind = request.match_info["kind"]
    if kind == "login":
        return "login"
    if kind == "subject":
        return "subject"
    raise web.HTTPNotFound


async def _drain(request: web.Request) -> None:
    seen = 0
    while seen < _DRAIN and (chunk := await request.content.read(1 << 20)):
        seen += len(chunk)


def _load_assets() -> dict[str, tuple[bytes, str]]:
    """The console's static files (name: content and type), read once from the package."""
    from importlib import resources

    root = resources.files("tongban.exchange.web") / "static"
    return {name: ((root / name).read_bytes(), kind) for name, kind in _ASSETS.items()}


def _export_columns() -> tuple[str, ...]:
    return (
        "index", "at", "node", "caller", "officer", "action", "dataset", "fields", "purpose",
        "case_id", "subject_hmac", "decision", "reason", "leaf",
    )  # fmt: skip


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """A text cell a spreadsheet will not run: one starting with = + - @ tab or CR gets a
    leading apostrophe (OWASP's rule for CSV injection). The log entry keeps the
    original; only the export's cell changes."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _csv_line(values: Sequence[object]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerow(["" if v is None else spreadsheet_safe(v) for v in values])
    return out.getvalue().encode()


def _chart(days: list[Any], series: dict[str, list[int]]) -> dict[str, Any]:
    """Lines of an inline SVG chart: one polyline per department, scaled to 640 by 240."""
    width, height, left, bottom = 640, 240, 40, 24
    top = max((max(v) for v in series.values()), default=0) or 1
    step = (width - left - 10) / max(len(days) - 1, 1)

    def x(i: int) -> float:
        return round(left + i * step, 1)

    def y(n: int) -> float:
        return round(height - bottom - n * (height - bottom - 10) / top, 1)

    lines = [
        {
            "name": name,
            "colour": _COLOURS[i % len(_COLOURS)],
            "points": " ".join(f"{x(j)},{y(n)}" for j, n in enumerate(counts)),
            "total": sum(counts),
        }
        for i, (name, counts) in enumerate(sorted(series.items()))
    ]
    ticks = [{"x": x(i), "label": d.strftime("%m-%d")} for i, d in enumerate(days) if i % 2 == 0]
    return {
        "width": width,
        "height": height,
        "lines": lines,
        "ticks": ticks,
        "top": top,
        "y_top": y(top),
        "y_zero": y(0),
        "left": left,
    }


def _type_names(code: str) -> tuple[str, str]:
    """(Chinese, English) names of a licence type, or the code twice if unknown."""
    known = {t.code: t for t in BUILTIN_REGISTRY}
    kind = known.get(code)
    return (kind.name_zh, kind.name_en) if kind is not None else (code, code)
