"""The policy, table-driven: each row is a score history and what the last score must lead to."""

from __future__ import annotations

import pytest

from monitor.guards.base import Score
from monitor.policy import PolicyState, ScoredPart, action_for, decide, should_escalate
from monitor.settings import PolicySettings

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
