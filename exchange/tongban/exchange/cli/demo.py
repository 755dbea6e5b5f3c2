"""``tongban demo``: the story of DESIGN.md, run against a fresh node over real gRPC.

Each step prints its title and outcome (``--json``: one object per line with ``step``,
``title``, ``ok`` and details). Later capabilities add their steps here. The node is
stopped at the end and its data dir is left for inspection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from tongban.client import Bundle, Event, ExchangeClient, ExchangeError, verify_answer
from tongban.errors import TongbanError
from tongban.exchange.audit.log import SubjectHasher
from tongban.exchange.audit.merkle import leaf_hash, verify_inclusion
from tongban.exchange.audit.note import open_checkpoint, parse_verifier_key
from tongban.exchange.audit.verify import verify_log
from tongban.exchange.cli import story_data as story
from tongban.exchange.cli.commands import fresh_demo_dir
from tongban.exchange.datadir import (
    ca_certificate_pem,
    init_data_dir,
    load_log_key,
    load_log_signer,
    log_origin,
)
from tongban.exchange.departments import DepartmentStore, Status
from tongban.exchange.enrolment import DEMO_DEPARTMENTS, bundle_dir, enrol_demo_departments
from tongban.exchange.node import Node
from tongban.exchange.settings import load_settings
from tongban.signing.certs import (
    certificate_pem,
    create_root_ca,
    issue_department_tls_certificate,
)
from tongban.signing.clock import SystemClock
from tongban.signing.keys import generate_private_key, private_key_pem
from tongban.v1 import audit_pb2

__all__ = ["run_demo"]


@dataclass
class _Outcome:
    ok: bool
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


class _Steps:
    def __init__(self, as_json: bool) -> None:
        self._json = as_json
        self.failed = 0

    async def run(self, step: str, title: str, body: Callable[[], Awaitable[_Outcome]]) -> None:
        started = time.perf_counter()
        try:
            outcome = await body()
        except TongbanError as e:
            outcome = _Outcome(False, e.diagnostics(), {"reason": e.reason})
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        if not outcome.ok:
            self.failed += 1
        if self._json:
            line = {
                "step": step,
                "title": title,
                "ok": outcome.ok,
                "summary": outcome.summary,
                "ms": elapsed_ms,
                **outcome.details,
            }
            print(json.dumps(line, ensure_ascii=False, default=str), flush=True)
        else:
            mark = "ok  " if outcome.ok else "FAIL"
            print(f"[{mark}] {step:<5} {title}\n         {outcome.summary}", flush=True)


async def _first_event(stream: AsyncIterator[Event], within: float = 15.0) -> Event:
    """The first event of a subscription stream; the stream is closed after it."""
    try:
        async with asyncio.timeout(within):
            async for event in stream:
                return event
    except TimeoutError:
        pass
    raise DemoFailed(f"No event arrived within {within:.0f} s.")


class DemoFailed(TongbanError):
    reason = "DEMO_STEP_FAILED"
    status = "INTERNAL"


async def run_demo(args: argparse.Namespace) -> int:
    data_dir = fresh_demo_dir(args.data_dir)
    settings = load_settings(
        data_dir=data_dir, grpc_listen="127.0.0.1:0", http_listen="127.0.0.1:0"
    )
    clock = SystemClock()
    steps = _Steps(args.json)
    init_data_dir(settings, clock.now())
    node = Node(settings, clock=clock)
    await node.start()
    try:
        target = f"127.0.0.1:{node.grpc_port}"
        assert node.db is not None
        db = node.db
        mode = "Kafka" if settings.kafka_bootstrap else "PostgreSQL"

        async def node_up() -> _Outcome:
            return _Outcome(
                True,
                f"node {settings.node_name} on gRPC {target} (mutual TLS), HTTP "
                f"127.0.0.1:{node.http_port}, {db.where}; events fed from {mode}",
                {"grpc": target, "http_port": node.http_port, "data_dir": str(data_dir)},
            )

        async def enrol() -> _Outcome:
            enrolled = await enrol_demo_departments(db, settings, clock.now())
            codes = [dept.code for dept, _ in enrolled]
            return _Outcome(
                len(codes) == len(DEMO_DEPARTMENTS),
                f"registered {', '.join(codes)}; bundles in {data_dir / 'bundles'}",
                {"departments": codes},
            )

        async def authenticate() -> _Outcome:
            seen = []
            for demo in DEMO_DEPARTMENTS:
                bundle = Bundle.load(bundle_dir(settings, demo.code))
                async with ExchangeClient(bundle, target=target, officer_id="demo-01") as client:
                    me = await client.who_am_i()
                if me.department != demo.code or me.name != demo.name:
                    return _Outcome(False, f"{demo.code} was recognised as {me.department}")
                seen.append(f"{me.department}={me.name}")
            return _Outcome(True, "each department known by its certificate: " + ", ".join(seen))

        async def foreign() -> _Outcome:
            # A certificate for "samr" from a CA the exchange never trusted.
            now = clock.now()
            ca_key = generate_private_key()
            ca_cert = create_root_ca(common_name="Not the exchange", key=ca_key, now=now)
            key = generate_private_key()
            cert = issue_department_tls_certificate(
                ca_cert=ca_cert,
                ca_key=ca_key,
                code="samr",
                name="冒名部门",
                public_key=key.public_key(),
                now=now,
            )
            real = Bundle.load(bundle_dir(settings, "samr"))
            forged = Bundle(
                department="samr",
                name="冒名部门",
                endpoint=target,
                server_name=real.server_name,
                ca_pem=real.ca_pem,
                tls_cert_pem=certificate_pem(cert),
                tls_key_pem=private_key_pem(key),
                seal_cert_pem=certificate_pem(cert),
                seal_key_pem=private_key_pem(key),
            )
            async with ExchangeClient(forged, target=target, timeout=5) as client:
                try:
                    await client.who_am_i()
                except ExchangeError as e:
                    return _Outcome(True, f"refused at the TLS handshake ({e.reason})")
            return _Outcome(False, "a certificate from a foreign CA was accepted")

        async def suspension() -> _Outcome:
            store = DepartmentStore(db.pool)
            bundle = Bundle.load(bundle_dir(settings, "hrss"))
            await store.set_status("hrss", Status.SUSPENDED)
            try:
                async with ExchangeClient(bundle, target=target) as client:
                    try:
                        await client.who_am_i()
                    except ExchangeError as e:
                        refused = e.reason
                    else:
                        return _Outcome(False, "a suspended department was served")
            finally:
                await store.set_status("hrss", Status.ACTIVE)
            async with ExchangeClient(bundle, target=target) as client:
                await client.who_am_i()
            return _Outcome(
                refused == "DEPARTMENT_SUSPENDED",
                f"suspended hrss was refused ({refused}); served again once reactivated",
                {"reason": refused},
            )

        def client(code: str, officer: str) -> ExchangeClient:
            bundle = Bundle.load(bundle_dir(settings, code))
            return ExchangeClient(bundle, target=target, officer_id=officer)

        async def police_data() -> _Outcome:
            async with client("police", "GA-0001") as police:
                dataset = await police.register_dataset(story.PERSON, publish=True)
                await police.publish_records("police.person", [(story.OWNER_ID, story.OWNER)])
            return _Outcome(
                True,
                f"police.person ({dataset.spec.title}) is in the catalogue as conditional: "
                "shared only under a grant",
            )

        async def step_1() -> _Outcome:
            async with client("samr", "SC-0001") as samr:
                await samr.register_dataset(story.ENTERPRISE, publish=True)
                counts = await samr.publish_records(
                    "samr.enterprise", [(story.COMPANY_USCC, story.COMPANY)]
                )
            return _Outcome(
                counts.inserted == 1,
                f"{story.COMPANY['name']} ({story.COMPANY_USCC}) published to samr.enterprise "
                "(unconditional: shared by default)",
                {"uscc": story.COMPANY_USCC},
            )

        async def step_2() -> _Outcome:
            wanted = {
                "tax": ["name", "address", "legal_representative"],
                "hrss": ["name", "address"],
                "police": ["name", "legal_representative", "legal_representative_id"],
            }
            received: dict[str, Event] = {}
            for code, fields in wanted.items():
                async with client(code, f"{code.upper()}-0001") as department:
                    event = await _first_event(
                        department.subscribe(
                            "samr.enterprise", fields=fields, purpose="登记信息同步"
                        )
                    )
                    await department.acknowledge(event.subscription_id, event.position)
                    received[code] = event
            logged = await db.pool.fetchval(
                "SELECT count(DISTINCT caller) FROM access_log WHERE action = 'event'"
                " AND subject_hmac = $1",
                SubjectHasher(load_log_key(settings))(story.COMPANY_USCC),
            )
            exact = all(set(received[c].fields) == set(f) for c, f in wanted.items())
            one_id = len({e.event_id for e in received.values()}) == 1
            return _Outcome(
                exact and one_id and logged == len(wanted),
                f"{', '.join(received)} each received {story.COMPANY['name']} by subscription "
                f"with only the fields they asked for (one event id); {logged} deliveries in "
                "the access log — nobody typed it again",
                {"event_id": received["tax"].event_id, "mode": mode},
            )

        async def step_4_push() -> _Outcome:
            async with client("approval", "SP-0007") as approval:
                await approval.register_dataset(story.DECISION, publish=True)
                await approval.publish_records(
                    "approval.decision", [(story.DECISION_NO, story.APPROVAL_DECISION)]
                )
            async with client("regulator", "JG-0003") as regulator:
                decision = await _first_event(
                    regulator.subscribe(
                        "approval.decision",
                        fields=["decision_no", "applicant_uscc", "decision"],
                        purpose="事中事后监管",
                    )
                )
                await regulator.acknowledge(decision.subscription_id, decision.position)
            return _Outcome(
                decision.fields.get("applicant_uscc") == story.COMPANY_USCC,
                f"the regulator's supervision system received decision {decision.key} "
                f"({decision.fields.get('decision')}) by subscription (审管互通)",
                {"decision_no": decision.key},
            )

        async def step_3() -> _Outcome:
            now = clock.now()
            async with client("approval", "SP-0007") as approval:
                company = await approval.query(
                    "samr.enterprise",
                    [story.COMPANY_USCC],
                    fields=["name", "legal_representative", "legal_representative_id", "address"],
                    purpose=story.PURPOSE,
                    case_id=story.CASE_ID,
                    sign=True,
                )
                grant = await approval.request_grant(
                    "police.person",
                    ["name", "gender"],
                    story.PURPOSE,
                    "《食品经营许可和备案管理办法》第十二条",
                    now + timedelta(days=180),
                )
            async with client("police", "GA-0002") as police:
                await police.decide_grant(
                    grant.id, approve=True, reason="办理食品经营许可需核验身份"
                )
            async with client("approval", "SP-0007") as approval:
                person = await approval.query(
                    "police.person",
                    [story.OWNER_ID],
                    fields=["name", "gender"],
                    purpose=story.PURPOSE,
                    case_id=story.CASE_ID,
                )
            proof = verify_answer(
                company.signed_payload,
                company.signature,
                ca_pem=ca_certificate_pem(settings),
                now=clock.now(),
            )
            fields = company.by_key()[story.COMPANY_USCC].fields
            who = person.by_key()[story.OWNER_ID].fields
            return _Outcome(
                fields["legal_representative_id"] == story.OWNER_ID and who["name"] == "王晓明",
                f"company: {fields['name']}, legal representative {fields['legal_representative']}"
                f" (signed answer verified: {proof['dataset']} v{proof['dataset_version']}); "
                f"identity under grant {grant.id[:8]}: {who['name']} {who['gender']} — "
                "nothing submitted on paper",
                {"grant": grant.id, "fields_received": sorted(fields) + sorted(who)},
            )

        async def step_7() -> _Outcome:
            async with client("tax", "SW-0042") as tax:
                try:
                    await tax.query(
                        "police.person",
                        [story.OWNER_ID],
                        fields=["name", "household_address"],
                        purpose="税务稽查",
                        case_id="SW-2026-77",
                    )
                except ExchangeError as e:
                    refused = e.reason
                else:
                    return _Outcome(False, "tax read conditional data without a grant")
            logged = await db.pool.fetchval(
                "SELECT count(*) FROM access_log WHERE caller = 'tax' AND decision = 'denied'"
                " AND reason = $1 AND subject_hmac = $2",
                refused,
                SubjectHasher(load_log_key(settings))(story.OWNER_ID),
            )
            return _Outcome(
                refused == "GRANT_REQUIRED" and logged == 1,
                f"tax was refused ({refused}); the denial is in the access log ({logged} entry, "
                "subject id stored only as a keyed hash)",
                {"reason": refused},
            )

        async def step_8() -> _Outcome:
            assert node.checkpointer is not None
            await node.checkpointer.sign_now()
            report = await verify_log(
                db.pool,
                origin=log_origin(settings),
                verifier=load_log_signer(settings).public_key(),
            )
            async with client("audit", "JW-0001") as audit:
                found = await audit.audit_search(audit_pb2.SearchRequest(subject_id=story.OWNER_ID))
                queries = [e for e in found.entries if e.action == "query"]
                for entry in queries:  # each checked as an outsider would: key, note, proof
                    proved = await audit.audit_entry(entry.index)
                    name, key = parse_verifier_key(proved.checkpoint.verifier_key)
                    signed = open_checkpoint(proved.checkpoint.note, [(name, key)], origin=name)
                    verify_inclusion(
                        leaf_hash(proved.entry.leaf),
                        proved.entry.index,
                        signed.size,
                        list(proved.inclusion_proof),
                        signed.root,
                    )
                view = await audit.subject_accesses(story.OWNER_ID)
            accesses = [
                f"{a.department_name}（{a.purpose}，{a.decision}）"
                for a in view.accesses
                if a.dataset
            ]
            return _Outcome(
                len(accesses) == len(queries) >= 2,
                f"log intact: {report.size} entries under {report.checkpoints} signed "
                f"checkpoints; {len(queries)} accesses to the owner's data, each proved in the "
                f"tree; the owner's view lists: {'; '.join(accesses)}",
                {"log_size": report.size, "accesses": len(queries)},
            )

        await steps.run("0.1", "An exchange node starts on embedded PostgreSQL", node_up)
        await steps.run("0.2", "The story's departments are registered", enrol)
        await steps.run("0.3", "Each department is known by its certificate", authenticate)
        await steps.run("0.4", "A certificate from another CA is refused", foreign)
        await steps.run("0.5", "A suspended department is refused at once", suspension)
        await steps.run("0.6", "Police share population data on conditions", police_data)
        await steps.run("1", "samr registers the company; it is published once", step_1)
        await steps.run(
            "2", "Tax, social security and police receive the company, no re-entry", step_2
        )
        await steps.run("3", "Approval gets the company and the owner's identity, no paper", step_3)
        await steps.run(
            "4", "The approval decision is pushed to the regulator (审管互通)", step_4_push
        )
        await steps.run("7", "Tax asks for personal data without a grant: denied, logged", step_7)
        await steps.run(
            "8", "The auditor verifies the log; the owner sees who accessed their data", step_8
        )
    finally:
        await node.stop()
    if args.json:
        print(json.dumps({"step": "end", "ok": steps.failed == 0, "data_dir": str(data_dir)}))
    else:
        verdict = "all steps passed" if steps.failed == 0 else f"{steps.failed} step(s) FAILED"
        print(f"\n{verdict}; node stopped; data dir left at {data_dir}", file=sys.stdout)
    return 0 if steps.failed == 0 else 1
