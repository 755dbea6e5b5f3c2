"""gRPC servicer of packages (一件事): messages in and out of ``PackageStore``. Errors are
``TongbanError``s, mapped to statuses by the interceptor."""

from __future__ import annotations

from typing import Any

import grpc

from tongban.exchange.licensing.package_store import (
    OpenedPackage,
    PackageStore,
    RegisteredPackage,
)
from tongban.exchange.licensing.packages import PackageSpec, PackageState, StepSpec, StepState
from tongban.exchange.server.caller import current_caller
from tongban.exchange.server.cases_service import STATES
from tongban.exchange.server.timestamps import timestamp
from tongban.signing.clock import Clock
from tongban.v1 import cases_pb2, packages_pb2, packages_pb2_grpc

__all__ = ["PackageService", "package_case_message", "spec_from_message"]

Context = grpc.aio.ServicerContext[Any, Any]

_STEP_STATES = {
    StepState.WAITING: packages_pb2.STEP_STATE_WAITING,
    StepState.READY: packages_pb2.STEP_STATE_READY,
    StepState.OPEN: packages_pb2.STEP_STATE_OPEN,
    StepState.DONE: packages_pb2.STEP_STATE_DONE,
    StepState.FAILED: packages_pb2.STEP_STATE_FAILED,
    StepState.BLOCKED: packages_pb2.STEP_STATE_BLOCKED,
}
_PACKAGE_STATES = {
    PackageState.OPEN: packages_pb2.PACKAGE_STATE_OPEN,
    PackageState.DONE: packages_pb2.PACKAGE_STATE_DONE,
    PackageState.FAILED: packages_pb2.PACKAGE_STATE_FAILED,
}


def spec_from_message(message: packages_pb2.PackageSpec) -> PackageSpec:
    return PackageSpec(
        code=message.code,
        name=message.name,
        description=message.description,
        steps=tuple(
            StepSpec(item=s.item, after=tuple(s.after), applicant_from=s.applicant_from)
            for s in message.steps
        ),
    )


def _package_message(package: RegisteredPackage) -> packages_pb2.Package:
    spec = package.spec
    return packages_pb2.Package(
        spec=packages_pb2.PackageSpec(
            code=spec.code,
            name=spec.name,
            description=spec.description,
            steps=[
                packages_pb2.PackageStepSpec(
                    item=s.item, after=list(s.after), applicant_from=s.applicant_from
                )
                for s in spec.steps
            ],
        ),
        department=package.department,
        version=package.version,
        created_at=timestamp(package.created_at),
    )


def package_case_message(opened: OpenedPackage) -> packages_pb2.PackageCase:
    return packages_pb2.PackageCase(
        number=opened.number,
        package=opened.package,
        package_version=opened.package_version,
        department=opened.department,
        applicant=opened.applicant,
        state=_PACKAGE_STATES[opened.state],
        opened_at=timestamp(opened.opened_at),
        steps=[
            packages_pb2.PackageStep(
                item=s.item,
                department=s.department,
                state=_STEP_STATES[s.state],
                after=list(s.after),
                applicant=s.applicant or "",
                case_number=s.case_number or "",
                case_state=STATES[s.case_state]
                if s.case_state
                else cases_pb2.CASE_STATE_UNSPECIFIED,
                licence_number=s.licence_number or "",
                updated_at=timestamp(s.updated_at),
            )
            for s in opened.steps
        ],
    )


class PackageService(packages_pb2_grpc.PackageServiceServicer):
    def __init__(self, packages: PackageStore, clock: Clock) -> None:
        self._packages = packages
        self._clock = clock

    async def RegisterPackage(
        self, request: packages_pb2.RegisterPackageRequest, context: Context
    ) -> packages_pb2.Package:
        package = await self._packages.register(
            current_caller().department.code,
            spec_from_message(request.spec),
            now=self._clock.now(),
        )
        return _package_message(package)

    async def OpenPackage(
        self, request: packages_pb2.OpenPackageRequest, context: Context
    ) -> packages_pb2.PackageCase:
        opened = await self._packages.open(
            current_caller(), request.package, request.applicant, now=self._clock.now()
        )
        return package_case_message(opened)

    async def GetPackageCase(
        self, request: packages_pb2.GetPackageCaseRequest, context: Context
    ) -> packages_pb2.PackageCase:
        opened = await self._packages.read(current_caller(), request.number, now=self._clock.now())
        return package_case_message(opened)
