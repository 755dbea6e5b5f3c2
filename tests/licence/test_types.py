from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from tongban.exchange.catalogue.errors import InvalidSubjectId
from tongban.exchange.catalogue.subject_ids import (
    SubjectKind,
    uscc_check_character,
    validate_subject_id,
)
from tongban.licence.errors import ClaimInvalid, LicenceError, LicenceTypeUnknown
from tongban.licence.types import (
    BUILTIN_REGISTRY,
    BUILTIN_TYPES,
    BUSINESS_LICENCE,
    FOOD_BUSINESS_PERMIT,
    ClaimField,
    LicenceType,
    LicenceTypeRegistry,
    default_expiry,
    split_claims,
    validate_claims,
)

USCC = "91330102MA2K8Q7R1" + uscc_check_character("91330102MA2K8Q7R1")


def _uscc(value: str) -> str:
    return validate_subject_id(SubjectKind.ENTERPRISE, value)


def _company(**changes: object) -> dict[str, object]:
    claims: dict[str, object] = {
        "name": "杭州味道餐饮管理有限公司",
        "uscc": USCC,
        "legal_representative": "王晓明",
        "address": "浙江省杭州市上城区解放路88号",
        "registered_capital": Decimal("50.00"),
        "entity_type": "有限责任公司（自然人独资）",
        "business_scope": "餐饮服务；食品销售",
        "established": date(2026, 11, 2),
    }
    claims.update(changes)
    return claims


def _problem(claims: Mapping[str, object], licence_type: LicenceType = BUSINESS_LICENCE) -> str:
    with pytest.raises(ClaimInvalid) as caught:
        validate_claims(licence_type, claims, validate_holder=_uscc)
    assert caught.value.metadata["licence_type"] == licence_type.code
    return f"{caught.value.metadata['claim']}:{caught.value.metadata['problem']}"


# --- the built-in types -------------------------------------------------------------------


def test_builtin_types() -> None:
    assert BUILTIN_TYPES == (BUSINESS_LICENCE, FOOD_BUSINESS_PERMIT)
    assert BUSINESS_LICENCE.name_zh == "营业执照"
    assert BUSINESS_LICENCE.issuers == ("samr",)
    assert BUSINESS_LICENCE.vct == "urn:tongban:licence:business-licence:1"
    assert BUSINESS_LICENCE.validity_days is None
    assert BUSINESS_LICENCE.disclosable_claims == {"legal_representative"}
    assert BUSINESS_LICENCE.claim("legal_representative").personal
    assert BUSINESS_LICENCE.claim("registered_capital").type == "decimal"
    assert BUSINESS_LICENCE.holder_claim == "uscc"
    assert [c.name for c in BUSINESS_LICENCE.claims] == [
        "name",
        "uscc",
        "legal_representative",
        "address",
        "registered_capital",
        "entity_type",
        "business_scope",
        "established",
    ]

    assert FOOD_BUSINESS_PERMIT.name_zh == "食品经营许可证"
    assert FOOD_BUSINESS_PERMIT.issuers == ("approval",)
    assert FOOD_BUSINESS_PERMIT.revokers == ("regulator",)
    assert FOOD_BUSINESS_PERMIT.may_change_status("regulator")
    assert not FOOD_BUSINESS_PERMIT.may_change_status("tax")
    assert not BUSINESS_LICENCE.may_change_status("regulator")
    assert FOOD_BUSINESS_PERMIT.disclosable_claims == {"legal_representative"}
    assert FOOD_BUSINESS_PERMIT.holder_claim == "uscc"
    assert {c.name for c in FOOD_BUSINESS_PERMIT.claims} == {
        "operator_name",
        "uscc",
        "legal_representative",
        "premises_address",
        "main_business",
        "business_items",
    }


def test_default_expiry() -> None:
    start = datetime(2026, 11, 2, tzinfo=UTC)
    assert default_expiry(BUSINESS_LICENCE, start) is None  # 长期
    assert default_expiry(FOOD_BUSINESS_PERMIT, start) == datetime(2031, 11, 2, tzinfo=UTC)
    assert default_expiry(FOOD_BUSINESS_PERMIT, start) == start + timedelta(days=1826)


def test_registry() -> None:
    assert BUILTIN_REGISTRY.get("business-licence") is BUSINESS_LICENCE
    assert BUILTIN_REGISTRY.by_vct(FOOD_BUSINESS_PERMIT.vct) is FOOD_BUSINESS_PERMIT
    assert "food-business-permit" in BUILTIN_REGISTRY
    assert list(BUILTIN_REGISTRY) == list(BUILTIN_TYPES)
    assert len(BUILTIN_REGISTRY) == 2


def test_unknown_type_lists_the_known_codes() -> None:
    with pytest.raises(LicenceTypeUnknown) as caught:
        BUILTIN_REGISTRY.get("driving-licence")
    assert caught.value.reason == "LICENCE_TYPE_UNKNOWN"
    assert caught.value.metadata == {"code": "driving-licence"}
    assert "business-licence, food-business-permit" in caught.value.message
    with pytest.raises(LicenceTypeUnknown):
        BUILTIN_REGISTRY.by_vct("urn:tongban:licence:business-licence:2")
    with pytest.raises(LicenceTypeUnknown) as empty:
        LicenceTypeRegistry([]).get("business-licence")
    assert "none" in empty.value.message


def test_registry_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        LicenceTypeRegistry([BUSINESS_LICENCE, BUSINESS_LICENCE])
    renamed = BUSINESS_LICENCE.model_copy(update={"code": "business-licence-copy"})
    with pytest.raises(ValueError, match="vct"):
        LicenceTypeRegistry([BUSINESS_LICENCE, renamed])


# --- validate_claims -------------------------------------------------------------------------


def test_validate_normalises() -> None:
    claims = _company(
        name="  杭州味道餐饮管理有限公司 ",
        uscc=USCC.lower(),
        registered_capital="50.00",
        established="2026-11-02",
    )
    out = validate_claims(BUSINESS_LICENCE, claims, validate_holder=_uscc)
    assert out == {
        "name": "杭州味道餐饮管理有限公司",
        "uscc": USCC,
        "legal_representative": "王晓明",
        "address": "浙江省杭州市上城区解放路88号",
        "registered_capital": "50.00",
        "entity_type": "有限责任公司（自然人独资）",
        "business_scope": "餐饮服务；食品销售",
        "established": "2026-11-02",
    }
    assert list(out) == [c.name for c in BUSINESS_LICENCE.claims]
    json.dumps(out)  # every value is JSON


def test_full_width_uscc_is_normalised_by_the_holder_validator() -> None:
    full_width = "".join(chr(ord(c) + 0xFEE0) for c in USCC)
    out = validate_claims(BUSINESS_LICENCE, _company(uscc=full_width), validate_holder=_uscc)
    assert out["uscc"] == USCC


def test_decimal_forms() -> None:
    for given_value, expected in [
        (Decimal("50.00"), "50.00"),
        (Decimal("5E+1"), "50"),
        (50, "50"),
        ("0.5", "0.5"),
        ("-3", "-3"),
    ]:
        out = validate_claims(
            BUSINESS_LICENCE, _company(registered_capital=given_value), validate_holder=_uscc
        )
        assert out["registered_capital"] == expected


def test_optional_claims_may_be_left_out() -> None:
    for absent in (None, "", "  "):
        out = validate_claims(
            BUSINESS_LICENCE, _company(registered_capital=absent), validate_holder=_uscc
        )
        assert "registered_capital" not in out
    claims = _company()
    del claims["registered_capital"]
    assert "registered_capital" not in validate_claims(
        BUSINESS_LICENCE, claims, validate_holder=_uscc
    )


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"name": None}, "name:missing"),
        ({"name": "   "}, "name:missing"),
        ({"spouse": "x"}, "spouse:unknown"),
        ({"name": 42}, "name:type"),
        ({"name": "名" * 101}, "name:length"),
        ({"name": "杭州\x00味道"}, "name:value"),
        ({"name": "杭州\u200b味道"}, "name:value"),
        ({"registered_capital": 50.0}, "registered_capital:type"),
        ({"registered_capital": True}, "registered_capital:type"),
        ({"registered_capital": "50,00"}, "registered_capital:type"),
        ({"registered_capital": "1e3"}, "registered_capital:type"),
        ({"registered_capital": Decimal("NaN")}, "registered_capital:value"),
        ({"registered_capital": Decimal("Infinity")}, "registered_capital:value"),
        ({"registered_capital": "9" * 41}, "registered_capital:value"),
        ({"established": datetime(2026, 11, 2, tzinfo=UTC)}, "established:type"),
        ({"established": 20261102}, "established:type"),
        ({"established": "2026-02-30"}, "established:value"),
        ({"established": "20261102"}, "established:value"),
        ({"established": "2026-11-02T00:00"}, "established:value"),
        ({"uscc": "91330102MA2K8Q7R10"}, "uscc:holder_id"),
    ],
)
def test_invalid_claims_name_the_field(changes: dict[str, object], problem: str) -> None:
    assert _problem(_company(**changes)) == problem


def test_business_scope_may_span_lines() -> None:
    out = validate_claims(
        BUSINESS_LICENCE,
        _company(business_scope="餐饮服务\n食品销售"),
        validate_holder=_uscc,
    )
    assert out["business_scope"] == "餐饮服务\n食品销售"


def test_holder_validator_failure_is_chained() -> None:
    bad = USCC[:-1] + ("0" if USCC[-1] != "0" else "1")
    with pytest.raises(ClaimInvalid) as caught:
        validate_claims(BUSINESS_LICENCE, _company(uscc=bad), validate_holder=_uscc)
    assert isinstance(caught.value.__cause__, InvalidSubjectId)
    assert caught.value.metadata["problem"] == "holder_id"

    def refuse(value: str) -> str:
        raise ValueError("not on the register")

    with pytest.raises(ClaimInvalid, match="not on the register"):
        validate_claims(BUSINESS_LICENCE, _company(), validate_holder=refuse)


def test_holder_validator_errors_other_than_value_errors_propagate() -> None:
    def broken(value: str) -> str:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        validate_claims(BUSINESS_LICENCE, _company(), validate_holder=broken)


def test_food_business_permit_claims() -> None:
    claims = {
        "operator_name": "杭州味道餐饮管理有限公司",
        "uscc": USCC,
        "legal_representative": "王晓明",
        "premises_address": "浙江省杭州市上城区解放路88号",
        "main_business": "餐饮服务经营者",
        "business_items": "热食类食品制售",
    }
    assert validate_claims(FOOD_BUSINESS_PERMIT, claims, validate_holder=_uscc) == claims
    bad = {**claims, "main_business": "网吧"}
    assert _problem(bad, FOOD_BUSINESS_PERMIT) == "main_business:value"


def test_claim_errors_are_licence_errors() -> None:
    assert issubclass(ClaimInvalid, LicenceError)
    assert ClaimInvalid.reason == "LICENCE_CLAIM_INVALID"


def test_split_claims() -> None:
    out = validate_claims(BUSINESS_LICENCE, _company(), validate_holder=_uscc)
    clear, disclosable = split_claims(BUSINESS_LICENCE, out)
    assert disclosable == {"legal_representative": "王晓明"}
    assert clear == {k: v for k, v in out.items() if k != "legal_representative"}
    with pytest.raises(ClaimInvalid):
        split_claims(BUSINESS_LICENCE, {"spouse": "x"})


@given(
    st.fixed_dictionaries(
        {
            "name": st.text(min_size=1, max_size=100),
            "address": st.text(min_size=1, max_size=200),
            "registered_capital": st.decimals(allow_nan=False, allow_infinity=False, places=2),
            "established": st.dates(),
        }
    )
)
def test_validation_is_idempotent(changes: dict[str, object]) -> None:
    try:
        once = validate_claims(BUSINESS_LICENCE, _company(**changes), validate_holder=_uscc)
    except ClaimInvalid:
        return  # control characters, blank text: refused, which is fine
    assert validate_claims(BUSINESS_LICENCE, once, validate_holder=_uscc) == once


# --- types from configuration (pydantic at the edge) ---------------------------------------------


def test_json_round_trip() -> None:
    for licence_type in BUILTIN_TYPES:
        assert LicenceType.model_validate_json(licence_type.model_dump_json()) == licence_type


def _type_json(**changes: object) -> str:
    data = json.loads(BUSINESS_LICENCE.model_dump_json())
    data.update(changes)
    return json.dumps(data)


def _claim(**changes: object) -> dict[str, object]:
    data: dict[str, object] = {
        "name": "x",
        "type": "string",
        "label_zh": "某",
        "label_en": "x",
        "max_length": 10,
    }
    data.update(changes)
    return data


@pytest.mark.parametrize(
    "changes",
    [
        {"colour": "red"},  # extra="forbid"
        {"code": "Business Licence"},
        {"number_prefix": "yyzz"},
        {"vct": "not a uri"},
        {"issuers": []},
        {"issuers": ["samr", "samr"]},
        {"issuers": ["SAMR"]},
        {"revokers": ["samr"]},  # an issuer may already change status
        {"revokers": ["regulator", "regulator"]},
        {"validity_days": 0},
        {"validity_days": "365"},  # strict: no string-to-int coercion
        {"holder_kind": "robot"},
        {"claims": []},
        {"claims": [_claim(), _claim()]},
        {"claims": [_claim(max_length=None)]},
        {"claims": [_claim(type="integer")]},
        {"claims": [_claim(type="enum", max_length=None)]},
        {"claims": [_claim(type="enum", max_length=None, choices=["a", "a"])]},
        {"claims": [_claim(choices=["a"])]},
        {"claims": [_claim(holder_id=True, disclosable=True)]},
        {"claims": [_claim(holder_id=True, required=False)]},
        {"claims": [_claim(name="a", holder_id=True), _claim(name="b", holder_id=True)]},
        {"claims": [_claim(required="yes")]},
        {"claims": [_claim(name="Legal-Rep")]},
        {"claims": [_claim(type="float")]},
    ],
)
def test_invalid_type_definitions_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        LicenceType.model_validate_json(_type_json(**changes))


def test_models_are_frozen() -> None:
    with pytest.raises(ValidationError):
        BUSINESS_LICENCE.code = "x"
    field = ClaimField.model_validate(_claim())
    assert field.required
    assert not field.disclosable
