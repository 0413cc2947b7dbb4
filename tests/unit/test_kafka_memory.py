"""The in-memory twins behave like the Kafka edges the worker relies on: key partitioning, commits that
survive a new member, pause, rebalance callbacks and injected failures."""

from __future__ import annotations

import pytest

from monitor.edges.kafka import (
    CommitRejected,
    KafkaUnavailable,
    MemoryBroker,
    MemoryChunkSource,
    MemoryEventSink,
)


async def test_same_key_same_partition_in_order() -> None:
    broker = MemoryBroker(default_partitions=4)
    sink = MemoryEventSink(broker)
    await sink.start()
    await sink.publish([("c", f"s-{i % 3}".encode(), str(i).encode()) for i in range(30)])
    for key in (b"s-0", b"s-1", b"s-2"):
        records = [r for r in broker.records("c") if r.key == key]
        assert len({r.partition for r in records}) == 1
        assert [int(r.value) for r in records] == sorted(int(r.value) for r in records)


async def test_commit_then_new_member_reads_the_rest() -> None:
    broker = MemoryBroker(default_partitions=2)
    sink = MemoryEventSink(broker)
    await sink.start()
    await sink.publish([("c", f"k{i}".encode(), f"v{i}".encode()) for i in range(10)])
    assigned: list[frozenset[tuple[str, int]]] = []

    async def on_assigned(partitions: frozenset[tuple[str, int]]) -> None:
        assigned.append(partitions)

    first = MemoryChunkSource(broker, ["c"], group_id="g", on_assigned=on_assigned)
    await first.start()
    assert assigned == [frozenset({("c", 0), ("c", 1)})] == [first.assignment()]
    taken = await first.poll(0, 4)
    assert len(taken) == 4
    await first.commit({(r.topic, r.partition): r.offset + 1 for r in taken})
    with pytest.raises(CommitRejected):
        await first.commit({("c", 7): 1})
    await first.stop()
    second = MemoryChunkSource(broker, ["c"], group_id="g")
    await second.start()
    rest = await second.poll(0, 100)
    assert sorted(r.value for r in taken + rest) == sorted(f"v{i}".encode() for i in range(10))


async def test_pause_resume_and_rebalance_redelivers_uncommitted() -> None:
    broker = MemoryBroker(default_partitions=1)
    sink = MemoryEventSink(broker)
    await sink.start()
    await sink.publish([("c", b"k", b"a"), ("c", b"k", b"b")])
    revoked: list[frozenset[tuple[str, int]]] = []

    async def on_revoked(partitions: frozenset[tuple[str, int]]) -> None:
        revoked.append(partitions)

    source = MemoryChunkSource(broker, ["c"], on_revoked=on_revoked)
    await source.start()
    source.pause()
    assert await source.poll(0.01, 10) == []
    source.resume()
    assert [r.value for r in await source.poll(0, 10)] == [b"a", b"b"]
    await source.rebalance(frozenset({("c", 0)}))
    assert revoked == [frozenset({("c", 0)})]
    assert [r.value for r in await source.poll(0, 10)] == [b"a", b"b"]  # nothing was committed


async def test_injected_failure_appends_nothing() -> None:
    broker = MemoryBroker()
    sink = MemoryEventSink(broker)
    await sink.start()
    sink.fail_next(KafkaUnavailable("down", recoverable=True))
    with pytest.raises(KafkaUnavailable) as err:
        await sink.publish([("v", b"k", b"x")])
    assert err.value.recoverable and broker.records("v") == []
    await sink.publish([("v", b"k", b"x")])
    assert broker.values("v") == [b"x"]
