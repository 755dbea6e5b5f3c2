"""``tongban package`` and ``tongban case open --package`` as an operator runs them, with
the example file from docs/examples (the same package as ``tongban demo``'s)."""

from __future__ import annotations

from pathlib import Path

from tests.cli_helpers import atongban
from tests.conftest import client_for
from tongban.cli import story_data as story
from tongban.cli.package_cmds import load_package_file
from tongban.exchange.enrolment import bundle_dir
from tongban.exchange.node import Node

EXAMPLE = (
    Path(__file__).resolve().parents[2] / "docs" / "examples" / "enterprise-start.package.yaml"
)


def test_the_example_file_is_the_demo_package() -> None:
    assert load_package_file(EXAMPLE) == story.ENTERPRISE_START


async def test_register_open_status_and_a_case_for_a_step(node: Node, tmp_path: Path) -> None:
    for code, item in story.ENTERPRISE_START_ITEMS:
        async with client_for(node, code) as handler:
            await handler.register_item(item)
    endpoint = ["--endpoint", f"127.0.0.1:{node.grpc_port}"]
    approval = ["--as", str(bundle_dir(node.settings, "approval")), *endpoint]
    registered = await atongban("package", "register", str(EXAMPLE), *approval, "--json")
    assert registered.code == 0, registered.stderr
    assert registered.json()["package"]["version"] == 1
    opened = await atongban(
        "package", "open", "enterprise-start", story.FOUNDER_ID, *approval, "--json"
    )
    assert opened.code == 0, opened.stderr
    number = opened.json()["package_case"]["number"]
    samr = ["--as", str(bundle_dir(node.settings, "samr")), *endpoint]
    case = await atongban(
        "case", "open", "enterprise-registration", story.FOUNDER_ID, "--package", number, *samr
    )
    assert case.code == 0, case.stderr
    status = await atongban("package", "status", number, *samr)
    assert status.code == 0, status.stderr
    assert "enterprise-registration (samr): 办理中 open" in status.stdout
    assert "seal-engraving (police): 待前序" in status.stdout
    # Bad input: a clear reason, no traceback.
    bad = tmp_path / "cycle.yaml"
    bad.write_text(
        "code: loop\nname: 环\nsteps:\n"
        "  - {item: seal-engraving, after: [invoice-application]}\n"
        "  - {item: invoice-application, after: [seal-engraving]}\n",
        encoding="utf-8",
    )
    cycle = await atongban("package", "register", str(bad), *approval, "--json")
    assert (cycle.code, cycle.json()["reason"]) == (1, "PACKAGE_CYCLE")
    assert "seal-engraving → invoice-application → seal-engraving" in cycle.json()["message"]
    typo = tmp_path / "typo.yaml"
    typo.write_text("code: x\nname: y\nsteps: [{item: a, afterr: []}]\n", encoding="utf-8")
    wrong = await atongban("package", "register", str(typo), *approval, "--json")
    assert (wrong.code, wrong.json()["reason"]) == (1, "INVALID_ARGUMENT")
    assert "steps.0.afterr" in wrong.json()["message"]
