"""A replicated 3-broker KRaft cluster (scripts/kafka-cluster.sh): topics made with replication factor 3 and
min.insync.replicas 2, and the leader broker of the busiest chunks partition SIGKILLed mid-replay, then
restarted. The worker never exits; afterwards every chunk is covered by a verdict, every harmful session has
one abort, no safe session has one, and the restarted broker is back in every in-sync replica set.

With acks=all and two in-sync replicas required, every acknowledged chunk and event is on two brokers, so
the crash of one loses nothing; the producers ride out the leader election (about the 6 s the cluster takes
to fence a dead broker) on their retries."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from mixed_replay import all_covered, check, collect, mixed_set, stream, tail, with_client_id
from private_kafka import CLUSTER_BOOTSTRAP, cluster_sh, partitions
from test_worker_chaos import _owns_everything
from test_worker_e2e import SETTLE_S, Events, _partition, _settings, _start_worker, _stop, _until

from monitor.edges.kafka import apply_topics, topic_specs
from monitor.sdk import TracePublisher

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

RATE = 3.0
STAGGER_S = 1.5
DOWN_S = 8.0  # the leader stays dead this long (the fault, not a check): past its fencing, mid-replay
ISR_S = 90.0


@pytest.fixture(scope="module")
def kafka_cluster() -> Iterator[str]:
    cluster_sh("start")
    try:
        yield CLUSTER_BOOTSTRAP
    finally:
        cluster_sh("stop")


async def _lagging(bootstrap: str, topics: list[str]) -> list[str]:
    """The partitions whose in-sync replicas are not all three brokers (or why they cannot be read)."""
    out = []
    for topic in topics:
        try:
            described = await partitions(bootstrap, topic)
        except Exception as exc:  # metadata not answering for a moment: not yet
            out.append(f"{topic}: {exc!r}")
            continue
        out += [f"{topic}/{p['partition']}: isr {p['isr']}" for p in described if p["isr"] != [1, 2, 3]]
    return out


@pytest.mark.timeout(300)
async def test_the_leader_of_a_busy_partition_dies_mid_replay_and_nothing_is_lost(
    services: None, kafka_cluster: str, tmp_path: Path
) -> None:
    settings = _settings(
        kafka={"bootstrap": kafka_cluster, "request_timeout_s": 15.0},
        topics={"replication_factor": 3, "min_insync_replicas": 2},
        policy={"min_tokens": 64},
    )
    await apply_topics(settings)
    names = [s.name for s in topic_specs(settings)]
    for name in names:
        described = await partitions(kafka_cluster, name)
        assert all(p["replicas"] == [1, 2, 3] for p in described), (name, described)
    chunks = settings.topics.chunks
    plans = mixed_set(copies=2)
    log = tmp_path / "worker.log"
    worker = _start_worker(with_client_id(settings, "cluster"), log)
    events, stop = Events(), asyncio.Event()
    collector = asyncio.create_task(collect(settings, events, stop))
    try:
        await _owns_everything(settings, "cluster", log)
        busiest, _ = Counter(_partition(p.sid) for p in plans).most_common(1)[0]
        async with TracePublisher(settings, timeout_s=60) as publisher:
            streams = [
                asyncio.create_task(stream(publisher, p, RATE, start_in_s=k * STAGGER_S / 2))
                for k, p in enumerate(plans)
            ]
            await _until(lambda: any(events.verdicts.values()), SETTLE_S, "first verdicts")
            leader = next(
                p["leader"] for p in await partitions(kafka_cluster, chunks) if p["partition"] == busiest
            )
            cluster_sh("kill", str(leader))
            killed_at = time.time()
            await asyncio.sleep(DOWN_S)
            assert worker.poll() is None, f"the worker exited with broker {leader} dead:\n{tail(log)}"
            assert sum(not s.done() for s in streams) >= 3, "the crash should land mid-replay"
            moved = next(p for p in await partitions(kafka_cluster, chunks) if p["partition"] == busiest)
            assert moved["leader"] not in (leader, -1) and leader not in moved["isr"], moved
            cluster_sh("start", str(leader))
            await asyncio.gather(*streams)
        await _until(lambda: all_covered(events, plans), SETTLE_S + 30, "coverage after the crash")
        await asyncio.sleep(1.0)  # a second abort, if any, would arrive now
        counts = check(events, plans)
        assert any(v.ts > killed_at for vs in events.verdicts.values() for v in vs)
        deadline = time.monotonic() + ISR_S
        while lagging := await _lagging(kafka_cluster, names):
            assert time.monotonic() < deadline, f"broker {leader} is not back in sync: {lagging}"
            await asyncio.sleep(0.5)
        assert worker.poll() is None, f"the worker exited:\n{tail(log)}"
        print(f"cluster: leader {leader} of chunks partition {busiest} killed; {counts}")
        assert _stop(worker) == 0, f"worker did not drain cleanly:\n{tail(log)}"
    finally:
        _stop(worker, signal.SIGKILL)
        stop.set()
        await collector
