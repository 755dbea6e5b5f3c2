"""Issue 14, finding 13a: an auditor's search or export of the access log is itself an
entry, whatever its filters (a search of everyone reads everyone), committed before the
log is read, over gRPC, the console and the command line."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import asyncpg
import grpc
import pytest

from tests.cli_helpers import atongban, cli_env
from tests.conftest import client_for
from tests.stories.restaurant import OWNER_ID
from tests.stories.test_audit import _accesses_to_owner
from tongban.client import Bundle, ExchangeError
from tongban.exchange.audit.log import SubjectHasher
from tongban.exchange.datadir import load_log_key
from tongban.exchange.enrolment import bundle_dir
from tongban.exchange.node import Node
from tongban.exchange.web import LinkStore
from tongban.v1 import audit_pb2, audit_pb2_grpc

Read = tuple[str, str | None, str, str, bytes | None]


async def _reads(node: Node) -> list[Read]:
    """The log's entries of reads of the log: (caller, officer, action, purpose, subject)."""
    assert node.db is not None
    rows: list[asyncpg.Record] = await node.db.pool.fetch(
        "SELECT caller, officer, action, purpose, subject_hmac FROM access_log"
        " WHERE action IN ('audit.search', 'audit.export') ORDER BY idx"
    )
    return [(r["caller"], r["officer"], r["action"], r["purpose"], r["subject_hmac"]) for r in rows]


async def test_grpc_searches_and_exports_without_a_subject_are_logged(node: Node) -> None:
    await _accesses_to_owner(node)
    async with client_for(node, "audit", "JW-0001") as audit:
        everything = await audit.audit_search(audit_pb2.SearchRequest(page_size=1000))
        # The search's own entry was committed before the log was read: it is in the answer.
        assert ("audit", "JW-0001", "audit.search") in [
            (e.caller, e.officer, e.action) for e in everything.entries
        ]
        denials = await audit.audit_search(audit_pb2.SearchRequest(caller="tax", decision="denied"))
        assert [e.case_id for e in denials.entries] == ["SW-9"]
        # A refused search reads nothing and is not an entry.
        with pytest.raises(ExchangeError) as bad:
            await audit.audit_search(audit_pb2.SearchRequest(decision="maybe"))
        assert bad.value.reason == "INVALID_ARGUMENT"

    bundle = Bundle.load(bundle_dir(node.settings, "audit"))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=bundle.ca_pem,
        private_key=bundle.tls_key_pem,
        certificate_chain=bundle.tls_cert_pem,
    )
    async with grpc.aio.secure_channel(
        f"127.0.0.1:{node.grpc_port}",
        credentials,
        options=[("grpc.ssl_target_name_override", "localhost")],
    ) as channel:
        stream = audit_pb2_grpc.AuditServiceStub(channel).Export(
            audit_pb2.SearchRequest(), metadata=(("x-tongban-officer", "JW-0001"),), timeout=30
        )
        exported = [entry async for entry in stream]
    assert exported[-1].action == "audit.export"  # its own entry, the newest it read
    assert {e.case_id for e in exported} >= {"SW-9", "GA-1"}

    assert await _reads(node) == [
        ("audit", "JW-0001", "audit.search", "audit", None),
        ("audit", "JW-0001", "audit.search", "audit caller=tax decision=denied", None),
        ("audit", "JW-0001", "audit.export", "audit", None),
    ]


async def test_console_searches_and_exports_without_a_subject_are_logged(node: Node) -> None:
    await _accesses_to_owner(node)
    assert node.db is not None
    token = await LinkStore(node.db.pool).issue(
        "login", "audit", node.clock.now(), officer="JW-0001"
    )
    base = f"http://127.0.0.1:{node.http_port}"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.post(
            base + "/console/link/login", data={"token": token}, allow_redirects=False
        ) as signed_in:
            assert signed_in.status == 303
            session = {"Cookie": f"tongban_session={signed_in.cookies['tongban_session'].value}"}
        async with http.get(
            base + "/console/audit", params={"caller": "tax"}, headers=session
        ) as page:
            assert page.status == 200
            assert "SW-9" in await page.text()
        async with http.get(base + "/console/audit/export.csv", headers=session) as csv:
            assert csv.status == 200
            text = (await csv.read()).decode("utf-8-sig")
        # Everything, its own entry (the last line) included.
        assert "SW-9" in text
        assert "GA-1" in text
        assert ",audit,JW-0001,audit.export," in text.splitlines()[-1]
        async with http.get(
            base + "/console/audit/export.jsonl", params={"decision": "denied"}, headers=session
        ) as jsonl:
            assert jsonl.status == 200
            assert '"case_id": "SW-9"' in await jsonl.text()

    assert await _reads(node) == [
        ("audit", "JW-0001", "audit.search", "audit caller=tax", None),
        ("audit", "JW-0001", "audit.export", "audit", None),
        ("audit", "JW-0001", "audit.export", "audit decision=denied", None),
    ]


async def test_cli_searches_and_exports_are_logged_as_the_operators(
    node: Node, tmp_path: Path
) -> None:
    await _accesses_to_owner(node)
    url = node.settings.database_url
    assert url is not None
    env = cli_env(
        TONGBAN_DATABASE_URL=url.get_secret_value(), TONGBAN_KEY_PASSPHRASE="test passphrase"
    )
    data_dir = ("--data-dir", str(node.settings.data_dir))

    searched = await atongban("audit", "search", "--caller", "tax", *data_dir, "--json", env=env)
    assert searched.code == 0, searched.stdout + searched.stderr
    assert [e["case_id"] for e in searched.json()["entries"]] == ["SW-9"]

    out = tmp_path / "log.jsonl"
    exported = await atongban("audit", "export", "--out", str(out), *data_dir, "--json", env=env)
    assert exported.code == 0, exported.stdout + exported.stderr
    lines = out.read_text(encoding="utf-8").splitlines()
    assert '"action": "audit.export"' in lines[-1]  # its own entry, the newest it read
    assert '"caller": "operator"' in lines[-1]

    by_subject = await atongban("audit", "search", "--subject", OWNER_ID, *data_dir, env=env)
    assert by_subject.code == 0, by_subject.stderr
    assert "GA-1" in by_subject.stdout

    # A refused search reads nothing and is not an entry.
    refused = await atongban("audit", "search", "--limit", "0", *data_dir, "--json", env=env)
    assert refused.code == 1
    assert refused.json()["reason"] == "INVALID_ARGUMENT"

    owner = SubjectHasher(load_log_key(node.settings))(OWNER_ID)
    assert await _reads(node) == [
        ("operator", None, "audit.search", "audit caller=tax", None),
        ("operator", None, "audit.export", "audit", None),
        ("operator", None, "audit.search", "audit", owner),
    ]
