"""Reading the access log: search, entries with proofs, consistency, the subject view."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

import asyncpg

from tongban.exchange.audit.merkle import (
    NodeId,
    ProofRequestInvalid,
    consistency_nodes,
    consistency_proof,
    inclusion_nodes,
    inclusion_proof,
    nodes_from_leaves,
)
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.pagetokens import PageTokenInvalid, PageTokens, peek_unverified

__all__ = [
    "MAX_INDEX",
    "STORED_LEVEL",
    "AuditStore",
    "LogEntry",
    "SearchFilters",
    "SubjectAccess",
    "decode_token",
    "fetch_nodes",
    "stored_nodes",
]

MAX_PAGE = 1000
MAX_INDEX = 2**63 - 1  # indices and sizes are bigint columns
# The scopes of the page tokens: a token of one listing is refused by the other.
_SEARCH = "audit.search"
_SUBJECT = "audit.subject"
_COLUMNS = (
    "idx, leaf, at, node, caller, officer, action, dataset, fields, purpose, case_id,"
    " subject_hmac, decision, reason"
)
_A_COLUMNS = ", ".join("a." + c.strip() for c in _COLUMNS.split(","))


@dataclass(frozen=True)
class LogEntry:
    index: int
    leaf: bytes
    at: datetime
    node: str
    caller: str
    officer: str | None
    action: str
    dataset: str | None
    fields: tuple[str, ...]
    purpose: str | None
    case_id: str | None
    subject_hmac: bytes | None
    decision: str
    reason: str | None

    def to_dict(self) -> dict[str, object]:
        """The JSON form of ``tongban audit export``: index, the exact leaf, decoded fields."""
        return {
            "index": self.index,
            "leaf": base64.b64encode(self.leaf).decode(),
            "at": self.at.isoformat(),
            "node": self.node,
            "caller": self.caller,
            "officer": self.officer,
            "action": self.action,
            "dataset": self.dataset,
            "fields": list(self.fields),
            "purpose": self.purpose,
            "case_id": self.case_id,
            "subject_hmac": base64.b64encode(self.subject_hmac).decode()
            if self.subject_hmac
            else None,
            "decision": self.decision,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class SubjectAccess:
    entry: LogEntry
    department_name: str


@dataclass(frozen=True)
class SearchFilters:
    subject_hmac: bytes | None = None
    caller: str | None = None
    officer: str | None = None
    dataset: str | None = None
    purpose: str | None = None
    case_id: str | None = None
    decision: str | None = None
    start: datetime | None = None
    end: datetime | None = None

    def where(self, first_arg: int) -> tuple[list[str], list[object]]:
        """SQL conditions and their arguments, numbered from ``$first_arg``."""
        clauses: list[str] = []
        args: list[object] = []
        if self.decision not in (None, "", "allowed", "denied"):
            raise InvalidArgument(
                "decision must be 'allowed', 'denied' or empty.", metadata={"field": "decision"}
            )
        for column, value in (
            ("subject_hmac", self.subject_hmac),
            ("caller", self.caller),
            ("officer", self.officer),
            ("dataset", self.dataset),
            ("purpose", self.purpose),
            ("case_id", self.case_id),
            ("decision", self.decision),
        ):
            if value:
                args.append(value)
                clauses.append(f"{column} = ${first_arg + len(args) - 1}")
        for op, instant in ((">=", self.start), ("<", self.end)):
            if instant is not None:
                args.append(instant)
                clauses.append(f"at {op} ${first_arg + len(args) - 1}")
        if self.start and self.end and self.start >= self.end:
            raise InvalidArgument("The start of the period must be before its end.")
        return clauses, args

    def described(self) -> str:
        """The filters as ``name=value`` words (``caller=tax decision=denied from=…``),
        without the subject (the entry of a read names it by its HMAC): what a logged
        search or export says it looked for."""
        words = [
            f"{name}={value}"
            for name, value in (
                ("caller", self.caller),
                ("officer", self.officer),
                ("dataset", self.dataset),
                ("purpose", self.purpose),
                ("case", self.case_id),
                ("decision", self.decision),
            )
            if value
        ]
        words += [
            f"{name}={instant.isoformat()}"
            for name, instant in (("from", self.start), ("to", self.end))
            if instant is not None
        ]
        return " ".join(words)


def _entry(row: asyncpg.Record) -> LogEntry:
    return LogEntry(
        index=row["idx"],
        leaf=bytes(row["leaf"]),
        at=row["at"],
        node=row["node"],
        caller=row["caller"],
        officer=row["officer"],
        action=row["action"],
        dataset=row["dataset"],
        fields=tuple(row["fields"]),
        purpose=row["purpose"],
        case_id=row["case_id"],
        subject_hmac=bytes(row["subject_hmac"]) if row["subject_hmac"] is not None else None,
        decision=row["decision"],
        reason=row["reason"],
    )


def decode_token(token: str) -> int:
    """The index a log page token claims (-1 for ""), WITHOUT checking its tag: a form
    check for the web console's links. ``AuditStore`` checks the tag when the token is
    used. Raises PageTokenInvalid if ``token`` is not a log page token at all."""
    position = peek_unverified(token)
    if position is None:
        return -1
    if not (position.isascii() and position.isdigit()):
        raise PageTokenInvalid(
            "The page token is not one this node issued; start again without it.",
            metadata={"field": "page_token"},
        )
    return int(position)


def _page_size(page_size: int) -> int:
    if not 0 <= page_size <= MAX_PAGE:
        raise InvalidArgument(
            f"page_size must be 1 to {MAX_PAGE:,} (0 means 100); use Export for more.",
            metadata={"field": "page_size"},
        )
    return page_size or 100


STORED_LEVEL = 8
"""``log_node`` holds the perfect subtrees of ``2**8`` = 256 leaves and more, about one row
per 128 entries; a smaller one that a proof names is computed from its leaves (at most
256, read by index). Storing every node had cost two rows and two index entries per entry
on the integrator's path (docs/audit-log.md, "Sequencing and integration")."""
_RUN = 1 << STORED_LEVEL
"""Leaves in a run whose hashes give the smaller nodes of a proof."""

# The stored nodes asked for, then the leaf hashes of each 256-leaf run the smaller nodes
# lie in (level -1, idx the run's first leaf), with how many leaves the run holds. Each
# run is its own subquery (LATERAL), so that it is read as a range of the primary key
# whatever the number of runs: joined to the runs instead, a generic plan, which assumes
# ten of them, scanned the whole table (30 ms at 200,000 entries).
_STORED = (
    "SELECT n.level, n.idx, n.hash, 0 AS n FROM log_node n"
    " JOIN unnest($1::smallint[], $2::bigint[]) AS w(level, idx)"
    " ON n.level = w.level AND n.idx = w.idx"
)
_NODES = (
    f"{_STORED} UNION ALL"  # noqa: S608 - built from fixed text
    " SELECT -1, r.lo, l.hashes, l.n FROM unnest($3::bigint[], $4::bigint[]) AS r(lo, hi),"
    " LATERAL (SELECT string_agg(sha256('\\x00'::bytea || a.leaf), ''::bytea ORDER BY a.idx)"
    " AS hashes, count(*) AS n FROM access_log a WHERE a.idx >= r.lo AND a.idx < r.hi) AS l"
)


async def stored_nodes(
    pool: asyncpg.Pool, levels: Sequence[int], indices: Sequence[int]
) -> dict[NodeId, bytes]:
    """The hashes ``log_node`` holds for the nodes ``zip(levels, indices)``."""
    rows = await pool.fetch(_STORED, levels, indices)
    return {(row["level"], row["idx"]): bytes(row["hash"]) for row in rows}


async def fetch_nodes(
    pool: asyncpg.Pool, wanted: Sequence[Sequence[NodeId]]
) -> dict[NodeId, bytes]:
    """The hashes of the perfect nodes named in ``wanted``, in one query: those of
    ``STORED_LEVEL`` and up as stored, the smaller ones computed from their leaves. A node
    the log cannot give (a leaf missing from its run) is left out."""
    stored: list[NodeId] = []
    small: dict[int, list[NodeId]] = {}  # by the first leaf of the run each lies in
    run_end: dict[int, int] = {}  # the run's leaves up to the last a wanted node needs
    for node in sorted({node for group in wanted for node in group}):
        level, index = node
        if level >= STORED_LEVEL:
            stored.append(node)
            continue
        first = (index << level) & -_RUN
        small.setdefault(first, []).append(node)
        run_end[first] = max(run_end.get(first, first), (index + 1) << level)
    rows = await pool.fetch(
        _NODES,
        [level for level, _ in stored],
        [index for _, index in stored],
        list(run_end),
        list(run_end.values()),
    )
    found: dict[NodeId, bytes] = {}
    for row in rows:
        if row["level"] >= 0:
            found[(row["level"], row["idx"])] = bytes(row["hash"])
        elif row["n"] == run_end[row["idx"]] - row["idx"]:  # every leaf of the run is there
            found.update(nodes_from_leaves(row["idx"], bytes(row["hash"]), small[row["idx"]]))
    return found


class AuditStore:
    def __init__(self, pool: asyncpg.Pool, tokens: PageTokens | None = None) -> None:
        """``tokens`` sign the page tokens (default: valid in this process only)."""
        self._pool = pool
        self.pool = pool
        self._tokens = tokens or PageTokens.ephemeral()

    def with_tokens(self, tokens: PageTokens) -> AuditStore:
        """This store, issuing and accepting the page tokens of ``tokens``."""
        return AuditStore(self._pool, tokens)

    def _after(self, scope: str, token: str) -> int:
        """The index after which the page of ``token`` starts (-1 for the first page)."""
        position = self._tokens.open(scope, token)
        return -1 if position is None else int(position)

    async def size(self) -> int:
        return int(await self._pool.fetchval("SELECT size FROM log_state"))

    async def daily_volume(self, first: date, days: int, offset: timedelta) -> dict[str, list[int]]:
        """Entries per calling department and day, for ``days`` days from ``first``, days
        counted in the offices' zone (UTC + ``offset``): caller -> one count a day."""
        start = datetime.combine(first, time(), tzinfo=timezone(offset))
        # The offset goes in as an interval of seconds: a text offset ('+08:00') is read as
        # a POSIX zone, sign inverted, which counted Beijing's days from 16:00 the day
        # before; and a negative timedelta would arrive as "-1 days +19:00", which a zone
        # refuses.
        rows = await self._pool.fetch(
            "SELECT (at AT TIME ZONE make_interval(secs => $3))::date AS day, caller,"
            " count(*) AS n FROM access_log_searchable WHERE at >= $1 AND at < $2 GROUP BY 1, 2",
            start,
            start + timedelta(days=days),
            offset.total_seconds(),
        )
        series: dict[str, list[int]] = {}
        for row in rows:
            series.setdefault(row["caller"], [0] * days)[(row["day"] - first).days] = row["n"]
        return series

    async def search(
        self, filters: SearchFilters, *, page_size: int = 100, page_token: str = ""
    ) -> tuple[list[LogEntry], str]:
        """Entries matching ``filters`` by index; the page and the next page token."""
        size = _page_size(page_size)
        clauses, args = filters.where(2)
        # The page's indices from the searchable entries (the auditors' indexes, and the
        # few entries not yet integrated), then those rows.
        rows = await self._pool.fetch(
            f"SELECT {_A_COLUMNS} FROM access_log a JOIN ("  # noqa: S608 - built from fixed names
            "SELECT idx FROM access_log_searchable WHERE idx > $1"
            + "".join(f" AND {c}" for c in clauses)
            + f" ORDER BY idx LIMIT {size + 1}) m ON m.idx = a.idx ORDER BY a.idx",
            self._after(_SEARCH, page_token),
            *args,
        )
        entries = [_entry(row) for row in rows[:size]]
        more = len(rows) > size
        return entries, (self._tokens.issue(_SEARCH, str(entries[-1].index)) if more else "")

    async def export(self, filters: SearchFilters, *, chunk: int = 1000) -> AsyncIterator[LogEntry]:
        """Every matching entry, by index, read a chunk at a time."""
        token = ""
        while True:
            entries, token = await self.search(filters, page_size=chunk, page_token=token)
            for entry in entries:
                yield entry
            if not token:
                return

    async def entry(self, index: int) -> LogEntry:
        """The entry at ``index``; ProofRequestInvalid if the log has none there."""
        row = None
        if 0 <= index <= MAX_INDEX:
            row = await self._pool.fetchrow(
                f"SELECT {_COLUMNS} FROM access_log WHERE idx = $1",  # noqa: S608
                index,
            )
        if row is None:
            raise ProofRequestInvalid(
                f"There is no entry {index}; the log has {await self.size():,} entries.",
                metadata={"index": str(index)},
            )
        return _entry(row)

    async def _nodes(self, wanted: Sequence[Sequence[NodeId]]) -> dict[NodeId, bytes]:
        return await fetch_nodes(self._pool, wanted)

    async def inclusion(self, index: int, tree_size: int) -> list[bytes]:
        """RFC 9162 inclusion proof of ``index`` in the tree of ``tree_size`` entries."""
        wanted = inclusion_nodes(index, tree_size)  # raises ProofRequestInvalid when out of range
        return inclusion_proof(index, tree_size, await self._nodes(wanted))

    async def consistency(self, old_size: int, new_size: int) -> list[bytes]:
        head = await self.size()
        if new_size > head:
            raise ProofRequestInvalid(
                f"The log has {head:,} entries; a consistency proof can reach at most that size.",
                metadata={"new_size": str(new_size)},
            )
        wanted = consistency_nodes(old_size, new_size)
        return consistency_proof(old_size, new_size, await self._nodes(wanted))

    async def subject_accesses(
        self, subject_hmac: bytes, now: datetime, *, page_size: int = 100, page_token: str = ""
    ) -> tuple[list[SubjectAccess], str, int]:
        """Accesses to one subject, without entries of covert cases still under embargo;
        returns the page, the next page token and how many entries are withheld."""
        size = _page_size(page_size)
        rows = await self._pool.fetch(
            f"""
            SELECT {_A_COLUMNS}, coalesce(d.name, a.caller) AS department_name
            FROM (
                SELECT s.idx FROM access_log_searchable s
                WHERE s.subject_hmac = $1 AND s.idx > $2
                  AND NOT EXISTS (
                      SELECT 1 FROM covert_case_current c
                      WHERE c.caller = s.caller AND c.case_id = s.case_id AND c.until > $3)
                ORDER BY s.idx LIMIT {size + 1}
            ) m
            JOIN access_log a ON a.idx = m.idx
            LEFT JOIN department d ON d.code = a.caller
            ORDER BY a.idx
            """,  # noqa: S608 - built from fixed names
            subject_hmac,
            self._after(_SUBJECT, page_token),
            now,
        )
        withheld = await self._pool.fetchval(
            "SELECT count(*) FROM access_log_searchable a JOIN covert_case_current c"
            " ON c.caller = a.caller AND c.case_id = a.case_id"
            " WHERE a.subject_hmac = $1 AND c.until > $2",
            subject_hmac,
            now,
        )
        accesses = [SubjectAccess(_entry(row), row["department_name"]) for row in rows[:size]]
        more = len(rows) > size
        token = self._tokens.issue(_SUBJECT, str(accesses[-1].entry.index)) if more else ""
        return accesses, token, int(withheld or 0)
