"""Packages (一件事一次办): several service items an applicant needs for one goal, opened in
one trip. Pure: ``package_store`` reads and writes what these functions decide.

A package is a list of steps, one per item. A step may wait for others (``after``) and
may take its applicant from one of them (``applicant_from``): 设立登记 issues the
business licence to the enterprise it creates, and 公章刻制, 发票申领 and 社保登记 are then
applied for by that enterprise, whose licence satisfies their materials electronically.

Step states: waiting (steps before it are not approved) → ready (its department may
open its case) → open (its case is open) → done (approved) or failed (refused, not
accepted, withdrawn); a step after a failed one is blocked. The package is done when
every step is, failed when any step is, open otherwise.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from tongban.exchange.licensing.cases import CaseState, Outcome
from tongban.exchange.licensing.errors import PackageCycle, PackageInvalid
from tongban.exchange.licensing.items import ServiceItem, is_item_code

__all__ = [
    "MAX_STEPS",
    "PackageSpec",
    "PackageState",
    "Step",
    "StepSpec",
    "StepState",
    "after_case",
    "follow_on",
    "initial_states",
    "package_state",
    "validate_package",
]

PACKAGE_CODE = re.compile(r"^[a-z][a-z0-9-]{1,63}$")
MAX_STEPS = 20


class StepState(enum.StrEnum):
    WAITING = "waiting"
    READY = "ready"
    OPEN = "open"
    DONE = "done"
    FAILED = "failed"
    BLOCKED = "blocked"


class PackageState(enum.StrEnum):
    OPEN = "open"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class StepSpec:
    item: str
    after: tuple[str, ...] = ()
    applicant_from: str = ""


@dataclass(frozen=True)
class PackageSpec:
    code: str
    name: str
    description: str
    steps: tuple[StepSpec, ...]


@dataclass(frozen=True)
class Step:
    """A step of an opened package, as stored."""

    item: str
    department: str
    after: tuple[str, ...]
    applicant_from: str | None
    state: StepState
    applicant: str | None = None
    case_number: str | None = None
    licence_number: str | None = None
    case_state: CaseState | None = field(default=None, compare=False)
    updated_at: datetime | None = field(default=None, compare=False)


def _text(value: str, what: str, high: int, *, required: bool = True) -> str:
    text = unicodedata.normalize("NFC", value.strip())
    low = 1 if required else 0
    if not low <= len(text) <= high:
        raise PackageInvalid(
            f"The package's {what} must have {low} to {high} characters (has {len(text)}).",
            metadata={"field": what},
        )
    if any(unicodedata.category(ch) in {"Cc", "Cs", "Co", "Cn"} and ch != "\n" for ch in text):
        raise PackageInvalid(
            f"The package's {what} contains control or unassigned characters.",
            metadata={"field": what},
        )
    return text


def _step_error(item: str, message: str, what: str) -> PackageInvalid:
    return PackageInvalid(
        f"Step {item[:64]!r}: {message}", metadata={"step": item[:64], "field": what}
    )


def validate_package(spec: PackageSpec, items: Mapping[str, ServiceItem | None]) -> PackageSpec:
    """``spec`` normalised, or PackageInvalid / PackageCycle naming the step.

    ``items`` maps each item code the steps name to its current version (None: no such
    item in the catalogue).
    """
    if not PACKAGE_CODE.match(spec.code):
        raise PackageInvalid(
            f"Package code {spec.code[:80]!r} is not valid: use lowercase letters, digits "
            "and '-', 2 to 64 characters, e.g. enterprise-start.",
            metadata={"field": "code"},
        )
    name = _text(spec.name, "name", 200)
    description = _text(spec.description, "description", 2000, required=False)
    if not 1 <= len(spec.steps) <= MAX_STEPS:
        raise PackageInvalid(
            f"A package has 1 to {MAX_STEPS} steps (this one has {len(spec.steps)}).",
            metadata={"field": "steps"},
        )
    codes = [step.item.strip() for step in spec.steps]
    for item in codes:
        if not is_item_code(item) or items.get(item) is None:
            raise _step_error(
                item,
                "there is no such service item in the item catalogue; register it first "
                "(tongban item register) or correct the code.",
                "item",
            )
        if codes.count(item) > 1:
            raise _step_error(item, "the item appears twice; list each item once.", "item")
    steps: list[StepSpec] = []
    for item, step in zip(codes, spec.steps, strict=True):
        after = tuple(a.strip() for a in step.after)
        for before in after:
            if before not in codes or before == item:
                raise _step_error(
                    item,
                    f"'after' names {before[:64]!r}, which is not another step of the package.",
                    "after",
                )
        if len(set(after)) != len(after):
            raise _step_error(item, "'after' names a step twice.", "after")
        source = step.applicant_from.strip()
        if source and source not in after:
            raise _step_error(
                item,
                f"applicant_from names {source[:64]!r}; it must be one of the steps in "
                "'after' (the step waits for the licence whose holder applies).",
                "applicant_from",
            )
        source_item = items.get(source) if source else None
        if source_item is not None and not source_item.spec.issues_licence:
            raise _step_error(
                item,
                f"applicant_from names {source!r}, which issues no licence (its item has no "
                "issues_licence), so no holder could apply.",
                "applicant_from",
            )
        steps.append(StepSpec(item=item, after=after, applicant_from=source))
    _check_cycles(steps)
    return PackageSpec(code=spec.code, name=name, description=description, steps=tuple(steps))


def _check_cycles(steps: Sequence[StepSpec]) -> None:
    waits = {step.item: step.after for step in steps}
    done: set[str] = set()

    def visit(item: str, path: list[str]) -> None:
        if item in done:
            return
        if item in path:
            chain = " → ".join([*path[path.index(item) :], item])
            raise PackageCycle(
                f"The steps wait for each other in a cycle ({chain}), so none could start; "
                "remove one of these 'after' entries.",
                metadata={"step": item, "field": "after"},
            )
        for before in waits[item]:
            visit(before, [*path, item])
        done.add(item)

    for step in steps:
        visit(step.item, [])


def initial_states(spec: PackageSpec) -> dict[str, StepState]:
    """Each step's state when the package is opened: ready if it waits for nothing."""
    return {s.item: StepState.WAITING if s.after else StepState.READY for s in spec.steps}


def after_case(
    steps: Sequence[Step], item: str, state: CaseState, outcome: Outcome | None
) -> StepState | None:
    """The state step ``item`` takes when its case arrives in ``state`` (None: unchanged)."""
    step = next(s for s in steps if s.item == item)
    if step.state is not StepState.OPEN:
        return None
    if state is CaseState.DECIDED:
        return StepState.DONE if outcome is Outcome.APPROVED else StepState.FAILED
    if state in (CaseState.NOT_ACCEPTED, CaseState.WITHDRAWN):
        return StepState.FAILED
    return None


def follow_on(steps: Sequence[Step]) -> dict[str, StepState]:
    """The waiting steps that change now: ready when every step before them is done,
    blocked when one of them failed or is blocked."""
    states = {s.item: s.state for s in steps}
    changed: dict[str, StepState] = {}
    progress = True
    while progress:  # a block travels down chains of waiting steps
        progress = False
        for step in steps:
            if states[step.item] is not StepState.WAITING:
                continue
            before = [states[a] for a in step.after]
            new: StepState | None = None
            if any(b in (StepState.FAILED, StepState.BLOCKED) for b in before):
                new = StepState.BLOCKED
            elif all(b is StepState.DONE for b in before):
                new = StepState.READY
            if new is not None:
                states[step.item] = changed[step.item] = new
                progress = True
    return changed


def package_state(steps: Sequence[Step]) -> PackageState:
    if any(s.state in (StepState.FAILED, StepState.BLOCKED) for s in steps):
        return PackageState.FAILED
    if all(s.state is StepState.DONE for s in steps):
        return PackageState.DONE
    return PackageState.OPEN
