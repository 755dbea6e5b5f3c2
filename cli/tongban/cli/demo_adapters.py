"""Steps 1 and 2 of ``tongban demo`` through real adapters on legacy stores the demo
creates in its data dir (``DATA_DIR/legacy``):

- samr's registration system: a SQLite database with legacy column names and dates as
  ``20261102`` text (SQLite rather than a second PostgreSQL database, so the demo needs
  nothing beyond its own embedded server); samr's adapter reads it in cursor mode;
- tax's register: a SQLite table the tax adapter writes the company into;
- social security: a folder its legacy import job reads GB18030 CSV files from;
- police's seal-engraving system: a REST service on loopback (aiohttp) that the police
  adapter PUTs the company to.

Each adapter runs once (``AdapterRunner.run(once=True)``), as ``tongban adapter run
CONFIG --once`` would; the mapping files are left beside the stores to run by hand.
"""

from __future__ import annotations

import csv
import sqlite3
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tongban.adapters import load_mapping
from tongban.adapters.runner import AdapterRunner, RunSummary
from tongban.cli import story_data as story
from tongban.cli.adapter_cmds import VALIDATORS
from tongban.client import Bundle, ExchangeClient
from tongban.errors import TongbanError
from tongban.exchange.enrolment import bundle_dir
from tongban.exchange.settings import Settings

__all__ = ["DemoAdapterFailed", "LegacySystems"]


class DemoAdapterFailed(TongbanError):
    reason = "DEMO_ADAPTER_FAILED"
    status = "INTERNAL"


_SAMR = """\
adapter: samr-registration
exchange: {{endpoint: "{target}", bundle: "{bundle}", officer: SC-0001}}
source: {{kind: sqlite, path: samr-registration.db}}
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
"""
_TAX = """\
adapter: tax-register
exchange: {{endpoint: "{target}", bundle: "{bundle}", officer: SW-0001}}
source: {{kind: sqlite, path: tax-register.db}}
write_back:
  - dataset: samr.enterprise
    table: t_swdj
    key_column: nsrsbh
    columns: {{nsrmc: name, scjydz: address, fddbrxm: legal_representative}}
    subscribe: {{purpose: 登记信息同步}}
"""
_HRSS = """\
adapter: hrss-units
exchange: {{endpoint: "{target}", bundle: "{bundle}", officer: RS-0001}}
source:
  kind: csv
  folder: hrss-exports
  outbound: {{folder: hrss-imports, encoding: gb18030}}
write_back:
  - dataset: samr.enterprise
    key_column: 统一社会信用代码
    columns: {{单位名称: name, 单位地址: address}}
    subscribe: {{purpose: 登记信息同步}}
"""
_POLICE = """\
adapter: police-seals
exchange: {{endpoint: "{target}", bundle: "{bundle}", officer: GA-0001}}
source: {{kind: rest, base_url: "{url}"}}
write_back:
  - dataset: samr.enterprise
    endpoint: /api/v1/qy/{{key}}
    key_column: tyshxydm
    columns: {{qymc: name, fddbr: legal_representative, fddbr_sfzh: legal_representative_id}}
    subscribe: {{purpose: 印章刻制备案}}
"""
SUBSCRIBED = {
    "tax": ["name", "address", "legal_representative"],
    "hrss": ["name", "address"],
    "police": ["name", "legal_representative", "legal_representative_id"],
}
"""The fields each department's write-back mapping subscribes to."""


@dataclass
class _Police:
    received: dict[str, dict[str, Any]] = field(default_factory=dict)

    async def put(self, request: web.Request) -> web.Response:
        self.received[request.match_info["key"]] = await request.json()
        return web.json_response({"code": 0, "msg": "成功"})


@asynccontextmanager
async def _police_service() -> AsyncIterator[tuple[_Police, str]]:
    police = _Police()
    app = web.Application()
    app.router.add_put("/api/v1/qy/{key}", police.put)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield police, f"http://{host}:{port}"
    finally:
        await runner.cleanup()


class LegacySystems:
    """The story departments' legacy systems and adapters, under ``DATA_DIR/legacy``."""

    def __init__(self, settings: Settings, target: str) -> None:
        self._settings = settings
        self._target = target
        self.root = settings.data_dir / "legacy"

    def _config(self, code: str, template: str, **extra: str) -> Path:
        bundle = bundle_dir(self._settings, code)
        path = self.root / f"{code}.yaml"
        text = template.format(target=self._target, bundle=bundle, **extra)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    async def _run_once(self, code: str, config: Path) -> RunSummary:
        mapping = load_mapping(config, known_checks=VALIDATORS)
        assert mapping.exchange is not None
        bundle = Bundle.load(bundle_dir(self._settings, code))
        async with ExchangeClient(
            bundle, target=self._target, officer_id=mapping.exchange.officer
        ) as client:
            summary = await AdapterRunner(mapping, client=client, validators=VALIDATORS).run(
                once=True
            )
        if not summary.ok:
            error = summary.errors[0]
            raise DemoAdapterFailed(
                f"The {code} adapter failed: {error['message']} [{error['reason']}]",
                metadata={"adapter": mapping.adapter},
            )
        return summary

    async def register_company(self) -> tuple[bool, str, dict[str, Any]]:
        """Step 1: samr's clerk registers the company in the legacy registration system;
        samr's adapter publishes it to samr.enterprise."""
        self.root.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.root / "samr-registration.db")
        try:
            conn.executescript(
                """
                CREATE TABLE IF NOT EXISTS t_qydj (
                    id INTEGER PRIMARY KEY, tyshxydm CHAR(18) NOT NULL UNIQUE,
                    qymc VARCHAR(200) NOT NULL, fddbr VARCHAR(50), fddbr_sfzh CHAR(18),
                    zs VARCHAR(300), zczb DECIMAL(18,2), clrq CHAR(8), jyfw TEXT,
                    gxsj TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now'))
                );
                """
            )
            company = story.COMPANY
            conn.execute(
                "INSERT OR IGNORE INTO t_qydj (tyshxydm, qymc, fddbr, fddbr_sfzh, zs, zczb, "
                "clrq, jyfw) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    story.COMPANY_USCC,
                    company["name"],
                    company["legal_representative"],
                    company["legal_representative_id"],
                    company["address"],
                    str(company["registered_capital"]),
                    "20261102",
                    company["business_scope"],
                ),
            )
            conn.commit()
        finally:
            conn.close()
        summary = await self._run_once("samr", self._config("samr", _SAMR))
        report = summary.passes["enterprises"]
        return (
            report.inserts == 1 and report.rejected == 0,
            f"{story.COMPANY['name']} ({story.COMPANY_USCC}) entered once in samr's legacy "
            f"registration database ({self.root / 'samr-registration.db'}, table t_qydj); "
            f"samr's adapter published it to samr.enterprise",
            {"uscc": story.COMPANY_USCC, "published": report.inserts},
        )

    async def deliver_company(self) -> tuple[bool, str, dict[str, Any]]:
        """Step 2: the tax, social security and police adapters write the company into
        their legacy systems, by subscription."""
        tax_db = self.root / "tax-register.db"
        conn = sqlite3.connect(tax_db)
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS t_swdj (nsrsbh TEXT PRIMARY KEY, nsrmc TEXT, "
                "scjydz TEXT, fddbrxm TEXT)"
            )
            conn.commit()
        finally:
            conn.close()
        for folder in ("hrss-exports", "hrss-imports"):
            (self.root / folder).mkdir(exist_ok=True)
        await self._run_once("tax", self._config("tax", _TAX))
        await self._run_once("hrss", self._config("hrss", _HRSS))
        async with _police_service() as (police, url):
            await self._run_once("police", self._config("police", _POLICE, url=url))
        conn = sqlite3.connect(tax_db)
        try:
            tax_rows = list(conn.execute("SELECT nsrsbh, nsrmc FROM t_swdj"))
        finally:
            conn.close()
        hrss_rows: list[dict[str, str]] = []
        for path in sorted((self.root / "hrss-imports").glob("*.csv")):
            with path.open(encoding="gb18030", newline="") as f:
                hrss_rows += list(csv.DictReader(f))
        name = story.COMPANY["name"]
        ok = (
            tax_rows == [(story.COMPANY_USCC, name)]
            and [r["单位名称"] for r in hrss_rows] == [name]
            and police.received.get(story.COMPANY_USCC, {}).get("qymc") == name
        )
        return (
            ok,
            f"tax's register (t_swdj), social security's import folder "
            f"({len(hrss_rows)} row in a GB18030 CSV) and police's REST service each received "
            f"{name} through their adapters — nobody typed it again",
            {"legacy_dir": str(self.root)},
        )
