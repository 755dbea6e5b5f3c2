"""Steps 1 and 2 of DESIGN.md through real adapters, in both event modes.

samr's clerk registers the company in samr's legacy PostgreSQL registration table (legacy
column names, dates as '20261102' text); samr's adapter (cursor mode) publishes it to
samr.enterprise; the adapters of tax (a legacy SQLite register), social security (a
folder its legacy import job reads CSV files from) and police (a legacy REST service)
write it into their systems — nobody types it again. Then samr's clerk changes the
company's address, and the change reaches all three, once each.

The adapters run in this process as asyncio tasks, through ``AdapterRunner``, the same
code ``tongban adapter run`` runs; one more test runs that command as a subprocess.
"""

from __future__ import annotations

import asyncio
import csv
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import pytest_asyncio
from aiohttp import web

from tests.adapters.conftest import legacy_dsn  # noqa: F401 - a fixture
from tests.cli_helpers import atongban
from tests.conftest import client_for
from tests.stories.restaurant import COMPANY, COMPANY_USCC, ENTERPRISE
from tongban.adapters import load_mapping
from tongban.adapters.runner import AdapterRunner, RunSummary
from tongban.cli.adapter_cmds import VALIDATORS
from tongban.cli.story_data import grant_representative_ids
from tongban.exchange.enrolment import bundle_dir
from tongban.exchange.node import Node

MOVED = "浙江省杭州市拱墅区湖墅南路9号"


def _exchange(node: Node, code: str, officer: str) -> str:
    return (
        f"exchange:\n  endpoint: 127.0.0.1:{node.grpc_port}\n"
        f"  bundle: {bundle_dir(node.settings, code)}\n  officer: {officer}\n"
    )


SAMR = """\
adapter: samr-registration
poll_seconds: 0.2
{exchange}
source:
  kind: postgres
  dsn: "{dsn}"
streams:
  - name: enterprises
    table: t_qydj
    dataset: samr.enterprise
    key: uscc
    mode: {{kind: cursor, cursor_column: gxsj, key_column: id, look_back: 60}}
    fields:
      uscc: {{column: tyshxydm, check: uscc}}
      name: {{column: qymc, required: true}}
      legal_representative: fddbr
      legal_representative_id: {{column: fddbr_sfzh, check: citizen_id}}
      address: zs
      registered_capital: {{column: zczb, type: decimal}}
      established: {{column: clrq, type: date, formats: ["%Y%m%d"]}}
      business_scope: jyfw
    filters:
      - {{column: djzt, not_in: ["注销", "吊销"]}}
"""

TAX = """\
adapter: tax-register
{exchange}
source:
  kind: sqlite
  path: legacy-tax.db
write_back:
  - dataset: samr.enterprise
    table: t_swdj
    key_column: nsrsbh
    columns:
      nsrmc: name
      scjydz: address
      fddbrxm: legal_representative
      lrrq: {{constant: 系统同步}}
    subscribe: {{purpose: 登记信息同步}}
"""

HRSS = """\
adapter: hrss-units
{exchange}
source:
  kind: csv
  folder: exports
  outbound: {{folder: imports, encoding: gb18030}}
write_back:
  - dataset: samr.enterprise
    key_column: 统一社会信用代码
    columns:
      单位名称: name
      单位地址: address
    subscribe: {{purpose: 登记信息同步}}
"""

POLICE = """\
adapter: police-seals
{exchange}
source:
  kind: rest
  base_url: "{url}"
  retry: {{attempts: 5, initial_delay_seconds: 0.05, max_delay_seconds: 0.5}}
write_back:
  - dataset: samr.enterprise
    endpoint: /api/v1/qy/{{key}}
    method: PUT
    key_column: tyshxydm
    columns:
      qymc: name
      fddbr: legal_representative
      fddbr_sfzh: legal_representative_id
    subscribe: {{purpose: 印章刻制备案}}
"""


async def _samr_legacy(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """
            CREATE TABLE t_qydj (
                id serial PRIMARY KEY,
                tyshxydm char(18) NOT NULL,
                qymc varchar(200) NOT NULL,
                fddbr varchar(50),
                fddbr_sfzh char(18),
                zs varchar(300),
                zczb numeric(18, 2),
                clrq char(8),
                jyfw text,
                djzt varchar(10) NOT NULL DEFAULT '存续',
                gxsj timestamp NOT NULL DEFAULT now()
            )
            """
        )
    finally:
        await conn.close()


async def _register_company(dsn: str) -> None:
    """What samr's clerk does in the registration system (the only time it is typed)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO t_qydj (tyshxydm, qymc, fddbr, fddbr_sfzh, zs, zczb, clrq, jyfw) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            COMPANY_USCC,
            COMPANY["name"],
            COMPANY["legal_representative"],
            COMPANY["legal_representative_id"],
            COMPANY["address"],
            COMPANY["registered_capital"],
            "20261102",
            COMPANY["business_scope"],
        )
    finally:
        await conn.close()


async def _move_company(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "UPDATE t_qydj SET zs = $1, gxsj = now() WHERE tyshxydm = $2", MOVED, COMPANY_USCC
        )
    finally:
        await conn.close()


@dataclass
class PoliceSystem:
    """The police's legacy seal-engraving system, as a REST service."""

    puts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    companies: dict[str, dict[str, Any]] = field(default_factory=dict)

    async def put(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        body = await request.json()
        self.puts.append((key, body))
        self.companies[key] = body
        return web.json_response({"code": 0, "msg": "成功"})


@pytest_asyncio.fixture
async def police_system() -> AsyncIterator[tuple[PoliceSystem, str]]:
    system = PoliceSystem()
    app = web.Application()
    app.router.add_put("/api/v1/qy/{key}", system.put)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield system, f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def _tax_legacy(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE t_swdj (nsrsbh TEXT PRIMARY KEY, nsrmc TEXT NOT NULL, scjydz TEXT, "
        "fddbrxm TEXT, lrrq TEXT)"
    )
    conn.commit()
    conn.close()


def _tax_rows(path: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute("SELECT nsrsbh, nsrmc, scjydz, fddbrxm, lrrq FROM t_swdj"))
    finally:
        conn.close()


def _hrss_rows(folder: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path in sorted(folder.glob("*.csv")):
        with path.open(encoding="gb18030", newline="") as f:
            rows += list(csv.DictReader(f))
    return rows


async def _until(condition: Callable[[], bool], what: str, within: float = 40.0) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.05)
    assert condition(), what


async def _start(
    node: Node, code: str, officer: str, path: Path, stop: asyncio.Event
) -> asyncio.Task[RunSummary]:
    mapping = load_mapping(path, known_checks=VALIDATORS)
    client = client_for(node, code, officer)

    async def run() -> RunSummary:
        async with client:
            runner = AdapterRunner(mapping, client=client, validators=VALIDATORS)
            return await runner.run(stop=stop)

    return asyncio.create_task(run(), name=f"adapter-{code}")


async def test_steps_1_and_2_through_real_adapters(
    events_node: Node,
    legacy_dsn: str,  # noqa: F811 - the fixture imported above
    police_system: tuple[PoliceSystem, str],
    tmp_path: Path,
) -> None:
    node = events_node
    police, police_url = police_system
    async with client_for(node, "samr", "SC-0001") as samr:
        await samr.register_dataset(ENTERPRISE, publish=True)
    await grant_representative_ids(partial(client_for, node), node.clock.now())
    await _samr_legacy(legacy_dsn)
    _tax_legacy(tmp_path / "legacy-tax.db")
    (tmp_path / "exports").mkdir()
    (tmp_path / "imports").mkdir()

    configs = {
        "samr": SAMR.format(exchange=_exchange(node, "samr", "SC-0001"), dsn=legacy_dsn),
        "tax": TAX.format(exchange=_exchange(node, "tax", "SW-0001")),
        "hrss": HRSS.format(exchange=_exchange(node, "hrss", "RS-0001")),
        "police": POLICE.format(exchange=_exchange(node, "police", "GA-0001"), url=police_url),
    }
    stop = asyncio.Event()
    tasks: dict[str, asyncio.Task[RunSummary]] = {}
    for code, text in configs.items():
        path = tmp_path / f"{code}.yaml"
        path.write_text(text, encoding="utf-8")
        tasks[code] = await _start(node, code, f"{code.upper()}-0001", path, stop)
    try:
        # Step 1: registered once, in samr's own system.
        await _register_company(legacy_dsn)
        # Step 2: it reaches tax, social security and police with nobody typing it.
        await _until(lambda: len(_tax_rows(tmp_path / "legacy-tax.db")) == 1, "tax has it")
        await _until(lambda: len(_hrss_rows(tmp_path / "imports")) == 1, "hrss has it")
        await _until(lambda: COMPANY_USCC in police.companies, "police has it")
        assert _tax_rows(tmp_path / "legacy-tax.db") == [
            (
                COMPANY_USCC,
                COMPANY["name"],
                COMPANY["address"],
                COMPANY["legal_representative"],
                "系统同步",
            )
        ]
        assert _hrss_rows(tmp_path / "imports") == [
            {
                "op": "upsert",
                "统一社会信用代码": COMPANY_USCC,
                "单位名称": str(COMPANY["name"]),
                "单位地址": str(COMPANY["address"]),
            }
        ]
        assert police.companies[COMPANY_USCC] == {
            "tyshxydm": COMPANY_USCC,
            "qymc": COMPANY["name"],
            "fddbr": COMPANY["legal_representative"],
            "fddbr_sfzh": COMPANY["legal_representative_id"],
        }

        # The address changes in samr's system; the change reaches all three.
        await _move_company(legacy_dsn)
        await _until(
            lambda: _tax_rows(tmp_path / "legacy-tax.db")[0][2] == MOVED, "tax has the move"
        )
        await _until(lambda: len(_hrss_rows(tmp_path / "imports")) == 2, "hrss has the move")
        await _until(lambda: len(police.puts) == 2, "police has the update")
    finally:
        stop.set()
        summaries = {code: await task for code, task in tasks.items()}
    for code, summary in summaries.items():
        assert summary.ok, (code, summary.errors)
    assert _hrss_rows(tmp_path / "imports")[1]["单位地址"] == MOVED
    # police's system records only the fields it subscribed to; the address is not one.
    assert [key for key, _ in police.puts] == [COMPANY_USCC, COMPANY_USCC]
    async with client_for(node, "approval") as approval:
        answer = await approval.query(
            "samr.enterprise",
            [COMPANY_USCC],
            fields=["address", "established"],
            purpose="食品经营许可审批",
            case_id="SPJY-2026-000123",
        )
    record = answer.by_key()[COMPANY_USCC]
    assert record.version == 2  # one insert and one change: nothing published twice
    assert record.fields == {"address": MOVED, "established": COMPANY["established"]}


async def test_adapter_run_once_as_a_command(
    node: Node,
    legacy_dsn: str,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    async with client_for(node, "samr", "SC-0001") as samr:
        await samr.register_dataset(ENTERPRISE, publish=True)
    await grant_representative_ids(partial(client_for, node), node.clock.now())
    await _samr_legacy(legacy_dsn)
    await _register_company(legacy_dsn)
    conn = await asyncpg.connect(legacy_dsn)
    try:  # a row with a mistyped USCC: rejected, and the others flow
        await conn.execute(
            "INSERT INTO t_qydj (tyshxydm, qymc, clrq) VALUES ('91330102MA2K8Q7R1X', '错码公司', "
            "'20261301')"
        )
    finally:
        await conn.close()
    config = tmp_path / "samr.yaml"
    config.write_text(
        SAMR.format(exchange=_exchange(node, "samr", "SC-0001"), dsn=legacy_dsn), encoding="utf-8"
    )

    checked = await atongban("adapter", "check", str(config), "--json")
    assert checked.code == 0, checked.stderr
    checks = {c["check"]: c for c in checked.json()["checks"]}
    assert set(checks) == {"source", "exchange", "storage", "stream"}
    assert checks["storage"]["quota_bytes"] == 20 * 1024**3  # the node's default
    assert 0 < checks["storage"]["stored_bytes"] < 1024**2

    first = await atongban("adapter", "run", str(config), "--once", "--json")
    assert first.code == 0, first.stderr
    lines = first.lines()
    (done,) = [line for line in lines if line["event"] == "pass"]
    assert (done["inserts"], done["rejected"]) == (1, 1)
    assert lines[-1]["event"] == "summary"
    assert lines[-1]["ok"] is True

    again = await atongban("adapter", "run", str(config), "--once", "--json")
    (done,) = [line for line in again.lines() if line["event"] == "pass"]
    assert (done["inserts"], done["changed"]) == (0, 0)

    rejects = await atongban("adapter", "rejects", str(config), "--json")
    assert rejects.code == 0
    (reject,) = rejects.json()["rejects"]
    assert (reject["stream"], reject["reason"], reject["field"]) == (
        "enterprises",
        "CHECK_FAILED",
        "uscc",
    )
    assert reject["count"] == 2  # seen by both runs

    replayed = await atongban("adapter", "replay", str(config), "--json")
    assert replayed.code == 0, replayed.stderr
    assert replayed.json()["streams"]["enterprises"]["still_rejected"] == 1

    # A mistake in the file: a sentence and a reason code, exit 1, no traceback.
    config.write_text(config.read_text().replace("cursor_column", "cursor_colum"))
    broken = await atongban("adapter", "run", str(config), "--once")
    assert broken.code == 1
    assert "MAPPING_INVALID" in broken.stderr
    assert "Traceback" not in broken.stderr
    as_json = await atongban("adapter", "run", str(config), "--once", "--json")
    assert json.loads(as_json.stdout)["reason"] == "MAPPING_INVALID"
