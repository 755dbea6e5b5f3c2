"""Bad input to the catalogue, records and queries: each refused with its reason, nothing
half-written, the node keeps serving."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest

from tests.conftest import client_for
from tests.stories.restaurant import COMPANY, COMPANY_USCC, ENTERPRISE, PURPOSE
from tongban.client import ExchangeClient, ExchangeError
from tongban.exchange.node import Node
from tongban.v1 import catalogue_pb2, values_pb2


@pytest.fixture
async def samr(node: Node) -> AsyncIterator[ExchangeClient]:
    async with client_for(node, "samr") as client:
        await client.register_dataset(ENTERPRISE, publish=True)
        await client.publish_records("samr.enterprise", [(COMPANY_USCC, COMPANY)])
        yield client


async def _reason(coro: object) -> ExchangeError:
    with pytest.raises(ExchangeError) as caught:
        await coro  # type: ignore[misc]
    return caught.value


async def _count(node: Node, sql: str) -> int:
    assert node.db is not None
    return int(await node.db.pool.fetchval(sql))


async def test_query_bad_input(node: Node, samr: ExchangeClient) -> None:
    async with client_for(node, "tax") as tax:

        def q(**kw: object) -> object:
            args: dict[str, object] = {
                "fields": ["name"],
                "purpose": "税务登记",
                "case_id": "C-1",
            } | kw
            keys = args.pop("keys", [COMPANY_USCC])
            dataset = args.pop("dataset", "samr.enterprise")
            return tax.query(dataset, keys, **args)  # type: ignore[arg-type]

        cases = {
            "DATASET_NOT_FOUND": q(dataset="samr.nothing"),
            "UNKNOWN_FIELD": q(fields=["name", "secret_field"]),
            "TOO_MANY_KEYS": q(keys=[COMPANY_USCC] * 10_000),
            "PURPOSE_REQUIRED": q(purpose="   "),
            "CASE_REQUIRED": q(case_id=""),
            "INVALID_ARGUMENT": q(case_id="x" * 10_240),
            "INVALID_SUBJECT_ID": q(keys=[COMPANY_USCC[:-1] + "0"]),
        }
        for reason, call in cases.items():
            error = await _reason(call)
            assert error.reason == reason, (reason, error.message)
            assert not error.retriable  # bad input needs a change, not a retry
            assert "Traceback" not in error.message
        fields_error = await _reason(q(fields=[]))
        assert fields_error.reason == "INVALID_ARGUMENT"
        bad_id = await _reason(q(keys=[COMPANY_USCC[:-1] + "0"]))
        assert bad_id.metadata["expected_check_character"] == COMPANY_USCC[-1]
        assert bad_id.code is grpc.StatusCode.INVALID_ARGUMENT
        # Every refusal was logged as a denial; none as an answer.
        assert await _count(node, "SELECT count(*) FROM access_log WHERE decision = 'allowed'") == 0
        assert await _count(node, "SELECT count(*) FROM access_log WHERE decision = 'denied'") >= 8
        # Duplicate keys are answered once; the node still serves.
        answer = await tax.query(
            "samr.enterprise",
            [COMPANY_USCC, COMPANY_USCC],
            fields=["name"],
            purpose="税务登记",
            case_id="C-2",
        )
        assert len(answer.records) == 1
        # Fullwidth digits in an id are the same id (NFKC), not a different subject.
        fullwidth = "".join(chr(0xFF10 + digit) for digit in range(10))
        wide = COMPANY_USCC.translate(str.maketrans("0123456789", fullwidth))
        answer = await tax.query(
            "samr.enterprise", [wide], fields=["name"], purpose="税务登记", case_id="C-3"
        )
        assert [r.key for r in answer.records] == [COMPANY_USCC]


async def test_batch_is_all_or_nothing(node: Node, samr: ExchangeClient) -> None:
    before = await _count(node, "SELECT count(*) FROM record")
    from tongban.exchange.catalogue.subject_ids import uscc_check_character

    good = ("91110000MA0000000" + uscc_check_character("91110000MA0000000"), {"name": "甲公司"})
    cases = {
        "RECORD_INVALID": [good, (COMPANY_USCC, {"name": "乙", "registered_capital": "lots"})],
        "DUPLICATE_KEY": [good, (good[0], {"name": "again"})],
        "INVALID_SUBJECT_ID": [good, ("91110000MA00000000", {"name": "丙"})],
    }
    for reason, batch in cases.items():
        error = await _reason(samr.publish_records("samr.enterprise", batch))
        assert error.reason == reason, (reason, error.message)
        assert error.metadata["index"] == "1"
    missing = await _reason(samr.publish_records("samr.enterprise", [(good[0], {})]))
    assert missing.reason == "RECORD_INVALID"
    assert missing.metadata["field"] == "name"
    unknown = await _reason(
        samr.publish_records("samr.enterprise", [(good[0], {"name": "x", "nope": 1})])
    )
    assert unknown.metadata["field"] == "nope"
    control = await _reason(
        samr.publish_records("samr.enterprise", [(good[0], {"name": "a\x00b"})])
    )
    # Refused by the check every request field gets, before the record is looked at.
    assert control.reason == "INVALID_ARGUMENT"
    assert control.metadata["field"] == "changes[0].fields['name'].string_value"
    assert await _count(node, "SELECT count(*) FROM record") == before


async def test_unicode_is_kept_exactly(node: Node, samr: ExchangeClient) -> None:
    from tongban.exchange.catalogue.subject_ids import uscc_check_character

    key = "92330100MA0000000" + uscc_check_character("92330100MA0000000")
    name = "𠮷野家（杭州）餐饮店"  # a CJK Extension B character and fullwidth brackets
    decomposed = "Cafe\u0301 de Paris 咖啡馆"
    await samr.publish_records("samr.enterprise", [(key, {"name": name, "address": decomposed})])
    async with client_for(node, "tax") as tax:
        answer = await tax.query(
            "samr.enterprise", [key], fields=["name", "address"], purpose="税务登记", case_id="U-1"
        )
    fields = answer.by_key()[key].fields
    assert fields["name"] == name
    assert fields["address"] == "Caf\u00e9 de Paris 咖啡馆"  # NFC


async def test_catalogue_rules(node: Node, samr: ExchangeClient) -> None:
    not_shared = catalogue_pb2.DatasetSpec()
    not_shared.CopyFrom(ENTERPRISE)
    not_shared.code = "samr.investigations"
    not_shared.share_class = catalogue_pb2.SHARE_CLASS_NOT_SHARED
    del not_shared.personal_bases[:]  # laws for sharing personal fields: unconditional only
    error = await _reason(samr.register_dataset(not_shared))
    assert error.reason == "NOT_SHARED_NEEDS_BASIS"
    not_shared.legal_basis.law = "中华人民共和国行政处罚法"
    not_shared.legal_basis.article = "第五十条"
    await samr.register_dataset(not_shared, publish=True)
    async with client_for(node, "tax") as tax:
        denied = await _reason(
            tax.query(
                "samr.investigations", [COMPANY_USCC], fields=["name"], purpose="p", case_id="c"
            )
        )
        assert denied.reason == "NOT_SHARED"
        assert "第五十条" in denied.message
        # Someone else's prefix, and someone else's dataset.
        foreign = catalogue_pb2.DatasetSpec()
        foreign.CopyFrom(ENTERPRISE)
        assert (await _reason(tax.register_dataset(foreign))).reason == "NOT_OWNER"
        assert (
            await _reason(tax.publish_records("samr.enterprise", [(COMPANY_USCC, COMPANY)]))
        ).reason == "NOT_OWNER"

    # Unpublished datasets do not exist for others; their owner still sees them.
    draft = catalogue_pb2.DatasetSpec()
    draft.CopyFrom(ENTERPRISE)
    draft.code = "samr.draft"
    await samr.register_dataset(draft)
    async with client_for(node, "tax") as tax:
        assert (await _reason(tax.get_dataset("samr.draft"))).reason == "DATASET_NOT_FOUND"
        assert [d.spec.code for d in await tax.list_datasets(owner="samr")] == [
            "samr.enterprise",
            "samr.investigations",
        ]
    assert (await samr.get_dataset("samr.draft")).published is False

    # Versions: adding an optional field is fine, changing a type is not.
    v2 = catalogue_pb2.DatasetSpec()
    v2.CopyFrom(ENTERPRISE)
    v2.fields.add(name="phone", type=values_pb2.FIELD_TYPE_STRING, description="联系电话")
    assert (await samr.register_dataset(v2)).version == 2
    assert (await samr.get_dataset("samr.enterprise", version=1)).version == 1
    v3 = catalogue_pb2.DatasetSpec()
    v3.CopyFrom(v2)
    v3.fields[5].type = values_pb2.FIELD_TYPE_STRING  # registered_capital: decimal -> string
    incompatible = await _reason(samr.register_dataset(v3))
    assert incompatible.reason == "SCHEMA_INCOMPATIBLE"
    assert incompatible.metadata["field"] == "registered_capital"
    bad_code = catalogue_pb2.DatasetSpec()
    bad_code.CopyFrom(ENTERPRISE)
    bad_code.code = "samr.Enterprise!"
    assert (await _reason(samr.register_dataset(bad_code))).reason == "INVALID_ARGUMENT"
    no_kind = catalogue_pb2.DatasetSpec()
    no_kind.CopyFrom(ENTERPRISE)
    no_kind.code = "samr.other"
    no_kind.subject_kind = catalogue_pb2.SUBJECT_KIND_UNSPECIFIED
    assert (await _reason(samr.register_dataset(no_kind))).reason == "INVALID_ARGUMENT"


async def test_history_answers_what_we_knew_then(node: Node, samr: ExchangeClient) -> None:
    from tongban.signing.clock import FixedClock

    assert isinstance(node.clock, FixedClock)
    first = node.clock.now()
    node.clock.advance(timedelta(days=30))
    moved = dict(COMPANY, address="浙江省杭州市拱墅区湖墅南路9号")
    counts = await samr.publish_records("samr.enterprise", [(COMPANY_USCC, moved)])
    assert counts.updated == 1
    async with client_for(node, "tax") as tax:
        now = await tax.query(
            "samr.enterprise", [COMPANY_USCC], fields=["address"], purpose=PURPOSE, case_id="H-1"
        )
        then = await tax.query(
            "samr.enterprise",
            [COMPANY_USCC],
            fields=["address"],
            purpose=PURPOSE,
            case_id="H-2",
            as_of=first + timedelta(days=1),
        )
        before = await tax.query(
            "samr.enterprise",
            [COMPANY_USCC],
            fields=["address"],
            purpose=PURPOSE,
            case_id="H-3",
            as_of=first - timedelta(days=1),
        )
    assert now.by_key()[COMPANY_USCC].fields["address"] == moved["address"]
    assert now.by_key()[COMPANY_USCC].version == 2
    assert then.by_key()[COMPANY_USCC].fields["address"] == COMPANY["address"]
    assert before.missing_keys == [COMPANY_USCC]
    await samr.publish_records("samr.enterprise", deletes=[COMPANY_USCC])
    async with client_for(node, "tax") as tax:
        gone = await tax.query(
            "samr.enterprise", [COMPANY_USCC], fields=["address"], purpose=PURPOSE, case_id="H-4"
        )
    assert gone.missing_keys == [COMPANY_USCC]
    # Each event reads the data of the version it announces (events hold no copy).
    assert node.db is not None
    events = await node.db.pool.fetch(
        "SELECT version, op, data->>'address' AS address FROM change_event"
        " WHERE dataset = 'samr.enterprise' AND key = $1 ORDER BY position",
        COMPANY_USCC,
    )
    assert [tuple(e) for e in events] == [
        (1, "upsert", COMPANY["address"]),
        (2, "upsert", moved["address"]),
        (3, "delete", None),
    ]


async def test_no_answer_without_its_log_entry(
    node: Node, samr: ExchangeClient, database_url: str
) -> None:
    import asyncpg

    # The schema's owner (not the node's role) takes the log table away.
    owner = await asyncpg.connect(database_url)
    await owner.execute("ALTER TABLE access_log RENAME TO access_log_away")
    try:
        async with client_for(node, "tax") as tax:
            error = await _reason(
                tax.query(
                    "samr.enterprise",
                    [COMPANY_USCC],
                    fields=["name"],
                    purpose=PURPOSE,
                    case_id="A-1",
                )
            )
        assert error.reason == "AUDIT_UNAVAILABLE"
        assert error.code is grpc.StatusCode.UNAVAILABLE
    finally:
        await owner.execute("ALTER TABLE access_log_away RENAME TO access_log")
        await owner.close()
    async with client_for(node, "tax") as tax:
        answer = await tax.query(
            "samr.enterprise", [COMPANY_USCC], fields=["name"], purpose=PURPOSE, case_id="A-2"
        )
    assert answer.records


async def test_access_log_is_append_only(
    node: Node, samr: ExchangeClient, database_url: str
) -> None:
    """The node's role may not change the log, and triggers stop even the owner."""
    import asyncpg

    async with client_for(node, "tax") as tax:
        await tax.query(
            "samr.enterprise", [COMPANY_USCC], fields=["name"], purpose=PURPOSE, case_id="L-1"
        )
    assert node.db is not None
    owner = await asyncpg.connect(database_url)
    try:
        for table, column in (
            ("access_log", "idx"),
            ("log_node", "idx"),
            ("log_checkpoint", "size"),
            ("witness_cosignature", "size"),
        ):
            for statement in (
                f"UPDATE {table} SET {column} = {column}",
                f"DELETE FROM {table}",
                # CASCADE: witness_cosignature references log_checkpoint, and a plain
                # TRUNCATE would be stopped by that reference before any trigger ran.
                f"TRUNCATE {table} CASCADE",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await node.db.pool.execute(statement)
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await owner.execute(statement)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await owner.execute("UPDATE log_state SET size = 0")
        assert await node.db.pool.fetchval("SELECT current_user") == "tongban_node"
    finally:
        await owner.close()


async def test_stream_records_commits_each_batch_in_order(node: Node, samr: ExchangeClient) -> None:
    from tongban.exchange.catalogue.subject_ids import uscc_check_character

    def key(i: int) -> str:
        first17 = f"9133010{i:010d}"
        return first17 + uscc_check_character(first17)

    async def batches() -> AsyncIterator[list[tuple[str, dict[str, object]]]]:
        for b in range(3):
            yield [(key(b * 100 + i), {"name": f"公司{b}-{i}"}) for i in range(100)]
        # The same keys again: the later batch wins, in order.
        yield [(key(i), {"name": f"改名{i}"}) for i in range(10)]

    counts = await samr.stream_records("samr.enterprise", batches())
    assert (counts.inserted, counts.updated) == (300, 10)
    async with client_for(node, "tax") as tax:
        answer = await tax.query(
            "samr.enterprise", [key(3)], fields=["name"], purpose=PURPOSE, case_id="S-1"
        )
    assert answer.by_key()[key(3)].fields["name"] == "改名3"

    async def bad_second() -> AsyncIterator[list[tuple[str, dict[str, object]]]]:
        yield [(key(1000), {"name": "先到"})]
        yield [(key(1001), {"name": "a\x00b"})]

    error = await _reason(samr.stream_records("samr.enterprise", bad_second()))
    assert error.reason == "INVALID_ARGUMENT"
    assert error.metadata["field"] == "changes[0].fields['name'].string_value"
    async with client_for(node, "tax") as tax:
        answer = await tax.query(
            "samr.enterprise",
            [key(1000), key(1001)],
            fields=["name"],
            purpose=PURPOSE,
            case_id="S-2",
        )
    assert [r.key for r in answer.records] == [key(1000)]  # the committed batch stays
    assert answer.missing_keys == [key(1001)]
