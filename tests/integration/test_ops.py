"""What an operator sees of a real worker (`qta-monitor serve` subprocesses, real Kafka and Redis, the
embedded guard): /ready answers 503 until Kafka, Redis and the guard are up and 200 after; a broker that is
not there is one line that says what to start, without the client's own noise; the consumer lag measured
against the real broker rises with unconsumed chunks and falls to zero once the worker has consumed them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from monitor.demo import settings_env
from monitor.edges.kafka import KafkaChunkSource, KafkaEventSink
from monitor.messages import Chunk, encode
from monitor.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
READY_S = 180.0  # the worker imports torch and loads the guard first
StartWorker = Callable[[Settings], tuple[subprocess.Popen[bytes], Path]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""  # not listening yet


def _until(check: Callable[[], bool], timeout_s: float, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert proc.poll() is None, f"the worker exited with {proc.returncode} before {what}"
        assert time.monotonic() < deadline, f"not within {timeout_s:.0f} s: {what}"
        time.sleep(0.1)


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[StartWorker]:
    started: list[subprocess.Popen[bytes]] = []

    def start(settings: Settings) -> tuple[subprocess.Popen[bytes], Path]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")} | settings_env(settings)
        log = tmp_path / f"worker-{len(started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "monitor", "serve"], env=env, cwd=ROOT, stdout=out, stderr=out
            )
        started.append(proc)
        return proc, log

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _lag(metrics: str, topic: str) -> dict[str, float]:
    line = re.compile(
        rf'^qta_monitor_consumer_lag\{{[^}}]*partition="(\d+)",topic="{re.escape(topic)}"\}} (\S+)$', re.M
    )
    return {p: float(v) for p, v in line.findall(metrics)}


def _chunks(n_sessions: int) -> list[Chunk]:
    out = []
    for i in range(n_sessions):
        parts = [("question", "How do plants grow? "), ("thinking", "Light and water. "), ("end", "")]
        for seq, (part, text) in enumerate(parts, 1):
            out.append(Chunk(session_id=f"ops-{i}", seq=seq, part=part, text=text))  # type: ignore[arg-type]
    return out


async def _publish(settings: Settings, chunks: list[Chunk]) -> None:
    sink = KafkaEventSink(settings)
    await sink.start()
    try:
        await sink.publish([(settings.topics.chunks, c.session_id.encode(), encode(c)) for c in chunks])
    finally:
        await sink.stop()


async def _lag_of_the_group(settings: Settings, expected: int) -> dict[tuple[str, int], int]:
    """Join the worker's group and measure (without consuming) until the lag reaches `expected`."""
    source = KafkaChunkSource(settings)
    await source.start()
    try:
        deadline = asyncio.get_running_loop().time() + 30
        lag: dict[tuple[str, int], int] = {}
        while asyncio.get_running_loop().time() < deadline:
            lag = await source.lag()
            if sum(lag.values()) >= expected:
                break
            await asyncio.sleep(0.2)
        return lag
    finally:
        await source.stop()  # leaves the group, commits nothing


def test_a_missing_broker_is_one_line_and_the_worker_is_not_ready(
    make_settings: Callable[..., Settings],
    start_worker: StartWorker,
) -> None:
    port, dead = _free_port(), _free_port()
    settings = make_settings(kafka={"bootstrap": f"127.0.0.1:{dead}"}, telemetry={"metrics_port": port})
    proc, log = start_worker(settings)
    _until(lambda: "not reachable" in log.read_text(), READY_S, "the Kafka message", proc)
    status, body = _get(f"http://127.0.0.1:{port}/ready")
    assert status == 503, body
    assert json.loads(body)["kafka"].startswith(f"Kafka is not reachable at 127.0.0.1:{dead}")
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    text = log.read_text()
    problems = [line for line in text.splitlines() if " WARNING " in line or " ERROR " in line]
    hint = (
        f"Kafka is not reachable at 127.0.0.1:{dead}: start it with bash scripts/services.sh up "
        "(or point kafka.bootstrap at a running one)"
    )
    assert problems and hint in problems[0], text
    # Only our own lines (the retries say it again); nothing from the client library, no stack trace.
    assert all(line.split()[3].startswith("monitor.") for line in problems), "\n".join(problems)
    assert "Traceback" not in text and "aiokafka" not in text, text


def test_ready_after_start_up_and_the_lag_rises_then_falls_to_zero(
    make_kafka_settings: Callable[..., Settings],
    start_worker: StartWorker,
) -> None:
    port = _free_port()
    settings = make_kafka_settings(telemetry={"metrics_port": port})
    chunks = _chunks(12)
    asyncio.run(_publish(settings, chunks))
    # Nothing has consumed them: the group is as far behind as there are chunks.
    lag = asyncio.run(_lag_of_the_group(settings, len(chunks)))
    assert sum(lag.values()) == len(chunks) and len(lag) == 6, lag

    proc, log = start_worker(settings)
    ready = f"http://127.0.0.1:{port}/ready"
    _until(lambda: _get(ready)[0] == 503, READY_S, "/ready answering 503 during start-up", proc)
    _until(lambda: _get(ready)[0] == 200, READY_S, "/ready answering 200", proc)
    assert json.loads(_get(ready)[1]) == {"ready": True, "guard": "ok", "kafka": "ok", "redis": "ok"}

    def consumed() -> bool:
        metrics = _get(f"http://127.0.0.1:{port}/metrics")[1]
        lag = _lag(metrics, settings.topics.chunks)
        received = sum(
            float(v) for v in re.findall(r"^qta_monitor_chunks_total\{[^}]*\} (\S+)$", metrics, re.M)
        )
        return len(lag) == 6 and sum(lag.values()) == 0 and received == len(chunks)

    _until(consumed, 60, "lag 0 on all 6 partitions after consuming every chunk", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()[-3000:]
