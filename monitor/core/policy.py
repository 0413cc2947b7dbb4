"""The policy: a session's score history -> a verdict status and, when a rule fires, the one abort (or steer).

Pure and table-driven. Per part (thinking / answer) there are warn and abort thresholds on the harmful
probability and on the label; across re-scores an exponential moving average (EMA) of p_harmful with
hysteresis, a count of consecutive harmful (label 1) scores, and the session's peak p_harmful, which is
never forgotten: the embedded guard reads only the latest window, so harm it read early can drop out of
later scores (a recipe that degenerates into generic steps). Rules are tried in the order of `RULES`; the
first that fires names the abort's `rule`. The four gated rules wait until the response holds `min_tokens`;
`strong` and `final` only need some response (a prompt alone never aborts).

| rule              | gated | fires when                                                        |
|-------------------|-------|-------------------------------------------------------------------|
| threshold:<part>  | yes   | p_harmful >= the part's abort threshold                           |
| label:<part>      | yes   | the label reaches the part's abort label (answer: 1 unless        |
|                   |       | policy.answer_label_abort is off; thinking: -)                    |
| ema               | yes   | EMA of p_harmful >= policy.ema_abort                              |
| consecutive       | yes   | the last `policy.consecutive` scores all had label 1              |
| strong            | no    | one score's p_harmful >= policy.strong_abort_threshold            |
| final             | no    | the session ended (the score of its `end`) and its peak p_harmful |
|                   |       | >= policy.final_abort_threshold                                   |

At `end`: the `end` marker is scored like any chunk (the whole response), every rule is tried on it, and
an abort decided on it is *final* (`Decision.final`, the wire's `Abort.final`): the response has been
shown, so the serving stack retracts or redacts it. `final` is what lets short sessions (one or two scores,
below min_tokens, too few for the EMA or a run of labels) and sessions whose harm was followed by benign
drift still get their abort.

Adding a rule (each step has a test that fails without it):
1. its setting in `PolicySettings` (monitor/settings.py), with bounds and, if it must, an ordering check in
   `_ordered`; a value that switches it off;
2. any memory it needs as a `PolicyState` field with a default (the store loads missing fields as their
   defaults, so old saved sessions keep working);
3. its predicate and row in `RULES` and in the table above (gated or not);
4. `operating.never_abort` switches it off (tests/unit/test_policy.py tries every rule under it);
5. its knob in the sweep grid (`operating.Point`, `operating.grid`, `operating.apply`,
   `report.SWEEP_COLUMNS`).

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
    peak: float = 0.0  # highest p_harmful of the session so far: what the guard read is never forgotten


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
    final: bool = False  # the abort was decided on the session's `end`: retract what was shown


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


Rule = Callable[[PolicySettings, PartLimits, PolicyState, Score, bool], bool]


def _threshold(
    policy: PolicySettings, limits: PartLimits, state: PolicyState, score: Score, end: bool
) -> bool:
    return score.p_harmful >= limits.abort_p


def _label(policy: PolicySettings, limits: PartLimits, state: PolicyState, score: Score, end: bool) -> bool:
    return limits.abort_label is not None and score.label >= limits.abort_label


def _ema(policy: PolicySettings, limits: PartLimits, state: PolicyState, score: Score, end: bool) -> bool:
    return state.ema >= policy.ema_abort


def _consecutive(
    policy: PolicySettings, limits: PartLimits, state: PolicyState, score: Score, end: bool
) -> bool:
    return state.consecutive >= policy.consecutive


def _strong(policy: PolicySettings, limits: PartLimits, state: PolicyState, score: Score, end: bool) -> bool:
    return score.p_harmful >= policy.strong_abort_threshold


def _final(policy: PolicySettings, limits: PartLimits, state: PolicyState, score: Score, end: bool) -> bool:
    return end and state.peak >= policy.final_abort_threshold


RULES: tuple[tuple[str, Rule, bool, bool], ...] = (
    # (name, predicate, name carries the part, waits for min_tokens)
    ("threshold", _threshold, True, True),
    ("label", _label, True, True),
    ("ema", _ema, False, True),
    ("consecutive", _consecutive, False, True),
    ("strong", _strong, False, False),
    ("final", _final, False, False),
)


def decide(
    policy: PolicySettings,
    state: PolicyState,
    score: Score,
    part: ScoredPart,
    response_tokens: int,
    end: bool = False,
) -> Decision:
    """Fold one score into the policy state and say what it means; `end`: the score is of the session's
    `end` marker. The caller stops scoring a session once a decision is `abort`, so this never produces a
    second abort for the same session."""
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
        peak=max(state.peak, p),
    )
    for name, rule, per_part, gated in RULES:
        if response_tokens < (policy.min_tokens if gated else 1):
            continue
        if rule(policy, limits, new, score, end):
            return Decision(new, "abort", f"{name}:{part}" if per_part else name, final=end)
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
