"""A department's datasets hold no more than its storage quota (migration 0035): a write
past it is refused RESOURCE_EXHAUSTED / STORAGE_QUOTA_EXCEEDED and writes nothing, on
every path that writes record versions; the other departments are not touched; raising
the quota lets the same write through."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import aiohttp
import grpc
import pytest
import pytest_asyncio

from tests.conftest import client_for, enrol_demo, uscc
from tests.stories.restaurant import BUSINESS_LICENCE_CLAIMS, COMPANY, ENTERPRISE
from tongban.client import ExchangeError
from tongban.exchange.db.database import Database
from tongban.exchange.departments import DepartmentStore
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.node import Node
from tongban.exchange.settings import Settings
from tongban.exchange.sharing.storage import VERSION_BYTES, storage_usage
from tongban.exchange.sizes import format_size, parse_size
from tongban.v1 import catalogue_pb2

DATASET = "samr.enterprise"


def _records(start: int, count: int, address: str = "起始") -> list[tuple[str, dict[str, object]]]:
    return [
        (uscc(i), dict(COMPANY, uscc=uscc(i), address=address)) for i in range(start, start + count)
    ]


def _spec(code: str) -> catalogue_pb2.DatasetSpec:
    spec = catalogue_pb2.DatasetSpec()
    spec.CopyFrom(ENTERPRISE)
    spec.code = code
    return spec


async def _set_quota(node: Node, code: str, quota: int | None) -> None:
    """With the operator's login, as `tongban dept limits CODE --stored` does."""
    async with await Database.open(node.settings, pool_size=1, owner=True) as owner:
        await DepartmentStore(owner.pool).set_storage_quota(code, quota)


async def _stored(node: Node, code: str) -> int:
    assert node.db is not None
    (usage,) = await storage_usage(node.db.pool, code)
    return usage.stored_bytes


async def _counts(node: Node, dataset: str) -> tuple[int, int, int]:
    """Record versions, events and the stream's next position of ``dataset``."""
    assert node.db is not None
    row = await node.db.pool.fetchrow(
        "SELECT (SELECT count(*) FROM record WHERE dataset = $1) AS versions,"
        " (SELECT count(*) FROM event_outbox WHERE dataset = $1) AS events,"
        " (SELECT next_position FROM dataset_stream WHERE dataset = $1) AS next",
        dataset,
    )
    assert row is not None
    return row["versions"], row["events"], row["next"]


def _refused(error: ExchangeError, department: str = "samr") -> None:
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason == "STORAGE_QUOTA_EXCEEDED"
    assert f"{department}'s datasets hold" in error.message
    assert f"tongban dept limits {department} --stored" in error.message
    assert error.metadata["department"] == department
    assert int(error.metadata["stored_bytes"]) + int(error.metadata["adding_bytes"]) > int(
        error.metadata["quota_bytes"]
    )
    assert error.retry_after is None  # retrying alone does not help
    assert not error.retriable  # so an adapter does not retry it in a loop


async def test_writes_past_the_quota_are_refused_whole_and_others_go_on(node: Node) -> None:
    """New records (the bulk path's one statement), changed records (the locking path),
    a licence (whose holder feed is samr's dataset) and a new dataset are refused once
    samr's datasets would hold more than its quota; nothing of them is written; tax's
    writes go on; a higher quota lets the same publish through."""
    async with client_for(node, "samr", "SC-0001") as samr, client_for(node, "tax") as tax:
        await samr.register_dataset(ENTERPRISE, publish=True)
        await tax.register_dataset(_spec("tax.enterprise"), publish=True)
        await samr.publish_records(DATASET, _records(0, 100))
        held = await _stored(node, "samr")
        # One more batch of 100 fits, a second does not.
        per_batch = held / 100 * 100
        await _set_quota(node, "samr", int(held + per_batch * 1.5))

        await samr.publish_records(DATASET, _records(100, 100))
        before = await _counts(node, DATASET), await _stored(node, "samr")
        with pytest.raises(ExchangeError) as new_keys:
            await samr.publish_records(DATASET, _records(200, 100))
        _refused(new_keys.value)
        with pytest.raises(ExchangeError) as changed:
            await samr.publish_records(DATASET, _records(0, 200, address="改了"))
        _refused(changed.value)
        assert (await _counts(node, DATASET), await _stored(node, "samr")) == before
        assert node.db is not None
        addresses = await node.db.pool.fetch(
            "SELECT DISTINCT data->>'address' AS a FROM record WHERE dataset = $1", DATASET
        )
        assert [r["a"] for r in addresses] == ["起始"]

        # A department can look before it writes.
        seen = await samr.storage()
        assert (seen.department, seen.datasets) == ("samr", 1)
        assert (seen.stored_bytes, seen.quota_bytes) == (before[1], int(held + per_batch * 1.5))

        # Smaller writes still fit while there is room: one record. With the quota at
        # what the datasets hold, not even a licence does.
        await samr.publish_records(DATASET, _records(200, 1))
        await _set_quota(node, "samr", await _stored(node, "samr"))
        with pytest.raises(ExchangeError) as licence:
            await samr.issue_licence(
                "business-licence", BUSINESS_LICENCE_CLAIMS, case_id="DJ-Q-1", reason="设立登记"
            )
        _refused(licence.value)
        assert await node.db.pool.fetchval("SELECT count(*) FROM licence") == 0
        with pytest.raises(ExchangeError) as one:
            await samr.publish_records(DATASET, _records(201, 1))
        _refused(one.value)
        # Catalogue versions are kept for good too, and count the same way.
        with pytest.raises(ExchangeError) as registered:
            await samr.register_dataset(_spec("samr.another"), publish=True)
        _refused(registered.value)
        assert (
            await node.db.pool.fetchval("SELECT count(*) FROM dataset WHERE code = 'samr.another'")
            == 0
        )

        # Another department is not held to samr's quota.
        counts = await tax.publish_records("tax.enterprise", _records(0, 300))
        assert counts.inserted == 300

        await _set_quota(node, "samr", None)  # back to the node's default, 20 GiB
        counts = await samr.publish_records(DATASET, _records(0, 200, address="改了"))
        assert counts.updated == 200
        issued = await samr.issue_licence(
            "business-licence", BUSINESS_LICENCE_CLAIMS, case_id="DJ-Q-1", reason="设立登记"
        )
        assert issued.status == "valid"


async def test_a_bulk_load_stops_at_the_batch_past_the_quota(node: Node) -> None:
    """StreamRecords commits each batch as it comes: the batches before the quota are
    kept, the one past it is refused whole and the stream ends with the reason."""
    async with client_for(node, "samr") as samr:
        await samr.register_dataset(ENTERPRISE, publish=True)
        await samr.publish_records(DATASET, _records(0, 50))
        per_record = await _stored(node, "samr") / 50
        await _set_quota(node, "samr", int(per_record * 50 + per_record * 500 * 2.5))

        async def batches() -> AsyncIterator[Sequence[tuple[str, dict[str, object]]]]:
            for n in range(5):
                yield _records(50 + n * 500, 500)

        with pytest.raises(ExchangeError) as refused:
            await samr.stream_records(DATASET, batches())
        _refused(refused.value)
        versions, events, position = await _counts(node, DATASET)
        assert versions == events == position == 50 + 2 * 500


async def test_the_quota_counts_every_dataset_of_the_department_under_concurrent_writers(
    node: Node,
) -> None:
    """Eight writers into four datasets of samr at once, until each is refused: what the
    datasets hold together stays within the quota, give or take what was being written
    at the moment of the last checks (at most one batch a writer), and it is what the
    records themselves add up to."""
    datasets = [f"samr.enterprise_{n}" for n in range(4)]
    async with client_for(node, "samr") as samr:
        for code in datasets:
            await samr.register_dataset(_spec(code), publish=True)
        await samr.publish_records(datasets[0], _records(0, 20))
        per_record = await _stored(node, "samr") / 20
        quota = int(per_record * 3_000)
        await _set_quota(node, "samr", quota)
        refusals: list[ExchangeError] = []

        async def writer(number: int) -> None:
            dataset = datasets[number % 4]
            for batch in range(100):
                start = 1_000_000 * (number + 1) + batch * 50
                try:
                    await samr.publish_records(dataset, _records(start, 50))
                except ExchangeError as e:
                    refusals.append(e)
                    return

        await asyncio.gather(*(writer(n) for n in range(8)))
    assert len(refusals) == 8
    for refusal in refusals:
        _refused(refusal)
    stored = await _stored(node, "samr")
    assert quota - 50 * per_record * 8 < stored <= quota + 50 * per_record * 8
    assert node.db is not None
    counted = await node.db.pool.fetchval(
        "SELECT sum(octet_length(key) + octet_length(data::text) + $1)"
        " FROM record WHERE dataset LIKE 'samr.%'",
        VERSION_BYTES,
    )
    # jsonb's text is the JSON the node wrote, but for spaces after ':' and ','.
    assert 0.8 < counted / stored < 1.3


@pytest_asyncio.fixture
async def small_default_node(settings: Settings) -> AsyncIterator[Node]:
    await enrol_demo(settings)
    async with Node(settings.model_copy(update={"dept_max_stored_bytes": 60_000})) as started:
        yield started


async def test_the_node_default_applies_unless_a_department_has_its_own(
    small_default_node: Node,
) -> None:
    node = small_default_node
    async with client_for(node, "samr") as samr, client_for(node, "tax") as tax:
        await samr.register_dataset(ENTERPRISE, publish=True)
        await tax.register_dataset(_spec("tax.enterprise"), publish=True)
        await _set_quota(node, "tax", 10_000_000)
        with pytest.raises(ExchangeError) as refused:
            await samr.publish_records(DATASET, _records(0, 200))
        _refused(refused.value)
        assert refused.value.metadata["quota_bytes"] == "60000"
        assert (await tax.publish_records("tax.enterprise", _records(0, 200))).inserted == 200
        assert (await samr.storage()).quota_bytes == 60_000  # the node's default
        assert (await tax.storage()).quota_bytes == 10_000_000  # its own

        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{node.http_port}/metrics") as response,
        ):
            metrics = await response.text()
        stored = await _stored(node, "tax")
        assert f'tongban_department_stored_bytes{{department="tax"}} {float(stored)}' in metrics
        assert 'tongban_department_storage_quota_bytes{department="tax"} 1e+07' in metrics
        assert 'tongban_department_storage_quota_bytes{department="samr"} 60000.0' in metrics


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("1048576", 1_048_576),
        ("500MB", 500_000_000),
        ("20GiB", 20 * 1024**3),
        ("1.5 TB", 1_500_000_000_000),
        (" 2 kib ", 2048),
        ("7B", 7),
    ],
)
def test_sizes_are_read_with_their_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GiB", "-1", "1e9", "5 XB", "1,000", "9" * 16, "0x10"])
def test_what_is_not_a_size_is_refused(text: str) -> None:
    with pytest.raises(InvalidArgument, match="is not a size"):
        parse_size(text)


def test_sizes_are_shown_in_binary_units() -> None:
    assert [format_size(n) for n in (0, 1023, 1024, 20 * 1024**3, 3 * 1024**5 + 1)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "20.0 GiB",
        "3.0 PiB",
    ]
    assert parse_size("8000000TiB") == 8_000_000 * 1024**4
    with pytest.raises(InvalidArgument, match="more bytes than can be counted"):
        parse_size("9000000000 TiB")


async def test_a_licence_counts_its_own_rows_beside_its_feed_record(node: Node) -> None:
    """A licence row (its SD-JWT, QR text and claims) is several times its holder feed's
    record: issuing and changing a licence count the rows they store toward the issuer's
    quota, beside the feed's record versions."""
    assert node.db is not None
    pool = node.db.pool
    feed = "samr.licence_business_licence"

    async def counted() -> int:
        value = await pool.fetchval(
            "SELECT stored_bytes FROM dataset_stream WHERE dataset = $1", feed
        )
        return int(value or 0)

    async def record_bytes(version: int) -> int:
        value = await pool.fetchval(
            "SELECT sum(octet_length(key) + octet_length(data::text) + $3) FROM record"
            " WHERE dataset = $1 AND version = $2",
            feed,
            version,
            VERSION_BYTES,
        )
        return int(value)

    async with client_for(node, "samr", "SC-0001") as samr:
        issued = await samr.issue_licence(
            "business-licence", BUSINESS_LICENCE_CLAIMS, case_id="DJ-Q-2", reason="设立登记"
        )
        after_issue = await counted()
        await samr.change_licence_status(issued.number, "suspend", "核查中")
        after_suspend = await counted()
    catalogue = await pool.fetchval(
        "SELECT sum(pg_column_size(v.*) + $2) FROM dataset_version v WHERE dataset = $1",
        feed,
        VERSION_BYTES,
    )
    licence = await pool.fetchval(
        "SELECT pg_column_size(l.*) FROM licence l WHERE number = $1", issued.number
    )
    first = await record_bytes(1)
    assert licence > 2 * first  # what went uncounted before
    assert after_issue - catalogue - first >= licence
    # The suspension stored a new feed version and a history row, and counted both.
    assert after_suspend - after_issue >= await record_bytes(2) + VERSION_BYTES
