"""Two of the three brokers of scripts/kafka-cluster.sh SIGKILLed at once under a running worker, topics with
replication factor 3 and min.insync.replicas 2: then no write can reach two replicas (and with two of three
voters gone the cluster has no controller either), so nothing the worker publishes or commits can be made
durable. The worker must neither exit nor pretend: it keeps retrying its publish, commits nothing (the
group's committed offsets stay where they were, read from its coordinator, the broker left alive) and says
it is not ready. When one of the two brokers returns, writes have two replicas again: the worker resumes,
and afterwards every chunk is covered, each harmful session has one abort, no safe one has any.

The broker left alive is the group's coordinator, so the committed offsets can be read from it during the
outage. The chunks producer (the SDK) buffers meanwhile (timeout 90 s). A publish the worker retries sends
its events again, so a harmful session may have several deliveries of its one abort event id (consumers
dedupe by event id); the check counts distinct ids. About 2 minutes with the cluster's start and stop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from mixed_replay import all_covered, check, collect, mixed_set, stream, tail, with_client_id
from private_kafka import cluster_sh, partitions
from test_kafka_cluster import kafka_cluster  # noqa: F401  (the module's cluster fixture)
from test_worker_chaos import _owns_everything
from test_worker_e2e import SETTLE_S, Events, _free_port, _settings, _start_worker, _stop, _until

from monitor.edges.kafka import apply_topics, delete_topics, topic_specs
from monitor.sdk import TracePublisher
from monitor.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

CLUSTER_FIRST_PORT = 29092  # scripts/kafka-cluster.sh: node n on 29091 + n
RATE = 3.0
STAGGER_S = 1.0
DOWN_S = 16.0  # both brokers stay dead this long: past the worker's publish timeout (10 s), mid-replay
COMMIT_TIMEOUT_S = 6.0  # a commit sent just before the kill has failed by then (offsets.commit.timeout 5 s)


async def _committed(settings: Settings, coordinator: int | None = None) -> dict[int, int]:
    """The worker group's committed offset of each chunks partition, asked of its coordinator (of broker
    `coordinator` directly, through it alone, while the others are down)."""
    bootstrap = settings.kafka.bootstrap
    if coordinator is not None:
        bootstrap = f"127.0.0.1:{CLUSTER_FIRST_PORT + coordinator - 1}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=4000)
    try:
        async with asyncio.timeout(8):
            await admin.start()
            offsets = await admin.list_consumer_group_offsets(
                settings.kafka.group_id, group_coordinator_id=coordinator
            )
    finally:
        await asyncio.wait_for(admin.close(), 5)
    return {tp.partition: m.offset for tp, m in offsets.items() if tp.topic == settings.topics.chunks}


async def _coordinator(settings: Settings) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap)
    await admin.start()
    try:
        node: int = await admin.find_coordinator(settings.kafka.group_id)
        return node
    finally:
        await admin.close()


def _ready(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.timeout(300)
async def test_two_brokers_down_stop_every_commit_and_the_worker_resumes_when_one_returns(
    services: None,
    kafka_cluster: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    port = _free_port()
    settings = _settings(
        kafka={"bootstrap": kafka_cluster},
        topics={"replication_factor": 3, "min_insync_replicas": 2},
        policy={"min_tokens": 64},
        telemetry={"metrics_port": port},
    )
    await apply_topics(settings)
    for name in (s.name for s in topic_specs(settings)):
        assert all(p["replicas"] == [1, 2, 3] for p in await partitions(kafka_cluster, name)), name
    plans = mixed_set()
    log = tmp_path / "worker.log"
    worker = _start_worker(with_client_id(settings, "brokers-down"), log)
    events, stop = Events(), asyncio.Event()
    collector = asyncio.create_task(collect(settings, events, stop))
    try:
        await _owns_everything(settings, "brokers-down", log)
        survivor = await _coordinator(settings)
        dead = [n for n in (1, 2, 3) if n != survivor]
        async with TracePublisher(settings, timeout_s=90) as publisher:
            streams = [
                asyncio.create_task(stream(publisher, p, RATE, start_in_s=k * STAGGER_S))
                for k, p in enumerate(plans)
            ]
            await _until(lambda: any(events.verdicts.values()), SETTLE_S, "first verdicts")
            try:
                for node in dead:
                    cluster_sh("kill", str(node))
                killed_at = time.monotonic()
                # A commit sent just before the kill has failed or landed by COMMIT_TIMEOUT_S; from then
                # on nothing may move. Asked of the survivor only: the others refuse connections.
                await asyncio.sleep(COMMIT_TIMEOUT_S)
                snapshots: list[dict[int, int]] = []
                errors: list[str] = []
                while time.monotonic() - killed_at < DOWN_S:
                    try:
                        snapshots.append(await _committed(settings, survivor))
                    except Exception as exc:  # the coordinator slow to answer: not the worker's fault
                        errors.append(repr(exc))
                    assert worker.poll() is None, f"the worker exited with {dead} dead:\n{tail(log)}"
                    await asyncio.sleep(1.0)
                assert len(snapshots) >= 2, f"the coordinator did not answer during the outage: {errors}"
                frozen = snapshots[0]
                assert all(s == frozen for s in snapshots), f"commits with two brokers down: {snapshots}"
                assert sum(not s.done() for s in streams) >= 3, "the outage should land mid-replay"
                status, body = _ready(port)
                assert status == 503 and json.loads(body)["kafka"] != "ok", (status, body)
                # The worker may still be inside aiokafka's own retries (no log line of ours yet): the
                # promise is the frozen commits and /ready above, not the wording of a log line.
            finally:  # one broker back in any case: the publisher flushes on its way out
                await asyncio.to_thread(cluster_sh, "start", str(dead[0]))  # until it answers
            returned_at = time.time()
            await asyncio.gather(*streams)
        await _until(lambda: all_covered(events, plans), SETTLE_S + 30, "coverage after one broker returned")
        covered_s = time.time() - returned_at
        await asyncio.sleep(1.0)  # a second abort, if any, would arrive now
        counts = check(events, plans)
        assert any(v.ts > returned_at for vs in events.verdicts.values() for v in vs)
        sent = sum(len(p.chunks) for p in plans)
        deadline = time.monotonic() + 30
        while sum((committed := await _committed(settings)).values()) < sent:
            assert time.monotonic() < deadline, f"the group did not commit all {sent} chunks: {committed}"
            await asyncio.sleep(0.5)
        assert worker.poll() is None, f"the worker exited:\n{tail(log)}"
        print(
            f"brokers down: {dead} killed for {DOWN_S:.0f} s (coordinator {survivor} left; commits frozen at "
            f"{sum(frozen.values())} of {sent} chunks, {len(snapshots)} reads), {dead[0]} returned, all "
            f"covered {covered_s:.1f} s later; {counts}"
        )
        assert _stop(worker) == 0, f"worker did not drain cleanly:\n{tail(log)}"
    finally:
        _stop(worker, signal.SIGKILL)
        stop.set()
        with contextlib.suppress(TimeoutError):  # a tail connecting to a dead broker misses `stop` a while
            await asyncio.wait_for(collector, 15)
        with contextlib.suppress(Exception):  # needs a controller: two brokers up
            await asyncio.wait_for(delete_topics(settings), 30)
