"""A private Redis (not the shared test instance) that a test may stop and restart (scripts/redis.sh)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def redis_sh(action: str, state: Path, *args: str, port: str) -> None:
    env = {**os.environ, "QTA_REDIS_PORT": port, "QTA_STATE": str(state)}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "redis.sh"), action, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"redis.sh {action} failed:\n{done.stdout}\n{done.stderr}"
