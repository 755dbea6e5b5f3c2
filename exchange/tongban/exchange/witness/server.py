"""The witness's HTTP listener: ``POST /add-checkpoint`` (c2sp.org/tlog-witness), and
``GET /healthz``.

A refusal's body is one sentence and its reason code (``... [WITNESS_PROOF_INVALID]``),
except a 409's, which the spec fixes: the witness's latest size and a newline, as
``text/x.tlog.size``. Every refusal also names its reason code in a ``Tongban-Reason``
header, for clients that read codes rather than bodies.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType

from aiohttp import web

from tongban.errors import TongbanError
from tongban.exchange.settings import ListenAddress
from tongban.exchange.witness.protocol import (
    MAX_REQUEST_BYTES,
    SIZE_CONTENT_TYPE,
    WitnessConflict,
    WitnessRefusal,
    size_body,
)
from tongban.exchange.witness.service import Witness

__all__ = ["REASON_HEADER", "WitnessServer", "build_witness_app"]

_log = logging.getLogger(__name__)

REASON_HEADER = "Tongban-Reason"


def _text(status: int, reason: str, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=f"{message} [{reason}]\n".encode(),
        headers={"Content-Type": "text/plain; charset=utf-8", REASON_HEADER: reason},
    )


def build_witness_app(witness: Witness) -> web.Application:
    """The witness's routes, over ``witness``."""

    async def add_checkpoint(request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _text(
                413, "WITNESS_REQUEST_TOO_LARGE", f"The request is over {MAX_REQUEST_BYTES} bytes."
            )
        try:
            line = await asyncio.to_thread(witness.add_checkpoint, body)
        except WitnessConflict as e:
            return web.Response(
                status=409,
                body=size_body(e.latest_size),
                headers={"Content-Type": SIZE_CONTENT_TYPE, REASON_HEADER: e.reason},
            )
        except WitnessRefusal as e:
            return _text(e.http_status, e.reason, e.message)
        except TongbanError as e:  # the state file: the witness cannot answer now
            _log.error("add-checkpoint failed: %s", e.diagnostics())
            return _text(503, e.reason, e.message)
        return web.Response(
            body=line.encode("utf-8"), headers={"Content-Type": "text/plain; charset=utf-8"}
        )

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "ok", "witness": witness.identity.vkey, "logs": witness.origins}
        )

    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app.router.add_post("/add-checkpoint", add_checkpoint)
    app.router.add_get("/healthz", healthz)
    return app


class WitnessServer:
    """The witness's HTTP listener: ``start()`` binds, ``stop()`` closes; or ``async with``."""

    def __init__(self, witness: Witness, listen: ListenAddress) -> None:
        self.witness = witness
        self._listen = listen
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The submission prefix, ``http://host:port`` (add-checkpoint is under it)."""
        host = self._listen.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    async def start(self) -> None:
        """Bind the listen address; raises OSError if it cannot."""
        runner = web.AppRunner(build_witness_app(self.witness), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._listen.host, self._listen.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        server = site._server  # aiohttp exposes the bound port only here
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> WitnessServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
