"""A session id that comes back, against a real worker (README "Session ids"): a retried request under an
ended id is scored as a new epoch, a stack that ignores its abort (or regenerates under the aborted id) gets
the same abort again, and what cannot be told from a duplicate or comes after `end` is a dead letter.
Before epochs, every one of these chunks was dropped as "late" or "duplicate" without a trace."""

from __future__ import annotations

import asyncio
import time

import pytest
from test_worker_e2e import (
    SAMPLES,
    SETTLE_S,
    Stack,
    _partition,
    _plan,
    _sid,
    _sid_on,
    _stream,
    _until,
)
from test_worker_e2e import stack as stack

from monitor.messages import Chunk, encode

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

FAST = 40.0  # chunks per second: mechanics, not latency


async def test_a_retried_request_under_an_ended_id_is_monitored_again(stack: Stack) -> None:
    sid = _sid("retried")
    benign, harmful = _plan(SAMPLES["benign-sourdough"], sid), _plan(SAMPLES["think-car-bomb"], sid)
    await _stream(stack.publisher, benign, rate=FAST)
    await _until(lambda: stack.events.covered(sid, benign[-1].seq), SETTLE_S, "the first attempt's end")
    assert not stack.events.aborts.get(sid)
    first = {v.event_id for v in stack.events.verdicts[sid]}

    # the retry keeps the id and starts again at seq 1 (the stream stamps a fresh ts on every chunk)
    await _stream(stack.publisher, harmful, rate=FAST)
    await _until(lambda: bool(stack.events.aborts.get(sid)), SETTLE_S, "the retry's abort")
    assert len(stack.events.abort_ids(sid)) == 1
    abort = stack.events.aborts[sid][0]
    assert abort.epoch == 1 and abort.part == "thinking" and abort.action == "abort"
    retry = [v for v in stack.events.verdicts[sid] if v.event_id not in first]
    assert retry and all(v.epoch == 1 for v in retry)
    assert all(v.epoch == 0 for v in stack.events.verdicts[sid] if v.event_id in first)


async def test_a_stack_that_ignores_its_abort_is_told_again_and_again(stack: Stack) -> None:
    sid = _sid("ignores")
    plan = _plan(SAMPLES["both-meth-lab"], sid)
    await _stream(stack.publisher, plan, rate=FAST)  # streams to the end whatever the monitor says
    await _until(lambda: len(stack.events.aborts.get(sid, [])) >= 2, SETTLE_S, "the abort, repeated")
    assert len(stack.events.abort_ids(sid)) == 1  # the same event: consumers that dedupe see one abort
    first_abort = stack.events.aborts[sid][0]
    assert all(encode(a) == encode(first_abort) for a in stack.events.aborts[sid])

    # it regenerates under the aborted id: stopped again at its first chunk, and nothing of it is scored
    seen = len(stack.events.aborts[sid])
    scored = len(stack.events.verdicts[sid])
    await _stream(stack.publisher, _plan(SAMPLES["benign-sourdough"], sid)[:3], rate=FAST)
    await _until(lambda: len(stack.events.aborts[sid]) > seen, SETTLE_S, "the abort for the regeneration")
    assert stack.events.abort_ids(sid) == {first_abort.event_id}
    await asyncio.sleep(1.0)
    assert len(stack.events.verdicts[sid]) == scored


async def test_an_indistinguishable_restart_and_a_chunk_after_end_are_dead_letters(stack: Stack) -> None:
    sid = _sid("reused-same")
    plan = [c.model_copy(update={"ts": time.time()}) for c in _plan(SAMPLES["benign-photosynthesis"], sid)]
    for chunk in plan:
        await stack.publisher.send(chunk)
    await stack.publisher.flush()
    await _until(lambda: stack.events.covered(sid, plan[-1].seq), SETTLE_S, "the session's end")
    # the very same seq 1 produced again (new offset, same bytes), then a chunk after the end
    await stack.publisher.send(plan[0])
    after = Chunk(session_id=sid, seq=plan[-1].seq + 1, part="answer", text="one more thing", ts=time.time())
    await stack.publisher.send(after)
    await stack.publisher.flush()

    def reasons() -> list[str]:
        return [d.reason for d in stack.events.dead if d.session_id == sid]

    await _until(lambda: len(reasons()) >= 2, SETTLE_S, "two dead letters")
    assert sorted(reasons()) == ["after_end", "session_reused"]
    assert not stack.events.aborts.get(sid)
    # a later session on the same partition proves nothing else was made of them
    probe = _sid_on(_partition(sid), "probe")
    probe_plan = _plan(SAMPLES["benign-python-dedupe"], probe)
    await _stream(stack.publisher, probe_plan, rate=FAST)
    await _until(lambda: stack.events.covered(probe, probe_plan[-1].seq), SETTLE_S, "the probe")
    assert sorted(reasons()) == ["after_end", "session_reused"]
