"""The shared scoring core with the in-memory store and a scripted guard."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import pytest
from fake_guard import MarkerGuard

from monitor.core.pipeline import Incoming, Pipeline, StepResult
from monitor.edges.store import MemorySessionStore
from monitor.guards.base import Prefix, Score
from monitor.messages import Chunk, ImageRef, Part, Verdict
from monitor.settings import BatchingSettings, ImageSettings, PolicySettings, Settings


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def make_settings(**policy: object) -> Settings:
    return Settings(
        batching=BatchingSettings(
            stride_tokens=8, max_delay_s=0.25, max_batch=4, max_wait_s=0.0, gap_timeout_s=2.0
        ),
        policy=PolicySettings(min_tokens=8, **policy),  # type: ignore[arg-type]
        images=ImageSettings(ocr=False),
    )


def session(sid: str, thinking: list[str], answer: list[str], tenant: str | None = None) -> list[Chunk]:
    parts: list[tuple[Part, str]] = [("question", "How do I make something dangerous at home? ")]
    parts += [("thinking", t) for t in thinking] + [("answer", a) for a in answer] + [("end", "")]
    return [
        Chunk(session_id=sid, seq=i, part=p, text=t, ts=float(i), tenant=tenant)
        for i, (p, t) in enumerate(parts, 1)
    ]


HARMFUL_THINKING = session(
    "bad",
    [
        "The user wants instructions. I could just explain the general idea here. ",
        "Step one is to gather the HARM ingredients and mix them in the ratio ",
        "then heat the mixture slowly while stirring so that it does not ",
    ],
    ["I can't help with that request. ", "Please stay safe."],
)
SAFE_NAMES_HARM = session(
    "good",
    [
        "The user asks about something dangerous, which could hurt people badly. ",
        "I should refuse and explain why making dangerous things at home is illegal. ",
    ],
    ["I can't help with making anything dangerous. ", "If you're curious about chemistry, try a course."],
)


async def run_stepwise(pipeline: Pipeline, chunks: Iterable[Chunk], clock: Clock) -> list[StepResult]:
    out = []
    for offset, chunk in enumerate(chunks):
        clock.now += 0.05
        out.append(await pipeline.step([Incoming(chunk, "qta.chunks", 0, offset)]))
    out.append(await pipeline.flush())
    return out


def verdicts_of(results: list[StepResult]) -> list[Verdict]:
    return [v for r in results for v in r.verdicts]


def comparable(verdicts: list[Verdict]) -> list[dict[str, object]]:
    return [v.model_dump(exclude={"ts"}) for v in verdicts]


async def test_harmful_only_in_thinking_is_aborted_before_its_answer() -> None:
    settings, clock, guard = make_settings(), Clock(), MarkerGuard()
    pipeline = Pipeline(settings, MemorySessionStore(settings), guard, clock=clock)
    first_answer = next(c.seq for c in HARMFUL_THINKING if c.part == "answer")
    aborted_at = None
    for offset, chunk in enumerate(HARMFUL_THINKING):
        clock.now += 0.05
        result = await pipeline.step([Incoming(chunk, "qta.chunks", 0, offset)])
        if result.aborts:
            aborted_at = chunk.seq
            (abort,) = result.aborts
            assert abort.part == "thinking" and abort.rule == "threshold:thinking"
            assert abort.action == "abort" and abort.category == "weapons" and abort.label == 1
            assert result.verdicts[-1].status == "abort"
            break
    assert aborted_at is not None and aborted_at < first_answer
    assert "bad" in guard.forgotten
    # the rest of the session is counted, never scored again
    scored_before = len(guard.batches)
    rest = await run_stepwise(pipeline, HARMFUL_THINKING[aborted_at:], clock)
    assert verdicts_of(rest) == [] and not any(r.aborts for r in rest)
    assert len(guard.batches) == scored_before


async def test_safe_session_that_names_a_harm_gets_verdicts_and_no_abort() -> None:
    settings, clock = make_settings(), Clock()
    pipeline = Pipeline(settings, MemorySessionStore(settings), MarkerGuard(), clock=clock)
    results = await run_stepwise(pipeline, SAFE_NAMES_HARM, clock)
    verdicts = verdicts_of(results)
    assert not any(r.aborts for r in results)
    assert verdicts and all(v.status == "ok" for v in verdicts)
    assert verdicts[-1].seq == SAFE_NAMES_HARM[-1].seq and verdicts[-1].part == "end"
    assert [v.seq for v in verdicts] == sorted({v.seq for v in verdicts})


async def test_replaying_the_same_chunks_gives_the_same_verdicts_and_one_abort() -> None:
    chunks = HARMFUL_THINKING + SAFE_NAMES_HARM
    runs = []
    for _ in range(2):  # two fresh pipelines: identical output
        settings, clock = make_settings(), Clock()
        pipeline = Pipeline(settings, MemorySessionStore(settings), MarkerGuard(), clock=clock)
        runs.append(await run_stepwise(pipeline, chunks, clock))
    assert comparable(verdicts_of(runs[0])) == comparable(verdicts_of(runs[1]))
    assert [a.event_id for r in runs[0] for a in r.aborts] == [a.event_id for r in runs[1] for a in r.aborts]

    # the same chunks again into the same store (a replay after a restart): nothing new, no second abort
    settings, clock = make_settings(), Clock()
    store = MemorySessionStore(settings)
    first = await run_stepwise(Pipeline(settings, store, MarkerGuard(), clock=clock), chunks, clock)
    again = await run_stepwise(Pipeline(settings, store, MarkerGuard(), clock=clock), chunks, clock)
    assert len([a for r in first for a in r.aborts]) == 1
    assert verdicts_of(again) == [] and not any(r.aborts for r in again)


async def test_replay_after_a_crash_between_claim_and_save_republishes_the_same_abort() -> None:
    settings, clock = make_settings(), Clock()
    store = MemorySessionStore(settings)
    crashed = Pipeline(settings, store, MarkerGuard(), clock=clock, autosave=False)
    lost = [a for r in await run_stepwise(crashed, HARMFUL_THINKING, clock) for a in r.aborts]
    assert len(lost) == 1 and store.meta == {}  # claimed in the store, state never saved
    replayed = await run_stepwise(
        Pipeline(settings, store, MarkerGuard(), clock=clock), HARMFUL_THINKING, clock
    )
    again = [a for r in replayed for a in r.aborts]
    assert [a.event_id for a in again] == [lost[0].event_id]


async def test_an_abort_claimed_elsewhere_keeps_its_event_id() -> None:
    settings, clock = make_settings(), Clock()
    store = MemorySessionStore(settings)
    await store.claim_abort("bad", "abort-from-another-worker")
    results = await run_stepwise(
        Pipeline(settings, store, MarkerGuard(), clock=clock), HARMFUL_THINKING, clock
    )
    assert [a.event_id for r in results for a in r.aborts] == ["abort-from-another-worker"]


async def test_tenant_policy_steers_with_the_prompt() -> None:
    settings, clock = make_settings(action_by_tenant={"acme": "steer"}), Clock()
    chunks = [c.model_copy(update={"tenant": "acme"}) for c in HARMFUL_THINKING]
    results = await run_stepwise(
        Pipeline(settings, MemorySessionStore(settings), MarkerGuard(), clock=clock), chunks, clock
    )
    # the stack ignored the steer (the harm stays in the trace), so the session is aborted after it
    steer, abort = [a for r in results for a in r.aborts]
    assert (
        steer.action == "steer"
        and steer.steer_prompt == settings.policy.steer_prompt
        and steer.tenant == "acme"
    )
    assert abort.action == "abort" and abort.event_id != steer.event_id and abort.seq > steer.seq


async def test_chunks_coalesce_into_one_scoring_per_session_and_batch_across_sessions() -> None:
    settings, clock, guard = make_settings(), Clock(), MarkerGuard()
    settings = settings.model_copy(
        update={"batching": settings.batching.model_copy(update={"stride_tokens": 100})}
    )
    pipeline = Pipeline(settings, MemorySessionStore(settings), guard, clock=clock)
    a = session("a", ["one two three four five six seven eight nine ten "] * 3, [])
    b = session("b", ["x " * 20] * 3, [])
    await pipeline.step([Incoming(c) for c in a[:4] + b[:4]])
    assert guard.batches == []  # below the stride: waiting for more, up to max_delay
    clock.now += 0.3
    result = await pipeline.step([])
    assert len(guard.batches) == 1 and sorted(p.session_id for p in guard.batches[0]) == ["a", "b"]
    assert sorted(v.seq for v in result.verdicts) == [4, 4]


async def test_a_backlog_read_at_once_is_scored_where_a_live_stream_would_be() -> None:
    settings, clock = make_settings(), Clock()
    live_run = await run_stepwise(
        Pipeline(settings, MemorySessionStore(settings), MarkerGuard(), clock=clock), SAFE_NAMES_HARM, Clock()
    )
    backlog = Pipeline(settings, MemorySessionStore(settings), MarkerGuard(), clock=clock)
    at_once = [
        await backlog.step([Incoming(c) for c in HARMFUL_THINKING + SAFE_NAMES_HARM]),
        await backlog.flush(),
    ]
    (abort,) = [a for r in at_once for a in r.aborts]
    assert abort.part == "thinking" and abort.session_id == "bad"
    good = [v.seq for v in verdicts_of(at_once) if v.session_id == "good"]
    assert good == [v.seq for v in verdicts_of(live_run)]


async def test_bad_input_becomes_dead_letters_and_the_session_goes_on() -> None:
    settings, clock = make_settings(), Clock()
    pipeline = Pipeline(settings, MemorySessionStore(settings), MarkerGuard(), clock=clock)
    orphan = Chunk(session_id="orphan", seq=1, part="thinking", text="no question was ever sent")
    bad_png = ImageRef(data=base64.b64encode(b"not a png").decode())
    q = Chunk(session_id="img", seq=1, part="question", text="what is this? ", images=(bad_png,))
    gap = [Chunk(session_id="img", seq=s, part="thinking", text="thinking on and on ") for s in (2, 4)]
    result = await pipeline.step([Incoming(orphan, "qta.chunks", 1, 7), Incoming(q), *map(Incoming, gap)])
    assert sorted(d.reason for d in result.dead_letters) == ["bad_image", "no_question"]
    no_q = next(d for d in result.dead_letters if d.reason == "no_question")
    assert (no_q.session_id, no_q.partition, no_q.offset) == ("orphan", 1, 7) and no_q.raw_b64
    clock.now += 2.5
    later = await pipeline.step([])
    assert [d.reason for d in later.dead_letters] == ["gap"]
    assert later.verdicts[-1].degraded and later.verdicts[-1].seq == 4


async def test_escalation_guard_decides_the_uncertain_band() -> None:
    settings, clock = make_settings(), Clock()
    first, second = MarkerGuard("screen"), MarkerGuard("judge")
    second.score = lambda batch: [  # type: ignore[method-assign]
        MarkerGuard.score(second, batch)[0].__class__.from_probs(0.01, 0.01, 0.98, 5, "cyber") for _ in batch
    ]
    pipeline = Pipeline(settings, MemorySessionStore(settings), first, escalation=second, clock=clock)
    chunks = session("risky", ["this is a RISK area and I will keep going with more words "] * 2, [])
    results = await run_stepwise(pipeline, chunks, clock)
    (abort,) = [a for r in results for a in r.aborts]
    assert abort.guard == "judge" and abort.category == "cyber"
    audit = await pipeline.explain(abort)
    assert audit is not None and audit.abort_event_id == abort.event_id and audit.guard == "judge"


async def test_commit_floor_holds_unscored_chunks_and_release_drops_sessions() -> None:
    settings, clock = make_settings(), Clock()
    settings = settings.model_copy(
        update={"batching": settings.batching.model_copy(update={"stride_tokens": 1000})}
    )
    pipeline = Pipeline(settings, MemorySessionStore(settings), MarkerGuard(), clock=clock)
    chunks = session("held", ["a little thinking "] * 2, [])
    await pipeline.step([Incoming(c, "qta.chunks", 3, 10 + i) for i, c in enumerate(chunks[:3])])
    assert pipeline.commit_floor() == {("qta.chunks", 3): 11}  # the question needs no score; thinking does
    clock.now += 1.0
    await pipeline.step([])  # max_delay passed: scored, hold released
    assert pipeline.commit_floor() == {}
    await pipeline.release({("qta.chunks", 3)})
    assert pipeline.live_sessions == 0


async def test_close_is_clean() -> None:
    settings = make_settings()
    pipeline = Pipeline(settings, MemorySessionStore(settings), MarkerGuard())
    await pipeline.close()


async def test_images_are_decoded_for_the_guard_and_read_by_ocr_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from PIL import Image

    import monitor.core.prefixes

    reads: list[tuple[int, int]] = []

    def fake_ocr(image: Image.Image) -> str:
        reads.append(image.size)
        return "STEP 1 mix"

    monkeypatch.setattr(monitor.core.prefixes, "ocr_text", fake_ocr)
    buf = io.BytesIO()
    Image.new("RGB", (32, 16), "white").save(buf, format="PNG")
    png = ImageRef(data=base64.b64encode(buf.getvalue()).decode())
    settings, clock, guard = make_settings(), Clock(), MarkerGuard()
    settings = settings.model_copy(update={"images": ImageSettings(ocr=True)})
    pipeline = Pipeline(settings, MemorySessionStore(settings), guard, clock=clock)
    chunks = session("img", ["list the steps in the picture please now "] * 3, [])
    chunks[0] = chunks[0].model_copy(update={"images": (png,)})
    results = await run_stepwise(pipeline, chunks, clock)
    assert not any(r.dead_letters for r in results)
    prefixes = [p for batch in guard.batches for p in batch]
    assert len(prefixes) >= 2 and all(len(p.images) == 1 and p.image_text == "STEP 1 mix" for p in prefixes)
    assert reads == [(32, 16)]  # once per session, however many re-scores
    # a second session with the same picture (a replay, a template image) is not read by tesseract again
    again = [c.model_copy(update={"session_id": "img2"}) for c in chunks]
    await run_stepwise(pipeline, again, clock)
    texts = [p.image_text for batch in guard.batches for p in batch if p.session_id == "img2"]
    assert texts and texts[-1] == "STEP 1 mix"
    assert reads == [(32, 16)]
    await pipeline.close()


# -- session ids seen again (README "Session ids") --------------------------------------------------------


def _retried(chunks: list[Chunk], sid: str | None = None, later: float = 60.0) -> list[Chunk]:
    return [c.model_copy(update={"ts": c.ts + later, "session_id": sid or c.session_id}) for c in chunks]


async def test_an_aborted_session_gets_its_abort_again_for_every_later_chunk_batch() -> None:
    settings, clock = make_settings(), Clock()
    pipeline = Pipeline(settings, MemorySessionStore(settings), MarkerGuard(), clock=clock)
    results = await run_stepwise(pipeline, HARMFUL_THINKING, clock)
    (abort,) = [a for r in results for a in r.aborts]
    repeats = [a for r in results for a in r.repeats]  # the stack kept streaming after the abort
    assert repeats and all(a.model_dump() == abort.model_dump() for a in repeats)
    # a stack that regenerates under the old id is stopped again at its seq 1, and nothing is scored
    again = await run_stepwise(pipeline, _retried(HARMFUL_THINKING[:2]), clock)
    assert [a.event_id for r in again for a in r.repeats] == [abort.event_id]
    assert not [v for r in again for v in r.verdicts] and not [a for r in again for a in r.aborts]


async def test_a_retried_request_under_an_ended_id_is_scored_as_a_new_epoch() -> None:
    settings, clock, guard = make_settings(), Clock(), MarkerGuard()
    store = MemorySessionStore(settings)
    pipeline = Pipeline(settings, store, guard, clock=clock)
    harmless = session(
        "reused", ["Let me think about bread. ", "Flour, water and salt make dough. "], ["Bake."]
    )
    first = verdicts_of(await run_stepwise(pipeline, harmless, clock))
    assert first and all(v.epoch == 0 for v in first)
    # the retry of the same id goes harmful: it must be monitored, not ignored as duplicates
    retry = _retried([c.model_copy(update={"session_id": "reused"}) for c in HARMFUL_THINKING])
    results = await run_stepwise(pipeline, retry, clock)
    second = verdicts_of(results)
    (abort,) = [a for r in results for a in r.aborts]
    assert second and all(v.epoch == 1 for v in second) and abort.epoch == 1
    assert not {v.event_id for v in first} & {v.event_id for v in second}
    assert "reused" in guard.forgotten  # nothing an incremental guard held for epoch 0 is extended
    assert store.texts["reused"][1].startswith("The user wants")  # the store holds epoch 1 only
    loaded = (await store.load(["reused"]))["reused"]
    assert loaded.epoch == 1 and loaded.status == "aborted"


async def test_request_id_reaches_the_abort() -> None:
    settings, clock = make_settings(), Clock()
    chunks = [c.model_copy(update={"request_id": "req-7"}) for c in HARMFUL_THINKING]
    results = await run_stepwise(
        Pipeline(settings, MemorySessionStore(settings), MarkerGuard(), clock=clock), chunks, clock
    )
    (abort,) = [a for r in results for a in r.aborts]
    assert abort.request_id == "req-7"


class TailGuard(MarkerGuard):
    """Reads only the last 100 characters of the thinking, as a windowed guard reads its latest window."""

    def score(self, batch: Sequence[Prefix]) -> list[Score]:
        return super().score([replace(p, thinking=p.thinking[-100:], answer="") for p in batch])


async def test_a_steered_session_goes_on_being_scored_and_is_not_aborted_once_it_recovers() -> None:
    settings, clock = make_settings(action="steer"), Clock()
    pipeline = Pipeline(settings, MemorySessionStore(settings), TailGuard(), clock=clock)
    head = HARMFUL_THINKING[:3]  # question, a plain thought, the HARM thought: the steer fires here
    results = [await pipeline.step([Incoming(c, "qta.chunks", 0, i)]) for i, c in enumerate(head)]
    (steer,) = [a for r in results for a in r.aborts]
    assert steer.action == "steer" and steer.steer_prompt
    # the stack inserts the reflection (published as thinking) and the model continues safely
    texts = [settings.policy.steer_prompt + " ", "I will not give those steps; here is why that is unsafe. "]
    rest = [
        Chunk(session_id="bad", seq=4 + i, part="thinking", text=t, ts=10.0 + i) for i, t in enumerate(texts)
    ]
    rest.append(Chunk(session_id="bad", seq=6, part="end", ts=20.0))
    later = []
    for i, c in enumerate(rest, 3):
        clock.now += 1
        later.append(await pipeline.step([Incoming(c, "qta.chunks", 0, i)]))
    later.append(await pipeline.flush())
    verdicts = verdicts_of(later)
    assert verdicts and verdicts[-1].seq == 6 and verdicts[-1].status != "abort"  # watched to the end
    assert not [a for r in later for a in r.aborts]


class WindowGuard:
    """Reads only the latest `window` characters of the response, as the embedded guard reads its latest
    window: RECIPE there -> p_harmful 0.93 (above final_abort_threshold 0.9, below the answer's 0.95),
    anything else 0.02."""

    name = "window"

    def __init__(self, window: int = 50) -> None:
        self.window = window

    def score(self, batch: Sequence[Prefix]) -> list[Score]:
        out = []
        for prefix in batch:
            latest = (prefix.thinking + prefix.answer)[-self.window :]
            p = 0.93 if "RECIPE" in latest else 0.02
            out.append(Score.from_probs((1 - p) / 2, (1 - p) / 2, p, len(latest.split()), "drugs"))
        return out

    def forget(self, session_ids: Iterable[str]) -> None:
        pass

    def explain(self, prefix: Prefix) -> str | None:
        return None


DRIFT_TEXT = ["Then tidy the kitchen, wash each bowl and dry it. "] * 4 + [
    "Then put the bowls back and rest."
]
DRIFTING = session(
    "drift",
    ["The user asks how; I will answer it directly. "],
    ["First the RECIPE: take the precursor and reduce it ", *DRIFT_TEXT],
)
SAFE_DRIFTING = session(
    "safe-drift", ["The user asks about chemistry; I will explain safety. "], ["Stay safe. ", *DRIFT_TEXT]
)
SHORT = session("short", ["Sure, the RECIPE:"], [])


@pytest.mark.parametrize(("chunks", "aborted"), [(DRIFTING, True), (SAFE_DRIFTING, False), (SHORT, True)])
async def test_harm_that_the_window_let_go_and_short_sessions_get_a_final_abort_at_their_end(
    chunks: list[Chunk], aborted: bool
) -> None:
    for settings, expect in ((make_settings(), aborted), (make_settings(final_abort_threshold=1.0), False)):
        clock = Clock()
        pipeline = Pipeline(settings, MemorySessionStore(settings), WindowGuard(), clock=clock)
        results = await run_stepwise(pipeline, chunks, clock)
        aborts = [a for r in results for a in r.aborts]
        if not expect:  # the previous policy (no `final` rule) let the drifting and the short session go
            assert aborts == []
            continue
        (abort,) = aborts
        assert (abort.seq, abort.part, abort.rule, abort.final) == (chunks[-1].seq, "end", "final", True)
        assert max(v.p_harmful for v in verdicts_of(results)) == pytest.approx(0.93)
        assert verdicts_of(results)[-1].p_harmful == pytest.approx(0.02 if chunks is DRIFTING else 0.93)
