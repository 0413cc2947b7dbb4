"""The operating-point choice of `eval --sweep`: ceilings per set, most harmful sessions aborted."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor import operating
from monitor.report import Outcome
from monitor.settings import Settings


def _outcomes(harm_aborted: int, benign_aborted: int) -> list[Outcome]:
    harm = [Outcome(f"h{i}", "harm", 1.0, aborted=i < harm_aborted, before_answer=True) for i in range(10)]
    benign = [Outcome(f"b{i}", "benign", 0.0, aborted=i < benign_aborted) for i in range(50)]
    return harm + benign


def _rows() -> list[dict[str, object]]:
    points = operating.grid(Settings())[:3]
    # more aggressive settings abort more harm and more benign sessions
    return [operating.row(p, _outcomes(4 + 3 * i, i), 1.0) for i, p in enumerate(points)]


def test_grid_covers_every_knob_and_apply_sets_them() -> None:
    points = operating.grid(Settings())
    for k, knob in enumerate(operating.KNOBS):
        assert len({p[k] for p in points}) >= 2, knob
    t, a, e, c, m, alpha, label = points[-1]
    policy = operating.apply(Settings(), points[-1]).policy
    assert (policy.abort_threshold, policy.answer_abort_threshold, policy.ema_abort) == (t, a, e)
    assert (policy.consecutive, policy.min_tokens, policy.ema_alpha) == (c, m, alpha)
    assert policy.answer_label_abort is label
    assert policy.ema_release <= policy.ema_abort and policy.warn_threshold <= min(t, a)


def test_choose_maximises_aborted_harm_under_the_ceilings() -> None:
    rows = _rows()
    assert rows[1]["sets"]["benign"]["false_abort_rate"] == pytest.approx(0.02)  # type: ignore[index]
    assert operating.choose(rows, {"benign": 0.02}) is rows[1]  # rows[2] aborts more but 4 % of benign
    assert operating.choose(rows, {}) is rows[2]
    assert operating.choose(rows, {"benign": 0.0}) is rows[0]
    rows0 = [operating.row(operating.grid(Settings())[0], _outcomes(5, 3), 1.0)]
    assert operating.choose(rows0, {"benign": 0.01}) is None


def test_ceilings_name_real_sets_and_parse_strictly(tmp_path: Path) -> None:
    assert operating.parse_ceilings(["gsm8k-dev=0.01", "star-1-dev=0.02"]) == {
        "gsm8k-dev": 0.01,
        "star-1-dev": 0.02,
    }
    with pytest.raises(ValueError, match="SET=RATE"):
        operating.parse_ceilings(["gsm8k-dev"])
    with pytest.raises(ValueError, match="not evaluated"):
        operating.choose(_rows(), {"nosuchset": 0.1})
    rows = _rows()
    path = operating.plot(rows, operating.choose(rows, {"benign": 0.02}), {"benign": 0.02}, tmp_path)
    assert path.name == "operating_point.png" and path.stat().st_size > 1000
