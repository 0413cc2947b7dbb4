"""The Grafana dashboard and the alert rules against the code and a real Prometheus: every metric they name
is defined in monitor/telemetry.py, every PromQL expression of the dashboard returns data, without error,
from a real Prometheus (scripts/prometheus.sh) scraping the real OpenTelemetry exporter of
monitor.telemetry, and that Prometheus loads dashboards/alerts.yml and evaluates every rule without error."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "qta-monitor.json"
PROMETHEUS = "http://127.0.0.1:19090"
_METRIC = re.compile(r"\bqta_monitor_[a-z_]+")
_DEFINED = re.compile(r"create_\w+\(\s*\"(qta_monitor_[a-z_]+)\"")

# Records a value on every instrument with the labels the worker uses, again every 0.2 s, so that rate()
# over the scrapes sees both series and increases.
_EXPORTER = textwrap.dedent(
    """
    import sys, time
    from monitor import telemetry as t
    from monitor.settings import load_settings
    t.start(load_settings(telemetry={"metrics_port": int(sys.argv[1])}))
    print("ready", flush=True)
    while True:
        for part in ("question", "thinking", "answer", "end"):
            t.chunks.add(3, {"part": part})
        t.score_seconds.record(0.04, {"guard": "minilm"})
        t.batch_size.record(5, {"guard": "minilm"})
        t.chunk_to_verdict_seconds.record(0.12, {"status": "ok"})
        t.chunk_to_verdict_seconds.record(0.3, {"status": "abort"})
        t.verdicts.add(2, {"status": "ok"})
        t.aborts.add(1, {"rule": "threshold", "category": "weapons", "guard": "minilm", "action": "abort"})
        t.dead_letters.add(1, {"reason": "undecodable"})
        t.escalations.add(1, {"guard": "judge"})
        t.unavailable.add(1, {"service": "redis"})
        t.sessions_live.set(4)
        t.pending_sessions.set(1)
        t.partitions_paused.set(0)
        t.produce_errors.add(1, {"error": "timeout"})
        t.set_consumer_lag({("qta.chunks", 0): 12, ("qta.chunks", 1): 3})
        time.sleep(0.2)
    """
)


def _exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def _defined_metrics() -> set[str]:
    return set(_DEFINED.findall((ROOT / "monitor" / "telemetry.py").read_text()))


def _base_name(series: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if series.endswith(suffix) and series.removesuffix(suffix) in _defined_metrics():
            return series.removesuffix(suffix)
    return series


def test_every_dashboard_metric_is_defined_in_telemetry() -> None:
    named = {_base_name(m) for expr in _exprs() for m in _METRIC.findall(expr)}
    assert named, "the dashboard names no metric"
    assert named <= _defined_metrics(), f"not in monitor/telemetry.py: {sorted(named - _defined_metrics())}"


def test_the_design_metrics_are_on_the_dashboard() -> None:
    named = {_base_name(m) for expr in _exprs() for m in _METRIC.findall(expr)}
    design = {
        "qta_monitor_chunks_total",
        "qta_monitor_score_seconds",
        "qta_monitor_batch_size",
        "qta_monitor_chunk_to_verdict_seconds",
        "qta_monitor_aborts_total",
        "qta_monitor_dead_letters_total",
        "qta_monitor_sessions_live",
    }
    assert design <= named


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _query(expr: str) -> dict[str, Any]:
    body: dict[str, Any] = _get(f"{PROMETHEUS}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
    return body


@pytest.fixture
def exporter() -> Iterator[int]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _EXPORTER, str(port)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield port
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def prometheus(exporter: int, tmp_path: Path) -> Iterator[str]:
    config = yaml.safe_load((ROOT / "dashboards" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    # The copy lives in tmp_path; rule files are relative to the config file, so point at the repo's.
    config["rule_files"] = [str(ROOT / "dashboards" / name) for name in config["rule_files"]]
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [f"127.0.0.1:{exporter}"]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    subprocess.run(["bash", "scripts/prometheus.sh", "start", str(path)], cwd=ROOT, check=True, timeout=120)
    try:
        yield PROMETHEUS
    finally:
        subprocess.run(["bash", "scripts/prometheus.sh", "stop"], cwd=ROOT, check=False, timeout=60)


@pytest.mark.integration
def test_every_dashboard_query_returns_data_from_a_real_prometheus(prometheus: str) -> None:
    exprs = _exprs()
    missing: dict[str, str] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        missing = {}
        for expr in exprs:
            body = _query(expr)
            assert body["status"] == "success", f"{expr}: {body}"
            if not body["data"]["result"]:
                missing[expr] = "no data"
        if not missing:
            break
        time.sleep(1)
    assert not missing, f"no data after 60 s: {missing}"
    # The per-label panels see the label values the exporter recorded.
    by_part = _query("sum by (part) (qta_monitor_chunks_total)")["data"]["result"]
    assert {r["metric"]["part"] for r in by_part} == {"question", "thinking", "answer", "end"}


@pytest.mark.integration
def test_a_query_on_a_missing_metric_would_be_caught(prometheus: str) -> None:
    time.sleep(2)
    assert _query("sum(rate(qta_monitor_no_such_metric_total[1m]))")["data"]["result"] == []


@pytest.mark.integration
def test_the_alert_rules_load_and_evaluate_in_a_real_prometheus(prometheus: str) -> None:
    wanted = {
        rule.get("alert") or rule["record"]
        for group in yaml.safe_load((ROOT / "dashboards" / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    rules: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = _get(f"{PROMETHEUS}/api/v1/rules")
        assert body["status"] == "success", body
        rules = {r["name"]: r for g in body["data"]["groups"] for r in g["rules"]}
        if set(rules) >= wanted and all(rules[name]["health"] == "ok" for name in wanted):
            break
        time.sleep(1)
    assert set(rules) >= wanted, f"not loaded: {sorted(wanted - set(rules))}"
    unhealthy = {n: (r["health"], r.get("lastError")) for n, r in rules.items() if r["health"] != "ok"}
    assert not unhealthy, unhealthy
    # The recording rule over the exporter's abort latencies yields a value (0.3 s each: none too slow).
    deadline = time.monotonic() + 30
    result: list[Any] = []
    while time.monotonic() < deadline and not result:
        result = _query("qta_monitor:abort_latency_slow_ratio:rate5m")["data"]["result"]
        time.sleep(1)
    assert result and float(result[0]["value"][1]) == 0.0
