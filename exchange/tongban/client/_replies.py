"""The node's reply messages read into the client's typed values, field for field.

An unset Timestamp the message marks optional becomes None; an enum number this client
does not know (a newer node's) is refused with ``UNSUPPORTED_ANSWER`` rather than
guessed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import IntEnum
from typing import TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from tongban.client.audit import (
    Anomaly,
    Checkpoint,
    ConsistencyProof,
    CovertCase,
    CovertCasePage,
    Entry,
    EntryPage,
    EntryWithProof,
    SubjectAccess,
    SubjectAccessPage,
)
from tongban.client.cases import (
    Case,
    CaseMaterial,
    CaseOutcome,
    CaseOverdue,
    CaseState,
    CaseTransition,
    DatasetSource,
    DepartmentOverdue,
    ItemSpec,
    KeyFrom,
    LicenceSource,
    Material,
    MaterialKind,
    MaterialState,
    OverdueCase,
    OverdueCasePage,
    OverdueReport,
    Package,
    PackageCase,
    PackageSpec,
    PackageState,
    PackageStep,
    PackageStepSpec,
    ServiceItem,
    StepState,
    SubmittedSource,
)
from tongban.client.errors import ExchangeError
from tongban.client.licences import (
    ClaimSpec,
    Licence,
    LicenceHistoryEntry,
    LicenceType,
    LicenceVerification,
    MaterialResolution,
    PdfVerification,
    ResolvedMaterials,
    SealInfo,
)
from tongban.client.oversight import (
    RatedCase,
    Rating,
    RatingsCheck,
    Rectification,
    RectificationPage,
    SupervisedCase,
    SupervisedCasePage,
    SupervisionReport,
    SupervisionRow,
)
from tongban.client.sharing import (
    Dataset,
    DatasetSpec,
    FieldSpec,
    FieldType,
    Grant,
    GrantStatus,
    LegalBasis,
    PersonalBasis,
    ShareClass,
    SubjectKind,
    Subscription,
    SubscriptionListing,
    UnlistedPeer,
)
from tongban.v1 import (
    audit_pb2,
    cases_pb2,
    catalogue_pb2,
    events_pb2,
    grants_pb2,
    items_pb2,
    licence_pb2,
    packages_pb2,
    ratings_pb2,
    supervision_pb2,
)

__all__ = [
    "anomaly",
    "case",
    "case_material",
    "checkpoint",
    "consistency_proof",
    "covert_case",
    "covert_case_page",
    "dataset",
    "entry_page",
    "entry_with_proof",
    "grant",
    "instant",
    "licence",
    "licence_type",
    "licence_verification",
    "overdue_case_page",
    "overdue_report",
    "package",
    "package_case",
    "pdf_verification",
    "rated_case",
    "ratings_check",
    "rectification_page",
    "resolved_materials",
    "service_item",
    "subject_access_page",
    "subscription",
    "supervised_case_page",
    "supervision_report",
]

_E = TypeVar("_E", bound=IntEnum)


def instant(stamp: Timestamp) -> datetime:
    """An aware UTC datetime (microseconds: the node sends no finer instants)."""
    return stamp.ToDatetime(tzinfo=UTC)


def _maybe_instant(stamp: Timestamp, present: bool) -> datetime | None:
    return stamp.ToDatetime(tzinfo=UTC) if present else None


def _enum(kind: type[_E], number: int) -> _E:
    try:
        return kind(number)
    except ValueError:
        raise ExchangeError(
            f"The node answered a {kind.__name__} this client does not know ({number}); "
            "upgrade the client.",
            reason="UNSUPPORTED_ANSWER",
            code=grpc.StatusCode.UNIMPLEMENTED,
        ) from None


# -- catalogue, grants, subscriptions ---------------------------------------------------


def _dataset_spec(m: catalogue_pb2.DatasetSpec) -> DatasetSpec:
    return DatasetSpec(
        code=m.code,
        title=m.title,
        description=m.description,
        fields=tuple(
            FieldSpec(
                name=f.name,
                type=_enum(FieldType, f.type),
                description=f.description,
                personal=f.personal,
                required=f.required,
                max_length=f.max_length,
            )
            for f in m.fields
        ),
        key_field=m.key_field,
        subject_kind=_enum(SubjectKind, m.subject_kind),
        update_frequency=m.update_frequency,
        share_class=_enum(ShareClass, m.share_class),
        conditions=m.conditions,
        legal_basis=LegalBasis(law=m.legal_basis.law, article=m.legal_basis.article)
        if m.HasField("legal_basis")
        else None,
        personal_bases=tuple(
            PersonalBasis(law=b.law, article=b.article, fields=tuple(b.fields))
            for b in m.personal_bases
        ),
    )


def dataset(m: catalogue_pb2.Dataset) -> Dataset:
    return Dataset(
        spec=_dataset_spec(m.spec),
        owner=m.owner,
        version=m.version,
        published=m.published,
        created_at=instant(m.created_at),
        version_created_at=instant(m.version_created_at),
    )


def grant(m: grants_pb2.Grant) -> Grant:
    return Grant(
        id=m.id,
        dataset=m.dataset,
        owner=m.owner,
        consumer=m.consumer,
        requested_fields=tuple(m.requested_fields),
        fields=tuple(m.fields),
        purpose=m.purpose,
        legal_basis=m.legal_basis,
        requested_expiry=instant(m.requested_expiry),
        expires_at=_maybe_instant(m.expires_at, m.HasField("expires_at")),
        status=_enum(GrantStatus, m.status),
        decision_reason=m.decision_reason,
        requested_at=instant(m.requested_at),
        due_at=instant(m.due_at),
        decided_at=_maybe_instant(m.decided_at, m.HasField("decided_at")),
        requested_by=m.requested_by,
        decided_by=m.decided_by,
    )


def subscription(m: events_pb2.Subscription) -> Subscription:
    return Subscription(
        id=m.id,
        dataset=m.dataset,
        fields=tuple(m.fields),
        purpose=m.purpose,
        acked_position=m.acked_position,
        lag_events=m.lag_events,
        lag_seconds=m.lag_seconds,
    )


def subscription_listing(m: events_pb2.ListSubscriptionsResponse) -> SubscriptionListing:
    return SubscriptionListing(
        subscriptions=tuple(subscription(x) for x in m.subscriptions),
        unlisted=tuple(UnlistedPeer(u.peer, u.reason, u.message) for u in m.unlisted),
    )


# -- the access log ------------------------------------------------------------------------


def _entry(m: audit_pb2.Entry) -> Entry:
    return Entry(
        index=m.index,
        leaf=m.leaf,
        at=instant(m.at),
        node=m.node,
        caller=m.caller,
        officer=m.officer,
        action=m.action,
        dataset=m.dataset,
        fields=tuple(m.fields),
        purpose=m.purpose,
        case_id=m.case_id,
        subject_hmac=m.subject_hmac,
        decision=m.decision,
        reason=m.reason,
    )


def entry_page(m: audit_pb2.SearchResponse) -> EntryPage:
    return EntryPage(entries=tuple(_entry(e) for e in m.entries), next_page_token=m.next_page_token)


def checkpoint(m: audit_pb2.Checkpoint) -> Checkpoint:
    return Checkpoint(
        size=m.size,
        root=m.root,
        note=m.note,
        signed_at=instant(m.signed_at),
        verifier_key=m.verifier_key,
    )


def entry_with_proof(m: audit_pb2.EntryWithProof) -> EntryWithProof:
    return EntryWithProof(
        entry=_entry(m.entry),
        checkpoint=checkpoint(m.checkpoint),
        inclusion_proof=tuple(m.inclusion_proof),
    )


def consistency_proof(m: audit_pb2.ConsistencyProof) -> ConsistencyProof:
    return ConsistencyProof(old_size=m.old_size, new_size=m.new_size, proof=tuple(m.proof))


def subject_access_page(m: audit_pb2.SubjectAccessesResponse) -> SubjectAccessPage:
    return SubjectAccessPage(
        accesses=tuple(
            SubjectAccess(
                index=a.index,
                at=instant(a.at),
                department=a.department,
                department_name=a.department_name,
                officer=a.officer,
                dataset=a.dataset,
                fields=tuple(a.fields),
                purpose=a.purpose,
                case_id=a.case_id,
                decision=a.decision,
                reason=a.reason,
            )
            for a in m.accesses
        ),
        next_page_token=m.next_page_token,
        withheld=m.withheld,
    )


def anomaly(m: audit_pb2.Anomaly) -> Anomaly:
    return Anomaly(
        kind=m.kind,
        department=m.department,
        officer=m.officer,
        detail=m.detail,
        count=m.count,
        baseline=m.baseline,
        first_at=instant(m.first_at),
    )


def covert_case(m: audit_pb2.CovertCase) -> CovertCase:
    return CovertCase(
        department=m.department,
        case_id=m.case_id,
        until=instant(m.until),
        legal_basis=m.legal_basis,
        declared_at=instant(m.declared_at),
        declared_by=m.declared_by,
        in_force=m.in_force,
    )


def covert_case_page(m: audit_pb2.ListCovertCasesResponse) -> CovertCasePage:
    return CovertCasePage(
        cases=tuple(covert_case(c) for c in m.cases), next_page_token=m.next_page_token
    )


# -- licences, materials, seals ---------------------------------------------------------


def licence_type(m: licence_pb2.LicenceType) -> LicenceType:
    return LicenceType(
        code=m.code,
        name_zh=m.name_zh,
        name_en=m.name_en,
        vct=m.vct,
        issuers=tuple(m.issuers),
        revokers=tuple(m.revokers),
        holder_kind=m.holder_kind,
        validity_days=m.validity_days,
        claims=tuple(
            ClaimSpec(
                name=c.name,
                type=c.type,
                label_zh=c.label_zh,
                label_en=c.label_en,
                required=c.required,
                disclosable=c.disclosable,
                personal=c.personal,
                holder_id=c.holder_id,
                choices=tuple(c.choices),
            )
            for c in m.claims
        ),
    )


def licence(m: licence_pb2.Licence) -> Licence:
    return Licence(
        number=m.number,
        version=m.version,
        licence_type=m.licence_type,
        holder_id=m.holder_id,
        holder_kind=m.holder_kind,
        holder_name=m.holder_name,
        issuer=m.issuer,
        status=m.status,
        status_uri=m.status_uri,
        status_index=m.status_index,
        not_before=instant(m.not_before),
        expires=_maybe_instant(m.expires, m.HasField("expires")),
        claims_json=m.claims_json,
        sd_jwt=m.sd_jwt,
        qr=m.qr,
        case_id=m.case_id,
        issued_at=instant(m.issued_at),
        history=tuple(
            LicenceHistoryEntry(
                version=h.version,
                action=h.action,
                from_status=h.from_status,
                to_status=h.to_status,
                reason=h.reason,
                department=h.department,
                officer=h.officer,
                at=instant(h.at),
            )
            for h in m.history
        ),
        sd_jwt_sm2=m.sd_jwt_sm2,
    )


def licence_verification(m: licence_pb2.VerificationResult) -> LicenceVerification:
    return LicenceVerification(
        verified=m.verified,
        format=m.format,
        check=m.check,
        reason=m.reason,
        message=m.message,
        licence_number=m.licence_number,
        licence_type=m.licence_type,
        issuer=m.issuer,
        holder_id=m.holder_id,
        holder_name=m.holder_name,
        claims_json=m.claims_json,
        status=m.status,
        not_before=_maybe_instant(m.not_before, m.HasField("not_before")),
        expires=_maybe_instant(m.expires, m.HasField("expires")),
        exchange=m.exchange,
        sm2_verified=m.sm2_verified,
    )


def resolved_materials(m: licence_pb2.ResolveMaterialsResponse) -> ResolvedMaterials:
    return ResolvedMaterials(
        service_item=m.service_item,
        materials=tuple(
            MaterialResolution(
                code=r.code,
                name_zh=r.name_zh,
                satisfied=r.satisfied,
                source=r.source,
                reference=r.reference,
                reason=r.reason,
                message=r.message,
                values_json=r.values_json,
                required=r.required,
            )
            for r in m.materials
        ),
        to_submit=m.to_submit,
        item_version=m.item_version,
    )


def pdf_verification(m: licence_pb2.VerifyPdfResponse) -> PdfVerification:
    return PdfVerification(
        verified=m.verified,
        check=m.check,
        reason=m.reason,
        message=m.message,
        seals=tuple(
            SealInfo(
                field_name=s.field_name,
                department=s.department,
                signer_name=s.signer_name,
                signing_time=_maybe_instant(s.signing_time, s.HasField("signing_time")),
                intact=s.intact,
                coverage=s.coverage,
                modification_level=s.modification_level,
                pades_level=s.pades_level,
            )
            for s in m.seals
        ),
        exchange=m.exchange,
    )


# -- service items, cases, packages ------------------------------------------------------


def _source(m: items_pb2.Material) -> LicenceSource | DatasetSource | SubmittedSource | None:
    which = m.WhichOneof("source")
    if which == "licence":
        return LicenceSource(
            licence_type=m.licence.licence_type, disclose=tuple(m.licence.disclose)
        )
    if which == "dataset":
        key_from = m.dataset.key_from
        return DatasetSource(
            dataset=m.dataset.dataset,
            fields=tuple(m.dataset.fields),
            key_from=KeyFrom(material=key_from.material, field=key_from.field)
            if m.dataset.HasField("key_from")
            else None,
        )
    if which == "submitted":
        return SubmittedSource()
    return None


def service_item(m: items_pb2.ServiceItem) -> ServiceItem:
    spec = m.spec
    return ServiceItem(
        spec=ItemSpec(
            code=spec.code,
            name=spec.name,
            legal_basis=spec.legal_basis,
            purpose=spec.purpose,
            legal_limit_days=spec.legal_limit_days,
            promised_limit_days=spec.promised_limit_days,
            immediate=spec.immediate,
            materials=tuple(
                Material(
                    code=x.code,
                    name=x.name,
                    required=x.required,
                    source=_source(x),
                    defer_days=x.defer_days,
                    commitment_check_days=x.commitment_check_days,
                )
                for x in spec.materials
            ),
            issues_licence=spec.issues_licence,
            on_breach=spec.on_breach,
            supervisors=tuple(spec.supervisors),
        ),
        department=m.department,
        version=m.version,
        created_at=instant(m.created_at),
        version_created_at=instant(m.version_created_at),
    )


def case_material(m: cases_pb2.CaseMaterial) -> CaseMaterial:
    return CaseMaterial(
        case_number=m.case_number,
        material=m.material,
        kind=_enum(MaterialKind, m.kind),
        due_at=instant(m.due_at),
        state=_enum(MaterialState, m.state),
        recorded_at=instant(m.recorded_at),
        recorded_by=m.recorded_by,
        resolved_at=_maybe_instant(m.resolved_at, m.HasField("resolved_at")),
        resolved_by=m.resolved_by,
        note=m.note,
    )


def case(m: cases_pb2.Case) -> Case:
    return Case(
        number=m.number,
        item=m.item,
        item_version=m.item_version,
        department=m.department,
        applicant=m.applicant,
        state=_enum(CaseState, m.state),
        opened_at=instant(m.opened_at),
        promised_due_at=instant(m.promised_due_at),
        legal_due_at=instant(m.legal_due_at),
        stopped_days=m.stopped_days,
        correction_since=_maybe_instant(m.correction_since, m.HasField("correction_since")),
        outcome=_enum(CaseOutcome, m.outcome),
        licence_number=m.licence_number,
        refusal_reason=m.refusal_reason,
        decided_at=_maybe_instant(m.decided_at, m.HasField("decided_at")),
        closed_at=_maybe_instant(m.closed_at, m.HasField("closed_at")),
        delivered_at=_maybe_instant(m.delivered_at, m.HasField("delivered_at")),
        overdue=_enum(CaseOverdue, m.overdue),
        history=tuple(
            CaseTransition(
                from_state=_enum(CaseState, t.from_state),
                to_state=_enum(CaseState, t.to_state),
                at=instant(t.at),
                department=t.department,
                officer=t.officer,
                reason=t.reason,
            )
            for t in m.history
        ),
        package_number=m.package_number,
        materials=tuple(case_material(x) for x in m.materials),
    )


def overdue_report(m: cases_pb2.OverdueReportResponse) -> OverdueReport:
    return OverdueReport(
        at=instant(m.at),
        departments=tuple(
            DepartmentOverdue(
                department=d.department,
                open=d.open,
                in_correction=d.in_correction,
                past_promised=d.past_promised,
                past_legal=d.past_legal,
            )
            for d in m.departments
        ),
    )


def overdue_case_page(m: cases_pb2.ListOverdueCasesResponse) -> OverdueCasePage:
    return OverdueCasePage(
        cases=tuple(
            OverdueCase(
                number=c.number,
                department=c.department,
                item=c.item,
                item_version=c.item_version,
                applicant=c.applicant,
                opened_at=instant(c.opened_at),
                promised_due_at=instant(c.promised_due_at),
                legal_due_at=instant(c.legal_due_at),
                severity=_enum(CaseOverdue, c.severity),
                due_at=instant(c.due_at),
            )
            for c in m.cases
        ),
        next_page_token=m.next_page_token,
        at=instant(m.at),
    )


def package(m: packages_pb2.Package) -> Package:
    return Package(
        spec=PackageSpec(
            code=m.spec.code,
            name=m.spec.name,
            description=m.spec.description,
            steps=tuple(
                PackageStepSpec(item=s.item, after=tuple(s.after), applicant_from=s.applicant_from)
                for s in m.spec.steps
            ),
        ),
        department=m.department,
        version=m.version,
        created_at=instant(m.created_at),
    )


def package_case(m: packages_pb2.PackageCase) -> PackageCase:
    return PackageCase(
        number=m.number,
        package=m.package,
        package_version=m.package_version,
        department=m.department,
        applicant=m.applicant,
        state=_enum(PackageState, m.state),
        opened_at=instant(m.opened_at),
        steps=tuple(
            PackageStep(
                item=s.item,
                department=s.department,
                state=_enum(StepState, s.state),
                after=tuple(s.after),
                applicant=s.applicant,
                case_number=s.case_number,
                case_state=_enum(CaseState, s.case_state),
                licence_number=s.licence_number,
                updated_at=_maybe_instant(s.updated_at, s.HasField("updated_at")),
            )
            for s in m.steps
        ),
    )


# -- ratings and supervision -----------------------------------------------------------


def rated_case(m: ratings_pb2.RatedCase) -> RatedCase:
    fix = m.rectification
    return RatedCase(
        case_number=m.case_number,
        item=m.item,
        department=m.department,
        applicant=m.applicant,
        ratings=tuple(
            Rating(
                round=r.round,
                score=r.score,
                comment=r.comment,
                rated_at=instant(r.rated_at),
                officer=r.officer,
                via=r.via,
            )
            for r in m.ratings
        ),
        rectification=Rectification(
            opened_at=instant(fix.opened_at),
            due_at=instant(fix.due_at),
            answer=fix.answer,
            answered_at=_maybe_instant(fix.answered_at, fix.HasField("answered_at")),
            answered_by=fix.answered_by,
            overdue=fix.overdue,
        )
        if m.HasField("rectification")
        else None,
    )


def rectification_page(m: ratings_pb2.ListRectificationsResponse) -> RectificationPage:
    return RectificationPage(cases=tuple(rated_case(c) for c in m.cases), at=instant(m.at))


def ratings_check(m: ratings_pb2.VerifyRatingsResponse) -> RatingsCheck:
    return RatingsCheck(
        ratings=m.ratings, rectifications=m.rectifications, answers=m.answers, entries=m.entries
    )


def supervision_report(m: supervision_pb2.SupervisionReportResponse) -> SupervisionReport:
    return SupervisionReport(
        at=instant(m.at),
        rows=tuple(
            SupervisionRow(
                department=r.department,
                month=r.month,
                opened=r.opened,
                decided=r.decided,
                decided_within_promised=r.decided_within_promised,
                decided_late=r.decided_late,
                decided_past_legal=r.decided_past_legal,
                overdue_promised=r.overdue_promised,
                overdue_legal=r.overdue_legal,
                in_correction=r.in_correction,
                corrected_repeatedly=r.corrected_repeatedly,
                decided_same_day=r.decided_same_day,
                resolved=r.resolved,
                fully_online=r.fully_online,
                materials_required=r.materials_required,
                materials_electronic=r.materials_electronic,
                within_promised_share=r.within_promised_share
                if r.HasField("within_promised_share")
                else None,
                immediate_share=r.immediate_share if r.HasField("immediate_share") else None,
                fully_online_share=r.fully_online_share
                if r.HasField("fully_online_share")
                else None,
                no_submission_share=r.no_submission_share
                if r.HasField("no_submission_share")
                else None,
                average_days=r.average_days if r.HasField("average_days") else None,
                average_promised_days=r.average_promised_days
                if r.HasField("average_promised_days")
                else None,
                average_legal_days=r.average_legal_days
                if r.HasField("average_legal_days")
                else None,
            )
            for r in m.rows
        ),
    )


def supervised_case_page(m: supervision_pb2.ListSupervisedCasesResponse) -> SupervisedCasePage:
    return SupervisedCasePage(
        cases=tuple(
            SupervisedCase(
                number=c.number,
                item=c.item,
                item_version=c.item_version,
                department=c.department,
                applicant=c.applicant,
                state=_enum(CaseState, c.state),
                opened_at=instant(c.opened_at),
                promised_due_at=instant(c.promised_due_at),
                legal_due_at=instant(c.legal_due_at),
                decided_at=_maybe_instant(c.decided_at, c.HasField("decided_at")),
                outcome=_enum(CaseOutcome, c.outcome),
                corrections=c.corrections,
            )
            for c in m.cases
        ),
        next_page_token=m.next_page_token,
        at=instant(m.at),
    )
