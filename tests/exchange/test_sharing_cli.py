"""``tongban catalogue|query|grant`` as a department would run them, against a live node."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from tests.cli_helpers import atongban, cli_env
from tests.stories.restaurant import COMPANY_USCC, OWNER_ID
from tongban.exchange.enrolment import bundle_dir
from tongban.exchange.node import Node

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


async def test_catalogue_query_and_grants_from_the_command_line(node: Node, tmp_path: Path) -> None:
    endpoint = f"127.0.0.1:{node.grpc_port}"

    def dept(code: str) -> list[str]:
        return ["--as", str(bundle_dir(node.settings, code)), "--endpoint", endpoint]

    for code, file in (("samr", "samr.enterprise.json"), ("police", "police.person.json")):
        result = await atongban(
            "catalogue", "register", str(EXAMPLES / file), "--publish", *dept(code), "--json"
        )
        assert result.code == 0, result.stdout + result.stderr
        assert result.json()["dataset"]["published"] is True

    listed = await atongban("catalogue", "list", "--keyword", "人口", *dept("tax"), "--json")
    assert [d["spec"]["code"] for d in listed.json()["datasets"]] == ["police.person"]
    shown = await atongban("catalogue", "show", "police.person", *dept("tax"))
    assert "conditional" in shown.stdout
    assert "household_address" in shown.stdout

    query = [
        "query",
        "samr.enterprise",
        COMPANY_USCC,
        "--fields",
        "name",
        "--purpose",
        "税务登记",
        "--case",
        "SW-1",
    ]
    empty = await atongban(*query, *dept("tax"), "--json")
    assert empty.json()["missing_keys"] == [COMPANY_USCC]

    denied = await atongban(
        "query",
        "police.person",
        OWNER_ID,
        "--fields",
        "name",
        "--purpose",
        "税务稽查",
        "--case",
        "SW-2",
        *dept("tax"),
        "--json",
    )
    assert denied.code == 1
    assert denied.json()["reason"] == "GRANT_REQUIRED"

    requested = await atongban(
        "grant",
        "request",
        "police.person",
        "--fields",
        "name,gender",
        "--purpose",
        "食品经营许可审批",
        "--legal-basis",
        "《食品经营许可和备案管理办法》第十二条",
        "--expires",
        (node.clock.now().date() + timedelta(days=400)).isoformat(),
        *dept("approval"),
        "--json",
    )
    assert requested.code == 0, requested.stdout + requested.stderr
    grant_id = requested.json()["grant"]["id"]
    assert node.settings.database_url is not None
    operator = await atongban(
        "grant",
        "list",
        "--data-dir",
        str(node.settings.data_dir),
        "--json",
        env=cli_env(TONGBAN_DATABASE_URL=node.settings.database_url.get_secret_value()),
    )
    assert [g["id"] for g in operator.json()["grants"]] == [grant_id]
    assert operator.json()["grants"][0]["overdue_days"] == 0
    approved = await atongban(
        "grant", "approve", grant_id, "--fields", "name", *dept("police"), "--json"
    )
    assert approved.json()["grant"]["fields"] == ["name"]
    refused_again = await atongban(
        "grant", "refuse", grant_id, "--reason", "x", *dept("police"), "--json"
    )
    assert refused_again.code == 1
    assert refused_again.json()["reason"] == "GRANT_STATE_INVALID"


async def test_bad_command_line_input(node: Node, tmp_path: Path) -> None:
    endpoint = f"127.0.0.1:{node.grpc_port}"
    tax = ["--as", str(bundle_dir(node.settings, "tax")), "--endpoint", endpoint]
    bad_file = tmp_path / "bad.json"
    bad_file.write_text(
        '{"code": "tax.x", "title": 3, "fields": [], "key_field": "k", "subject_kind": "martian"}'
    )
    result = await atongban("catalogue", "register", str(bad_file), *tax, "--json")
    assert result.code == 1
    message = result.json()["message"]
    assert "title" in message
    assert "subject_kind" in message
    no_bundle = await atongban("catalogue", "list", "--as", str(tmp_path), "--json")
    assert no_bundle.code == 1
    assert no_bundle.json()["reason"] == "BUNDLE_INVALID"
    unreachable = await atongban(
        "catalogue",
        "list",
        "--as",
        str(bundle_dir(node.settings, "tax")),
        "--endpoint",
        "127.0.0.1:9",
        "--json",
    )
    assert unreachable.code == 1
    assert unreachable.json()["reason"] == "UNAVAILABLE"
    usage = await atongban(
        "query", "samr.enterprise", "k", "--fields", ",", "--purpose", "p", "--case", "c", *tax
    )
    assert usage.code == 2
    naive = await atongban(
        "grant",
        "request",
        "police.person",
        "--fields",
        "name",
        "--purpose",
        "p",
        "--legal-basis",
        "b",
        "--expires",
        "2099-01-01T00:00:00",
        *tax,
    )
    assert naive.code == 2
    assert "time zone" in naive.stderr
