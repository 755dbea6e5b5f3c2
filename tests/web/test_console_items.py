"""The console's item catalogue (事项目录) and the packages (一件事) in the applicant's
progress view (进度查询), in a real browser against a node started by the test: items
and a package registered, opened and moved through the real client, then found on the
pages, with names that try to inject markup shown as text."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from playwright.async_api import BrowserContext, Page

from tests.conftest import client_for
from tests.stories.restaurant import BUSINESS_LICENCE_CLAIMS, COMPANY_USCC, OWNER_ID
from tests.stories.test_sharing import _publish_story_data
from tongban.exchange.node import Node
from tongban.exchange.web import LinkStore
from tongban.signing.clock import FixedClock
from tongban.v1 import cases_pb2, items_pb2, packages_pb2

ESTABLISH, SEAL, INVOICE, SOCIAL = "wc-establish", "wc-seal", "wc-invoice", "wc-social"
PACKAGE = "wc-enterprise-start"
DECIDED = cases_pb2.CASE_STATE_DECIDED
APPROVED, REFUSED = cases_pb2.CASE_OUTCOME_APPROVED, cases_pb2.CASE_OUTCOME_REFUSED
SCRIPT_NAME = "<script>document.title='pwned'</script>社保登记"
IMG_MATERIAL = "<img src=x onerror=\"document.title='pwned'\">参保表"


def _base(node: Node) -> str:
    return f"http://127.0.0.1:{node.http_port}"


def _submitted(code: str, name: str, *, defer: int = 0, check: int = 0) -> items_pb2.Material:
    return items_pb2.Material(
        code=code,
        name=name,
        required=True,
        submitted=items_pb2.SubmittedSource(),
        defer_days=defer,
        commitment_check_days=check,
    )


def _licence_material() -> items_pb2.Material:
    return items_pb2.Material(
        code="business-licence",
        name="营业执照",
        required=True,
        licence=items_pb2.LicenceSource(
            licence_type="business-licence", disclose=["legal_representative"]
        ),
    )


def _spec(
    code: str, name: str, materials: list[items_pb2.Material], *, issues_licence: str = ""
) -> items_pb2.ItemSpec:
    return items_pb2.ItemSpec(
        code=code,
        name=name,
        legal_basis="《市场主体登记管理条例》第三条",
        purpose="企业开办",
        legal_limit_days=10,
        promised_limit_days=2,
        materials=materials,
        issues_licence=issues_licence,
    )


async def _register(node: Node) -> None:
    """The four items of 企业开办 (one with a dataset material, one whose name tries to
    inject a script) and the package, coordinated by the approval bureau."""
    await _publish_story_data(node)  # samr.enterprise, for the dataset material
    specs = {
        "samr": _spec(
            ESTABLISH, "设立登记",
            [
                _submitted("application", "设立登记申请书", check=30),
                _submitted("articles", "公司章程", defer=5),
            ],
            issues_licence="business-licence",
        ),
        "police": _spec(SEAL, "公章刻制", [_licence_material()]),
        "tax": _spec(
            INVOICE, "发票申领",
            [
                _licence_material(),
                items_pb2.Material(
                    code="registration", name="市场主体登记信息", required=True,
                    dataset=items_pb2.DatasetSource(
                        dataset="samr.enterprise", fields=["name", "address"]
                    ),
                ),
            ],
        ),
        "hrss": _spec(SOCIAL, SCRIPT_NAME, [_submitted("enrolment", IMG_MATERIAL)]),
    }  # fmt: skip
    for department, spec in specs.items():
        async with client_for(node, department) as client:
            await client.register_item(spec)
    async with client_for(node, "approval") as approval:
        await approval.register_package(
            packages_pb2.PackageSpec(
                code=PACKAGE,
                name="企业开办",
                description="设立登记、公章刻制、发票申领、社保登记，一次办",
                steps=[
                    packages_pb2.PackageStepSpec(item=ESTABLISH),
                    *(
                        packages_pb2.PackageStepSpec(
                            item=item, after=[ESTABLISH], applicant_from=ESTABLISH
                        )
                        for item in (SEAL, INVOICE, SOCIAL)
                    ),
                ],
            )
        )


async def _subject_page(node: Node, context: BrowserContext, applicant: str) -> Page:
    assert node.db is not None
    token = await LinkStore(node.db.pool).issue("subject", applicant, node.clock.now())
    page = await context.new_page()
    await page.goto(f"{_base(node)}/console/link/subject?token={token}")
    await page.click("#continue")
    assert page.url.endswith("/console/subject")
    return page


async def _login(node: Node, context: BrowserContext, code: str, officer: str) -> Page:
    assert node.db is not None
    token = await LinkStore(node.db.pool).issue("login", code, node.clock.now(), officer=officer)
    page = await context.new_page()
    await page.goto(f"{_base(node)}/console/link/login?token={token}")
    await page.click("#continue")
    return page


async def _steps(page: Page, number: str) -> dict[str, tuple[str, str, str, str]]:
    """Item code: (state attribute, state in words, case number, licence number)."""
    rows = page.locator(f"#package-{number} table.steps tbody tr")
    shown = {}
    for i in range(await rows.count()):
        row = rows.nth(i)
        item = await row.get_attribute("data-item") or ""
        shown[item] = (
            await row.get_attribute("data-state") or "",
            (await row.locator(".step-state").text_content() or "").strip(),
            (await row.locator(".step-case").text_content() or "").strip(),
            (await row.locator(".step-licence").text_content() or "").strip(),
        )
    return shown


async def test_the_founder_follows_the_package_in_the_progress_view(
    node: Node, context: BrowserContext, artifacts: Path
) -> None:
    await _register(node)
    async with client_for(node, "approval", "CK-01") as approval:
        first = (await approval.open_package(PACKAGE, OWNER_ID)).number
    async with client_for(node, "samr", "SC-1") as samr:
        established = await samr.open_case(ESTABLISH, OWNER_ID, package_number=first)
        licence = await samr.issue_licence(
            "business-licence", BUSINESS_LICENCE_CLAIMS, case_id=established.number
        )
        await samr.move_case(
            established.number, DECIDED, outcome=APPROVED, licence_number=licence.number
        )
    async with client_for(node, "police", "GA-2") as police:
        seal = await police.open_case(SEAL, COMPANY_USCC, package_number=first)
        await police.move_case(seal.number, DECIDED, outcome=APPROVED)
    async with client_for(node, "tax", "SW-3") as tax:
        invoice = await tax.open_case(INVOICE, COMPANY_USCC, package_number=first)

    # A second opening, later, whose first step is refused: it fails and blocks the rest.
    assert isinstance(node.clock, FixedClock)
    node.clock.advance(timedelta(minutes=5))
    async with client_for(node, "approval", "CK-01") as approval:
        second = (await approval.open_package(PACKAGE, OWNER_ID)).number
    async with client_for(node, "samr", "SC-1") as samr:
        refused = await samr.open_case(ESTABLISH, OWNER_ID, package_number=second)
        await samr.move_case(refused.number, DECIDED, outcome=REFUSED, reason="名称与已登记重名")

    page = await _subject_page(node, context, OWNER_ID)
    # Newest first.
    ids = await page.locator("#packages > li").evaluate_all("els => els.map(e => e.id)")
    assert ids == [f"package-{second}", f"package-{first}"]
    opened = page.locator(f"#package-{first}")
    assert await opened.get_attribute("data-state") == "open"
    assert (await opened.locator(".package-state").text_content() or "").strip() == "办理中"
    assert PACKAGE in (await opened.text_content() or "")
    assert "approval" in (await opened.text_content() or "")
    steps = await _steps(page, first)
    assert steps == {
        ESTABLISH: ("done", "已准予", established.number, licence.number),
        SEAL: ("done", "已准予", seal.number, ""),
        INVOICE: ("open", "办理中 · 受理 (accepted)", invoice.number, ""),
        SOCIAL: ("ready", "可受理", "", ""),
    }
    # The step waiting for nothing comes first.
    rows = await page.locator(f"#package-{first} table.steps tbody tr").all()
    assert await rows[0].get_attribute("data-item") == ESTABLISH
    # Item names are text: the hrss item's script is shown, not run.
    social = page.locator(f"#package-{first} tr[data-item='{SOCIAL}'] td").first
    assert SCRIPT_NAME in (await social.text_content() or "")
    assert await page.locator("#packages script").count() == 0
    assert await page.title() != "pwned"

    failed = page.locator(f"#package-{second}")
    assert await failed.get_attribute("data-state") == "failed"
    assert (await failed.locator(".package-state").text_content() or "").strip() == "未通过"
    assert await _steps(page, second) == {
        ESTABLISH: ("failed", "未通过", refused.number, ""),
        SEAL: ("blocked", "前序未通过", "", ""),
        INVOICE: ("blocked", "前序未通过", "", ""),
        SOCIAL: ("blocked", "前序未通过", "", ""),
    }
    await page.screenshot(path=artifacts / "subject-packages.png", full_page=True)

    await page.goto(_base(node) + "/console/subject?lang=en")
    assert (
        await page.locator(f"#package-{second} .package-state").text_content() or ""
    ).strip() == ("Not approved")
    english = await _steps(page, first)
    assert english[SOCIAL][1] == "Ready to be opened"
    assert english[ESTABLISH][1] == "Approved"
    await page.close()

    # The enterprise applies for the later steps: their cases are in its own view, while
    # the package, opened for the founder, is not.
    company = await _subject_page(node, context, COMPANY_USCC)
    assert await company.locator("#packages").count() == 0
    cases = " ".join(await company.locator("#cases tbody tr").all_text_contents())
    assert invoice.number in cases
    assert seal.number in cases
    await company.close()


async def test_the_item_catalogue_for_departments(
    node: Node, context: BrowserContext, artifacts: Path
) -> None:
    await _register(node)
    page = await _login(node, context, "tax", "SW-0042")
    await page.click("nav >> text=事项目录")
    assert page.url.endswith("/console/items")
    codes = await page.locator("#items > li").evaluate_all("els => els.map(e => e.dataset.code)")
    assert codes == sorted(codes)
    assert {ESTABLISH, SEAL, INVOICE, SOCIAL} <= set(codes)

    establish = page.locator(f"#item-{ESTABLISH}")
    assert (await establish.locator(".item-name").text_content() or "") == "设立登记"
    assert "(samr)" in (await establish.locator(".item-department").text_content() or "")
    assert (await establish.locator(".item-legal").text_content() or "") == "10 个工作日"
    assert (await establish.locator(".item-promised").text_content() or "") == "2 个工作日"
    assert (await establish.locator(".item-immediate").text_content() or "") == "否"
    assert "business-licence" in (await establish.locator(".item-issues").text_content() or "")
    assert "营业执照" in (await establish.locator(".item-issues").text_content() or "")
    application = establish.locator("tr[data-material='application']")
    assert await application.get_attribute("data-source") == "submitted"
    assert (await application.locator(".material-commitment").text_content() or "") == (
        "30 个工作日"
    )
    assert (await application.locator(".material-deferral").text_content() or "") == "—"
    articles = establish.locator("tr[data-material='articles']")
    assert (await articles.locator(".material-deferral").text_content() or "") == "5 个工作日"

    invoice = page.locator(f"#item-{INVOICE}")
    assert "不颁发证照" in (await invoice.locator(".item-issues").text_content() or "")
    by_licence = invoice.locator("tr[data-material='business-licence']")
    assert await by_licence.get_attribute("data-source") == "licence"
    source = await by_licence.locator(".material-source").text_content() or ""
    assert "business-licence" in source
    assert "legal_representative" in source
    by_dataset = invoice.locator("tr[data-material='registration']")
    assert await by_dataset.get_attribute("data-source") == "dataset"
    source = await by_dataset.locator(".material-source").text_content() or ""
    assert "samr.enterprise" in source
    assert "name, address" in source

    # Names are text: neither the item's script nor the material's image handler runs.
    social = page.locator(f"#item-{SOCIAL}")
    assert (await social.locator(".item-name").text_content() or "") == SCRIPT_NAME
    assert IMG_MATERIAL in (
        await social.locator("tr[data-material='enrolment']").text_content() or ""
    )
    assert await page.locator("#items script, #items img").count() == 0
    assert await page.title() != "pwned"
    # The packages (一件事) below the items: coordinator and steps, each linking its item.
    package = page.locator(f"#package-{PACKAGE}")
    assert (await package.locator(".package-name").text_content() or "") == "企业开办"
    assert "(approval)" in (await package.locator(".package-coordinator").text_content() or "")
    steps = await package.locator(".package-steps > li").evaluate_all(
        "els => els.map(e => e.dataset.item)"
    )
    assert steps == [ESTABLISH, SEAL, INVOICE, SOCIAL]
    seal_step = await package.locator(f"li[data-item='{SEAL}']").text_content() or ""
    assert ESTABLISH in seal_step
    assert "持证主体" in seal_step
    await page.screenshot(path=artifacts / "items.png", full_page=True)

    # One department's items; English.
    await page.fill("#items-form input[name=department]", "police")
    await page.click("#items-form button")
    await page.wait_for_url("**/console/items?department=police")
    codes = await page.locator("#items > li").evaluate_all("els => els.map(e => e.dataset.code)")
    assert codes == [SEAL]
    assert await page.locator("#packages").count() == 0  # police coordinates none
    await page.goto(_base(node) + "/console/items?department=samr&lang=en")
    establish = page.locator(f"#item-{ESTABLISH}")
    assert (await establish.locator(".item-legal").text_content() or "") == "10 working days"
    assert (await establish.locator(".item-immediate").text_content() or "") == "No"
    await page.goto(_base(node) + "/console/items?department=nobody&lang=zh")
    assert "没有符合条件的事项" in (await page.text_content("main") or "")
    response = await page.goto(_base(node) + "/console/items?page=not-a-token")
    assert response is not None
    assert response.status == 400
    await page.close()


async def test_the_item_catalogue_needs_a_department_sign_in(
    node: Node, context: BrowserContext
) -> None:
    page = await context.new_page()
    response = await page.goto(_base(node) + "/console/items")
    assert response is not None
    assert response.status == 401
    assert "需要登录" in (await page.text_content("#message") or "")
    await page.close()
    subject = await _subject_page(node, context, OWNER_ID)
    response = await subject.goto(_base(node) + "/console/items")
    assert response is not None
    assert response.status == 401
    await subject.close()
