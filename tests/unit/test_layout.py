"""The layout's import rules (README "Layout"), checked on the real tree, and shown to fail on a planted
violation of each kind. The rules are data in tests/unit/import_rules.py."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from import_rules import violations

ROOT = Path(__file__).resolve().parents[2]


def test_monitor_keeps_its_import_rules() -> None:
    assert violations(ROOT / "monitor") == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "monitor"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(root).parents:
            (root / parent / "__init__.py").touch()
        path.write_text(text)
    return root


CLEAN = {
    "settings.py": "",
    "messages.py": "",
    "core/ports.py": "from monitor.messages import x\n",
    "core/pipeline.py": "from monitor.core.ports import Store\nfrom monitor.guards.base import Guard\n",
    "edges/store.py": "import redis\nfrom monitor.core.ports import SessionStore\n",
    "client/publisher.py": "import aiokafka\nfrom monitor.edges.kafka import x\nimport monitor.settings\n",
    "guards/base.py": "import torch\n",
    "worker.py": "from monitor.core.pipeline import Pipeline\nfrom monitor.edges.store import RedisStore\n",
}


def test_a_clean_planted_tree_passes(tmp_path: Path) -> None:
    assert violations(_tree(tmp_path, CLEAN)) == []


@pytest.mark.parametrize(
    ("path", "text", "expected"),
    [
        ("core/policy.py", "import redis\n", "monitor.core.policy:1 imports redis"),
        (
            "core/schedule.py",
            "def f():\n    from aiokafka import X\n",
            "monitor.core.schedule:2 imports aiokafka",
        ),
        ("core/session.py", "from monitor.edges.store import x\n", "imports monitor.edges.store"),
        ("core/prefixes.py", "from monitor.training import fit\n", "imports monitor.training"),
        (
            "worker.py",
            "from monitor.evaluation import runner\n",
            "monitor.worker:1 imports monitor.evaluation",
        ),
        ("client/stream.py", "from monitor.core import pipeline\n", "imports monitor.core.pipeline"),
        ("client/stream.py", "from monitor.worker import Worker\n", "imports monitor.worker"),
        ("edges/kafka.py", "import torch\n", "imports torch"),
        ("core/a.py", "from monitor.core import b\n", "import circle: monitor.core.a -> monitor.core.b"),
    ],
)
def test_a_planted_violation_is_reported(tmp_path: Path, path: str, text: str, expected: str) -> None:
    files = dict(CLEAN)
    files[path] = text
    if path == "core/a.py":
        files["core/b.py"] = (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from monitor.core import a\n"
        )
    found = violations(_tree(tmp_path, files))
    assert any(expected in line for line in found), found


@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("monitor.sdk", ["TracePublisher", "AbortSubscriber", "monitored_stream", "SyncTracePublisher"]),
        ("monitor.settings", ["Settings", "load_settings"]),
        ("monitor.messages", ["Chunk", "Verdict", "Abort", "DeadLetter"]),
        ("monitor.cli", ["main"]),
    ],
)
def test_the_public_paths_still_import(module: str, names: list[str]) -> None:
    loaded = importlib.import_module(module)
    assert all(hasattr(loaded, n) for n in names), [n for n in names if not hasattr(loaded, n)]
