"""Cases and package steps as change events, under the usual sharing rules.

Each department has a case stream, the dataset ``<department>.cases`` keyed by case
number: the case's item, state, outcome, licence, package and due dates, written in the
same transaction as every transition (``RecordStore.publish_in``), so subscribers — the
applicant's package, the regulator (审管互通), the department's own systems — learn of
every transition exactly when it committed. The applicant is carried as
``applicant_uscc`` for an enterprise (public, as on its licence) or as
``applicant_citizen_id`` for a person: a personal field, purpose-bound like every other
(docs/personal-data.md), so a subscriber without a grant for its purpose does not get it.
The officers' free-text reasons are not in the stream.

A package's coordinator has the stream ``<coordinator>.package_steps`` keyed by
``<package number>/<item>``: each step's department, state, applicant and case. A
department's system subscribes to it and opens a case for each step of its own that is
ready (``OpenCaseRequest.package_number``).

Both datasets are unconditional: case workflow metadata (which item, which state, when)
is what 审管互通 and 进度查询 rest on; the personal field keeps persons' ids bound.
"""

from __future__ import annotations

from datetime import datetime

from tongban.exchange.catalogue.errors import InvalidSubjectId
from tongban.exchange.catalogue.schema import FieldSpec, FieldType, build_schema, validate_record
from tongban.exchange.catalogue.subject_ids import SubjectKind, validate_subject_id
from tongban.exchange.licensing.cases import Case
from tongban.exchange.licensing.packages import Step
from tongban.exchange.sharing.datasets import DatasetSpec, DatasetStore
from tongban.exchange.sharing.model import DatasetEntry, ShareClass
from tongban.exchange.sharing.records import Change

__all__ = ["CaseFeed", "cases_dataset", "materials_dataset", "steps_dataset"]

_S, _D, _I = FieldType.STRING, FieldType.DATETIME, FieldType.INTEGER
_APPLICANT = (
    FieldSpec("applicant_uscc", _S, "申请人统一社会信用代码（企业）", max_length=18),
    FieldSpec(
        "applicant_citizen_id", _S, "申请人公民身份号码（个人）", personal=True, max_length=18
    ),
)
_CASE_FIELDS = (
    FieldSpec("case_number", _S, "办件编号", required=True, max_length=80),
    FieldSpec("item", _S, "事项实施编码", required=True, max_length=64),
    FieldSpec("item_version", _I, "事项版本", required=True),
    FieldSpec(
        "state",
        _S,
        "状态（accepted 受理 / correction 补正 / decided 办结 / delivered 送达 / "
        "not_accepted 不予受理 / withdrawn 撤回）",
        required=True,
        max_length=20,
    ),
    FieldSpec("outcome", _S, "办结结果（approved 准予 / refused 不予）", max_length=20),
    FieldSpec("licence_number", _S, "准予时颁发的证照编号", max_length=120),
    FieldSpec("package_number", _S, "所属一件事编号", max_length=80),
    FieldSpec("opened_at", _D, "受理时间", required=True),
    FieldSpec("promised_due_at", _D, "承诺办结期限（含补正顺延）", required=True),
    FieldSpec("legal_due_at", _D, "法定办结期限（含补正顺延）", required=True),
    FieldSpec("decided_at", _D, "办结时间"),
    FieldSpec("closed_at", _D, "结束时间（办结、不予受理或撤回）"),
    *_APPLICANT,
)
_STEP_FIELDS = (
    FieldSpec("step", _S, "一件事编号/事项编码", required=True, max_length=160),
    FieldSpec("package_number", _S, "一件事编号", required=True, max_length=80),
    FieldSpec("package", _S, "一件事代码", required=True, max_length=64),
    FieldSpec("item", _S, "事项实施编码", required=True, max_length=64),
    FieldSpec("department", _S, "办理部门", required=True, max_length=63),
    FieldSpec(
        "state",
        _S,
        "环节状态（waiting 待前序 / ready 可受理 / open 办理中 / done 已准予 / "
        "failed 未通过 / blocked 前序未通过）",
        required=True,
        max_length=20,
    ),
    FieldSpec("case_number", _S, "办件编号", max_length=80),
    FieldSpec("licence_number", _S, "准予时颁发的证照编号", max_length=120),
    *_APPLICANT,
)


_MATERIAL_FIELDS = (
    FieldSpec("entry", _S, "办件编号/材料编码", required=True, max_length=160),
    FieldSpec("case_number", _S, "办件编号", required=True, max_length=80),
    FieldSpec("item", _S, "事项实施编码", required=True, max_length=64),
    FieldSpec("material", _S, "材料编码", required=True, max_length=64),
    FieldSpec("kind", _S, "deferred 容缺 / committed 告知承诺", required=True, max_length=20),
    FieldSpec(
        "state",
        _S,
        "open 待补齐或待核查 / supplied 已补齐 / checked 核查属实 / breached 逾期未补或承诺不实",
        required=True,
        max_length=20,
    ),
    FieldSpec("due_at", _D, "补齐或核查期限", required=True),
    FieldSpec("resolved_at", _D, "补齐、核查或违诺时间"),
    *_APPLICANT,
)


def materials_dataset(department: str) -> str:
    return f"{department}.case_materials"


def cases_dataset(department: str) -> str:
    return f"{department}.cases"


def steps_dataset(coordinator: str) -> str:
    return f"{coordinator}.package_steps"


def _spec(code: str, title: str, description: str, fields: tuple[FieldSpec, ...]) -> DatasetSpec:
    return DatasetSpec(
        code=code,
        title=title,
        description=description,
        schema=build_schema(fields, fields[0].name),
        subject_kind=SubjectKind.OTHER,
        update_frequency="实时",
        share_class=ShareClass.UNCONDITIONAL,
        conditions="",
        legal_basis=None,
    )


def _applicant(applicant: str | None) -> dict[str, object]:
    if applicant is None:
        return {"applicant_uscc": None, "applicant_citizen_id": None}
    try:
        return {
            "applicant_uscc": validate_subject_id(SubjectKind.ENTERPRISE, applicant),
            "applicant_citizen_id": None,
        }
    except InvalidSubjectId:
        return {"applicant_uscc": None, "applicant_citizen_id": applicant}


class CaseFeed:
    """Registers the case and package-step datasets (once per node) and builds their
    record changes. ``entry`` may take a pooled connection (the first time): call it
    before the transaction that publishes."""

    def __init__(self, datasets: DatasetStore) -> None:
        self._datasets = datasets
        self._entries: dict[str, DatasetEntry] = {}

    async def _entry(self, owner: str, spec: DatasetSpec, now: datetime) -> DatasetEntry:
        entry = self._entries.get(spec.code)
        if entry is None:
            entry = await self._datasets.register(owner, spec, publish=True, now=now)
            self._entries[spec.code] = entry
        return entry

    def cached_materials(self, department: str) -> DatasetEntry | None:
        return self._entries.get(materials_dataset(department))

    def cached(self, code: str) -> DatasetEntry | None:
        """The entry of dataset ``code`` if this node registered or found it already (no
        connection taken): for use inside a transaction."""
        return self._entries.get(code)

    async def cases_entry(self, department: str, now: datetime) -> DatasetEntry:
        spec = _spec(
            cases_dataset(department),
            "办件流转信息",
            "本部门办件的事项、状态、办结结果和期限；每次受理、补正、办结、送达、不予受理、"
            "撤回时更新",
            _CASE_FIELDS,
        )
        return await self._entry(department, spec, now)

    async def steps_entry(self, coordinator: str, now: datetime) -> DatasetEntry:
        spec = _spec(
            steps_dataset(coordinator),
            "一件事环节",
            "本部门牵头的一件事各环节的办理部门、状态和办件；环节可受理时，办理部门据此受理",
            _STEP_FIELDS,
        )
        return await self._entry(coordinator, spec, now)

    async def materials_entry(self, department: str, now: datetime) -> DatasetEntry:
        spec = _spec(
            materials_dataset(department),
            "容缺和告知承诺材料",
            "本部门办件中容缺受理的材料和以告知承诺代替的材料、期限和结果；逾期未补齐或承诺"
            "不实时更新为 breached",
            _MATERIAL_FIELDS,
        )
        return await self._entry(department, spec, now)

    @staticmethod
    def material_change(
        entry: DatasetEntry,
        case: Case,
        material: str,
        *,
        kind: str,
        state: str,
        due_at: datetime,
        resolved_at: datetime | None,
    ) -> Change:
        key = f"{case.number}/{material}"
        values: dict[str, object] = {
            "entry": key,
            "case_number": case.number,
            "item": case.item,
            "material": material,
            "kind": kind,
            "state": state,
            "due_at": due_at,
            "resolved_at": resolved_at,
            **_applicant(case.applicant),
        }
        return Change(key, validate_record(entry.schema, values))

    @staticmethod
    def case_change(entry: DatasetEntry, case: Case) -> Change:
        values: dict[str, object] = {
            "case_number": case.number,
            "item": case.item,
            "item_version": case.item_version,
            "state": case.state.value,
            "outcome": case.outcome.value if case.outcome else None,
            "licence_number": case.licence_number,
            "package_number": case.package_number,
            "opened_at": case.opened_at,
            "promised_due_at": case.promised_due_at,
            "legal_due_at": case.legal_due_at,
            "decided_at": case.decided_at,
            "closed_at": case.closed_at,
            **_applicant(case.applicant),
        }
        return Change(case.number, validate_record(entry.schema, values))

    @staticmethod
    def step_change(entry: DatasetEntry, package_number: str, package: str, step: Step) -> Change:
        key = f"{package_number}/{step.item}"
        values: dict[str, object] = {
            "step": key,
            "package_number": package_number,
            "package": package,
            "item": step.item,
            "department": step.department,
            "state": step.state.value,
            "case_number": step.case_number,
            "licence_number": step.licence_number,
            **_applicant(step.applicant),
        }
        return Change(key, validate_record(entry.schema, values))
