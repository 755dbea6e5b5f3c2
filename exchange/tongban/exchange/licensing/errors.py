"""Errors of the licence service, each with a stable reason code."""

from __future__ import annotations

from tongban.errors import TongbanError

__all__ = [
    "LicenceNotFound",
    "LicenceNotPermitted",
    "SealNotEnrolled",
    "ServiceItemUnknown",
    "StatusChangeInvalid",
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
