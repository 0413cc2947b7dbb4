"""Wire messages: round trips, decoding that never raises, deterministic event ids, bounded dead letters."""

from __future__ import annotations

import base64

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.messages import (
    MAX_DEAD_LETTER_RAW,
    Abort,
    Audit,
    Chunk,
    DeadLetter,
    DecodeError,
    ImageRef,
    Verdict,
    dead_letter,
    decode_abort,
    decode_audit,
    decode_chunk,
    decode_dead_letter,
    decode_verdict,
    encode,
    event_id,
)

SAMPLES = [
    (
        Chunk(
            session_id="s-1",
            seq=1,
            part="question",
            text="How do I bake bread?",
            images=(ImageRef(data=base64.b64encode(b"\x89PNG").decode()), ImageRef(uri="file:///tmp/a.png")),
            model="qwen3-8b",
            tenant="acme",
        ),
        decode_chunk,
    ),
    (Chunk(session_id="s-1", seq=7, part="end"), decode_chunk),
    (
        Verdict(
            event_id=event_id("verdict", "s-1", 3),
            session_id="s-1",
            seq=3,
            part="thinking",
            tokens=120,
            tokens_read=64,
            p_safe=0.1,
            p_potential=0.2,
            p_harmful=0.7,
            label=0.5,
            category="weapons",
            guard="minilm",
            ema=0.4,
            status="warn",
            chunk_ts=1.5,
        ),
        decode_verdict,
    ),
    (
        Abort(
            event_id=event_id("abort", "s-1", 9),
            session_id="s-1",
            seq=9,
            part="answer",
            label=1,
            score=0.93,
            rule="answer_threshold",
            guard="minilm",
            explanation="gives synthesis steps",
            chunk_ts=2.0,
        ),
        decode_abort,
    ),
    (
        Audit(event_id="audit-1", abort_event_id="abort-1", session_id="s-1", guard="judge", analysis="..."),
        decode_audit,
    ),
    (
        dead_letter(DecodeError("undecodable", "not JSON"), b"\xff", topic="c", partition=0, offset=4),
        decode_dead_letter,
    ),
]


@pytest.mark.parametrize(("message", "decode"), SAMPLES, ids=lambda x: type(x).__name__)
def test_round_trip(message: object, decode: object) -> None:
    assert callable(decode)
    assert decode(encode(message)) == message  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "undecodable"),
        (b"[1, 2]", "undecodable"),
        (b'{"v": 2, "session_id": "s", "seq": 1, "part": "end"}', "unknown_version"),
        (b'{"v": "1", "session_id": "s", "seq": 1, "part": "end"}', "unknown_version"),
        (b'{"v": 1, "session_id": "s", "seq": 0, "part": "end"}', "bad_seq"),
        (b'{"v": 1, "session_id": "s", "seq": 123456789012345678901234567890, "part": "end"}', "bad_seq"),
        (b'{"v": 1, "session_id": "s", "seq": 1, "part": "summary"}', "invalid_fields"),
        (b'{"v": 1, "session_id": "", "seq": 1, "part": "end"}', "invalid_fields"),
        (b'{"v": 1, "session_id": "s", "seq": 1, "part": "end", "extra": 1}', "invalid_fields"),
        (b'{"v": 1, "session_id": "s", "seq": 1, "part": "question", "images": [{"data": "", "uri": "x"}]}',
         "invalid_fields"),
    ],
)  # fmt: skip
def test_bad_chunks_are_error_values(raw: bytes, reason: str) -> None:
    result = decode_chunk(raw)
    assert isinstance(result, DecodeError)
    assert result.reason == reason


def test_a_chunk_without_v_is_version_1() -> None:
    # the published schema gives `v` a default of 1, so a producer that follows it may leave `v` out
    result = decode_chunk(b'{"session_id": "s", "seq": 1, "part": "end"}')
    assert isinstance(result, Chunk) and result.v == 1


def test_decode_error_keeps_session_id_when_readable() -> None:
    result = decode_chunk(b'{"v": 1, "session_id": "s-9", "seq": -3, "part": "end"}')
    assert isinstance(result, DecodeError)
    assert result.session_id == "s-9"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    assert isinstance(decode_chunk(raw), Chunk | DecodeError)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
image_keys = st.sampled_from(["data", "uri", "mime"])
chunkish = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 1, 2, "1", None]),
        "session_id": st.one_of(st.text(max_size=300), json_values),
        "seq": st.one_of(st.integers(-(2**63), 2**63 - 1), json_values),
        "part": st.one_of(st.sampled_from(["question", "thinking", "answer", "end", "x"]), json_values),
        "text": st.one_of(st.text(), json_values),
        "images": st.one_of(st.lists(st.dictionaries(image_keys, json_values)), json_values),
        "ts": json_values,
        "model": json_values,
    },
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, chunkish))
def test_arbitrary_json_never_raises(value: object) -> None:
    result = decode_chunk(orjson.dumps(value))
    assert isinstance(result, Chunk | DecodeError)
    if isinstance(result, Chunk):
        assert result.seq >= 1 and result.session_id


@given(st.text(min_size=1, max_size=40), st.integers(min_value=1, max_value=10**6))
def test_chunks_round_trip(session_id: str, seq: int) -> None:
    chunk = Chunk(session_id=session_id, seq=seq, part="thinking", text=session_id * 2)
    assert decode_chunk(encode(chunk)) == chunk


def test_event_id_is_deterministic_and_distinct() -> None:
    assert event_id("abort", "s", 3) == event_id("abort", "s", 3)
    assert len({event_id("abort", "s", 3), event_id("abort", "s", 4), event_id("verdict", "s", 3)}) == 3


def test_dead_letter_bounds_raw_bytes() -> None:
    raw = b"x" * (MAX_DEAD_LETTER_RAW + 10)
    letter = dead_letter(DecodeError("oversized", "too big", "s"), raw, topic="t", partition=2, offset=9)
    assert isinstance(letter, DeadLetter)
    assert letter.raw_truncated
    assert base64.b64decode(letter.raw_b64) == raw[:MAX_DEAD_LETTER_RAW]
    assert (letter.topic, letter.partition, letter.offset, letter.session_id) == ("t", 2, 9, "s")
