"""Durability of the Redis store against its own AOF Redis (scripts/redis.sh start --aof on a private port):
session state and the abort claim survive a Redis restart, and a Redis that is down is a recoverable
`StoreUnavailable` until it is back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from private_redis import redis_sh
from test_store_redis import comparable, folded, make_settings

from monitor.core.session import mark_saved
from monitor.edges.store import RedisSessionStore, StoreUnavailable

pytestmark = pytest.mark.integration

PORT = "16391"  # not the shared instance: this test stops and restarts its Redis


@pytest.fixture
def aof_redis(services: None, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    redis_sh("start", tmp_path, "--aof", port=PORT)
    try:
        yield f"redis://127.0.0.1:{PORT}/0", tmp_path
    finally:
        redis_sh("stop", tmp_path, port=PORT)


async def test_state_and_abort_claim_survive_a_redis_restart(aof_redis: tuple[str, Path]) -> None:
    url, state_dir = aof_redis
    settings = make_settings(url)
    sid = f"s-{uuid.uuid4().hex}"
    first = folded(sid, [("question", "Is this safe? "), ("thinking", "Let me think. ")])
    store = RedisSessionStore(settings)
    try:
        assert await store.save([first]) == frozenset()
        assert await store.claim_abort(sid, "abort-1")
    finally:
        await store.close()

    redis_sh("stop", state_dir, port=PORT)  # SHUTDOWN, then a cold start that replays the append-only file
    redis_sh("start", state_dir, "--aof", port=PORT)

    store = RedisSessionStore(settings)
    try:
        loaded = (await store.load([sid]))[sid]
        assert comparable(loaded) == comparable(mark_saved(first))
        assert await store.claimed_abort(sid) == "abort-1"
        assert not await store.claim_abort(sid, "abort-2")  # still only one abort per session, ever
        assert await store.save([first]) == frozenset({sid})  # the replayed save is still a no-op
    finally:
        await store.close()


async def test_a_stopped_redis_is_recoverable_and_the_store_works_once_it_is_back(
    aof_redis: tuple[str, Path],
) -> None:
    url, state_dir = aof_redis
    store = RedisSessionStore(make_settings(url))
    sid = f"s-{uuid.uuid4().hex}"
    try:
        redis_sh("stop", state_dir, port=PORT)
        with pytest.raises(StoreUnavailable) as info:
            await store.load([sid])
        assert info.value.recoverable, "a Redis that is down must be retried, not fatal"
        redis_sh("start", state_dir, "--aof", port=PORT)
        first = folded(sid, [("question", "Hello? ")])
        assert await store.save([first]) == frozenset()  # the same client object reconnects
        assert sid in await store.load([sid])
    finally:
        await store.close()
