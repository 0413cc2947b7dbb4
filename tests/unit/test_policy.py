"""The policy, table-driven: each row is a score history and what the last score must lead to."""

from __future__ import annotations

import pytest

from monitor.core.policy import (
    RULES,
    Decision,
    PolicyState,
    ScoredPart,
    action_for,
    decide,
    part_limits,
    should_escalate,
)
from monitor.evaluation import operating
from monitor.guards.base import Score
from monitor.settings import PolicySettings, Settings

POLICY = PolicySettings(
    warn_threshold=0.5,
    abort_threshold=0.8,
    answer_abort_threshold=0.7,
    ema_alpha=0.5,
    ema_abort=0.7,
    ema_release=0.4,
    consecutive=2,
    min_tokens=16,
    answer_label_abort=True,  # the rule table below exercises every rule
)


def score(p_harmful: float, label: float | None = None) -> Score:
    rest = (1 - p_harmful) / 2
    s = Score.from_probs(rest, rest, p_harmful, 10, "cat")
    if label is not None:
        return Score(s.p_safe, s.p_potential, s.p_harmful, label, 10, "cat")  # type: ignore[arg-type]
    return s


def run(history: list[Score], part: ScoredPart = "thinking", tokens: int = 100) -> tuple[str, str | None]:
    state = PolicyState()
    status, rule = "ok", None
    for s in history:
        d = decide(POLICY, state, s, part, tokens)
        state, status, rule = d.state, d.status, d.rule
    return status, rule


CASES = [
    # (name, history of p_harmful [or (p, label)], part, response tokens, status, rule)
    ("safe stays ok", [0.05, 0.1, 0.05], "thinking", 100, "ok", None),
    ("one spike over the thinking threshold", [0.05, 0.85], "thinking", 100, "abort", "threshold:thinking"),
    ("0.75 in thinking only warns", [0.75], "thinking", 100, "warn", None),
    ("0.75 in the answer aborts", [0.75], "answer", 100, "abort", "threshold:answer"),
    ("label 1 in the answer aborts", [(0.45, 1)], "answer", 100, "abort", "label:answer"),
    ("label 1 once in thinking warns", [(0.45, 1)], "thinking", 100, "warn", None),
    ("two label-1 scores in a row", [(0.45, 1), (0.45, 1)], "thinking", 100, "abort", "consecutive"),
    ("label-1 streak broken", [(0.45, 1), 0.1, (0.45, 1)], "thinking", 100, "warn", None),
    ("EMA below abort after 3 x 0.78", [(0.78, 0.5)] * 3, "thinking", 100, "warn", None),
    ("sustained 0.78 trips the EMA", [(0.78, 0.5)] * 4, "thinking", 100, "abort", "ema"),
    ("no abort below min_tokens", [0.95, 0.95], "thinking", 10, "warn", None),
    (
        "hysteresis: warning holds while EMA >= release",
        [(0.6, 0.5)] * 3 + [(0.3, 0)],
        "thinking",
        100,
        "warn",
        None,
    ),
    (
        "hysteresis: warning clears below release",
        [(0.6, 0.5), (0.1, 0), (0.1, 0)],
        "thinking",
        100,
        "ok",
        None,
    ),
]


@pytest.mark.parametrize(
    ("name", "history", "part", "tokens", "status", "rule"), CASES, ids=[c[0] for c in CASES]
)
def test_policy_table(
    name: str, history: list[object], part: ScoredPart, tokens: int, status: str, rule: str | None
) -> None:
    scores = [score(*h) if isinstance(h, tuple) else score(h) for h in history]  # type: ignore[arg-type]
    assert run(scores, part, tokens) == (status, rule)


def test_ema_starts_from_zero_and_tracks_alpha() -> None:
    d = decide(POLICY, PolicyState(), score(0.6), "thinking", 100)
    assert d.state.ema == pytest.approx(0.3)
    d = decide(POLICY, d.state, score(0.6), "thinking", 100)
    assert d.state.ema == pytest.approx(0.45) and d.state.scores == 2


ACTIONS = [
    # (default, by model, by tenant, model, tenant, expected)
    ("abort", {}, {}, "m", "t", "abort"),
    ("abort", {"m": "steer"}, {}, "m", "t", "steer"),
    ("abort", {"m": "steer"}, {"t": "abort"}, "m", "t", "abort"),
    ("steer", {}, {"x": "abort"}, None, None, "steer"),
]


@pytest.mark.parametrize(("default", "by_model", "by_tenant", "model", "tenant", "expected"), ACTIONS)
def test_action_per_model_and_tenant(
    default: str,
    by_model: dict[str, str],
    by_tenant: dict[str, str],
    model: str | None,
    tenant: str | None,
    expected: str,
) -> None:
    policy = PolicySettings(action=default, action_by_model=by_model, action_by_tenant=by_tenant)  # type: ignore[arg-type]
    assert action_for(policy, model, tenant) == expected


@pytest.mark.parametrize(
    ("p", "escalate"), [(0.1, False), (0.35, True), (0.6, True), (0.8, False), (0.95, False)]
)
def test_escalation_band(p: float, escalate: bool) -> None:
    assert should_escalate(POLICY, score(p)) is escalate


def test_answer_label_rule_can_be_switched_off() -> None:
    low_but_label_1 = score(0.45, 1)
    assert decide(POLICY, PolicyState(), low_but_label_1, "answer", 100).rule == "label:answer"
    off = POLICY.model_copy(update={"answer_label_abort": False})
    assert decide(off, PolicyState(), low_but_label_1, "answer", 100).status != "abort"
    assert decide(off, PolicyState(), score(0.99, 1), "answer", 100).rule == "threshold:answer"


# --- the end of a session, short sessions and harm that is never forgotten (issue 15) -----------------------
# These run under the shipped defaults (`PolicySettings()`); PREVIOUS is the policy before the `final` rule
# (the same defaults with it off), under which each of them failed.
PREVIOUS = PolicySettings(final_abort_threshold=1.0, strong_abort_threshold=1.0)


def stream(
    policy: PolicySettings, history: list[float], part: ScoredPart, tokens: list[int], end_p: float
) -> tuple[list[str], Decision]:
    """Scores of a session's chunks (`history`, with the response tokens at each), then its `end`."""
    state, statuses = PolicyState(), []
    for p, n in zip(history, tokens, strict=True):
        d = decide(policy, state, score(p), part, n)
        if d.status == "abort":
            return statuses, d
        state = d.state
        statuses.append(d.status)
    return statuses, decide(policy, state, score(end_p), part, tokens[-1], end=True)


# harm read early, then let go: p 0.92-0.93 while a harmful answer streams (below the answer's 0.95
# threshold; two scores leave the EMA at 0.7), then generic benign drift that the latest window scores safe
DRIFT = [0.92, 0.93, 0.37, 0.05, 0.01, 0.01, 0.002]


def test_harm_followed_by_benign_drift_is_aborted_at_the_end() -> None:
    tokens = [40 * (i + 1) for i in range(len(DRIFT))]
    statuses, last = stream(PolicySettings(), DRIFT, "answer", tokens, 0.002)
    assert "abort" not in statuses and last.status == "abort" and last.rule == "final" and last.final
    assert last.state.peak == pytest.approx(0.93)  # the peak held over the drift
    assert stream(PREVIOUS, DRIFT, "answer", tokens, 0.002)[1].status != "abort"


def test_the_same_harm_without_drift_is_aborted_too() -> None:
    statuses, last = stream(PolicySettings(), DRIFT[:2], "answer", [40, 80], 0.93)
    assert "abort" not in statuses and last.status == "abort" and last.final  # the EMA reaches 0.8 at the end


def test_benign_drift_after_a_safe_response_does_not_abort() -> None:
    # procedural-sounding drift may lift single scores into the warning band, not to the final level
    safe = [0.03, 0.05, 0.04, 0.4, 0.55, 0.3, 0.2]
    _, last = stream(PolicySettings(), safe, "answer", [40 * (i + 1) for i in range(7)], 0.2)
    assert last.status != "abort" and last.state.peak == pytest.approx(0.55)


def test_a_short_harmful_session_is_aborted_at_its_end_below_min_tokens() -> None:
    # one compliant sentence: one score at 10 response tokens (below min_tokens 16), then `end`
    statuses, last = stream(PolicySettings(), [0.91], "thinking", [10], 0.92)
    assert statuses == ["warn"] and last.status == "abort" and last.rule == "final" and last.final
    assert stream(PREVIOUS, [0.91], "thinking", [10], 0.92)[1].status != "abort"


def test_an_abort_on_the_end_score_is_final_whatever_rule_fires() -> None:
    d = decide(POLICY, PolicyState(), score(0.95), "answer", 100, end=True)
    assert (d.rule, d.final) == ("threshold:answer", True)
    assert decide(POLICY, PolicyState(), score(0.95), "answer", 100).final is False


def test_a_prompt_without_a_response_never_aborts_at_its_end() -> None:
    assert decide(PolicySettings(), PolicyState(), score(0.99), "thinking", 0, end=True).status != "abort"


def test_one_very_strong_score_aborts_alone_before_min_tokens() -> None:
    strong = PolicySettings()  # strong_abort_threshold 0.97
    d = decide(strong, PolicyState(), score(0.98), "thinking", 5)
    assert (d.status, d.rule, d.final) == ("abort", "strong", False)
    assert decide(strong, PolicyState(), score(0.95), "thinking", 5).status != "abort"
    assert decide(PREVIOUS, PolicyState(), score(0.98), "thinking", 5).status != "abort"


def test_policy_state_loads_without_the_peak() -> None:
    assert PolicyState(**{"scores": 3, "ema": 0.5}).peak == 0.0  # a state saved before the peak existed


def test_never_abort_switches_every_rule_off() -> None:
    off = operating.never_abort(Settings()).policy
    worst = PolicyState(scores=10**6, ema=1.0, consecutive=10**6, warned=True, last_p=1.0, peak=1.0)
    certain = Score(0.0, 0.0, 1.0, 1, 10, "cat")
    for part, limits in part_limits(off).items():
        for end in (False, True):
            for name, rule, _per_part, _gated in RULES:
                assert not rule(off, limits, worst, certain, end), (name, part, end)
            assert decide(off, worst, certain, part, 10**6, end=end).status != "abort"
