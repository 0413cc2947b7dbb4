"""Folding chunks into session state: order, duplicates, reorder buffer, gaps, end, abort, token limit."""

from __future__ import annotations

from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.core.session import (
    Folded,
    FoldLimits,
    SessionState,
    estimate_tokens,
    expire,
    fold,
    mark_aborted,
    revive,
)
from monitor.messages import Chunk, Part

LIMITS = FoldLimits(reorder_window=8, gap_timeout_s=5.0, max_chars=4000)


def make_chunks(parts: Iterable[tuple[Part, str]], sid: str = "s1") -> list[Chunk]:
    return [Chunk(session_id=sid, seq=i, part=p, text=t, ts=100.0 + i) for i, (p, t) in enumerate(parts, 1)]


def trace(n_thinking: int = 5, n_answer: int = 2) -> list[Chunk]:
    parts: list[tuple[Part, str]] = [("question", "How do I bake bread? ")]
    parts += [("thinking", f"step {i} of thinking. ") for i in range(n_thinking)]
    parts += [("answer", f"answer part {i}. ") for i in range(n_answer)]
    parts.append(("end", ""))
    return make_chunks(parts)


def fold_all(
    chunks: Iterable[Chunk], limits: FoldLimits = LIMITS, now: float = 0.0
) -> tuple[SessionState, list[Folded]]:
    state = SessionState("s1")
    steps = []
    for chunk in chunks:
        step = fold(state, chunk, now, limits)
        state = step.state
        steps.append(step)
    return state, steps


def content(state: SessionState) -> tuple[object, ...]:
    return (
        state.question,
        state.thinking,
        state.answer,
        state.next_seq,
        state.status,
        state.tokens,
        state.pending,
    )


def test_in_order_fold_builds_the_prefix_and_end_closes() -> None:
    state, steps = fold_all(trace(2, 1))
    assert state.question == "How do I bake bread? "
    assert state.thinking == "step 0 of thinking. step 1 of thinking. "
    assert state.answer == "answer part 0. "
    assert state.status == "ended" and state.part == "end" and state.next_seq == 6
    assert not any(s.rejected for s in steps)
    assert state.tokens == sum(estimate_tokens(c.text) for c in trace(2, 1)[1:])


@st.composite
def windowed_permutation(draw: st.DrawFn) -> list[int]:
    """A permutation of 0..n-1 in which no item moves more than the reorder window allows."""
    n = draw(st.integers(min_value=2, max_value=12))
    keys = [i + draw(st.floats(min_value=0, max_value=LIMITS.reorder_window)) for i in range(n)]
    return sorted(range(n), key=lambda i: keys[i])


@settings(max_examples=150, deadline=None)
@given(order=windowed_permutation(), dupes=st.lists(st.integers(min_value=0, max_value=11), max_size=6))
def test_any_permutation_within_the_window_folds_to_the_same_state(
    order: list[int], dupes: list[int]
) -> None:
    chunks = trace(n_thinking=len(order) - 3 if len(order) > 3 else 0, n_answer=1)[: len(order)]
    expected, _ = fold_all(chunks)
    shuffled = [chunks[i] for i in order]
    for d in dupes:  # duplicates anywhere in the stream are ignored
        shuffled.insert(min(d, len(shuffled)), chunks[d % len(chunks)])
    state, steps = fold_all(shuffled)
    assert content(state) == content(expected)
    assert not any(s.rejected for s in steps)
    assert not state.degraded


def test_duplicate_is_ignored_and_does_not_change_state() -> None:
    chunks = trace(2, 0)
    state, _ = fold_all(chunks[:3])
    again = fold(state, chunks[1], 1.0, LIMITS)
    assert again.ignored == "duplicate" and again.state is state


def test_gap_that_never_fills_is_dead_lettered_after_the_timeout_and_degrades() -> None:
    chunks = trace(4, 0)
    state, _ = fold_all([chunks[0], chunks[1], chunks[3], chunks[4]], now=10.0)
    assert state.next_seq == 3 and len(state.pending) == 2
    assert expire(state, 14.9, LIMITS).rejected == ()
    gone = expire(state, 15.0, LIMITS)
    assert [r.reason for r in gone.rejected] == ["gap"]
    assert "seq 3" in gone.rejected[0].error
    assert gone.state.degraded and gone.state.next_seq == 6 and not gone.state.pending
    assert "step 3" in gone.state.thinking and "step 1" not in gone.state.thinking


def test_buffer_overflow_skips_the_gap_at_once() -> None:
    limits = FoldLimits(reorder_window=2, gap_timeout_s=60.0, max_chars=4000)
    chunks = trace(6, 0)
    state, steps = fold_all([chunks[0], *chunks[2:5]], limits)
    assert [r.reason for s in steps for r in s.rejected] == ["gap"]
    assert state.degraded and state.next_seq == 6


def test_chunks_without_a_question_are_rejected() -> None:
    chunks = make_chunks([("thinking", "hmm"), ("answer", "ok")], sid="s1")
    state, steps = fold_all(chunks)
    assert [r.reason for s in steps for r in s.rejected] == ["no_question", "no_question"]
    assert state.thinking == "" and state.next_seq == 3


def test_aborted_session_counts_later_chunks_without_folding_them() -> None:
    chunks = trace(3, 1)
    state, _ = fold_all(chunks[:3])
    state = mark_aborted(state, "abort-x")
    for chunk in chunks[3:]:
        step = fold(state, chunk, 0.0, LIMITS)
        assert step.ignored == "late"
        state = step.state
    assert state.status == "aborted" and state.late_chunks == 3 and "step 2" not in state.thinking


def test_chunks_after_end_are_late() -> None:
    chunks = trace(1, 0)
    state, _ = fold_all(chunks)
    late = Chunk(session_id="s1", seq=len(chunks) + 1, part="answer", text="more")
    step = fold(state, late, 0.0, LIMITS)
    assert step.ignored == "late" and step.state.answer == "" and step.state.late_chunks == 1


def test_token_limit_keeps_the_tail_and_says_so() -> None:
    limits = FoldLimits(reorder_window=4, gap_timeout_s=5.0, max_chars=40)
    parts: list[tuple[Part, str]] = [
        ("question", "q? "),
        *[("thinking", f"chunk {i:02d} ") for i in range(10)],
    ]
    state, _ = fold_all(make_chunks(parts), limits)
    assert state.truncated
    assert len(state.thinking) == 40 and state.thinking.endswith("chunk 09 ")
    assert state.unsaved.thinking == state.thinking
    assert state.chars == sum(len(f"chunk {i:02d} ") for i in range(10))


def test_revive_restarts_the_clocks_of_loaded_state() -> None:
    state, _ = fold_all(trace(2, 0)[:3], now=1.0)
    assert state.unscored_since == 1.0
    revived = revive(state, 50.0)
    assert revived.unscored_since == 50.0


def test_estimate_tokens_is_words_or_chars_over_four() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("a b c d e") == 5
    assert estimate_tokens("x" * 40) == 10


# -- a session id seen again (README "Session ids") ------------------------------------------------------


def test_a_restart_from_seq_1_with_other_content_is_a_new_epoch() -> None:
    first, _ = fold_all(trace(2, 1))
    retried = [c.model_copy(update={"ts": c.ts + 60.0}) for c in trace(3, 1)]  # a retried request: new ts
    step = fold(first, retried[0], 0.0, LIMITS)
    assert step.restarted and step.ignored is None
    state = step.state
    assert state.epoch == 1 and state.status == "open" and state.thinking == "" and state.next_seq == 2
    assert state.unsaved.reset and state.stored_seq == first.stored_seq  # the store rewrites, seq-checked
    for chunk in retried[1:]:
        step = fold(state, chunk, 0.0, LIMITS)
        assert not step.rejected and step.ignored is None
        state = step.state
    assert state.status == "ended" and "step 2 of thinking" in state.thinking and state.epoch == 1


def test_a_redelivered_seq_1_is_still_a_duplicate() -> None:
    chunks = trace(2, 1)
    state, _ = fold_all(chunks)
    again = Chunk.model_validate_json(chunks[0].model_dump_json())  # the same bytes, read again
    step = fold(state, again, 0.0, LIMITS)
    assert step.ignored == "duplicate" and not step.restarted and step.state == state


def test_a_redelivery_without_ts_matches_although_decoding_fills_ts_in() -> None:
    raw = b'{"session_id": "s1", "seq": 1, "part": "question", "text": "hi "}'
    state = fold(SessionState("s1"), Chunk.model_validate_json(raw), 0.0, LIMITS).state
    state = fold(state, Chunk(session_id="s1", seq=2, part="thinking", text="x"), 0.0, LIMITS).state
    step = fold(state, Chunk.model_validate_json(raw), 0.0, LIMITS)
    assert step.ignored == "duplicate" and not step.rejected


def test_the_same_seq_1_at_another_offset_is_a_dead_letter_not_silence() -> None:
    chunks = trace(1, 0)
    state = SessionState("s1")
    for offset, chunk in enumerate(chunks, 10):
        state = fold(state, chunk, 0.0, LIMITS, offset).state
    assert fold(state, chunks[0], 0.0, LIMITS, 10).ignored == "duplicate"  # the same record again
    step = fold(state, chunks[0], 0.0, LIMITS, 99)  # the same content, produced again
    assert [r.reason for r in step.rejected] == ["session_reused"] and "offset 99" in step.rejected[0].error
    assert step.state.epoch == 0


def test_an_aborted_session_stays_aborted_and_asks_for_its_abort_again() -> None:
    chunks = trace(3, 1)
    state, _ = fold_all(chunks[:3])
    state = mark_aborted(state, "abort-x", '{"event_id": "abort-x"}')
    late = fold(state, chunks[3], 0.0, LIMITS)
    assert late.reabort and late.ignored == "late" and not late.rejected
    retried = [c.model_copy(update={"ts": c.ts + 60.0}) for c in trace(3, 1)]
    again = fold(late.state, retried[0], 0.0, LIMITS)
    assert again.reabort and not again.restarted and again.state.status == "aborted"
    assert again.state.epoch == 0 and again.state.abort_record == '{"event_id": "abort-x"}'


def test_a_chunk_after_end_is_a_dead_letter() -> None:
    chunks = trace(1, 0)
    state, _ = fold_all(chunks)
    late = Chunk(session_id="s1", seq=len(chunks) + 1, part="answer", text="more")
    step = fold(state, late, 0.0, LIMITS)
    assert [r.reason for r in step.rejected] == ["after_end"] and step.ignored == "late"
    assert not step.reabort
