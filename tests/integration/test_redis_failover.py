"""Redis Cluster fail-over under a running worker: three primaries with a replica each
(`QTA_REDIS_CLUSTER_REPLICAS=1 scripts/redis-cluster.sh`, on its own ports), and the primary that holds an
already aborted harmful session's keys SIGKILLed mid-replay. Its replica is promoted; the worker rides it
out, the session state and the abort claim are still there, and afterwards every chunk is covered by a
verdict, each harmful session has exactly one abort and no safe session has one.

Redis replicates asynchronously, so a write acknowledged in the instant before the kill could be lost; the
kill in that test comes after the abort is published, when the replica has long had the claim. The store
tests below (each on a fresh cluster of their own ports) kill the primary in that instant: without
`redis.wait_replicas` a claim acknowledged just before is lost and a second abort can be claimed; with
`redis.wait_replicas=1` the claim is acknowledged only once the replica has it, so it survives, and with
the replica unable to answer nothing is acknowledged (StoreUnavailable: the worker publishes nothing and
retries, and the retries succeed once the replica is back)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from mixed_replay import all_covered, check, collect, mixed_set, stream, tail, with_client_id
from private_kafka import ROOT
from redis import Redis
from test_store_redis import comparable, folded
from test_worker_chaos import _owns_everything
from test_worker_e2e import SETTLE_S, Events, _settings, _start_worker, _stop, _until

from monitor.core.session import mark_saved
from monitor.edges.kafka import apply_topics, delete_topics
from monitor.edges.store import RedisSessionStore, StoreUnavailable, keys
from monitor.sdk import TracePublisher
from monitor.settings import GuardSettings, RedisSettings, Settings

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

FIRST_PORT = 17101  # six nodes, 17101-17106; not the replica-less cluster of test_store_cluster.py
STORE_PORT = 17111  # the store tests' fresh clusters, 17111-17116
ENV = {"QTA_REDIS_CLUSTER_PORT": str(FIRST_PORT), "QTA_REDIS_CLUSTER_REPLICAS": "1"}
RATE = 3.0
STAGGER_S = 1.0
PROMOTED_S = 30.0


def _cluster_sh(action: str, first: int = FIRST_PORT) -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "redis-cluster.sh"), action],
        env={**os.environ, **ENV, "QTA_REDIS_CLUSTER_PORT": str(first)},
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


def _kill(port: int, sig: signal.Signals = signal.SIGKILL, first: int = FIRST_PORT) -> None:
    pid = int((_state_dir(first) / str(port) / "redis.pid").read_text())
    os.kill(pid, sig)


def _state_dir(first: int = FIRST_PORT) -> Path:
    cache = Path(os.environ.get("QTA_CACHE", Path.home() / ".cache" / "qta-monitor"))
    return Path(os.environ.get("QTA_STATE", cache / "state")) / f"redis-cluster-{first}"


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


# ------------------------------------------------------------------------------------------------ the store
@pytest.fixture
def fresh_cluster(services: None) -> Iterator[str]:
    """A new 3 x (primary + replica) cluster for one test (it kills a primary), on STORE_PORT."""
    _cluster_sh("stop", STORE_PORT)
    _cluster_sh("start", STORE_PORT)
    deadline = time.monotonic() + 30
    while not _replicas_listed(STORE_PORT):  # CLUSTER SLOTS names a replica once it has synced
        assert time.monotonic() < deadline, "the replicas did not show in CLUSTER SLOTS"
        time.sleep(0.2)
    try:
        yield f"redis://127.0.0.1:{STORE_PORT}/0"
    finally:
        for port in range(STORE_PORT, STORE_PORT + 6):  # a node left stopped would hang the shutdown
            with contextlib.suppress(OSError, ValueError):
                _kill(port, signal.SIGCONT, STORE_PORT)
        _cluster_sh("stop", STORE_PORT)


def _replicas_listed(port: int) -> bool:
    node = Redis(host="127.0.0.1", port=port, socket_timeout=2)
    try:
        ranges = node.execute_command("CLUSTER", "SLOTS")
    finally:
        node.close()
    return len(ranges) == 3 and all(len(r) >= 4 for r in ranges)


def _stores(url: str) -> tuple[RedisSessionStore, RedisSessionStore]:
    """A store that waits for one replica (a short WAIT timeout) and one that does not."""

    def settings(wait: int) -> Settings:
        redis = RedisSettings(url=url, cluster=True, wait_replicas=wait, wait_timeout_ms=300)
        return Settings(redis=redis, guard=GuardSettings(max_tokens=10))

    return RedisSessionStore(settings(1)), RedisSessionStore(settings(0))


def _sessions_on(primary: int, n: int) -> list[str]:
    """`n` new session ids whose keys the node `primary` serves."""
    out: list[str] = []
    while len(out) < n:
        sid = f"s-{uuid.uuid4().hex}"
        if _owner(sid, STORE_PORT)[0] == primary:
            out.append(sid)
    return out


async def _promoted(sid: str, primary: int, replica: int) -> None:
    alive = next(p for p in range(STORE_PORT, STORE_PORT + 6) if p != primary)
    deadline = time.monotonic() + PROMOTED_S
    while _owner(sid, alive)[0] != replica:
        assert time.monotonic() < deadline, f"the replica on {replica} was not promoted"
        await asyncio.sleep(0.25)


@pytest.mark.timeout(180)
async def test_with_wait_a_claim_acknowledged_just_before_its_primary_dies_survives(
    fresh_cluster: str,
) -> None:
    waiting, plain = _stores(fresh_cluster)
    primary = STORE_PORT  # the node the url names: the clients must find the others without it
    first, second = _sessions_on(primary, 2)
    replica = _owner(first, STORE_PORT)[1]
    assert replica is not None
    state = folded(first, [("question", "Is this safe? "), ("thinking", "Let me think. ")])
    try:
        assert await plain.claimed_abort(first) is None  # both clients connected, as a worker's are
        # The replica cannot answer: nothing is acknowledged, so a worker would publish and commit nothing.
        _kill(replica, signal.SIGSTOP, STORE_PORT)
        try:
            for attempt in (lambda: waiting.claim_abort(first, "abort-1"), lambda: waiting.save([state])):
                with pytest.raises(StoreUnavailable) as info:
                    await attempt()
                assert info.value.recoverable and "0 of 1 replicas (redis.wait_replicas)" in str(info.value)
        finally:
            _kill(replica, signal.SIGCONT, STORE_PORT)
        # The worker's retries, once the replica answers: the same claim again, the same save (a success).
        assert await waiting.claim_abort(first, "abort-1") is True
        assert await waiting.save([state]) == frozenset()
        # A claim acknowledged, and its primary SIGKILLed at once.
        assert await waiting.claim_abort(second, "abort-2") is True
        _kill(primary, signal.SIGKILL, STORE_PORT)
        killed_at = time.monotonic()
        await _promoted(second, primary, replica)
        print(f"wait fail-over: primary {primary} killed, replica {replica} promoted in "
              f"{time.monotonic() - killed_at:.1f} s")  # fmt: skip
        assert _claim_on(replica, second) == b"abort-2" and _claim_on(replica, first) == b"abort-1"
        assert await plain.claim_abort(second, "abort-other") is False  # no second abort
        assert await plain.claimed_abort(second) == "abort-2"
        assert comparable((await plain.load([first]))[first]) == comparable(mark_saved(state))
        # The promoted primary has no replica left: with WAIT the store now refuses to acknowledge.
        messages = []
        for _ in range(3):  # the first try may meet the dead node, which refreshes the slot map
            with pytest.raises(StoreUnavailable) as info:
                await waiting.claim_abort(second, "abort-2")
            messages.append(str(info.value))
        assert "0 of 1 replicas (redis.wait_replicas)" in messages[-1], messages
    finally:
        await waiting.close()
        await plain.close()


@pytest.mark.timeout(180)
async def test_without_wait_a_claim_acknowledged_in_that_instant_is_lost_and_a_second_abort_follows(
    fresh_cluster: str,
) -> None:
    """What WAIT prevents, made deterministic: the replica's link is cut (it is stopped and the primary
    drops it), so what the primary acknowledges now exists on the primary only, which then dies."""
    waiting, plain = _stores(fresh_cluster)
    sid = f"s-{uuid.uuid4().hex}"
    primary, replica = _owner(sid, STORE_PORT)
    assert replica is not None
    try:
        _kill(replica, signal.SIGSTOP, STORE_PORT)
        try:
            node = Redis(host="127.0.0.1", port=primary, socket_timeout=2)
            try:
                assert node.client_kill_filter(_type="replica") >= 1
            finally:
                node.close()
            with pytest.raises(StoreUnavailable):  # with WAIT: not acknowledged, so never published
                await waiting.claim_abort(sid, "abort-1")
            assert await plain.claim_abort(sid, "abort-1") is True  # without: acknowledged, published
            _kill(primary, signal.SIGKILL, STORE_PORT)
        finally:
            _kill(replica, signal.SIGCONT, STORE_PORT)
        await _promoted(sid, primary, replica)
        assert _claim_on(replica, sid) is None  # the claim died with its primary
        assert await plain.claim_abort(sid, "abort-2") is True  # so another abort id wins: a second abort
    finally:
        await waiting.close()
        await plain.close()
