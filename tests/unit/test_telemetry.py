"""Every metric named in telemetry's docstring exists under that exact Prometheus name once recorded; a fresh
worker's /metrics, /ready and /live listen on telemetry.metrics_host and metrics_port only, and its /metrics
already shows the counters with known label values at 0."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import get_args

import pytest
from prometheus_client import REGISTRY, generate_latest
from pydantic import ValidationError

from monitor import telemetry
from monitor.messages import DeadLetterReason, Part
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


# A fresh process, as a worker is: telemetry.start() installs the meter provider once per process, and the
# test above has already recorded into this one.
_FRESH_WORKER = """
import sys
from monitor import telemetry
from monitor.settings import load_settings

host, port = sys.argv[1], int(sys.argv[2])
server = telemetry.start(load_settings(telemetry={"metrics_host": host, "metrics_port": port}))
print(server.server_address[0], server.server_address[1], flush=True)
sys.stdin.read()  # serve until the test closes stdin
"""


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def fresh_worker() -> Iterator[tuple[str, int]]:
    """A process that started telemetry on 127.0.0.2 (a loopback address that is not 127.0.0.1)."""
    host = "127.0.0.2"
    port = _free_port(host)
    process = subprocess.Popen(
        [sys.executable, "-c", _FRESH_WORKER, host, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdin is not None
    try:
        bound = process.stdout.readline().split()
        assert bound == [host, str(port)], bound
        yield host, port
    finally:
        process.stdin.close()
        process.wait(timeout=10)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_endpoints_listen_on_the_configured_host_only(fresh_worker: tuple[str, int]) -> None:
    host, port = fresh_worker
    assert _get(f"http://{host}:{port}/live") == (200, "ok\n")
    assert _get(f"http://{host}:{port}/ready")[0] == 503  # nothing reported up in this process
    status, text = _get(f"http://{host}:{port}/metrics")
    assert status == 200 and "# HELP" in text
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1", "::", "::1", "localhost", "metrics.internal"])
def test_metrics_host_takes_an_address_or_a_host_name(host: str) -> None:
    assert TelemetrySettings(metrics_host=host).metrics_host == host
    assert TelemetrySettings().metrics_host == "0.0.0.0"


@pytest.mark.parametrize("host", ["", "not a host", "http://127.0.0.1", "127.0.0.1:9464", "-x.example"])
def test_metrics_host_refuses_what_is_no_address(host: str) -> None:
    with pytest.raises(ValidationError, match="metrics_host"):
        TelemetrySettings(metrics_host=host)


def test_a_fresh_scrape_shows_the_known_counters_at_zero(fresh_worker: tuple[str, int]) -> None:
    host, port = fresh_worker
    status, text = _get(f"http://{host}:{port}/metrics")
    assert status == 200
    expected = {
        "qta_monitor_chunks_total": ("part", get_args(Part)),
        "qta_monitor_verdicts_total": ("status", ("ok", "warn", "abort")),
        "qta_monitor_dead_letters_total": ("reason", get_args(DeadLetterReason)),
        "qta_monitor_unavailable_total": ("service", ("kafka", "redis")),
        "qta_monitor_produce_errors_total": ("error", ("timeout",)),
        "qta_monitor_aborts_repeated_total": ("action", ("abort", "steer")),
    }
    assert re.search(r"^qta_monitor_sessions_restarted_total(?:{[^}]*})? 0\.0$", text, re.M), text[-2000:]
    assert len(telemetry.ZEROED) == len(expected)
    assert {"gap", "bad_seq", "no_question", "undecodable"} <= set(get_args(DeadLetterReason))
    for name, (label, values) in expected.items():
        for value in values:
            series = re.compile(rf'^{name}{{(?:[^}}]*,)?{label}="{value}"(?:,[^}}]*)?}} (\S+)$', re.M)
            found = series.findall(text)
            assert found == ["0.0"], (name, value, found)
    # Only the series of known values: what a worker learns as it runs (an error's type) comes later.
    assert len(re.findall(r"^qta_monitor_produce_errors_total{", text, flags=re.M)) == 1
