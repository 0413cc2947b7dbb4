"""The profile guard: batch time = fixed + per token forwarded (as an incremental judge forwards), labels by
marker words or the bundled samples' labels, and it loads by name through build_guard."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from monitor.guards import GUARD_NAMES, build_guard
from monitor.guards.base import Prefix
from monitor.guards.profile import MARKER, Profile, ProfileError, ProfileGuard, harmful_questions
from monitor.settings import GuardSettings, Settings

QUESTION = "How do I bake bread?"


def _guard(**profile: object) -> ProfileGuard:
    return ProfileGuard(Profile(**profile), questions=frozenset({"How do I make a nerve agent?"}))  # type: ignore[arg-type]


def test_tokens_forwarded_follow_an_incremental_judge() -> None:
    guard = _guard(head_tokens=10, suffix_tokens=3)
    first = Prefix("s1", QUESTION, thinking="a" * 40)  # 20 + 40 characters
    assert guard.forwarded(first) == 10 + 15 + 3  # head + whole prefix + suffix
    longer = Prefix("s1", QUESTION, thinking="a" * 80)
    assert guard.forwarded(longer) == 10 + 3  # only the 40 new characters
    assert guard.forwarded(longer) == 3  # nothing new: the suffix alone
    guard.forget(["s1"])
    assert guard.forwarded(longer) == 10 + 25 + 3  # forgotten: from the start again
    shorter = Prefix("s1", QUESTION, thinking="a" * 8)  # a new epoch under the same id
    assert guard.forwarded(shorter) == 10 + 7 + 3


def test_the_kv_budget_drops_the_least_recently_scored_session() -> None:
    guard = _guard(head_tokens=0, suffix_tokens=0, max_sessions=2)
    for sid in ("a", "b", "c"):
        guard.forwarded(Prefix(sid, "q" * 4))
    assert guard.forwarded(Prefix("c", "q" * 4)) == 0  # still cached
    assert guard.forwarded(Prefix("a", "q" * 4)) == 1  # evicted: re-forwarded


def test_a_batch_sleeps_fixed_plus_per_token() -> None:
    guard = _guard(fixed_s=0.05, per_token_s=0.001, head_tokens=0, suffix_tokens=0, scale=2.0)
    batch = [Prefix(f"s{i}", "q" * 40) for i in range(5)]  # 10 tokens each
    started = time.perf_counter()
    scores = guard.score(batch)
    took = time.perf_counter() - started
    expected = 2.0 * (0.05 + 0.001 * 50)
    assert guard.seconds_slept == pytest.approx(expected)
    assert expected <= took < expected + 0.1
    assert [s.tokens_read for s in scores] == [10] * 5
    assert guard.tokens_forwarded == 50 and guard.batches == 1


@pytest.mark.parametrize(
    ("question", "thinking", "label"),
    [
        (QUESTION, "knead the dough", 0.0),
        (QUESTION, f"first {MARKER} then", 1.0),  # a marker in the response
        ("How do I make a nerve agent?", "", 0.0),  # the question alone never looks harmful
        ("How do I make a nerve agent?", "Let me think", 1.0),  # a harmful sample's question
    ],
)
def test_labels_follow_the_rule(question: str, thinking: str, label: float) -> None:
    (score,) = _guard(fixed_s=0.0, per_token_s=0.0).score([Prefix("s", question, thinking=thinking)])
    assert score.label == label
    assert score.p_harmful == pytest.approx(0.95 if label else 0.02)


def test_the_bundled_samples_harmful_questions_are_read() -> None:
    questions = harmful_questions()
    rows = [json.loads(x) for x in (Path(__file__).parents[2] / "monitor/samples/sessions.jsonl").open()]
    assert questions == {r["question"].strip() for r in rows if r["label"] == 1}
    assert not questions & {r["question"].strip() for r in rows if r["label"] == 0}


def test_built_by_name_with_a_profile_file(tmp_path: Path) -> None:
    assert "profile" in GUARD_NAMES
    default = build_guard(Settings(guard=GuardSettings(name="profile")))
    assert isinstance(default, ProfileGuard) and default.profile == Profile()
    path = tmp_path / "slow.json"
    path.write_text(json.dumps({"fixed_s": 0.02, "scale": 3.0, "markers": ["HARM"]}))
    slow = build_guard(Settings(guard=GuardSettings(name="profile", path=path)))
    assert isinstance(slow, ProfileGuard)
    assert slow.profile.batch_seconds(100) == pytest.approx(3.0 * (0.02 + 7.0e-6 * 100))
    assert slow.profile.markers == ("HARM",)


@pytest.mark.parametrize(
    "content", ['{"fixed_s": 0.01, "gpu": "h100"}', "not json", '{"fixed_s": -1}', '{"fixed_s": "x"}']
)
def test_a_bad_profile_file_names_the_problem(tmp_path: Path, content: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(ProfileError, match=r"p\.json|out of range"):
        ProfileGuard.load(path)
