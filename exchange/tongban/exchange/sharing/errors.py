"""Errors of the sharing domain, each with a stable reason code."""

from __future__ import annotations

from collections.abc import Mapping

from tongban.errors import TongbanError
from tongban.exchange.sharing.policy import DENIAL_REASONS, Denied

__all__ = [
    "ConcurrentChange",
    "DatasetNotFound",
    "DuplicateKey",
    "GrantNotFound",
    "GrantStateInvalid",
    "NotOwner",
    "NotSharedNeedsBasis",
    "QueryDenied",
    "SchemaIncompatible",
    "StorageQuotaExceeded",
    "TooManyKeys",
    "TooManyPendingGrants",
]


class DatasetNotFound(TongbanError):
    reason = "DATASET_NOT_FOUND"
    status = "NOT_FOUND"


class NotOwner(TongbanError):
    reason = "NOT_OWNER"
    status = "PERMISSION_DENIED"


class NotSharedNeedsBasis(TongbanError):
    reason = "NOT_SHARED_NEEDS_BASIS"
    status = "INVALID_ARGUMENT"


class SchemaIncompatible(TongbanError):
    reason = "SCHEMA_INCOMPATIBLE"
    status = "FAILED_PRECONDITION"


class ConcurrentChange(TongbanError):
    """Other publishers kept creating the same new records at the same moment, past the
    retries; nothing of this call was written."""

    reason = "CONCURRENT_CHANGE"
    status = "ABORTED"
    retry_after = 0.1


class StorageQuotaExceeded(TongbanError):
    """A write would take the department's datasets past its storage quota (migration
    0035); nothing of the call was written. Retrying does not help until the operator
    raises the quota, so no retry delay is given."""

    reason = "STORAGE_QUOTA_EXCEEDED"
    status = "RESOURCE_EXHAUSTED"


class DuplicateKey(TongbanError):
    reason = "DUPLICATE_KEY"
    status = "INVALID_ARGUMENT"


class TooManyKeys(TongbanError):
    reason = "TOO_MANY_KEYS"
    status = "INVALID_ARGUMENT"


class TooManyPendingGrants(TongbanError):
    """A consumer asked an owner for another grant while the most it may have awaiting
    that owner's answer already do. Retrying does not help until the owner answers or
    the consumer withdraws some, so no retry delay is given."""

    reason = "TOO_MANY_PENDING_GRANTS"
    status = "RESOURCE_EXHAUSTED"


class GrantNotFound(TongbanError):
    reason = "GRANT_NOT_FOUND"
    status = "NOT_FOUND"


class GrantStateInvalid(TongbanError):
    reason = "GRANT_STATE_INVALID"
    status = "FAILED_PRECONDITION"


class QueryDenied(TongbanError):
    """A policy denial; its reason is the decision's (GRANT_REQUIRED, NOT_SHARED, ...)."""

    def __init__(
        self, reason: str, message: str, metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message, metadata=metadata)
        self.reason = reason
        self.status = DENIAL_REASONS.get(reason, "PERMISSION_DENIED")

    @classmethod
    def from_decision(cls, denied: Denied) -> QueryDenied:
        return cls(denied.reason, denied.message, denied.metadata)
