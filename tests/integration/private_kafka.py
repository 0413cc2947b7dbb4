"""Brokers a test may stop under a running worker, never the shared one on 19092: a private single node
(scripts/kafka.sh on other ports and its own state) and the 3-node cluster of scripts/kafka-cluster.sh."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, args: tuple[str, ...], env: dict[str, str], timeout: float) -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / script), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{script} {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


def kafka_sh(action: str, state: Path, *, port: int) -> None:
    """scripts/kafka.sh with broker `port`, controller `port + 1`, state under `state`."""
    env = {"QTA_KAFKA_PORT": str(port), "QTA_KAFKA_CONTROLLER_PORT": str(port + 1), "QTA_STATE": str(state)}
    _run("kafka.sh", (action,), env, 180)


def cluster_sh(*args: str) -> None:
    """scripts/kafka-cluster.sh (start|stop|status [NODE], kill NODE) on its default ports."""
    _run("kafka-cluster.sh", args, {}, 240)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


CLUSTER_BOOTSTRAP = "127.0.0.1:29092,127.0.0.1:29093,127.0.0.1:29094"


async def partitions(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Each partition of `topic` as the metadata shows it: partition, leader, replicas, isr."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert described["error_code"] == 0, described
    return sorted(
        (
            {
                "partition": p["partition"],
                "leader": p["leader"],
                "replicas": sorted(p["replicas"]),
                "isr": sorted(p["isr"]),
            }
            for p in described["partitions"]
        ),
        key=lambda p: p["partition"],
    )
