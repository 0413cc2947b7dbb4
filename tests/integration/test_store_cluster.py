"""The Redis store on a real three-node Redis Cluster (scripts/redis-cluster.sh): every key of a session
sits in its `{sid}` slot, so the seq-checked Lua save, the loads and the abort claim work across nodes."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from test_store_redis import comparable, folded, make_settings

from monitor.core.session import mark_saved
from monitor.edges.store import RedisSessionStore, keys

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FIRST_PORT = 17001


@pytest.fixture(scope="module")
def cluster_url(services: None) -> Iterator[str]:
    env = {**os.environ, "QTA_REDIS_CLUSTER_PORT": str(FIRST_PORT)}
    script = str(ROOT / "scripts" / "redis-cluster.sh")
    done = subprocess.run(["bash", script, "start"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"redis-cluster.sh start failed:\n{done.stdout}\n{done.stderr}"
    try:
        yield f"redis://127.0.0.1:{FIRST_PORT}/0"
    finally:
        subprocess.run(["bash", script, "stop"], env=env, capture_output=True, timeout=60)


def owner_port(sid: str) -> int:
    """The port of the node that serves this session's slot."""
    node = Redis(host="127.0.0.1", port=FIRST_PORT)
    try:
        slot = int(node.execute_command("CLUSTER", "KEYSLOT", keys(sid)["meta"]))
        for start, end, master, *_ in node.execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return int(master[1])
    finally:
        node.close()
    raise AssertionError(f"no node serves slot {slot}")


async def test_sessions_on_several_nodes_save_load_and_claim_once(cluster_url: str) -> None:
    settings = make_settings(cluster_url, cluster=True)
    sids = [f"s-{uuid.uuid4().hex}" for _ in range(12)]
    assert len({owner_port(sid) for sid in sids}) >= 2, "the sessions should spread over several nodes"
    states = [
        folded(sid, [("question", "Is this safe? "), ("thinking", f"Thinking {i}. ")])
        for i, sid in enumerate(sids)
    ]
    first, second = RedisSessionStore(settings), RedisSessionStore(settings)
    try:
        assert await first.save(states) == frozenset()
        assert await first.save(states) == frozenset(sids)  # replayed saves are no-ops on every node
        loaded = await second.load([*sids, "never-seen"])
        assert set(loaded) == set(sids)
        for state in states:
            assert comparable(loaded[state.session_id]) == comparable(mark_saved(state))
        assert all(t > 0 for t in (await second.ttl(sids[0])).values() if t != -2)
        assert await first.claim_abort(sids[0], "abort-1")
        assert not await second.claim_abort(sids[0], "abort-2")
        assert await second.claimed_abort(sids[0]) == "abort-1"
    finally:
        await first.close()
        await second.close()


async def test_a_retried_save_call_succeeds_but_a_replayed_save_conflicts(redis_url: str) -> None:
    """A client may send a save that already ran again (cluster clients retry on broken connections);
    the save token tells that retry (success) from a replay of the same state (a conflict, a no-op)."""
    store = RedisSessionStore(make_settings(redis_url))
    state = folded(f"s-{uuid.uuid4().hex}", [("question", "Is this safe? ")])
    try:
        key_list, args = store._save_args(state)
        assert await store._save(keys=key_list, args=args) == 1
        assert await store._save(keys=key_list, args=args) == 1  # the very same call again
        key_list, args = store._save_args(state)
        assert await store._save(keys=key_list, args=args) == 0  # the same state saved anew: a replay
    finally:
        await store.close()
