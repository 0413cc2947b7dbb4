"""`qta-monitor eval --through-kafka`: the same sessions through the real broker, Redis and a
`qta-monitor serve` subprocess, read back and reported like the in-process replay."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from monitor.evaluation.runner import run_eval
from monitor.settings import Settings

SAMPLES = Path(__file__).resolve().parents[2] / "monitor" / "samples" / "sessions.jsonl"
KEYS = ("precision", "recall", "f1", "false_abort_rate", "abort_before_answer_rate")


def test_eval_through_kafka_scores_every_session_like_the_in_process_replay(
    services: None, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    common = {"positive": 1.0, "chunk_chars": 128, "limit": 4, "sweep": False}
    assert run_eval(settings, [SAMPLES], None, tmp_path / "k", through_kafka=True, **common) == 0  # type: ignore[arg-type]
    report = json.loads((tmp_path / "k" / "report.json").read_text())
    kafka = report["overall"]
    assert kafka["sessions"] == 4 and "broker" in report["run"]["mode"]
    assert all(0.0 <= kafka[k] <= 1.0 for k in KEYS)
    assert all(0.0 <= report["sets"]["sessions"][k] <= 1.0 for k in KEYS)
    # every session came back scored by the worker: at least one verdict each, guard tokens counted
    assert kafka["scores_per_session_mean"] >= 1.0
    assert kafka["tokens_scored_per_session"]["median"] > 0
    assert {p.name for p in (tmp_path / "k").glob("*.png")} == set(report["plots"])

    assert run_eval(settings, [SAMPLES], None, tmp_path / "p", through_kafka=False, **common) == 0  # type: ignore[arg-type]
    local = json.loads((tmp_path / "p" / "report.json").read_text())["overall"]
    # same guard, policy and scheduler; only the timing differs, so the abort decisions match
    assert (kafka["tp"], kafka["fp"], kafka["positives"]) == (local["tp"], local["fp"], local["positives"])
