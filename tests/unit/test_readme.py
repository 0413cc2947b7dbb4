"""README "## Command line" against the code: its table of the settings a worker takes (section, field,
variable, serve flag, default) must match `Settings()` and `qta-monitor serve`'s flags, and its exit-code
table must be the CLI's, and hold for a cheap command of each kind. So a stated default that drifts fails."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from monitor.cli import EXIT_CODES, SERVE_FLAGS, main
from monitor.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"
COLUMNS = ["section", "field", "variable", "serve flag", "default", "meaning"]
# The settings the table must cover: those a worker is most often given.
COMMON = {
    *("kafka.bootstrap", "kafka.group_id", "kafka.security_protocol", "kafka.sasl_mechanism"),
    *("kafka.sasl_username", "kafka.sasl_password", "kafka.tls_ca", "kafka.tls_cert", "kafka.tls_key"),
    *("topics.chunks", "topics.verdicts", "topics.aborts", "topics.dead_letters"),
    *("redis.url", "redis.cluster", "redis.tls", "guard.name", "guard.path"),
    *("policy.warn_threshold", "policy.abort_threshold", "policy.answer_abort_threshold"),
    *("policy.answer_label_abort", "policy.ema_abort", "policy.consecutive", "policy.min_tokens"),
    *("batching.stride_tokens", "batching.max_delay_s", "batching.max_batch", "batching.max_wait_s"),
    *("telemetry.metrics_host", "telemetry.metrics_port", "telemetry.log_level"),
}


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def settings_table() -> list[dict[str, str]]:
    lines = _section("Command line").splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| section |"))
    assert _cells(lines[header]) == COLUMNS
    rows = []
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        cells = _cells(line)
        assert len(cells) == len(COLUMNS), line
        rows.append(dict(zip(COLUMNS, cells, strict=True)))
    return rows


def _code(cell: str) -> str:
    """The text of a cell that is one code span (`x`), or the cell as is (empty, `none`)."""
    match = re.fullmatch(r"`([^`]*)`", cell)
    return match.group(1) if match else cell


def shown(value: Any) -> str:
    """How the table writes a default."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list | dict):
        return json.dumps(value, separators=(", ", ": "))
    return str(value)


@pytest.fixture
def defaults(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in list(os.environ):
        if key.upper().startswith("MONITOR_"):
            monkeypatch.delenv(key)
    return Settings()


def _row_id(row: dict[str, str]) -> str:
    return f"{row['section']}.{_code(row['field'])}"


@pytest.mark.parametrize("row", settings_table(), ids=_row_id)
def test_each_row_states_the_setting_its_variable_and_its_default(
    row: dict[str, str], defaults: Settings
) -> None:
    section, field = row["section"], _code(row["field"])
    model = getattr(defaults, section)
    assert isinstance(model, BaseModel) and field in type(model).model_fields, f"no setting {section}.{field}"
    assert _code(row["variable"]) == f"MONITOR_{section.upper()}__{field.upper()}"
    assert row["default"] == "none" or row["default"] == f"`{_code(row['default'])}`", row["default"]
    assert _code(row["default"]) == shown(getattr(model, field)), f"{section}.{field}: the default drifted"
    assert len(row["meaning"]) > 5


def test_the_table_covers_the_common_settings_once_each() -> None:
    named = [_row_id(row) for row in settings_table()]
    assert len(named) == len(set(named))
    assert COMMON <= set(named), COMMON - set(named)


def test_the_serve_flag_column_is_serves_flags() -> None:
    in_readme = {_code(row["serve flag"]): _row_id(row) for row in settings_table() if row["serve flag"]}
    assert in_readme == {flag: setting for flag, setting, *_ in SERVE_FLAGS}


def test_the_answer_label_rule_is_stated_as_its_default_is() -> None:
    """The README once said a harmful label in the answer aborts, while policy.answer_label_abort is off."""
    off = not Settings.model_fields["policy"].default.answer_label_abort
    prose = re.sub(r"```.*?```", "", README.read_text(), flags=re.DOTALL)
    prose = re.sub(r"^\|.*\n", "", prose, flags=re.M)  # the settings table states it as the default column
    for paragraph in re.split(r"\n(?=- )|\n\n", prose):
        if re.search(r"label \(1\) in the answer", paragraph):
            flat = " ".join(paragraph.split())
            assert "answer_label_abort" in flat, flat
            assert ("off by default" in flat) == off, flat


def _exit_code_lines(text: str) -> list[str]:
    return re.findall(r"^ *([012]  \S.*)$", text, flags=re.M)


def test_the_exit_code_table_is_the_clis() -> None:
    lines = _exit_code_lines(_section("Command line"))
    assert [line[0] for line in lines] == ["0", "1", "2"]
    assert lines == _exit_code_lines(EXIT_CODES)


def test_the_exit_codes_hold_for_a_cheap_command_of_each_kind(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config"]) == 0  # did what it was asked
    with socket.socket() as s:  # a port where no Kafka listens
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("MONITOR_KAFKA__BOOTSTRAP", f"127.0.0.1:{closed}")
    monkeypatch.setenv("MONITOR_KAFKA__REQUEST_TIMEOUT_S", "2")
    assert main(["watch", "--seconds", "1"]) == 1  # a service it needs is down
    with pytest.raises(SystemExit) as exit_:
        main(["no-such-command"])
    assert exit_.value.code == 2  # usage
    monkeypatch.setenv("MONITOR_POLICY__CONSECUTIVE", "many")
    assert main(["config"]) == 2  # an invalid MONITOR_* variable
    capsys.readouterr()
