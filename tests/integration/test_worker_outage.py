"""A real worker process rides out a Redis outage: while its (private, AOF) Redis is stopped the worker
keeps running, says so in its log and publishes no abort (an abort must be claimed in Redis first); once
Redis is back it resumes and publishes exactly one abort, still placed before the answer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from private_redis import redis_sh
from test_worker_e2e import (
    SAMPLES,
    SETTLE_S,
    Events,
    _collect,
    _first_answer_seq,
    _plan,
    _settings,
    _sid,
    _start_worker,
    _stop,
    _stream,
    _until,
    _wait_for_group,
)

from monitor.edges.kafka import apply_topics, delete_topics
from monitor.sdk import TracePublisher

pytestmark = pytest.mark.integration

PORT = "16392"  # a private Redis: this test stops it under a running worker


async def test_a_worker_rides_out_a_redis_outage(services: None, tmp_path: Path) -> None:
    redis_sh("start", tmp_path, "--aof", port=PORT)
    settings = _settings(redis={"url": f"redis://127.0.0.1:{PORT}/0"}, policy={"min_tokens": 64})
    await apply_topics(settings)
    log = tmp_path / "worker.log"
    worker = _start_worker(settings, log)
    events, stop = Events(), asyncio.Event()
    collector = asyncio.create_task(_collect(settings, events, stop))
    sid = _sid("think-stalk-ex")
    plan = _plan(SAMPLES["think-stalk-ex"], sid)
    try:
        await _wait_for_group(settings, 1, [log])
        async with TracePublisher(settings) as publisher:
            await _stream(publisher, plan[:2])  # the question and a first line of thinking
            await _until(lambda: bool(events.verdicts.get(sid)), SETTLE_S, "a first verdict")
            assert not events.aborts.get(sid)

            redis_sh("stop", tmp_path, port=PORT)
            await _stream(publisher, plan[2:])  # the harmful rest arrives while Redis is down
            await asyncio.sleep(3.0)
            assert worker.poll() is None, f"the worker died on a Redis outage:\n{log.read_text()[-3000:]}"
            assert "redis unavailable" in log.read_text(), "the outage should be logged clearly"
            assert not events.aborts.get(sid), "an abort was published without its claim in Redis"

            redis_sh("start", tmp_path, "--aof", port=PORT)
            await _until(lambda: bool(events.aborts.get(sid)), SETTLE_S, "the abort after Redis came back")
        await asyncio.sleep(1.0)  # a duplicate, if any, would arrive now
        assert len(events.abort_ids(sid)) == 1
        abort = events.aborts[sid][0]
        assert abort.part == "thinking" and abort.seq < _first_answer_seq(plan)
        assert _stop(worker) == 0, f"worker did not drain cleanly:\n{log.read_text()[-3000:]}"
    finally:
        _stop(worker, 9)
        stop.set()
        await collector
        await delete_topics(settings)
        redis_sh("stop", tmp_path, port=PORT)
