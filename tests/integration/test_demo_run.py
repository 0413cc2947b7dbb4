"""`qta-monitor demo`, the README's main job, run as users run it (on its own topics and consumer group, so
it shares the broker with other tests): it must start everything, cover every sample session, stop its
worker cleanly and print the summary."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from monitor.demo import settings_env
from monitor.edges.kafka import delete_topics
from monitor.evaluation.datasets import load_jsonl
from monitor.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_runs_the_main_job_end_to_end(
    services: None, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(telemetry={"metrics_port": 0})
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    env.update(settings_env(settings))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "monitor", "demo", "--rate", "50"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=420,
            check=False,
        )
    finally:
        asyncio.run(delete_topics(settings))
    out = proc.stdout
    assert proc.returncode == 0, f"{out[-3000:]}\n{proc.stderr[-3000:]}"
    for step in range(1, 7):
        assert f"== {step}/6" in out
    samples = load_jsonl(ROOT / "monitor" / "samples" / "sessions.jsonl")
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1]}
    assert all(s.id in rows for s in samples)
    harmful = sum(s.label == 1.0 for s in samples)
    final = re.search(rf"{len(samples)} sessions: (\d+)/{harmful} harmful aborted \((\d+) before", out)
    assert final is not None, out[-2000:]
    assert int(final.group(2)) >= 1  # at least one harmful generation was stopped before its answer
    assert re.search(r"ABORT\s+\S+\s+seq", out)  # the live view showed aborts as they came
    # No client-library noise for the expected start-up states (fresh topics have no leader for a moment).
    noise = [
        line
        for line in (out + proc.stderr).splitlines()
        if re.search(r"NotLeader|Coordinator|Traceback", line)
    ]
    assert not noise, "\n".join(noise)
