"""``tongban package``: packages (一件事) a department coordinates, over gRPC with its
bundle: ``register`` a package from YAML/JSON, ``open`` it for an applicant, and
``status`` of an opened one (each step's department, state, case and licence)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from tongban.cli.case_cmds import STATE_WORDS
from tongban.cli.common import department_client, department_options, emit, message_dict
from tongban.cli.item_cmds import problems_of, read_spec_file
from tongban.client import PackageCase, PackageState, StepState
from tongban.exchange.errors import InvalidArgument
from tongban.v1 import packages_pb2

__all__ = ["add_parsers", "load_package_file", "run_package"]

_STEP_WORDS = {
    StepState.UNSPECIFIED: "—",
    StepState.WAITING: "待前序 waiting for the steps before it",
    StepState.READY: "可受理 ready: its department may open the case",
    StepState.OPEN: "办理中 open",
    StepState.DONE: "已准予 approved",
    StepState.FAILED: "未通过 refused, not accepted or withdrawn",
    StepState.BLOCKED: "前序未通过 blocked: a step before it failed",
}
_PACKAGE_WORDS = {
    PackageState.UNSPECIFIED: "—",
    PackageState.OPEN: "办理中 open",
    PackageState.DONE: "已办结 every step approved",
    PackageState.FAILED: "未通过 a step failed",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Step(_Strict):
    item: str
    after: list[str] = []
    applicant_from: str = ""


class _PackageFile(_Strict):
    """A package, e.g. ``docs/examples/enterprise-start.package.yaml``."""

    code: str
    name: str
    description: str = ""
    steps: list[_Step]

    def to_message(self) -> packages_pb2.PackageSpec:
        return packages_pb2.PackageSpec(
            code=self.code,
            name=self.name,
            description=self.description,
            steps=[
                packages_pb2.PackageStepSpec(
                    item=s.item, after=s.after, applicant_from=s.applicant_from
                )
                for s in self.steps
            ],
        )


def load_package_file(path: Path) -> packages_pb2.PackageSpec:
    """Read and check a package file; raise InvalidArgument naming each problem."""
    data = read_spec_file(path)
    try:
        return _PackageFile.model_validate(data).to_message()
    except ValidationError as e:
        raise InvalidArgument(f"{path} is not a valid package: {problems_of(e)}.") from None


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, parser_class: type[argparse.ArgumentParser]
) -> None:
    """Add ``tongban package register|open|status`` to the ``tongban`` parser."""
    dept = department_options(parser_class)
    package = sub.add_parser("package", help="packages (一件事) your department coordinates")
    package_sub = package.add_subparsers(
        dest="package_command", required=True, parser_class=parser_class
    )
    register = package_sub.add_parser(
        "register", parents=[common, dept], help="register a package (or a new version)"
    )
    register.add_argument("file", type=Path)
    opening = package_sub.add_parser(
        "open", parents=[common, dept], help="open (一次受理) a package for an applicant"
    )
    opening.add_argument("package", help="the package's code")
    opening.add_argument("applicant", help="统一社会信用代码 or 公民身份号码")
    status = package_sub.add_parser(
        "status", parents=[common, dept], help="an opened package's steps and their cases"
    )
    status.add_argument("number", help="the opened package's number")


def _summary(package: PackageCase) -> list[str]:
    lines = [
        f"{package.number} — {package.package} v{package.package_version} for "
        f"{package.applicant} (coordinated by {package.department})",
        f"  state: {_PACKAGE_WORDS[package.state]}",
    ]
    for step in package.steps:
        line = f"  - {step.item} ({step.department}): {_STEP_WORDS[step.state]}"
        if step.applicant and step.applicant != package.applicant:
            line += f"; applicant {step.applicant}"
        if step.case_number:
            line += f"; case {step.case_number} {STATE_WORDS[step.case_state]}"
        if step.licence_number:
            line += f"; licence {step.licence_number}"
        lines.append(line)
    return lines


async def run_package(args: argparse.Namespace) -> int:
    client = department_client(args)
    async with client:
        if args.package_command == "register":
            registered = await client.register_package(load_package_file(args.file))
            emit(
                args,
                {"package": message_dict(registered, packages_pb2.Package)},
                f"registered package {registered.spec.code} v{registered.version} "
                f"({len(registered.spec.steps)} steps), coordinated by {registered.department}",
            )
        elif args.package_command == "open":
            opened = await client.open_package(args.package, args.applicant)
            emit(
                args,
                {"package_case": message_dict(opened, packages_pb2.PackageCase)},
                "\n".join(["opened", *_summary(opened)]),
            )
        else:
            shown = await client.get_package_case(args.number)
            emit(
                args,
                {"package_case": message_dict(shown, packages_pb2.PackageCase)},
                "\n".join(_summary(shown)),
            )
    return 0
