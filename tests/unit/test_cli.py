"""`qta-monitor` explains itself: every command, argument and option has help, an option with a default
says it, `--version` prints the package version, and the exit codes (0 ok, 1 failure, 2 usage) are in the
help epilog and the README."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

import monitor.cli
from monitor.cli import EXIT_CODES, SERVE_FLAGS, _parser, env_variable, main, setting_default
from monitor.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _all_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    root = _parser()
    return [("qta-monitor", root), *((f"qta-monitor {n}", p) for n, p in _commands(root).items())]


def test_every_command_has_help() -> None:
    root = _parser()
    (sub,) = [a for a in root._actions if isinstance(a, argparse._SubParsersAction)]
    helped = {choice.dest: choice.help for choice in sub._choices_actions}
    assert set(helped) == set(_commands(root))
    assert all(helped.values()), helped


@pytest.mark.parametrize(("name", "parser"), _all_parsers(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_argument_and_option_has_help_and_says_its_default(
    name: str, parser: argparse.ArgumentParser
) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        what = f"{name} {'/'.join(action.option_strings) or action.dest}"
        assert action.help and action.help != argparse.SUPPRESS, f"{what} has no help"
        assert len(action.help) > 15, f"{what}: help too terse: {action.help!r}"
        takes_value = action.nargs != 0
        if action.option_strings and takes_value and action.default is not None:
            assert "default" in action.help, f"{what} does not say its default {action.default!r}"
    assert parser.epilog == EXIT_CODES, f"{name}: the exit codes are not in its help"


def test_the_top_help_opens_with_what_the_tool_does_for_a_user() -> None:
    description = _parser().description or ""
    first_sentence = description.split(". ")[0]
    assert first_sentence.startswith("Streaming safety monitor"), description
    assert description.rstrip().endswith("."), "the description is cut off"
    for word in ("Kafka", "serve", "verdicts", "abort"):
        assert word in description
    assert "handler" not in description and "Each builds" not in description  # not the module docstring


def test_help_renders_for_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ["", *_commands(_parser())]:
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"] if command else ["--help"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert "exit codes:" in out and "2  usage" in out, command


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"qta-monitor {importlib.metadata.version('qta-monitor')}"


@pytest.mark.parametrize(
    "argv",
    [
        ["no-such-command"],
        ["eval"],
        ["score", "x.json", "--guard", "no-such-guard"],
        ["replay", "f", "--rate", "x"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_an_invalid_config_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.json"
    config.write_text('{"kafka": {"request_timeout_s": -1}}')
    assert main(["--config", str(config), "config"]) == 2
    assert "kafka.request_timeout_s" in capsys.readouterr().err
    monkeypatch.setenv("MONITOR_POLICY__CONSECUTIVE", "0")
    assert main(["config"]) == 2


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("MONITOR_POLICY__CONSECUTIVE", "three", "policy.consecutive"),
        ("MONITOR_POLICY__ABORT_THRESHOLD", "1.5", "policy.abort_threshold"),
        ("MONITOR_POLICY__ESCALATE_BAND", "0.3,0.8", "policy.escalate_band"),  # not JSON: the library's own
        ("MONITOR_IMAGES__ALLOWED_FORMATS", "PNG", "images.allowed_formats"),  # error named only the section
        ("MONITOR_TELEMETRY__METRICS_HOST", "not a host", "telemetry.metrics_host"),
        ("MONITOR_KAFKA__BOOTSTRAPP", "broker:9092", "kafka.bootstrapp"),
    ],
)
def test_a_bad_monitor_variable_exits_2_with_one_line_naming_the_field(
    variable: str, value: str, field: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MONITOR_")} | {variable: value}
    done = subprocess.run(
        [sys.executable, "-m", "monitor", "config"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("qta-monitor: invalid configuration: "), lines[0]
    assert f"{field} ({variable})" in lines[0]


def test_an_unreadable_config_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[kafka\n")
    for path in (broken, tmp_path / "missing.json"):
        assert main(["--config", str(path), "config"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(path) in err, err


def test_config_prints_the_effective_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config"]) == 0
    assert '"bootstrap"' in capsys.readouterr().out


def test_the_readme_documents_the_exit_codes() -> None:
    text = README.read_text()
    for line in ("0  the command did what it was asked", "1  it failed", "2  usage"):
        assert line in text, line


# A value for each of serve's flags that differs from its default, and the setting's value it gives.
SERVE_VALUES = {
    "--bootstrap": ("broker-a:9092,broker-b:9092", "broker-a:9092,broker-b:9092"),
    "--group": ("qta-monitor-blue", "qta-monitor-blue"),
    "--chunks-topic": ("t.chunks", "t.chunks"),
    "--verdicts-topic": ("t.verdicts", "t.verdicts"),
    "--aborts-topic": ("t.aborts", "t.aborts"),
    "--dead-letters-topic": ("t.dead", "t.dead"),
    "--redis-url": ("rediss://cache:6380/1", "rediss://cache:6380/1"),
    "--guard": ("judge", "judge"),
    "--guard-path": ("/models/judge", Path("/models/judge")),
    "--metrics-port": ("9500", 9500),
    "--metrics-host": ("127.0.0.1", "127.0.0.1"),
    "--log-level": ("DEBUG", "DEBUG"),
}


def _served(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """Run `serve` up to the worker: the settings it would get."""
    got: list[Settings] = []

    def fake_serve(settings: Settings, args: argparse.Namespace) -> int:
        got.append(settings)
        return 0

    monkeypatch.setattr(monitor.cli, "_serve", fake_serve)
    return got


def test_serve_flags_override_the_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert set(SERVE_VALUES) == {flag for flag, *_ in SERVE_FLAGS}
    config = tmp_path / "worker.toml"
    config.write_text('[kafka]\nbootstrap = "from-file:9092"\n[telemetry]\nmetrics_port = 9600\n')
    for _, setting, *_ in SERVE_FLAGS:  # every setting also set in the env: the flag still wins
        monkeypatch.setenv(env_variable(setting), "9700" if setting.endswith("_port") else "from-env")
    monkeypatch.setenv("MONITOR_TELEMETRY__LOG_LEVEL", "ERROR")
    monkeypatch.setenv("MONITOR_TELEMETRY__METRICS_HOST", "10.0.0.1")
    monkeypatch.setenv("MONITOR_GUARD__NAME", "stream")
    got = _served(monkeypatch)
    argv = [arg for flag, (value, _) in SERVE_VALUES.items() for arg in (flag, value)]
    assert main(["--config", str(config), "serve", *argv]) == 0
    (settings,) = got
    for flag, setting, *_ in SERVE_FLAGS:
        section, field = setting.split(".")
        assert getattr(getattr(settings, section), field) == SERVE_VALUES[flag][1], flag
    assert settings.kafka.client_id == "qta-monitor"  # what no flag names keeps its value


def test_serve_without_flags_keeps_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONITOR_KAFKA__GROUP_ID", "from-env")
    got = _served(monkeypatch)
    assert main(["serve"]) == 0
    assert got[0].kafka.group_id == "from-env"
    assert got[0].telemetry.metrics_host == "0.0.0.0"


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--metrics-port", "70000"], "--metrics-port 70000"),
        (["--metrics-host", "not a host"], "--metrics-host not a host"),
    ],
)
def test_a_bad_serve_flag_value_exits_2_naming_the_flag(
    argv: list[str], named: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    got = _served(monkeypatch)
    assert main(["serve", *argv]) == 2
    assert not got
    err = capsys.readouterr().err
    assert err.startswith("qta-monitor: invalid option: ") and named in err and err.count("\n") == 1


def test_each_serve_flag_names_its_setting_its_variable_and_the_default() -> None:
    serve = _commands(_parser())["serve"]
    helps = {flag: action.help or "" for action in serve._actions for flag in action.option_strings}
    for flag, setting, *_ in SERVE_FLAGS:
        default = setting_default(setting)
        for part in (setting, env_variable(setting), f"defaults to {'none' if default is None else default}"):
            assert part in helps[flag], (flag, part)


def test_topics_flags_are_validated_like_the_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topics", "apply", "--replication-factor", "0"]) == 2
    assert "--replication-factor 0" in capsys.readouterr().err
