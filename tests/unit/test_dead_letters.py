"""Dead letters keep the Kafka key and headers of the record they came from, through the worker loop and
the in-memory twin of Kafka: bytes that never decoded, a version the worker does not speak, a key that
disagrees with the session, and a chunk the pipeline rejects after decoding."""

from __future__ import annotations

import asyncio
import base64
import time

import orjson
from fake_guard import MarkerGuard

from monitor.core.pipeline import Pipeline
from monitor.edges.kafka import MemoryBroker, MemoryChunkSource, MemoryEventSink, Record
from monitor.edges.store import MemorySessionStore
from monitor.messages import Chunk, DeadLetter, decode_dead_letter, encode
from monitor.settings import BatchingSettings, ImageSettings, PolicySettings, Settings
from monitor.worker import Worker

TRACE = (("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), ("source", b"kcat"))
CASES: list[tuple[str, bytes | None, bytes, tuple[tuple[str, bytes], ...]]] = [
    # (dead-letter reason, key, value, headers)
    ("undecodable", b"producer-key-7", b"\xff\xfe not json", TRACE),
    ("undecodable", None, b"[1, 2, 3]", ()),
    ("unknown_version", b"s-v2", orjson.dumps({"v": 2, "session_id": "s-v2", "seq": 1, "part": "end"}),
     TRACE),
    ("invalid_fields", b"someone-else", encode(Chunk(session_id="s-key", seq=1, part="question")), ()),
    ("no_question", b"s-nq", encode(Chunk(session_id="s-nq", seq=1, part="thinking", text="t")), TRACE[:1]),
]  # fmt: skip


def _settings() -> Settings:
    return Settings(
        batching=BatchingSettings(stride_tokens=8, max_batch=4, max_wait_s=0.0),
        policy=PolicySettings(min_tokens=8),
        images=ImageSettings(ocr=False),
    )


async def _run_until_dead_letters(settings: Settings, broker: MemoryBroker, count: int) -> list[Record]:
    source = MemoryChunkSource(broker, [settings.topics.chunks])
    stop = asyncio.Event()
    pipeline = Pipeline(settings, MemorySessionStore(settings), MarkerGuard(), autosave=False)
    worker = asyncio.create_task(Worker(settings, source, MemoryEventSink(broker), pipeline, stop).run())
    deadline = time.monotonic() + 30
    try:
        while len(broker.records(settings.topics.dead_letters)) < count:
            assert time.monotonic() < deadline, broker.records(settings.topics.dead_letters)
            assert not worker.done(), worker
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        assert await worker == 0
        await pipeline.close()
    return broker.records(settings.topics.dead_letters)


async def test_dead_letters_keep_the_key_and_headers_of_their_record() -> None:
    settings = _settings()
    broker = MemoryBroker(default_partitions=2)
    broker.create_topic(settings.topics.chunks)
    sent = [broker.append(settings.topics.chunks, key, value, headers) for _, key, value, headers in CASES]
    letters = await _run_until_dead_letters(settings, broker, len(CASES))

    by_origin: dict[tuple[int, int], tuple[Record, DeadLetter]] = {}
    for record in letters:
        letter = decode_dead_letter(record.value)
        assert isinstance(letter, DeadLetter), letter
        by_origin[(letter.partition, letter.offset)] = (record, letter)
    assert len(by_origin) == len(CASES)
    for (reason, key, value, headers), original in zip(CASES, sent, strict=True):
        record, letter = by_origin[(original.partition, original.offset)]
        assert letter.reason == reason and letter.error, letter
        assert base64.b64decode(letter.raw_b64) == value
        assert letter.topic == settings.topics.chunks
        assert record.key == key, (reason, record.key)
        assert record.headers == headers, (reason, record.headers)


async def test_a_keyless_record_that_names_its_session_is_dead_lettered_under_the_session() -> None:
    # no key to keep: the dead letter is keyed by the session it names, like every other topic
    settings = _settings()
    broker = MemoryBroker(default_partitions=1)
    raw = encode(Chunk(session_id="s-keyless", seq=1, part="answer", text="a"))
    broker.append(settings.topics.chunks, None, raw)
    (record,) = await _run_until_dead_letters(settings, broker, 1)
    letter = decode_dead_letter(record.value)
    assert isinstance(letter, DeadLetter) and letter.reason == "no_question"
    assert record.key == b"s-keyless" and record.headers == ()
