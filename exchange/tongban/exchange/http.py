"""The node's HTTP listener: /healthz and /metrics (later: console and public verify)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tongban.exchange.db.database import Database
from tongban.exchange.errors import DatabaseUnavailable
from tongban.exchange.metrics import NodeMetrics

__all__ = ["build_http_app"]


def build_http_app(
    db: Database,
    metrics: NodeMetrics,
    node_name: str,
    before_scrape: Sequence[Callable[[], Awaitable[None]]] = (),
) -> web.Application:
    """The node's HTTP routes; ``before_scrape`` hooks refresh gauges read from the database."""

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

    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_view)
    return app
