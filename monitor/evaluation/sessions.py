"""A labelled sample as the session a serving stack would stream (`session_chunks`), what came back for it
(`Replayed`), and its outcome for the report. Shared by the in-process run (monitor.evaluation.runner) and
the through-Kafka run (monitor.evaluation.kafka_replay)."""

from __future__ import annotations

from dataclasses import dataclass, field

from monitor.evaluation.datasets import Sample
from monitor.evaluation.report import Outcome
from monitor.messages import Abort, Chunk, ImageRef, Part, Verdict


@dataclass(frozen=True, slots=True)
class Planned:
    """One chunk of a replayed session and what of the sample it has revealed so far."""

    chunk: Chunk
    thinking_chars: int  # thinking characters folded up to and including this chunk
    answer_started: bool
    response_chars: int = 0  # thinking + answer characters folded up to and including this chunk


@dataclass(slots=True)
class Replayed:
    """What came back for one session."""

    sample: Sample
    set: str
    plan: list[Planned]
    verdicts: list[Verdict] = field(default_factory=list)
    abort: Abort | None = None


def session_chunks(sample: Sample, session_id: str, chunk_chars: int) -> list[Planned]:
    """The chunks a serving stack would publish for `sample`: question (with image refs), thinking and
    answer in `chunk_chars` pieces, then `end`."""
    out: list[Planned] = []
    seen = 0
    response = 0

    def add(part: Part, text: str = "", images: tuple[ImageRef, ...] = ()) -> None:
        nonlocal response
        response += len(text) if part in ("thinking", "answer") else 0
        chunk = Chunk(session_id=session_id, seq=len(out) + 1, part=part, text=text, images=images, ts=0.0)
        out.append(Planned(chunk, seen, part in ("answer", "end") and bool(sample.answer), response))

    add("question", sample.question, tuple(ImageRef(uri=str(p)) for p in sample.images))
    for i in range(0, len(sample.thinking), chunk_chars):
        seen = min(len(sample.thinking), i + chunk_chars)
        add("thinking", sample.thinking[i : i + chunk_chars])
    for i in range(0, len(sample.answer), chunk_chars):
        add("answer", sample.answer[i : i + chunk_chars])
    add("end")
    return out


def end_chunk(replayed: Replayed, seq: int) -> Planned:
    """The `end` a producer sends after an abort stopped generation early."""
    last = replayed.plan[seq - 2]
    chunk = Chunk(session_id=last.chunk.session_id, seq=seq, part="end", ts=0.0)
    return Planned(chunk, last.thinking_chars, last.answer_started, last.response_chars)


def outcome(r: Replayed) -> Outcome:
    s = r.sample
    thinking_consumed: float | None = None
    before_answer = False
    delay: int | None = None
    abort_chars: int | None = None
    if r.abort is not None:
        at = r.plan[min(r.abort.seq, len(r.plan)) - 1]
        before_answer = not at.answer_started
        abort_chars = at.response_chars
        if s.thinking:
            thinking_consumed = at.thinking_chars / len(s.thinking)
            if s.harm_start is not None:
                delay = at.thinking_chars - s.harm_start
    return Outcome(
        id=s.id,
        set=r.set,
        label=s.label,
        aborted=r.abort is not None,
        warned=any(v.status == "warn" for v in r.verdicts),
        category=s.category,
        abort_part=r.abort.part if r.abort is not None else None,
        thinking_consumed=thinking_consumed,
        before_answer=before_answer,
        harm_delay_chars=delay,
        abort_chars=abort_chars,
        final=r.abort is not None and r.abort.final,
        max_p_harmful=max((v.p_harmful for v in r.verdicts), default=0.0),
        tokens=max((v.tokens for v in r.verdicts), default=0),
        tokens_scored=sum(v.tokens_read for v in r.verdicts),
        scores=len(r.verdicts),
        response_chars=len(s.thinking) + len(s.answer),
    )
