"""`SessionState` and folding chunks into it: order by seq, duplicates, out-of-order buffer, gaps, `end`,
aborted sessions and the token limit. Pure: time comes in as an argument, nothing here does I/O.

Token estimate: `estimate_tokens` is a cheap heuristic, max(whitespace-separated words, ceil(chars / 4)),
good to about 20 % on English BPE tokenizers and never below one token per word. It drives strides and
limits only; guards report the tokens they actually read.

A session id names one generation. Seeing it again is never silent (README, "Session ids"): a chunk with
seq 1 whose content differs from the seq 1 already folded (a retried request keeps its id; the SDK stamps a
fresh `ts`) starts a new *epoch* of the session, scored from scratch, whose events carry the epoch; the same
content at another Kafka offset cannot be told from a producer's duplicate and is dead-lettered
`session_reused`. An aborted session stays aborted: every later chunk asks for its abort again
(`Folded.reabort`). A chunk after `end` is dead-lettered `after_end`.

The token limit keeps each part's tail: a part longer than `guard.max_tokens * CHARS_PER_TOKEN` characters
drops its head and the session is marked `truncated`, which its verdicts repeat."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Literal

import orjson

from monitor.core.policy import PolicyState
from monitor.messages import Chunk, DeadLetterReason, ImageRef, Part
from monitor.settings import Settings

CHARS_PER_TOKEN = 4
Status = Literal["open", "ended", "aborted"]


def fingerprint(chunk: Chunk) -> str:
    """What tells a restarted session from a redelivered chunk: the chunk's fields as they came (a field
    left to its default, such as a missing `ts`, does not count, so a redelivery always matches)."""
    fields = chunk.model_dump(mode="json", exclude_defaults=True, exclude={"v", "ts"})
    if "ts" in chunk.model_fields_set:
        fields["ts"] = chunk.ts
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def estimate_tokens(text: str) -> int:
    if not text:
        return 0
    return max(len(text.split()), -(-len(text) // CHARS_PER_TOKEN))


@dataclass(frozen=True, slots=True)
class ScorePoint:
    """One entry of a session's recent score history (kept capped in the store)."""

    seq: int
    p_harmful: float
    label: float
    guard: str


@dataclass(frozen=True, slots=True)
class Unsaved:
    """What was folded since the last save: the store appends exactly this, checked against `stored_seq`."""

    question: str = ""
    thinking: str = ""
    answer: str = ""
    images: tuple[ImageRef, ...] = ()
    scores: tuple[ScorePoint, ...] = ()
    reset: bool = False  # a new epoch began: the store rewrites the session instead of appending


@dataclass(frozen=True, slots=True)
class SessionState:
    session_id: str
    next_seq: int = 1  # the seq folded next; everything below it is folded (or was dead-lettered)
    stored_seq: int = 1  # next_seq as of the last save
    status: Status = "open"
    part: Part = "question"  # part of the newest folded chunk
    has_question: bool = False
    question: str = ""
    thinking: str = ""
    answer: str = ""
    images: tuple[ImageRef, ...] = ()
    image_text: str = ""  # OCR text of images[:ocr_images]
    ocr_images: int = 0
    model: str | None = None
    tenant: str | None = None
    question_tokens: int = 0
    tokens: int = 0  # response (thinking + answer) tokens, estimated, including any dropped head
    chars: int = 0  # response characters ever folded, including any dropped head
    truncated: bool = False
    degraded: bool = False  # a gap in seq never filled
    late_chunks: int = 0  # chunks that arrived after `end` or the abort: counted, not folded
    chunk_ts: float = 0.0  # producer timestamp of the newest folded chunk
    pending: tuple[Chunk, ...] = ()  # out-of-order chunks waiting for the gap before them, by seq
    gap_since: float | None = None  # clock time the current gap was first seen
    unscored_since: float | None = None  # clock time of the oldest folded chunk not yet scored
    scored_seq: int = 0
    scored_tokens: int = 0
    scored_chars: int = 0
    scored_part: Part = "question"
    policy: PolicyState = field(default_factory=PolicyState)
    abort_event_id: str | None = None
    abort_record: str | None = None  # the published abort (JSON), published again for any later chunk
    steer_event_id: str | None = None  # a steered session goes on being monitored; a second firing aborts
    steer_tokens: int = 0  # `tokens` when it was steered: min_tokens counts again from there
    epoch: int = 0  # restarts of this session id so far (seq 1 again with other content)
    origin: str = ""  # fingerprint of this epoch's seq 1
    origin_offset: int = -1  # Kafka offset of this epoch's seq 1 (-1: unknown)
    request_id: str | None = None
    unsaved: Unsaved = field(default_factory=Unsaved)

    @property
    def folded_seq(self) -> int:
        return self.next_seq - 1

    @property
    def total_tokens(self) -> int:
        return self.question_tokens + self.tokens


@dataclass(frozen=True, slots=True)
class FoldLimits:
    reorder_window: int
    gap_timeout_s: float
    max_chars: int

    @staticmethod
    def from_settings(settings: Settings) -> FoldLimits:
        return FoldLimits(
            reorder_window=settings.batching.reorder_window,
            gap_timeout_s=settings.batching.gap_timeout_s,
            max_chars=settings.guard.max_tokens * CHARS_PER_TOKEN,
        )


@dataclass(frozen=True, slots=True)
class Rejected:
    """A chunk (or a run of missing seqs) that becomes a dead letter."""

    reason: DeadLetterReason
    error: str
    chunk: Chunk | None = None  # None for a gap: nothing arrived


@dataclass(frozen=True, slots=True)
class Folded:
    state: SessionState
    rejected: tuple[Rejected, ...] = ()
    ignored: Literal["duplicate", "late"] | None = None
    reabort: bool = False  # the session is aborted and a chunk came anyway: publish its abort again
    restarted: bool = False  # this chunk began a new epoch (forget what guards hold for the old one)


def _tail(text: str, limit: int) -> str:
    return text[-limit:] if len(text) > limit else text


def _apply(state: SessionState, chunk: Chunk, now: float, limits: FoldLimits, offset: int = -1) -> Folded:
    """Fold the chunk whose seq is next."""
    state = replace(state, next_seq=chunk.seq + 1)
    if chunk.seq == 1:
        state = replace(state, origin=fingerprint(chunk), origin_offset=offset)
    if chunk.part != "question" and not state.has_question:
        error = f"{chunk.part} chunk seq {chunk.seq} for a session that never sent a question"
        return Folded(state, (Rejected("no_question", error, chunk),))
    u = state.unsaved
    cap = limits.max_chars
    changes: dict[str, object] = {
        "part": chunk.part,
        "chunk_ts": chunk.ts,
        "model": chunk.model or state.model,
        "tenant": chunk.tenant or state.tenant,
        "request_id": chunk.request_id or state.request_id,
    }
    if chunk.images:
        changes["images"] = state.images + chunk.images
        u = replace(u, images=u.images + chunk.images)
    text = chunk.text
    if chunk.part == "question":
        changes["has_question"] = True
        changes["question"] = _tail(state.question + text, cap)
        changes["question_tokens"] = state.question_tokens + estimate_tokens(text)
        u = replace(u, question=_tail(u.question + text, cap))
        grew = len(state.question) + len(text) > cap
    else:
        changes["unscored_since"] = now if state.unscored_since is None else state.unscored_since
        changes["tokens"] = state.tokens + estimate_tokens(text)
        changes["chars"] = state.chars + len(text)
        grew = False
        if chunk.part == "thinking":
            changes["thinking"] = _tail(state.thinking + text, cap)
            u = replace(u, thinking=_tail(u.thinking + text, cap))
            grew = len(state.thinking) + len(text) > cap
        elif chunk.part == "answer":
            changes["answer"] = _tail(state.answer + text, cap)
            u = replace(u, answer=_tail(u.answer + text, cap))
            grew = len(state.answer) + len(text) > cap
        else:
            changes["status"] = "ended"
    changes["truncated"] = state.truncated or grew
    return Folded(replace(state, unsaved=u, **changes))  # type: ignore[arg-type]


def _drain(folded: Folded, now: float, limits: FoldLimits) -> Folded:
    """Fold buffered chunks that have become next in line."""
    state, rejected = folded.state, list(folded.rejected)
    while state.pending and state.pending[0].seq == state.next_seq and state.status == "open":
        head, rest = state.pending[0], state.pending[1:]
        step = _apply(replace(state, pending=rest), head, now, limits)
        state, rejected = step.state, [*rejected, *step.rejected]
    if state.status != "open" and state.pending:
        # chunks after `end` count as late; an ended session keeps no buffer
        late = len(state.pending)
        last = state.pending[-1].seq
        if state.status == "ended":
            rejected += [_after_end(state, c) for c in state.pending]
        state = replace(state, pending=(), late_chunks=state.late_chunks + late, next_seq=last + 1)
    gap_since = None if not state.pending else (state.gap_since if state.gap_since is not None else now)
    return Folded(replace(state, gap_since=gap_since), tuple(rejected), folded.ignored)


def _skip_gap(state: SessionState, now: float, limits: FoldLimits, why: str) -> Folded:
    first = state.pending[0].seq
    missing = f"seq {state.next_seq}" if first - state.next_seq == 1 else f"seq {state.next_seq}..{first - 1}"
    gap = Rejected("gap", f"{missing} of session {state.session_id} never arrived ({why}); skipped")
    state = replace(state, next_seq=first, degraded=True, gap_since=None)
    drained = _drain(Folded(state), now, limits)
    return Folded(drained.state, (gap, *drained.rejected))


def _after_end(state: SessionState, chunk: Chunk) -> Rejected:
    error = (
        f"seq {chunk.seq} of session {state.session_id} came after its end (seq {state.folded_seq}); not "
        "scored: a new generation needs a new session id"
    )
    return Rejected("after_end", error, chunk)


def _reused(state: SessionState, chunk: Chunk, now: float, limits: FoldLimits, offset: int) -> Folded:
    """Seq 1 again for a session that has one: a new epoch, unless it cannot be told from a duplicate."""
    counted = replace(state, late_chunks=state.late_chunks + 1)
    if fingerprint(chunk) == state.origin:
        error = (
            f"seq 1 of session {state.session_id} arrived again at offset {offset} (first at "
            f"{state.origin_offset}) with the same content; not scored: a new generation needs a new "
            "session id (or a fresh `ts`)"
        )
        return Folded(counted, (Rejected("session_reused", error, chunk),), ignored="duplicate")
    fresh = SessionState(
        state.session_id, stored_seq=state.stored_seq, epoch=state.epoch + 1, unsaved=Unsaved(reset=True)
    )
    step = _drain(_apply(fresh, chunk, now, limits, offset), now, limits)
    return replace(step, restarted=True)


def fold(state: SessionState, chunk: Chunk, now: float, limits: FoldLimits, offset: int = -1) -> Folded:
    """Fold one chunk of this session. Never raises on data; what cannot be used comes back in `rejected`.
    `offset` is the chunk's Kafka offset where known (-1 otherwise)."""
    restart = False
    if chunk.seq == 1 and state.origin and state.next_seq > 1:
        again = fingerprint(chunk) != state.origin
        elsewhere = offset >= 0 and state.origin_offset >= 0 and offset != state.origin_offset
        restart = again or elsewhere
    if state.status == "aborted" and (restart or chunk.seq >= state.next_seq):
        # a stack streaming on, or regenerating under the id, gets the abort again (a redelivery does not)
        late = replace(state, late_chunks=state.late_chunks + 1, next_seq=max(state.next_seq, chunk.seq + 1))
        return Folded(late, ignored="late", reabort=True)
    if restart:
        return _reused(state, chunk, now, limits, offset)
    if chunk.seq < state.next_seq or any(p.seq == chunk.seq for p in state.pending):
        return Folded(state, ignored="duplicate")
    if state.status != "open":
        # ended: counted, never scored; next_seq still advances so a replay stays a duplicate
        late = replace(state, late_chunks=state.late_chunks + 1, next_seq=max(state.next_seq, chunk.seq + 1))
        return Folded(late, (_after_end(state, chunk),), ignored="late")
    if chunk.seq > state.next_seq:
        pending = tuple(sorted((*state.pending, chunk), key=lambda c: c.seq))
        gap_since = state.gap_since if state.gap_since is not None else now
        state = replace(state, pending=pending, gap_since=gap_since)
        if len(pending) > limits.reorder_window:
            return _skip_gap(state, now, limits, f"more than {limits.reorder_window} chunks waited behind it")
        return Folded(state)
    return _drain(_apply(state, chunk, now, limits, offset), now, limits)


def expire(state: SessionState, now: float, limits: FoldLimits, force: bool = False) -> Folded:
    """Give up on gaps older than `gap_timeout_s` (all gaps when `force`, e.g. at the end of a replay)."""
    rejected: list[Rejected] = []
    while state.pending and state.gap_since is not None:
        waited = now - state.gap_since
        if not force and waited < limits.gap_timeout_s:
            break
        step = _skip_gap(state, now, limits, f"waited {waited:.1f} s")
        state, rejected = step.state, [*rejected, *step.rejected]
    return Folded(state, tuple(rejected))


def needs_score(state: SessionState) -> bool:
    """Response content folded since the last score, in a session still being monitored."""
    return (
        state.status != "aborted"
        and state.has_question
        and state.unscored_since is not None
        and state.part != "question"
    )


def mark_scored(state: SessionState, point: ScorePoint, policy: PolicyState) -> SessionState:
    return replace(
        state,
        scored_seq=state.folded_seq,
        scored_tokens=state.tokens,
        scored_chars=state.chars,
        scored_part=state.part,
        unscored_since=None,
        policy=policy,
        unsaved=replace(state.unsaved, scores=(*state.unsaved.scores, point)),
    )


def mark_aborted(state: SessionState, event_id: str, record: str | None = None) -> SessionState:
    return replace(
        state,
        status="aborted",
        abort_event_id=event_id,
        abort_record=record,
        unscored_since=None,
        pending=(),
    )


def mark_steered(state: SessionState, event_id: str) -> SessionState:
    """A steer does not end the session: monitoring goes on from a fresh policy state."""
    return replace(state, steer_event_id=event_id, steer_tokens=state.tokens, policy=PolicyState())


def mark_saved(state: SessionState) -> SessionState:
    return replace(state, stored_seq=state.next_seq, unsaved=Unsaved())


def is_clean(state: SessionState) -> bool:
    """Nothing left that a later step must still do (score or fill a gap) for the chunks seen so far."""
    return not state.pending and not needs_score(state)


def revive(state: SessionState, now: float) -> SessionState:
    """A state loaded from the store: clock times do not survive a process, so what was waiting (unscored
    content, an open gap) starts waiting again now."""
    unscored = state.status != "aborted" and state.folded_seq > state.scored_seq and state.part != "question"
    return replace(
        state,
        unscored_since=now if unscored else None,
        gap_since=now if state.pending else None,
    )
