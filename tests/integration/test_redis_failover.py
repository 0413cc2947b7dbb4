"""Redis Cluster fail-over under a running worker: three primaries with a replica each
(`QTA_REDIS_CLUSTER_REPLICAS=1 scripts/redis-cluster.sh`, on its own ports), and the primary that holds an
already aborted harmful session's keys SIGKILLed mid-replay. Its replica is promoted; the worker rides it
out, the session state and the abort claim are still there, and afterwards every chunk is covered by a
verdict, each harmful session has exactly one abort and no safe session has one.

Redis replicates asynchronously, so a write acknowledged in the instant before the kill could be lost; the
kill comes after the abort is published, when the replica has long had the claim."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mixed_replay import all_covered, check, collect, mixed_set, stream, tail, with_client_id
from private_kafka import ROOT
from redis import Redis
from test_worker_chaos import _owns_everything
from test_worker_e2e import SETTLE_S, Events, _settings, _start_worker, _stop, _until

from monitor.kafka import apply_topics, delete_topics
from monitor.sdk import TracePublisher
from monitor.store import keys

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

FIRST_PORT = 17101  # six nodes, 17101-17106; not the replica-less cluster of test_store_cluster.py
ENV = {"QTA_REDIS_CLUSTER_PORT": str(FIRST_PORT), "QTA_REDIS_CLUSTER_REPLICAS": "1"}
RATE = 3.0
STAGGER_S = 1.0
PROMOTED_S = 30.0


def _cluster_sh(action: str) -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "redis-cluster.sh"), action],
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"redis-cluster.sh {action} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def redis_cluster(services: None) -> Iterator[str]:
    _cluster_sh("stop")  # a fresh cluster: a node killed by an earlier run has lost its place
    _cluster_sh("start")
    try:
        yield f"redis://127.0.0.1:{FIRST_PORT}/0"
    finally:
        _cluster_sh("stop")


def _owner(sid: str, port: int) -> tuple[int, int | None]:
    """The primary serving the session's slot and its replica's port, asked of the node at `port`."""
    node = Redis(host="127.0.0.1", port=port, socket_timeout=2)
    try:
        slot = int(node.execute_command("CLUSTER", "KEYSLOT", keys(sid)["meta"]))
        for start, end, primary, *replicas in node.execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return int(primary[1]), (int(replicas[0][1]) if replicas else None)
    finally:
        node.close()
    raise AssertionError(f"no node serves slot {slot}")


def _claim_on(port: int, sid: str) -> bytes | None:
    node = Redis(host="127.0.0.1", port=port, socket_timeout=2)
    try:
        value: bytes | None = node.get(keys(sid)["abort"])
        return value
    finally:
        node.close()


def _kill(port: int) -> None:
    pid = int((_state_dir() / str(port) / "redis.pid").read_text())
    os.kill(pid, signal.SIGKILL)


def _state_dir() -> Path:
    cache = Path(os.environ.get("QTA_CACHE", Path.home() / ".cache" / "qta-monitor"))
    return Path(os.environ.get("QTA_STATE", cache / "state")) / f"redis-cluster-{FIRST_PORT}"


@pytest.mark.timeout(300)
async def test_a_primary_dies_mid_replay_its_replica_takes_over_and_nothing_is_lost(
    redis_cluster: str, tmp_path: Path
) -> None:
    settings = _settings(redis={"url": redis_cluster, "cluster": True}, policy={"min_tokens": 64})
    await apply_topics(settings)
    plans = mixed_set(copies=2)
    log = tmp_path / "worker.log"
    worker = _start_worker(with_client_id(settings, "redis-failover"), log)
    events, stop = Events(), asyncio.Event()
    collector = asyncio.create_task(collect(settings, events, stop))
    try:
        await _owns_everything(settings, "redis-failover", log)
        async with TracePublisher(settings) as publisher:
            streams = [
                asyncio.create_task(stream(publisher, p, RATE, start_in_s=k * STAGGER_S))
                for k, p in enumerate(plans)
            ]
            await _until(lambda: any(events.aborts.values()), SETTLE_S, "a first abort")
            aborted = next(p for p in plans if events.aborts.get(p.sid))
            primary, replica = _owner(aborted.sid, FIRST_PORT)
            assert replica is not None, "every primary should have a replica"
            claim = _claim_on(primary, aborted.sid)
            assert claim is not None
            _kill(primary)
            killed_at = time.time()
            assert sum(not s.done() for s in streams) >= 3, "the fail-over should land mid-replay"
            alive = next(p for p in range(FIRST_PORT, FIRST_PORT + 6) if p not in (primary,))
            deadline = time.monotonic() + PROMOTED_S
            while _owner(aborted.sid, alive)[0] != replica:
                assert time.monotonic() < deadline, f"the replica on {replica} was not promoted"
                await asyncio.sleep(0.5)
            assert _claim_on(replica, aborted.sid) == claim, "the abort claim did not survive the fail-over"
            await asyncio.gather(*streams)
        await _until(lambda: all_covered(events, plans), SETTLE_S + 30, "coverage after the fail-over")
        await asyncio.sleep(1.0)  # a second abort, if any, would arrive now
        counts = check(events, plans)
        assert any(v.ts > killed_at for vs in events.verdicts.values() for v in vs)
        assert worker.poll() is None, f"the worker exited:\n{tail(log)}"
        print(f"redis fail-over: primary {primary} killed, replica {replica} promoted; {counts}")
        assert _stop(worker) == 0, f"worker did not drain cleanly:\n{tail(log)}"
    finally:
        _stop(worker, signal.SIGKILL)
        stop.set()
        await collector
        await delete_topics(settings)
