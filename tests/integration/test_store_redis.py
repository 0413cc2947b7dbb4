"""The Redis session store against a real Redis (started by the `redis_url` fixture in tests/conftest.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest
from redis import Redis

from monitor.core.policy import PolicyState
from monitor.core.session import FoldLimits, ScorePoint, SessionState, fold, mark_saved, mark_scored
from monitor.edges.store import MemorySessionStore, RedisSessionStore, StoreUnavailable, keys
from monitor.messages import Chunk, ImageRef, Part
from monitor.settings import GuardSettings, RedisSettings, Settings

pytestmark = pytest.mark.integration


def make_settings(redis_url: str, **redis: object) -> Settings:
    return Settings(
        redis=RedisSettings(url=redis_url, session_ttl_s=600, scores_kept=3, **redis),  # type: ignore[arg-type]
        guard=GuardSettings(max_tokens=10),  # 40 characters per part
    )


def folded(sid: str, parts: list[tuple[Part, str]], start: SessionState | None = None) -> SessionState:
    limits = FoldLimits(reorder_window=4, gap_timeout_s=5.0, max_chars=40)
    state = start or SessionState(sid)
    for part, text in parts:
        images = (ImageRef(uri="/tmp/x.png"),) if part == "question" else ()
        chunk = Chunk(session_id=sid, seq=state.next_seq, part=part, text=text, images=images, tenant="acme")
        state = fold(state, chunk, 0.0, limits).state
    return state


def comparable(state: SessionState) -> SessionState:
    return replace(state, unscored_since=None, gap_since=None)


async def test_save_then_load_round_trips_and_a_replayed_save_is_a_no_op(redis_url: str) -> None:
    settings = make_settings(redis_url)
    store = RedisSessionStore(settings)
    sid = f"s-{uuid.uuid4().hex}"
    try:
        first = folded(sid, [("question", "Is this safe? "), ("thinking", "Let me think. ")])
        assert await store.save([first]) == frozenset()
        assert await store.save([first]) == frozenset({sid})  # a replay of the same save: no-op
        loaded = (await store.load([sid, "never-seen"]))[sid]
        assert comparable(loaded) == comparable(mark_saved(first))
        assert loaded.thinking == "Let me think. " and loaded.tenant == "acme" and len(loaded.images) == 1

        # a second save appends only the delta, guarded by the stored seq
        second = folded(
            sid, [("thinking", "Still thinking very hard here. "), ("answer", "Yes.")], mark_saved(first)
        )
        second = mark_scored(
            second, ScorePoint(second.folded_seq, 0.1, 0, "g"), PolicyState(scores=1, ema=0.05)
        )
        assert await store.save([second]) == frozenset()
        assert await store.save([second]) == frozenset({sid})
        loaded = (await store.load([sid]))[sid]
        assert loaded.thinking == second.thinking and loaded.answer == "Yes."
        assert (
            loaded.thinking.endswith("hard here. ") and loaded.truncated
        )  # 40-char tail kept, like in memory
        assert loaded.policy == PolicyState(scores=1, ema=0.05) and loaded.scored_seq == second.folded_seq
    finally:
        await store.close()


async def test_every_key_has_a_ttl_and_scores_are_capped(redis_url: str) -> None:
    settings = make_settings(redis_url)
    store = RedisSessionStore(settings)
    sid = f"s-{uuid.uuid4().hex}"
    try:
        state = folded(sid, [("question", "q? "), ("thinking", "t "), ("answer", "a ")])
        for i in range(5):
            state = mark_scored(state, ScorePoint(i, 0.1 * i, 0, "g"), state.policy)
        assert await store.claim_abort(sid, "abort-1")
        await store.save([state])
        ttls = await store.ttl(sid)
        assert all(0 < ttl <= 600 for ttl in ttls.values()), ttls
        assert all(k.startswith(f"qm:{{{sid}}}:") for k in keys(sid).values())
        assert len(await store._client.lrange(keys(sid)["scores"], 0, -1)) == 3
    finally:
        await store.close()


async def test_claim_abort_once_across_two_store_instances(redis_url: str) -> None:
    settings = make_settings(redis_url)
    a, b = RedisSessionStore(settings), RedisSessionStore(settings)
    sid = f"s-{uuid.uuid4().hex}"
    try:
        assert await a.claim_abort(sid, "abort-a") is True
        assert await b.claim_abort(sid, "abort-b") is False
        assert await b.claim_abort(sid, "abort-a") is True  # the same event again: a replay re-publishes it
        assert await b.claimed_abort(sid) == "abort-a"
        assert await a.claimed_abort(f"{sid}-other") is None
    finally:
        await a.close()
        await b.close()


async def test_a_stale_worker_cannot_overwrite_a_newer_save(redis_url: str) -> None:
    settings = make_settings(redis_url)
    store = RedisSessionStore(settings)
    sid = f"s-{uuid.uuid4().hex}"
    try:
        base = folded(sid, [("question", "q? ")])
        await store.save([base])
        ahead = folded(sid, [("thinking", "from worker A ")], mark_saved(base))
        stale = folded(sid, [("thinking", "from worker B ")], mark_saved(base))
        assert await store.save([ahead]) == frozenset()
        assert await store.save([stale]) == frozenset({sid})
        assert (await store.load([sid]))[sid].thinking == "from worker A "
    finally:
        await store.close()


async def test_memory_twin_agrees_with_redis(redis_url: str) -> None:
    settings = make_settings(redis_url)
    redis_store, memory = RedisSessionStore(settings), MemorySessionStore(settings)
    sid = f"s-{uuid.uuid4().hex}"
    try:
        state = folded(sid, [("question", "q? "), ("thinking", "x" * 50), ("answer", "fine")])
        for store in (redis_store, memory):
            await store.save([state])
        from_redis, from_memory = (await redis_store.load([sid]))[sid], (await memory.load([sid]))[sid]
        assert from_redis == from_memory
    finally:
        await redis_store.close()


async def test_unreachable_redis_is_a_recoverable_store_error() -> None:
    store = RedisSessionStore(Settings(redis=RedisSettings(url="redis://127.0.0.1:1/0")))
    try:
        with pytest.raises(StoreUnavailable) as info:
            await store.load(["x"])
        assert info.value.recoverable
    finally:
        await store.close()


def _wait_calls(redis_url: str) -> int:
    """How many WAIT commands this Redis has run (INFO commandstats)."""
    client = Redis.from_url(redis_url)
    try:
        stats = client.info("commandstats").get("cmdstat_wait", {})
        return int(stats.get("calls", 0)) if isinstance(stats, dict) else 0
    finally:
        client.close()


async def test_without_wait_replicas_no_wait_is_sent(redis_url: str) -> None:
    store = RedisSessionStore(make_settings(redis_url))
    sid = f"s-{uuid.uuid4().hex}"
    before = _wait_calls(redis_url)
    try:
        assert await store.claim_abort(sid, "abort-1")
        assert await store.save([folded(sid, [("question", "q? ")])]) == frozenset()
        assert _wait_calls(redis_url) == before
    finally:
        await store.close()


async def test_wait_on_a_redis_without_replicas_is_a_recoverable_error_that_names_the_setting(
    redis_url: str,
) -> None:
    """The shared test Redis has no replica: with redis.wait_replicas=1 nothing is acknowledged, so a
    worker publishes and commits nothing on it and retries. The writes are on the primary, and the retry
    of the same save carries the same token (a success there, not a conflict that drops the session)."""
    waiting = RedisSessionStore(make_settings(redis_url, wait_replicas=1, wait_timeout_ms=200))
    plain = RedisSessionStore(make_settings(redis_url))
    sid = f"s-{uuid.uuid4().hex}"
    state = folded(sid, [("question", "Is this safe? ")])
    before = _wait_calls(redis_url)
    attempts: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("claim_abort", lambda: waiting.claim_abort(sid, "abort-1")),
        ("save", lambda: waiting.save([state])),
    ]
    try:
        for doing, attempt in attempts:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as info:
                await attempt()
            assert info.value.recoverable
            message = str(info.value)
            assert f"redis {doing}: 0 of 1 replicas (redis.wait_replicas)" in message, message
            assert "200 ms (redis.wait_timeout_ms)" in message and "redis.wait_replicas=0" in message
            assert time.monotonic() - started >= 0.2  # Redis held the WAIT for its timeout
        assert _wait_calls(redis_url) >= before + 2
        assert await plain.claimed_abort(sid) == "abort-1"
        key_list, args = waiting._save_args(state)  # what the worker's retry of that save sends
        assert await plain._save(keys=key_list, args=args) == 1  # taken for the call that already ran
        assert await plain.save([state]) == frozenset({sid})  # a new token: a replay, a conflict
    finally:
        await waiting.close()
        await plain.close()
