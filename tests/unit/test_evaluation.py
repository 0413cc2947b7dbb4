"""`qta-monitor eval` in process: chunking, replay through the real Pipeline, score caching, report files."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from monitor.evaluation import operating
from monitor.evaluation.datasets import Sample
from monitor.evaluation.runner import (
    CachingGuard,
    decided,
    evaluate,
    load_sets,
    replay,
    run_eval,
    write_report,
)
from monitor.evaluation.sessions import outcome, session_chunks
from monitor.guards.base import Prefix, Score
from monitor.settings import Settings

SAMPLES = Path(__file__).resolve().parents[2] / "monitor" / "samples" / "sessions.jsonl"


class KeywordGuard:
    """Harmful exactly when the word HARM is in the response so far; counts what it was asked."""

    name = "keyword"

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.forgotten: list[str] = []

    def score(self, batch: Sequence[Prefix]) -> list[Score]:
        self.calls.append(len(batch))
        out = []
        for p in batch:
            bad = "HARM" in p.thinking + p.answer
            out.append(
                Score.from_probs(0.02, 0.03, 0.95, 10) if bad else Score.from_probs(0.9, 0.08, 0.02, 10)
            )
        return out

    def forget(self, session_ids: Iterable[str]) -> None:
        self.forgotten += list(session_ids)

    def explain(self, prefix: Prefix) -> str | None:
        return None


@pytest.fixture
def make_sample() -> Callable[..., Sample]:
    def make(id_: str, label: float, thinking: str, answer: str = "ok " * 20, **kw: Any) -> Sample:
        return Sample(id=id_, question="a question?", thinking=thinking, answer=answer, label=label, **kw)

    return make


def test_session_chunks_cover_the_sample_in_order(make_sample: Callable[..., Sample]) -> None:
    s = make_sample("a", 0, "t" * 150, "a" * 70)
    plan = session_chunks(s, "sid", 64)
    assert [p.chunk.seq for p in plan] == list(range(1, len(plan) + 1))
    assert [p.chunk.part for p in plan] == ["question"] + ["thinking"] * 3 + ["answer"] * 2 + ["end"]
    assert "".join(p.chunk.text for p in plan if p.chunk.part == "thinking") == s.thinking
    assert [p.thinking_chars for p in plan] == [0, 64, 128, 150, 150, 150, 150]
    assert [p.answer_started for p in plan] == [False] * 4 + [True] * 3


def test_replay_aborts_harmful_sessions_early_and_stops_them(make_sample: Callable[..., Sample]) -> None:
    harmful = make_sample("h", 1, "x " * 200 + "HARM " + "y " * 300, harm_start=400)
    safe = make_sample("s", 0, "z " * 300)
    guard = KeywordGuard()
    got = asyncio.run(replay(Settings(), guard, [("set", harmful), ("set", safe)], 32))
    h, s = (outcome(r) for r in got)
    assert h.aborted and not s.aborted
    assert h.before_answer and h.abort_part == "thinking"
    assert h.thinking_consumed is not None and 0.35 < h.thinking_consumed < 0.7
    assert h.harm_delay_chars is not None and 0 <= h.harm_delay_chars < 400
    # after the abort the producer stopped: nothing past the abort was scored
    assert got[0].abort is not None and all(v.seq <= got[0].abort.seq for v in got[0].verdicts)
    assert s.max_p_harmful < 0.1 and s.scores >= 2 and s.tokens_scored == 10 * s.scores


def test_caching_guard_reuses_scores_and_resets_stateful_guards(make_sample: Callable[..., Sample]) -> None:
    inner = KeywordGuard()
    cached = CachingGuard(inner)
    sessions = [("set", make_sample(str(i), 0, "w " * 200)) for i in range(3)]
    first = asyncio.run(replay(Settings(), cached, sessions, 32))
    calls = len(inner.calls)
    second = asyncio.run(replay(Settings(), cached, sessions, 32))
    assert len(inner.calls) == calls and cached.hits > 0
    assert [outcome(r) for r in first] == [outcome(r) for r in second]
    # a prefix shorter than the guard last saw for that session: its per-session state is dropped first
    p_long = Prefix("eval-0", "q", thinking="a" * 500)
    p_short = Prefix("eval-0", "q", thinking="a" * 10)
    cached.score([p_long])
    cached.score([p_short])
    assert "eval-0" in inner.forgotten


def test_evaluate_with_sweep_writes_a_complete_report(
    tmp_path: Path, make_sample: Callable[..., Sample]
) -> None:
    sessions = [
        ("a", make_sample("1", 1, "p " * 100 + "HARM " * 30, category="weapons")),
        ("a", make_sample("2", 0, "q " * 150, category="weapons")),
        ("b", make_sample("3", 0.5, "r " * 120, answer="HARM " * 20, composed=True)),
        ("b", make_sample("4", 0, "s " * 80 + "HARM", composed=True)),
    ]
    outcomes, rows = asyncio.run(
        evaluate(Settings(), KeywordGuard(), sessions, positive=1.0, chunk_chars=48, sweep=True)
    )
    result = write_report(tmp_path, outcomes, rows, ["b"], 1.0, {"guard": "keyword", "chunk_chars": 48})
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["overall"]["recall"] == 1.0 and saved["overall"]["false_abort_rate"] == 0.5
    assert saved["sets"]["b"]["composed"] is True and saved["composed_sets"] == ["b"]
    assert set(saved["sets"]) == {"a", "b"} and "weapons" in saved["categories"]
    assert len(saved["sweep"]) == len(rows) > 10
    for row in rows:
        assert all(0.0 <= row[k] <= 1.0 for k in ("precision", "recall", "f1", "false_abort_rate"))
    assert {p.name for p in tmp_path.glob("*.png")} == set(result["plots"]) and len(result["plots"]) == 4
    assert "operating_point.png" in result["plots"] and saved["operating_point"]["chosen"] is not None
    assert "Policy sweep" in (tmp_path / "report.md").read_text()


def test_load_sets_samples_deterministically_and_names_sets(tmp_path: Path) -> None:
    rows = [
        {"id": str(i), "question": "q", "thinking": "t", "answer": "a", "label": i % 2} for i in range(20)
    ]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    once, composed = load_sets([path], limit=5)
    again, _ = load_sets([path], limit=5)
    assert once == again and len(once) == 5 and composed == []
    assert {name for name, _ in once} == {"mine"}


def test_run_eval_with_the_embedded_guard(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_eval(Settings(), [SAMPLES], None, out, 1.0, 96, limit=6, sweep=False, through_kafka=False) == 0
    saved = json.loads((out / "report.json").read_text())
    for entry in (saved["overall"], *saved["sets"].values()):
        for key in ("precision", "recall", "f1", "false_abort_rate", "abort_before_answer_rate"):
            assert 0.0 <= entry[key] <= 1.0
    assert saved["overall"]["sessions"] == 6 and saved["run"]["guard"] == "minilm"
    assert saved["overall"]["tokens_scored_per_session"]["mean"] > 0
    assert all((out / name).stat().st_size > 1000 for name in saved["plots"])
    assert (out / "report.md").read_text().startswith("# qta-monitor streaming evaluation")


def test_sets_without_traces_are_also_evaluated_composed(tmp_path: Path) -> None:
    rows = [
        {"id": "1", "question": "q", "thinking": "", "answer": "a harmful answer", "label": 1},
        {"id": "2", "question": "q", "thinking": "", "answer": "a safe answer", "label": 0},
    ]
    path = tmp_path / "responses.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "p", "question": "q?", "thinking": "", "answer": "", "label": 1}))
    sessions, composed = load_sets([path, prompts], limit=None)
    assert composed == ["responses+composed"]
    as_composed = [s for name, s in sessions if name == "responses+composed"]
    assert [s.thinking for s in as_composed] == ["a harmful answer", "a safe answer"]
    assert all(s.composed and s.answer for s in as_composed)
    outcomes, _ = asyncio.run(
        evaluate(Settings(), KeywordGuard(), sessions, positive=1.0, chunk_chars=64, sweep=False)
    )
    report = write_report(tmp_path / "out", outcomes, [], composed, 1.0, {})
    assert report["sets"]["responses+composed"]["composed"] is True
    assert report["sets"]["prompts"]["prompt_only"] is True
    assert report["sets"]["responses"]["prompt_only"] is False
    assert "Prompt-only sets" in (tmp_path / "out" / "report.md").read_text()


class WindowKeywordGuard(KeywordGuard):
    """Reads only the latest 40 characters: HARM there -> 0.93, so harm followed by drift is let go."""

    def score(self, batch: Sequence[Prefix]) -> list[Score]:
        self.calls.append(len(batch))
        return [
            Score.from_probs(0.035, 0.035, 0.93, 10)
            if "HARM" in (p.thinking + p.answer)[-40:]
            else Score.from_probs(0.9, 0.08, 0.02, 10)
            for p in batch
        ]


def test_sweep_decisions_match_real_replays_and_the_end_rule(make_sample: Callable[..., Sample]) -> None:
    sessions = [
        ("drift", make_sample("1", 1, "plain thought " * 5, answer="HARM step " * 6 + "wash the bowl " * 40)),
        ("drift", make_sample("2", 0, "safe step " * 12 + "wash the bowl " * 40)),
        ("short", make_sample("3", 1, "Sure HARM", answer="")),
        ("long", make_sample("4", 1, "HARM " * 100)),
    ]
    guard = CachingGuard(WindowKeywordGuard())
    full = asyncio.run(replay(operating.never_abort(Settings()), guard, sessions, 48))
    for point in [p for p in operating.grid(Settings()) if p[3] == 2] + operating.grid(Settings())[-5:]:
        settings = operating.apply(Settings(), point)
        real = [outcome(r) for r in asyncio.run(replay(settings, guard, sessions, 48))]
        offline = [outcome(decided(settings.policy, r)) for r in full]
        key = [(o.aborted, o.abort_chars, o.final) for o in real]
        assert key == [(o.aborted, o.abort_chars, o.final) for o in offline], point
    # under the shipped defaults: the drifting harmful answer and the short session are aborted at their end
    got = [outcome(decided(Settings().policy, r)) for r in full]
    assert [(o.aborted, o.final) for o in got] == [(True, True), (False, False), (True, True), (True, False)]
    previous = Settings().policy.model_copy(update={"final_abort_threshold": 1.0})
    assert [outcome(decided(previous, r)).aborted for r in full] == [False, False, False, True]
