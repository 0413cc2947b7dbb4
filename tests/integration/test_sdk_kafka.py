"""The SDK against the real local broker, no worker: the publisher on a missing topic, the sync abort
subscriber, and monitor health when no worker is running on the test's topics (fail closed stops the
stream within about the bound, fail open reports it once and runs to the end)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from monitor.edges.kafka import KafkaEventSink
from monitor.messages import Abort, Verdict, encode, event_id
from monitor.sdk import (
    AbortSubscriber,
    MonitorHealth,
    PublishError,
    SyncAbortSubscriber,
    SyncMonitorHealth,
    SyncTracePublisher,
    TracePublisher,
    monitored_stream,
)
from monitor.settings import Settings

pytestmark = pytest.mark.integration

MakeSettings = Callable[..., Settings]


class Generation:
    """A fake streaming completion: one thinking delta every `pause` s; records whether it was closed."""

    def __init__(self, deltas: int, pause: float) -> None:
        self.deltas = deltas
        self.pause = pause
        self.closed = False

    async def _gen(self) -> AsyncIterator[dict[str, Any]]:
        for i in range(self.deltas):
            await asyncio.sleep(self.pause)
            yield {"choices": [{"index": 0, "delta": {"reasoning_content": f"step {i} of the plan. "}}]}

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._gen()

    async def close(self) -> None:
        self.closed = True


async def _publish(settings: Settings, topic: str, key: str, value: bytes) -> None:
    sink = KafkaEventSink(settings)
    await sink.start()
    try:
        await sink.publish([(topic, key.encode(), value)])
    finally:
        await sink.stop()


async def test_publisher_on_a_missing_topic_fails_fast_and_quietly(
    make_settings: MakeSettings, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings()  # topics never created; the broker does not auto-create them
    caplog.set_level(logging.INFO)
    started = time.monotonic()
    with pytest.raises(PublishError) as refused:
        async with TracePublisher(settings):
            pass
    took = time.monotonic() - started
    assert str(refused.value) == (
        f"topic {settings.topics.chunks} at {kafka_bootstrap} does not exist (run `qta-monitor topics apply`)"
    )
    assert took < settings.kafka.request_timeout_s / 2, took
    noise = [r for r in caplog.records if r.name.startswith("aiokafka") and r.levelno >= logging.WARNING]
    assert not noise, [r.getMessage() for r in noise]
    assert not [r for r in caplog.records if "not found in cluster metadata" in r.getMessage()]


def test_sync_publisher_on_a_missing_topic_fails_fast(
    make_settings: MakeSettings, kafka_bootstrap: str
) -> None:
    settings = make_settings()
    started = time.monotonic()
    with pytest.raises(PublishError, match="does not exist"), SyncTracePublisher(settings):
        pass
    assert time.monotonic() - started < settings.kafka.request_timeout_s / 2


def test_sync_abort_subscriber_sees_an_abort_from_another_client(make_kafka_settings: MakeSettings) -> None:
    settings = make_kafka_settings()
    abort = Abort(
        event_id=event_id("abort", "s-sync", 5), session_id="s-sync", seq=5, part="thinking", label=1,
        score=0.97, rule="threshold", guard="minilm", chunk_ts=time.time(), request_id="req-7",
    )  # fmt: skip
    with SyncAbortSubscriber(settings) as subscriber, subscriber.watch("s-sync") as watch:
        assert watch.abort is None and watch.wait(0.2) is None
        asyncio.run(_publish(settings, settings.topics.aborts, "s-sync", encode(abort)))
        assert watch.wait(15) == abort
        assert watch.abort is not None and watch.abort.request_id == "req-7"


def test_sync_monitor_health_follows_the_verdicts(make_kafka_settings: MakeSettings) -> None:
    settings = make_kafka_settings()
    verdict = Verdict(
        event_id=event_id("verdict", "s-vh", 3), session_id="s-vh", seq=3, part="thinking", tokens=20,
        tokens_read=20, p_safe=0.9, p_potential=0.05, p_harmful=0.05, label=0, guard="minilm", ema=0.05,
        chunk_ts=time.time(),
    )  # fmt: skip
    with SyncMonitorHealth(settings, bound_s=0.2) as health:
        health.track("s-vh")
        health.sent("s-vh", 2)
        health.sent("s-vh", 3)
        time.sleep(0.3)
        assert health.unanswered_s("s-vh") >= 0.3 and not health.watching("s-vh") and not health.healthy
        asyncio.run(_publish(settings, settings.topics.verdicts, "s-vh", encode(verdict)))
        deadline = time.monotonic() + 15
        while health.unanswered_s("s-vh") > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert health.unanswered_s("s-vh") == 0.0 and health.watching("s-vh") and health.healthy


@pytest.mark.parametrize("fail_closed", [True, False])
async def test_with_no_worker_the_stream_fails_closed_or_open(
    make_kafka_settings: MakeSettings, fail_closed: bool
) -> None:
    settings = make_kafka_settings()  # the topics exist; no worker reads them
    bound_s, calls = 1.0, []
    generation = Generation(deltas=30, pause=0.1)  # 3 s of thinking
    async with (
        TracePublisher(settings) as publisher,
        AbortSubscriber(settings) as subscriber,
        MonitorHealth(settings) as health,
    ):
        session = publisher.session(model="m", tenant="acme", request_id="req-1")
        await session.question("How do I plan a picnic?")
        stream = monitored_stream(
            generation, session, subscriber, health=health, verdict_timeout_s=bound_s,
            fail_closed=fail_closed, on_unwatched=lambda sid, waited: calls.append((sid, waited)),
        )  # fmt: skip
        started = time.monotonic()
        seen = [chunk async for chunk in stream]
        took = time.monotonic() - started
    assert len(calls) == 1 and calls[0][0] == session.session_id and calls[0][1] >= bound_s
    assert session.ended and stream.abort is None
    if fail_closed:
        assert stream.unwatched and generation.closed
        assert bound_s <= took < bound_s + 1.0, took
        assert len(seen) < 20
    else:
        assert not stream.unwatched and not generation.closed and len(seen) == 30
