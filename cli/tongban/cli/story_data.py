"""The data of the DESIGN.md story (一件事一次办: opening a restaurant): the company, its
legal representative, and the datasets that hold them. Used by ``tongban demo`` and by
the story tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from decimal import Decimal

from tongban.client import ExchangeClient
from tongban.exchange.catalogue.subject_ids import citizen_id_check_digit, uscc_check_character
from tongban.v1 import catalogue_pb2, items_pb2, packages_pb2, values_pb2

# 统一社会信用代码 of the new company and 公民身份号码 of its legal representative, with
# their real check characters.
COMPANY_USCC = "91330102MA2K8Q7R1" + uscc_check_character("91330102MA2K8Q7R1")
OWNER_ID = "33010219850312002" + citizen_id_check_digit("33010219850312002")
CASE_ID = "SPJY-2026-000123"
PURPOSE = "食品经营许可审批"

T = values_pb2


def field(
    name: str,
    kind: values_pb2.FieldType.ValueType,
    description: str,
    *,
    personal: bool = False,
    required: bool = False,
) -> catalogue_pb2.FieldSpec:
    return catalogue_pb2.FieldSpec(
        name=name,
        type=kind,
        description=description,
        personal=personal,
        required=required,
    )


ENTERPRISE = catalogue_pb2.DatasetSpec(
    code="samr.enterprise",
    title="市场主体登记信息",
    description="企业名称、法定代表人、住所、注册资本等登记事项",
    fields=[
        field("uscc", T.FIELD_TYPE_STRING, "统一社会信用代码", required=True),
        field("name", T.FIELD_TYPE_STRING, "企业名称", required=True),
        field("legal_representative", T.FIELD_TYPE_STRING, "法定代表人", personal=True),
        field("legal_representative_id", T.FIELD_TYPE_STRING, "法定代表人身份证号", personal=True),
        field("address", T.FIELD_TYPE_STRING, "住所"),
        field("registered_capital", T.FIELD_TYPE_DECIMAL, "注册资本（万元）"),
        field("established", T.FIELD_TYPE_DATE, "成立日期"),
        field("business_scope", T.FIELD_TYPE_STRING, "经营范围"),
    ],
    key_field="uscc",
    subject_kind=catalogue_pb2.SUBJECT_KIND_ENTERPRISE,
    update_frequency="实时",
    share_class=catalogue_pb2.SHARE_CLASS_UNCONDITIONAL,
    # The legal representative's name is published by law (企业信用信息公示); the citizen
    # id is not, so others get it only under a grant for their purpose.
    personal_bases=[
        catalogue_pb2.PersonalBasis(
            law="企业信息公示暂行条例", article="第六条", fields=["legal_representative"]
        )
    ],
)

REPRESENTATIVE_ID_GRANTS = (
    ("police", "GA-0001", "印章刻制备案", "《印章治安管理办法》"),
    ("approval", "SP-0007", PURPOSE, "《食品经营许可和备案管理办法》第十二条"),
)
"""Who needs the legal representative's citizen id from samr.enterprise, as whom, for
which purpose, and under which law: police record it when a seal is engraved, approval
checks the representative's identity."""


async def grant_representative_ids(
    connect: Callable[[str, str], ExchangeClient], now: datetime
) -> list[str]:
    """Each department in ``REPRESENTATIVE_ID_GRANTS`` asks samr for the citizen id of
    samr.enterprise's legal representatives, and samr approves; returns the grant ids.
    ``connect(department, officer)`` opens a client."""
    granted = []
    for code, officer, purpose, law in REPRESENTATIVE_ID_GRANTS:
        async with connect(code, officer) as consumer:
            grant = await consumer.request_grant(
                "samr.enterprise",
                ["legal_representative_id"],
                purpose,
                law,
                now + timedelta(days=365),
            )
        async with connect("samr", "SC-0001") as samr:
            await samr.decide_grant(grant.id, approve=True, reason=f"{purpose}需核验法定代表人身份")
        granted.append(grant.id)
    return granted


async def grant_licence_representative(
    connect: Callable[[str, str], ExchangeClient], now: datetime
) -> str:
    """approval asks samr for the legal representative on business licences (a personal
    claim) for 食品经营许可审批, and samr approves; returns the grant id."""
    async with connect("approval", "SP-0007") as approval:
        grant = await approval.request_grant(
            "samr.licence_business_licence",
            ["legal_representative"],
            PURPOSE,
            "《食品经营许可和备案管理办法》第十二条",
            now + timedelta(days=365),
        )
    async with connect("samr", "SC-0001") as samr:
        await samr.decide_grant(grant.id, approve=True, reason="核验法定代表人")
    return grant.id


COMPANY = {
    "name": "杭州味道餐饮管理有限公司",
    "legal_representative": "王晓明",
    "legal_representative_id": OWNER_ID,
    "address": "浙江省杭州市上城区解放路88号",
    "registered_capital": Decimal("50.00"),
    "established": date(2026, 11, 2),
    "business_scope": "餐饮服务；食品销售",
}

PERSON = catalogue_pb2.DatasetSpec(
    code="police.person",
    title="人口基础信息",
    description="公民身份号码、姓名、性别、出生日期、户籍地址",
    fields=[
        field("citizen_id", T.FIELD_TYPE_STRING, "公民身份号码", required=True, personal=True),
        field("name", T.FIELD_TYPE_STRING, "姓名", personal=True),
        field("gender", T.FIELD_TYPE_STRING, "性别", personal=True),
        field("birth_date", T.FIELD_TYPE_DATE, "出生日期", personal=True),
        field("household_address", T.FIELD_TYPE_STRING, "户籍地址", personal=True),
    ],
    key_field="citizen_id",
    subject_kind=catalogue_pb2.SUBJECT_KIND_PERSON,
    update_frequency="每日",
    share_class=catalogue_pb2.SHARE_CLASS_CONDITIONAL,
    conditions="仅限审批、监管部门依法办理行政许可时核验身份，须经申请批准",
)

OWNER = {
    "name": "王晓明",
    "gender": "男",
    "birth_date": date(1985, 3, 12),
    "household_address": "浙江省杭州市西湖区文三路1号",
}

# Step 4 (审管互通): approval decisions and inspection results are datasets like any other,
# so the regulator subscribes to the bureau's decisions and the bureau to the regulator's
# inspection results. Both are keyed by document number (a decision or an inspection is
# not a person or a company); the company they concern is a field.
DECISION_NO = "杭上市监食许〔2026〕0123号"
INSPECTION_NO = "杭上市监检〔2026〕0456号"

DECISION = catalogue_pb2.DatasetSpec(
    code="approval.decision",
    title="行政许可决定",
    description="审批部门作出的行政许可决定，推送监管部门（审管互通）",
    fields=[
        field("decision_no", T.FIELD_TYPE_STRING, "许可决定文号", required=True),
        field("service_item", T.FIELD_TYPE_STRING, "事项名称", required=True),
        field("applicant_uscc", T.FIELD_TYPE_STRING, "申请人统一社会信用代码", required=True),
        field("applicant_name", T.FIELD_TYPE_STRING, "申请人名称"),
        field("decision", T.FIELD_TYPE_STRING, "决定（准予/不予许可）", required=True),
        field("licence_number", T.FIELD_TYPE_STRING, "证照编号"),
        field("decided_on", T.FIELD_TYPE_DATE, "决定日期", required=True),
        field("case_id", T.FIELD_TYPE_STRING, "办件编号"),
    ],
    key_field="decision_no",
    subject_kind=catalogue_pb2.SUBJECT_KIND_OTHER,
    update_frequency="实时",
    share_class=catalogue_pb2.SHARE_CLASS_UNCONDITIONAL,
)

INSPECTION = catalogue_pb2.DatasetSpec(
    code="regulator.inspection",
    title="监督检查结果",
    description="监管部门对许可事项的事中事后检查结果，回推审批部门",
    fields=[
        field("inspection_no", T.FIELD_TYPE_STRING, "检查文书编号", required=True),
        field("decision_no", T.FIELD_TYPE_STRING, "对应许可决定文号"),
        field("uscc", T.FIELD_TYPE_STRING, "统一社会信用代码", required=True),
        field("result", T.FIELD_TYPE_STRING, "检查结果", required=True),
        field("follow_up", T.FIELD_TYPE_STRING, "处理措施"),
        field("inspected_on", T.FIELD_TYPE_DATE, "检查日期", required=True),
    ],
    key_field="inspection_no",
    subject_kind=catalogue_pb2.SUBJECT_KIND_OTHER,
    update_frequency="实时",
    share_class=catalogue_pb2.SHARE_CLASS_UNCONDITIONAL,
)

APPROVAL_DECISION = {
    "service_item": "食品经营许可",
    "applicant_uscc": COMPANY_USCC,
    "applicant_name": COMPANY["name"],
    "decision": "准予许可",
    "decided_on": date(2026, 11, 20),
    "case_id": CASE_ID,
}

INSPECTION_RESULT = {
    "decision_no": DECISION_NO,
    "uscc": COMPANY_USCC,
    "result": "不符合要求",
    "follow_up": "建议撤销食品经营许可",
    "inspected_on": date(2026, 11, 23),
}

# Licences of the story: samr's business licence (step 1) and the bureau's food business
# permit (step 4), as the issuing systems send their claims.
BUSINESS_LICENCE_CLAIMS = {
    "name": COMPANY["name"],
    "uscc": COMPANY_USCC,
    "legal_representative": COMPANY["legal_representative"],
    "address": COMPANY["address"],
    "registered_capital": COMPANY["registered_capital"],
    "entity_type": "有限责任公司（自然人独资）",
    "business_scope": COMPANY["business_scope"],
    "established": COMPANY["established"],
}

FOOD_PERMIT_CLAIMS = {
    "operator_name": COMPANY["name"],
    "uscc": COMPANY_USCC,
    "legal_representative": COMPANY["legal_representative"],
    "premises_address": COMPANY["address"],
    "main_business": "餐饮服务经营者",
    "business_items": "热食类食品制售；冷食类食品制售",
}

#: The service item of step 3, registered by approval in the item catalogue.
SERVICE_ITEM = "food-business-permit"

#: The item itself: docs/examples/food-business-permit.item.yaml, as a message (the demo
#: runs from an installed package, without docs/; a test keeps the two the same).
FOOD_BUSINESS_PERMIT_ITEM = items_pb2.ItemSpec(
    code=SERVICE_ITEM,
    name="食品经营许可",
    legal_basis=(
        "《中华人民共和国食品安全法》第三十五条；《食品经营许可和备案管理办法》第十二条、第十九条"
    ),
    purpose=PURPOSE,
    legal_limit_days=10,
    promised_limit_days=5,
    immediate=False,
    issues_licence="food-business-permit",
    materials=[
        items_pb2.Material(
            code="business-licence",
            name="营业执照",
            required=True,
            licence=items_pb2.LicenceSource(
                licence_type="business-licence", disclose=["legal_representative"]
            ),
        ),
        items_pb2.Material(
            code="registration",
            name="市场主体登记信息（名称、住所、法定代表人）",
            required=True,
            dataset=items_pb2.DatasetSource(
                dataset="samr.enterprise",
                fields=["name", "address", "legal_representative", "legal_representative_id"],
            ),
        ),
        items_pb2.Material(
            code="legal-representative-identity",
            name="法定代表人身份证明",
            required=True,
            dataset=items_pb2.DatasetSource(
                dataset="police.person",
                fields=["name", "gender"],
                key_from=items_pb2.KeyFrom(
                    material="registration", field="legal_representative_id"
                ),
            ),
        ),
    ],
)


# 企业开办 as one package (一件事): a founder sets up a new company. 设立登记 issues the business
# licence to the company it creates; 公章刻制, 发票申领 and 社保登记 are then applied for by that
# company, whose licence is their one material, obtained electronically (docs/examples/
# enterprise-start.package.yaml is the same package as a file).
FOUNDER_ID = "33010219900307004" + citizen_id_check_digit("33010219900307004")
NEW_COMPANY_USCC = "91330102MA2K9B3C1" + uscc_check_character("91330102MA2K9B3C1")
NEW_COMPANY_LICENCE_CLAIMS = {
    **BUSINESS_LICENCE_CLAIMS,
    "name": "杭州一次办信息科技有限公司",
    "uscc": NEW_COMPANY_USCC,
    "legal_representative": "陈一帆",
    "business_scope": "信息技术服务",
}
PACKAGE_PURPOSE = "企业开办"


def _start_item(
    code: str, name: str, basis: str, *, issues: str = "", licence_material: bool = True
) -> items_pb2.ItemSpec:
    material = (
        items_pb2.Material(
            code="business-licence",
            name="营业执照",
            required=True,
            licence=items_pb2.LicenceSource(licence_type="business-licence"),
        )
        if licence_material
        else items_pb2.Material(
            code="application",
            name="公司登记（备案）申请书",
            required=True,
            submitted=items_pb2.SubmittedSource(),
        )
    )
    return items_pb2.ItemSpec(
        code=code,
        name=name,
        legal_basis=basis,
        purpose=PACKAGE_PURPOSE,
        legal_limit_days=15,
        promised_limit_days=1,
        issues_licence=issues,
        materials=[material],
    )


# (department, item) in the order the package runs them.
ENTERPRISE_START_ITEMS = (
    (
        "samr",
        _start_item(
            "enterprise-registration",
            "公司设立登记",
            "《中华人民共和国市场主体登记管理条例》第二十一条",
            issues="business-licence",
            licence_material=False,
        ),
    ),
    ("police", _start_item("seal-engraving", "印章刻制备案", "《印铸刻字业暨印章管理办法》")),
    (
        "tax",
        _start_item("invoice-application", "发票领用", "《中华人民共和国发票管理办法》第十五条"),
    ),
    (
        "hrss",
        _start_item(
            "social-insurance-registration",
            "单位参保登记",
            "《中华人民共和国社会保险法》第五十七条",
        ),
    ),
)
ENTERPRISE_START = packages_pb2.PackageSpec(
    code="enterprise-start",
    name="企业开办",
    description="设立登记、公章刻制、发票申领、社保登记，一次申请、一次办结",
    steps=[
        packages_pb2.PackageStepSpec(item="enterprise-registration"),
        *(
            packages_pb2.PackageStepSpec(
                item=item.code,
                after=["enterprise-registration"],
                applicant_from="enterprise-registration",
            )
            for _, item in ENTERPRISE_START_ITEMS[1:]
        ),
    ],
)


# 容缺受理 (issue 16): the bureau's permit with a site plan that may follow within two
# working days; a breach suspends the permit the case issued, and the regulator checks
# the hygiene commitment (告知承诺) that may replace the staff health certificates.
DEFERRED_PERMIT_ITEM = items_pb2.ItemSpec(
    code="food-business-permit-fast",
    name="食品经营许可（容缺受理、告知承诺）",
    legal_basis=FOOD_BUSINESS_PERMIT_ITEM.legal_basis,
    purpose=PURPOSE,
    legal_limit_days=10,
    promised_limit_days=3,
    issues_licence="food-business-permit",
    on_breach="suspend",
    supervisors=["regulator"],
    materials=[
        items_pb2.Material(
            code="application", name="食品经营许可申请书", required=True,
            submitted=items_pb2.SubmittedSource(),
        ),
        items_pb2.Material(
            code="site-plan", name="经营场所平面布局图", required=True,
            submitted=items_pb2.SubmittedSource(), defer_days=2,
        ),
        items_pb2.Material(
            code="health-certificates", name="从业人员健康证明", required=True,
            submitted=items_pb2.SubmittedSource(), commitment_check_days=5,
        ),
    ],
)  # fmt: skip
