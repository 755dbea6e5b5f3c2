"""Case notifiers (issue 15): the notice's JSON, the file notifier (whole lines, mode 0600,
concurrent notices), and the webhook notifier against a real HTTP server on loopback
(signature, event id, retries with backoff, final refusals, timeouts, refused
connections), and every bad setting refused."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import os
import socket
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from aiohttp import web

from tongban.exchange.errors import ConfigInvalid
from tongban.exchange.licensing.cases import Case, CaseState, Outcome, Transition
from tongban.exchange.licensing.notifiers import (
    CaseNotice,
    FileNotifier,
    NotifyFailed,
    WebhookNotifier,
    notice_of,
    notifier_from_setting,
)

CHINA = timezone(timedelta(hours=8))
SECRET = b"0123456789abcdef-test-secret"
HANG = -1  # a scripted answer: hold the request until the test ends


def _notice(seq: int = 3, *, number: str = "approval-2026-7K3Q9XW2M4") -> CaseNotice:
    return CaseNotice(
        event_id=f"{number}:{seq}",
        case_number=number,
        item_code="food-business-permit",
        item_name="食品经营许可",
        department="approval",
        applicant="91330102MA2K8Q7R1N",
        state="decided",
        outcome="approved",
        licence_number="JY-APPROVAL-2026-900VJ4F8JE9",
        at=datetime(2026, 3, 4, 10, 30, tzinfo=CHINA),
        promised_due_at=datetime.combine(date(2026, 3, 9), time.max, tzinfo=CHINA),
        legal_due_at=datetime.combine(date(2026, 3, 12), time.max, tzinfo=CHINA),
    )


@dataclass
class Receiver:
    """A webhook receiver: answers each request with the next scripted status (200 when
    the script runs out; HANG holds it until released) and records what it got."""

    url: str = ""
    script: list[int] = field(default_factory=list)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        status = self.script.pop(0) if self.script else 200
        if status == HANG:
            await self.release.wait()
            status = 200
        headers = {"Retry-After": "2"} if status == 429 else {}
        return web.Response(status=status, text="ok" if status < 300 else "no", headers=headers)


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    got = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/cases", got.handle)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    got.url = f"http://{host}:{port}/hooks/cases?token=abc"
    try:
        yield got
    finally:
        got.release.set()
        await runner.cleanup()


@dataclass
class Sleeps:
    """An injected ``sleep`` that records the waits instead of waiting."""

    waits: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def _verify(headers: dict[str, str], body: bytes) -> None:
    sent = headers["Tongban-Signature"]
    expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(sent.encode(), expected.encode())


def test_notice_json_is_sorted_utf8_with_iso_times() -> None:
    body = _notice().to_json()
    assert "食品经营许可".encode() in body  # not \\u escapes
    assert b"\n" not in body
    data = json.loads(body)
    assert list(data) == sorted(data)
    assert data == {
        "event_id": "approval-2026-7K3Q9XW2M4:3",
        "case_number": "approval-2026-7K3Q9XW2M4",
        "item_code": "food-business-permit",
        "item_name": "食品经营许可",
        "department": "approval",
        "applicant": "91330102MA2K8Q7R1N",
        "state": "decided",
        "outcome": "approved",
        "licence_number": "JY-APPROVAL-2026-900VJ4F8JE9",
        "at": "2026-03-04T10:30:00+08:00",
        "promised_due_at": "2026-03-09T23:59:59.999999+08:00",
        "legal_due_at": "2026-03-12T23:59:59.999999+08:00",
    }


def test_notice_of_a_transition_has_no_reason() -> None:
    opened = datetime(2026, 3, 2, 9, tzinfo=CHINA)
    case = Case(
        number="approval-2026-7K3Q9XW2M4",
        item="food-business-permit",
        item_version=1,
        department="approval",
        applicant="91330102MA2K8Q7R1N",
        state=CaseState.DECIDED,
        opened_at=opened,
        promised_due_at=opened + timedelta(days=7),
        legal_due_at=opened + timedelta(days=10),
        decided_at=opened + timedelta(days=2),
        outcome=Outcome.REFUSED,
        refusal_reason="场所不符合要求",
        closed_at=opened + timedelta(days=2),
    )
    move = Transition(
        seq=4,
        from_state=CaseState.ACCEPTED,
        to_state=CaseState.DECIDED,
        at=opened + timedelta(days=2),
        department="approval",
        officer="officer-7",
        reason="场所不符合要求",
    )
    notice = notice_of(case, move, item_name="食品经营许可")
    assert notice.event_id == "approval-2026-7K3Q9XW2M4:4"
    assert (notice.state, notice.outcome, notice.licence_number) == ("decided", "refused", None)
    body = notice.to_json().decode()
    assert "场所" not in body
    assert "officer" not in body
    with pytest.raises(ValueError, match="ends in"):
        notice_of(
            case,
            Transition(5, None, CaseState.ACCEPTED, opened, "approval", None, None),
            item_name="x",
        )


def test_notice_needs_aware_times_and_known_state() -> None:
    good = _notice()
    with pytest.raises(ValueError, match="aware"):
        dataclasses.replace(good, at=datetime(2026, 3, 4, 10, 30))  # noqa: DTZ001
    with pytest.raises(ValueError, match="case state"):
        dataclasses.replace(good, state="lost")


async def test_webhook_delivers_signed_body_with_event_id(receiver: Receiver) -> None:
    notice = _notice()
    async with WebhookNotifier(receiver.url, secret=SECRET, sleep=Sleeps()) as notifier:
        await notifier.notify(notice)
    [(headers, body)] = receiver.requests
    assert body == notice.to_json()
    assert headers["Content-Type"] == "application/json"
    assert headers["Tongban-Event-Id"] == "approval-2026-7K3Q9XW2M4:3"
    _verify(headers, body)


async def test_webhook_retries_503_with_backoff_then_delivers(receiver: Receiver) -> None:
    receiver.script = [503, 503, 200]
    sleeps = Sleeps()
    async with WebhookNotifier(receiver.url, secret=SECRET, sleep=sleeps) as notifier:
        await notifier.notify(_notice())
    assert len(receiver.requests) == 3
    assert sleeps.waits == [0.5, 1.0]
    # Every attempt carries the same event id and body, so the receiver can drop repeats.
    assert {h["Tongban-Event-Id"] for h, _ in receiver.requests} == {"approval-2026-7K3Q9XW2M4:3"}
    assert len({b for _, b in receiver.requests}) == 1


async def test_webhook_waits_out_429_retry_after(receiver: Receiver) -> None:
    receiver.script = [429]
    sleeps = Sleeps()
    async with WebhookNotifier(receiver.url, secret=SECRET, sleep=sleeps) as notifier:
        await notifier.notify(_notice())
    assert len(receiver.requests) == 2
    assert sleeps.waits == [2.0]


async def test_webhook_gives_up_after_attempts_of_5xx(receiver: Receiver) -> None:
    receiver.script = [500, 502, 503, 200]
    sleeps = Sleeps()
    async with WebhookNotifier(receiver.url, secret=SECRET, sleep=sleeps) as notifier:
        with pytest.raises(NotifyFailed) as failed:
            await notifier.notify(_notice())
    assert len(receiver.requests) == 3
    assert sleeps.waits == [0.5, 1.0]
    assert failed.value.last_error == "HTTP 503"
    assert failed.value.attempts == 3
    assert failed.value.reason == "NOTIFY_FAILED"
    assert "approval-2026-7K3Q9XW2M4:3" in str(failed.value)
    assert "token=abc" not in str(failed.value)  # the URL's query may hold a secret


async def test_webhook_400_is_final(receiver: Receiver) -> None:
    receiver.script = [400]
    sleeps = Sleeps()
    async with WebhookNotifier(receiver.url, secret=SECRET, sleep=sleeps) as notifier:
        with pytest.raises(NotifyFailed) as failed:
            await notifier.notify(_notice())
    assert len(receiver.requests) == 1
    assert sleeps.waits == []
    assert (failed.value.last_error, failed.value.attempts) == ("HTTP 400", 1)


async def test_webhook_redirect_is_not_followed(receiver: Receiver) -> None:
    receiver.script = [307]
    async with WebhookNotifier(receiver.url, secret=SECRET, sleep=Sleeps()) as notifier:
        with pytest.raises(NotifyFailed) as failed:
            await notifier.notify(_notice())
    assert len(receiver.requests) == 1
    assert failed.value.last_error == "HTTP 307"


async def test_webhook_times_out_each_attempt(receiver: Receiver) -> None:
    receiver.script = [HANG, HANG, HANG]
    sleeps = Sleeps()
    async with WebhookNotifier(
        receiver.url, secret=SECRET, timeout=0.2, attempts=3, sleep=sleeps
    ) as notifier:
        with pytest.raises(NotifyFailed) as failed:
            await notifier.notify(_notice())
    assert (failed.value.last_error, failed.value.attempts) == ("timeout", 3)
    assert len(receiver.requests) == 3
    assert sleeps.waits == [0.5, 1.0]


async def test_webhook_refused_connection() -> None:
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps = Sleeps()
    url = f"http://127.0.0.1:{port}/hooks/cases"
    async with WebhookNotifier(url, secret=SECRET, attempts=2, sleep=sleeps) as notifier:
        with pytest.raises(NotifyFailed) as failed:
            await notifier.notify(_notice())
    assert (failed.value.last_error, failed.value.attempts) == ("connect error", 2)
    assert sleeps.waits == [0.5]


async def test_webhook_uses_and_leaves_open_a_given_client(receiver: Receiver) -> None:
    async with httpx.AsyncClient(follow_redirects=True) as client:
        notifier = WebhookNotifier(receiver.url, secret=SECRET, client=client, sleep=Sleeps())
        await notifier.notify(_notice())
        await notifier.aclose()
        assert not client.is_closed
        with pytest.raises(NotifyFailed, match="notifier closed"):
            await notifier.notify(_notice())
    assert len(receiver.requests) == 1


async def test_file_notifier_writes_whole_lines_concurrently(tmp_path: Path) -> None:
    path = tmp_path / "notices.jsonl"
    notices = [_notice(seq) for seq in range(1, 51)]
    async with FileNotifier(path) as notifier:
        await asyncio.gather(*(notifier.notify(n) for n in notices))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.decode("utf-8").splitlines()
    assert len(lines) == 50
    assert sorted(lines) == sorted(n.to_json().decode() for n in notices)


async def test_file_notifier_ends_a_torn_line_first(tmp_path: Path) -> None:
    path = tmp_path / "notices.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b'{"event_id":"torn')
    os.close(fd)
    notifier = FileNotifier(path)
    await notifier.notify(_notice())
    await notifier.aclose()
    torn, line = path.read_bytes().decode().splitlines()
    assert torn == '{"event_id":"torn'
    assert json.loads(line)["event_id"] == "approval-2026-7K3Q9XW2M4:3"


async def test_file_notifier_refuses_a_file_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "notices.jsonl"
    path.write_bytes(b"")
    path.chmod(0o644)
    async with FileNotifier(path) as notifier:
        with pytest.raises(NotifyFailed, match="chmod 600"):
            await notifier.notify(_notice())
    assert path.read_bytes() == b""


async def test_file_notifier_reports_os_errors(tmp_path: Path) -> None:
    async with FileNotifier(tmp_path / "missing" / "notices.jsonl") as notifier:
        with pytest.raises(NotifyFailed) as failed:
            await notifier.notify(_notice())
    assert failed.value.last_error == "OSError ENOENT"
    assert isinstance(failed.value.__cause__, FileNotFoundError)


async def test_settings_make_notifiers(tmp_path: Path) -> None:
    assert notifier_from_setting("", secret=b"") is None
    assert notifier_from_setting("  ", secret=SECRET) is None
    as_file = notifier_from_setting(f"file:{tmp_path}/n.jsonl", secret=b"")
    assert isinstance(as_file, FileNotifier)
    assert as_file.path == tmp_path / "n.jsonl"
    for url in (
        "https://sms.example.gov.cn/hooks/cases",
        "http://127.0.0.1:8081/x",
        "http://127.9.9.9/x",
        "http://localhost:9000/x",
        "http://[::1]:9000/x",
    ):
        hook = notifier_from_setting(f"webhook:{url}", secret=SECRET)
        assert isinstance(hook, WebhookNotifier)
        assert hook.url == url
        await hook.aclose()


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ("sms:x", "file:/absolute/path.jsonl"),
        ("webhook:ftp://x", "http(s) URL"),
        ("webhook:http://example.com/x", "must use https"),
        ("webhook:https://u:p@h/x", "user name or password"),
        ("webhook:https://u@h/x", "user name or password"),
        ("webhook:", "http(s) URL"),
        ("webhook:https://h:99999/x", "cannot be parsed"),
        ("webhook:http://10.0.0.1/x", "must use https"),
        ("file:relative.jsonl", "absolute path"),
        ("file:", "absolute path"),
    ],
)
def test_bad_settings_are_refused(setting: str, says: str) -> None:
    with pytest.raises(ConfigInvalid) as refused:
        notifier_from_setting(setting, secret=SECRET)
    assert says in refused.value.message
    assert refused.value.reason == "CONFIG_INVALID"
    assert ":p@" not in refused.value.message


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"secret": b""}, "signing secret"),
        ({"secret": b"short"}, "signing secret"),
        ({"secret": SECRET, "timeout": 0}, "timeout"),
        ({"secret": SECRET, "attempts": 0}, "attempt"),
    ],
)
def test_bad_webhook_options_are_refused(kwargs: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigInvalid, match=says):
        WebhookNotifier("https://sms.example.gov.cn/x", **kwargs)  # type: ignore[arg-type]


def test_notice_times_keep_their_offset() -> None:
    utc = dataclasses.replace(_notice(), at=datetime(2026, 3, 4, 2, 30, tzinfo=UTC))
    assert json.loads(utc.to_json())["at"] == "2026-03-04T02:30:00+00:00"
