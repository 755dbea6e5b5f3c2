"""The sharing decision, tested as a pure function: examples for each rule and
properties over generated catalogue entries, grants and requests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tongban.exchange.catalogue.schema import FieldSpec, FieldType, build_schema
from tongban.exchange.catalogue.subject_ids import SubjectKind
from tongban.exchange.sharing.model import (
    DatasetEntry,
    Grant,
    GrantStatus,
    LegalBasis,
    PersonalBasis,
    ShareClass,
)
from tongban.exchange.sharing.policy import (
    DENIAL_REASONS,
    Allowed,
    Denied,
    QueryIntent,
    decide,
    needs_grants,
)

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
FIELDS = ("citizen_id", "name", "gender", "address", "phone")
PURPOSES = ("食品经营许可审批", "税务稽查", "社保登记")


PUBLIC_BY_LAW = PersonalBasis("企业信息公示暂行条例", "第六条", ("name",))


def entry(
    share: ShareClass,
    *,
    owner: str = "police",
    published: bool = True,
    personal: tuple[str, ...] = (),
    bases: tuple[PersonalBasis, ...] = (),
) -> DatasetEntry:
    schema = build_schema(
        [
            FieldSpec(
                "citizen_id", FieldType.STRING, required=True, personal="citizen_id" in personal
            )
        ]
        + [FieldSpec(name, FieldType.STRING, personal=name in personal) for name in FIELDS[1:]],
        "citizen_id",
    )
    return DatasetEntry(
        code="police.person",
        owner=owner,
        version=1,
        title="人口",
        description="",
        schema=schema,
        subject_kind=SubjectKind.PERSON,
        update_frequency="",
        share_class=share,
        conditions="审批",
        published=published,
        legal_basis=LegalBasis("法", "第一条") if share is ShareClass.NOT_SHARED else None,
        created_at=NOW,
        version_created_at=NOW,
        personal_bases=bases,
    )


def grant(
    *,
    consumer: str = "approval",
    fields: tuple[str, ...] = ("name", "gender"),
    purpose: str = PURPOSES[0],
    status: GrantStatus = GrantStatus.APPROVED,
    expires: datetime = NOW + timedelta(days=30),
) -> Grant:
    return Grant(
        id=uuid.uuid4(),
        dataset="police.person",
        owner="police",
        consumer=consumer,
        requested_fields=fields,
        fields=fields if status is not GrantStatus.PENDING else (),
        purpose=purpose,
        legal_basis="依法",
        requested_expiry=expires,
        expires_at=expires if status is not GrantStatus.PENDING else None,
        status=status,
        decision_reason="",
        requested_at=NOW - timedelta(days=1),
        due_at=NOW,
        decided_at=NOW,
        requested_by=None,
        decided_by=None,
    )


def intent(
    fields: tuple[str, ...] = ("name",),
    *,
    caller: str = "approval",
    purpose: str = PURPOSES[0],
    case: str = "C-1",
) -> QueryIntent:
    return QueryIntent(caller, "police.person", fields, purpose, case)


def reason(decision: object) -> str:
    assert isinstance(decision, Denied), decision
    return decision.reason


def test_examples_of_each_rule() -> None:
    conditional = entry(ShareClass.CONDITIONAL)
    assert reason(decide(intent(purpose=" "), conditional, [], NOW)) == "PURPOSE_REQUIRED"
    assert reason(decide(intent(case=""), conditional, [], NOW)) == "CASE_REQUIRED"
    assert reason(decide(intent(case="x" * 65), conditional, [], NOW)) == "INVALID_ARGUMENT"
    assert reason(decide(intent(()), conditional, [], NOW)) == "INVALID_ARGUMENT"
    assert reason(decide(intent(), None, [], NOW)) == "DATASET_NOT_FOUND"
    assert reason(decide(intent(), entry(ShareClass.UNCONDITIONAL, published=False), [], NOW)) == (
        "DATASET_NOT_FOUND"
    )
    assert reason(decide(intent(("salary",)), conditional, [], NOW)) == "UNKNOWN_FIELD"
    assert reason(decide(intent(), entry(ShareClass.NOT_SHARED), [grant()], NOW)) == "NOT_SHARED"
    assert reason(decide(intent(), conditional, [], NOW)) == "GRANT_REQUIRED"
    assert reason(decide(intent(), conditional, [grant(status=GrantStatus.PENDING)], NOW)) == (
        "GRANT_REQUIRED"
    )
    assert reason(decide(intent(), conditional, [grant(status=GrantStatus.REVOKED)], NOW)) == (
        "GRANT_REQUIRED"
    )
    expired = grant(expires=NOW - timedelta(seconds=1))
    assert reason(decide(intent(), conditional, [expired], NOW)) == "GRANT_EXPIRED"
    assert reason(decide(intent(("name", "address")), conditional, [grant()], NOW)) == (
        "FIELD_NOT_GRANTED"
    )
    assert reason(decide(intent(purpose=PURPOSES[1]), conditional, [grant()], NOW)) == (
        "GRANT_REQUIRED"
    )
    allowed = decide(intent(("gender", "name", "gender")), conditional, [grant()], NOW)
    assert isinstance(allowed, Allowed)
    assert allowed.fields == ("gender", "name")
    # Purposes compare after normalisation; the owner and unconditional data need no grant.
    assert decide(intent(purpose=f"  {PURPOSES[0]} "), conditional, [grant()], NOW).allowed
    assert decide(
        intent(caller="police"), entry(ShareClass.NOT_SHARED, published=False), [], NOW
    ).allowed
    assert decide(intent(), entry(ShareClass.UNCONDITIONAL), [], NOW).allowed


def test_personal_fields_of_unconditional_data_need_a_grant_or_a_law() -> None:
    """Issue 14, finding 2: tax got a citizen id from an unconditional dataset for the
    purpose "=1+2". Personal fields are purpose-bound per field, whatever the class."""
    open_data = entry(ShareClass.UNCONDITIONAL, personal=("citizen_id", "name", "phone"))
    tax = intent(("address", "phone"), caller="tax", purpose="=1+2")
    denied = decide(tax, open_data, [], NOW)
    assert reason(denied) == "PERSONAL_GRANT_REQUIRED"
    assert isinstance(denied, Denied)
    assert denied.metadata["fields"] == "phone"
    assert DENIAL_REASONS["PERSONAL_GRANT_REQUIRED"] == "PERMISSION_DENIED"
    # Without the personal field, the same call is allowed, on no grounds beyond the class.
    plain = decide(intent(("address", "gender"), caller="tax"), open_data, [], NOW)
    assert isinstance(plain, Allowed)
    assert plain.grounds() is None
    # A live grant for this purpose that covers the personal fields opens them.
    phone = grant(consumer="tax", fields=("phone",), purpose="=1+2")
    allowed = decide(tax, open_data, [phone], NOW)
    assert isinstance(allowed, Allowed)
    assert allowed.grant_id == phone.id
    assert allowed.grounds() == f"grant:{phone.id}"
    # ... but not for another purpose, and not after it expires or is revoked.
    assert reason(decide(intent(("phone",), caller="tax"), open_data, [phone], NOW)) == (
        "PERSONAL_GRANT_REQUIRED"
    )
    assert reason(decide(tax, open_data, [phone], NOW + timedelta(days=30))) == "GRANT_EXPIRED"
    revoked = grant(consumer="tax", fields=("phone",), purpose="=1+2", status=GrantStatus.REVOKED)
    denied = decide(tax, open_data, [revoked], NOW)
    assert reason(denied) == "PERSONAL_GRANT_REQUIRED"
    assert isinstance(denied, Denied)
    assert "revoked" in denied.message
    # A grant that misses one of the asked personal fields does not do.
    both = intent(("name", "phone"), caller="tax", purpose="=1+2")
    assert reason(decide(both, open_data, [phone], NOW)) == "FIELD_NOT_GRANTED"
    # A law the dataset cites makes a personal field shareable without a grant, and the
    # decision names the law for the log.
    by_law = entry(
        ShareClass.UNCONDITIONAL, personal=("citizen_id", "name", "phone"), bases=(PUBLIC_BY_LAW,)
    )
    named = decide(intent(("name", "address"), caller="tax"), by_law, [], NOW)
    assert isinstance(named, Allowed)
    assert named.grounds() == "law:《企业信息公示暂行条例》第六条"
    mixed = decide(both, by_law, [phone], NOW)
    assert isinstance(mixed, Allowed)
    assert mixed.grounds() == f"grant:{phone.id}; law:《企业信息公示暂行条例》第六条"
    assert reason(decide(both, by_law, [], NOW)) == "PERSONAL_GRANT_REQUIRED"
    # The owner is never bound: it holds the data.
    assert decide(intent(("citizen_id", "phone"), caller="police"), open_data, [], NOW).allowed
    # A conditional dataset already needs a grant for every field; a conditional grant
    # grounds the answer.
    conditional = decide(
        intent(), entry(ShareClass.CONDITIONAL, personal=("name",)), [grant()], NOW
    )
    assert isinstance(conditional, Allowed)
    assert conditional.grounds() is not None


def test_needs_grants_says_when_grants_matter() -> None:
    assert not needs_grants(entry(ShareClass.UNCONDITIONAL), "tax")
    assert needs_grants(entry(ShareClass.UNCONDITIONAL, personal=("phone",)), "tax")
    assert not needs_grants(entry(ShareClass.UNCONDITIONAL, personal=("phone",)), "police")
    covered = PersonalBasis("法", "第一条", ("phone",))
    assert not needs_grants(
        entry(ShareClass.UNCONDITIONAL, personal=("phone",), bases=(covered,)), "tax"
    )
    assert needs_grants(entry(ShareClass.CONDITIONAL), "tax")
    assert not needs_grants(entry(ShareClass.NOT_SHARED), "tax")


share_classes = st.sampled_from(list(ShareClass))
asked = st.lists(st.sampled_from((*FIELDS, "salary")), min_size=1, max_size=6).map(tuple)
grant_lists = st.lists(
    st.builds(
        grant,
        consumer=st.sampled_from(("approval", "tax")),
        fields=st.lists(st.sampled_from(FIELDS), min_size=1, max_size=5, unique=True).map(tuple),
        purpose=st.sampled_from(PURPOSES),
        status=st.sampled_from([s for s in GrantStatus if s is not GrantStatus.EXPIRED]),
        expires=st.sampled_from([NOW - timedelta(days=1), NOW, NOW + timedelta(days=1)]),
    ),
    max_size=4,
)
callers = st.sampled_from(("approval", "tax", "police"))
personal_sets = st.lists(st.sampled_from(FIELDS), max_size=5, unique=True).map(tuple)


@settings(max_examples=400, deadline=None)
@given(
    share=share_classes,
    published=st.booleans(),
    fields=asked,
    grants=grant_lists,
    caller=callers,
    purpose=st.sampled_from(PURPOSES),
    personal=personal_sets,
    by_law=st.booleans(),
)
def test_properties(
    share: ShareClass,
    published: bool,
    fields: tuple[str, ...],
    grants: list[Grant],
    caller: str,
    purpose: str,
    personal: tuple[str, ...],
    by_law: bool,
) -> None:
    bases = (PersonalBasis("法", "第一条", personal[:1]),) if by_law and personal else ()
    if share is not ShareClass.UNCONDITIONAL:
        bases = ()
    the_entry = entry(share, published=published, personal=personal, bases=bases)
    decision = decide(intent(fields, caller=caller, purpose=purpose), the_entry, grants, NOW)
    if isinstance(decision, Denied):
        assert decision.reason in DENIAL_REASONS
        assert decision.message
        return
    # Allowed: only schema fields, never more than asked, and only for a reason the rules give.
    assert set(decision.fields) <= set(FIELDS)
    assert set(decision.fields) == set(fields)
    owner = caller == the_entry.owner
    assert published or owner
    if not owner:
        assert share is not ShareClass.NOT_SHARED
        if share is ShareClass.CONDITIONAL:
            covering = [
                g
                for g in grants
                if g.consumer == caller
                and g.purpose == purpose
                and g.is_live(NOW)
                and set(fields) <= set(g.fields)
            ]
            assert covering, "conditional data flowed without a live covering grant"
            assert decision.grant_id in {g.id for g in covering}
            # And fewer fields are allowed too (asking for less never hurts).
            assert decide(
                intent(fields[:1], caller=caller, purpose=purpose), the_entry, grants, NOW
            ).allowed
        if share is ShareClass.UNCONDITIONAL:
            # Every asked personal field is covered by a cited law or by one live grant
            # of the caller for this purpose.
            covered = {name for basis in bases for name in basis.fields}
            uncovered = {name for name in fields if name in personal} - covered
            if uncovered:
                assert decision.grant_id is not None, "personal data flowed without grounds"
                used = next(g for g in grants if g.id == decision.grant_id)
                assert used.consumer == caller
                assert used.purpose == purpose
                assert used.is_live(NOW)
                assert uncovered <= set(used.fields)
            else:
                assert decision.grant_id is None


@settings(max_examples=200, deadline=None)
@given(grants=grant_lists, fields=asked)
def test_expiry_ends_every_grant(grants: list[Grant], fields: tuple[str, ...]) -> None:
    """At or after every grant's expiry, nothing conditional is allowed to non-owners."""
    latest = max([g.expires_at for g in grants if g.expires_at] + [NOW])
    for caller in ("approval", "tax"):
        decision = decide(
            intent(fields, caller=caller), entry(ShareClass.CONDITIONAL), grants, latest
        )
        assert not decision.allowed
