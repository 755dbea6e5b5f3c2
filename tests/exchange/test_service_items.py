"""The service-item catalogue (事项目录, issue 15): items registered over mutual TLS as
data, versioned, checked against the catalogue and the licence types, and read by the
materials resolver (免提交); and ``tongban item`` as a department runs it."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from tests.cli_helpers import atongban
from tests.conftest import client_for
from tests.exchange.test_page_tokens import altered_token
from tests.stories.restaurant import (
    BUSINESS_LICENCE_CLAIMS,
    CASE_ID,
    COMPANY,
    COMPANY_USCC,
    ENTERPRISE,
    FOOD_BUSINESS_PERMIT_ITEM,
    OWNER,
    OWNER_ID,
    PERSON,
    SERVICE_ITEM,
)
from tongban.cli.item_cmds import load_item_file
from tongban.cli.story_data import grant_representative_ids
from tongban.client import ExchangeError, _replies
from tongban.exchange.enrolment import bundle_dir
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.licensing.item_store import ServiceItemStore
from tongban.exchange.node import Node
from tongban.exchange.pagetokens import PageTokenInvalid, PageTokens
from tongban.licence import BUILTIN_REGISTRY
from tongban.v1 import items_pb2

EXAMPLE = (
    Path(__file__).resolve().parents[2] / "docs" / "examples" / "food-business-permit.item.yaml"
)


async def _catalogue(node: Node) -> None:
    """The datasets the food permit names, published."""
    async with client_for(node, "samr", "SC-0001") as samr:
        await samr.register_dataset(ENTERPRISE, publish=True)
        await samr.publish_records("samr.enterprise", [(COMPANY_USCC, COMPANY)])
    async with client_for(node, "police", "GA-0001") as police:
        await police.register_dataset(PERSON, publish=True)
        await police.publish_records("police.person", [(OWNER_ID, OWNER)])


def _food_item(**changes: object) -> items_pb2.ItemSpec:
    spec = items_pb2.ItemSpec()
    spec.CopyFrom(FOOD_BUSINESS_PERMIT_ITEM)
    for name, value in changes.items():
        setattr(spec, name, value)
    return spec


async def _refused(node: Node, spec: items_pb2.ItemSpec, dept: str = "approval") -> ExchangeError:
    async with client_for(node, dept) as client:
        with pytest.raises(ExchangeError) as caught:
            await client.register_item(spec)
    return caught.value


def test_the_example_file_is_the_demo_item() -> None:
    assert load_item_file(EXAMPLE) == FOOD_BUSINESS_PERMIT_ITEM


async def test_register_get_list_and_versions(node: Node) -> None:
    await _catalogue(node)
    async with client_for(node, "approval", "SP-0007") as approval:
        first = await approval.register_item(FOOD_BUSINESS_PERMIT_ITEM)
        again = await approval.register_item(FOOD_BUSINESS_PERMIT_ITEM)
        faster = await approval.register_item(_food_item(promised_limit_days=3))
    assert (first.department, first.version, again.version, faster.version) == (
        "approval",
        1,
        1,
        2,
    )
    # Stored as registered, materials in order: what the client reads the spec sent as.
    assert (
        first.spec
        == _replies.service_item(items_pb2.ServiceItem(spec=FOOD_BUSINESS_PERMIT_ITEM)).spec
    )
    async with client_for(node, "tax") as tax:  # any department reads the catalogue
        current = await tax.get_item(SERVICE_ITEM)
        old = await tax.get_item(SERVICE_ITEM, version=1)
        listed = await tax.list_items()
        of_samr = await tax.list_items(department="samr")
        with pytest.raises(ExchangeError) as unknown:
            await tax.get_item("fishing-permit")
        with pytest.raises(ExchangeError) as no_version:
            await tax.get_item(SERVICE_ITEM, version=3)
    assert (current.version, current.spec.promised_limit_days) == (2, 3)
    assert (old.version, old.spec.promised_limit_days) == (1, 5)
    assert [(i.spec.code, i.version) for i in listed] == [(SERVICE_ITEM, 2)]
    assert of_samr == []
    assert unknown.value.reason == "SERVICE_ITEM_UNKNOWN"
    assert no_version.value.reason == "SERVICE_ITEM_UNKNOWN"


async def test_pages_follow_signed_tokens(node: Node) -> None:
    assert node.db is not None
    assert node.sharing is not None
    async with client_for(node, "approval") as approval:
        for code in ("item-a", "item-b", "item-c"):
            await approval.register_item(_submitted_only(code))
    tokens = PageTokens.ephemeral()
    store = ServiceItemStore(node.db.pool, node.sharing.datasets, BUILTIN_REGISTRY, tokens)
    seen: list[str] = []
    page, token = await store.list(page_size=2)
    seen += [i.code for i in page]
    page, last = await store.list(page_size=2, page_token=token)
    seen += [i.code for i in page]
    assert (seen, last) == (["item-a", "item-b", "item-c"], "")
    with pytest.raises(PageTokenInvalid):
        await store.list(page_size=2, page_token=altered_token(token))
    with pytest.raises(InvalidArgument):
        await store.list(page_size=501)


def _submitted_only(code: str) -> items_pb2.ItemSpec:
    return items_pb2.ItemSpec(
        code=code,
        name="测试事项",
        legal_basis="《测试条例》第一条",
        purpose="测试",
        legal_limit_days=20,
        promised_limit_days=10,
        materials=[
            items_pb2.Material(
                code="form", name="申请表", required=True, submitted=items_pb2.SubmittedSource()
            )
        ],
    )


def _material(spec: items_pb2.ItemSpec, code: str) -> items_pb2.Material:
    return next(m for m in spec.materials if m.code == code)


def _with(change: Callable[[items_pb2.ItemSpec], None]) -> items_pb2.ItemSpec:
    spec = _food_item()
    change(spec)
    return spec


def _set_dataset(code: str, dataset: str) -> Callable[[items_pb2.ItemSpec], None]:
    return lambda spec: setattr(_material(spec, code).dataset, "dataset", dataset)


def _add_field(code: str, name: str) -> Callable[[items_pb2.ItemSpec], None]:
    return lambda spec: _material(spec, code).dataset.fields.append(name)


def _licence_type(spec: items_pb2.ItemSpec) -> None:
    _material(spec, "business-licence").licence.licence_type = "fishing-licence"


def _claim(spec: items_pb2.ItemSpec) -> None:
    _material(spec, "business-licence").licence.disclose.append("shoe_size")


def _cycle(spec: items_pb2.ItemSpec) -> None:
    # registration keyed by the identity, the identity keyed by the registration.
    key = _material(spec, "registration").dataset.key_from
    key.material, key.field = "legal-representative-identity", "name"


def _forward(spec: items_pb2.ItemSpec) -> None:
    # The identity first: it takes its key from the registration, listed after it.
    identity, registration = spec.materials[2], spec.materials[1]
    materials = [spec.materials[0], identity, registration]
    copies = [items_pb2.Material() for _ in materials]
    for copy, original in zip(copies, materials, strict=True):
        copy.CopyFrom(original)
    del spec.materials[:]
    spec.materials.extend(copies)


def _no_source(spec: items_pb2.ItemSpec) -> None:
    _material(spec, "registration").ClearField("dataset")


def _missing_field(spec: items_pb2.ItemSpec) -> None:
    _material(spec, "legal-representative-identity").dataset.key_from.field = "address_id"


BAD = {
    "promised above legal": (
        _food_item(promised_limit_days=11),
        "TIME_LIMIT_INVALID",
        "",
        "promised",
    ),
    "immediate with a promised limit": (
        _food_item(immediate=True),
        "TIME_LIMIT_INVALID",
        "",
        "即办",
    ),
    "unknown dataset": (
        _with(_set_dataset("registration", "samr.companies")),
        "MATERIAL_SOURCE_UNKNOWN",
        "registration",
        "samr.companies",
    ),
    "unpublished dataset of another department": (
        _with(_set_dataset("registration", "samr.draft")),
        "MATERIAL_SOURCE_UNKNOWN",
        "registration",
        "samr.draft",
    ),
    "unknown field": (
        _with(_add_field("registration", "shareholders")),
        "MATERIAL_SOURCE_UNKNOWN",
        "registration",
        "shareholders",
    ),
    "unknown licence type": (
        _with(_licence_type),
        "MATERIAL_SOURCE_UNKNOWN",
        "business-licence",
        "fishing-licence",
    ),
    "unknown claim": (
        _with(_claim),
        "MATERIAL_SOURCE_UNKNOWN",
        "business-licence",
        "shoe_size",
    ),
    "key_from cycle": (_with(_cycle), "MATERIAL_KEY_CYCLE", "registration", "→"),
    "key_from forward": (
        _with(_forward),
        "MATERIAL_KEY_INVALID",
        "legal-representative-identity",
        "not a material listed before it",
    ),
    "key_from field not returned": (
        _with(_missing_field),
        "MATERIAL_KEY_INVALID",
        "legal-representative-identity",
        "address_id",
    ),
    "material without a source": (
        _with(_no_source),
        "SERVICE_ITEM_INVALID",
        "registration",
        "no source",
    ),
    "deferral days out of bounds": (
        _with(lambda s: setattr(_material(s, "registration"), "defer_days", 366)),
        "SERVICE_ITEM_INVALID",
        "registration",
        "defer_days",
    ),
    "commitment days out of bounds": (
        _with(lambda s: setattr(_material(s, "registration"), "commitment_check_days", 2**32 - 1)),
        "SERVICE_ITEM_INVALID",
        "registration",
        "commitment_check_days",
    ),
}


async def test_each_bad_item_gets_its_reason_and_names_the_material(node: Node) -> None:
    await _catalogue(node)
    async with client_for(node, "samr") as samr:
        unpublished = type(ENTERPRISE)()
        unpublished.CopyFrom(ENTERPRISE)
        unpublished.code = "samr.draft"
        await samr.register_dataset(unpublished, publish=False)
    for case, (spec, reason, material, words) in BAD.items():
        error = await _refused(node, spec)
        assert error.reason == reason, (case, error.reason, error.message)
        assert error.metadata.get("material", "") == material, (case, error.metadata)
        assert material in error.message, (case, error.message)
        assert words in error.message, (case, error.message)
    # Nothing was stored by any of them.
    async with client_for(node, "approval") as approval:
        assert await approval.list_items() == []


async def test_only_the_handling_department_registers_new_versions(node: Node) -> None:
    await _catalogue(node)
    async with client_for(node, "approval") as approval:
        await approval.register_item(FOOD_BUSINESS_PERMIT_ITEM)
    error = await _refused(node, _food_item(promised_limit_days=1), dept="samr")
    assert error.reason == "SERVICE_ITEM_NOT_OWNER"
    assert "approval" in error.message
    async with client_for(node, "samr") as samr:
        current = await samr.get_item(SERVICE_ITEM)
    assert (current.version, current.department, current.spec.promised_limit_days) == (
        1,
        "approval",
        5,
    )


async def test_a_newly_registered_item_resolves(node: Node) -> None:
    """Any registered item works: one needing only the business licence, with a plan
    the applicant submits (a commitment may replace it) and an optional photo."""
    await _catalogue(node)
    await grant_representative_ids(partial(client_for, node), node.clock.now())
    async with client_for(node, "samr", "SC-0001") as samr:
        licence = await samr.issue_licence(
            "business-licence", BUSINESS_LICENCE_CLAIMS, case_id="DJ-2026-0001"
        )
    item = items_pb2.ItemSpec(
        code="outdoor-sign-permit",
        name="户外招牌设置审批",
        legal_basis="《城市市容和环境卫生管理条例》第十一条",
        purpose="户外招牌设置审批",
        legal_limit_days=20,
        promised_limit_days=3,
        materials=[
            items_pb2.Material(
                code="business-licence",
                name="营业执照",
                required=True,
                licence=items_pb2.LicenceSource(licence_type="business-licence"),
            ),
            items_pb2.Material(
                code="sign-plan",
                name="招牌设置方案",
                required=True,
                submitted=items_pb2.SubmittedSource(),
                commitment_check_days=30,
            ),
            items_pb2.Material(
                code="site-photo",
                name="现场照片",
                required=False,
                submitted=items_pb2.SubmittedSource(),
                defer_days=5,
            ),
        ],
    )
    async with client_for(node, "approval", "SP-0007") as approval:
        registered = await approval.register_item(item)
        resolved = await approval.resolve_materials("outdoor-sign-permit", COMPANY_USCC, CASE_ID)
    assert (registered.version, resolved.item_version) == (1, 1)
    by_code = {m.code: m for m in resolved.materials}
    assert list(by_code) == ["business-licence", "sign-plan", "site-photo"]
    assert (by_code["business-licence"].source, by_code["business-licence"].reference) == (
        "licence",
        licence.number,
    )
    assert json.loads(by_code["business-licence"].values_json)["uscc"] == COMPANY_USCC
    plan = by_code["sign-plan"]
    assert (plan.satisfied, plan.required, plan.reason) == (False, True, "SUBMITTED_BY_APPLICANT")
    assert "告知承诺" in plan.message
    photo = by_code["site-photo"]
    assert (photo.satisfied, photo.required) == (False, False)
    assert "容缺" in photo.message
    assert resolved.to_submit == 1  # the optional photo is not counted


async def test_item_commands(node: Node, tmp_path: Path) -> None:
    await _catalogue(node)
    endpoint = f"127.0.0.1:{node.grpc_port}"

    def dept(code: str) -> list[str]:
        return ["--as", str(bundle_dir(node.settings, code)), "--endpoint", endpoint]

    registered = await atongban("item", "register", str(EXAMPLE), *dept("approval"), "--json")
    assert registered.code == 0, registered.stdout + registered.stderr
    assert registered.json()["item"]["version"] == 1
    listed = await atongban("item", "list", *dept("tax"), "--json")
    assert [i["spec"]["code"] for i in listed.json()["items"]] == [SERVICE_ITEM]
    shown = await atongban("item", "show", SERVICE_ITEM, *dept("tax"))
    assert shown.code == 0, shown.stderr
    assert "promised 5 / legal 10 working days" in shown.stdout
    assert "keyed by legal_representative_id of registration" in shown.stdout

    two_sources = tmp_path / "bad.item.json"
    two_sources.write_text(
        json.dumps(
            {
                "code": "x-1",
                "name": "x",
                "legal_basis": "x",
                "purpose": "x",
                "legal_limit_days": 1,
                "promised_limit_days": 1,
                "materials": [
                    {
                        "code": "a",
                        "name": "a",
                        "submitted": True,
                        "licence": {"type": "business-licence"},
                    }
                ],
            }
        )
    )
    bad = await atongban("item", "register", str(two_sources), *dept("approval"), "--json")
    assert bad.code == 1
    assert bad.json()["reason"] == "INVALID_ARGUMENT"
    assert "materials.0" in bad.json()["message"]
    too_fast = tmp_path / "fast.item.yaml"
    too_fast.write_text(
        EXAMPLE.read_text(encoding="utf-8").replace(
            "promised_limit_days: 5", "promised_limit_days: 12"
        ),
        encoding="utf-8",
    )
    refused = await atongban("item", "register", str(too_fast), *dept("approval"), "--json")
    assert refused.code == 1
    assert refused.json()["reason"] == "TIME_LIMIT_INVALID"
    missing = await atongban("item", "show", "nope", *dept("tax"), "--json")
    assert missing.json()["reason"] == "SERVICE_ITEM_UNKNOWN"
