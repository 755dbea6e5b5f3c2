"""Authenticating callers: certificate → department, checked against the registry.

TLS has already verified the chain to the exchange root CA and the validity dates. Here we
map the certificate to a department and check that (a) the department is registered,
(b) this exact certificate is the one registered for it, so a re-issued certificate
retires the old one, (c) the department is active, and (d) the certificate is within its
validity at our clock (a second line behind TLS, and the one that uses the injected clock).

Both lookups are cached: certificates by their PEM bytes (parsing costs more than the
call), departments by code. Department entries are dropped when PostgreSQL notifies a
change on ``tongban_department`` (any node, CLI or SQL edit), so a suspension takes effect
at once on every node (see ``tongban.exchange.db.notify``).
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from cryptography import x509

from tongban.exchange.db.notify import ChangeListener, KeyedCache
from tongban.exchange.departments import Department, DepartmentStore, Status
from tongban.exchange.errors import (
    DepartmentSuspended,
    DepartmentUnknown,
    InvalidArgument,
    NotRegisteredCertificate,
)
from tongban.exchange.identity import Caller
from tongban.signing.certs import certificate_fingerprint, department_code
from tongban.signing.clock import Clock
from tongban.signing.errors import CertificateExpired, CertificateInvalid

__all__ = ["Authenticator", "validate_officer_id"]

_log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "tongban_department"
_CERT_CACHE_SIZE = 10_000
OFFICER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}")


@dataclass(frozen=True)
class _CertInfo:
    code: str
    fingerprint: bytes
    not_before: datetime
    not_after: datetime


def validate_officer_id(value: str | None) -> str | None:
    """Return the officer id (None if absent); raise InvalidArgument if malformed.

    Officer ids are staff numbers (工号): ASCII letters, digits and ``. _ : @ -``, because
    gRPC metadata values are ASCII.
    """
    if value is None or value == "":
        return None
    if not OFFICER_ID.fullmatch(value):
        raise InvalidArgument(
            "The x-tongban-officer metadata must be a staff number of 1-64 ASCII letters, "
            "digits or . _ : @ - (starting with a letter or digit).",
            metadata={"field": "x-tongban-officer"},
        )
    return value


class Authenticator:
    """Maps a peer certificate to a ``Caller`` or raises the reason it may not call."""

    def __init__(self, pool: asyncpg.Pool, listener: ChangeListener, clock: Clock) -> None:
        self._store = DepartmentStore(pool)
        self._clock = clock
        self._certs: OrderedDict[bytes, _CertInfo] = OrderedDict()
        self._departments: KeyedCache[str, Department] = KeyedCache(listener)
        listener.subscribe(NOTIFY_CHANNEL, self._departments.invalidate)

    async def authenticate(self, cert_pem: bytes, officer_id: str | None) -> Caller:
        """Return the caller; raise DepartmentUnknown, NotRegisteredCertificate,
        DepartmentSuspended, CertificateExpired, CertificateInvalid or InvalidArgument."""
        info = self._cert_info(cert_pem)
        now = self._clock.now()
        if now < info.not_before or now > info.not_after:
            raise CertificateExpired(
                f"The client certificate is valid from {info.not_before.isoformat()} to "
                f"{info.not_after.isoformat()}, not at {now.isoformat()}; renew it."
            )
        department = await self._department(info.code)
        if department is None:
            raise DepartmentUnknown(
                f"Department {info.code!r} named in the client certificate is not registered "
                "on this exchange; ask the operator to add it."
            )
        if department.tls_fingerprint != info.fingerprint:
            raise NotRegisteredCertificate(
                f"This certificate for {info.code!r} is not the one registered for it (it was "
                "replaced or never registered); use the department's current bundle."
            )
        if department.status is not Status.ACTIVE:
            raise DepartmentSuspended(
                f"Department {info.code!r} is suspended on this exchange; contact the operator.",
                metadata={"department": info.code},
            )
        return Caller(department, validate_officer_id(officer_id), info.fingerprint)

    def _cert_info(self, cert_pem: bytes) -> _CertInfo:
        info = self._certs.get(cert_pem)
        if info is not None:
            self._certs.move_to_end(cert_pem)
            return info
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as e:
            raise CertificateInvalid("The client certificate cannot be parsed.") from e
        info = _CertInfo(
            code=department_code(cert),
            fingerprint=certificate_fingerprint(cert),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
        )
        self._certs[cert_pem] = info
        if len(self._certs) > _CERT_CACHE_SIZE:
            self._certs.popitem(last=False)
        return info

    async def _department(self, code: str) -> Department | None:
        cached = self._departments.get(code)
        if cached is not None:
            return cached
        generation = self._departments.generation
        department = await self._store.find(code)
        if department is not None:
            self._departments.put(code, department, generation)
        return department
