"""Errors the exchange node raises on purpose, each with a stable reason code.

The gRPC interceptor maps these to a status and an ``ErrorInfo``; the CLI prints their
message and exits 1. Reason codes are part of the public contract: never rename one.
"""

from __future__ import annotations

from tongban.errors import TongbanError

__all__ = [
    "AddressInUse",
    "AuditorRoleRequired",
    "BrokerUnavailable",
    "CaRotationRefused",
    "ConfigInvalid",
    "DataDirNotInitialised",
    "DataDirUnusable",
    "DatabaseUnavailable",
    "DepartmentExists",
    "DepartmentNotFound",
    "DepartmentSuspended",
    "DepartmentUnknown",
    "InvalidArgument",
    "KafkaSecurityFailed",
    "MigrationFailed",
    "NotRegisteredCertificate",
    "TongbanError",
]


class ConfigInvalid(TongbanError):
    """A setting (environment variable or command-line option) has a bad value."""

    reason = "CONFIG_INVALID"
    status = "INVALID_ARGUMENT"


class InvalidArgument(TongbanError):
    """A request or command argument is malformed."""

    reason = "INVALID_ARGUMENT"
    status = "INVALID_ARGUMENT"


class CaRotationRefused(TongbanError):
    """A new issuing CA cannot be made: the root cannot sign one, or its key is not at
    hand."""

    reason = "CA_ROTATION_REFUSED"
    status = "FAILED_PRECONDITION"


class DataDirNotInitialised(TongbanError):
    """The data directory has no CA or node credentials yet."""

    reason = "NOT_INITIALISED"
    status = "FAILED_PRECONDITION"


class DataDirUnusable(TongbanError):
    """The data directory cannot be created, read or written."""

    reason = "DATA_DIR_UNUSABLE"
    status = "FAILED_PRECONDITION"


class DatabaseUnavailable(TongbanError):
    """PostgreSQL cannot be started or does not answer."""

    reason = "DATABASE_UNAVAILABLE"
    status = "UNAVAILABLE"


class MigrationFailed(TongbanError):
    """A schema migration failed or an applied one was edited afterwards."""

    reason = "MIGRATION_FAILED"
    status = "INTERNAL"


class AddressInUse(TongbanError):
    """A listen address cannot be bound."""

    reason = "LISTEN_FAILED"
    status = "UNAVAILABLE"


class DepartmentExists(TongbanError):
    reason = "DEPARTMENT_EXISTS"
    status = "ALREADY_EXISTS"


class DepartmentNotFound(TongbanError):
    reason = "DEPARTMENT_NOT_FOUND"
    status = "NOT_FOUND"


class DepartmentUnknown(TongbanError):
    """The caller's certificate names a department the registry does not know."""

    reason = "DEPARTMENT_UNKNOWN"
    status = "UNAUTHENTICATED"


class NotRegisteredCertificate(TongbanError):
    """The caller's certificate is valid but is not the one registered for its department."""

    reason = "CERTIFICATE_NOT_REGISTERED"
    status = "UNAUTHENTICATED"


class DepartmentSuspended(TongbanError):
    reason = "DEPARTMENT_SUSPENDED"
    status = "PERMISSION_DENIED"


class BrokerUnavailable(TongbanError):
    """Kafka cannot be reached or refused a request; the relay retries with backoff."""

    reason = "BROKER_UNAVAILABLE"
    status = "UNAVAILABLE"


class KafkaSecurityFailed(BrokerUnavailable):
    """The brokers answer, but TLS or the SASL login with them fails: a configuration
    error (TONGBAN_KAFKA_SECURITY_PROTOCOL, _SASL_*, _CA_FILE) that retrying cannot fix.
    Retried all the same, so the node recovers once the brokers or settings are fixed."""

    reason = "BROKER_SECURITY_FAILED"
    status = "UNAVAILABLE"


class AuditorRoleRequired(TongbanError):
    """An auditor's read (the access log, supervision figures, rating records) by a
    department without the auditor role."""

    reason = "AUDITOR_ROLE_REQUIRED"
    status = "PERMISSION_DENIED"
