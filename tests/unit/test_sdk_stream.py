"""The SDK without a broker: session ids and numbering, `monitored_stream` over recorded OpenAI-compatible
chunks (published into a MemoryBroker), how it stops when an abort arrives, how it goes on after a steer,
and what it does when the monitor gives no verdict in time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from types import SimpleNamespace
from typing import Any, Literal

import pytest

from monitor.edges.kafka import KafkaUnavailable, MemoryBroker, MemoryEventSink
from monitor.messages import Abort, Chunk, decode_chunk, event_id
from monitor.sdk import (
    AbortSubscriber,
    MonitorHealth,
    PublishError,
    SessionIdReused,
    SyncTracePublisher,
    TracePublisher,
    deltas,
    monitored_stream,
)
from monitor.settings import Settings, load_settings

# A vLLM-style recording: role chunk, reasoning deltas, content deltas, finish chunk, usage chunk.
RECORDED: list[dict[str, Any]] = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {"choices": [{"index": 0, "delta": {"reasoning_content": "The user asks "}}]},
    {"choices": [{"index": 0, "delta": {"reasoning_content": "how to bake bread."}}]},
    {"choices": [{"index": 0, "delta": {"reasoning_content": " Harmless."}}]},
    {"choices": [{"index": 0, "delta": {"content": "Mix flour, "}}]},
    {"choices": [{"index": 0, "delta": {"content": "water and yeast."}}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}},
]


@pytest.fixture
def settings() -> Settings:
    return load_settings(None, topics={"chunks": "t.chunks", "aborts": "t.aborts"})


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


@pytest.fixture
def make_publisher(settings: Settings, broker: MemoryBroker) -> Callable[[], TracePublisher]:
    def make() -> TracePublisher:
        return TracePublisher(settings, sink=MemoryEventSink(broker))

    return make


class Upstream:
    """A fake streaming completion: yields `chunks`, runs `before(i)` ahead of chunk i, can stall at the
    end, and records whether it was closed (which is how a real client stops the generation)."""

    def __init__(
        self,
        chunks: Sequence[Any],
        before: Callable[[int], None] = lambda i: None,
        stall: bool = False,
        pause: float = 0.0,
    ) -> None:
        self.chunks = chunks
        self.before = before
        self.stall = stall
        self.pause = pause
        self.closed = False
        self.served = 0

    async def _gen(self) -> AsyncIterator[Any]:
        for i, chunk in enumerate(self.chunks):
            self.before(i)
            await asyncio.sleep(self.pause)
            self.served += 1
            yield chunk
        if self.stall:
            await asyncio.sleep(3600)

    def __aiter__(self) -> AsyncIterator[Any]:
        self._it = self._gen()
        return self._it

    async def close(self) -> None:
        self.closed = True


def published(broker: MemoryBroker, topic: str = "t.chunks") -> list[Chunk]:
    chunks = [decode_chunk(v) for v in broker.values(topic)]
    assert all(isinstance(c, Chunk) for c in chunks)
    return sorted((c for c in chunks if isinstance(c, Chunk)), key=lambda c: c.seq)


def an_abort(session_id: str, seq: int = 3, action: Literal["abort", "steer"] = "abort") -> Abort:
    return Abort(
        event_id=event_id(action, session_id, seq), session_id=session_id, seq=seq, part="thinking",
        action=action, label=1, score=0.95, rule="threshold", guard="minilm", chunk_ts=0.0,
        steer_prompt="Wait, I should not help with this; let me refuse." if action == "steer" else None,
    )  # fmt: skip


async def test_session_numbers_and_keys_chunks(
    make_publisher: Callable[[], TracePublisher], broker: MemoryBroker
) -> None:
    async with make_publisher() as publisher:
        session = publisher.session(session_id="s-1", model="m", tenant="acme")
        await session.question("q?", images=[b"\x89PNG", "/tmp/cat.png"])
        await session.thinking("t")
        await session.answer("a")
        await session.end()
        await session.end()  # a second end is a no-op
        with pytest.raises(PublishError, match="ended"):
            await session.thinking("late")
    chunks = published(broker)
    assert [(c.seq, c.part) for c in chunks] == [(1, "question"), (2, "thinking"), (3, "answer"), (4, "end")]
    assert {(c.model, c.tenant) for c in chunks} == {("m", "acme")}
    assert chunks[0].images[0].data == "iVBORw==" and chunks[0].images[1].uri == "/tmp/cat.png"
    records = broker.records("t.chunks")
    assert {r.key for r in records} == {b"s-1"} and len({r.partition for r in records}) == 1


async def test_sessions_get_distinct_ids(make_publisher: Callable[[], TracePublisher]) -> None:
    publisher = make_publisher()
    assert publisher.session().session_id != publisher.session().session_id


async def test_a_session_id_is_refused_the_second_time(settings: Settings, broker: MemoryBroker) -> None:
    publisher = TracePublisher(settings, sink=MemoryEventSink(broker), remember_sessions=2)
    publisher.session("retry-me", request_id="req-1")
    with pytest.raises(SessionIdReused, match=r"'retry-me'.*single-use.*request_id") as refused:
        publisher.session("retry-me", request_id="req-1")  # a retried request under the same id
    assert isinstance(refused.value, PublishError)
    fresh = publisher.session(request_id="req-1")  # the retry as it should be: a fresh id, same request id
    assert fresh.session_id != "retry-me" and fresh.request_id == "req-1"
    publisher.session("b")
    publisher.session("c")
    publisher.session("retry-me")  # memory is bounded: the oldest ids are forgotten
    with pytest.raises(ValueError, match="1 to 256"):
        publisher.session("x" * 257)
    with pytest.raises(ValueError, match="request_id"):
        publisher.session(request_id="")


def test_the_sync_publisher_refuses_a_reused_id_too(settings: Settings) -> None:
    publisher = SyncTracePublisher(settings)  # never started: session() needs no broker
    try:
        handle = publisher.session("sync-s", request_id="r")
        assert (handle.session_id, handle.request_id, handle.seq) == ("sync-s", "r", 0)
        with pytest.raises(SessionIdReused):
            publisher.session("sync-s")
    finally:
        publisher.close()


async def test_every_chunk_carries_the_request_id(
    make_publisher: Callable[[], TracePublisher], broker: MemoryBroker
) -> None:
    async with make_publisher() as publisher:
        session = publisher.session(request_id="chatcmpl-42")
        await session.question("q")
        await session.thinking("t")
        await session.end()
    assert {c.request_id for c in published(broker)} == {"chatcmpl-42"}


async def test_monitored_stream_publishes_thinking_then_answer(
    make_publisher: Callable[[], TracePublisher], broker: MemoryBroker
) -> None:
    async with make_publisher() as publisher:
        session = publisher.session(session_id="s-2")
        await session.question("How do I bake bread?")
        upstream = Upstream(RECORDED)
        stream = monitored_stream(upstream, session)
        seen = [chunk async for chunk in stream]
    assert seen == RECORDED  # the caller sees the stream unchanged
    assert stream.abort is None and not upstream.closed
    chunks = published(broker)
    assert [c.seq for c in chunks] == list(range(1, 8))
    assert [c.part for c in chunks] == ["question"] + ["thinking"] * 3 + ["answer"] * 2 + ["end"]
    assert (
        "".join(c.text for c in chunks if c.part == "thinking")
        == "The user asks how to bake bread. Harmless."
    )
    assert "".join(c.text for c in chunks if c.part == "answer") == "Mix flour, water and yeast."


async def test_stream_stops_when_the_abort_arrives(
    make_publisher: Callable[[], TracePublisher], broker: MemoryBroker, settings: Settings
) -> None:
    subscriber = AbortSubscriber(settings)  # not started: aborts are handed in with deliver()
    abort = an_abort("s-3")
    upstream = Upstream(RECORDED, before=lambda i: subscriber.deliver(abort) if i == 3 else None)
    async with make_publisher() as publisher:
        session = publisher.session(session_id="s-3")
        stream = monitored_stream(upstream, session, subscriber)
        seen = [chunk async for chunk in stream]
    assert stream.abort == abort
    assert len(seen) <= 4 and upstream.closed
    parts = [c.part for c in published(broker)]
    assert parts[-1] == "end" and "answer" not in parts


async def test_stalled_stream_stops_promptly(
    make_publisher: Callable[[], TracePublisher], broker: MemoryBroker, settings: Settings
) -> None:
    subscriber = AbortSubscriber(settings)
    upstream = Upstream(RECORDED[:3], stall=True)
    async with make_publisher() as publisher:
        session = publisher.session(session_id="s-4")
        stream = monitored_stream(upstream, session, subscriber)
        asyncio.get_running_loop().call_later(0.05, subscriber.deliver, an_abort("s-4"))
        seen = await asyncio.wait_for(_collect(stream), timeout=2)
    assert len(seen) == 3 and stream.abort is not None and upstream.closed
    assert published(broker)[-1].part == "end"


async def _collect(stream: Any) -> list[Any]:
    return [chunk async for chunk in stream]


async def test_abort_before_the_stream_starts_is_remembered(
    make_publisher: Callable[[], TracePublisher], settings: Settings
) -> None:
    subscriber = AbortSubscriber(settings)
    subscriber.deliver(an_abort("s-5"))
    async with make_publisher() as publisher:
        stream = monitored_stream(Upstream(RECORDED), publisher.session(session_id="s-5"), subscriber)
        assert [c async for c in stream] == []
    assert stream.abort is not None


async def test_other_sessions_aborts_do_not_stop_the_stream(
    make_publisher: Callable[[], TracePublisher], settings: Settings
) -> None:
    subscriber = AbortSubscriber(settings)
    upstream = Upstream(RECORDED, before=lambda i: subscriber.deliver(an_abort(f"other-{i}")))
    async with make_publisher() as publisher:
        stream = monitored_stream(upstream, publisher.session(session_id="s-6"), subscriber)
        assert len([c async for c in stream]) == len(RECORDED)
    assert stream.abort is None


async def test_watch_and_iterate_aborts(settings: Settings) -> None:
    subscriber = AbortSubscriber(settings)
    watch = subscriber.watch("s-7")
    assert watch.abort is None
    received: list[Abort] = []

    async def listen() -> None:
        async for abort in subscriber:
            received.append(abort)
            if len(received) == 2:
                return

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0)
    first, other = an_abort("s-7", 3), an_abort("s-8", 4)
    subscriber.deliver(first)
    subscriber.deliver(first.model_copy())  # the worker re-publishes the same event: deduped by event id
    subscriber.deliver(other)
    assert await asyncio.wait_for(watch.aborted(), 1) == first
    await asyncio.wait_for(listener, 1)
    assert received == [first, other]


def thinking_chunks(*texts: str) -> list[dict[str, Any]]:
    return [{"choices": [{"index": 0, "delta": {"reasoning_content": t}}]} for t in texts]


async def test_a_steer_continues_the_session_with_the_reflection(
    make_publisher: Callable[[], TracePublisher], broker: MemoryBroker, settings: Settings
) -> None:
    subscriber = AbortSubscriber(settings)
    steer = an_abort("s-steer", 2, action="steer")
    first = Upstream(
        thinking_chunks("a ", "b ", "c ", "d "),
        before=lambda i: subscriber.deliver(steer) if i == 2 else None,
    )
    continuation = Upstream(RECORDED[4:6])
    asked: list[Abort] = []

    async def on_steer(event: Abort) -> Upstream:
        asked.append(event)  # a real stack re-prompts the model with the steer prompt inserted here
        return continuation

    async with make_publisher() as publisher:
        session = publisher.session(session_id="s-steer")
        await session.question("q")
        stream = monitored_stream(first, session, subscriber, on_steer=on_steer)
        seen = [chunk async for chunk in stream]
    assert asked == [steer] and stream.steers == [steer] and stream.abort is None
    assert first.closed and not continuation.closed  # the steered generation stopped; its successor ran out
    assert seen == [*first.chunks[:2], *RECORDED[4:6]]
    chunks = published(broker)
    assert [(c.part, c.text) for c in chunks] == [
        ("question", "q"), ("thinking", "a "), ("thinking", "b "), ("thinking", steer.steer_prompt),
        ("answer", "Mix flour, "), ("answer", "water and yeast."), ("end", ""),
    ]  # fmt: skip


async def test_an_abort_after_a_steer_stops_the_continuation(
    make_publisher: Callable[[], TracePublisher], settings: Settings
) -> None:
    subscriber = AbortSubscriber(settings)
    steer, abort = an_abort("s-sa", 2, action="steer"), an_abort("s-sa", 6)
    first = Upstream(
        thinking_chunks("a ", "b ", "c "), before=lambda i: subscriber.deliver(steer) if i == 1 else None
    )
    continuation = Upstream(
        thinking_chunks(*"vwxyz"), before=lambda i: subscriber.deliver(abort) if i == 2 else None, stall=True
    )

    async def on_steer(event: Abort) -> Upstream:
        return continuation

    async with make_publisher() as publisher:
        stream = monitored_stream(first, publisher.session("s-sa"), subscriber, on_steer=on_steer)
        seen = await asyncio.wait_for(_collect(stream), timeout=2)
    assert stream.steers == [steer] and stream.abort == abort
    assert first.closed and continuation.closed and len(seen) <= 1 + 2


async def test_without_on_steer_a_steer_stops_the_stream(
    make_publisher: Callable[[], TracePublisher], broker: MemoryBroker, settings: Settings
) -> None:
    subscriber = AbortSubscriber(settings)
    steer = an_abort("s-st", 2, action="steer")
    upstream = Upstream(RECORDED, before=lambda i: subscriber.deliver(steer) if i == 2 else None)
    async with make_publisher() as publisher:
        stream = monitored_stream(upstream, publisher.session("s-st"), subscriber)
        await _collect(stream)
    assert stream.abort == steer and stream.steers == [steer] and upstream.closed
    assert published(broker)[-1].part == "end"


def test_aborts_dedupe_by_event_id_and_an_abort_supersedes_a_steer(settings: Settings) -> None:
    async def scenario() -> None:
        subscriber = AbortSubscriber(settings)
        steer, abort = an_abort("s-w", 2, action="steer"), an_abort("s-w", 9)
        subscriber.deliver(steer)
        watch = subscriber.watch("s-w")
        assert watch.abort == steer
        handled = subscriber.watch("s-w", after=steer.event_id)  # the caller has handled the steer
        assert handled.abort is None and not handled.future.done()
        subscriber.deliver(steer)  # a replay: nothing changes
        assert handled.abort is None
        subscriber.deliver(abort)
        assert watch.abort == abort and await handled.aborted() == abort
        subscriber.deliver(an_abort("s-w", 12, action="steer"))  # a steer never undoes the abort
        assert watch.abort == abort and subscriber.watch("s-w").abort == abort
        restarted = an_abort("s-w", 3).model_copy(update={"epoch": 1, "event_id": "abort-epoch-1"})
        subscriber.deliver(restarted)  # a later epoch of the id is the newest
        assert watch.abort == restarted

    asyncio.run(scenario())


def test_monitor_health_counts_unanswered_chunks(settings: Settings) -> None:
    health = MonitorHealth(settings, bound_s=0.05)  # not started: verdicts are handed in with answered()
    health.sent("untracked", 1)
    assert health.unanswered_s("untracked") == 0.0
    health.track("s")
    health.sent("s", 2)
    health.sent("s", 3)
    assert 0.0 < health.unanswered_s("s") < 0.05 and health.watching("s") and health.healthy
    health.answered("s", 2)
    assert health.unanswered_s("s") > 0.0  # chunk 3 still waits
    time.sleep(0.06)
    assert not health.watching("s") and health.watching("s", bound_s=10) and not health.healthy
    health.answered("s", 3)
    assert health.unanswered_s("s") == 0.0 and health.healthy
    health.sent("s", 3)  # already answered (the verdict came first): nothing waits
    assert health.unanswered_s("s") == 0.0
    health.sent("s", 4)
    health.forget("s")
    assert health.unanswered_s("s") == 0.0 and health.healthy


def answering(health: MonitorHealth, session_id: str, every_s: float = 0.01) -> asyncio.Task[None]:
    """A stand-in worker: answers every chunk of the session soon after it is sent."""

    async def answer() -> None:
        while True:
            await asyncio.sleep(every_s)
            chunks = health._sent.get(session_id)
            if chunks:
                health.answered(session_id, chunks[-1][0])

    return asyncio.create_task(answer())


@pytest.mark.parametrize("fail_closed", [True, False])
async def test_no_verdict_in_time_is_reported_or_stops_the_stream(
    make_publisher: Callable[[], TracePublisher], broker: MemoryBroker, settings: Settings, fail_closed: bool
) -> None:
    health = MonitorHealth(settings)  # not started: no verdict ever comes
    calls: list[tuple[str, float]] = []
    upstream = Upstream(thinking_chunks(*(f"w{i} " for i in range(30))), pause=0.02)
    async with make_publisher() as publisher:
        stream = monitored_stream(
            upstream, publisher.session("s-h"), AbortSubscriber(settings), health=health,
            verdict_timeout_s=0.15, fail_closed=fail_closed, on_unwatched=lambda s, w: calls.append((s, w)),
        )  # fmt: skip
        started = time.monotonic()
        seen = await asyncio.wait_for(_collect(stream), timeout=5)
        took = time.monotonic() - started
    assert len(calls) == 1 and calls[0][0] == "s-h" and calls[0][1] >= 0.15
    assert published(broker)[-1].part == "end" and stream.abort is None
    if fail_closed:
        assert stream.unwatched and upstream.closed and 5 <= len(seen) < 30 and took < 0.6
    else:
        assert not stream.unwatched and not upstream.closed and len(seen) == 30


async def test_a_stalled_upstream_does_not_delay_failing_closed(
    make_publisher: Callable[[], TracePublisher], settings: Settings
) -> None:
    health = MonitorHealth(settings)
    upstream = Upstream(thinking_chunks("a ", "b "), stall=True)
    async with make_publisher() as publisher:
        stream = monitored_stream(
            upstream, publisher.session("s-hs"), health=health, verdict_timeout_s=0.1, fail_closed=True
        )
        seen = await asyncio.wait_for(_collect(stream), timeout=2)
    assert len(seen) == 2 and stream.unwatched and upstream.closed


async def test_answered_chunks_keep_the_stream_going(
    make_publisher: Callable[[], TracePublisher], settings: Settings
) -> None:
    health = MonitorHealth(settings)
    calls: list[tuple[str, float]] = []

    async def unwatched(session_id: str, waited_s: float) -> None:
        calls.append((session_id, waited_s))

    upstream = Upstream(thinking_chunks(*(f"w{i} " for i in range(20))), pause=0.02)
    async with make_publisher() as publisher:
        worker = answering(health, "s-ok")
        stream = monitored_stream(
            upstream, publisher.session("s-ok"), health=health, verdict_timeout_s=0.15, fail_closed=True,
            on_unwatched=unwatched,
        )  # fmt: skip
        seen = await _collect(stream)
        worker.cancel()
    assert len(seen) == 20 and not calls and not stream.unwatched
    assert "s-ok" not in health._sent  # the stream forgets its session at the end


async def test_aclose_after_a_break_ends_the_session_at_once(
    make_publisher: Callable[[], TracePublisher], broker: MemoryBroker
) -> None:
    upstream = Upstream(RECORDED)
    async with make_publisher() as publisher:
        session = publisher.session("s-break")
        stream = monitored_stream(upstream, session)
        async for _ in stream:
            break
        await stream.aclose()
        assert session.ended and upstream.closed
    assert [c.part for c in published(broker)] == ["end"]  # the first chunk has no text


async def test_delivery_failure_is_a_publish_error(settings: Settings, broker: MemoryBroker) -> None:
    sink = MemoryEventSink(broker)
    async with TracePublisher(settings, sink=sink) as publisher:
        session = publisher.session(session_id="s-8")
        sink.fail_next(KafkaUnavailable("broker gone", recoverable=True))
        with pytest.raises(PublishError, match=r"chunk 1 \(question\) of session s-8.*broker gone"):
            await session.question("q")


OBJECT_DELTA = SimpleNamespace(reasoning_content="o", content="p")  # like the openai client's models


@pytest.mark.parametrize(
    ("chunk", "expected"),
    [
        ({"choices": [{"delta": {"reasoning_content": "r", "content": None}}]}, ("r", "")),
        ({"choices": [{"delta": {"reasoning": "r2"}}]}, ("r2", "")),
        ({"choices": [{"delta": {"content": "c"}}]}, ("", "c")),
        ({"choices": []}, ("", "")),
        ({"usage": {}}, ("", "")),
        (SimpleNamespace(choices=[SimpleNamespace(delta=OBJECT_DELTA)]), ("o", "p")),
        ({"choices": [{"delta": {"content": 5}}]}, ("", "")),
    ],
)  # fmt: skip
def test_deltas(chunk: Any, expected: tuple[str, str]) -> None:
    assert deltas(chunk) == expected
