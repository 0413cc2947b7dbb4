"""Every metric named in telemetry's docstring exists under that exact Prometheus name once recorded."""

from __future__ import annotations

import re

from prometheus_client import REGISTRY, generate_latest

from monitor import telemetry
from monitor.settings import Settings, TelemetrySettings


def test_documented_metrics_are_exported_under_their_names() -> None:
    telemetry.start(Settings(telemetry=TelemetrySettings(metrics_port=0)))
    telemetry.chunks.add(1, {"part": "thinking"})
    telemetry.score_seconds.record(0.01, {"guard": "g"})
    telemetry.batch_size.record(3, {"guard": "g"})
    telemetry.chunk_to_verdict_seconds.record(0.2, {"status": "abort"})
    telemetry.verdicts.add(1, {"status": "ok"})
    telemetry.aborts.add(1, {"rule": "ema", "category": "none", "guard": "g", "action": "abort"})
    telemetry.dead_letters.add(1, {"reason": "gap"})
    telemetry.escalations.add(1, {"guard": "judge"})
    telemetry.sessions_live.set(2)
    telemetry.pending_sessions.set(1)
    telemetry.partitions_paused.set(0)
    telemetry.unavailable.add(1, {"service": "redis"})
    telemetry.produce_errors.add(1, {"error": "timeout"})
    telemetry.engine_prompt_tokens.add(40, {"guard": "judge"})
    telemetry.engine_cached_tokens.add(32, {"guard": "judge"})
    telemetry.set_consumer_lag({("qta.chunks", 0): 7, ("qta.chunks", 1): 0})

    exported = generate_latest(REGISTRY).decode()
    documented = re.findall(r"^\s+(qta_monitor_\w+)", telemetry.__doc__ or "", flags=re.M)
    assert len(documented) == 16
    for name in documented:
        assert re.search(rf"^{name}(_bucket|_count|_sum)?{{", exported, flags=re.M), name
    assert 'qta_monitor_aborts_total{action="abort",category="none",guard="g"' in exported
    lag = re.compile(r'^qta_monitor_consumer_lag\{[^}]*partition="(\d)",topic="qta.chunks"\} (\S+)$', re.M)
    assert dict(lag.findall(exported)) == {"0": "7.0", "1": "0.0"}
    telemetry.set_consumer_lag({("qta.chunks", 1): 3})  # partition 0 revoked: no longer reported
    exported = generate_latest(REGISTRY).decode()
    assert dict(lag.findall(exported)) == {"1": "3.0"}
    for name in (
        "qta_monitor_chunks_total",
        "qta_monitor_score_seconds",
        "qta_monitor_batch_size",
        "qta_monitor_chunk_to_verdict_seconds",
        "qta_monitor_aborts_total",
        "qta_monitor_dead_letters_total",
        "qta_monitor_sessions_live",
    ):  # DESIGN.md's list
        assert name in documented
