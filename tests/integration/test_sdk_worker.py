"""The SDK with a real worker (`qta-monitor serve`, the embedded guard) on the test's topics: a stack that
streams through `monitored_stream` with a `MonitorHealth` sees every response chunk answered by a verdict
in time, so the monitor counts as watching and `on_unwatched` never fires. The generation lasts more than
twice the bound, so without verdicts (tests/integration/test_sdk_kafka.py) it would have been stopped."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_worker_e2e import SAMPLES, _settings, _start_worker, _stop, _wait_for_group

from monitor.edges.kafka import apply_topics, delete_topics
from monitor.sdk import AbortSubscriber, MonitorHealth, TracePublisher, monitored_stream

pytestmark = pytest.mark.integration

CHUNK_CHARS = 48
PAUSE_S = 0.25  # a slow model: 18 deltas of the sample take 4.5 s
BOUND_S = 2.0


class Generation:
    """A fake streaming completion of one bundled sample: thinking deltas, then answer deltas."""

    def __init__(self, thinking: str, answer: str) -> None:
        cut = range(0, max(len(thinking), len(answer)), CHUNK_CHARS)
        self.deltas = [("reasoning_content", thinking[i : i + CHUNK_CHARS]) for i in cut if thinking[i:]]
        self.deltas += [("content", answer[i : i + CHUNK_CHARS]) for i in cut if answer[i:]]
        self.closed = False

    async def _gen(self) -> AsyncIterator[dict[str, Any]]:
        for field, text in self.deltas:
            await asyncio.sleep(PAUSE_S)
            yield {"choices": [{"index": 0, "delta": {field: text}}]}

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._gen()

    async def close(self) -> None:
        self.closed = True


async def test_with_a_worker_running_the_monitor_is_watching(services: None, tmp_path: Path) -> None:
    settings = _settings()
    await apply_topics(settings)
    log = tmp_path / "worker.log"
    worker = _start_worker(settings, log)
    try:
        await _wait_for_group(settings, 1, [log])
        sample = SAMPLES["benign-sourdough"]
        generation = Generation(sample.thinking, sample.answer)
        calls: list[tuple[str, float]] = []
        worst = 0.0
        async with (
            TracePublisher(settings) as publisher,
            AbortSubscriber(settings) as subscriber,
            MonitorHealth(settings) as health,
        ):
            session = publisher.session(model="m", tenant="acme", request_id="req-healthy")
            await session.question(sample.question)
            stream = monitored_stream(
                generation, session, subscriber, health=health, verdict_timeout_s=BOUND_S, fail_closed=True,
                on_unwatched=lambda sid, waited: calls.append((sid, waited)),
            )  # fmt: skip
            async for _ in stream:
                worst = max(worst, health.unanswered_s(session.session_id))
                assert health.watching(session.session_id) and health.healthy
        assert not calls and not stream.unwatched and stream.abort is None
        assert not generation.closed and len(generation.deltas) * PAUSE_S > 2 * BOUND_S
        assert worst < BOUND_S
        assert _stop(worker) == 0, f"worker did not drain cleanly:\n{log.read_text()[-3000:]}"
    finally:
        _stop(worker, signal.SIGKILL)
        await delete_topics(settings)
