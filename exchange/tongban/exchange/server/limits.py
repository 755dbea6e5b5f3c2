"""Fairness between departments: limits on each department's calls.

Every authenticated call passes ``CallLimiter.enter`` before it runs. Per department:

- a token bucket of calls started per second (sustained rate ``per_second``; a burst of
  one second's worth is allowed, so a department that was quiet may start that many at
  once);
- a bound on calls in progress at once (unary and client-streaming calls, so a bulk
  ``StreamRecords`` counts as one while it runs);
- a bound on open subscriptions (server-streaming calls: ``Subscribe``, ``Export``),
  which may last hours and so are not counted as calls in progress.

Past a limit the call is refused at once with ``RESOURCE_EXHAUSTED`` and a reason code
(``RATE_LIMITED``, ``TOO_MANY_SUBSCRIPTIONS``) plus a ``RetryInfo`` delay; it never
queues, so a flood from one department costs the node a dictionary lookup per call.
Limits come from the settings, or from the department's own row in the registry
(``tongban dept limits``), which every node sees at once.

Refusals are counted in ``tongban_calls_refused{department,reason}`` and written to the
access log as ``denied`` entries with the reason. The node merges them through a
``RefusalTally`` (audit/refusals.py): at most one entry per department and reason per
second, so a flood of refused calls cannot flood the log, and every refusal is counted in
some entry, the tail of a burst included (the entry's purpose says how many).

A peer exchange's node (``PeerService``) is held to the same default limits in a bucket of
its own, ``peer:<name>`` (``enter_party``), so a peer cannot take the node from the
departments; its refusals are counted in the metric only (docs/federation.md). So are the
HTTP listener's two kinds of visitor, ``http:public`` (the verifiers' endpoints, open to
anyone) and ``http:console`` (the web console), each in one bucket for all its clients.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tongban.errors import TongbanError
from tongban.exchange.departments import CallLimits
from tongban.exchange.fairness import BACKOFF
from tongban.exchange.identity import Caller

__all__ = ["CallLimiter", "RateLimited", "TooManySubscriptions"]

_CONCURRENCY_RETRY = 0.1  # seconds: about one call's time on a busy node


class RateLimited(TongbanError):
    reason = "RATE_LIMITED"
    status = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, retry_after: float, department: str) -> None:
        super().__init__(message, metadata={"department": department})
        self.retry_after = retry_after


class TooManySubscriptions(TongbanError):
    reason = "TOO_MANY_SUBSCRIPTIONS"
    status = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, department: str) -> None:
        super().__init__(message, metadata={"department": department})
        self.retry_after = 5.0


@dataclass
class _Usage:
    tokens: float
    refilled: float
    calls: int = 0
    streams: int = 0
    refused: dict[str, int] = field(default_factory=dict)


RefusalLog = Callable[[Caller, str, str, int], Awaitable[None]]
"""Called with (caller, method, reason, refusals since the last call) to log a refusal."""


class CallLimiter:
    """Admits or refuses each department's calls; see the module docstring."""

    def __init__(
        self,
        *,
        concurrent: int,
        per_second: float,
        subscriptions: int,
        on_refused: RefusalLog | None = None,
        count_refused: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._default = (concurrent, per_second, subscriptions)
        self._on_refused = on_refused
        self._count_refused = count_refused
        self._clock = clock
        self._usage: dict[str, _Usage] = {}
        self._calls = 0  # calls in progress, every department

    def _limits(self, caller: Caller) -> tuple[int, float, int]:
        """The department's own limits where it has them, else the node's defaults."""
        own: CallLimits = caller.department.limits
        concurrent, per_second, subscriptions = self._default
        return (
            concurrent if own.concurrent is None else own.concurrent,
            per_second if own.per_second is None else own.per_second,
            subscriptions if own.subscriptions is None else own.subscriptions,
        )

    async def enter(self, caller: Caller, method: str, *, stream: bool) -> Callable[[], None]:
        """Admit a call (``stream``: a server-streaming one); return its release function,
        to be called exactly once when the call ends. Raises RateLimited or
        TooManySubscriptions (after logging the refusal)."""
        code = caller.department.code
        now = self._clock()
        usage, error = self._take(code, self._limits(caller), stream=stream, now=now)
        if error is not None:
            await self._refused(caller, method, error.reason, usage, now)
            raise error
        return self._holding(usage, stream=stream)

    def enter_party(self, key: str) -> Callable[[], None]:
        """Admit a call or request of a party that is no department, under the node's
        default limits per department in a bucket of its own, kept apart from every
        department's: a peer exchange's node (``peer:<name>``), the HTTP listener's
        public endpoints or console (``http:public``, ``http:console``). So a peer in a
        burst, or a compromised one, or a flood from the internet, cannot take the node
        from the departments. Raises RateLimited; the refusal is counted in
        ``tongban_calls_refused`` (such a party has no department to name in the access
        log)."""
        usage, error = self._take(key, self._default, stream=False, now=self._clock())
        if error is not None:
            usage.refused[error.reason] = usage.refused.get(error.reason, 0) + 1
            if self._count_refused is not None:
                self._count_refused(key, error.reason)
            raise error
        return self._holding(usage, stream=False)

    def _take(
        self, code: str, limits: tuple[int, float, int], *, stream: bool, now: float
    ) -> tuple[_Usage, TongbanError | None]:
        """Charge one call to ``code``'s bucket unless a limit refuses it."""
        concurrent, per_second, subscriptions = limits
        usage = self._usage.get(code)
        if usage is None:
            usage = self._usage[code] = _Usage(tokens=max(1.0, per_second), refilled=now)
        burst = max(1.0, per_second)
        usage.tokens = min(burst, usage.tokens + (now - usage.refilled) * per_second)
        usage.refilled = now
        if usage.tokens < 1:
            return usage, RateLimited(
                f"{code} is starting calls faster than its limit of {per_second:g} per "
                "second; slow down and retry after the delay given.",
                retry_after=(1 - usage.tokens) / per_second,
                department=code,
            )
        if stream and usage.streams >= subscriptions:
            return usage, TooManySubscriptions(
                f"{code} already has {usage.streams} open subscriptions, its limit; close "
                "one (or ask the operator to raise the limit) before opening another.",
                department=code,
            )
        if not stream and usage.calls >= concurrent:
            return usage, RateLimited(
                f"{code} already has {usage.calls} calls in progress, its limit; wait for "
                "some to finish and retry after the delay given.",
                retry_after=_CONCURRENCY_RETRY,
                department=code,
            )
        usage.tokens -= 1
        return usage, None

    def _holding(self, usage: _Usage, *, stream: bool) -> Callable[[], None]:
        """Count the admitted call as in progress; return its release (idempotent)."""
        if stream:
            usage.streams += 1
        else:
            usage.calls += 1
            self._calls += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            if stream:
                usage.streams -= 1
            else:
                usage.calls -= 1
                self._calls -= 1

        return release

    def pacer(self, code: str) -> Callable[[float], Awaitable[None]]:
        """How ``code``'s long work is paced (``fairness.yield_fairly``): a pause of
        ``BACKOFF`` times each slice while another department has a call in progress."""

        async def pace(spent: float) -> None:
            usage = self._usage.get(code)
            mine = usage.calls if usage is not None else 0
            if self._calls > mine:
                await asyncio.sleep(spent * BACKOFF)
            else:
                await asyncio.sleep(0)

        return pace

    async def _refused(
        self, caller: Caller, method: str, reason: str, usage: _Usage, now: float
    ) -> None:
        """Count one refusal and hand it to ``on_refused``, which merges a flood into few
        entries without losing any (the node's ``RefusalTally``)."""
        code = caller.department.code
        if self._count_refused is not None:
            self._count_refused(code, reason)
        usage.refused[reason] = usage.refused.get(reason, 0) + 1
        if self._on_refused is not None:
            await self._on_refused(caller, method, reason, 1)
