"""`qta-monitor replay FILE`: publish labelled sessions as a serving stack would, through the SDK.

Each session becomes its question (images inline), its thinking and answer in `chunk_chars` pieces and
`end`, at `rate` chunks per second, all sessions at once. Like a serving stack, a session stops generating
when the monitor aborts it: the remaining pieces are not sent, only `end`. Session ids get a per-run suffix,
so a second replay of the same file is new traffic, not a duplicate of the first."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from monitor.evaluation.datasets import Sample, load_dataset
from monitor.evaluation.sessions import Planned, session_chunks
from monitor.messages import Abort
from monitor.sdk import AbortSubscriber, PublishError, SessionHandle, SubscribeError, TracePublisher
from monitor.settings import Settings


@dataclass(frozen=True, slots=True)
class Replayed:
    """One published session: its plan (chunk seq -> what of the sample it reveals) and how it ended."""

    session_id: str
    sample: Sample
    plan: tuple[Planned, ...]
    end_seq: int  # seq of the `end` chunk actually sent
    abort: Abort | None  # the abort that stopped it early, if one arrived while it was being published


def session_ids(samples: Sequence[Sample], run: str) -> list[str]:
    return [f"{sample.id}-{run}" for sample in samples]


async def _send(handle: SessionHandle, planned: Planned, sample: Sample) -> None:
    chunk = planned.chunk
    if chunk.part == "question":
        await handle.question(chunk.text, [path.read_bytes() for path in sample.images])
    elif chunk.part == "thinking":
        await handle.thinking(chunk.text)
    elif chunk.part == "answer":
        await handle.answer(chunk.text)
    else:
        await handle.end()


async def _publish_one(
    publisher: TracePublisher,
    subscriber: AbortSubscriber,
    session_id: str,
    sample: Sample,
    rate: float,
    chunk_chars: int,
) -> Replayed:
    plan = tuple(session_chunks(sample, session_id, chunk_chars))
    handle = publisher.session(session_id, model="replay")
    watch = subscriber.watch(session_id)
    pause = 1.0 / rate if rate > 0 else 0.0
    next_at = time.monotonic()
    try:
        for planned in plan:
            if watch.abort is not None and planned.chunk.part != "end":
                break  # the serving stack stops generating; only `end` follows
            await _send(handle, planned, sample)
            next_at += pause
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await handle.end()  # no-op when the plan's own `end` was sent
    finally:
        watch.close()
    return Replayed(session_id, sample, plan, handle.seq, watch.abort)


async def publish_sessions(
    settings: Settings, samples: Sequence[Sample], rate: float, chunk_chars: int, run: str | None = None
) -> list[Replayed]:
    """Publish every sample concurrently; return what was sent, in the order of `samples`."""
    ids = session_ids(samples, run or uuid.uuid4().hex[:6])
    async with TracePublisher(settings) as publisher, AbortSubscriber(settings) as subscriber:
        return list(
            await asyncio.gather(
                *(
                    _publish_one(publisher, subscriber, sid, sample, rate, chunk_chars)
                    for sid, sample in zip(ids, samples, strict=True)
                )
            )
        )


def describe(r: Replayed) -> str:
    planned = len(r.plan)
    if r.abort is None:
        return f"replayed {r.session_id}: {r.end_seq} chunks"
    return (
        f"replayed {r.session_id}: stopped by the abort at seq {r.abort.seq}, "
        f"{r.end_seq} of {planned} chunks sent"
    )


async def replay(settings: Settings, file: Path, rate: float, chunk_chars: int) -> int:
    """The CLI command: publish the sessions of `file` (any format monitor.evaluation.datasets reads)."""
    if chunk_chars <= 0 or rate < 0:
        print("qta-monitor replay: --chunk-chars must be > 0 and --rate >= 0")
        return 2
    try:
        samples = load_dataset(file)
    except (OSError, ValueError, KeyError) as exc:
        print(f"qta-monitor replay: cannot read {file}: {exc}")
        return 2
    try:
        replayed = await publish_sessions(settings, samples, rate, chunk_chars)
    except (PublishError, SubscribeError) as exc:
        print(f"qta-monitor replay: {exc}")
        return 1
    for r in replayed:
        print(describe(r))
    return 0
