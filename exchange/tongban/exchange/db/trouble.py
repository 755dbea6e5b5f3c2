"""The database unable to serve a call, told apart from a fault in the node.

Some failures say nothing about the call and nothing about the node's code: PostgreSQL
is not there (down, restarting, refusing connections), it has run out of something
(disk, memory, a configured limit), it takes no writes (a hot standby, a server being
failed over, ``default_transaction_read_only``), or it stopped a statement that waited
too long for a lock or ran too long (the node's ``lock_timeout`` and
``statement_timeout``, ``TONGBAN_DB_LOCK_WAIT_SECONDS`` and ``_STATEMENT_SECONDS``; or an
operator's ``pg_cancel_backend``). Every transaction the node runs rolls
back on such an error, so nothing was half-written; the caller may retry once the
operator has fixed the database. ``DATABASE_TROUBLE`` lists them; ``refusal`` is the
caller's answer (UNAVAILABLE / DATABASE_UNAVAILABLE, one sentence saying which, and the
SQLSTATE), and ``report`` the operator's log line.

Each is answered the same way on every surface: the gRPC interceptor, the public HTTP
endpoints (503 with Retry-After) and the console (a 503 page). Anything else is still a
fault, INTERNAL with an incident id.

When the disk fills, every write fails, hundreds a second; a warning each would fill the
node's own log (and often the same disk) with the same line. ``report`` writes the first
one of each condition at once, then at most one per ``REPORT_EVERY`` seconds with the
count of those it left out.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import asyncpg
from asyncpg import exceptions as _exceptions

from tongban.exchange.db.fair_pool import DatabaseUnreachable
from tongban.exchange.errors import DatabaseUnavailable

__all__ = [
    "DATABASE_GONE",
    "DATABASE_TROUBLE",
    "DRIVER_ERRORS",
    "REPORT_EVERY",
    "RETRY_SECONDS",
    "TroubleReports",
    "condition",
    "refusal",
    "refused",
    "report",
]

_log = logging.getLogger(__name__)

DATABASE_GONE = (
    DatabaseUnreachable,  # no connection could be opened for the call
    asyncpg.PostgresConnectionError,  # the connection went in the middle of a statement
    _exceptions.AdminShutdownError,  # the server was told to stop, or the session was ended
    _exceptions.CrashShutdownError,
    _exceptions.CannotConnectNowError,
)
"""The database not there for a call."""

_EXHAUSTED = _exceptions.InsufficientResourcesError
"""SQLSTATE class 53: disk full (53100), out of memory (53200), too many connections
(53300), a configured limit such as ``temp_file_limit`` (53400)."""

_READ_ONLY = _exceptions.ReadOnlySQLTransactionError
"""SQLSTATE 25006: a write on a server that takes none just now."""

_LOCK_WAIT = _exceptions.LockNotAvailableError
"""SQLSTATE 55P03: the statement waited ``lock_timeout`` for a lock."""

_STOPPED = _exceptions.QueryCanceledError
"""SQLSTATE 57014: ``statement_timeout``, or a cancel request from the server's side."""

DATABASE_TROUBLE = (*DATABASE_GONE, _EXHAUSTED, _READ_ONLY, _LOCK_WAIT, _STOPPED)
"""What the gRPC interceptor answers UNAVAILABLE and the HTTP side 503, both
DATABASE_UNAVAILABLE, to be retried; not INTERNAL or 500."""

DRIVER_ERRORS = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    _exceptions.InternalClientError,  # a connection the server ended (FairPool's _Acquired)
)
"""What a statement may raise when the database or its connection fails: what the
background duties (integrator, relay, listener, checkpoints) catch before they try
again, so that none of them ends for good on a database that comes back."""

RETRY_SECONDS = 5
"""The delay a caller is told to wait (RetryInfo, Retry-After) before trying again."""

REPORT_EVERY = 10.0
"""Seconds between two log lines about the same condition."""

_CONDITIONS: tuple[tuple[type[BaseException], str], ...] = (
    (_exceptions.DiskFullError, "disk_full"),
    (_exceptions.OutOfMemoryError, "out_of_memory"),
    (_exceptions.TooManyConnectionsError, "too_many_connections"),
    (_EXHAUSTED, "resource_limit"),
    (_READ_ONLY, "read_only"),
    (_LOCK_WAIT, "lock_timeout"),
    (_STOPPED, "statement_timeout"),
)


def condition(error: BaseException) -> str:
    """A short name for what is wrong: ``unreachable``, ``disk_full``, ``out_of_memory``,
    ``too_many_connections``, ``resource_limit``, ``read_only``, ``lock_timeout``,
    ``statement_timeout`` or ``no_answer``. Looks through a
    ``DatabaseUnreachable`` to the driver's error that caused it."""
    if isinstance(error, DatabaseUnreachable) and error.__cause__ is not None:
        error = error.__cause__
        if isinstance(error, TimeoutError):
            return "no_answer"
    for kind, name in _CONDITIONS:
        if isinstance(error, kind):
            return name
    return "unreachable"


_SENTENCES = {
    "unreachable": "The node could not reach its database, so the call was not served "
    "(or not to its end); retry in a moment.",
    "disk_full": "The node's database has run out of disk space, so nothing was changed; "
    "retry later, once the operator has freed space.",
    "out_of_memory": "The node's database has run out of memory, so nothing was changed; "
    "retry in a moment.",
    "too_many_connections": "The node's database has no connection free for this call, so "
    "it was not served; retry in a moment.",
    "resource_limit": "The call went past a limit set on the node's database, so nothing "
    "was changed; retry later, or ask the operator.",
    "read_only": "The node's database takes no changes just now (a standby, or a failover "
    "under way), so nothing was changed; retry in a moment.",
    "lock_timeout": "The call waited too long for data that another transaction holds (a "
    "long change, or maintenance), so it was stopped and nothing was changed; retry in a "
    "moment.",
    "statement_timeout": "The database took too long over this call, so it was stopped and "
    "nothing was changed; retry later, or ask for less at once.",
    # The driver gave up waiting: whether a commit under way went through is unknown.
    "no_answer": "The node's database did not answer in time, so the call was stopped; "
    "if it was to change something, look whether it did before you retry.",
}


_OPERATOR_MUST_ACT = frozenset({"disk_full", "out_of_memory", "resource_limit"})
"""Conditions that last until someone acts: logged as errors, the rest as warnings."""


class _Refusal(DatabaseUnavailable):
    retry_after = float(RETRY_SECONDS)


def refusal(error: BaseException) -> DatabaseUnavailable:
    """The answer to a call that ``error`` (one of ``DATABASE_TROUBLE``) stopped:
    UNAVAILABLE / DATABASE_UNAVAILABLE with a sentence for its condition, the condition
    and the SQLSTATE (when the server sent one) in the metadata, and a retry delay."""
    name = condition(error)
    metadata = {"condition": name}
    cause = error.__cause__ if isinstance(error, DatabaseUnreachable) else error
    sqlstate = getattr(cause, "sqlstate", None)
    if isinstance(sqlstate, str):
        metadata["sqlstate"] = sqlstate
    return _Refusal(_SENTENCES[name], metadata=metadata)


class TroubleReports:
    """Log lines about the database's trouble, at most one per condition every
    ``every`` seconds, each saying how many it stands for."""

    def __init__(
        self, every: float = REPORT_EVERY, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._every = every
        self._clock = clock
        self._last: dict[str, tuple[float, int]] = {}  # condition -> (logged at, left out)

    def report(self, where: str, error: BaseException) -> bool:
        """Log ``error``, met while serving ``where``, unless a line about the same
        condition was written less than ``every`` seconds ago; return whether it was.
        Running out of something is an error (the operator must act), the rest
        warnings (``too_many_connections`` too: the pool's own bound is the usual
        cause, and it passes)."""
        name = condition(error)
        now = self._clock()
        logged_at, left_out = self._last.get(name, (-math.inf, 0))
        if now - logged_at < self._every:
            self._last[name] = (logged_at, left_out + 1)
            return False
        self._last[name] = (now, 0)
        more = f" ({left_out} more since the last line)" if left_out else ""
        level = logging.ERROR if name in _OPERATOR_MUST_ACT else logging.WARNING
        _log.log(level, "database %s, met by %s: %s%s", name, where, error, more)
        return True


report = TroubleReports().report
"""The node's one reporter (``TroubleReports.report``)."""


def refused(error: BaseException, where: str) -> DatabaseUnavailable:
    """``refusal(error)``, with ``report(where, error)`` for the operator."""
    report(where, error)
    return refusal(error)
