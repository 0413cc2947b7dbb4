"""The worker loop with in-memory edges: a scripted chunk source, a recording sink, the memory store."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest
from fake_guard import MarkerGuard

from monitor import worker as worker_module
from monitor.core.pipeline import Pipeline
from monitor.core.session import SessionState
from monitor.edges.kafka import Message, Record
from monitor.edges.store import MemorySessionStore, StoreUnavailable
from monitor.messages import (
    Chunk,
    Part,
    decode_abort,
    decode_audit,
    decode_dead_letter,
    decode_verdict,
    encode,
)
from monitor.settings import BatchingSettings, ImageSettings, PolicySettings, Settings
from monitor.worker import Worker

TOPIC = "qta.chunks"


@dataclass
class ScriptedSource:
    """Hands out its records in polls of a few, then asks the worker to stop once they are all out."""

    records: list[Record]
    done: asyncio.Event  # set to make the worker drain and stop
    per_poll: int = 3
    linger_s: float = 0.0  # keep polling (empty) this long before asking the worker to stop
    commits: list[dict[tuple[str, int], int]] = field(default_factory=list)
    paused: int = 0
    resumed: int = 0

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def poll(self, timeout_s: float, max_records: int) -> list[Record]:
        if not self.records:
            loop = asyncio.get_running_loop()
            self._empty_since = getattr(self, "_empty_since", None) or loop.time()
            if loop.time() - self._empty_since >= self.linger_s:
                self.done.set()
            await asyncio.sleep(min(timeout_s, 0.02))
            return []
        out, self.records = self.records[: self.per_poll], self.records[self.per_poll :]
        return out

    async def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        self.commits.append(dict(offsets))

    def pause(self) -> None:
        self.paused += 1

    def resume(self) -> None:
        self.resumed += 1

    def assignment(self) -> frozenset[tuple[str, int]]:
        return frozenset({(TOPIC, 0)})


@dataclass
class RecordingSink:
    sent: list[Message] = field(default_factory=list)

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, events: Sequence[Message]) -> None:
        self.sent.extend(events)

    def on(self, topic: str) -> list[bytes]:
        return [message[2] for message in self.sent if message[0] == topic]


class FlakyStore(MemorySessionStore):
    """Fails the first `failures` saves as if Redis were down."""

    def __init__(self, settings: Settings, failures: int) -> None:
        super().__init__(settings)
        self.failures = failures

    async def save(self, states: Sequence[SessionState]) -> frozenset[str]:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("redis save failed: ConnectionError", recoverable=True)
        return await super().save(states)


def make_settings(max_pending: int = 512) -> Settings:
    return Settings(
        batching=BatchingSettings(
            stride_tokens=8, max_batch=4, max_wait_s=0.0, max_pending_sessions=max_pending
        ),
        policy=PolicySettings(min_tokens=8),
        images=ImageSettings(ocr=False),
    )


def chunks(sid: str, thinking: list[str]) -> list[Chunk]:
    parts: list[tuple[Part, str]] = [("question", "How do I do this dangerous thing? ")]
    parts += [("thinking", t) for t in thinking] + [("answer", "Here you go. "), ("end", "")]
    return [Chunk(session_id=sid, seq=i, part=p, text=t) for i, (p, t) in enumerate(parts, 1)]


def records(items: list[Chunk | bytes]) -> list[Record]:
    out = []
    for offset, item in enumerate(items):
        key = item.session_id.encode() if isinstance(item, Chunk) else None
        value = encode(item) if isinstance(item, Chunk) else item
        out.append(Record(TOPIC, 0, offset, key, value, 0))
    return out


HARMFUL = chunks(
    "bad", ["I will explain it all in detail now. ", "First get the HARM parts together and then "]
)
SAFE = chunks("good", ["This is dangerous so I must refuse politely here. ", "I will offer a safer topic. "])


async def run_worker(
    settings: Settings,
    items: list[Chunk | bytes],
    store: MemorySessionStore | None = None,
    linger_s: float = 0.0,
) -> tuple[int, ScriptedSource, RecordingSink, MemorySessionStore]:
    stop = asyncio.Event()
    source, sink = ScriptedSource(records(items), stop, linger_s=linger_s), RecordingSink()
    store = store or MemorySessionStore(settings)
    pipeline = Pipeline(settings, store, MarkerGuard(), autosave=False)
    code = await Worker(settings, source, sink, pipeline, stop).run()  # type: ignore[arg-type]
    await pipeline.close()
    return code, source, sink, store


def interleave(a: list[Chunk], b: list[Chunk]) -> list[Chunk | bytes]:
    out: list[Chunk | bytes] = []
    for x, y in zip(a, b, strict=True):
        out += [x, y]
    return out


async def test_the_loop_publishes_verdicts_one_abort_dead_letters_and_commits_everything() -> None:
    items = [*interleave(HARMFUL, SAFE), b"\xff not json"]
    code, source, sink, _ = await run_worker(make_settings(), items)
    assert code == 0
    # one abort; chunks the stack streamed after it get the same abort again (same event id, same bytes)
    assert len(set(sink.on("qta.aborts"))) == 1
    aborts = [decode_abort(v) for v in sink.on("qta.aborts")][:1]
    assert len(aborts) == 1 and aborts[0].session_id == "bad" and aborts[0].part == "thinking"
    verdicts = [decode_verdict(v) for v in sink.on("qta.verdicts")]
    assert {v.session_id for v in verdicts} == {"bad", "good"}
    assert not any(v.session_id == "good" and v.status == "abort" for v in verdicts)
    (letter,) = [decode_dead_letter(v) for v in sink.on("qta.dead-letters")]
    assert letter.reason == "undecodable" and letter.offset == len(items) - 1
    assert source.commits[-1] == {(TOPIC, 0): len(items)}
    committed = [c[(TOPIC, 0)] for c in source.commits]
    assert committed == sorted(committed)  # offsets only move forward
    await asyncio.sleep(0.05)
    audits = [decode_audit(v) for v in sink.on("qta.audits")]
    assert [a.abort_event_id for a in audits] == [aborts[0].event_id]


async def test_redis_down_is_retried_and_nothing_is_committed_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker_module, "BACKOFF_START_S", 0.001)
    settings = make_settings()
    store = FlakyStore(settings, failures=3)
    code, source, _, _ = await run_worker(settings, list(SAFE), store)
    assert code == 0 and store.failures == 0
    assert source.commits and source.commits[-1] == {(TOPIC, 0): len(SAFE)}
    assert "good" in store.meta


async def test_a_replay_into_the_same_store_publishes_no_second_abort() -> None:
    settings = make_settings()
    store = MemorySessionStore(settings)
    _, _, first, _ = await run_worker(settings, list(HARMFUL), store)
    _, _, second, _ = await run_worker(settings, list(HARMFUL), store)
    assert len(set(first.on("qta.aborts"))) == 1  # the abort, maybe repeated byte for byte
    assert second.on("qta.aborts") == [] and second.on("qta.verdicts") == []


async def test_backpressure_pauses_and_resumes() -> None:
    many = [chunks(f"s{i}", ["ok "]) for i in range(4)]  # below the stride: they wait for max_delay
    items: list[Chunk | bytes] = [c[i] for i in range(2) for c in many]  # questions, then a little thinking
    _, source, _, _ = await run_worker(make_settings(max_pending=1), items, linger_s=0.6)
    assert source.paused >= 1 and source.resumed >= 1
