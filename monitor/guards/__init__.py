"""Guards by name. Each backend is imported only when chosen, so a CPU install never imports what it
does not use, and models load here at start-up, never at import."""

from __future__ import annotations

from pathlib import Path

from monitor.guards.base import Guard, Prefix, Score
from monitor.settings import Settings

__all__ = ["GUARD_NAMES", "Guard", "Prefix", "Score", "build_guard"]

GUARD_NAMES = ("minilm", "bge-small", "judge", "stream", "profile")


def build_guard(settings: Settings, name: str | None = None, path: Path | None = None) -> Guard:
    """Load the guard `name` (default: settings.guard.name) from local files."""
    chosen = name or settings.guard.name
    if chosen in ("minilm", "bge-small"):  # one classifier, two encoder bases (monitor/guards/encoders.py)
        from monitor.guards.minilm import MiniLMGuard

        return MiniLMGuard.load(settings, path, name=chosen)
    if chosen == "judge" and settings.guard.engine == "vllm":
        from monitor.guards.vllm_engine import VLLMJudge

        return VLLMJudge.load(settings, path or settings.guard.path)
    if chosen == "judge":
        from monitor.guards.judge import JudgeGuard

        return JudgeGuard.load(settings, path or settings.guard.path)
    if chosen == "stream":
        from monitor.guards.stream import StreamHeadGuard

        return StreamHeadGuard.load(settings, path or settings.guard.path)
    if chosen == "profile":  # sleeps like a measured GPU judge; for scale-out and soak runs (bench/)
        from monitor.guards.profile import ProfileGuard

        return ProfileGuard.load(path or settings.guard.path)
    raise ValueError(f"unknown guard {chosen!r}; choose one of {', '.join(GUARD_NAMES)}")
