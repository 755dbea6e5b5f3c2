"""The exchange side of an adapter against a real node: publishing is idempotent, the
write-back loop resumes from its acknowledged position and skips what it already
applied, and what an adapter writes back into a table it also publishes does not come
back as a change of its own."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest

from tests.adapters.conftest import VALIDATORS, write_mapping
from tests.conftest import client_for, uscc
from tests.stories.restaurant import COMPANY, COMPANY_USCC, ENTERPRISE
from tongban.adapters import StateStore, StorageFull, StreamSync, apply_commands
from tongban.adapters.exchange import ExchangeSink, WriteBackLoop, command_of
from tongban.adapters.runner import AdapterRunner, check_adapter
from tongban.adapters.sources import PostgresSource, SqliteSource
from tongban.client import Event
from tongban.exchange.db.database import Database
from tongban.exchange.departments import DepartmentStore
from tongban.exchange.node import Node
from tongban.v1 import catalogue_pb2, values_pb2

SAMR_PG = """\
adapter: samr
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
      name: qymc
      address: zs
      established: {{column: clrq, type: date, formats: ["%Y%m%d"]}}
"""


async def _take(stream: AsyncIterator[Event], n: int) -> list[Event]:
    """The first ``n`` events of a subscription stream, which is then closed."""
    got: list[Event] = []
    generator = cast(AsyncGenerator[Event, None], stream)
    async with asyncio.timeout(15), contextlib.aclosing(generator):
        async for event in generator:
            got.append(event)
            if len(got) == n:
                break
    return got


async def test_publishing_a_batch_twice_makes_no_new_version_or_event(
    node: Node, legacy_dsn: str, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(legacy_dsn)
    try:
        await conn.execute(
            "CREATE TABLE t_qydj (id serial PRIMARY KEY, tyshxydm varchar(18), qymc text, "
            "zs text, clrq char(8), gxsj timestamp NOT NULL DEFAULT now())"
        )
        await conn.executemany(
            "INSERT INTO t_qydj (tyshxydm, qymc, zs, clrq) VALUES ($1, $2, $3, '20260105')",
            [(uscc(n), f"企业{n}", f"地址{n}") for n in range(1, 6)],
        )
    finally:
        await conn.close()
    mapping = write_mapping(tmp_path, SAMR_PG.format(dsn=legacy_dsn))
    async with client_for(node, "samr", "SC-1") as samr:
        await samr.register_dataset(ENTERPRISE, publish=True)
        # Killed between publish and commit: the second run has no state and publishes
        # the same batch again.
        for attempt, state_file in enumerate(("a.sqlite", "b.sqlite")):
            sink = ExchangeSink(samr)
            with StateStore.open(tmp_path / state_file) as state:
                async with PostgresSource(mapping) as source:
                    sync = StreamSync(
                        source, mapping, "enterprises", state, sink, validators=VALIDATORS
                    )
                    report = await sync.run()
            assert report.inserts == 5
            if attempt == 0:
                assert (sink.totals.inserted, sink.totals.unchanged) == (5, 0)
            else:
                assert (sink.totals.inserted, sink.totals.unchanged) == (0, 5)
    async with client_for(node, "tax") as tax:
        answer = await tax.query(
            "samr.enterprise", [uscc(1)], fields=["name"], purpose="核验", case_id="T-1"
        )
        assert answer.records[0].version == 1
        subscription = tax.subscribe("samr.enterprise", fields=["name"], purpose="同步")
        events = await _take(subscription, 5)
        subscriptions = await tax.list_subscriptions()
    assert sorted(e.key for e in events) == [uscc(n) for n in range(1, 6)]
    assert subscriptions[0].lag_events == 5  # five events in all: none for the re-publish


TAX_SQLITE = """\
adapter: tax
state: tax.state.sqlite
source:
  kind: sqlite
  path: legacy.db
streams:
  - name: taxpayers
    table: t_nsr
    dataset: tax.taxpayer
    key: uscc
    mode: {kind: cursor, cursor_column: gxsj, key_column: id, look_back: 0}
    fields:
      uscc: {column: tyshxydm, check: uscc}
      name: nsrmc
      address: dz
      status: zt
write_back:
  - dataset: samr.enterprise
    table: t_nsr
    key_column: tyshxydm
    columns:
      nsrmc: name
      dz: address
    subscribe: {purpose: 税务登记信息同步}
"""

TAXPAYER = catalogue_pb2.DatasetSpec(
    code="tax.taxpayer",
    title="纳税人登记信息",
    fields=[
        catalogue_pb2.FieldSpec(name="uscc", type=values_pb2.FIELD_TYPE_STRING, required=True),
        catalogue_pb2.FieldSpec(name="name", type=values_pb2.FIELD_TYPE_STRING),
        catalogue_pb2.FieldSpec(name="address", type=values_pb2.FIELD_TYPE_STRING),
        catalogue_pb2.FieldSpec(name="status", type=values_pb2.FIELD_TYPE_STRING),
    ],
    key_field="uscc",
    subject_kind=catalogue_pb2.SUBJECT_KIND_ENTERPRISE,
    share_class=catalogue_pb2.SHARE_CLASS_UNCONDITIONAL,
)


def _tax_legacy(path: Path) -> None:
    """A legacy taxpayer register: an integer change counter set by triggers, as the
    tax system's own application would."""
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE t_nsr (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            tyshxydm TEXT NOT NULL UNIQUE,
            nsrmc TEXT, dz TEXT, zt TEXT NOT NULL DEFAULT '正常',
            gxsj INTEGER NOT NULL DEFAULT 0
        );
        CREATE TRIGGER t_nsr_ins AFTER INSERT ON t_nsr BEGIN
            UPDATE t_nsr SET gxsj = (SELECT max(gxsj) + 1 FROM t_nsr) WHERE id = NEW.id;
        END;
        CREATE TRIGGER t_nsr_upd AFTER UPDATE OF tyshxydm, nsrmc, dz, zt ON t_nsr BEGIN
            UPDATE t_nsr SET gxsj = (SELECT max(gxsj) + 1 FROM t_nsr) WHERE id = NEW.id;
        END;
        """
    )
    conn.commit()
    conn.close()


async def test_write_back_resumes_after_its_acknowledged_position(
    node: Node, tmp_path: Path
) -> None:
    _tax_legacy(tmp_path / "legacy.db")
    mapping = write_mapping(tmp_path, TAX_SQLITE)
    target = mapping.write_back_target("samr.enterprise")
    async with client_for(node, "samr", "SC-1") as samr:
        await samr.register_dataset(ENTERPRISE, publish=True)
        await samr.publish_records("samr.enterprise", [(COMPANY_USCC, COMPANY)])
        await samr.publish_records("samr.enterprise", [(uscc(7), dict(COMPANY, name="另一家"))])
    async with client_for(node, "tax", "SW-1") as tax:
        with StateStore.open(tmp_path / "tax.state.sqlite") as state:
            async with SqliteSource(mapping) as source:
                # A first run applied both events and recorded them, then died before
                # acknowledging: the exchange delivers them again.
                stream = tax.subscribe(
                    "samr.enterprise", fields=["name", "address"], purpose="税务登记信息同步"
                )
                first = await _take(stream, 2)
                done = await apply_commands(source, state, [command_of(e) for e in first])
                assert len(done.applied) == 2

                loop = WriteBackLoop(
                    client=tax, source=source, state=state, mapping=mapping, target=target
                )
                report = await loop.run(asyncio.Event(), once=True)
                assert (report.events, report.duplicates, report.applied) == (2, 2, 0)
                assert report.acknowledged == max(e.position for e in first)

                # The next run starts after the acknowledged position: only the new event.
                async with client_for(node, "samr", "SC-1") as samr:
                    moved = dict(COMPANY, address="浙江省杭州市拱墅区湖墅南路9号")
                    await samr.publish_records("samr.enterprise", [(COMPANY_USCC, moved)])
                again = WriteBackLoop(
                    client=tax, source=source, state=state, mapping=mapping, target=target
                )
                report = await again.run(asyncio.Event(), once=True)
                assert (report.events, report.applied, report.duplicates) == (1, 1, 0)
    rows = sqlite3.connect(tmp_path / "legacy.db").execute(
        "SELECT tyshxydm, nsrmc, dz FROM t_nsr ORDER BY tyshxydm"
    )
    assert sorted(rows) == sorted(
        [
            (COMPANY_USCC, COMPANY["name"], "浙江省杭州市拱墅区湖墅南路9号"),
            (uscc(7), "另一家", COMPANY["address"]),
        ]
    )


async def test_what_is_written_back_is_not_published_again(node: Node, tmp_path: Path) -> None:
    """tax's register is both written back (the company from samr) and published
    (tax.taxpayer): the company arriving from samr is not tax's change to publish; the tax
    clerk's own change to it afterwards is."""
    _tax_legacy(tmp_path / "legacy.db")
    mapping = write_mapping(tmp_path, TAX_SQLITE)
    async with client_for(node, "samr", "SC-1") as samr:
        await samr.register_dataset(ENTERPRISE, publish=True)
        await samr.publish_records("samr.enterprise", [(COMPANY_USCC, COMPANY)])
    events: list[dict[str, Any]] = []
    async with client_for(node, "tax", "SW-1") as tax:
        await tax.register_dataset(TAXPAYER, publish=True)
        runner = AdapterRunner(mapping, client=tax, validators=VALIDATORS, on_event=events.append)
        first = await runner.run(once=True)
        assert first.ok, first.errors
        # The write-back ran; a second pass reads the row it left (whichever loop ran
        # first above) and must not publish it.
        second = await runner.run(once=True)
        assert second.ok, second.errors
        passes = [e for e in events if e["event"] == "pass"]
        assert sum(int(e["echoes"]) for e in passes) == 1
        assert sum(int(e["inserts"]) + int(e["changed"]) for e in passes) == 0
        answer = await tax.query(
            "tax.taxpayer", [COMPANY_USCC], fields=["name"], purpose="核验", case_id="T-1"
        )
        assert answer.missing_keys == [COMPANY_USCC]

        # The clerk changes the taxpayer's status: that is tax's own change.
        conn = sqlite3.connect(tmp_path / "legacy.db")
        conn.execute("UPDATE t_nsr SET zt = '非正常户' WHERE tyshxydm = ?", (COMPANY_USCC,))
        conn.commit()
        conn.close()
        third = await runner.run(once=True)
        assert third.passes["taxpayers"].changed == 1
        answer = await tax.query(
            "tax.taxpayer",
            [COMPANY_USCC],
            fields=["name", "status"],
            purpose="核验",
            case_id="T-1",
        )
        assert answer.records[0].fields == {"name": COMPANY["name"], "status": "非正常户"}
    with StateStore.open(tmp_path / "tax.state.sqlite") as state:
        assert state.echo_count() == 0  # read back and cleared


async def test_an_adapter_past_its_departments_quota_stops_and_loses_nothing(
    node: Node, tmp_path: Path
) -> None:
    """A storage quota refusal needs the operator, not a retry: a running adapter stops
    the stream with the reason (it does not retry in a loop), and once the quota is
    raised the next run publishes the rest, from where it stopped."""
    _tax_legacy(tmp_path / "legacy.db")
    conn = sqlite3.connect(tmp_path / "legacy.db")
    conn.executemany(
        "INSERT INTO t_nsr (tyshxydm, nsrmc, dz) VALUES (?, ?, ?)",
        [(uscc(n), f"纳税人 {n}", f"某县某路 {n} 号") for n in range(300)],
    )
    conn.commit()
    conn.close()
    mapping = write_mapping(tmp_path, TAX_SQLITE.split("write_back:")[0])
    async with client_for(node, "tax", "SW-1") as tax:
        await tax.register_dataset(TAXPAYER, publish=True)
        await tax.publish_records(
            "tax.taxpayer", [(uscc(1000), {"uscc": uscc(1000), "name": "甲", "status": "正常"})]
        )
        assert node.db is not None
        one = await node.db.pool.fetchval(
            "SELECT stored_bytes FROM dataset_stream WHERE dataset = 'tax.taxpayer'"
        )
        async with await Database.open(node.settings, pool_size=1, owner=True) as owner:
            await DepartmentStore(owner.pool).set_storage_quota("tax", one * 2)
        events: list[dict[str, Any]] = []
        runner = AdapterRunner(mapping, client=tax, validators=VALIDATORS, on_event=events.append)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(30, stop.set)
        summary = await runner.run(stop=stop)
        assert not stop.is_set()  # it stopped by itself
        assert [e["reason"] for e in summary.errors] == ["STORAGE_QUOTA_EXCEEDED"]
        assert not [e for e in events if e["event"] == "retry"]

        # `tongban adapter check` says so before a run once the quota is all used.
        held = await tax.storage()
        async with await Database.open(node.settings, pool_size=1, owner=True) as owner:
            await DepartmentStore(owner.pool).set_storage_quota("tax", held.stored_bytes)
        with pytest.raises(StorageFull, match="its whole storage quota"):
            await check_adapter(mapping, tax)

        async with await Database.open(node.settings, pool_size=1, owner=True) as owner:
            await DepartmentStore(owner.pool).set_storage_quota("tax", None)
        assert [c["check"] for c in await check_adapter(mapping, tax)][:3] == [
            "source",
            "exchange",
            "storage",
        ]
        again = await runner.run(once=True)
        assert again.ok, again.errors
        held = await node.db.pool.fetchval(
            "SELECT count(*) FROM record WHERE dataset = 'tax.taxpayer' AND valid_to IS NULL"
        )
        assert held == 301
