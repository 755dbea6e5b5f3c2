"""Case notices from a running node (TONGBAN_CASE_NOTIFY): every committed transition
reaches the applicant's notifier after the move, signed with the data dir's key; a
receiver that is down never fails a move; a bad setting stops the node at start."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest

from tests.conftest import client_for, enrol_demo
from tests.exchange.test_notifiers import Receiver, receiver  # noqa: F401 - the fixture
from tests.stories.restaurant import COMPANY_USCC
from tongban.exchange.datadir import load_notify_secret
from tongban.exchange.errors import ConfigInvalid
from tongban.exchange.node import Node
from tongban.exchange.settings import Settings, load_settings
from tongban.v1 import cases_pb2, items_pb2

ITEM = "notice-test-filing"
_NODE_FIELDS = (
    "data_dir",
    "database_url",
    "grpc_listen",
    "http_listen",
    "key_passphrase",
    "shutdown_grace_seconds",
)


def _with(settings: Settings, notify: str) -> Settings:
    return load_settings(
        **{name: getattr(settings, name) for name in _NODE_FIELDS}, case_notify=notify
    )


async def _open_and_decide(node: Node) -> str:
    assert node.db is not None
    await enrol_demo(node.settings)
    async with client_for(node, "tax", "SW-9") as tax:
        await tax.register_item(
            items_pb2.ItemSpec(
                code=ITEM,
                name="涉税事项备案",
                legal_basis="《测试条例》第一条",
                purpose="备案",
                legal_limit_days=5,
                promised_limit_days=1,
                materials=[
                    items_pb2.Material(
                        code="form", name="备案表", submitted=items_pb2.SubmittedSource()
                    )
                ],
            )
        )
        case = await tax.open_case(ITEM, COMPANY_USCC, reason="内部备注，不外发")
        await tax.move_case(
            case.number,
            cases_pb2.CASE_STATE_DECIDED,
            outcome=cases_pb2.CASE_OUTCOME_REFUSED,
            reason="不符合条件（内部）",
        )
    assert node.notices is not None
    await node.notices.drained()
    return case.number


async def test_a_webhook_gets_each_transition_signed(
    settings: Settings,
    receiver: Receiver,  # noqa: F811 - the fixture
) -> None:
    async with Node(_with(settings, f"webhook:{receiver.url}")) as node:
        number = await _open_and_decide(node)
        secret = load_notify_secret(node.settings)
    bodies = []
    for headers, body in receiver.requests:
        expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["Tongban-Signature"], expected)
        bodies.append(json.loads(body))
    assert [(b["event_id"], b["state"], b["outcome"]) for b in bodies] == [
        (f"{number}:1", "accepted", None),
        (f"{number}:2", "decided", "refused"),
    ]
    assert {b["item_name"] for b in bodies} == {"涉税事项备案"}
    assert {b["applicant"] for b in bodies} == {COMPANY_USCC}
    assert not any("内部" in json.dumps(b, ensure_ascii=False) for b in bodies)
    assert [h["Tongban-Event-Id"] for h, _ in receiver.requests] == [
        f"{number}:1",
        f"{number}:2",
    ]


async def test_a_receiver_that_is_down_fails_no_move(
    settings: Settings,
    receiver: Receiver,  # noqa: F811 - the fixture
) -> None:
    receiver.script = [400] * 10
    async with Node(_with(settings, f"webhook:{receiver.url}")) as node:
        await _open_and_decide(node)  # both moves succeed
        assert node.notices is not None
        assert (node.notices.sent, node.notices.failed) == (0, 2)


async def test_a_file_gets_one_line_per_transition(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "notices.jsonl"
    async with Node(_with(settings, f"file:{path}")) as node:
        number = await _open_and_decide(node)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["event_id"] for line in lines] == [f"{number}:1", f"{number}:2"]


@pytest.mark.parametrize(
    "notify", ["sms:13800000000", "webhook:http://example.com/x", "file:notices.jsonl"]
)
async def test_a_bad_setting_stops_the_node_at_start(settings: Settings, notify: str) -> None:
    with pytest.raises(ConfigInvalid):
        async with Node(_with(settings, notify)):
            pass
