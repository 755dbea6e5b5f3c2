"""The sharing service: the catalogue, records, grants and queries, composed.

This layer knows no gRPC: the servicers in ``tongban.exchange.server.sharing_services``
translate messages to these calls and back. It owns the read caches (catalogue entries
and grants, kept fresh by PostgreSQL notifications) and the order of a query:

    decide (pure policy) → fetch → write the access log → sign → answer

with the log written, durably, before anything is returned (DESIGN.md rule 2), for
denials as well as answers.
"""

from __future__ import annotations

import base64
import functools
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo

import asyncpg
from cryptography.hazmat.primitives.serialization import Encoding

from tongban.errors import TongbanError
from tongban.exchange.audit.log import AccessLog, SubjectHasher
from tongban.exchange.audit.recorder import AccessRecorder, Outcome
from tongban.exchange.catalogue.calendar import WorkingCalendar
from tongban.exchange.catalogue.canonical import canonical_json
from tongban.exchange.catalogue.errors import InvalidSubjectId, RecordInvalid
from tongban.exchange.catalogue.schema import (
    DEFAULT_STRING_MAX_LENGTH,
    REFUSED_BUT_UNIT_SEPARATOR,
    DatasetSchema,
    FieldType,
    validate_record,
    value_to_json,
)
from tongban.exchange.catalogue.subject_ids import SubjectKind, validate_subject_id
from tongban.exchange.datadir import NodeSigning
from tongban.exchange.db.notify import ChangeListener, KeyedCache
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.fairness import yield_fairly
from tongban.exchange.identity import Actor, Caller
from tongban.exchange.sharing.datasets import DatasetSpec, DatasetStore, is_dataset_code
from tongban.exchange.sharing.errors import (
    DatasetNotFound,
    DuplicateKey,
    NotOwner,
    QueryDenied,
    TooManyKeys,
)
from tongban.exchange.sharing.grants import GrantStore
from tongban.exchange.sharing.model import DatasetEntry, Grant, GrantStatus, ShareClass
from tongban.exchange.sharing.policy import (
    Allowed,
    Decision,
    Denied,
    QueryIntent,
    decide,
    needs_grants,
)
from tongban.exchange.sharing.records import (
    VALUE_SEP,
    Change,
    Form,
    FreshBatch,
    PublishCounts,
    RecordStore,
    StoredRecord,
    fresh_batch,
    storage_forms,
    string_field_names,
)
from tongban.signing.certs import certificate_fingerprint
from tongban.signing.clock import Clock
from tongban.signing.jose import sign_jws
from tongban.signing.sm2_jws import sign_sm2_detached

__all__ = [
    "MAX_BATCH",
    "MAX_KEYS",
    "QueryInput",
    "QueryResult",
    "RawChange",
    "Sharing",
    "signable_records",
]

MAX_KEYS = 1000
MAX_BATCH = 10_000
YIELD_EVERY = 500
"""Records validated between returns to the event loop: a batch of 5,000 takes ~0.1 s of
the loop, which other departments' calls must not wait behind in one piece. Slices of 100
(~2 ms) were measured too: no better for another department's p99 in ``bench fairness``,
and the load got 2-5x slower, its department's turns going to its other calls."""
DATASET_CHANNEL = "tongban_dataset"
GRANT_CHANNEL = "tongban_grant"


@dataclass(frozen=True)
class QueryInput:
    dataset: str
    keys: Sequence[str]
    fields: Sequence[str]
    purpose: str
    case_id: str
    sign: bool = False
    as_of: datetime | None = None


@dataclass(frozen=True)
class AnsweredRecord:
    key: str
    version: int
    valid_from: datetime
    values: dict[str, object]


@dataclass(frozen=True)
class QueryResult:
    entry: DatasetEntry
    records: list[AnsweredRecord]
    missing_keys: list[str]
    answered_at: datetime
    signed_payload: bytes = b""
    signature: str = ""
    signature_sm2: str = ""
    """Beside the ES256 one, when the node has an SM2 answer key (signing/sm2_jws.py)."""
    signer_root: bytes = b""
    """For a peer exchange's dataset: the PEM root CA the owner's signature chains to (as
    this exchange holds it for that peer); empty for our own datasets."""


@dataclass(frozen=True)
class PreparedBatch:
    """Changes validated against ``entry``'s schema, ready to write."""

    entry: DatasetEntry
    changes: list[Change]
    forms: list[Form]
    """The changes' storage forms, made with the checks, so that a stream's next batch
    is checked and encoded while the one before it is being written."""
    fresh: FreshBatch | None = None
    """The write's parameters if every key is new (``records.fresh_batch``), made with
    the checks too: the write of a bulk load's batch, which the next batch's write
    follows, then only sends them."""


@dataclass(frozen=True)
class RawChange:
    """A change as received: values are Python values not yet checked against the schema."""

    key: str
    values: dict[str, object] | None = field(default=None)


class Sharing:
    def __init__(
        self,
        pool: asyncpg.Pool,
        listener: ChangeListener,
        access_log: AccessLog,
        hasher: SubjectHasher,
        signing: NodeSigning,
        clock: Clock,
        node_name: str,
        calendar: WorkingCalendar,
        answer_days: int,
        office_zone: tzinfo,
        on_decision: Callable[[str, str | None], object] | None = None,
        max_pending_grants: int = 100,
    ) -> None:
        self._on_decision = on_decision
        self.datasets = DatasetStore(pool, hasher.page_tokens())
        self.records = RecordStore(pool)
        self.grants = GrantStore(pool, calendar, answer_days, office_zone, max_pending_grants)
        self._log = access_log
        self._hasher = hasher
        self._signing = signing
        self._clock = clock
        self._node = node_name
        self._recorder = AccessRecorder(node_name, hasher)
        self._entries: KeyedCache[str, tuple[DatasetEntry | None]] = KeyedCache(listener)
        self._grants: KeyedCache[tuple[str, str], list[Grant]] = KeyedCache(listener)
        listener.subscribe(DATASET_CHANNEL, self._entries.invalidate)
        listener.subscribe(GRANT_CHANNEL, self._on_grant_change)
        self.grants.on_change = lambda consumer, dataset: self._grants.invalidate(
            (consumer, dataset)
        )
        self._x5c = [
            base64.b64encode(cert.public_bytes(Encoding.DER)).decode() for cert in signing.chain
        ]
        self._kid = certificate_fingerprint(signing.chain[0]).hex()[:16]
        self.forward: Callable[[Caller, QueryInput], Awaitable[QueryResult]] | None = None
        """Answers queries of remote datasets (``<peer>:<code>``) by asking the owner's
        exchange (``federation.forwarding``); None: such datasets do not exist here."""

    # -- cached reads -----------------------------------------------------------------

    async def current_entry(self, code: str) -> DatasetEntry | None:
        if not is_dataset_code(code):
            return None  # never cached: garbage codes would only crowd out real ones
        cached = self._entries.get(code)
        if cached is not None:
            return cached[0]
        generation = self._entries.generation
        entry = await self.datasets.get(code)
        self._entries.put(code, (entry,), generation)
        return entry

    async def grants_of(self, consumer: str, dataset: str) -> list[Grant]:
        key = (consumer, dataset)
        cached = self._grants.get(key)
        if cached is not None:
            return cached
        generation = self._grants.generation
        grants = await self.grants.for_consumer(consumer, dataset)
        self._grants.put(key, grants, generation)
        return grants

    async def decide(
        self, intent: QueryIntent, entry: DatasetEntry | None, now: datetime
    ) -> Decision:
        """The policy's decision for ``intent`` with the caller's grants (cached).

        The cache learns of grant changes by NOTIFY, which reaches other nodes a moment
        after the change commits. So a decision that rests on a grant is confirmed
        against the grant's committed row: a revocation committed on any node binds
        every call that starts after it, and only grant-based decisions pay the read."""
        me = intent.caller
        if entry is None or not needs_grants(entry, me):
            return decide(intent, entry, [], now)
        decision = decide(intent, entry, await self.grants_of(me, entry.code), now)
        grant = decision.grant_id if isinstance(decision, Allowed) else None
        if grant is not None and not await self.grants.is_live(grant, now):
            self._grants.invalidate((me, entry.code))
            decision = decide(intent, entry, await self.grants_of(me, entry.code), now)
        return decision

    def _on_grant_change(self, payload: str) -> None:
        consumer, _, dataset = payload.partition(" ")
        self._grants.invalidate((consumer, dataset))

    # -- the catalogue ----------------------------------------------------------------

    async def register_dataset(
        self, caller: Caller, spec: DatasetSpec, *, publish: bool, now: datetime
    ) -> DatasetEntry:
        """Register ``spec`` as the caller's dataset, or a new version of it."""
        return await self.datasets.register(caller.department.code, spec, publish=publish, now=now)

    async def dataset(self, caller: Caller, code: str, version: int | None = None) -> DatasetEntry:
        """A catalogue entry the caller may see; DatasetNotFound otherwise."""
        return await self.datasets.get_visible(code, caller.department.code, version)

    async def find_datasets(
        self,
        caller: Caller,
        *,
        owner: str | None,
        keyword: str | None,
        share_class: ShareClass | None,
        subject_kind: SubjectKind | None,
        page_size: int,
        page_token: str,
    ) -> tuple[list[DatasetEntry], str]:
        """The catalogue entries the caller may see that match, a page at a time."""
        return await self.datasets.search(
            caller.department.code, owner=owner, keyword=keyword, share_class=share_class,
            subject_kind=subject_kind, page_size=page_size, page_token=page_token,
        )  # fmt: skip

    async def set_published(
        self, caller: Caller, code: str, published: bool, now: datetime
    ) -> DatasetEntry:
        """Publish or withdraw the caller's own dataset."""
        return await self.datasets.set_published(code, caller.department.code, published, now)

    # -- grants -------------------------------------------------------------------------

    async def request_grant(
        self,
        caller: Caller,
        *,
        dataset: str,
        fields: Sequence[str],
        purpose: str,
        legal_basis: str,
        expiry: datetime,
        now: datetime,
    ) -> Grant:
        """Ask the owner of a dataset the caller can see for its fields, for a purpose."""
        entry = await self.datasets.get_visible(dataset, caller.department.code)
        return await self.grants.request(
            entry=entry, consumer=caller.department.code, fields=fields, purpose=purpose,
            legal_basis=legal_basis, expiry=expiry, officer=caller.officer_id, now=now,
        )  # fmt: skip

    async def decide_grant(
        self,
        caller: Caller,
        *,
        grant_id: str,
        approve: bool,
        fields: Sequence[str],
        expiry: datetime | None,
        reason: str,
        now: datetime,
    ) -> Grant:
        """The owner approves (for some or all of the fields asked) or refuses a grant."""
        target = await self.grants.get(grant_id, caller.department.code)
        entry = await self.datasets.get(target.dataset)
        assert entry is not None  # a grant's dataset exists (foreign key)
        return await self.grants.decide(
            grant_id=grant_id, owner=caller.department.code, approve=approve, fields=fields,
            expiry=expiry, reason=reason, officer=caller.officer_id, now=now, entry_of=entry,
        )  # fmt: skip

    async def revoke_grant(
        self, caller: Caller, *, grant_id: str, reason: str, now: datetime
    ) -> Grant:
        """The owner or the consumer ends a pending or approved grant."""
        return await self.grants.revoke(
            grant_id=grant_id, caller=caller.department.code, reason=reason,
            officer=caller.officer_id, now=now,
        )  # fmt: skip

    async def list_grants(
        self,
        caller: Caller,
        *,
        dataset: str | None,
        overdue: bool,
        status: GrantStatus | None,
        now: datetime,
    ) -> list[Grant]:
        """The grants the caller owns or holds, filtered."""
        return await self.grants.list(
            caller=caller.department.code, dataset=dataset, overdue=overdue, status=status,
            now=now,
        )  # fmt: skip

    # -- records ----------------------------------------------------------------------

    async def publish(
        self, caller: Caller, dataset: str, changes: Sequence[RawChange]
    ) -> PublishCounts:
        """Validate every change, then apply all in one transaction (or none)."""
        batch = await self.prepare(caller, dataset, changes)
        return await self.apply(batch)

    async def apply(self, batch: PreparedBatch) -> PublishCounts:
        """Write a prepared batch in one transaction."""
        return await self.records.publish(
            batch.entry, batch.changes, self._clock.now(), batch.forms, batch.fresh
        )

    async def prepare(
        self, caller: Caller, dataset: str, changes: Sequence[RawChange]
    ) -> PreparedBatch:
        """Check the caller owns ``dataset`` and validate every change; write nothing."""
        entry = await self.datasets.get(dataset)
        if entry is None:
            raise DatasetNotFound(f"No dataset {dataset[:100]!r} is in the catalogue.")
        if entry.owner != caller.department.code:
            raise NotOwner(f"Only {entry.owner} publishes records of {entry.code}.")
        if not changes:
            raise InvalidArgument("The batch has no changes.", metadata={"field": "changes"})
        if len(changes) > MAX_BATCH:
            raise InvalidArgument(
                f"A batch holds at most {MAX_BATCH:,} changes; split it (or use StreamRecords).",
                metadata={"field": "changes"},
            )
        validated: list[Change] = []
        seen: dict[str, int] = {}
        schema = entry.schema
        key_field = schema.key_field
        strings = _all_strings(schema)
        texts: list[str | None] = [None] * len(changes)
        started = time.perf_counter()
        for index, raw in enumerate(changes):
            if index and index % YIELD_EVERY == 0:
                # A big batch must not hold the loop from other departments' calls.
                await yield_fairly(time.perf_counter() - started)
                started = time.perf_counter()
            try:
                key = validate_subject_id(entry.subject_kind, raw.key)
            except InvalidSubjectId as e:
                raise InvalidSubjectId(
                    f"Record {index}: {e.message}", metadata={**e.metadata, "index": str(index)}
                ) from None
            if key in seen:
                raise DuplicateKey(
                    f"Records {seen[key]} and {index} both have key {key}; send each key once "
                    "per batch.",
                    metadata={"key": key, "index": str(index)},
                )
            seen[key] = index
            values = raw.values
            if values is None:
                validated.append(Change(key, None))
                continue
            given_key = values.get(key_field)
            if given_key != key:
                if given_key is not None and given_key != raw.key:
                    raise RecordInvalid(
                        f"Record {index}: field {key_field} is {str(given_key)[:40]!r} but the "
                        f"record key is {key}.",
                        metadata={
                            "field": key_field,
                            "problem": "key_mismatch",
                            "index": str(index),
                        },
                    )
                values = {**values, key_field: key}
            quick = _checked_strings(values, strings) if strings is not None else None
            if quick is not None:
                record, text = quick
                texts[index] = text
            else:
                try:
                    record = validate_record(schema, values)
                except RecordInvalid as e:
                    raise RecordInvalid(
                        f"Record {index} ({key}): {e.message}",
                        metadata={**e.metadata, "index": str(index)},
                    ) from None
            validated.append(Change(key, record))
        forms = await storage_forms(entry, validated)
        return PreparedBatch(entry, validated, forms, fresh_batch(entry, validated, forms, texts))

    # -- subscriptions ------------------------------------------------------------------

    async def authorize(
        self, caller: Actor, dataset: str, fields: Sequence[str], purpose: str, case_id: str
    ) -> tuple[DatasetEntry, Allowed]:
        """The policy decision for a use that is not a query (a subscription): allowed, or
        QueryDenied raised after the denial is logged."""
        now = self._clock.now()
        me = caller.department.code
        intent = QueryIntent(me, dataset, tuple(fields), purpose, case_id)
        entry = await self.current_entry(dataset)
        decision = await self.decide(intent, entry, now)
        if isinstance(decision, Denied):
            await self._log_decision(
                caller, intent, entry, [], now, "denied", decision.reason, action="subscribe"
            )
            raise QueryDenied.from_decision(decision)
        assert entry is not None
        return entry, decision

    async def log_delivery(
        self, caller: Actor, entry: DatasetEntry, allowed: Allowed, purpose: str,
        case_id: str, keys: Sequence[str],
    ) -> None:  # fmt: skip
        """Log events delivered to a subscriber, one entry per subject, before they leave."""
        intent = QueryIntent(caller.department.code, entry.code, allowed.fields, purpose, case_id)
        await self._log_decision(
            caller, intent, entry, keys, self._clock.now(), "allowed", None, allowed, action="event"
        )

    # -- queries ----------------------------------------------------------------------

    async def query(self, caller: Caller, q: QueryInput) -> QueryResult:
        """Answer ``q`` for ``caller`` or raise QueryDenied (or another TongbanError);
        either way the access log has the entries before this returns or raises."""
        if self.forward is not None and ":" in q.dataset:
            # A peer exchange's dataset: its owner's exchange decides (docs/federation.md).
            return await self.forward(caller, q)
        now = self._clock.now()
        me = caller.department.code
        intent = QueryIntent(me, q.dataset, tuple(q.fields), q.purpose, q.case_id)
        entry = await self.current_entry(q.dataset)
        keys: list[str] = []
        try:
            keys = self._keys(entry, q.keys)
        except TongbanError as e:
            await self._log_decision(caller, intent, entry, [], now, "denied", e.reason)
            raise
        decision = await self.decide(intent, entry, now)
        if isinstance(decision, Denied):
            await self._log_decision(caller, intent, entry, keys, now, "denied", decision.reason)
            raise QueryDenied.from_decision(decision)
        assert entry is not None
        if q.as_of is not None and q.as_of.tzinfo is None:
            raise InvalidArgument("as_of must carry a time zone.", metadata={"field": "as_of"})
        found = await self.records.fetch(entry.code, keys, q.as_of)
        await self._log_decision(caller, intent, entry, keys, now, "allowed", None, decision)
        records = [_answer(found[k], entry, decision.fields) for k in keys if k in found]
        result = QueryResult(entry, records, [k for k in keys if k not in found], now)
        if q.sign:
            return self._signed(result, caller, intent, decision.fields)
        return result

    def _keys(self, entry: DatasetEntry | None, given: Sequence[str]) -> list[str]:
        if not given:
            raise InvalidArgument("Name at least one subject key.", metadata={"field": "keys"})
        if len(given) > MAX_KEYS:
            raise TooManyKeys(
                f"A query names at most {MAX_KEYS:,} keys ({len(given):,} given); split it.",
                metadata={"field": "keys"},
            )
        unique = list(dict.fromkeys(given))
        if entry is None:
            return []  # the policy answers DATASET_NOT_FOUND; nothing to attribute to subjects
        return [_valid_subject_id(entry.subject_kind, key) for key in unique]

    async def _log_decision(
        self,
        caller: Actor,
        intent: QueryIntent,
        entry: DatasetEntry | None,
        keys: Sequence[str],
        now: datetime,
        decision: Outcome,
        reason: str | None,
        allowed: Allowed | None = None,
        *,
        action: str = "query",
    ) -> None:
        fields = allowed.fields if allowed is not None else tuple(intent.fields)
        if self._on_decision is not None:
            self._on_decision(decision, reason)
        await self._log.append(
            self._recorder.entries(
                keys,
                at=now,
                department=caller.department.code,
                officer=caller.officer_id,
                action=action,
                dataset=entry.code if entry is not None else intent.dataset,
                fields=fields,
                purpose=intent.purpose,
                case_id=intent.case_id,
                decision=decision,
                # An allowed entry names its grounds: the grant, the laws for personal fields.
                reason=allowed.grounds() if allowed is not None and reason is None else reason,
            )
        )

    def _signed(
        self, result: QueryResult, caller: Caller, intent: QueryIntent, fields: Sequence[str]
    ) -> QueryResult:
        return self.sign_answer(result, caller.department.code, intent, fields)

    def sign_answer(
        self, result: QueryResult, caller: str, intent: QueryIntent, fields: Sequence[str]
    ) -> QueryResult:
        """``result`` with this node's signed answer: the canonical JSON of what it answers
        ``caller`` (a department of ours, or ``<peer>/<department>`` for a peer's), the
        detached ES256 JWS over it, and the SM2 one beside when the node has that key."""
        entry = result.entry
        payload = {
            "answered_at": _instant(result.answered_at),
            "caller": caller,
            "case_id": intent.case_id.strip(),
            "dataset": entry.code,
            "dataset_version": entry.version,
            "fields": list(fields),
            "missing_keys": result.missing_keys,
            "node": self._node,
            "purpose": intent.purpose,
            "records": signable_records(entry, result.records),
        }
        body = canonical_json(payload)
        signature = sign_jws(
            body,
            self._signing.signer,
            headers={"typ": "tongban-answer+jws", "kid": self._kid, "x5c": self._x5c},
            detached=True,
        )
        sm2 = self._signing.sm2
        signature_sm2 = (
            sign_sm2_detached(body, sm2.key, sm2.chain, {"typ": "tongban-answer+jws"})
            if sm2 is not None
            else ""
        )
        return QueryResult(
            entry,
            result.records,
            result.missing_keys,
            result.answered_at,
            body,
            signature,
            signature_sm2,
        )


@functools.lru_cache(maxsize=256)
def _all_strings(schema: DatasetSchema) -> tuple[tuple[str, ...], int] | None:
    """For a schema of only string fields (most legacy tables): the field names, in the
    schema's order, and the least of their length limits; None for any other schema."""
    names = string_field_names(schema)
    if names is None:
        return None
    return names, min(spec.max_length or DEFAULT_STRING_MAX_LENGTH for spec in schema.fields)


_REFUSED_BUT_SEPARATOR = re.compile(f"[{REFUSED_BUT_UNIT_SEPARATOR}]")
"""The characters a value may not hold but ``VALUE_SEP`` (\\x1f), which joins the values
it scans."""


def _checked_strings(
    values: dict[str, object], strings: tuple[tuple[str, ...], int]
) -> tuple[dict[str, object], str] | None:
    """``validate_record``'s answer for a record of a schema of only strings (``_all_strings``)
    when every field is given as a string that is already canonical (no refused character,
    in NFC) and within the least limit, with the values joined by ``VALUE_SEP`` in the
    schema's order (what ``fresh_batch`` sends): all fields checked at once, on that text.
    None when one is not (absent, None, not a string, to be normalised, too long, refused,
    or an unknown field): then ``validate_record`` checks the record field by field, and
    says what is wrong.

    The separator is refused in a value (so the text holds it once between each two), and
    NFC neither composes, reorders nor makes it (a starter with no composition): the
    text is in NFC exactly when every value is."""
    names, limit = strings
    try:
        given = [values[name] for name in names]
        text = VALUE_SEP.join(given)  # type: ignore[arg-type]  # TypeError if not str
    except (KeyError, TypeError):
        return None
    if (
        len(values) != len(given)
        or _REFUSED_BUT_SEPARATOR.search(text) is not None
        or text.count(VALUE_SEP) != len(given) - 1
        or not (text.isascii() or unicodedata.is_normalized("NFC", text))
        or (len(text) > limit and max(map(len, given)) > limit)  # type: ignore[arg-type]
    ):
        return None
    return dict(zip(names, given, strict=True)), text


@functools.lru_cache(maxsize=65_536)
def _valid_subject_id(kind: SubjectKind, key: str) -> str:
    """``validate_subject_id``, remembered: the same subjects are asked for again and again.
    (Invalid ids raise, and exceptions are not cached.)"""
    return validate_subject_id(kind, key)


def _answer(stored: StoredRecord, entry: DatasetEntry, fields: Sequence[str]) -> AnsweredRecord:
    return AnsweredRecord(
        stored.key, stored.version, stored.valid_from, stored.values(entry, fields)
    )


def _instant(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def signable_records(entry: DatasetEntry, records: Sequence[AnsweredRecord]) -> list[object]:
    """The ``records`` member of a signed answer (``Sharing.sign_answer``)."""
    return [
        {
            "fields": {name: _signable(entry, name, value) for name, value in r.values.items()},
            "key": r.key,
            "valid_from": _instant(r.valid_from),
            "version": r.version,
        }
        for r in records
    ]


def _signable(entry: DatasetEntry, name: str, value: object) -> object:
    """JSON form for the signed payload: the storage form, with integers as decimal strings
    (RFC 8785 numbers are IEEE doubles and cannot carry every 64-bit integer)."""
    spec = entry.schema.field(name)
    assert spec is not None
    stored = value_to_json(spec.type, value)
    if spec.type is FieldType.INTEGER and stored is not None:
        return str(stored)
    return stored
