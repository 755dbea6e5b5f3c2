"""Ratings (好差评) of decided cases, rectifications (整改) of the bad ones, and the check
that no rating was silently changed. See docs/ratings.md.

After 办结 the applicant rates the case once: 1 to 5 and a comment, by the one-time link
of the decision's notice or in the console's subject view. The rating is bound to the
case, its item, the handling department and the officer who decided it. A rating of 1 or
2 (差评) opens a rectification, due a number of working days later (the node's calendar);
the department answers it, the applicant sees the answer and may rate once more.

Every rating, rectification and answer is a row and, in the same transaction, an entry of
the tamper-evident access log whose reason carries a SHA-256 digest of the row
(``rating_digest`` and friends). The node's role may only insert these rows, and
``verify_ratings`` recomputes each row's digest and compares it with the digest in its
log entry's leaf (the leaf, not the searchable columns: the Merkle tree covers the leaf),
so a row edited, deleted or added behind the node's back is found. The pure rules (score,
comment, rounds, digests) are plain functions; ``RatingStore`` is the PostgreSQL shell.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import unicodedata
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg

from tongban.errors import TongbanError
from tongban.exchange.audit.leaf import LeafInvalid, decode_leaf
from tongban.exchange.audit.log import AccessEntry, AccessLog, SubjectHasher
from tongban.exchange.audit.recorder import AccessRecorder
from tongban.exchange.errors import AuditorRoleRequired, InvalidArgument
from tongban.exchange.identity import Caller
from tongban.exchange.licensing.case_overdue import AUDITOR_ROLE
from tongban.exchange.licensing.cases import CaseClock, CaseState, is_case_number
from tongban.exchange.licensing.errors import CaseNotFound

__all__ = [
    "LINK_LIFETIME",
    "MAX_ANSWER",
    "MAX_COMMENT",
    "MAX_LIST",
    "RECTIFICATION_DAYS",
    "RatedCase",
    "Rating",
    "RatingAlreadyGiven",
    "RatingCaseUndecided",
    "RatingCommentInvalid",
    "RatingLinkExpired",
    "RatingLinkInvalid",
    "RatingLinkUsed",
    "RatingScoreInvalid",
    "RatingStore",
    "RatingsReport",
    "RatingsTampered",
    "Rectification",
    "RectificationAlreadyAnswered",
    "RectificationAnswerInvalid",
    "RectificationNotFound",
    "RectificationNotPermitted",
    "answer_digest",
    "next_round",
    "normal_answer",
    "normal_comment",
    "normal_score",
    "rating_digest",
    "rectification_digest",
    "verify_ratings",
]

LINK_LIFETIME = timedelta(days=30)
"""How long a rating link of a decision stays valid."""
RECTIFICATION_DAYS = 5
"""Working days a department has to answer a rectification, by default."""
MAX_COMMENT = 500
MAX_ANSWER = 1000
MAX_LIST = 1000
"""The most rectifications one list call returns."""

_RATED = frozenset({CaseState.DECIDED, CaseState.DELIVERED})  # 办结, and 送达 after it
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
_DIGEST = re.compile(r"sha256=([0-9a-f]{64})$")
ACTIONS = ("rating.rate", "rating.rerate", "rating.rectify", "rating.answer")


# --- errors ----------------------------------------------------------------------------


class RatingCaseUndecided(TongbanError):
    """The case is not decided (办结) yet, or was closed without a decision."""

    reason = "RATING_CASE_UNDECIDED"
    status = "FAILED_PRECONDITION"


class RatingAlreadyGiven(TongbanError):
    """The case is already rated (and re-rated, or not open to a re-rating yet)."""

    reason = "RATING_ALREADY_GIVEN"
    status = "ALREADY_EXISTS"


class RatingLinkInvalid(TongbanError):
    """A rating link the node never made (or not a link at all)."""

    reason = "RATING_LINK_INVALID"
    status = "PERMISSION_DENIED"


class RatingLinkUsed(TongbanError):
    """A rating link already spent on a rating."""

    reason = "RATING_LINK_USED"
    status = "PERMISSION_DENIED"


class RatingLinkExpired(TongbanError):
    """A rating link past its expiry."""

    reason = "RATING_LINK_EXPIRED"
    status = "PERMISSION_DENIED"


class RatingScoreInvalid(TongbanError):
    reason = "RATING_SCORE_INVALID"
    status = "INVALID_ARGUMENT"


class RatingCommentInvalid(TongbanError):
    reason = "RATING_COMMENT_INVALID"
    status = "INVALID_ARGUMENT"


class RectificationNotFound(TongbanError):
    reason = "RECTIFICATION_NOT_FOUND"
    status = "NOT_FOUND"


class RectificationNotPermitted(TongbanError):
    """Another department answers (or reads) a rectification of a case it did not handle."""

    reason = "RECTIFICATION_NOT_PERMITTED"
    status = "PERMISSION_DENIED"


class RectificationAlreadyAnswered(TongbanError):
    reason = "RECTIFICATION_ALREADY_ANSWERED"
    status = "ALREADY_EXISTS"


class RectificationAnswerInvalid(TongbanError):
    reason = "RECTIFICATION_ANSWER_INVALID"
    status = "INVALID_ARGUMENT"


class RatingsTampered(TongbanError):
    """Rating rows and their access-log entries disagree: a row was changed, deleted or
    added outside the node."""

    reason = "RATINGS_TAMPERED"
    status = "DATA_LOSS"


# --- the rules (pure) ------------------------------------------------------------------


@dataclass(frozen=True)
class Rating:
    case_number: str
    round: int
    """1: the rating; 2: the re-rating after the department's answer."""
    item: str
    item_version: int
    department: str
    officer: str | None
    """The officer who decided the case (办结)."""
    applicant: str
    score: int
    comment: str
    via: Literal["link", "console"]
    rated_at: datetime

    @property
    def bad(self) -> bool:
        """差评: a score of 1 or 2."""
        return self.score <= 2


@dataclass(frozen=True)
class Rectification:
    case_number: str
    department: str
    opened_at: datetime
    due_at: datetime
    answer: str | None = None
    answered_at: datetime | None = None
    answered_by: str | None = None

    def overdue(self, now: datetime) -> bool:
        """Unanswered past its due instant (or answered after it)."""
        return (self.answered_at or now) > self.due_at


@dataclass(frozen=True)
class RatedCase:
    """A case with its ratings and rectification, for lists and the subject view."""

    case_number: str
    item: str
    department: str
    applicant: str
    ratings: tuple[Rating, ...]
    rectification: Rectification | None
    state: CaseState | None = None
    """The case's state (filled in for the rating page)."""
    outcome: str | None = None

    @property
    def first(self) -> Rating | None:
        return next((r for r in self.ratings if r.round == 1), None)

    @property
    def again(self) -> Rating | None:
        return next((r for r in self.ratings if r.round == 2), None)

    @property
    def may_rate_again(self) -> bool:
        return (
            self.rectification is not None
            and self.rectification.answer is not None
            and (self.again is None)
        )


@dataclass(frozen=True)
class RatingsReport:
    """What ``verify_ratings`` checked: rows, and log entries matched to them."""

    ratings: int
    rectifications: int
    answers: int
    entries: int


def normal_score(score: object) -> int:
    """The score as an int 1-5 (an int, or a text of one digit); raise RatingScoreInvalid."""
    if isinstance(score, str) and re.fullmatch(r"[1-5]", score.strip()):
        return int(score.strip())
    if isinstance(score, int) and not isinstance(score, bool) and 1 <= score <= 5:
        return score
    raise RatingScoreInvalid(
        "A rating is a score from 1 (very poor, 非常不满意) to 5 (very good, 非常满意); "
        "choose one of them.",
        metadata={"field": "score"},
    )


def _printable(text: str) -> bool:
    return not any(
        unicodedata.category(ch) in {"Cc", "Cs", "Co", "Cn"} and ch not in "\n\t" for ch in text
    )


def normal_comment(comment: str) -> str:
    """The comment stripped and NFC-normalised ("" allowed); raise RatingCommentInvalid if
    it is over ``MAX_COMMENT`` characters or holds control characters."""
    text = unicodedata.normalize("NFC", comment.strip()).replace("\r\n", "\n")
    if len(text) > MAX_COMMENT or not _printable(text):
        raise RatingCommentInvalid(
            f"A comment is at most {MAX_COMMENT} printable characters (this one has "
            f"{len(text)}); shorten it.",
            metadata={"field": "comment", "length": str(len(text))},
        )
    return text


def normal_answer(answer: str) -> str:
    """The department's answer, stripped and NFC-normalised; raise
    RectificationAnswerInvalid if empty, over ``MAX_ANSWER`` characters or holding control
    characters."""
    text = unicodedata.normalize("NFC", answer.strip()).replace("\r\n", "\n")
    if not text or len(text) > MAX_ANSWER or not _printable(text):
        raise RectificationAnswerInvalid(
            f"The answer to a rectification is 1 to {MAX_ANSWER} printable characters, saying "
            f"what the department did (this one has {len(text)}).",
            metadata={"field": "answer", "length": str(len(text))},
        )
    return text


def next_round(case_number: str, rounds: set[int], rectification: Rectification | None) -> int:
    """The round a new rating of the case would be: 1 if it has none; 2 if its bad rating's
    rectification is answered and it was not re-rated. Raise RatingAlreadyGiven otherwise."""
    if 1 not in rounds:
        return 1
    if 2 in rounds:
        raise RatingAlreadyGiven(
            f"Case {case_number} was rated and rated again after the department's answer; "
            "a case is rated at most twice.",
            metadata={"case": case_number, "round": "2"},
        )
    if rectification is None:
        raise RatingAlreadyGiven(
            f"Case {case_number} is already rated; a rating is given once.",
            metadata={"case": case_number, "round": "1"},
        )
    if rectification.answer is None:
        raise RatingAlreadyGiven(
            f"Case {case_number} is already rated; you may rate it again once the department "
            "has answered the rectification.",
            metadata={"case": case_number, "round": "1"},
        )
    return 2


def _instant(at: datetime) -> str:
    at = at.astimezone(UTC)
    return f"{at:%Y-%m-%dT%H:%M:%S}.{at.microsecond:06d}Z"


def _sha256(values: list[object]) -> str:
    text = json.dumps(values, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def rating_digest(rating: Rating) -> str:
    """Hex SHA-256 over what a rating binds: case, round, item and version, department,
    officer, score, comment, how and when it was given (not the applicant, whose id the
    log keeps only as a keyed hash)."""
    return _sha256(
        [
            "rating/1", rating.case_number, rating.round, rating.item, rating.item_version,
            rating.department, rating.officer, rating.score, rating.comment, rating.via,
            _instant(rating.rated_at),
        ]
    )  # fmt: skip


def rectification_digest(r: Rectification) -> str:
    """Hex SHA-256 over a rectification's case, department, opening and due instants."""
    return _sha256(
        ["rectification/1", r.case_number, r.department, _instant(r.opened_at), _instant(r.due_at)]
    )


def answer_digest(r: Rectification) -> str:
    """Hex SHA-256 over an answer: case, department, officer, text and instant."""
    assert r.answer is not None
    assert r.answered_at is not None
    return _sha256(
        ["answer/1", r.case_number, r.department, r.answered_by, r.answer, _instant(r.answered_at)]
    )


def _rating_reason(rating: Rating) -> str:
    return f"round={rating.round} score={rating.score} sha256={rating_digest(rating)}"


# --- the store -------------------------------------------------------------------------

_CASE = (
    "SELECT c.number, c.item, c.item_version, c.department, c.applicant, c.state, c.outcome,"
    " (SELECT h.officer FROM service_case_history h WHERE h.case_number = c.number"
    "  AND h.to_state = 'decided' ORDER BY h.seq DESC LIMIT 1) AS officer"
    " FROM service_case c WHERE c.number = $1"
)
_RATING_COLUMNS = (
    "case_number, round, item, item_version, department, officer, applicant, score, comment, "
    "via, rated_at"
)
_RECTIFICATIONS = (
    "SELECT r.case_number, r.department, r.opened_at, r.due_at, a.answer, a.answered_at,"
    " a.officer AS answered_by FROM case_rectification r"
    " LEFT JOIN case_rectification_answer a ON a.case_number = r.case_number"
)


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _rating(row: asyncpg.Record) -> Rating:
    return Rating(
        case_number=row["case_number"],
        round=row["round"],
        item=row["item"],
        item_version=row["item_version"],
        department=row["department"],
        officer=row["officer"],
        applicant=row["applicant"],
        score=row["score"],
        comment=row["comment"],
        via=row["via"],
        rated_at=row["rated_at"],
    )


def _rectification(row: asyncpg.Record) -> Rectification:
    return Rectification(
        case_number=row["case_number"],
        department=row["department"],
        opened_at=row["opened_at"],
        due_at=row["due_at"],
        answer=row["answer"],
        answered_at=row["answered_at"],
        answered_by=row["answered_by"],
    )


def _case_not_found(number: str) -> CaseNotFound:
    return CaseNotFound(
        f"There is no case {number[:80]!r} of yours; check the number (办件编号).",
        metadata={"case": number[:80]},
    )


def _page_size(limit: int) -> int:
    if not 0 <= limit <= MAX_LIST:
        raise InvalidArgument(
            f"page_size must be 1 to {MAX_LIST:,} (0 means 100).", metadata={"field": "page_size"}
        )
    return limit or 100


class RatingStore:
    """Ratings, rectifications and rating links in PostgreSQL; every change in the access
    log (as ``node_name``) in its own transaction. ``base_url`` (the console's public
    address) makes the links' URLs; the node sets it once its HTTP listener is bound."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        access_log: AccessLog,
        hasher: SubjectHasher,
        clock: CaseClock,
        node_name: str,
        *,
        rectification_days: int = RECTIFICATION_DAYS,
        link_lifetime: timedelta = LINK_LIFETIME,
        base_url: str = "http://localhost",
    ) -> None:
        if rectification_days < 1:
            raise ValueError("a rectification needs at least 1 working day")
        self._pool = pool
        self._log = access_log
        self._hasher = hasher
        self._clock = clock
        self._recorder = AccessRecorder(node_name, hasher)
        self._days = rectification_days
        self._lifetime = link_lifetime
        self.base_url = base_url

    # --- links ---------------------------------------------------------------------------

    async def issue_link(self, case_number: str, now: datetime) -> str:
        """Store a new one-time rating link for the case; return its URL (the token is in
        it and nowhere else)."""
        token = secrets.token_urlsafe(32)
        await self._pool.execute(
            "INSERT INTO case_rating_link (token_hash, case_number, created_at, expires_at)"
            " VALUES ($1, $2, $3, $4)",
            _hash(token),
            case_number,
            now,
            now + self._lifetime,
        )
        return self.link_url(token)

    def link_url(self, token: str) -> str:
        return f"{self.base_url.rstrip('/')}/console/rate/{token}"

    async def _link_problem(self, conn: Any, token: str, now: datetime) -> TongbanError:
        """Why ``token`` opens nothing: unknown, used or expired."""
        row = (
            await conn.fetchrow(
                "SELECT used_at, expires_at FROM case_rating_link WHERE token_hash = $1",
                _hash(token),
            )
            if _TOKEN.fullmatch(token)
            else None
        )
        if row is None:
            return RatingLinkInvalid(
                "This rating link is not one the exchange made; open the link from your notice "
                "as it was sent, or rate the case in the console's 我的数据 page."
            )
        if row["used_at"] is not None:
            return RatingLinkUsed(
                "This rating link was already used; each link rates a case once. Your rating "
                "is shown in the console's 我的数据 page."
            )
        return RatingLinkExpired(
            f"This rating link expired at {_instant(row['expires_at'])}; rate the case in the "
            "console's 我的数据 page instead.",
            metadata={"expired_at": _instant(row["expires_at"])},
        )

    async def link_case(self, token: str, now: datetime) -> RatedCase:
        """The case a valid, unused link rates (for the rating page); raise
        RatingLinkInvalid, RatingLinkUsed or RatingLinkExpired."""
        async with self._pool.acquire() as conn:
            number = (
                await conn.fetchval(
                    "SELECT case_number FROM case_rating_link WHERE token_hash = $1"
                    " AND used_at IS NULL AND expires_at > $2",
                    _hash(token),
                    now,
                )
                if _TOKEN.fullmatch(token)
                else None
            )
            if number is None:
                raise await self._link_problem(conn, token, now)
            return await self._rated(conn, str(number))

    # --- rating --------------------------------------------------------------------------

    async def rate_by_link(self, token: str, score: object, comment: str, now: datetime) -> Rating:
        """Rate the case of a one-time link, spending the link in the same transaction.

        Raises RatingScoreInvalid, RatingCommentInvalid (nothing spent), RatingLinkInvalid,
        RatingLinkUsed, RatingLinkExpired, and what ``rate`` raises."""
        value, text = normal_score(score), normal_comment(comment)
        async with self._pool.acquire() as conn, self._log.transaction(conn) as tx:
            number = (
                await conn.fetchval(
                    "UPDATE case_rating_link SET used_at = $2 WHERE token_hash = $1"
                    " AND used_at IS NULL AND expires_at > $2 RETURNING case_number",
                    _hash(token),
                    now,
                )
                if _TOKEN.fullmatch(token)
                else None
            )
            if number is None:
                raise await self._link_problem(conn, token, now)
            rating, entries = await self._rate_in(conn, str(number), None, value, text, "link", now)
            tx.record(entries)
        return rating

    async def rate(
        self, applicant: str, case_number: str, score: object, comment: str, now: datetime
    ) -> Rating:
        """The signed-in ``applicant`` rates their case ``case_number`` (or rates it again
        after the answer to its rectification); return the rating.

        Raises RatingScoreInvalid, RatingCommentInvalid, CaseNotFound (no such case of the
        applicant's), RatingCaseUndecided, RatingAlreadyGiven."""
        value, text = normal_score(score), normal_comment(comment)
        number = case_number.strip()
        if not is_case_number(number):
            raise _case_not_found(number)
        async with self._pool.acquire() as conn, self._log.transaction(conn) as tx:
            rating, entries = await self._rate_in(conn, number, applicant, value, text,
                                                  "console", now)  # fmt: skip
            tx.record(entries)
        return rating

    async def _rate_in(
        self,
        conn: Any,
        number: str,
        applicant: str | None,
        score: int,
        comment: str,
        via: Literal["link", "console"],
        now: datetime,
    ) -> tuple[Rating, list[AccessEntry]]:
        case = await conn.fetchrow(_CASE, number)
        if case is None or (applicant is not None and case["applicant"] != applicant):
            raise _case_not_found(number)
        if CaseState(case["state"]) not in _RATED:
            raise RatingCaseUndecided(
                f"Case {number} is {CaseState(case['state']).label}; a case is rated once it is "
                "decided (办结).",
                metadata={"case": number, "state": case["state"]},
            )
        # The case's rating rows, locked by the insert below (the primary key): a second
        # rating racing this one finds the row and is refused.
        given = await conn.fetch("SELECT round FROM case_rating WHERE case_number = $1", number)
        rounds = {r["round"] for r in given}
        row = await conn.fetchrow(_RECTIFICATIONS + " WHERE r.case_number = $1", number)
        rectification = _rectification(row) if row is not None else None
        round_ = next_round(number, rounds, rectification)
        rating = Rating(
            case_number=number, round=round_, item=case["item"],
            item_version=case["item_version"], department=case["department"],
            officer=case["officer"], applicant=case["applicant"], score=score,
            comment=comment, via=via, rated_at=now,
        )  # fmt: skip
        inserted = await conn.fetchval(
            f"INSERT INTO case_rating ({_RATING_COLUMNS})"  # noqa: S608 - constant columns
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            " ON CONFLICT DO NOTHING RETURNING round",
            rating.case_number, rating.round, rating.item, rating.item_version,
            rating.department, rating.officer, rating.applicant, rating.score,
            rating.comment, rating.via, rating.rated_at,
        )  # fmt: skip
        if inserted is None:
            raise RatingAlreadyGiven(
                f"Case {number} was rated a moment ago; a rating is given once.",
                metadata={"case": number, "round": str(round_)},
            )
        subject = self._hasher(rating.applicant)
        entries = [
            self._entry("subject", None, "rating.rate" if round_ == 1 else "rating.rerate",
                        number, subject, f"rating of {rating.item} by {rating.department}",
                        _rating_reason(rating), now)
        ]  # fmt: skip
        if round_ == 1 and rating.bad:
            opened = Rectification(
                number, rating.department, now, self._clock.calendar.add_working_days(
                    now.astimezone(self._clock.zone), self._days)
            )  # fmt: skip
            await conn.execute(
                "INSERT INTO case_rectification (case_number, department, opened_at, due_at)"
                " VALUES ($1, $2, $3, $4)",
                opened.case_number,
                opened.department,
                opened.opened_at,
                opened.due_at,
            )
            entries.append(
                self._entry("subject", None, "rating.rectify", number, subject,
                            f"rectification by {rating.department}",
                            f"sha256={rectification_digest(opened)}", now)
            )  # fmt: skip
        return rating, entries

    def _entry(
        self,
        caller: str,
        officer: str | None,
        action: str,
        case_number: str | None,
        subject: bytes | None,
        purpose: str,
        reason: str | None,
        now: datetime,
        *,
        denied: bool = False,
    ) -> AccessEntry:
        return self._recorder.entry(
            at=now,
            department=caller,
            officer=officer,
            action=action,
            purpose=purpose,
            case_id=case_number,
            subject_hmac=subject,
            decision="denied" if denied else "allowed",
            reason=reason,
        )

    # --- reading -------------------------------------------------------------------------

    async def _rated(self, conn: Any, number: str) -> RatedCase:
        case = await conn.fetchrow(_CASE, number)
        if case is None:
            raise _case_not_found(number)
        found = (await self._rated_many(conn, [number])).get(number)
        return RatedCase(
            number,
            case["item"],
            case["department"],
            case["applicant"],
            found.ratings if found else (),
            found.rectification if found else None,
            CaseState(case["state"]),
            case["outcome"],
        )

    async def _rated_many(self, conn: Any, numbers: list[str]) -> dict[str, RatedCase]:
        """The cases among ``numbers`` that have a rating, with their ratings and
        rectification."""
        ratings = [
            _rating(r)
            for r in await conn.fetch(
                f"SELECT {_RATING_COLUMNS} FROM case_rating"  # noqa: S608 - constant columns
                " WHERE case_number = ANY($1::text[]) ORDER BY case_number, round",
                numbers,
            )
        ]
        fixes = {
            r["case_number"]: _rectification(r)
            for r in await conn.fetch(
                _RECTIFICATIONS + " WHERE r.case_number = ANY($1::text[])", numbers
            )
        }
        out: dict[str, RatedCase] = {}
        for rating in ratings:
            had = out.get(rating.case_number)
            out[rating.case_number] = RatedCase(
                rating.case_number,
                rating.item,
                rating.department,
                rating.applicant,
                (*(had.ratings if had else ()), rating),
                fixes.get(rating.case_number),
            )
        return out

    async def of_applicant(self, applicant: str) -> dict[str, RatedCase]:
        """The applicant's rated cases by number (the subject view shows them)."""
        async with self._pool.acquire() as conn:
            numbers = [
                r["case_number"]
                for r in await conn.fetch(
                    "SELECT DISTINCT case_number FROM case_rating WHERE applicant = $1", applicant
                )
            ]
            return await self._rated_many(conn, numbers)

    async def of_cases(self, numbers: list[str]) -> dict[str, RatedCase]:
        """The ratings of those cases (the subject view shows them to the applicant)."""
        async with self._pool.acquire() as conn:
            return await self._rated_many(conn, numbers)

    async def rectifications(
        self, caller: Caller, *, open_only: bool, page_size: int, now: datetime
    ) -> list[RatedCase]:
        """The rectifications of the caller's department (unanswered ones only with
        ``open_only``), oldest due first; the read is logged (``rating.list``, it names
        applicants). Raises InvalidArgument for a page size over ``MAX_LIST``."""
        size = _page_size(page_size)
        department = caller.department.code
        found = await self._list(
            "r.department = $1" + (" AND a.case_number IS NULL" if open_only else ""),
            [department],
            size,
        )
        await self._log.append(
            [self._entry(department, caller.officer_id, "rating.list", None, None,
                         "rectifications" + (" open" if open_only else ""), None, now)]
        )  # fmt: skip
        return found

    async def overdue(
        self, caller: Caller, department: str, *, page_size: int, now: datetime
    ) -> list[RatedCase]:
        """Unanswered rectifications past their due instant, of every department or of
        ``department``, oldest due first: for the auditor role only; the read is logged
        (``rating.overdue``), a refusal as denied. Raises RectificationNotPermitted
        without the role, InvalidArgument for a page size over ``MAX_LIST``."""
        size = _page_size(page_size)
        described = "overdue rectifications" + (f" department={department}" if department else "")
        if AUDITOR_ROLE not in caller.department.roles:
            await self._log.append(
                [self._entry(caller.department.code, caller.officer_id, "rating.overdue", None,
                             None, described, "AUDITOR_ROLE_REQUIRED", now, denied=True)]
            )  # fmt: skip
            raise AuditorRoleRequired(
                "Only departments with the auditor role see the overdue rectifications; list "
                "your own department's with ListRectifications (tongban rating rectifications).",
                metadata={"department": caller.department.code},
            )
        where = "a.case_number IS NULL AND r.due_at < $1"
        params: list[object] = [now]
        if department:
            where += " AND r.department = $2"
            params.append(department[:64])
        found = await self._list(where, params, size)
        await self._log.append(
            [self._entry(caller.department.code, caller.officer_id, "rating.overdue", None,
                         None, described, None, now)]
        )  # fmt: skip
        return found

    async def _list(self, where: str, params: list[object], size: int) -> list[RatedCase]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT r.case_number FROM case_rectification r"  # noqa: S608 - constant
                f" LEFT JOIN case_rectification_answer a ON a.case_number = r.case_number"
                f" WHERE {where} ORDER BY r.due_at, r.case_number LIMIT {size}",
                *params,
            )
            numbers = [r["case_number"] for r in rows]
            found = await self._rated_many(conn, numbers)
        return [found[n] for n in numbers if n in found]

    # --- answering -----------------------------------------------------------------------

    async def answer(
        self, caller: Caller, case_number: str, answer: str, *, now: datetime
    ) -> RatedCase:
        """The handling department answers the rectification of ``case_number``; return
        the case with it. Raises RectificationAnswerInvalid, RectificationNotFound,
        RectificationNotPermitted (another department's; logged as denied),
        RectificationAlreadyAnswered."""
        text = normal_answer(answer)
        number = case_number.strip()
        department = caller.department.code
        denied: TongbanError | None = None
        async with self._pool.acquire() as conn, self._log.transaction(conn) as tx:
            row = (
                await conn.fetchrow(_RECTIFICATIONS + " WHERE r.case_number = $1", number)
                if is_case_number(number)
                else None
            )
            if row is None:
                raise RectificationNotFound(
                    f"Case {number[:80]!r} has no rectification (整改): only a rating of 1 or "
                    "2 opens one.",
                    metadata={"case": number[:80]},
                )
            found = _rectification(row)
            if found.department != department:
                denied = RectificationNotPermitted(
                    f"The rectification of case {number} is {found.department}'s; only the "
                    "department that handled the case answers it.",
                    metadata={"case": number, "department": found.department},
                )
                tx.record(
                    [self._entry(department, caller.officer_id, "rating.answer", number, None,
                                 f"answer to the rectification by {found.department}",
                                 denied.reason, now, denied=True)]
                )  # fmt: skip
            elif found.answer is not None:
                raise RectificationAlreadyAnswered(
                    f"The rectification of case {number} was answered already; an answer is "
                    "given once.",
                    metadata={"case": number},
                )
            else:
                done = Rectification(found.case_number, found.department, found.opened_at,
                                     found.due_at, text, now, caller.officer_id)  # fmt: skip
                await conn.execute(
                    "INSERT INTO case_rectification_answer"
                    " (case_number, department, officer, answer, answered_at)"
                    " VALUES ($1, $2, $3, $4, $5)",
                    number,
                    department,
                    caller.officer_id,
                    text,
                    now,
                )
                applicant = await conn.fetchval(
                    "SELECT applicant FROM service_case WHERE number = $1", number
                )
                tx.record(
                    [self._entry(department, caller.officer_id, "rating.answer", number,
                                 self._hasher(str(applicant)), "answer to the rectification",
                                 f"sha256={answer_digest(done)}", now)]
                )  # fmt: skip
        if denied is not None:
            raise denied
        async with self._pool.acquire() as conn:
            return await self._rated(conn, number)


# --- the check -------------------------------------------------------------------------


async def verify_ratings(pool: asyncpg.Pool) -> RatingsReport:
    """Compare every rating, rectification and answer row with the digest in its access-log
    entry (read from the entry's leaf); return what was checked, or raise RatingsTampered
    naming the first cases whose row was changed, deleted or added outside the node.

    The leaves themselves are checked against the Merkle tree by ``audit verify``."""
    async with pool.acquire() as conn:
        ratings = [
            _rating(r)
            for r in await conn.fetch(f"SELECT {_RATING_COLUMNS} FROM case_rating")  # noqa: S608
        ]
        fixes = [_rectification(r) for r in await conn.fetch(_RECTIFICATIONS)]
        leaves = await conn.fetch(
            "SELECT idx, leaf FROM access_log WHERE action = ANY($1::text[])"
            " AND decision = 'allowed' ORDER BY idx",
            list(ACTIONS),
        )
    rows: Counter[tuple[str, str, str]] = Counter()
    for rating in ratings:
        action = "rating.rate" if rating.round == 1 else "rating.rerate"
        rows[(action, rating.case_number, rating_digest(rating))] += 1
    for fix in fixes:
        rows[("rating.rectify", fix.case_number, rectification_digest(fix))] += 1
        if fix.answer is not None:
            rows[("rating.answer", fix.case_number, answer_digest(fix))] += 1
    logged: Counter[tuple[str, str, str]] = Counter()
    for leaf in leaves:
        try:
            entry = decode_leaf(bytes(leaf["leaf"]))
        except LeafInvalid:
            raise RatingsTampered(
                f"The access-log entry {leaf['idx']} of a rating cannot be read; run "
                "tongban audit verify.",
                metadata={"index": str(leaf["idx"])},
            ) from None
        found = _DIGEST.search(entry.reason or "")
        if entry.decision != "allowed" or found is None or entry.case_id is None:
            continue
        logged[(entry.action, entry.case_id, found.group(1))] += 1
    problems = [("no log entry (changed or added outside the node)", k) for k in rows - logged]
    problems += [("no row (deleted or changed outside the node)", k) for k in logged - rows]
    if problems:
        problems.sort(key=lambda p: (p[1][1], p[1][0]))
        first = "; ".join(f"{k[0]} of case {k[1]}: {what}" for what, k in problems[:5])
        raise RatingsTampered(
            f"{len(problems)} rating record(s) disagree with the access log: {first}.",
            metadata={
                "cases": ",".join(sorted({k[1] for _, k in problems}))[:500],
                "count": str(len(problems)),
            },
        )
    return RatingsReport(
        ratings=len(ratings),
        rectifications=len(fixes),
        answers=sum(f.answer is not None for f in fixes),
        entries=len(leaves),
    )
