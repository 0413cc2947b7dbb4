"""The operating-point choice of `eval --sweep`: ceilings per set, most harmful sessions aborted."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.evaluation import operating
from monitor.evaluation.report import Outcome
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
    t, a, e, c, m, alpha, label, final, strong = points[-1]
    policy = operating.apply(Settings(), points[-1]).policy
    assert (policy.abort_threshold, policy.answer_abort_threshold, policy.ema_abort) == (t, a, e)
    assert (policy.consecutive, policy.min_tokens, policy.ema_alpha) == (c, m, alpha)
    assert policy.answer_label_abort is label
    assert (policy.final_abort_threshold, policy.strong_abort_threshold) == (final, strong)
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


def _set_rows(per_point: dict[str, list[tuple[int, int]]]) -> list[dict[str, object]]:
    """Sweep rows from (aborted harmful, false aborts) per set and point; each set holds 10 harmful and 50
    safe sessions."""
    points = operating.grid(Settings())[: len(next(iter(per_point.values())))]
    rows = []
    for i, point in enumerate(points):
        outcomes = []
        for name, counts in per_point.items():
            harm, false = counts[i]
            outcomes += [Outcome(f"{name}h{k}", name, 1.0, aborted=k < harm) for k in range(10)]
            outcomes += [Outcome(f"{name}s{k}", name, 0.0, aborted=k < false) for k in range(50)]
        rows.append(operating.row(point, outcomes, 1.0))
    return rows


def test_sources_group_twins_and_base_sets() -> None:
    assert operating.source_of("gptfuzz-dev+composed") == operating.source_of("gptfuzz-dev") == "gptfuzz"
    assert operating.source_of("drift-base-dev") == operating.source_of("drift-dev+composed") == "drift"
    assert operating.source_of("star-1-dev") == "star-1"


def test_loso_measures_each_source_at_the_point_chosen_without_it(tmp_path: Path) -> None:
    # point 0: cautious everywhere; point 1: catches most harm but 4 % false aborts on "b";
    # point 2: catches all harm of "a" but none of "c" (a point tuned to one source)
    rows = _set_rows(
        {
            "a-dev": [(5, 0), (8, 0), (10, 0)],
            "b-dev": [(5, 0), (8, 2), (9, 0)],
            "c-dev": [(5, 0), (8, 0), (0, 0)],
        }
    )
    result = operating.loso(rows, {"b-dev": 0.02})
    assert result is not None and result["sources"] == ["a", "b", "c"]
    held = {h["source"]: h for h in result["held_out"]}
    point = {i: list(operating.point_of(r)) for i, r in enumerate(rows)}
    # without a (b's ceiling rules out point 1): point 0 (10 of 20) beats point 2 (9); a there: 5 of 10
    assert held["a"]["point"] == point[0] and held["a"]["recall"] == 0.5
    # without b (and so its ceiling): point 1 (16 of 20), which breaks b's ceiling when measured on b
    assert held["b"]["point"] == point[1] and held["b"]["recall"] == 0.8
    assert held["b"]["false_abort_rate"] == pytest.approx(0.04) and not held["b"]["within_ceilings"]
    # without c: point 2 (19 of 20), tuned to a and b, catches none of c
    assert held["c"]["point"] == point[2] and held["c"]["recall"] == 0.0
    # of the three, point 1 breaks a ceiling and point 2's worst source is 0 %: point 0 (worst 50 %) wins
    assert result["chosen"] == dict(zip(operating.KNOBS, operating.point_of(rows[0]), strict=True))
    assert [p["recall"] for p in result["per_source"]] == [0.5, 0.5, 0.5]
    # without ceilings the held-out choices are points 1 and 2, and point 1 (worst 80 %) wins
    lifted = operating.loso(rows, {})
    assert lifted is not None
    assert lifted["chosen"] == dict(zip(operating.KNOBS, operating.point_of(rows[1]), strict=True))
    per = {p["source"]: p for p in lifted["per_source"]}
    assert (per["a"]["recall"], per["c"]["recall"]) == (0.8, 0.8)
    assert operating.loso_plot(lifted, tmp_path).stat().st_size > 1000


def test_never_abort_and_every_grid_point_apply_cleanly() -> None:
    off = operating.never_abort(Settings()).policy
    assert off.final_abort_threshold > 1 and off.strong_abort_threshold > 1 and off.abort_threshold > 1
    previous = [p for p in operating.grid(Settings()) if p[7] == 1.0 and p[8] == 1.0]
    assert (0.9, 0.85, 0.8, 6, 16, 0.5, False, 1.0, 1.0) in previous  # the previous defaults stay in the grid


def test_a_ceiling_no_setting_meets_is_raised_to_the_lowest_rate_reached() -> None:
    rows = _set_rows({"a-dev": [(5, 2), (8, 3)], "b-dev": [(5, 0), (8, 1)]})
    assert operating.reachable(rows, {"a-dev": 0.01, "b-dev": 0.01}) == {"a-dev": 0.04, "b-dev": 0.01}
    result = operating.loso(rows, {"a-dev": 0.01})
    assert result is not None and result["ceilings"] == {"a-dev": 0.04}
    assert all(h["point"] is not None for h in result["held_out"])  # not "no point meets the ceilings"
