"""Enrolling departments: issue credentials, write the bundle, register — all or nothing."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tongban.client.bundle import write_bundle
from tongban.exchange.datadir import issue_department_credentials, open_token
from tongban.exchange.db.database import Database
from tongban.exchange.departments import (
    Department,
    DepartmentStore,
    Level,
    validate_code,
    validate_name,
)
from tongban.exchange.errors import DepartmentExists
from tongban.exchange.licensing.setup import custody_seal_from_pem, vault_for
from tongban.exchange.settings import Settings

__all__ = ["DEMO_DEPARTMENTS", "DemoDepartment", "enrol_demo_departments", "enrol_department"]


@dataclass(frozen=True)
class DemoDepartment:
    code: str
    name: str
    roles: tuple[str, ...] = ()


# The departments of the story in DESIGN.md (one county), plus an auditor. Police
# investigates, so it may declare covert cases (刑事诉讼法); no other department may.
DEMO_DEPARTMENTS = (
    DemoDepartment("samr", "县市场监督管理局"),
    DemoDepartment("tax", "县税务局"),
    DemoDepartment("hrss", "县人力资源和社会保障局"),
    DemoDepartment("police", "县公安局", ("covert",)),
    DemoDepartment("approval", "县行政审批服务局"),
    DemoDepartment("regulator", "县综合行政执法局"),
    DemoDepartment("audit", "县纪委监委电子监察室", ("auditor",)),
)


def bundle_dir(settings: Settings, code: str) -> Path:
    return settings.data_dir / "bundles" / code


async def enrol_department(
    db: Database,
    settings: Settings,
    *,
    code: str,
    name: str,
    level: Level,
    parent: str | None,
    roles: Sequence[str],
    out: Path | None,
    now: datetime,
) -> tuple[Department, Path]:
    """Register a department and write its credential bundle; return both.

    The bundle is written before the registry row and removed again if registration
    fails, so either both exist or neither. ``db`` must be logged in as the schema's
    owner (``Database.open(..., owner=True)``): the node's role only reads the registry.
    Raises DepartmentExists, DepartmentNotFound (parent), InvalidArgument or BundleInvalid.
    """
    validate_code(code)
    name = validate_name(name)
    store = DepartmentStore(db.pool)
    if await store.find(code) is not None:
        raise DepartmentExists(f"Department {code!r} is already registered.")
    target = out if out is not None else bundle_dir(settings, code)
    credentials = issue_department_credentials(
        settings, code=code, name=name, endpoint=_endpoint(settings), now=now
    )
    # The exchange keeps the seal in custody (the unified seal service) before the
    # department exists; a left-over custody row of a refused registration is replaced
    # by the next enrolment of that code.
    # With a PKCS#11 token configured the custodial copy goes into the token.
    token = await asyncio.to_thread(open_token)
    try:
        await custody_seal_from_pem(
            vault_for(db.pool, settings, token),
            code,
            credentials.bundle.seal_key_pem,
            credentials.bundle.seal_cert_pem,
            now,
        )
    finally:
        if token is not None:
            token.close()
    write_bundle(credentials.bundle, target)
    try:
        department = await store.add(
            code=code,
            name=name,
            level=level,
            parent=parent,
            roles=roles,
            tls_fingerprint=credentials.tls_fingerprint,
            seal_fingerprint=credentials.seal_fingerprint,
        )
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return department, target


async def enrol_demo_departments(
    db: Database, settings: Settings, now: datetime
) -> list[tuple[Department, Path]]:
    """Enrol the story's departments that are not registered yet; return the new ones.
    ``db`` must be the schema owner's, as for ``enrol_department``."""
    store = DepartmentStore(db.pool)
    enrolled = []
    for demo in DEMO_DEPARTMENTS:
        if await store.find(demo.code) is None:
            enrolled.append(
                await enrol_department(
                    db,
                    settings,
                    code=demo.code,
                    name=demo.name,
                    level=Level.COUNTY,
                    parent=None,
                    roles=demo.roles,
                    out=None,
                    now=now,
                )
            )
    return enrolled


def _endpoint(settings: Settings) -> str:
    listen = settings.grpc_listen
    host = settings.node_hostnames[0] if listen.host in ("0.0.0.0", "::") else listen.host  # noqa: S104
    port = listen.port or 50051
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
