"""README "## SDK for serving stacks" states defaults as inline code `name=value` (outside its code
samples); each must be the default of that parameter in every SDK entry point that takes it, or of the
setting `section.field`. A stated default that no signature has fails too, so the section cannot drift."""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from monitor import sdk
from monitor.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"
ENTRY_POINTS: list[Callable[..., Any]] = [
    sdk.TracePublisher, sdk.TracePublisher.session, sdk.SyncTracePublisher, sdk.SyncTracePublisher.session,
    sdk.AbortSubscriber, sdk.AbortSubscriber.watch, sdk.SyncAbortSubscriber, sdk.SyncAbortSubscriber.watch,
    sdk.MonitorHealth, sdk.SyncMonitorHealth, sdk.monitored_stream, sdk.MonitoredStream,
]  # fmt: skip
MISSING = object()


def section() -> str:
    text = README.read_text()
    start = text.index("## SDK for serving stacks\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def stated_defaults() -> list[tuple[str, str]]:
    prose = re.sub(r"```.*?```", "", section(), flags=re.DOTALL)  # code samples state no defaults
    return re.findall(r"`([A-Za-z_][\w.]*)=([^`]+)`", prose)


def defaults_in_code(name: str) -> list[tuple[str, Any]]:
    if "." in name:  # a setting: section.field
        part, field = name.split(".", 1)
        model = Settings.model_fields[part].annotation
        assert isinstance(model, type), name
        return [(name, model.model_fields[field].default)]
    found = []
    for entry in ENTRY_POINTS:
        parameter = inspect.signature(entry).parameters.get(name)
        if parameter is not None:
            default = MISSING if parameter.default is inspect.Parameter.empty else parameter.default
            found.append((entry.__qualname__, default))
    return found


def test_the_section_states_the_defaults_a_stack_decides_on() -> None:
    names = {name for name, _ in stated_defaults()}
    assert {"verdict_timeout_s", "fail_closed", "on_steer", "bound_s", "remember_sessions"} <= names


@pytest.mark.parametrize(("name", "value"), stated_defaults())
def test_a_stated_default_is_the_code_default(name: str, value: str) -> None:
    expected = ast.literal_eval(value)
    found = defaults_in_code(name)
    assert found, f"README states `{name}={value}`, but no SDK entry point takes {name}"
    for where, default in found:
        assert default == expected and type(default) is type(expected), (where, name, default, value)
