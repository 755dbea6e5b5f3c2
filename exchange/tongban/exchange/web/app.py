"""The web console's routes (server-rendered, jinja2 with autoescape; docs/web.md): the
page families (audit_pages, subject_pages, catalogue_pages) on one ConsoleBase, and here
the wiring, the error pages, verification, links and sign-out."""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import BodyPartReader, web

from tongban.errors import TongbanError
from tongban.exchange.db import trouble
from tongban.exchange.http import http_status
from tongban.exchange.web.audit_pages import AuditPages
from tongban.exchange.web.base import (
    _COOKIE,
    _DRAIN,
    _REFUSALS,
    ConsoleBase,
    FormUnreadable,
    _form,
    _log,
    _no_nul,
    _outcome,
)
from tongban.exchange.web.catalogue_pages import CataloguePages, _type_names
from tongban.exchange.web.i18n import translator
from tongban.exchange.web.sessions import LinkInvalid, LinkKind
from tongban.exchange.web.subject_pages import SubjectPages
from tongban.licence.uploads import (
    MAX_UPLOAD,
    UploadUnreadable,
    licence_text_from_upload,
)

__all__ = ["WebConsole"]

_TROUBLE_PAGES = {
    # There, but it takes no changes:
    "disk_full": "error.database_writes",
    "read_only": "error.database_writes",
    "resource_limit": "error.database_writes",
    # There, but it stopped the request's work:
    "lock_timeout": "error.database_busy",
    "statement_timeout": "error.database_busy",
}
"""The page's sentence for a ``trouble.condition``; the others: "cannot reach"."""


class WebConsole(AuditPages, SubjectPages, CataloguePages, ConsoleBase):
    """The console's pages on the node's HTTP app; see docs/web.md."""

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
        r.add_get("/console/audit/trail", self._audit_trail)
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
        except trouble.DATABASE_TROUBLE as e:
            unavailable = trouble.refused(e, request.rel_url.raw_path)
            condition = unavailable.metadata["condition"]
            if self._metrics is not None:
                self._metrics.database_unavailable.labels(condition).inc()
            key = _TROUBLE_PAGES.get(condition, "error.database")
            page = self._message(request, 503, t(key), reason=unavailable.reason)
            page.headers["Retry-After"] = str(trouble.RETRY_SECONDS)
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
        result = await self._licensing.trust.verify(text)
        # A peer's department is not ours, whatever its code: never look it up here.
        local_issuer = result.issuer if result.issuer and not result.exchange else None
        issuer = await self._departments.find(local_issuer) if local_issuer else None
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
