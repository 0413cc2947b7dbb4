"""The demo's pure parts: settings handed to a worker subprocess through env, the live line format, the
closing summary, and the bundled sample sessions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from monitor.demo import outcomes, settings_env, summary
from monitor.evaluation.datasets import Sample, load_jsonl
from monitor.evaluation.replay import Replayed, describe, session_ids
from monitor.evaluation.sessions import session_chunks
from monitor.messages import Abort, DeadLetter, Verdict
from monitor.settings import Settings, load_settings
from monitor.watch import format_event

SAMPLES = Path(__file__).resolve().parents[2] / "monitor" / "samples" / "sessions.jsonl"


def _verdict(sid: str = "s-1", seq: int = 5, p: float = 0.9, **kw: object) -> Verdict:
    base: dict[str, object] = dict(
        event_id=f"verdict-{sid}-{seq}",
        session_id=sid,
        seq=seq,
        part="thinking",
        tokens=40,
        tokens_read=40,
        p_safe=1 - p,
        p_potential=0.0,
        p_harmful=p,
        label=1 if p > 0.5 else 0,
        guard="minilm",
        ema=p,
        chunk_ts=1.0,
    )
    return Verdict.model_validate(base | kw)


def _abort(sid: str = "s-1", seq: int = 5) -> Abort:
    return Abort(
        event_id=f"abort-{sid}",
        session_id=sid,
        seq=seq,
        part="thinking",
        label=1,
        score=0.97,
        rule="threshold:thinking",
        guard="minilm",
        category="weapons",
        chunk_ts=1.0,
    )


def test_settings_survive_the_trip_through_env(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(
        kafka={"bootstrap": "k:1", "sasl_password": "s3cret", "tls_ca": "/etc/ca.pem"},
        images={"allowed_formats": ["PNG"], "allow_http": True},
        policy={"action_by_model": {"m": "steer"}, "escalate_band": [0.2, 0.7]},
        guard={"escalate_to": "judge"},
        telemetry={"metrics_port": 0},
    )
    env = settings_env(settings)
    assert env["MONITOR_KAFKA__SASL_PASSWORD"] == "s3cret"  # the real secret, not the mask
    assert "MONITOR_GUARD__PATH" not in env  # None stays unset
    for key in list(os.environ):
        if key.startswith("MONITOR_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert Settings() == settings


def test_every_event_is_one_line_naming_its_session() -> None:
    dead = DeadLetter(
        reason="bad_seq", error="seq: too small", session_id="s-9", topic="c", partition=2, offset=7,
        raw_b64="", raw_truncated=False,
    )  # fmt: skip
    lines = [format_event(_verdict()), format_event(_abort()), format_event(dead)]
    for line, sid in zip(lines, ["s-1", "s-1", "s-9"], strict=True):
        assert "\n" not in line and sid in line
    assert "p_harmful 0.90" in lines[0] and "seq   5" in lines[0]
    assert lines[1].split()[1] == "ABORT" and "threshold:thinking" in lines[1] and "weapons" in lines[1]
    assert "bad_seq" in lines[2] and "c[2]@7" in lines[2]


def _replayed(sample: Sample, sid: str, abort: Abort | None) -> Replayed:
    plan = tuple(session_chunks(sample, sid, 10))
    return Replayed(sid, sample, plan, plan[-1].chunk.seq, abort)


def test_the_summary_says_where_each_abort_fired() -> None:
    harmful = Sample("h", "q?", "a" * 40, "no.", 1.0, harm_start=10)
    safe = Sample("s", "q?", "b" * 40, "sure.", 0.0)
    abort = _abort("h-r", seq=3)  # question, 2 thinking chunks of 10: 20 of 40 chars seen
    replayed = [_replayed(harmful, "h-r", None), _replayed(safe, "s-r", None)]
    verdicts = {"h-r": [_verdict("h-r", 3, 0.97)], "s-r": [_verdict("s-r", 7, 0.1)]}
    table = summary(replayed, outcomes(replayed, verdicts, {"h-r": abort}), {"h-r": abort})
    lines = table.splitlines()
    row_h = next(line for line in lines if line.startswith("h "))
    row_s = next(line for line in lines if line.startswith("s "))
    assert row_h.split()[:6] == ["h", "harmful", "yes", "3/thinking", "50%", "yes"]
    assert row_s.split()[:4] == ["s", "safe", "no", "-"]
    assert lines[-1] == "2 sessions: 1/1 harmful aborted (1 before their answer began), 0/1 safe aborted"


def test_replayed_session_ids_are_new_per_run() -> None:
    samples = load_jsonl(SAMPLES)[:3]
    first, second = session_ids(samples, "r1"), session_ids(samples, "r2")
    assert len(set(first)) == 3 and not set(first) & set(second)
    r = _replayed(samples[0], first[0], _abort(first[0], seq=4))
    assert "stopped by the abort at seq 4" in describe(r)


def test_the_bundled_samples_cover_every_kind_of_session() -> None:
    samples = load_jsonl(SAMPLES)
    assert 12 <= len(samples) <= 20
    assert len({s.id for s in samples}) == len(samples)
    harmful = [s for s in samples if s.label == 1.0]
    safe = [s for s in samples if s.label == 0.0]
    assert len(harmful) >= 5 and len(safe) >= 5
    for s in harmful:
        assert s.harm_start is not None and 0 <= s.harm_start < len(s.thinking), s.id
        assert len(s.thinking) - s.harm_start >= 200, s.id  # enough harm to score before the answer
    thinking_only = [s for s in harmful if s.id.startswith("think-")]
    refusals = [s for s in safe if s.category is not None]  # safe sessions that name a harm
    assert len(thinking_only) >= 4 and len(refusals) >= 3
    assert all("can't" in s.answer or "cannot" in s.answer for s in thinking_only)
    assert all(path.is_file() for s in samples for path in s.images)
    assert any(s.images for s in samples)
