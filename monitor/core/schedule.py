"""Which sessions to re-score now, and in which cross-session micro-batch. Pure: states and a time in, a
`Plan` out.

A session is due when it has unscored response content and one of these holds: it ended; it moved from
thinking to answer since its last score; its stride of new tokens arrived; or its oldest unscored chunk
has waited its max delay. All chunks of a session folded since its last score coalesce into one scoring,
except that a backlog is never folded past a point where a live stream would have been scored
(`score_before`, with the same per-session stride).

Risk-adaptive: most traffic is benign and far from any threshold. A *cold* session (scored at least once,
past its first `warm_tokens` response tokens, last p and EMA below `cold_below`, and not rising) waits for
`cold_stride_tokens` new tokens or `cold_max_delay_s`; with the guard's 256-token window a stride of 224
reads each trace token about once. Every other session is *warm* and keeps `stride_tokens` /
`max_delay_s`, which in a live stream means a score at every chunk. One warm score of a cold session
(its p rose) makes it warm from its next chunk on. `cold_stride_tokens` 0 makes every session warm.

Due sessions form one batch of at most `max_batch`. The batch goes out when it is full or when its oldest
chunk has waited `max_wait_s` (measured from the chunk's arrival, so a session that became due late goes
at once). When more are due than fit, warm sessions go first and cold ones degrade first: warm sessions
starved past twice `max_delay_s` (and cold ones starved past twice `cold_max_delay_s`, so none waits
forever), then the other warm ones, then cold ones; within each, those closest to the abort threshold,
then the oldest."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from monitor.core.policy import urgency
from monitor.core.session import SessionState, needs_score
from monitor.messages import Chunk
from monitor.settings import BatchingSettings, PolicySettings

IDLE_WAKE_S = 1.0  # longest the caller may sleep when nothing is pending at all


@dataclass(frozen=True, slots=True)
class Plan:
    batch: tuple[str, ...]  # session ids to score now, most urgent first
    waiting: int  # due sessions left for a later batch
    wake_in_s: float  # how long the caller may wait for input before planning again


def is_cold(state: SessionState, batching: BatchingSettings) -> bool:
    """Far from any threshold: re-scored at the long stride. Unscored sessions and first tokens are warm."""
    p = state.policy
    return (
        batching.cold_stride_tokens > 0
        and p.scores > 0
        and state.tokens >= batching.warm_tokens
        and max(p.last_p, p.ema) < batching.cold_below
        and not (p.last_p > p.ema and p.last_p >= batching.cold_below / 2)  # rising toward the band
    )


def stride_tokens(state: SessionState, batching: BatchingSettings) -> int:
    return batching.cold_stride_tokens if is_cold(state, batching) else batching.stride_tokens


def max_delay_s(state: SessionState, batching: BatchingSettings) -> float:
    return batching.cold_max_delay_s if is_cold(state, batching) else batching.max_delay_s


def is_due(state: SessionState, now: float, batching: BatchingSettings) -> bool:
    if not needs_score(state):
        return False
    assert state.unscored_since is not None
    return (
        state.status == "ended"
        or (state.part in ("answer", "end") and state.scored_part in ("question", "thinking"))
        or state.tokens - state.scored_tokens >= stride_tokens(state, batching)
        or now - state.unscored_since >= max_delay_s(state, batching)
    )


def _order(
    state: SessionState, now: float, batching: BatchingSettings, policy: PolicySettings
) -> tuple[int, float, float]:
    since = state.unscored_since if state.unscored_since is not None else now
    cold = is_cold(state, batching)
    starved = now - since >= 2 * max_delay_s(state, batching)
    rank = 0 if starved else 2 if cold else 1  # a starved cold session waited 2 * cold_max_delay_s
    return (rank, urgency(policy, state.policy), since)


def plan(
    states: Iterable[SessionState],
    now: float,
    batching: BatchingSettings,
    policy: PolicySettings,
    force: bool = False,
) -> Plan:
    """`force` (drain, end of a replay) scores every session with unscored response content now."""
    due: list[SessionState] = []
    wake = IDLE_WAKE_S
    for state in states:
        if state.pending and state.gap_since is not None:
            wake = min(wake, state.gap_since + batching.gap_timeout_s - now)
        if (force and needs_score(state)) or is_due(state, now, batching):
            due.append(state)
        elif needs_score(state):
            assert state.unscored_since is not None
            wake = min(wake, state.unscored_since + max_delay_s(state, batching) - now)
    if not due:
        return Plan((), 0, max(wake, 0.0))
    oldest = min(s.unscored_since if s.unscored_since is not None else now for s in due)
    if not force and len(due) < batching.max_batch and now - oldest < batching.max_wait_s:
        return Plan((), len(due), max(min(wake, oldest + batching.max_wait_s - now), 0.0))
    due.sort(key=lambda s: _order(s, now, batching, policy))
    batch = tuple(s.session_id for s in due[: batching.max_batch])
    return Plan(batch, len(due) - len(batch), 0.0 if len(due) > len(batch) else max(wake, 0.0))


def score_before(state: SessionState, chunk: Chunk, batching: BatchingSettings) -> bool:
    """Must `state` be scored before `chunk` is folded into it? True at the points a live stream would
    have been scored anyway (the stride is reached, or the answer is about to start after unscored
    thinking), so a backlog read in one poll gets the same verdicts as chunks that trickled in, and a
    harmful thinking is judged before its answer is even folded."""
    if chunk.seq != state.next_seq or not needs_score(state):
        return False
    if state.tokens - state.scored_tokens >= stride_tokens(state, batching):
        return True
    return chunk.part == "answer" and state.part == "thinking"
