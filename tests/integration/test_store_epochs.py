"""A new epoch of a session (its id restarted from seq 1) in the real Redis store, and in the in-memory
twin the same way: the save rewrites the session instead of appending to the old one, seq-checked."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest
from test_store_redis import folded, make_settings

from monitor.core.policy import PolicyState
from monitor.core.session import FoldLimits, ScorePoint, fold, mark_saved, mark_scored
from monitor.edges.store import MemorySessionStore, RedisSessionStore
from monitor.messages import Chunk

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("kind", ["redis", "memory"])
async def test_a_new_epoch_replaces_the_old_session_in_the_store(redis_url: str, kind: str) -> None:
    settings = make_settings(redis_url)
    store = RedisSessionStore(settings) if kind == "redis" else MemorySessionStore(settings)
    sid = f"s-{uuid.uuid4().hex}"
    try:
        old = folded(sid, [("question", "Old question? "), ("thinking", "Old thoughts. "), ("end", "")])
        old = mark_scored(old, ScorePoint(old.folded_seq, 0.1, 0, "g"), PolicyState(scores=1, ema=0.1))
        assert await store.save([old]) == frozenset()
        old = mark_saved(old)

        restart = Chunk(session_id=sid, seq=1, part="question", text="New question? ", ts=5.0)
        step = fold(old, restart, 0.0, FoldLimits(reorder_window=4, gap_timeout_s=5.0, max_chars=40))
        assert step.restarted
        new = folded(sid, [("thinking", "New. ")], step.state)
        assert await store.save([new]) == frozenset()
        assert await store.save([new]) == frozenset({sid})  # still seq-checked: a replayed save is a no-op
        loaded = (await store.load([sid]))[sid]
        assert (loaded.question, loaded.thinking, loaded.answer) == ("New question? ", "New. ", "")
        assert loaded.epoch == 1 and loaded.status == "open" and loaded.next_seq == 3
        assert loaded.images == new.images and loaded.policy == PolicyState()
        # the next save of the new epoch appends again
        more = folded(sid, [("thinking", "More. ")], replace(mark_saved(new)))
        assert await store.save([more]) == frozenset()
        assert (await store.load([sid]))[sid].thinking == "New. More. "
    finally:
        await store.close()
