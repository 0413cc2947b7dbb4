"""The whole (single-node) Kafka broker restarted under a running worker, mid-replay: the worker never exits,
and afterwards every chunk is covered by a verdict, every harmful session has one abort and no safe one has.

A private broker (scripts/kafka.sh on other ports, its own state), so the shared one keeps serving the other
tests. The broker is stopped the way an operator restarts it (SIGTERM, controlled shutdown) while sessions
are still streaming; the SDK's idempotent producer holds the chunks sent meanwhile and delivers them after."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from mixed_replay import all_covered, check, collect, mixed_set, stream, tail, with_client_id
from private_kafka import kafka_sh, port_open
from test_worker_chaos import _owns_everything
from test_worker_e2e import SETTLE_S, Events, _settings, _start_worker, _stop, _until

from monitor.edges.kafka import apply_topics
from monitor.sdk import TracePublisher

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

PORT = 19292  # controller 19293; not the shared broker's 19092
RATE = 3.0
STAGGER_S = 1.5  # session k starts k * STAGGER_S into the replay
DOWN_S = 4.0  # how long the broker stays down (the fault, not a check)


@pytest.mark.timeout(300)
async def test_a_worker_rides_out_a_whole_broker_restart(services: None, tmp_path: Path) -> None:
    state = tmp_path / "state"
    kafka_sh("start", state, port=PORT)
    settings = _settings(kafka={"bootstrap": f"127.0.0.1:{PORT}"}, policy={"min_tokens": 64})
    await apply_topics(settings)
    plans = mixed_set()
    log = tmp_path / "worker.log"
    worker = _start_worker(with_client_id(settings, "restart"), log)
    events, stop = Events(), asyncio.Event()
    collector = asyncio.create_task(collect(settings, events, stop))
    try:
        await _owns_everything(settings, "restart", log)
        # a long publisher timeout: chunks sent while the broker is down wait for it, as a server's would
        async with TracePublisher(settings, timeout_s=60) as publisher:
            streams = [
                asyncio.create_task(stream(publisher, p, RATE, start_in_s=k * STAGGER_S))
                for k, p in enumerate(plans)
            ]
            await _until(lambda: any(events.verdicts.values()), SETTLE_S, "first verdicts")
            kafka_sh("stop", state, port=PORT)
            stopped_at = time.time()
            assert not port_open(PORT), "the broker still answers: it was not the one this test started"
            await asyncio.sleep(DOWN_S)
            assert worker.poll() is None, f"the worker exited while the broker was down:\n{tail(log)}"
            assert sum(not s.done() for s in streams) >= 3, "the restart should land mid-replay"
            kafka_sh("start", state, port=PORT)
            await asyncio.gather(*streams)
        await _until(lambda: all_covered(events, plans), SETTLE_S + 30, "coverage after the restart")
        await asyncio.sleep(1.0)  # a second abort, if any, would arrive now
        counts = check(events, plans)
        # work was done on both sides of the restart
        assert any(v.ts < stopped_at for vs in events.verdicts.values() for v in vs)
        assert any(v.ts > stopped_at + DOWN_S for vs in events.verdicts.values() for v in vs)
        assert worker.poll() is None, f"the worker exited:\n{tail(log)}"
        print(f"broker restart: {counts}")
        assert _stop(worker) == 0, f"worker did not drain cleanly:\n{tail(log)}"
    finally:
        _stop(worker, signal.SIGKILL)
        stop.set()
        await collector
        kafka_sh("stop", state, port=PORT)
