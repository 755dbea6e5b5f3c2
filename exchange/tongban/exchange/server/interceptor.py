"""The one place where calls are authenticated and errors become gRPC statuses.

Every handler is wrapped so that, in order: the caller is authenticated from its client
certificate (except for health checks and reflection, which need only a valid TLS client
certificate); the department's call limits admit the call (``limits.CallLimiter``); each
request message is checked (one that does not decode is answered INVALID_ARGUMENT /
MALFORMED_REQUEST, on streams too, and ``request_checks`` applies the rules every field
keeps); the call runs with the caller in a context variable; a ``TongbanError``
becomes its status with a ``google.rpc.ErrorInfo`` (reason, domain ``tongban``, metadata)
and its message; anything else is logged with an incident id and becomes ``INTERNAL``
with that id and no detail, so no stack trace or internal text reaches a caller. The
database unable to serve a call (``db.trouble.DATABASE_TROUBLE``: not there, out of disk
or memory, taking no writes) is UNAVAILABLE / DATABASE_UNAVAILABLE instead: nothing is
wrong with the call, nothing was half-written, and it may be retried.
"""

from __future__ import annotations

import inspect
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from tongban.errors import TongbanError
from tongban.exchange.db import trouble
from tongban.exchange.fairness import CpuShare, metered, set_pacer
from tongban.exchange.federation.errors import PeerOnly
from tongban.exchange.federation.trust import PeerTrust
from tongban.exchange.metrics import NodeMetrics
from tongban.exchange.server.auth import Authenticator
from tongban.exchange.server.caller import (
    Caller,
    current_caller,
    current_peer,
    set_caller,
    set_peer,
)
from tongban.exchange.server.limits import CallLimiter
from tongban.exchange.server.request_checks import check_request_async

__all__ = [
    "ERROR_DOMAIN",
    "OFFICER_METADATA",
    "ExchangeInterceptor",
    "MalformedRequest",
    "status_details",
]

_log = logging.getLogger(__name__)

ERROR_DOMAIN = "tongban"
OFFICER_METADATA = "x-tongban-officer"
_UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
PEER_SERVICE_PREFIX = "/tongban.v1.PeerService/"

Context = grpc.aio.ServicerContext[Any, Any]


def status_details(error: TongbanError) -> tuple[grpc.StatusCode, tuple[tuple[str, bytes], ...]]:
    """Return the status code and the ``grpc-status-details-bin`` trailer for ``error``."""
    code = grpc.StatusCode[error.status]
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    details = [detail]
    if error.retry_after is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(max(1, round(error.retry_after * 1000)))
        details.append(any_pb2.Any())
        details[-1].Pack(retry)
    status = status_pb2.Status(code=code.value[0], message=error.message, details=details)
    return code, (("grpc-status-details-bin", status.SerializeToString()),)


class MalformedRequest(TongbanError):
    reason = "MALFORMED_REQUEST"
    status = "INVALID_ARGUMENT"


class _Undecodable:
    """What a request that protobuf could not decode becomes, until the handler sees it."""

    def __init__(self, message_type: str) -> None:
        self.message_type = message_type


class _Decoded:
    """A decoded request, with whether its bytes held a zero byte (see request_checks)."""

    __slots__ = ("may_hold_nul", "message")

    def __init__(self, message: Any, may_hold_nul: bool) -> None:
        self.message = message
        self.may_hold_nul = may_hold_nul


def _lenient(deserialize: Callable[[bytes], Any] | None, method: str) -> Callable[[bytes], Any]:
    """``deserialize`` that returns an ``_Undecodable`` instead of raising (grpc would
    answer a raised DecodeError UNKNOWN with the exception's text), and a ``_Decoded``
    otherwise."""

    def parse(data: bytes) -> Any:
        try:
            message = deserialize(data) if deserialize is not None else data
        except Exception:  # noqa: BLE001 - any parser failure means the bytes are garbage
            return _Undecodable(method.rsplit("/", 1)[-1])
        return _Decoded(message, b"\x00" in data)

    return parse


async def _checked(request: Any) -> Any:
    """The request message, once the checks every request gets have passed."""
    if isinstance(request, _Undecodable):
        raise MalformedRequest(
            f"The {request.message_type} request is not a valid protobuf message of its "
            "type; build it from the tongban.v1 .proto files."
        )
    if isinstance(request, _Decoded):
        if isinstance(request.message, Message):
            await check_request_async(request.message, may_hold_nul=request.may_hold_nul)
        return request.message
    return request


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield await _checked(request)


class ExchangeInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(
        self,
        authenticator: Authenticator,
        metrics: NodeMetrics,
        limiter: CallLimiter | None = None,
        on_auth_refused: Callable[[bytes, TongbanError], Awaitable[None]] | None = None,
        share: CpuShare | None = None,
        peers: PeerTrust | None = None,
    ) -> None:
        """``share`` (with ``limiter``) meters each call's use of the event loop per
        department and holds back one that takes more than its share while others wait
        (``fairness.CpuShare``). ``peers`` attributes client certificates issued by peer
        exchanges' roots: those reach ``PeerService`` only, and only they do
        (docs/federation.md); without it every ``PeerService`` call is refused."""
        self._peers = peers
        self._auth = authenticator
        self._metrics = metrics
        self._limiter = limiter
        self._share = share
        self._on_auth_refused = on_auth_refused
        self._wrapped: dict[str, Any] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        # Handlers are typed loosely by grpc-stubs (sync signatures); on grpc.aio they are
        # coroutine functions or async generators, which is what we wrap.
        method: str = getattr(handler_call_details, "method", "")
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped  # a method's handler never changes; wrap it once
        handler: Any = await continuation(handler_call_details)
        if handler is None:
            return None
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = wrapped
        return wrapped

    def _wrap(self, handler: Any, method: str) -> Any:
        authenticate = not method.startswith(_UNAUTHENTICATED_PREFIXES)
        kwargs = {
            "request_deserializer": _lenient(handler.request_deserializer, method),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, authenticate, streamed=False), **kwargs
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, method, authenticate, streamed=True), **kwargs
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, method, authenticate, streamed=False),
                **kwargs,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._stream(handler.stream_stream, method, authenticate, streamed=True), **kwargs
        )

    async def _admit(
        self, context: Context, method: str, authenticate: bool, *, stream: bool
    ) -> Callable[[], None] | None:
        """Authenticate the caller and pass the department's limits; return the release
        of its place (None when nothing was taken)."""
        if not authenticate:
            return None
        if method.startswith(PEER_SERVICE_PREFIX):
            peer = await self._authenticate_peer(context)
            # A peer's node is held to the node's default limits, in a bucket of its own.
            return None if self._limiter is None else self._limiter.enter_party(f"peer:{peer}")
        caller = await self._authenticate(context)
        if self._limiter is None:
            return None
        release = await self._limiter.enter(caller, method, stream=stream)
        set_pacer(self._limiter.pacer(caller.department.code))
        return release

    def _unary(
        self,
        behaviour: Callable[[Any, Context], Awaitable[Any]],
        method: str,
        authenticate: bool,
        *,
        streamed: bool,
    ) -> Callable[[Any, Context], Awaitable[Any]]:
        async def wrapped(request: Any, context: Context) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            release = None
            try:
                release = await self._admit(context, method, authenticate, stream=False)
                request = _checked_stream(request) if streamed else await _checked(request)
                if release is None or self._share is None:
                    return await behaviour(request, context)
                # The loop time a call takes is charged to its department, or to its peer.
                who = (
                    f"peer:{current_peer().name}"
                    if method.startswith(PEER_SERVICE_PREFIX)
                    else current_caller().department.code
                )
                # A call whose requests stream in is a bulk load: its loop time counts
                # heavier from the start (fairness.HEAVY_WEIGHT).
                return await metered(behaviour(request, context), who, self._share, bulk=streamed)
            except grpc.aio.AbortError:
                raise  # the behaviour aborted on purpose, with its own status
            except NotImplementedError:
                # A generated servicer base class's answer for a method it does not have
                # (grpc's async health service has no List).
                code = grpc.StatusCode.UNIMPLEMENTED
                await self._abort(context, _unimplemented(method))
            except TongbanError as e:
                code = grpc.StatusCode[e.status]
                await self._abort(context, e)
            except trouble.DATABASE_TROUBLE as e:
                code = grpc.StatusCode.UNAVAILABLE
                await self._abort_database_trouble(context, method, e)
            except Exception as e:  # noqa: BLE001 - the one boundary: logged, then INTERNAL
                code = grpc.StatusCode.INTERNAL
                await self._abort_internal(context, method, e)
            finally:
                if release is not None:
                    release()
                self._observe(method, code, started)

        return wrapped

    def _stream(
        self,
        behaviour: Callable[[Any, Context], AsyncIterator[Any]],
        method: str,
        authenticate: bool,
        *,
        streamed: bool,
    ) -> Callable[[Any, Context], AsyncIterator[Any]]:
        async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            release = None
            try:
                release = await self._admit(context, method, authenticate, stream=True)
                request = _checked_stream(request) if streamed else await _checked(request)
                responses = behaviour(request, context)
                if inspect.isawaitable(responses):
                    # A servicer that sends with context.write() (grpc's health Watch) is a
                    # plain coroutine, not an async generator.
                    await responses
                else:
                    async for response in responses:
                        yield response
            except grpc.aio.AbortError:
                raise
            except NotImplementedError:
                code = grpc.StatusCode.UNIMPLEMENTED
                await self._abort(context, _unimplemented(method))
            except TongbanError as e:
                code = grpc.StatusCode[e.status]
                await self._abort(context, e)
            except trouble.DATABASE_TROUBLE as e:
                code = grpc.StatusCode.UNAVAILABLE
                await self._abort_database_trouble(context, method, e)
            except Exception as e:  # noqa: BLE001 - the one boundary: logged, then INTERNAL
                code = grpc.StatusCode.INTERNAL
                await self._abort_internal(context, method, e)
            finally:
                if release is not None:
                    release()
                self._observe(method, code, started)

        return wrapped

    async def _authenticate(self, context: Context) -> Caller:
        auth = context.auth_context()  # built anew by each call: read it once
        certs: list[bytes] = list(auth.get("x509_pem_cert", ()))
        if not certs:
            # Mutual TLS is required by the server, so this means a misconfigured listener.
            raise _NoClientCertificate(
                "The call carried no client certificate; connect with the department's bundle."
            )
        officer = None
        for key, value in context.invocation_metadata() or ():
            if key == OFFICER_METADATA:
                officer = value if isinstance(value, str) else value.decode("utf-8", "replace")
        try:
            if self._peers is not None:
                self._peers.refuse_peer_as_department(certs[0], _sent_chain(auth))
            caller = await self._auth.authenticate(certs[0], officer)
        except TongbanError as e:
            self._metrics.auth_refused.labels(e.reason).inc()
            if self._on_auth_refused is not None:
                await self._on_auth_refused(certs[0], e)
            raise
        set_caller(caller)
        return caller

    async def _authenticate_peer(self, context: Context) -> str:
        auth = context.auth_context()
        certs: list[bytes] = list(auth.get("x509_pem_cert", ()))
        if not certs or self._peers is None:
            raise PeerOnly(
                "The peer service answers only the nodes of peer exchanges; departments "
                "call their own exchange's services."
            )
        try:
            peer = await self._peers.authenticate_peer(certs[0], _sent_chain(auth))
        except TongbanError as e:
            self._metrics.auth_refused.labels(e.reason).inc()
            if self._on_auth_refused is not None:
                await self._on_auth_refused(certs[0], e)
            raise
        set_peer(peer)
        return peer.name

    async def _abort(self, context: Context, error: TongbanError) -> NoReturn:
        code, trailers = status_details(error)
        await context.abort(code, error.message, trailing_metadata=trailers)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    async def _abort_database_trouble(
        self, context: Context, method: str, error: Exception
    ) -> NoReturn:
        refusal = trouble.refused(error, method)
        self._metrics.database_unavailable.labels(refusal.metadata["condition"]).inc()
        await self._abort(context, refusal)

    async def _abort_internal(self, context: Context, method: str, error: Exception) -> NoReturn:
        incident = secrets.token_hex(6)
        _log.error("incident %s in %s", incident, method, exc_info=error)
        internal = _Internal(
            f"The node failed to handle this call (incident {incident}); "
            "retry later or give the incident id to the operator.",
            metadata={"incident": incident},
        )
        await self._abort(context, internal)

    def _observe(self, method: str, code: grpc.StatusCode, started: float) -> None:
        self._metrics.observe_rpc(method, code.name, time.perf_counter() - started)


class _NoClientCertificate(TongbanError):
    reason = "CLIENT_CERTIFICATE_REQUIRED"
    status = "UNAUTHENTICATED"


class _Unimplemented(TongbanError):
    reason = "UNIMPLEMENTED"
    status = "UNIMPLEMENTED"


def _unimplemented(method: str) -> TongbanError:
    return _Unimplemented(f"This node does not implement {method}; see the reflection service.")


class _Internal(TongbanError):
    reason = "INTERNAL"
    status = "INTERNAL"


def _sent_chain(auth: Mapping[str, Iterable[bytes]]) -> bytes:
    """The certificates the client sent after its own (its issuing CA), as PEM, from the
    call's auth context."""
    chain: list[bytes] = list(auth.get("x509_pem_cert_chain", ()))
    return chain[0] if chain else b""
