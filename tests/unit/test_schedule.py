"""Which sessions get re-scored when, and how a cross-session batch is filled."""

from __future__ import annotations

from dataclasses import replace

from monitor.core.policy import PolicyState
from monitor.core.schedule import is_cold, is_due, plan, score_before
from monitor.core.session import SessionState
from monitor.messages import Chunk
from monitor.settings import BatchingSettings, PolicySettings

BATCHING = BatchingSettings(stride_tokens=64, max_delay_s=0.25, max_batch=3, max_wait_s=0.02)
POLICY = PolicySettings()


def session(sid: str = "s", **kw: object) -> SessionState:
    base = SessionState(sid, has_question=True, part="thinking", tokens=10, unscored_since=0.0, next_seq=3)
    return replace(base, **kw)  # type: ignore[arg-type]


def test_not_due_below_stride_and_delay() -> None:
    assert not is_due(session(tokens=63), 0.1, BATCHING)


def test_due_on_stride() -> None:
    assert is_due(session(tokens=64), 0.0, BATCHING)
    assert not is_due(session(tokens=100, scored_tokens=40), 0.0, BATCHING)


def test_due_after_max_delay() -> None:
    assert is_due(session(), 0.25, BATCHING)


def test_due_on_thinking_to_answer_and_at_end() -> None:
    assert is_due(session(part="answer", scored_part="thinking"), 0.0, BATCHING)
    assert not is_due(session(part="answer", scored_part="answer"), 0.0, BATCHING)
    assert is_due(session(part="end", status="ended"), 0.0, BATCHING)


def test_never_due_when_aborted_scored_or_question_only() -> None:
    assert not is_due(session(status="aborted", tokens=999), 9.0, BATCHING)
    assert not is_due(session(unscored_since=None, tokens=999), 9.0, BATCHING)
    assert not is_due(session(part="question"), 9.0, BATCHING)
    assert not is_due(session(has_question=False), 9.0, BATCHING)


def test_batch_waits_up_to_max_wait_for_company() -> None:
    p = plan([session(tokens=64, unscored_since=1.0)], 1.005, BATCHING, POLICY)
    assert p.batch == () and p.waiting == 1 and 0 < p.wake_in_s <= 0.02
    p = plan([session(tokens=64, unscored_since=1.0)], 1.02, BATCHING, POLICY)
    assert p.batch == ("s",)


def test_full_batch_goes_at_once_closest_to_abort_first() -> None:
    states = [
        session(f"s{i}", tokens=64, unscored_since=1.0, policy=PolicyState(last_p=p, ema=p / 2))
        for i, p in enumerate([0.1, 0.7, 0.3, 0.75, 0.05])
    ]
    p = plan(states, 1.0, BATCHING, POLICY)
    assert p.batch == ("s3", "s1", "s2") and p.waiting == 2 and p.wake_in_s == 0.0


def test_starved_sessions_jump_the_queue() -> None:
    states = [
        session("hot", tokens=64, unscored_since=1.0, policy=PolicyState(last_p=0.79)),
        session("old", tokens=64, unscored_since=0.0),
    ]
    p = plan(states, 1.0, BATCHING.model_copy(update={"max_batch": 1}), POLICY)
    assert p.batch == ("old",)


def test_force_scores_everything_with_content() -> None:
    states = [session("a"), session("b", part="question"), session("c", unscored_since=None)]
    assert plan(states, 0.0, BATCHING, POLICY, force=True).batch == ("a",)


def test_wake_reflects_max_delay_and_gap_timeout() -> None:
    p = plan([session(unscored_since=1.0)], 1.1, BATCHING, POLICY)
    assert p.batch == () and abs(p.wake_in_s - 0.15) < 1e-9
    gap = session(unscored_since=None, pending=(), gap_since=1.0)
    assert plan([gap], 1.0, BATCHING, POLICY).wake_in_s == 1.0


def test_score_before_folding_at_the_stride_and_before_the_answer() -> None:
    def chunk(part: str, seq: int = 3) -> Chunk:
        return Chunk(session_id="s", seq=seq, part=part, text="x")  # type: ignore[arg-type]

    assert score_before(session(tokens=64), chunk("thinking"), BATCHING)
    assert not score_before(session(tokens=10), chunk("thinking"), BATCHING)
    assert score_before(session(tokens=10), chunk("answer"), BATCHING)
    assert not score_before(session(tokens=10, part="answer"), chunk("answer"), BATCHING)
    assert score_before(session(tokens=64), chunk("end"), BATCHING)
    assert not score_before(session(tokens=10, part="answer"), chunk("end"), BATCHING)
    assert not score_before(session(tokens=64), chunk("thinking", seq=5), BATCHING)  # out of order: buffered
    assert not score_before(session(tokens=64, unscored_since=None), chunk("answer"), BATCHING)


# Risk-adaptive: cold sessions at the long stride, warm ones at every chunk, cold ones degrade first.
ADAPTIVE = BatchingSettings(
    stride_tokens=64, max_delay_s=0.1, max_batch=2, max_wait_s=0.0, cold_stride_tokens=224,
    cold_max_delay_s=8.0, cold_below=0.2, warm_tokens=64,
)  # fmt: skip
COLD = PolicyState(scores=3, ema=0.02, last_p=0.01)
WARM = PolicyState(scores=3, ema=0.3, last_p=0.4)


def scored(
    sid: str, policy: PolicyState, tokens: int = 200, since: float = 0.0, **kw: object
) -> SessionState:
    """A session scored at `tokens` whose newest chunk (16 tokens) arrived at `since`."""
    base = session(sid, tokens=tokens + 16, scored_tokens=tokens, unscored_since=since, policy=policy)
    return replace(base, **kw)  # type: ignore[arg-type]


def test_cold_only_when_scored_low_and_past_the_first_tokens() -> None:
    assert is_cold(scored("c", COLD), ADAPTIVE)
    assert not is_cold(scored("w", WARM), ADAPTIVE)
    assert not is_cold(scored("c", COLD, tokens=32), ADAPTIVE)  # the thinking's first tokens
    assert not is_cold(scored("u", PolicyState()), ADAPTIVE)  # never scored
    assert not is_cold(scored("r", PolicyState(scores=3, ema=0.08, last_p=0.15)), ADAPTIVE)  # rising
    assert not is_cold(scored("c", COLD), ADAPTIVE.model_copy(update={"cold_stride_tokens": 0}))  # off


def test_warm_session_is_scored_at_every_chunk() -> None:
    # a live stream at 30 tokens/s: a 16-token chunk every 0.53 s, far past max_delay_s
    assert is_due(scored("w", WARM, since=1.0), 1.0 + ADAPTIVE.max_delay_s, ADAPTIVE)
    # and a backlog is scored before folding past the normal stride
    thinking = Chunk(session_id="w", seq=3, part="thinking", text="x")
    assert score_before(session("w", tokens=264, scored_tokens=200, policy=WARM), thinking, ADAPTIVE)


def test_cold_session_waits_for_its_long_stride_or_delay() -> None:
    assert not is_due(scored("c", COLD, since=1.0), 1.6, ADAPTIVE)
    assert not is_due(scored("c", COLD, since=1.0), 1.0 + 7.9, ADAPTIVE)
    assert is_due(scored("c", COLD, since=1.0), 1.0 + 8.0, ADAPTIVE)
    assert is_due(session("c", tokens=424, scored_tokens=200, policy=COLD), 0.0, ADAPTIVE)
    # a backlog is folded past the normal stride and scored at the cold one, as the live stream is
    thinking = Chunk(session_id="c", seq=3, part="thinking", text="x")
    assert not score_before(session("c", tokens=300, scored_tokens=200, policy=COLD), thinking, ADAPTIVE)
    assert score_before(session("c", tokens=424, scored_tokens=200, policy=COLD), thinking, ADAPTIVE)


def test_cold_session_is_scored_at_its_end_and_at_the_answer() -> None:
    assert is_due(scored("c", COLD, part="end", status="ended"), 0.0, ADAPTIVE)
    assert is_due(scored("c", COLD, part="answer", scored_part="thinking"), 0.0, ADAPTIVE)
    answer = Chunk(session_id="c", seq=3, part="answer", text="x")
    assert score_before(scored("c", COLD), answer, ADAPTIVE)


def test_cold_session_is_scored_at_every_chunk_once_it_warms_up() -> None:
    rising = PolicyState(scores=4, ema=0.12, last_p=0.18)  # still below cold_below, but rising
    assert not is_due(scored("c", COLD, since=1.0), 1.2, ADAPTIVE)
    assert is_due(scored("c", rising, since=1.0), 1.2, ADAPTIVE)
    near = PolicyState(scores=4, ema=0.25, last_p=0.21)
    assert is_due(scored("c", near, since=1.0), 1.2, ADAPTIVE)


def test_overload_degrades_cold_sessions_first() -> None:
    # four due, two fit: the warm ones go, though the cold ones waited longer than 2 * max_delay_s
    states = [
        scored("cold-old", COLD, tokens=400, since=0.0, scored_tokens=100),
        scored("warm-a", WARM, since=9.0),
        scored("cold-b", COLD, tokens=400, since=1.0, scored_tokens=100),
        scored("warm-b", replace(WARM, last_p=0.6), since=9.5),
    ]
    p = plan(states, 10.0, ADAPTIVE, POLICY)
    assert p.batch == ("warm-b", "warm-a") and p.waiting == 2


def test_a_cold_session_is_never_starved_forever() -> None:
    states = [
        scored("cold-old", COLD, tokens=400, since=0.0, scored_tokens=100),
        scored("warm-a", WARM, since=16.5),
        scored("warm-b", WARM, since=16.5),
    ]
    p = plan(states, 16.5, ADAPTIVE, POLICY)  # past 2 * cold_max_delay_s
    assert p.batch[0] == "cold-old"
