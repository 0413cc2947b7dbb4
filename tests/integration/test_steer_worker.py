"""Steer end to end (README "Steer"): a real worker whose policy steers instead of aborting, and a stack
that streams through `monitored_stream` with `on_steer`. The worker publishes one steer and keeps scoring
the session; the stack closes the harmful generation, publishes the reflection and continues under the same
session id, and the continuation is monitored (verdicts past the steer)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterable
from pathlib import Path
from typing import Any

import pytest
from test_sdk_worker import Generation
from test_worker_e2e import (
    SAMPLES,
    SETTLE_S,
    Events,
    _collect,
    _settings,
    _start_worker,
    _stop,
    _until,
    _wait_for_group,
)

from monitor.edges.kafka import apply_topics, delete_topics
from monitor.messages import Abort
from monitor.sdk import AbortSubscriber, TracePublisher, monitored_stream

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_a_steered_session_continues_under_its_id_and_stays_monitored(
    services: None, tmp_path: Path
) -> None:
    settings = _settings(policy={"action": "steer", "min_tokens": 64})
    await apply_topics(settings)
    log = tmp_path / "worker.log"
    worker = _start_worker(settings, log)
    events, stop = Events(), asyncio.Event()
    collector = asyncio.create_task(_collect(settings, events, stop))
    try:
        await _wait_for_group(settings, 1, [log])
        harmful, benign = SAMPLES["think-car-bomb"], SAMPLES["benign-sourdough"]
        first = Generation(harmful.thinking, harmful.answer)
        continuation = Generation(benign.thinking, "")
        steered: list[Abort] = []

        async def on_steer(steer: Abort) -> AsyncIterable[Any]:
            steered.append(steer)
            return continuation

        async with TracePublisher(settings) as publisher, AbortSubscriber(settings) as aborts:
            session = publisher.session(model="m", tenant="acme", request_id="req-steer")
            await session.question(harmful.question)
            stream = monitored_stream(first, session, aborts, on_steer=on_steer)
            async for _ in stream:
                pass
        sid = session.session_id
        (steer,) = steered
        assert stream.steers == [steer] and steer.action == "steer" and steer.request_id == "req-steer"
        assert first.closed  # the harmful generation was stopped at the steer
        assert steer.session_id == sid and steer.steer_prompt == settings.policy.steer_prompt
        # the continuation went out under the same id, after the reflection, and was scored
        await _until(lambda: any(v.seq > steer.seq for v in events.verdicts[sid]), SETTLE_S, "verdicts")

        def finished() -> bool:  # the end scored, or a real abort after the steer
            top = max(v.seq for v in events.verdicts[sid])
            return top == session.seq or any(a.action == "abort" for a in events.aborts.get(sid, []))

        await _until(finished, SETTLE_S, "the session's end (or its abort)")
        kinds = [a.action for a in events.aborts.get(sid, [])]
        assert kinds.count("steer") >= 1 and len({a.event_id for a in events.aborts[sid]}) <= 2
        assert all(a.action == "abort" for a in events.aborts[sid] if a.event_id != steer.event_id)
        assert _stop(worker) == 0, f"worker did not drain cleanly:\n{log.read_text()[-3000:]}"
    finally:
        _stop(worker, signal.SIGKILL)
        stop.set()
        await collector
        await delete_topics(settings)
