"""REST and SOAP sources against real services on loopback: paging, a 429 storm, 5xx
answers and an outage, write-back refusals, SOAP faults. In each, nothing is lost and
nothing is published or applied twice."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from tests.adapters.conftest import RecordingSink, write_mapping
from tongban.adapters import (
    Op,
    SourceReadFailed,
    SourceUnavailable,
    StateStore,
    StreamSync,
    WriteCommand,
    apply_commands,
    replay_write_rejects,
)
from tongban.adapters.sources import RestSource, SoapSource, open_source

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Legacy:
    """A legacy REST service: 25 permits, paged; faults injected per request."""

    permits: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            f"JY{n:05d}": {"number": f"JY{n:05d}", "holder": f"餐饮店{n}"} for n in range(1, 26)
        }
    )
    plan: list[tuple[int, str]] = field(default_factory=list)
    """Answers for the next requests, in order: (status, Retry-After)."""
    down: bool = False
    requests: int = 0
    saved: dict[str, dict[str, Any]] = field(default_factory=dict)

    def injected(self) -> web.Response | None:
        self.requests += 1
        if self.down:
            return web.json_response({"error": "maintenance"}, status=503)
        if self.plan:
            status, retry_after = self.plan.pop(0)
            headers = {"Retry-After": retry_after} if retry_after else {}
            return web.json_response({"error": "injected"}, status=status, headers=headers)
        return None

    async def list_permits(self, request: web.Request) -> web.Response:
        if (fault := self.injected()) is not None:
            return fault
        page, size = int(request.query["page"]), int(request.query["size"])
        ordered = [self.permits[k] for k in sorted(self.permits)]
        return web.json_response(
            {"data": {"items": ordered[(page - 1) * size : page * size]}, "page": page}
        )

    async def list_linked(self, request: web.Request) -> web.Response:
        if (fault := self.injected()) is not None:
            return fault
        after = request.query.get("after", "")
        ordered = [self.permits[k] for k in sorted(self.permits) if k > after][:10]
        more = ordered and ordered[-1]["number"] != max(self.permits)
        link = f"/linked?after={ordered[-1]['number']}" if more else None
        return web.json_response({"items": ordered, "next": link})

    async def put_enterprise(self, request: web.Request) -> web.Response:
        if (fault := self.injected()) is not None:
            return fault
        body = await request.json()
        if not body.get("mc"):
            return web.json_response({"error": "名称不能为空"}, status=422)
        self.saved[request.match_info["key"]] = body
        return web.json_response({"ok": True})

    async def delete_enterprise(self, request: web.Request) -> web.Response:
        if (fault := self.injected()) is not None:
            return fault
        if self.saved.pop(request.match_info["key"], None) is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.Response(status=204)


@pytest_asyncio.fixture
async def legacy_rest() -> AsyncIterator[tuple[Legacy, str]]:
    legacy = Legacy()
    app = web.Application()
    app.router.add_get("/permits", legacy.list_permits)
    app.router.add_get("/linked", legacy.list_linked)
    app.router.add_put("/enterprises/{key}", legacy.put_enterprise)
    app.router.add_delete("/enterprises/{key}", legacy.delete_enterprise)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield legacy, f"http://{host}:{port}"
    finally:
        await runner.cleanup()


REST = """\
adapter: permits
source:
  kind: rest
  base_url: "{url}"
  items: data.items
  paging: {{kind: page}}
  retry: {{attempts: 3, initial_delay_seconds: 0.01, max_delay_seconds: 0.05}}
  max_retry_after_seconds: 5
streams:
  - name: permits
    endpoint: /permits
    dataset: approval.permit
    key: number
    batch_size: 10
    mode: {{kind: snapshot_diff}}
    fields:
      number: number
      holder: {{column: holder, required: true}}
write_back:
  - dataset: samr.enterprise
    endpoint: /enterprises/{{key}}
    key_column: tyshxydm
    columns:
      mc: name
      clrq: {{field: established, format: "%Y%m%d"}}
"""


async def _sync(
    tmp_path: Path, text: str, sink: RecordingSink, state: StateStore
) -> tuple[StreamSync, RestSource]:
    mapping = write_mapping(tmp_path, text)
    source = open_source(mapping)
    assert isinstance(source, RestSource)
    return StreamSync(source, mapping, "permits", state, sink, validators={}), source


async def test_rest_pages_through_a_429_storm_and_a_500(
    legacy_rest: tuple[Legacy, str], tmp_path: Path, sink: RecordingSink
) -> None:
    legacy, url = legacy_rest
    # The first page answers 500 once; then six 429s, the last asking for a second.
    legacy.plan = [(500, ""), *[(429, "0")] * 5, (429, "1")]
    with StateStore.open(tmp_path / "state.sqlite") as state:
        sync, source = await _sync(tmp_path, REST.format(url=url), sink, state)
        async with source:
            report = await sync.run()
            assert report.inserts == 25
            assert sorted(sink.keys()) == sorted(legacy.permits)  # each once, none lost
            assert source.retries == 1
            assert source.throttled_seconds == 1.0  # Retry-After honoured as given
            assert legacy.requests == 7 + 3  # the faults, then three pages
            sink.reset()
            again = await sync.run()
    assert (again.unchanged, sink.changes) == (25, [])


async def test_rest_outage_keeps_the_committed_pages_and_resumes(
    legacy_rest: tuple[Legacy, str], tmp_path: Path, sink: RecordingSink
) -> None:
    legacy, url = legacy_rest
    with StateStore.open(tmp_path / "state.sqlite") as state:
        sync, source = await _sync(tmp_path, REST.format(url=url), sink, state)
        async with source:
            # Down after the first page: every retry answers 503.
            async def first_page_only(call: int) -> None:
                legacy.down = call >= 1

            sink.before = first_page_only
            with pytest.raises(SourceUnavailable) as outage:
                await sync.run()
            assert outage.value.retriable
            assert len(sink.keys()) == 10
            sink.before = None
            legacy.down = False
            resumed = await sync.run()
    assert resumed.inserts == 15
    keys = sink.keys()
    assert sorted(keys) == sorted(legacy.permits)
    assert len(keys) == len(set(keys))  # nothing published twice


async def test_rest_retry_after_beyond_the_limit_is_refused(
    legacy_rest: tuple[Legacy, str], tmp_path: Path, sink: RecordingSink
) -> None:
    legacy, url = legacy_rest
    legacy.plan = [(429, "3600")]
    with StateStore.open(tmp_path / "state.sqlite") as state:
        sync, source = await _sync(tmp_path, REST.format(url=url), sink, state)
        async with source:
            with pytest.raises(SourceUnavailable, match="longer than max_retry_after_seconds"):
                await sync.run()
        assert state.checkpoint("permits") is None
    assert sink.changes == []


async def test_rest_next_link_paging(
    legacy_rest: tuple[Legacy, str], tmp_path: Path, sink: RecordingSink
) -> None:
    _, url = legacy_rest
    text = (
        REST.format(url=url)
        .replace("items: data.items", "items: items")
        .replace("paging: {kind: page}", "paging: {kind: next_link, next: next}")
        .replace("endpoint: /permits", "endpoint: /linked")
    )
    with StateStore.open(tmp_path / "state.sqlite") as state:
        sync, source = await _sync(tmp_path, text, sink, state)
        async with source:
            report = await sync.run()
    assert report.inserts == 25
    assert report.batches == 3


def _enterprise(n: int, name: str, version: int = 1) -> WriteCommand:
    from datetime import date

    return WriteCommand(
        id=f"e-{n}-{version}",
        dataset="samr.enterprise",
        key=f"9133010{n:011d}",
        op=Op.UPSERT,
        values={"name": name, "established": date(2026, 11, 2)},
        version=version,
    )


async def test_rest_write_back_retries_5xx_and_rejects_a_refused_record(
    legacy_rest: tuple[Legacy, str], tmp_path: Path
) -> None:
    legacy, url = legacy_rest
    mapping = write_mapping(tmp_path, REST.format(url=url))
    legacy.plan = [(502, ""), (429, "0")]
    commands = [_enterprise(1, "杭州味道餐饮管理有限公司"), _enterprise(2, "")]
    with StateStore.open(tmp_path / "state.sqlite") as state:
        async with RestSource(mapping) as source:
            report = await apply_commands(source, state, commands)
            assert report.applied == ["e-1-1"]
            assert report.rejected == ["e-2-1"]
            (refused,) = state.list_write_rejects()
            assert refused.reason == "HTTP_422"
            assert legacy.saved == {
                commands[0].key: {
                    "tyshxydm": commands[0].key,
                    "mc": commands[0].values["name"],
                    "clrq": "20261102",
                }
            }
            # Re-delivered: skipped by command id, not sent again.
            sent = legacy.requests
            assert (await apply_commands(source, state, commands)).duplicates == [
                "e-1-1",
                "e-2-1",
            ]
            assert legacy.requests == sent
            # Deleting twice is fine: a 404 to DELETE means already gone.
            delete = WriteCommand("d-1", "samr.enterprise", commands[0].key, Op.DELETE, {}, 2)
            assert (await apply_commands(source, state, [delete])).applied == ["d-1"]
            assert legacy.saved == {}
            assert (await replay_write_rejects(source, state)).rejected == ["e-2-1"]


# --- SOAP -------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def soap_url() -> AsyncIterator[str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.adapters.soap_service",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        yield f"http://127.0.0.1:{int(line)}/?wsdl"
    finally:
        process.terminate()
        await process.wait()


SOAP = """\
adapter: permits
source:
  kind: soap
  wsdl: "{url}"
  paging: {{kind: page, page_param: page, size_param: size}}
  retry: {{attempts: 2, initial_delay_seconds: 0.01, max_delay_seconds: 0.05}}
streams:
  - name: permits
    endpoint: {operation}
    dataset: approval.permit
    key: number
    batch_size: 10
    mode: {{kind: snapshot_diff}}
    fields:
      number: number
      holder: holder
write_back:
  - dataset: samr.enterprise
    endpoint: SavePermit
    key_column: number
    columns:
      holder: name
"""


async def test_soap_pages_and_a_fault_stops_the_stream_without_a_crash(
    soap_url: str, tmp_path: Path, sink: RecordingSink
) -> None:
    mapping = write_mapping(tmp_path, SOAP.format(url=soap_url, operation="ListPermits"))
    with StateStore.open(tmp_path / "state.sqlite") as state:
        async with SoapSource(mapping) as source:
            await source.check()
            sync = StreamSync(source, mapping, "permits", state, sink, validators={})
            report = await sync.run()
    assert report.inserts == 25
    assert len(set(sink.keys())) == 25

    broken = write_mapping(
        tmp_path, SOAP.format(url=soap_url, operation="ListBroken"), name="broken.yaml"
    )
    with StateStore.open(tmp_path / "broken.sqlite") as state:
        async with SoapSource(broken) as source:
            sync = StreamSync(source, broken, "permits", state, RecordingSink(), validators={})
            with pytest.raises(SourceReadFailed) as fault:
                await sync.run()
        assert state.checkpoint("permits") is None
    assert fault.value.reason == "SOURCE_READ_FAILED"
    assert not fault.value.retriable
    assert "Server.Database" in str(fault.value)


async def test_soap_write_back_fault_rejects_that_command_only(
    soap_url: str, tmp_path: Path
) -> None:
    mapping = write_mapping(tmp_path, SOAP.format(url=soap_url, operation="ListPermits"))
    good = WriteCommand("c-1", "samr.enterprise", "JY90001", Op.UPSERT, {"name": "新店"}, 1)
    refused = WriteCommand("c-2", "samr.enterprise", "JY90002", Op.UPSERT, {"name": "注销企业"}, 1)
    gone = WriteCommand("c-3", "samr.enterprise", "JY00001", Op.DELETE, {}, 2)
    with StateStore.open(tmp_path / "state.sqlite") as state:
        async with SoapSource(mapping) as source:
            report = await apply_commands(source, state, [good, refused, gone])
            assert sorted(report.applied) == ["c-1", "c-3"]
            assert report.rejected == ["c-2"]
            (kept,) = state.list_write_rejects()
            assert kept.reason == "SOAP_FAULT"
            assert "不予登记" in kept.message
            sink = RecordingSink()
            sync = StreamSync(source, mapping, "permits", state, sink, validators={})
            await sync.run()
    holders = {c.key: c.values["holder"] for c in sink.changes}
    assert holders["JY90001"] == "新店"
    assert "JY90002" not in holders
    assert "JY00001" not in holders
