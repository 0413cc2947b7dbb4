"""The policy: a session's score history -> a verdict status and, when a rule fires, the one abort (or steer).

Pure and table-driven. Per part (thinking / answer) there are warn and abort thresholds on the harmful
probability and on the label; across re-scores an exponential moving average (EMA) of p_harmful with
hysteresis, and a count of consecutive harmful (label 1) scores. No abort fires before the response holds
`min_tokens`. Rules are tried in the order of `RULES`; the first that fires names the abort's `rule`.

| rule              | fires when                                                        |
|-------------------|-------------------------------------------------------------------|
| threshold:<part>  | p_harmful >= the part's abort threshold                           |
| label:<part>      | the label reaches the part's abort label (answer: 1 unless          |
|                   | policy.answer_label_abort is off; thinking: -)                    |
| ema               | EMA of p_harmful >= policy.ema_abort                              |
| consecutive       | the last `policy.consecutive` scores all had label 1              |

Warning (hysteresis): a score with p_harmful >= warn_threshold or a non-zero label raises the warning; it
stays raised while the EMA is >= ema_release, and clears only below it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from monitor.guards.base import Label, Score
from monitor.messages import Action, Part
from monitor.settings import PolicySettings

Status = Literal["ok", "warn", "abort"]
ScoredPart = Literal["thinking", "answer"]


@dataclass(frozen=True, slots=True)
class PolicyState:
    """What the policy remembers about one session between scores."""

    scores: int = 0
    ema: float = 0.0  # starts at 0: a session is presumed safe until scores say otherwise
    consecutive: int = 0  # label-1 scores in a row
    warned: bool = False
    last_p: float = 0.0


@dataclass(frozen=True, slots=True)
class PartLimits:
    warn_p: float
    abort_p: float
    abort_label: Label | None  # None: the label alone never aborts in this part


@dataclass(frozen=True, slots=True)
class Decision:
    state: PolicyState
    status: Status
    rule: str | None = None  # set only when status == "abort"


def part_limits(policy: PolicySettings) -> dict[ScoredPart, PartLimits]:
    """The per-part table. The answer is what users see, so it aborts earlier and on a harmful label."""
    return {
        "thinking": PartLimits(policy.warn_threshold, policy.abort_threshold, None),
        "answer": PartLimits(
            policy.warn_threshold, policy.answer_abort_threshold, 1 if policy.answer_label_abort else None
        ),
    }


def scored_part(part: Part, has_answer: bool) -> ScoredPart:
    """Which row of the table applies: `end` and `question` fall back to what the response holds."""
    if part == "answer" or (part == "end" and has_answer):
        return "answer"
    return "thinking"


Rule = Callable[[PolicySettings, PartLimits, PolicyState, Score], bool]


def _threshold(policy: PolicySettings, limits: PartLimits, state: PolicyState, score: Score) -> bool:
    return score.p_harmful >= limits.abort_p


def _label(policy: PolicySettings, limits: PartLimits, state: PolicyState, score: Score) -> bool:
    return limits.abort_label is not None and score.label >= limits.abort_label


def _ema(policy: PolicySettings, limits: PartLimits, state: PolicyState, score: Score) -> bool:
    return state.ema >= policy.ema_abort


def _consecutive(policy: PolicySettings, limits: PartLimits, state: PolicyState, score: Score) -> bool:
    return state.consecutive >= policy.consecutive


RULES: tuple[tuple[str, Rule, bool], ...] = (
    # (name, predicate, name carries the part)
    ("threshold", _threshold, True),
    ("label", _label, True),
    ("ema", _ema, False),
    ("consecutive", _consecutive, False),
)


def decide(
    policy: PolicySettings, state: PolicyState, score: Score, part: ScoredPart, response_tokens: int
) -> Decision:
    """Fold one score into the policy state and say what it means. The caller stops scoring a session
    once a decision is `abort`, so this never produces a second abort for the same session."""
    limits = part_limits(policy)[part]
    p = score.p_harmful
    ema = p * policy.ema_alpha + state.ema * (1 - policy.ema_alpha)
    alarming = p >= limits.warn_p or score.label != 0
    warned = alarming or (state.warned and ema >= policy.ema_release)
    new = replace(
        state,
        scores=state.scores + 1,
        ema=ema,
        consecutive=state.consecutive + 1 if score.label == 1 else 0,
        warned=warned,
        last_p=p,
    )
    if response_tokens >= policy.min_tokens:
        for name, rule, per_part in RULES:
            if rule(policy, limits, new, score):
                return Decision(new, "abort", f"{name}:{part}" if per_part else name)
    return Decision(new, "warn" if warned else "ok")


def should_escalate(policy: PolicySettings, score: Score) -> bool:
    """A first-guard score in the uncertain band goes to the second guard, when one is configured."""
    low, high = policy.escalate_band
    return low <= score.p_harmful < high


def action_for(policy: PolicySettings, model: str | None, tenant: str | None) -> Action:
    """Abort or steer: a tenant's setting beats a model's, which beats the default."""
    if tenant is not None and tenant in policy.action_by_tenant:
        return policy.action_by_tenant[tenant]
    if model is not None and model in policy.action_by_model:
        return policy.action_by_model[model]
    return policy.action


def urgency(policy: PolicySettings, state: PolicyState) -> float:
    """How close a session is to the abort threshold (0 = at it); the scheduler scores small values first."""
    return max(0.0, policy.abort_threshold - max(state.last_p, state.ema))
