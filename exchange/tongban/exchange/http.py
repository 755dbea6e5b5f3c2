"""The node's HTTP listener: /healthz, /metrics, the public licence endpoints:
``/verify`` (a QR text in, the verification result out, as JSON), ``/status-lists/{id}``
(signed Token Status Lists) and ``/trust-list`` (the signed trust list), and the web
console under ``/console/`` (``tongban.exchange.web``)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tongban.errors import TongbanError
from tongban.exchange.db import trouble
from tongban.exchange.db.database import Database
from tongban.exchange.db.fair_pool import department as pool_department
from tongban.exchange.errors import DatabaseUnavailable
from tongban.exchange.fairness import CpuShare, metered
from tongban.exchange.metrics import NodeMetrics
from tongban.exchange.server.limits import CallLimiter, RateLimited

if TYPE_CHECKING:
    from tongban.exchange.licensing.service import Licensing
    from tongban.exchange.licensing.trust import LicenceTrust
    from tongban.exchange.web import WebConsole

__all__ = ["CONSOLE", "MAX_VERIFY_BODY", "PUBLIC", "Admission", "build_http_app", "http_status"]

_log = logging.getLogger(__name__)

#: The largest /verify request accepted (a QR holds at most 4,296 characters; an SD-JWT
#: licence is under 64 KiB).
MAX_VERIFY_BODY = 64 * 1024
_STATUS_LIST_TYPE = "application/statuslist+jwt"
_TRUST_LIST_TYPE = "application/jwt"
# ASCII digits only: str.isdigit() also accepts "²" and "٣", which int() may refuse.
_LIST_ID = re.compile(r"[0-9]{1,9}")


#: The HTTP status of each gRPC status code (google/rpc/code.proto's "HTTP Mapping").
_HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
#: Reason codes for the refusals aiohttp raises itself (no route, wrong method, too big).
_HTTP_REASONS = {
    400: ("INVALID_ARGUMENT", "The request is malformed; send it again as the API describes."),
    404: ("NOT_FOUND", "There is nothing at this path; check the URL."),
    405: ("METHOD_NOT_ALLOWED", "This path does not accept that method; check the API."),
    413: ("PAYLOAD_TOO_LARGE", "The request body is too large."),
}


def http_status(error: TongbanError) -> int:
    """Return the HTTP status for ``error``'s gRPC-style ``status`` (INVALID_ARGUMENT 400,
    UNAUTHENTICATED 401, PERMISSION_DENIED 403, NOT_FOUND 404, RESOURCE_EXHAUSTED 429,
    UNAVAILABLE 503, ...); 500 for INTERNAL, UNKNOWN and DATA_LOSS. The one mapping used
    by the public endpoints and the web console alike."""
    return _HTTP_STATUS.get(error.status, 500)


def _problem(status: int, reason: str, message: str) -> web.Response:
    return web.json_response(
        {"verified": False, "reason": reason, "message": message}, status=status
    )


def _refusal(status: int, reason: str, message: str) -> web.Response:
    return web.json_response({"reason": reason, "message": message}, status=status)


def _database_trouble(
    answer: Callable[[int, str, str], web.Response],
    error: BaseException,
    where: str,
    metrics: NodeMetrics,
) -> web.Response:
    """``answer`` (``_refusal`` or ``_problem``) as 503 DATABASE_UNAVAILABLE, with a
    Retry-After, for a request the database could not serve (``trouble.DATABASE_TROUBLE``)."""
    refusal = trouble.refused(error, where)
    metrics.database_unavailable.labels(refusal.metadata["condition"]).inc()
    response = answer(503, refusal.reason, refusal.message)
    response.headers["Retry-After"] = str(trouble.RETRY_SECONDS)
    return response


def _json_refusals(metrics: NodeMetrics) -> Middleware:
    """aiohttp's own refusals (no such path, wrong method, body too large) as JSON with a
    reason code, like every other refusal, and the database's trouble as 503; the console
    renders its own (web/app.py)."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except trouble.DATABASE_TROUBLE as e:
            if request.path.startswith("/console"):
                raise
            # The raw path: percent-encoded, so no line breaks in the log; no query string.
            return _database_trouble(_refusal, e, request.rel_url.raw_path, metrics)
        except web.HTTPException as e:
            known = _HTTP_REASONS.get(e.status)
            if known is None or request.path.startswith("/console"):
                raise
            reason, message = known
            return _refusal(e.status, reason, message)

    return middleware


@dataclass(frozen=True)
class Admission:
    """The gRPC side's call limiter and loop share, which the HTTP listener's visitors
    pass too (``_admitted``)."""

    limiter: CallLimiter
    share: CpuShare


PUBLIC = "http:public"
"""The party of the verifiers' endpoints (``/verify``, ``/status-lists``, ``/trust-list``),
open to anyone: one bucket for all their clients."""

CONSOLE = "http:console"
"""The party of the web console's pages (citizens, auditors, officers)."""


def _party(path: str) -> str | None:
    """Whose bucket a request to ``path`` is charged to; None for the operator's
    ``/healthz`` and ``/metrics`` (a load balancer's checks must not be refused)."""
    if path.startswith("/console"):
        return CONSOLE
    if path in ("/healthz", "/metrics"):
        return None
    return PUBLIC


def _admitted(admission: Admission) -> Middleware:
    """Each request but the operator's passes the call limiter in its party's bucket
    (the node's default limits per department: calls started per second, in progress at
    once) and runs with its loop time charged to that party (``fairness.metered``) and
    its pooled connections under that party's share (``fair_pool.department``). A flood
    from the internet, or a verifier's app retrying in a loop, is refused 429 with a
    Retry-After once past the limits, and gets one party's share of a busy node, not the
    node: the departments' calls go on."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        party = _party(request.path)
        if party is None:
            return await handler(request)
        try:
            release = admission.limiter.enter_party(party)
        except RateLimited as e:
            if party == CONSOLE:
                raise  # the console renders it as a page (web/app.py)
            response = _refusal(
                429,
                e.reason,
                "The node is taking as many requests as it can just now; retry after the "
                "delay in Retry-After.",
            )
            response.headers["Retry-After"] = str(max(1, math.ceil(e.retry_after or 1)))
            return response
        token = pool_department.set(party)
        try:
            return await metered(handler(request), party, admission.share)
        finally:
            pool_department.reset(token)
            release()

    return middleware


def _licence_routes(app: web.Application, trust: LicenceTrust, metrics: NodeMetrics) -> None:
    async def verify(request: web.Request) -> web.Response:
        try:
            text: object
            if request.method == "GET":
                text = request.query.get("qr", "")
            else:
                if request.content_length is not None and request.content_length > MAX_VERIFY_BODY:
                    return _problem(413, "PAYLOAD_TOO_LARGE", "The request is over 64 KiB.")
                body = await request.content.read(MAX_VERIFY_BODY + 1)
                if len(body) > MAX_VERIFY_BODY:
                    return _problem(413, "PAYLOAD_TOO_LARGE", "The request is over 64 KiB.")
                try:
                    data = json.loads(body)
                except (ValueError, UnicodeDecodeError):
                    return _problem(
                        400, "INVALID_ARGUMENT", 'Send JSON {"qr": "TB1:..."} with a QR text.'
                    )
                text = data.get("qr") or data.get("text") if isinstance(data, dict) else None
            if not isinstance(text, str) or not text.strip():
                return _problem(
                    400,
                    "INVALID_ARGUMENT",
                    'Give the QR text: POST {"qr": "TB1:..."} or GET /verify?qr=TB1:...',
                )
            if len(text) > MAX_VERIFY_BODY:
                return _problem(413, "PAYLOAD_TOO_LARGE", "The text is over 64 KiB.")
            result = await trust.verify(text)
        except TongbanError as e:
            return _problem(http_status(e), e.reason, e.message)
        except trouble.DATABASE_TROUBLE as e:
            return _database_trouble(_problem, e, "/verify", metrics)
        except Exception:  # noqa: BLE001 - a public endpoint answers JSON, never a trace
            incident = secrets.token_hex(6)
            _log.exception("incident %s in /verify", incident)
            return _problem(
                500, "INTERNAL", f"The node failed to verify (incident {incident}); retry later."
            )
        return web.json_response(result.to_dict(), headers={"Cache-Control": "no-store"})

    async def status_list(request: web.Request) -> web.Response:
        text = request.match_info["id"]
        if not _LIST_ID.fullmatch(text):
            return _refusal(
                404, "STATUS_LIST_NOT_FOUND", "No such status list; its id is a whole number."
            )
        try:
            token = await trust.status_token(int(text))
        except TongbanError as e:
            return _refusal(http_status(e), e.reason, e.message)
        if token is None:
            return _refusal(404, "STATUS_LIST_NOT_FOUND", f"No status list {int(text)}.")
        return web.Response(
            body=token.token.encode("ascii"),
            headers={
                "Content-Type": _STATUS_LIST_TYPE,
                "Cache-Control": f"max-age={int(token.ttl.total_seconds())}",
            },
        )

    async def trust_list(request: web.Request) -> web.Response:
        try:
            current = await trust.trust_list()
        except TongbanError as e:
            return _refusal(http_status(e), e.reason, e.message)
        return web.Response(
            body=current.token.encode("ascii"),
            headers={"Content-Type": _TRUST_LIST_TYPE, "Cache-Control": "max-age=3600"},
        )

    app.router.add_get("/verify", verify)
    app.router.add_post("/verify", verify)
    app.router.add_get("/status-lists/{id}", status_list)
    app.router.add_get("/trust-list", trust_list)


def build_http_app(
    db: Database,
    metrics: NodeMetrics,
    node_name: str,
    before_scrape: Sequence[Callable[[], Awaitable[None]]] = (),
    licensing: Licensing | None = None,
    console: WebConsole | None = None,
    admission: Admission | None = None,
) -> web.Application:
    """The node's HTTP routes; ``before_scrape`` hooks refresh gauges read from the database;
    with ``licensing``, the public licence endpoints too; with ``console``, the web console
    under ``/console/`` (docs/web.md); with ``admission``, every request but ``/healthz``
    and ``/metrics`` passes the node's limits and share (``_admitted``)."""

    async def healthz(request: web.Request) -> web.Response:
        try:
            await db.ping(within=2.0)
        except DatabaseUnavailable as e:
            return web.json_response(
                {"status": "unavailable", "node": node_name, "reason": e.reason},
                status=503,
            )
        return web.json_response({"status": "ok", "node": node_name})

    async def metrics_view(request: web.Request) -> web.Response:
        metrics.db_pool_size.set(db.pool.get_size())
        metrics.db_pool_idle.set(db.pool.get_idle_size())
        for hook in before_scrape:
            # On failure the gauge keeps its last value; /healthz reports the database.
            with contextlib.suppress(DatabaseUnavailable):
                await hook()
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(client_max_size=1024 * 1024, middlewares=[_json_refusals(metrics)])
    if console is not None:
        console.add_routes(app)  # its middleware renders its refusals as pages: before ours
    if admission is not None:
        app.middlewares.append(_admitted(admission))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_view)
    if licensing is not None:
        _licence_routes(app, licensing.trust, metrics)
    return app
