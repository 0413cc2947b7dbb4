"""Against the real local broker (scripts/kafka.sh): topics apply, the publisher and subscriber of the SDK,
and the worker's consumer-group source with manual commits."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from monitor.edges.kafka import (
    CommitRejected,
    KafkaChunkSource,
    KafkaEventSink,
    Record,
    apply_topics,
    delete_topics,
)
from monitor.messages import Abort, Chunk, decode_chunk, encode, event_id
from monitor.sdk import AbortSubscriber, PublishError, SyncTracePublisher, TracePublisher
from monitor.settings import Settings

pytestmark = pytest.mark.integration

MakeSettings = Callable[..., Settings]


async def read_until(source: KafkaChunkSource, count: int, timeout_s: float = 20) -> list[Record]:
    records: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count and time.monotonic() < deadline:
        records += await source.poll(0.5, 500)
    return records


async def read_session(settings: Settings, count: int) -> list[Record]:
    source = KafkaChunkSource(settings, group_id=f"{settings.kafka.group_id}-reader")
    await source.start()
    try:
        return await read_until(source, count)
    finally:
        await source.stop()


def an_abort(session_id: str) -> Abort:
    return Abort(
        event_id=event_id("abort", session_id, 5), session_id=session_id, seq=5, part="thinking", label=1,
        score=0.97, rule="threshold", guard="minilm", chunk_ts=time.time(),
    )  # fmt: skip


async def test_session_reads_back_in_order_from_one_partition(make_kafka_settings: MakeSettings) -> None:
    settings = make_kafka_settings()
    async with TracePublisher(settings) as publisher:
        session = publisher.session(model="m", tenant="t")
        await session.question("How do I bake bread?")
        for i in range(30):
            await session.thinking(f"thought {i} ")
        for i in range(10):
            await session.answer(f"word {i} ")
        await session.end()
    records = await read_session(settings, 42)
    assert len(records) == 42
    assert {r.partition for r in records} == {records[0].partition}
    assert {r.key for r in records} == {session.session_id.encode()}
    chunks = [decode_chunk(r.value) for r in sorted(records, key=lambda r: r.offset)]
    assert all(isinstance(c, Chunk) for c in chunks)
    assert [c.seq for c in chunks if isinstance(c, Chunk)] == list(range(1, 43))
    parts = [c.part for c in chunks if isinstance(c, Chunk)]
    assert parts == ["question"] + ["thinking"] * 30 + ["answer"] * 10 + ["end"]


def test_sync_publisher(make_kafka_settings: MakeSettings) -> None:
    settings = make_kafka_settings()
    with SyncTracePublisher(settings) as publisher:
        session = publisher.session(session_id="sync-1")
        session.question("q")
        session.thinking("t")
        session.end()
    records = asyncio.run(read_session(settings, 3))
    assert [decode_chunk(r.value).part for r in records] == ["question", "thinking", "end"]  # type: ignore[union-attr]


async def test_topics_apply_creates_then_is_a_no_op(
    make_settings: MakeSettings, kafka_bootstrap: str
) -> None:
    settings = make_settings()
    try:
        first = await apply_topics(settings)
        assert [line.split()[0] for line in first] == ["created"] * 5
        second = await apply_topics(settings)
        assert second == [f"unchanged {s}" for s in (line.split()[1].rstrip(":") for line in first)]
    finally:
        await delete_topics(settings)


async def test_topics_apply_updates_what_differs(make_kafka_settings: MakeSettings, tmp_path: Path) -> None:
    settings = make_kafka_settings()
    definitions = json.loads((settings.topics.definitions_dir / "topics.json").read_text())
    definitions["chunks"]["partitions"] += 2
    definitions["verdicts"]["configs"]["retention.ms"] = "3600000"
    (tmp_path / "topics.json").write_text(json.dumps(definitions))
    changed = settings.model_copy(
        update={"topics": settings.topics.model_copy(update={"definitions_dir": tmp_path})}
    )
    lines = await apply_topics(changed)
    assert lines[0].startswith(f"updated   {settings.topics.chunks}: partitions 6 -> 8")
    assert lines[1] == f"updated   {settings.topics.verdicts}: retention.ms 604800000 -> 3600000"
    assert all(line.startswith("unchanged") for line in lines[2:])
    again = await apply_topics(changed)
    assert all(line.startswith("unchanged") for line in again), again


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_publisher_without_broker_fails_clearly_in_time(make_settings: MakeSettings) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    settings = make_settings(kafka={"bootstrap": bootstrap, "request_timeout_s": 2.0})
    started = time.monotonic()
    with pytest.raises(PublishError, match=bootstrap):
        async with TracePublisher(settings) as publisher:
            await publisher.session().question("q")
    assert time.monotonic() - started < 5


async def test_publisher_to_missing_topic_fails_in_time(
    make_settings: MakeSettings, kafka_bootstrap: str
) -> None:
    settings = make_settings(kafka={"request_timeout_s": 2.0})  # topics never created; no auto-create
    publisher = TracePublisher(settings)
    started = time.monotonic()
    with pytest.raises(PublishError, match=settings.topics.chunks):  # at start(), before any chunk
        await publisher.start()
    assert publisher._producer is None
    assert time.monotonic() - started < 6


async def test_abort_subscriber_receives_an_abort_from_another_client(
    make_kafka_settings: MakeSettings,
) -> None:
    settings = make_kafka_settings()
    sink = KafkaEventSink(settings)
    await sink.start()
    try:
        async with AbortSubscriber(settings) as subscriber:
            watch = subscriber.watch("s-abort")
            iterated: asyncio.Task[Abort] = asyncio.create_task(anext(aiter(subscriber)))
            await asyncio.sleep(0)
            other, ours = an_abort("s-other"), an_abort("s-abort")
            await sink.publish([(settings.topics.aborts, b"s-other", encode(other))])
            await sink.publish([(settings.topics.aborts, b"s-abort", encode(ours))])
            assert await asyncio.wait_for(watch.aborted(), 15) == ours
            assert await asyncio.wait_for(iterated, 5) == other
    finally:
        await sink.stop()


async def test_chunk_source_commit_and_poll_round_trip(make_kafka_settings: MakeSettings) -> None:
    settings = make_kafka_settings()
    topic = settings.topics.chunks
    sink = KafkaEventSink(settings)
    await sink.start()
    await sink.publish([(topic, f"s-{i % 4}".encode(), f"v{i}".encode()) for i in range(20)])
    assigned: list[frozenset[tuple[str, int]]] = []

    async def on_assigned(partitions: frozenset[tuple[str, int]]) -> None:
        assigned.append(partitions)

    first = KafkaChunkSource(settings, on_assigned=on_assigned)
    await first.start()
    records = await read_until(first, 20)
    assert sorted(r.value for r in records) == sorted(f"v{i}".encode() for i in range(20))
    assert assigned[-1] == first.assignment() == frozenset((topic, p) for p in range(6))
    # Commit the first half of every partition: a new member of the group re-reads only the rest.
    by_partition: dict[int, list[Record]] = {}
    for r in records:
        by_partition.setdefault(r.partition, []).append(r)
    kept = {(topic, p): rs[len(rs) // 2].offset for p, rs in by_partition.items()}
    rest = sorted(r.value for rs in by_partition.values() for r in rs[len(rs) // 2 :])
    await first.commit(kept)
    with pytest.raises(CommitRejected):
        await first.commit({(topic, 99): 1})
    await first.stop()

    second = KafkaChunkSource(settings)
    await second.start()
    try:
        again = await read_until(second, len(rest))
        assert sorted(r.value for r in again) == rest
        second.pause()
        await sink.publish([(topic, b"s-0", b"while paused")])
        assert await second.poll(1.0, 10) == []
        second.resume()
        assert [r.value for r in await read_until(second, 1)] == [b"while paused"]
    finally:
        await second.stop()
        await sink.stop()
