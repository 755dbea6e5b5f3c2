"""The node's side of witnessing: after each checkpoint it signs, ask every configured
witness to cosign it (C2SP tlog-witness), verify the cosignature and keep it
(``witness_cosignature``), so that checkpoints are served with it.

- **Never in the way of appends.** The checkpointer only wakes the collector (an event);
  one task per witness does the asking, one request at a time, off the append path.
- **What to send.** The latest checkpoint, with a consistency proof from the size the
  witness last cosigned: known from the cosignatures kept, or learned from a 409 answer
  (the spec's way to resynchronise, e.g. after the witness or this node lost track).
- **Failures** are logged, counted in ``tongban_witness_requests{witness, outcome}`` and
  retried after a back-off (0.5 s doubling to a minute), then at each new checkpoint. A
  409 at the same size, or a 422, means the witness has seen a log this one does not
  extend: a split view or a rewritten log. The node keeps asking (it may be the witness
  that is wrong) and says so at ERROR each time.
- **What is kept** is only a cosignature that verifies under the configured key of the
  witness asked; an answer signed by any other key is refused (``unknown_key``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import aiohttp
import asyncpg

from tongban.errors import TongbanError
from tongban.exchange.audit.checkpoints import Checkpointer, CheckpointNotFound, CheckpointRow
from tongban.exchange.audit.cosignature import (
    CosignatureInvalid,
    WitnessKey,
    WitnessKeyInvalid,
    open_cosignatures,
)
from tongban.exchange.audit.note import key_hash
from tongban.exchange.audit.store import AuditStore
from tongban.exchange.db.trouble import DRIVER_ERRORS
from tongban.exchange.witness.protocol import (
    add_checkpoint_body,
    parse_cosignature_lines,
    parse_size_body,
)
from tongban.signing.clock import Clock

__all__ = [
    "MAX_WITNESSES",
    "PEER_PREFIX",
    "Cosigner",
    "HttpWitnessTransport",
    "Outcome",
    "WitnessAnswer",
    "WitnessEndpoint",
    "WitnessTransport",
    "WitnessUnavailable",
    "parse_witness_endpoints",
]

_log = logging.getLogger(__name__)

MAX_WITNESSES = 16
"""Most witnesses a node asks (a served note holds their lines and the log's)."""

Outcome = Literal[
    "cosigned",  # a verified cosignature was kept
    "current",  # nothing to ask: the witness has cosigned the latest checkpoint
    "resync",  # 409: the witness's size was not the one sent; asked again from its size
    "split_view",  # 409 at the same size: the witness cosigned another root at that size
    "proof_refused",  # 422: the witness's checkpoint is not in this log's history
    "refused",  # another 4xx, or an answer that is not cosignature lines
    "unknown_key",  # 200, but no cosignature by the witness's configured key
    "bad_cosignature",  # 200, but the configured key's cosignature does not verify
    "unavailable",  # no answer, a 5xx, or the database failed
]

_URL = re.compile(r"https?://[^\s/?#]+(/[^\s?#]*)?")
_PEER = re.compile(r"peer:[a-z][a-z0-9-]{1,62}")

PEER_PREFIX = "peer:"
"""A witness's URL that names a peer exchange (``peer:<our name for it>``): asked over the
peer link (``PeerService/AddCheckpoint``) rather than HTTP."""
_RETRY_FIRST = 0.5
_RETRY_MAX = 60.0
_IDLE = 30.0
_RESYNCS = 3


class WitnessUnavailable(TongbanError):
    """A witness did not answer (connection refused, timeout)."""

    reason = "WITNESS_UNAVAILABLE"
    status = "UNAVAILABLE"


@dataclass(frozen=True)
class WitnessEndpoint:
    """A witness the node asks: its verifier key and its submission prefix URL."""

    key: WitnessKey
    url: str
    """``http(s)://host[:port][/prefix]`` without a final slash; the node POSTs to
    ``<url>/add-checkpoint``. Or ``peer:<name>``: a peer exchange, asked over the peer
    link."""

    @property
    def peer(self) -> str | None:
        """The peer's name when the witness is a peer exchange, else None."""
        return self.url.removeprefix(PEER_PREFIX) if self.url.startswith(PEER_PREFIX) else None


def parse_witness_endpoints(values: Sequence[str]) -> tuple[WitnessEndpoint, ...]:
    """Return the witnesses of ``TONGBAN_WITNESSES``: each ``<vkey>@<url>``, the vkey as
    ``tongban witness key`` prints it, the URL ``http(s)://...`` or ``peer:<name>`` (a
    peer exchange, by this exchange's name for it).

    Raises ValueError with one sentence for a malformed entry, a key given twice, or more
    than :data:`MAX_WITNESSES`.
    """
    found: list[WitnessEndpoint] = []
    for value in values:
        vkey, at, url = value.strip().partition("@")
        if not at or not (_URL.fullmatch(url) or _PEER.fullmatch(url)):
            raise ValueError(
                f"{value[:80]!r} is not <witness key>@<URL> (URL http:// or https://, or "
                "peer:<peer name>, e.g. witness.example/w1+1a2b3c4d+BA...=@https://"
                "witness.example/w1)"
            )
        try:
            key = WitnessKey.parse(vkey)
        except WitnessKeyInvalid as e:
            raise ValueError(e.message.rstrip(".")) from None
        if any(w.key == key or w.key.name == key.name for w in found):
            raise ValueError(f"witness {key.name} is given twice")
        found.append(WitnessEndpoint(key, url.rstrip("/")))
    if len(found) > MAX_WITNESSES:
        raise ValueError(f"at most {MAX_WITNESSES} witnesses can be asked, not {len(found)}")
    return tuple(found)


@dataclass(frozen=True)
class WitnessAnswer:
    status: int
    body: bytes


class WitnessTransport(Protocol):
    """How requests reach a witness; :class:`HttpWitnessTransport` over HTTP."""

    async def add_checkpoint(self, url: str, body: bytes) -> WitnessAnswer:
        """POST ``body`` to ``<url>/add-checkpoint``; raise WitnessUnavailable if there is
        no answer."""
        ...


class HttpWitnessTransport:
    """add-checkpoint over HTTP with keep-alive connections (aiohttp)."""

    def __init__(self, *, timeout: float = 10.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def add_checkpoint(self, url: str, body: bytes) -> WitnessAnswer:
        assert self._session is not None, "start() the transport first"
        try:
            async with self._session.post(
                f"{url}/add-checkpoint", data=body, headers={"Content-Type": "text/plain"}
            ) as response:
                return WitnessAnswer(response.status, await response.read())
        except (aiohttp.ClientError, TimeoutError) as e:
            raise WitnessUnavailable(f"Witness {url} did not answer: {e!r}.") from e


@dataclass
class _Witness:
    endpoint: WitnessEndpoint
    known: int = 0
    """The size the witness last cosigned, as far as this node knows."""
    cosigned: int = -1
    """The largest checkpoint size this node holds a cosignature of it for."""
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Cosigner:
    """Asks witnesses to cosign the log's checkpoints and keeps their cosignatures."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        checkpoints: Checkpointer,
        witnesses: Sequence[WitnessEndpoint],
        clock: Clock,
        *,
        node_name: str,
        transport: WitnessTransport | None = None,
        peer_transport: WitnessTransport | None = None,
        on_outcome: Callable[[str, Outcome], None] | None = None,
        on_cosigned: Callable[[str, int], None] | None = None,
    ) -> None:
        """Without ``transport``, HTTP (:class:`HttpWitnessTransport`), opened by
        ``start`` and closed by ``stop``. ``peer_transport`` reaches the witnesses named
        ``peer:<name>`` (``federation.witnessing.PeerWitnessTransport``); without it they
        are unavailable."""
        self._pool = pool
        self._checkpoints = checkpoints
        self._store = AuditStore(pool)
        self._witnesses = [_Witness(w) for w in witnesses]
        self._http: HttpWitnessTransport | None = None
        if transport is None:
            transport = self._http = HttpWitnessTransport()
        self._transport = transport
        self._peer_transport = peer_transport
        self._clock = clock
        self._node = node_name
        self._on_outcome = on_outcome
        self._on_cosigned = on_cosigned
        self._log_key = (checkpoints.origin, key_hash(checkpoints.origin, checkpoints.public_key))
        self._unsubscribe: Callable[[], None] | None = None

    async def start(self) -> None:
        """Learn what each witness cosigned from the kept cosignatures, then start asking
        (at once, and after each checkpoint this node signs)."""
        if self._http is not None:
            await self._http.start()
        for w in self._witnesses:
            size = await self._pool.fetchval(
                "SELECT max(size) FROM witness_cosignature WHERE witness = $1 AND key_id = $2",
                w.endpoint.key.name,
                w.endpoint.key.key_id,
            )
            if size is not None:
                w.known = w.cosigned = size
        self._unsubscribe = self._checkpoints.on_signed(self.wake)
        loop = asyncio.get_running_loop()
        for w in self._witnesses:
            w.task = loop.create_task(self._run(w), name=f"witness {w.endpoint.key.name}")

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for w in self._witnesses:
            if w.task is not None:
                w.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await w.task
                w.task = None
        if self._http is not None:
            await self._http.close()

    def wake(self) -> None:
        """Ask every witness about the latest checkpoint soon (a new one was signed)."""
        for w in self._witnesses:
            w.wake.set()

    async def _run(self, w: _Witness) -> None:
        delay = 0.0
        while True:
            w.wake.clear()
            outcome = await self.ask(w.endpoint)
            if outcome in ("cosigned", "current"):
                delay = 0.0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(w.wake.wait(), _IDLE)
            else:
                delay = min(max(delay * 2, _RETRY_FIRST), _RETRY_MAX)
                await asyncio.sleep(delay)

    async def ask(self, endpoint: WitnessEndpoint) -> Outcome:
        """Ask the witness ``endpoint`` to cosign the latest checkpoint, and keep what it
        answers; return the outcome (also reported to ``on_outcome``)."""
        w = next(w for w in self._witnesses if w.endpoint == endpoint)
        try:
            outcome = await self._ask(w)
        except (*DRIVER_ERRORS, TongbanError) as e:
            message = e.diagnostics() if isinstance(e, TongbanError) else repr(e)
            _log.warning("witness %s not asked: %s", endpoint.key.label, message)
            outcome = "unavailable"
        if outcome != "current" and self._on_outcome is not None:
            self._on_outcome(endpoint.key.name, outcome)
        return outcome

    async def _ask(self, w: _Witness) -> Outcome:
        try:
            latest = await self._checkpoints.latest()
        except CheckpointNotFound:
            return "current"
        label = w.endpoint.key.label
        for _ in range(_RESYNCS):
            if latest.size <= w.cosigned or latest.size < w.known:
                return "current"  # a newer checkpoint of another node's is the next to ask
            old = w.known
            proof = await self._store.consistency(old, latest.size)
            body = add_checkpoint_body(old, proof, latest.log_note)
            answer = await self._transport_for(w.endpoint).add_checkpoint(w.endpoint.url, body)
            if answer.status == 200:
                return await self._keep(w, latest, answer.body)
            said = answer.body[:300].decode("utf-8", errors="replace").strip()
            if answer.status == 409:
                try:
                    size = parse_size_body(answer.body)
                except ValueError:
                    _log.warning("witness %s answered 409 without its size: %s", label, said)
                    return "refused"
                if size != old:
                    _log.info("witness %s has cosigned size %d; asking from there", label, size)
                    w.known = size
                    continue
                _log.error(
                    "witness %s refuses checkpoint %d: it cosigned another root at size %d "
                    "(a split view of the access log)",
                    label,
                    latest.size,
                    size,
                )
                return "split_view"
            if answer.status == 422:
                _log.error(
                    "witness %s refuses the consistency proof from %d to %d: the log it "
                    "cosigned is not this log's history (rewritten?): %s",
                    label,
                    old,
                    latest.size,
                    said,
                )
                return "proof_refused"
            _log.warning("witness %s answered %d: %s", label, answer.status, said)
            return "refused" if 400 <= answer.status < 500 else "unavailable"
        return "resync"

    def _transport_for(self, endpoint: WitnessEndpoint) -> WitnessTransport:
        if endpoint.peer is None:
            return self._transport
        if self._peer_transport is None:
            raise WitnessUnavailable(
                f"Witness {endpoint.key.label} is peer {endpoint.peer}, and this node has no "
                "link to peers."
            )
        return self._peer_transport

    async def _keep(self, w: _Witness, latest: CheckpointRow, body: bytes) -> Outcome:
        label = w.endpoint.key.label
        try:
            lines = parse_cosignature_lines(body)
            found = open_cosignatures(
                latest.log_note + "".join(lines), [w.endpoint.key], log_keys=[self._log_key]
            )
        except ValueError as e:
            _log.warning("witness %s answered 200 without cosignature lines: %s", label, e)
            return "refused"
        except CosignatureInvalid as e:
            _log.warning("witness %s: %s", label, e.diagnostics())
            return "bad_cosignature"
        if not found.valid:
            _log.warning(
                "witness %s answered with a cosignature by %s, not by the witness's key "
                "configured in TONGBAN_WITNESSES; it is not kept [WITNESS_UNKNOWN]",
                label,
                ", ".join(found.unknown) or "no key",
            )
            return "unknown_key"
        cosignature = found.valid[0]
        await self._pool.execute(
            "INSERT INTO witness_cosignature"
            " (size, witness, key_id, signed_time, line, received_at, received_by)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            latest.size,
            w.endpoint.key.name,
            w.endpoint.key.key_id,
            cosignature.timestamp,
            cosignature.line,
            self._clock.now(),
            self._node,
        )
        w.known = w.cosigned = latest.size
        if self._on_cosigned is not None:
            self._on_cosigned(w.endpoint.key.name, latest.size)
        return "cosigned"
