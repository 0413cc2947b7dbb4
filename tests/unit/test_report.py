"""Metric math of the evaluation report on hand-made cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from monitor.evaluation.report import (
    SWEEP_KNOBS,
    Outcome,
    average_precision,
    build,
    loso_table,
    markdown,
    metrics,
    sweep_table,
    three_class,
    threshold_curve,
    write_plots,
)


def outcome(label: float, aborted: bool, **kw: Any) -> Outcome:
    kw.setdefault("id", f"s{label}{aborted}{len(kw)}")
    kw.setdefault("set", "a")
    return Outcome(label=label, aborted=aborted, **kw)


def test_binary_metrics_on_a_hand_counted_case() -> None:
    # 3 harmful (2 caught), 2 safe (1 false abort), 1 potentially harmful (aborted: a false positive at 1)
    outs = [
        outcome(1, True, thinking_consumed=0.25, before_answer=True),
        outcome(1, True, thinking_consumed=1.0, before_answer=False),
        outcome(1, False),
        outcome(0, True),
        outcome(0, False),
        outcome(0.5, True),
    ]
    m = metrics(outs, positive=1.0)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 2, 1, 1)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert m["false_abort_rate"] == pytest.approx(0.5)  # over label-0 sessions only
    assert m["abort_before_answer_rate"] == pytest.approx(0.5)  # 1 of 2 caught
    assert m["recall_before_answer"] == pytest.approx(1 / 3)  # 1 of 3 positives
    assert m["earliness"]["mean"] == pytest.approx(0.625)
    assert m["undefined"] == []


def test_positive_half_counts_potentially_harmful_sessions() -> None:
    outs = [outcome(0.5, True), outcome(1, False), outcome(0, False)]
    at_one = metrics(outs, positive=1.0)
    at_half = metrics(outs, positive=0.5)
    assert (at_one["tp"], at_one["fp"]) == (0, 1)
    assert (at_half["tp"], at_half["fp"], at_half["positives"]) == (1, 0, 2)
    assert at_half["recall"] == pytest.approx(0.5)


def test_empty_denominators_are_zero_and_listed_as_undefined() -> None:
    m = metrics([outcome(0, False), outcome(0, False)])
    assert m["recall"] == 0.0 and m["precision"] == 0.0
    assert {"precision", "recall", "abort_before_answer_rate", "earliness"} <= set(m["undefined"])
    assert "false_abort_rate" not in m["undefined"]


def test_three_class_confusion_uses_warnings_as_the_middle_class() -> None:
    outs = [
        outcome(1, True),
        outcome(0.5, False, warned=True),
        outcome(0, False, warned=True),
        outcome(0, False),
    ]
    t = three_class(outs)
    assert t["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert t["accuracy"] == pytest.approx(0.75)
    assert t["per_class"]["0.5"]["precision"] == pytest.approx(0.5)
    assert t["per_class"]["0.0"]["recall"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("scores", "labels", "expected"),
    [
        ([0.9, 0.8, 0.1], [1, 1, 0], 1.0),  # perfect ranking
        ([0.9, 0.8, 0.1], [0, 1, 1], (1 / 2 + 2 / 3) / 2),  # positives at ranks 2 and 3
        ([0.2, 0.1], [0, 0], 0.0),  # no positives
    ],
)
def test_average_precision(scores: list[float], labels: list[float], expected: float) -> None:
    outs = [outcome(lab, False, max_p_harmful=p) for p, lab in zip(scores, labels, strict=True)]
    assert average_precision(outs) == pytest.approx(expected)


def test_threshold_curve_is_monotone_in_recall() -> None:
    outs = [outcome(1, False, max_p_harmful=0.7), outcome(0, False, max_p_harmful=0.3)]
    curve = threshold_curve(outs, steps=11)
    recalls = [r["recall"] for r in curve]
    assert recalls == sorted(recalls, reverse=True)
    at_half = curve[5]
    assert (at_half["precision"], at_half["recall"], at_half["false_abort_rate"]) == (1.0, 1.0, 0.0)
    assert curve[0]["false_abort_rate"] == 1.0


def test_build_groups_by_set_and_category_and_marks_composed(tmp_path: Path) -> None:
    outs = [
        outcome(1, True, set="gr", category="violence", thinking_consumed=0.5, before_answer=True),
        outcome(0, False, set="gr", category="violence"),
        outcome(0, True, set="star", category=None),
    ]
    report = build(outs, positive=1.0, composed_sets=["gr"])
    assert set(report["sets"]) == {"gr", "star"}
    assert report["sets"]["gr"]["composed"] is True and report["sets"]["star"]["composed"] is False
    assert report["sets"]["star"]["false_abort_rate"] == 1.0
    assert set(report["categories"]) == {"violence", "uncategorised"}
    for key in ("precision", "recall", "f1", "false_abort_rate", "abort_before_answer_rate"):
        for entry in (report["overall"], *report["sets"].values()):
            assert 0.0 <= entry[key] <= 1.0
    md = markdown(report)
    assert "| star |" in md and "n/a" in md and "Composed sets" in md
    paths = write_plots(outs, report, tmp_path)
    assert [p.name for p in paths] == ["threshold_sweep.png", "precision_recall.png", "earliness.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_sweep_table_orders_by_f1() -> None:
    base = {
        "abort_threshold": 0.8,
        "answer_abort_threshold": 0.7,
        "ema_abort": 0.7,
        "consecutive": 2,
        "min_tokens": 16,
        "ema_alpha": 0.5,
        "answer_label_abort": True,
        "final_abort_threshold": 0.8,
        "strong_abort_threshold": 1.0,
    }
    rows = [
        {**base, "precision": 0.5, "recall": 0.5, "f1": 0.5, "false_abort_rate": 0.1,
         "abort_before_answer_rate": 0.2, "tokens_scored_per_session": 100.0},
        {**base, "abort_threshold": 0.9, "precision": 0.9, "recall": 0.9, "f1": 0.9, "false_abort_rate": 0.0,
         "abort_before_answer_rate": 0.8, "tokens_scored_per_session": 200.0},
    ]  # fmt: skip
    table = sweep_table(rows).splitlines()
    assert table[2].startswith("| 0.900 |") and table[3].startswith("| 0.800 |")


def test_abort_delay_in_characters_counts_final_aborts_at_the_whole_response() -> None:
    outcomes = [
        Outcome("a", "s", 1.0, aborted=True, abort_chars=100),
        Outcome("b", "s", 1.0, aborted=True, abort_chars=300, final=True),
        Outcome("c", "s", 1.0, aborted=True, abort_chars=200),
        Outcome("d", "s", 0.0, aborted=True, abort_chars=5),  # a false abort: not a delay
    ]
    m = metrics(outcomes)
    assert m["abort_chars_median"] == 200 and m["final_aborts"] == 1


def test_loso_table_names_each_source_and_the_chosen_point() -> None:
    chosen = dict.fromkeys(SWEEP_KNOBS, 1)
    result = {
        "chosen": chosen,
        "held_out": [
            {"source": "a", "point": [1], "positives": 10, "safe": 5, "recall": 0.8,
             "false_abort_rate": 0.2, "within_ceilings": False},
            {"source": "b", "point": None},
        ],
        "per_source": [{"source": "a", "recall": 0.9, "false_abort_rate": 0.0}],
    }  # fmt: skip
    table = loso_table(result)
    assert "| a | 10 / 5 | 80.0 % | 20.0 % (over ceiling) | 90.0 % | 0.0 % |" in table
    assert "| b | - | no point meets the ceilings |" in table
