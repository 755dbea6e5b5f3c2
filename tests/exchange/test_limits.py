"""Per-department call limits and the checks every request gets before a service sees it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from tests.cli_helpers import cli_env, tongban
from tests.conftest import client_for, enrol_demo, raw_channel
from tests.stories.restaurant import BUSINESS_LICENCE_CLAIMS, ENTERPRISE
from tongban.client import ExchangeError
from tongban.exchange.audit.refusals import refusals_in
from tongban.exchange.db.database import Database
from tongban.exchange.departments import CallLimits, Department, DepartmentStore, Level, Status
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.fairness import BACKOFF
from tongban.exchange.identity import Caller
from tongban.exchange.node import Node
from tongban.exchange.server.limits import CallLimiter, RateLimited, TooManySubscriptions
from tongban.exchange.server.request_checks import MAX_STRING, check_request
from tongban.exchange.settings import Settings
from tongban.signing.clock import FixedClock, SystemClock
from tongban.v1 import catalogue_pb2, events_pb2, events_pb2_grpc, query_pb2

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _caller(code: str = "tax", limits: CallLimits | None = None) -> Caller:
    department = Department(
        code, "x", Level.COUNTY, None, frozenset(), Status.ACTIVE, b"", None, NOW, NOW,
        limits or CallLimits(),
    )  # fmt: skip
    return Caller(department, None, b"")


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_the_rate_refills_and_the_retry_delay_says_when() -> None:
    clock = _Clock()
    logged: list[tuple[str, str, int]] = []
    counted: list[tuple[str, str]] = []

    async def log(caller: Caller, method: str, reason: str, count: int) -> None:
        logged.append((caller.department.code, reason, count))

    limiter = CallLimiter(
        concurrent=100,
        per_second=10,
        subscriptions=1,
        on_refused=log,
        count_refused=lambda d, r: counted.append((d, r)),
        clock=clock,
    )
    tax = _caller()
    for _ in range(10):  # a burst of one second's worth
        (await limiter.enter(tax, "/m", stream=False))()
    with pytest.raises(RateLimited) as refused:
        await limiter.enter(tax, "/m", stream=False)
    assert refused.value.retry_after == pytest.approx(0.1)
    assert refused.value.status == "RESOURCE_EXHAUSTED"
    # Another department is not affected.
    (await limiter.enter(_caller("samr"), "/m", stream=False))()
    for _ in range(5):
        with pytest.raises(RateLimited):
            await limiter.enter(tax, "/m", stream=False)
    clock.now += 0.15  # one call's worth refilled (and half of another)
    (await limiter.enter(tax, "/m", stream=False))()
    with pytest.raises(RateLimited):
        await limiter.enter(tax, "/m", stream=False)
    # Every refusal is counted and handed on; merging a flood into few entries is the
    # node's RefusalTally's work (tests/exchange/audit/test_refusals.py).
    assert counted == [("tax", "RATE_LIMITED")] * 7
    assert logged == [("tax", "RATE_LIMITED", 1)] * 7


async def test_calls_in_progress_and_subscriptions_are_bounded() -> None:
    limiter = CallLimiter(concurrent=2, per_second=1000, subscriptions=1, clock=_Clock())
    tax = _caller()
    first = await limiter.enter(tax, "/m", stream=False)
    second = await limiter.enter(tax, "/m", stream=False)
    with pytest.raises(RateLimited) as busy:
        await limiter.enter(tax, "/m", stream=False)
    assert busy.value.retry_after is not None
    assert busy.value.retry_after > 0
    first()
    first()  # releasing twice frees one place, not two
    third = await limiter.enter(tax, "/m", stream=False)
    with pytest.raises(RateLimited):
        await limiter.enter(tax, "/m", stream=False)
    second()
    third()
    # A subscription does not take a call's place, and is bounded on its own.
    stream = await limiter.enter(tax, "/s", stream=True)
    with pytest.raises(TooManySubscriptions):
        await limiter.enter(tax, "/s", stream=True)
    stream()
    (await limiter.enter(tax, "/s", stream=True))()
    # The department's own limits take precedence over the node's.
    generous = _caller(limits=CallLimits(concurrent=5, subscriptions=0))
    held = [await limiter.enter(generous, "/m", stream=False) for _ in range(5)]
    with pytest.raises(TooManySubscriptions):
        await limiter.enter(generous, "/s", stream=True)
    for release in held:
        release()


def test_limits_out_of_range_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        CallLimits(concurrent=0)
    with pytest.raises(InvalidArgument):
        CallLimits(per_second=0)
    with pytest.raises(InvalidArgument):
        CallLimits(subscriptions=-1)


def test_every_request_field_is_checked_from_its_descriptor() -> None:
    check_request(query_pb2.QueryRequest(dataset="samr.enterprise", keys=["x"], purpose="p"))
    cases: list[tuple[Any, str]] = [
        (query_pb2.QueryRequest(dataset="samr\x00enterprise"), "dataset"),
        (query_pb2.QueryRequest(keys=["ok", "bad\x00"]), "keys[1]"),
        (query_pb2.QueryRequest(purpose="x" * (MAX_STRING + 1)), "purpose"),
        (catalogue_pb2.ListDatasetsRequest(share_class=-1), "share_class"),  # type: ignore[arg-type]
        (catalogue_pb2.ListDatasetsRequest(subject_kind=99), "subject_kind"),  # type: ignore[arg-type]
    ]
    for message, field in cases:
        with pytest.raises(InvalidArgument) as refused:
            check_request(message)
        assert refused.value.metadata["field"] == field


def test_the_fast_path_still_finds_long_strings_and_bad_enums() -> None:
    from tongban.v1 import records_pb2, values_pb2

    batch = records_pb2.PublishRecordsRequest(dataset="samr.bench")
    for i in range(100):
        change = batch.changes.add(key=f"k{i}")
        change.fields["name"].CopyFrom(values_pb2.FieldValue(string_value="企业"))
    check_request(batch, may_hold_nul=False)
    batch.changes[57].fields["name"].string_value = "x" * (MAX_STRING + 1)
    with pytest.raises(InvalidArgument) as long:
        check_request(batch, may_hold_nul=False)
    assert long.value.metadata["field"] == "changes[57].fields['name'].string_value"
    batch.changes[57].fields["name"].string_value = "a\x00b"
    with pytest.raises(InvalidArgument) as nul:
        check_request(batch)
    assert nul.value.metadata["field"] == "changes[57].fields['name'].string_value"
    batch.changes[57].fields["name"].string_value = "企业"
    batch.changes[3].fields["na\x00me"].integer_value = 0  # a zero byte: the full walk
    with pytest.raises(InvalidArgument) as key:
        check_request(batch)
    assert key.value.metadata["field"] == "changes[3].fields key"


async def _until_applied(node: Node, code: str, limits: CallLimits) -> None:
    """Set ``code``'s own limits. Called before ``code`` makes its first call, so the node
    has not cached the department yet and reads the limits with it."""
    async with await Database.open(node.settings, pool_size=1, owner=True) as owner:
        await DepartmentStore(owner.pool).set_limits(code, limits)


async def test_a_department_past_its_rate_is_refused_and_others_are_not(node: Node) -> None:
    await _until_applied(node, "tax", CallLimits(per_second=5))
    async with client_for(node, "tax") as tax, client_for(node, "samr") as samr:
        results = await asyncio.gather(*(tax.who_am_i() for _ in range(20)), return_exceptions=True)
        refused = [r for r in results if isinstance(r, ExchangeError)]
        assert refused, "20 calls at once against a limit of 5 per second"
        assert all(
            isinstance(r, ExchangeError) or getattr(r, "department", None) == "tax" for r in results
        )
        for error in refused:
            assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error.reason == "RATE_LIMITED"
            assert error.retriable  # what an adapter reads instead of grpc's status codes
            assert error.retry_after is not None
            assert 0 < error.retry_after <= 1
        # samr's calls at the same moment all pass.
        assert len(await asyncio.gather(*(samr.who_am_i() for _ in range(20)))) == 20
    assert node.db is not None
    row = await node.db.pool.fetchrow(
        "SELECT decision, reason, purpose FROM access_log WHERE action = 'call.refused'"
        " AND caller = 'tax'"
    )
    assert row is not None
    assert (row["decision"], row["reason"]) == ("denied", "RATE_LIMITED")
    assert "WhoAmI" in row["purpose"]

    # Every refused call is counted in some entry, the tail of the burst included (written
    # when its window ends, with no later refusal to carry it).
    async def logged_refusals() -> int:
        assert node.db is not None
        rows = await node.db.pool.fetch(
            "SELECT action, purpose FROM access_log WHERE action = 'call.refused'"
            " AND caller = 'tax'"
        )
        return sum(refusals_in(r["action"], r["purpose"]) for r in rows)

    async with asyncio.timeout(10):
        while await logged_refusals() < len(refused):
            await asyncio.sleep(0.1)
    assert await logged_refusals() == len(refused)


async def test_calls_in_progress_past_the_limit_are_refused(node: Node) -> None:
    await _until_applied(node, "samr", CallLimits(concurrent=2))
    async with client_for(node, "samr", "SC-1") as samr:
        results = await asyncio.gather(
            *(
                samr.issue_licence("business-licence", BUSINESS_LICENCE_CLAIMS, reason="设立登记")
                for _ in range(12)
            ),
            return_exceptions=True,
        )
    refused = [r for r in results if isinstance(r, ExchangeError)]
    issued = [r for r in results if not isinstance(r, BaseException)]
    assert refused
    assert issued
    assert {r.reason for r in refused} == {"RATE_LIMITED"}
    # Every licence issued is in the log; none refused left a trace but its refusal.
    assert node.db is not None
    logged = await node.db.pool.fetchval(
        "SELECT count(*) FROM access_log WHERE action = 'licence-issue'"
    )
    assert logged == len(issued)


async def test_subscriptions_per_department_are_bounded(node: Node) -> None:
    await _until_applied(node, "tax", CallLimits(subscriptions=1))
    async with client_for(node, "samr") as samr:
        await samr.register_dataset(ENTERPRISE, publish=True)
    async with client_for(node, "tax") as tax:
        first = tax.subscribe("samr.enterprise", fields=["name"], purpose="税务登记")
        opened = asyncio.ensure_future(first.__anext__())
        await asyncio.sleep(0.5)  # the first stream is open and waiting for events
        with pytest.raises(ExchangeError) as second:
            await tax.subscribe("samr.enterprise", fields=["name"], purpose="税务登记").__anext__()
        assert second.value.reason == "TOO_MANY_SUBSCRIPTIONS"
        assert second.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        opened.cancel()
        await asyncio.gather(opened, return_exceptions=True)
        await first.aclose()  # type: ignore[attr-defined]


async def test_a_subscription_the_client_drops_gives_its_place_back(node: Node) -> None:
    """A client that cancels its stream, or whose connection just goes, must not keep its
    department's place: with one subscription allowed, tax subscribes again each time."""
    await _until_applied(node, "tax", CallLimits(subscriptions=1))
    async with client_for(node, "samr") as samr:
        await samr.register_dataset(ENTERPRISE, publish=True)
    request = events_pb2.SubscribeRequest(
        dataset="samr.enterprise", fields=["name"], purpose="税务登记"
    )
    metadata = (("x-tongban-officer", "TX-1"),)
    async with client_for(node, "tax") as tax:
        for attempt in range(6):
            channel = raw_channel(node, "tax")
            stub = events_pb2_grpc.SubscriptionServiceStub(channel)
            for _ in range(100):  # until the last probe's stream has given the place back
                stream = stub.Subscribe(request, metadata=metadata)
                await asyncio.sleep(0.2)
                if not stream.done():  # open and waiting for events: it holds the place
                    break
                assert await stream.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            else:
                pytest.fail(f"attempt {attempt}: the place never came back")
            assert await _eventually(lambda: _subscribes(tax), False), attempt
            if attempt % 2:
                await channel.close(None)  # the connection goes without a word
            else:
                stream.cancel()
                await channel.close(None)
            # The place comes back once the node has seen the stream end.
            assert await _eventually(lambda: _subscribes(tax), True), attempt


async def _subscribes(client: Any) -> bool:
    """Whether tax may subscribe now: True if the stream is open and waiting for events
    after a second, False if it is refused for the department's limit."""
    stream = client.subscribe("samr.enterprise", fields=["name"], purpose="税务登记")
    try:
        await asyncio.wait_for(stream.__anext__(), timeout=1.0)
    except TimeoutError:
        return True
    except ExchangeError as e:
        if e.reason != "TOO_MANY_SUBSCRIPTIONS":
            raise
        return False
    finally:
        await stream.aclose()
    raise AssertionError("an event came from a dataset with no records")


async def _eventually(check: Any, wanted: bool, seconds: float = 10.0) -> bool:
    """Whether ``check()`` answers ``wanted`` within ``seconds``."""
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if await check() is wanted:
            return True
        await asyncio.sleep(0.05)
    return False


def test_dept_limits_command(tmp_path: Path, database_url: str) -> None:
    env = cli_env(TONGBAN_DATABASE_URL=database_url, TONGBAN_KEY_PASSPHRASE="limits test")
    data = str(tmp_path / "d")
    assert tongban("init", "--data-dir", data, env=env).code == 0
    added = tongban(
        "dept", "add", "tax", "--name", "税务局", "--level", "county", "--data-dir", data, env=env
    )
    assert added.code == 0, added.stderr
    shown = tongban("dept", "limits", "tax", "--data-dir", data, env=env)
    assert shown.code == 0, shown.stderr
    assert "64 (default)" in shown.stdout
    set_ = tongban(
        "dept", "limits", "tax", "--per-second", "50", "--concurrent", "8",
        "--data-dir", data, "--json", env=env,
    )  # fmt: skip
    assert set_.code == 0, set_.stderr
    assert set_.json()["department"]["limits"] == {
        "concurrent": 8,
        "per_second": 50.0,
        "subscriptions": None,
    }
    reset = tongban(
        "dept", "limits", "tax", "--concurrent", "default", "--data-dir", data, "--json", env=env
    )
    assert reset.json()["department"]["limits"]["concurrent"] is None
    assert reset.json()["department"]["limits"]["per_second"] == 50.0
    for bad, says in (("0", "between 1 and 100,000"), ("lots", "not a number")):
        refused = tongban("dept", "limits", "tax", "--concurrent", bad, "--data-dir", data, env=env)
        assert refused.code != 0
        assert says in refused.stderr
        assert "Traceback" not in refused.stderr

    # The storage quota (tests/exchange/test_storage_quota.py) beside the call limits.
    assert "stored         20.0 GiB (default)" in shown.stdout
    assert "in use         0 B (0%) in 0 datasets" in shown.stdout
    set_ = tongban(
        "dept", "limits", "tax", "--stored", "1.5GiB", "--data-dir", data, "--json", env=env
    )
    assert set_.code == 0, set_.stderr
    assert set_.json()["department"]["max_stored_bytes"] == 1536 * 1024**2
    assert set_.json()["storage"] == {
        "department": "tax",
        "stored_bytes": 0,
        "datasets": 0,
        "quota_bytes": 1536 * 1024**2,
    }
    shown = tongban("dept", "limits", "tax", "--data-dir", data, env=env)
    assert "stored         1.5 GiB\n" in shown.stdout
    assert "concurrent     64 (default)" in shown.stdout  # the call limits kept
    reset = tongban(
        "dept", "limits", "tax", "--stored", "default", "--data-dir", data, "--json", env=env
    )
    assert reset.json()["department"]["max_stored_bytes"] is None
    for bad in ("lots", "-5GB", "5 XB", "1e9"):
        refused = tongban("dept", "limits", "tax", f"--stored={bad}", "--data-dir", data, env=env)
        assert refused.code != 0
        assert "is not a size" in refused.stderr
        assert "Traceback" not in refused.stderr


def _reason(error: grpc.aio.AioRpcError) -> str:
    trailers: Any = error.trailing_metadata() or ()
    for key, value in trailers:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.reason)
    return ""


async def test_undecodable_requests_are_malformed_on_unary_and_streaming_calls(
    node: Node,
) -> None:
    garbage = b"\x0a\xff\xff\xff\xff\x0f"  # field 1, a length far past the end
    async with raw_channel(node, "samr") as channel:
        query = channel.unary_unary("/tongban.v1.QueryService/Query", None, None)
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await query(garbage)
        bad_utf8 = b"\x0a\x02\xc3\x28"  # dataset = two bytes that are not UTF-8
        with pytest.raises(grpc.aio.AioRpcError) as utf8:
            await query(bad_utf8)
        stream = channel.stream_unary("/tongban.v1.RecordService/StreamRecords", None, None)
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            await stream(iter([garbage]))
        subscribe = channel.unary_stream("/tongban.v1.SubscriptionService/Subscribe", None, None)
        with pytest.raises(grpc.aio.AioRpcError) as server_streamed:
            async for _ in subscribe(garbage):
                pass
    for caught in (unary, utf8, streamed, server_streamed):
        error = caught.value
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert _reason(error) == "MALFORMED_REQUEST"
        assert "DecodeError" not in (error.details() or "")
    async with client_for(node, "samr") as samr:
        assert (await samr.who_am_i()).department == "samr"


async def test_long_work_pauses_while_another_department_has_calls_in_progress() -> None:
    limiter = CallLimiter(concurrent=10, per_second=1000, subscriptions=1, clock=_Clock())
    samr, tax = _caller("samr"), _caller("tax")
    bulk = await limiter.enter(samr, "/StreamRecords", stream=False)
    pace = limiter.pacer("samr")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await pace(0.05)  # alone: no pause
    assert loop.time() - started < 0.05
    query = await limiter.enter(tax, "/Query", stream=False)
    started = loop.time()
    await pace(0.05)  # tax waits: a pause of BACKOFF times the slice
    assert loop.time() - started >= 0.05 * BACKOFF * 0.9
    query()
    started = loop.time()
    await pace(0.05)
    assert loop.time() - started < 0.05
    bulk()


async def test_http_visitors_are_held_to_the_limits_in_buckets_of_their_own(
    settings: Settings,
) -> None:
    """The HTTP listener's visitors pass the same limiter as the departments' calls, the
    verifiers' endpoints in one bucket for all (``http:public``), the console in another:
    a burst past the node's default rate is refused 429 with a Retry-After; the
    operator's /healthz is never refused; the console and the departments are served
    meanwhile; the requests' loop time is charged to their party."""
    limited = settings.model_copy(update={"dept_calls_per_second": 5.0})
    async with Node(limited, clock=FixedClock(SystemClock().now())) as node:
        await enrol_demo(limited)
        base = f"http://127.0.0.1:{node.http_port}"
        async with aiohttp.ClientSession() as http:

            async def get(path: str) -> tuple[int, str | None, dict[str, Any] | None]:
                async with http.get(base + path, allow_redirects=False) as response:
                    json = response.content_type == "application/json"
                    body = await response.json() if json else {"page": await response.text()}
                    return response.status, response.headers.get("Retry-After"), body

            answers = await asyncio.gather(*(get("/trust-list") for _ in range(20)))
            refused = [a for a in answers if a[0] == 429]
            assert refused, "20 requests at once against a limit of 5 per second"
            assert any(status == 200 for status, _, _ in answers)
            for _, retry_after, body in refused:
                assert retry_after is not None
                assert int(retry_after) >= 1
                assert body is not None
                assert body["reason"] == "RATE_LIMITED"
                assert "Retry-After" in body["message"]
            health = await asyncio.gather(*(get("/healthz") for _ in range(20)))
            assert {status for status, _, _ in health} == {200}
            console, _, _ = await get("/console/")
            assert console != 429  # a bucket of its own
            pages = await asyncio.gather(*(get("/console/") for _ in range(20)))
            busy = [body for status, _, body in pages if status == 429]
            assert busy, "the console's own bucket has the same limit"
            assert all("RATE_LIMITED" in str(body) for body in busy)  # a page, not JSON
        async with client_for(node, "tax") as tax:
            assert (await tax.who_am_i()).department == "tax"
    counted = node.metrics.calls_refused.labels("http:public", "RATE_LIMITED")._value.get()
    assert counted == len(refused)
    assert node.admission is not None
    assert node.admission.share.use("http:public") > 0
