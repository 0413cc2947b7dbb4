"""Consumer lag (position and committed, the one KEDA sees) and readiness from the worker loop, on the
in-memory twins; the produce-errors counter. One test measures both lags on the real broker (its fixture
marks it `integration`): a consumer that polled everything but committed nothing."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

from fake_guard import MarkerGuard
from prometheus_client import REGISTRY, generate_latest

from monitor import telemetry
from monitor.core.pipeline import Pipeline
from monitor.edges import lag as lag_module
from monitor.edges.health import Readiness
from monitor.edges.kafka import (
    KafkaChunkSource,
    KafkaEventSink,
    KafkaUnavailable,
    MemoryBroker,
    MemoryChunkSource,
    MemoryEventSink,
)
from monitor.edges.lag import LagReporter
from monitor.edges.store import MemorySessionStore, StoreUnavailable
from monitor.messages import Chunk, encode
from monitor.settings import ImageSettings, Settings, TelemetrySettings
from monitor.worker import Worker

CHUNKS = "qta.chunks"


def publish_session(broker: MemoryBroker, sid: str) -> int:
    parts = [
        ("question", "What is bread? "),
        ("thinking", "Flour and water. "),
        ("answer", "Bake it."),
        ("end", ""),
    ]
    for seq, (part, text) in enumerate(parts, 1):
        chunk = Chunk(session_id=sid, seq=seq, part=part, text=text)  # type: ignore[arg-type]
        broker.append(CHUNKS, sid.encode(), encode(chunk))
    return len(parts)


class RecordingReadiness(Readiness):
    def __init__(self) -> None:
        super().__init__()
        self.history: list[tuple[str, str]] = []

    def up(self, service: str) -> None:
        super().up(service)
        self.history.append((service, "up"))

    def down(self, service: str, reason: str) -> None:
        super().down(service, reason)
        self.history.append((service, "down"))


class FailingSource:
    def __init__(self) -> None:
        self.failing = True

    async def lags(self) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int]]:
        if self.failing:
            raise KafkaUnavailable("Kafka is not reachable at 127.0.0.1:1", recoverable=True)
        return {(CHUNKS, 0): 0}, {(CHUNKS, 0): 0}


async def test_lag_is_end_minus_position_per_partition_and_drops_to_zero_once_polled() -> None:
    broker = MemoryBroker(default_partitions=2)
    source = MemoryChunkSource(broker, [CHUNKS])
    await source.start()
    reporter = LagReporter(source, interval_s=0)
    await reporter.measure()
    assert reporter.last == {(CHUNKS, 0): 0, (CHUNKS, 1): 0}
    sent = publish_session(broker, "a") + publish_session(broker, "b") + publish_session(broker, "c")
    await reporter.measure()
    assert sum(reporter.last.values()) == sent
    assert reporter.last == {tp: len(broker.records(*tp)) for tp in reporter.last}
    assert telemetry._lag == reporter.last  # what /metrics reports
    await source.poll(0, 5)
    await reporter.measure()
    assert sum(reporter.last.values()) == sent - 5
    await source.poll(0, 100)
    await reporter.measure()
    assert sum(reporter.last.values()) == 0


def exported(name: str) -> dict[str, float]:
    """partition -> value of the gauge `name` for the chunks topic, as /metrics shows it."""
    pattern = rf'^{name}\{{[^}}]*partition="(\d+)",topic="{CHUNKS}"[^}}]*\}} (\S+)$'
    return {p: float(v) for p, v in re.findall(pattern, generate_latest(REGISTRY).decode(), re.M)}


async def test_committed_lag_counts_what_was_polled_but_not_committed_and_is_exported() -> None:
    telemetry.start(Settings(telemetry=TelemetrySettings(metrics_port=0)))
    broker = MemoryBroker(default_partitions=2)
    source = MemoryChunkSource(broker, [CHUNKS])
    await source.start()
    sent = publish_session(broker, "a") + publish_session(broker, "b") + publish_session(broker, "c")
    reporter = LagReporter(source, interval_s=0)
    await source.poll(0, 100)  # everything read, nothing committed (a worker mid-cycle)
    await reporter.measure()
    assert sum(reporter.last.values()) == 0
    assert reporter.last_committed == {tp: len(broker.records(*tp)) for tp in reporter.last}
    assert sum(reporter.last_committed.values()) == sent
    assert lag_module._committed == reporter.last_committed
    assert exported("qta_monitor_consumer_lag_committed") == {
        str(p): float(n) for (_, p), n in reporter.last_committed.items()
    }
    assert set(exported("qta_monitor_consumer_lag").values()) == {0.0}
    await source.commit({(CHUNKS, 0): len(broker.records(CHUNKS, 0))})
    await reporter.measure()
    assert reporter.last_committed == {(CHUNKS, 0): 0, (CHUNKS, 1): len(broker.records(CHUNKS, 1))}
    # a partition revoked drops out of both gauges
    await source.rebalance(frozenset({(CHUNKS, 1)}))
    await reporter.measure()
    assert set(reporter.last) == set(reporter.last_committed) == {(CHUNKS, 1)}
    assert set(exported("qta_monitor_consumer_lag_committed")) == {"1"}


async def test_on_the_real_broker_a_consumer_that_polled_but_did_not_commit_lags_only_by_commit(
    make_kafka_settings: Callable[..., Settings],
) -> None:
    settings = make_kafka_settings()
    topic, sent = settings.topics.chunks, 12
    chunks = [Chunk(session_id=f"s{i}", seq=1, part="question", text="q") for i in range(sent)]
    sink = KafkaEventSink(settings)
    await sink.start()
    try:
        await sink.publish([(topic, c.session_id.encode(), encode(c)) for c in chunks])
    finally:
        await sink.stop()
    source = KafkaChunkSource(settings)
    await source.start()
    try:
        polled: dict[tuple[str, int], int] = {}
        deadline = asyncio.get_running_loop().time() + 30
        while sum(polled.values()) < sent and asyncio.get_running_loop().time() < deadline:
            for r in await source.poll(0.5, 100):
                polled[(r.topic, r.partition)] = polled.get((r.topic, r.partition), 0) + 1
        assert sum(polled.values()) == sent
        reporter = LagReporter(source, interval_s=0)
        await reporter.measure()
        assert len(reporter.last) == 6 and sum(reporter.last.values()) == 0, reporter.last
        assert reporter.last_committed == {(topic, p): polled.get((topic, p), 0) for p in range(6)}
        await source.commit(polled)  # each partition held only these records: offset n is its end
        await reporter.measure()
        assert sum(reporter.last_committed.values()) == 0 and sum(reporter.last.values()) == 0
    finally:
        await source.stop()


async def test_tick_measures_once_per_interval() -> None:
    now = [0.0]
    broker = MemoryBroker(default_partitions=1)
    source = MemoryChunkSource(broker, [CHUNKS])
    await source.start()
    reporter = LagReporter(source, interval_s=5.0, clock=lambda: now[0])
    await reporter.tick()
    publish_session(broker, "a")
    now[0] = 4.9
    await reporter.tick()
    assert reporter.last == {(CHUNKS, 0): 0}  # not yet due
    now[0] = 5.0
    await reporter.tick()
    assert reporter.last == {(CHUNKS, 0): 4}


async def test_a_failed_measurement_marks_kafka_down_and_the_next_good_one_up() -> None:
    readiness = RecordingReadiness()
    source = FailingSource()
    reporter = LagReporter(source, readiness)
    await reporter.measure()
    await reporter.measure()
    assert readiness.history == [("kafka", "down"), ("kafka", "down")]
    source.failing = False
    await reporter.measure()
    await reporter.measure()
    assert readiness.history == [("kafka", "down"), ("kafka", "down"), ("kafka", "up")]
    assert reporter.last == {(CHUNKS, 0): 0}


class DownOnceStore(MemorySessionStore):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.failures = 1

    async def save(self, states):  # type: ignore[no-untyped-def]
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("Redis is not reachable at 127.0.0.1:16379", recoverable=True)
        return await super().save(states)


async def test_the_worker_reports_lag_and_readiness_as_it_consumes(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from monitor import worker as worker_module

    monkeypatch.setattr(worker_module, "BACKOFF_START_S", 0.001)
    settings = Settings(images=ImageSettings(ocr=False))
    broker = MemoryBroker(default_partitions=3)
    source = MemoryChunkSource(broker, [CHUNKS])
    sent = sum(publish_session(broker, f"s{i}") for i in range(6))
    readiness = RecordingReadiness()
    lag = LagReporter(source, readiness, interval_s=0)
    store = DownOnceStore(settings)
    pipeline = Pipeline(settings, store, MarkerGuard(), autosave=False)
    stop = asyncio.Event()
    worker = Worker(settings, source, MemoryEventSink(broker), pipeline, stop, readiness=readiness, lag=lag)
    task = asyncio.create_task(worker.run())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    committed = 0
    while loop.time() < deadline:
        committed = sum(broker.committed.get(("qta-monitor", CHUNKS, p), 0) for p in range(3))
        if committed == sent and lag.last and sum(lag.last.values()) == 0:
            break
        await asyncio.sleep(0.01)
    stop.set()
    assert await task == 0
    await pipeline.close()
    assert committed == sent and sum(lag.last.values()) == 0 and len(lag.last) == 3
    # Kafka and Redis up at start-up, Redis down for the failed save and up again once it is saved.
    assert readiness.history[:2] == [("kafka", "up"), ("redis", "up")]
    assert ("redis", "down") in readiness.history
    assert readiness.history[readiness.history.index(("redis", "down")) + 1] == ("redis", "up")
    ready, detail = readiness.report()
    assert not ready and detail == {"guard": "starting", "kafka": "ok", "redis": "ok"}  # serve() loads it


async def test_produce_errors_are_counted() -> None:
    telemetry.start(Settings(telemetry=TelemetrySettings(metrics_port=0)))

    def counted() -> float:
        exported = generate_latest(REGISTRY).decode()
        found = re.search(
            r'^qta_monitor_produce_errors_total\{error="injected"[^}]*\} (\S+)$', exported, re.M
        )
        return float(found.group(1)) if found else 0.0

    before = counted()
    sink = MemoryEventSink(MemoryBroker())
    await sink.start()
    sink.fail_next(KafkaUnavailable("broker gone", recoverable=True), times=2)
    for _ in range(2):
        try:
            await sink.publish([("t", b"k", b"v")])
        except KafkaUnavailable:
            pass
    assert counted() == before + 2
