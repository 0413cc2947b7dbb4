"""dashboards/alerts.yml with promtool (Debian's prometheus package, installed by scripts/install.sh): the
rules are valid, their unit tests (dashboards/alerts.test.yml) pass, every metric they name is one the code
exports, and the Prometheus config that compose and the dashboard test use loads them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
ALERTS = DASHBOARDS / "alerts.yml"
_DEFINED = re.compile(r"create_\w+\(\s*\"(qta_monitor_[a-z_]+)\"")
_METRIC = re.compile(r"\b(qta_monitor_[a-z_]+|up)\b(?=\s*[{\[)])")
EXPECTED_ALERTS = {
    "QtaMonitorWorkerDown",
    "QtaMonitorNoWorkers",
    "QtaMonitorConsumerLagGrowing",
    "QtaMonitorScoringStalled",
    "QtaMonitorDeadLetterRate",
    "QtaMonitorAbortRateSpike",
    "QtaMonitorAbortLatencySLOFastBurn",
    "QtaMonitorAbortLatencySLOSlowBurn",
}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=DASHBOARDS, capture_output=True, text=True, timeout=120, check=False
    )


def _rules() -> list[dict[str, str]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_accepts_the_rules() -> None:
    done = _promtool("check", "rules", "alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rules_unit_tests_pass() -> None:
    done = _promtool("test", "rules", "alerts.test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_the_issue_asks_for_exists_and_has_a_unit_test() -> None:
    alerts = {rule["alert"] for rule in _rules() if "alert" in rule}
    assert alerts == EXPECTED_ALERTS
    tested = {
        case["alertname"]
        for test in yaml.safe_load((DASHBOARDS / "alerts.test.yml").read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert tested == EXPECTED_ALERTS  # each one is seen firing at least once


def test_the_rules_name_only_metrics_the_code_exports() -> None:
    defined = set(_DEFINED.findall((ROOT / "monitor" / "telemetry.py").read_text()))
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    named = set()
    for rule in _rules():
        for name in _METRIC.findall(rule["expr"]):
            named.add(re.sub(r"_(bucket|count|sum)$", "", name) if name not in defined else name)
    assert "qta_monitor_consumer_lag" in named
    assert named - {"up"} <= defined, f"not in monitor/telemetry.py: {sorted(named - defined - {'up'})}"
    assert all(name.startswith("qta_monitor:") for name in recorded)


def test_prometheus_loads_the_rules_in_compose_and_locally() -> None:
    config = yaml.safe_load((DASHBOARDS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    volumes = compose["services"]["prometheus"]["volumes"]
    assert "./dashboards/alerts.yml:/etc/prometheus/alerts.yml:ro" in volumes
    done = _promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
