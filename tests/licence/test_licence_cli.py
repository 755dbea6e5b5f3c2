"""``tongban licence ...`` and ``tongban seal ...`` as departments and verifiers run them,
against a live node."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli_helpers import atongban, cli_env
from tests.stories.restaurant import BUSINESS_LICENCE_CLAIMS, COMPANY_USCC
from tongban.exchange.enrolment import bundle_dir
from tongban.exchange.node import Node


def _claims_file(tmp_path: Path) -> Path:
    path = tmp_path / "claims.json"
    claims = {k: (v if isinstance(v, str) else str(v)) for k, v in BUSINESS_LICENCE_CLAIMS.items()}
    path.write_text(json.dumps(claims, ensure_ascii=False), encoding="utf-8")
    return path


async def test_issue_get_revoke_and_verify_from_the_command_line(
    node: Node, tmp_path: Path
) -> None:
    endpoint = f"127.0.0.1:{node.grpc_port}"
    url = f"http://127.0.0.1:{node.http_port}"
    cache = tmp_path / "verifier"
    ca = node.settings.data_dir / "ca" / "ca.crt"

    def dept(code: str) -> list[str]:
        return ["--as", str(bundle_dir(node.settings, code)), "--endpoint", endpoint]

    types = await atongban("licence", "types", "--json")
    assert [t["code"] for t in types.json()["types"]] == [
        "business-licence",
        "food-business-permit",
    ]
    issued = await atongban(
        "licence", "issue", "business-licence", "--claims", str(_claims_file(tmp_path)),
        "--case", "DJ-1", *dept("samr"), "--json",
    )  # fmt: skip
    assert issued.code == 0, issued.stdout + issued.stderr
    number = issued.json()["licence"]["number"]

    for fmt in ("sd-jwt", "qr", "qr-png", "pdf"):
        out = tmp_path / f"licence.{fmt}"
        got = await atongban(
            "licence", "get", number, "--format", fmt, "--out", str(out), *dept("samr"), "--json"
        )
        assert got.code == 0, got.stdout + got.stderr
        assert out.stat().st_size > 0
    assert (tmp_path / "licence.qr").read_text().startswith("TB1:")
    assert (tmp_path / "licence.pdf").read_bytes().startswith(b"%PDF")
    assert (tmp_path / "licence.qr-png").read_bytes().startswith(b"\x89PNG")

    listed = await atongban("licence", "list", "--holder", COMPANY_USCC, *dept("tax"), "--json")
    assert [item["number"] for item in listed.json()["licences"]] == [number]

    # A verifier with only the root CA and the node's address.
    qr = (tmp_path / "licence.qr").read_text().strip()
    offline_first = await atongban(
        "licence", "verify", "--qr", qr, "--offline", "--ca", str(ca), "--cache-dir", str(cache),
        "--json",
    )  # fmt: skip
    assert offline_first.code == 1
    assert offline_first.json()["reason"] == "TRUST_LIST_UNAVAILABLE"
    refreshed = await atongban(
        "licence", "trust-list", "--refresh", "--url", url, "--ca", str(ca),
        "--cache-dir", str(cache), "--json",
    )  # fmt: skip
    assert refreshed.code == 0, refreshed.stdout + refreshed.stderr
    assert set(refreshed.json()["departments"]) == {"samr", "approval"}
    online = await atongban(
        "licence", "verify", str(tmp_path / "licence.sd-jwt"), "--cache-dir", str(cache), "--json"
    )
    assert online.code == 0, online.stdout + online.stderr
    assert online.json()["status"] == "valid"
    offline = await atongban(
        "licence", "verify", "--qr", qr, "--offline", "--cache-dir", str(cache), "--json"
    )
    assert (offline.code, offline.json()["status"]) == (0, "valid")
    from_png = await atongban(
        "licence", "verify", str(tmp_path / "licence.qr-png"), "--offline",
        "--cache-dir", str(cache), "--json",
    )  # fmt: skip
    assert from_png.json()["licence_number"] == number
    # The PDF itself: its QR code is read from the rendered page.
    from_pdf = await atongban(
        "licence", "verify", str(tmp_path / "licence.pdf"), "--offline",
        "--cache-dir", str(cache), "--json",
    )  # fmt: skip
    assert (from_pdf.code, from_pdf.json()["licence_number"]) == (0, number)
    not_a_licence = tmp_path / "notes.txt"
    not_a_licence.write_text("hello", encoding="utf-8")
    unreadable = await atongban("licence", "verify", str(not_a_licence), "--json")
    assert (unreadable.code, unreadable.json()["reason"]) == (1, "UPLOAD_UNREADABLE")

    revoked = await atongban(
        "licence", "revoke", number, "--reason", "吊销", *dept("samr"), "--json"
    )
    assert revoked.json()["licence"]["status"] == "revoked"
    stale = await atongban(
        "licence", "verify", "--qr", qr, "--offline", "--cache-dir", str(cache), "--json"
    )
    assert stale.code == 0  # the cached status list predates the revocation
    now_revoked = await atongban("licence", "verify", "--qr", qr, "--cache-dir", str(cache))
    assert now_revoked.code == 1
    assert "LICENCE_REVOKED" in now_revoked.stdout
    offline_after = await atongban(
        "licence", "verify", "--qr", qr, "--offline", "--cache-dir", str(cache), "--json"
    )
    assert offline_after.json()["reason"] == "LICENCE_REVOKED"

    wrong = await atongban("licence", "verify", "--qr", "XX:1", "--cache-dir", str(cache), "--json")
    assert (wrong.code, wrong.json()["check"]) == (1, "format")
    missing = await atongban("licence", "get", "YYZZ-SAMR-2026-000001X", *dept("samr"), "--json")
    assert missing.code == 1
    assert missing.json()["reason"] == "LICENCE_NUMBER_INVALID"


async def test_operator_list_and_seals_from_the_command_line(node: Node, tmp_path: Path) -> None:
    endpoint = f"127.0.0.1:{node.grpc_port}"
    samr = ["--as", str(bundle_dir(node.settings, "samr")), "--endpoint", endpoint]
    issued = await atongban(
        "licence", "issue", "business-licence", "--claims", str(_claims_file(tmp_path)), *samr,
        "--json",
    )  # fmt: skip
    number = issued.json()["licence"]["number"]
    assert node.settings.database_url is not None
    env = cli_env(
        TONGBAN_DATABASE_URL=node.settings.database_url.get_secret_value(),
        TONGBAN_KEY_PASSPHRASE="test passphrase",
    )
    data_dir = ["--data-dir", str(node.settings.data_dir)]
    listed = await atongban("licence", "list", *data_dir, "--json", env=env)
    assert listed.code == 0, listed.stdout + listed.stderr
    assert [item["number"] for item in listed.json()["licences"]] == [number]

    pdf = tmp_path / "licence.pdf"
    await atongban("licence", "get", number, "--format", "pdf", "--out", str(pdf), *samr)
    checked = await atongban("seal", "verify", str(pdf), *data_dir, "--json", env=env)
    assert checked.code == 0, checked.stdout + checked.stderr
    assert [s["department"] for s in checked.json()["seals"]] == ["samr"]

    sealed = tmp_path / "sealed.pdf"
    approval = ["--as", str(bundle_dir(node.settings, "approval")), "--endpoint", endpoint]
    again = await atongban("seal", "pdf", str(pdf), str(sealed), *approval)
    assert again.code == 0, again.stdout + again.stderr
    both = await atongban("seal", "verify", str(sealed), *data_dir, "--json", env=env)
    assert [s["department"] for s in both.json()["seals"]] == ["samr", "approval"]

    tampered = tmp_path / "tampered.pdf"
    data = sealed.read_bytes()
    assert data.count(b"/Producer (Tongban)") == 1
    tampered.write_bytes(data.replace(b"/Producer (Tongban)", b"/Producer (Tongbam)"))
    broken = await atongban("seal", "verify", str(tampered), *data_dir, "--json", env=env)
    assert broken.code == 1
    assert (broken.json()["verified"], broken.json()["check"]) == (False, "integrity")

    enrolled = await atongban("seal", "enrol", "tax", *data_dir, "--json", env=env)
    assert enrolled.code == 0, enrolled.stdout + enrolled.stderr
    unknown = await atongban("seal", "enrol", "nobody", *data_dir, "--json", env=env)
    assert unknown.json()["reason"] == "DEPARTMENT_NOT_FOUND"
