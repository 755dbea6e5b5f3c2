"""Errors of the licence service, each with a stable reason code."""

from __future__ import annotations

from tongban.errors import TongbanError

__all__ = [
    "CaseDecisionInvalid",
    "CaseNotFound",
    "CaseNotPermitted",
    "CaseReasonRequired",
    "CaseTransitionInvalid",
    "LicenceNotFound",
    "LicenceNotPermitted",
    "MaterialKeyCycle",
    "MaterialKeyInvalid",
    "MaterialSourceUnknown",
    "SealNotEnrolled",
    "ServiceItemInvalid",
    "ServiceItemNotOwner",
    "ServiceItemUnknown",
    "StatusChangeInvalid",
    "TimeLimitInvalid",
]


class LicenceNotFound(TongbanError):
    """No licence has that number (or the caller may not see it)."""

    reason = "LICENCE_NOT_FOUND"
    status = "NOT_FOUND"


class LicenceNotPermitted(TongbanError):
    """The caller's department may not do this with this licence type (it does not issue
    it, or may not change its status)."""

    reason = "LICENCE_NOT_PERMITTED"
    status = "PERMISSION_DENIED"


class SealNotEnrolled(TongbanError):
    """The exchange holds no seal key for the department (or no status-list key)."""

    reason = "SEAL_NOT_ENROLLED"
    status = "FAILED_PRECONDITION"


class StatusChangeInvalid(TongbanError):
    """The status change does not apply to the licence's current status (reinstating a
    licence that is not suspended, changing a revoked one)."""

    reason = "LICENCE_STATUS_CHANGE_INVALID"
    status = "FAILED_PRECONDITION"


class ServiceItemUnknown(TongbanError):
    """No service item (政务服务事项) has that code."""

    reason = "SERVICE_ITEM_UNKNOWN"
    status = "NOT_FOUND"


class ServiceItemInvalid(TongbanError):
    """A service item's spec is malformed (its code, a text, a number of days, a material
    without a source or with a code used twice); the message names the field or material."""

    reason = "SERVICE_ITEM_INVALID"
    status = "INVALID_ARGUMENT"


class TimeLimitInvalid(TongbanError):
    """The promised time limit (承诺办结时限) is above the legal one (法定办结时限), or does
    not fit whether the item is decided on the spot (即办)."""

    reason = "TIME_LIMIT_INVALID"
    status = "INVALID_ARGUMENT"


class MaterialSourceUnknown(TongbanError):
    """A material names a source that does not exist: a dataset not in the catalogue (or
    not visible to the department), a field it lacks, a licence type not in the registry,
    or a claim the type lacks. ``metadata``: material, problem."""

    reason = "MATERIAL_SOURCE_UNKNOWN"
    status = "FAILED_PRECONDITION"


class MaterialKeyInvalid(TongbanError):
    """A material's ``key_from`` does not name an earlier dataset material that returns
    that field."""

    reason = "MATERIAL_KEY_INVALID"
    status = "INVALID_ARGUMENT"


class MaterialKeyCycle(TongbanError):
    """Materials take their keys from each other in a cycle: none can be looked up first."""

    reason = "MATERIAL_KEY_CYCLE"
    status = "INVALID_ARGUMENT"


class ServiceItemNotOwner(TongbanError):
    """Only the department that handles a service item registers its new versions."""

    reason = "SERVICE_ITEM_NOT_OWNER"
    status = "PERMISSION_DENIED"


class CaseNotFound(TongbanError):
    """No case (办件) has that number."""

    reason = "CASE_NOT_FOUND"
    status = "NOT_FOUND"


class CaseNotPermitted(TongbanError):
    """Only the department that handles the item opens its cases, moves them and reads
    them."""

    reason = "CASE_NOT_PERMITTED"
    status = "PERMISSION_DENIED"


class CaseTransitionInvalid(TongbanError):
    """The case cannot move from its state to the one asked for (送达 before 办结,
    anything after 送达); the message names the state and the moves allowed from it."""

    reason = "CASE_TRANSITION_INVALID"
    status = "FAILED_PRECONDITION"


class CaseDecisionInvalid(TongbanError):
    """办结 without an outcome, an approval without the licence it issued (or with one
    the department did not issue to the applicant), a refusal naming a licence, or an
    outcome or licence given for a move that is not 办结."""

    reason = "CASE_DECISION_INVALID"
    status = "INVALID_ARGUMENT"


class CaseReasonRequired(TongbanError):
    """补正, a refusal, 不予受理 and 撤回 need a reason the applicant can read (at most 500
    characters, no control characters)."""

    reason = "CASE_REASON_REQUIRED"
    status = "INVALID_ARGUMENT"


class PackageInvalid(TongbanError):
    """A package spec that cannot be registered: a bad code or name, no steps or too many,
    an item twice, an unknown item, or ``after``/``applicant_from`` naming an item that is
    not a step before it; the message names the step."""

    reason = "PACKAGE_INVALID"
    status = "INVALID_ARGUMENT"


class PackageCycle(TongbanError):
    """The steps of a package wait for each other in a cycle, so none could start."""

    reason = "PACKAGE_CYCLE"
    status = "INVALID_ARGUMENT"


class PackageUnknown(TongbanError):
    """No package with that code (or an opened package with that number)."""

    reason = "PACKAGE_UNKNOWN"
    status = "NOT_FOUND"


class PackageNotPermitted(TongbanError):
    """The package is another department's to register, to open, or to read (only its
    coordinator and the departments of its steps read an opened package)."""

    reason = "PACKAGE_NOT_PERMITTED"
    status = "PERMISSION_DENIED"


class PackageStepNotReady(TongbanError):
    """A case was opened for a package step that is not ready (the steps before it are not
    approved, or its case is already open), or for another applicant than the step's."""

    reason = "PACKAGE_STEP_NOT_READY"
    status = "FAILED_PRECONDITION"


class MaterialUnknown(TongbanError):
    """The case's item has no material with that code."""

    reason = "MATERIAL_UNKNOWN"
    status = "INVALID_ARGUMENT"


class MaterialNotDeferrable(TongbanError):
    """The item does not allow the material to be deferred (defer_days 0), or a
    commitment in its place (commitment_check_days 0)."""

    reason = "MATERIAL_NOT_DEFERRABLE"
    status = "FAILED_PRECONDITION"


class MaterialAlreadyRecorded(TongbanError):
    """The material is already deferred or replaced by a commitment on this case."""

    reason = "MATERIAL_ALREADY_RECORDED"
    status = "ALREADY_EXISTS"


class MaterialNotOpen(TongbanError):
    """The material is not an open deferral (for a supply) or an open commitment (for a
    check) on this case, or the case is no longer open for a new one."""

    reason = "MATERIAL_NOT_OPEN"
    status = "FAILED_PRECONDITION"


class MaterialSupplyLate(TongbanError):
    """The deferred material arrived after its working days ran out: the deferral is a
    breach, not a supply."""

    reason = "MATERIAL_SUPPLY_LATE"
    status = "FAILED_PRECONDITION"


class CheckNotPermitted(TongbanError):
    """Only the departments the item names as supervisors (else the handling department)
    record the checks of its commitments."""

    reason = "CHECK_NOT_PERMITTED"
    status = "PERMISSION_DENIED"
