"""Crashes, counted: one worker process SIGKILLed N times at seeded random points while a mixed set of
sessions streams in, and restarted each time. Afterwards nothing is lost (every chunk covered by a verdict),
every harmful session has exactly one abort and no safe session has one.

Each cycle: start a worker, wait until the group has handed it every partition (the killed member is gone
once its session times out), start that cycle's sessions, then kill the worker a seeded random delay later.
Earlier sessions keep streaming while it is dead, so every restart finds a backlog. The test asserts that
sessions were still streaming at every kill: each kill cuts the replay."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mixed_replay import Planned, all_covered, check, collect, mixed_set, stream, tail, with_client_id
from test_worker_e2e import SETTLE_S, Events, _assignment, _settings, _start_worker, _stop, _until

from monitor.edges.kafka import apply_topics, delete_topics
from monitor.sdk import TracePublisher
from monitor.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

KILLS = 10
SEED = 20261201
RATE = 3.0  # chunks per second per session: each session streams for 5-10 s, across a kill
KILL_AFTER_S = (0.3, 4.0)  # a kill lands this long after the worker was handed its partitions
READY_S = 90.0


async def _owns_everything(settings: Settings, client_id: str, log: Path) -> None:
    """Until the group is stable with `client_id` as its only member, holding every chunk partition."""
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        try:
            split = await _assignment(settings)
        except Exception:  # the coordinator not found yet (a fresh broker): ask again
            split = {}
        if set(split) == {client_id} and split[client_id] == set(range(6)):
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"{client_id} never got every partition:\n{tail(log)}")


@pytest.mark.timeout(480)
async def test_a_worker_killed_ten_times_loses_no_chunk_and_aborts_once(
    services: None, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    settings = _settings(policy={"min_tokens": 64})
    await apply_topics(settings)
    plans = mixed_set(copies=2)
    by_cycle: dict[int, list[Planned]] = {i: plans[i::KILLS] for i in range(KILLS)}
    events, stop = Events(), asyncio.Event()
    collector = asyncio.create_task(collect(settings, events, stop))
    worker: subprocess.Popen[bytes] | None = None
    streams: list[asyncio.Task[None]] = []
    in_flight_at_kill: list[int] = []
    try:
        async with TracePublisher(settings) as publisher:
            for cycle in range(KILLS + 1):
                name, log = f"chaos-{cycle}", tmp_path / f"worker-{cycle}.log"
                worker = _start_worker(with_client_id(settings, name), log)
                await _owns_everything(settings, name, log)
                streams += [asyncio.create_task(stream(publisher, p, RATE)) for p in by_cycle.get(cycle, [])]
                if cycle == KILLS:
                    break  # the last worker runs to the end
                await asyncio.sleep(rng.uniform(*KILL_AFTER_S))
                assert worker.poll() is None, f"worker {name} died by itself:\n{tail(log)}"
                worker.send_signal(signal.SIGKILL)
                worker.wait()
                in_flight_at_kill.append(sum(not task.done() for task in streams))
            await asyncio.gather(*streams)
        await _until(lambda: all_covered(events, plans), SETTLE_S, "coverage after the last kill")
        await asyncio.sleep(1.0)  # a second abort, if any, would arrive now
        counts = check(events, plans)
        assert len(in_flight_at_kill) == KILLS and all(in_flight_at_kill), in_flight_at_kill
        print(f"chaos: {KILLS} kills, seed {SEED}, {counts}, in flight at each kill {in_flight_at_kill}")
        assert worker is not None and _stop(worker) == 0, "the last worker did not drain cleanly"
    finally:
        if worker is not None:
            _stop(worker, signal.SIGKILL)
        for task in streams:
            task.cancel()
        stop.set()
        await collector
        await delete_topics(settings)
