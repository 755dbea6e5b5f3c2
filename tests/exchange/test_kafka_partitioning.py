"""The relay chooses partitions as the Kafka producers' default partitioner does."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner, murmur2
from hypothesis import given
from hypothesis import strategies as st

from tongban.exchange.kafka import partitioning


@given(st.binary(max_size=80))
def test_murmur2_is_aiokafkas(data: bytes) -> None:
    assert partitioning.murmur2(data) == murmur2(data)


@given(st.binary(min_size=1, max_size=40), st.integers(min_value=1, max_value=64))
def test_the_partition_is_the_default_partitioners(key: bytes, count: int) -> None:
    partitions = list(range(count))
    chosen = DefaultPartitioner()(key, partitions, partitions)
    assert partitioning.partition_for(key, partitions) == chosen


def test_known_values() -> None:
    # From the Java client's tests (org.apache.kafka.common.utils.UtilsTest).
    assert partitioning.murmur2(b"21") == -973932308 & 0xFFFFFFFF
    assert partitioning.murmur2(b"foobar") == -790332482 & 0xFFFFFFFF
    assert partitioning.murmur2(b"a-little-bit-long-string") == -985981536 & 0xFFFFFFFF
    assert partitioning.murmur2(b"a-little-bit-longer-string") == -1486304829 & 0xFFFFFFFF
    assert partitioning.murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") == (
        -58897971 & 0xFFFFFFFF
    )
    assert partitioning.murmur2(b"abc") == 479470107
