"""A Kafka client that is not ours: Debian's `kcat` publishes sessions written from topics/schemas/ alone
(no SDK, no `monitor.messages`), a real `qta-monitor serve` process scores them against the real broker and
Redis, and kcat reads the verdicts, aborts and dead letters back.

The chunks leave out `v`, as the schema allows, and are keyed by session id with `-K`, partitioned with
murmur2 as the Java clients and our SDK are. Checks: the harmful session gets exactly one abort, the safe one
none and verdicts up to its `end`, and each malformed message a dead letter with a reason, its original key
and headers."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from monitor.edges.kafka import delete_topics
from monitor.settings import load_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "topics" / "schemas" / "chunk.schema.json").read_text())
BOOTSTRAP = "127.0.0.1:19092"
CHUNK_CHARS = 48
RATE = 15.0  # chunks per second per session, as a model streams: thinking is scored before the answer
READY_S = 180.0  # the worker loads the guard first; the CPUs may be shared
SETTLE_S = 120.0
KCAT_S = 60.0
HARMFUL, SAFE = "both-threaten-journalist", "safe-refuse-bomb"  # both handled by the shipped weights
HEADERS = {"source": "kcat-interop", "trace": "t-1"}


def _sample(name: str) -> dict[str, Any]:
    for line in (ROOT / "monitor" / "samples" / "sessions.jsonl").read_text().splitlines():
        row: dict[str, Any] = json.loads(line)
        if row["id"] == name:
            return row
    raise AssertionError(f"no sample {name}")


def _chunks(sample: dict[str, Any], sid: str) -> list[dict[str, Any]]:
    """The chunks of one session, as a reader of chunk.schema.json writes them: only the required
    fields and `text`, numbered from 1; question, thinking and answer pieces, then `end`."""
    parts = [("question", sample["question"])]
    for part in ("thinking", "answer"):
        text = sample[part]
        parts += [(part, text[i : i + CHUNK_CHARS]) for i in range(0, len(text), CHUNK_CHARS)]
    chunks = [{"session_id": sid, "seq": seq, "part": p, "text": t} for seq, (p, t) in enumerate(parts, 1)]
    chunks.append({"session_id": sid, "seq": len(chunks) + 1, "part": "end"})
    for chunk in chunks:
        assert set(SCHEMA["required"]) <= set(chunk) <= set(SCHEMA["properties"])
        jsonschema.validate(chunk, SCHEMA)
    return chunks


@dataclass(frozen=True)
class Topics:
    chunks: str
    verdicts: str
    aborts: str
    dead_letters: str
    audits: str


def _env(topics: Topics, group: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    env.update(
        MONITOR_KAFKA__BOOTSTRAP=BOOTSTRAP,
        MONITOR_KAFKA__GROUP_ID=group,
        MONITOR_REDIS__URL="redis://127.0.0.1:16379/0",
        MONITOR_TOPICS__DEFINITIONS_DIR=str(ROOT / "topics"),
        MONITOR_TELEMETRY__METRICS_PORT="0",
        # no abort before 64 response tokens, as in test_worker_e2e: a deployment sets this floor
        MONITOR_POLICY__MIN_TOKENS="64",
        OMP_NUM_THREADS="1",
        **{f"MONITOR_TOPICS__{role.upper()}": name for role, name in vars(topics).items()},
    )
    return env


def _kcat(*args: str, stdin: bytes | None = None) -> bytes:
    kcat = shutil.which("kcat")
    assert kcat, "kcat is not installed (scripts/install.sh installs Debian's kcat)"
    proc = subprocess.run(
        [kcat, "-b", BOOTSTRAP, *args], input=stdin, capture_output=True, timeout=KCAT_S, check=False
    )
    assert proc.returncode == 0, f"kcat {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode()}"
    return proc.stdout


def _produce(topic: str, lines: list[tuple[str, str]], *, rate: float | None = None) -> None:
    """key<TAB>value lines into `topic`; with `rate`, one line every 1/rate s through one kcat process."""
    kcat = shutil.which("kcat")
    assert kcat, "kcat is not installed (scripts/install.sh installs Debian's kcat)"
    headers = [arg for name, value in HEADERS.items() for arg in ("-H", f"{name}={value}")]
    args = [
        kcat,
        "-b",
        BOOTSTRAP,
        "-P",
        "-t",
        topic,
        "-K",
        "\t",
        "-X",
        "partitioner=murmur2_random",
        *headers,
    ]
    with subprocess.Popen(args, stdin=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdin is not None
        for key, value in lines:
            assert "\t" not in key and "\n" not in key + value
            proc.stdin.write(f"{key}\t{value}\n".encode())
            proc.stdin.flush()
            if rate:
                time.sleep(1.0 / rate)
        _, err = proc.communicate(timeout=KCAT_S)
    assert proc.returncode == 0, f"kcat -P exited {proc.returncode}: {err.decode()}"


def _consume(topic: str) -> list[dict[str, Any]]:
    """Every message of `topic` as kcat's JSON envelope (topic, partition, offset, key, payload, headers)."""
    out = _kcat("-C", "-t", topic, "-o", "beginning", "-e", "-q", "-J")
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


def _headers(envelope: dict[str, Any]) -> dict[str, str]:
    flat = envelope.get("headers") or []
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _until(check: Callable[[], bool], timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)


@pytest.fixture
def topics(services: None) -> Iterator[Topics]:
    suffix = uuid.uuid4().hex[:10]
    names = Topics(*(f"kcat.{suffix}.{role}" for role in ("chunks", "verdicts", "aborts", "dlq", "audits")))
    env = _env(names, f"kcat-{suffix}")
    cli = [sys.executable, "-m", "monitor", "topics", "apply"]
    proc = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield names
    settings = load_settings(None, topics={**vars(names), "definitions_dir": str(ROOT / "topics")})
    asyncio.run(delete_topics(settings))


def test_kcat_sessions_from_the_schema_are_scored_and_read_back(topics: Topics, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    group = f"kcat-{uuid.uuid4().hex[:8]}"
    with log.open("ab") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "monitor", "serve"],
            env=_env(topics, group),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        # the worker owns the chunk partitions (so the sessions stream to it as a model writes them)
        _until(
            lambda: "partitions assigned: [(" in log.read_text(errors="replace"), READY_S, "the worker", log
        )
        run = uuid.uuid4().hex[:8]
        harmful, safe = f"kcat-harm-{run}", f"kcat-safe-{run}"
        plans = {harmful: _chunks(_sample(HARMFUL), harmful), safe: _chunks(_sample(SAFE), safe)}
        # interleaved, as two concurrent generations would be
        lines = [
            (c["session_id"], json.dumps(c))
            for pair in itertools.zip_longest(*plans.values())
            for c in pair
            if c is not None
        ]
        bad = {
            f"kcat-bad-json-{run}": ("undecodable", "this is {not json"),
            f"kcat-bad-seq-{run}": (
                "bad_seq",
                json.dumps({"session_id": f"kcat-bad-seq-{run}", "seq": "1", "part": "question"}),
            ),
        }
        _produce(topics.chunks, lines, rate=2 * RATE)
        _produce(topics.chunks, [(key, value) for key, (_, value) in bad.items()])

        def verdicts() -> dict[str, list[dict[str, Any]]]:
            out: dict[str, list[dict[str, Any]]] = {harmful: [], safe: []}
            for envelope in _consume(topics.verdicts):
                verdict = json.loads(envelope["payload"])
                assert envelope["key"] == verdict["session_id"]
                out.setdefault(verdict["session_id"], []).append(verdict)
            return out

        def aborts() -> list[dict[str, Any]]:
            return [json.loads(e["payload"]) | {"_key": e["key"]} for e in _consume(topics.aborts)]

        def dead() -> dict[str, dict[str, Any]]:
            return {e["key"]: e for e in _consume(topics.dead_letters) if e["key"] in bad}

        end = plans[safe][-1]["seq"]
        _until(lambda: any(a["session_id"] == harmful for a in aborts()), SETTLE_S, "the abort", log)
        _until(lambda: any(v["seq"] == end for v in verdicts()[safe]), SETTLE_S, "the safe end", log)
        _until(lambda: set(dead()) == set(bad), SETTLE_S, "the dead letters", log)
        worker.send_signal(signal.SIGTERM)  # drain: whatever it still publishes is out when it exits
        assert worker.wait(60) == 0, log.read_text(errors="replace")[-3000:]

        mine = [a for a in aborts() if a["session_id"] == harmful]
        assert len({a["event_id"] for a in mine}) == 1, mine  # exactly one abort (consumers dedupe by id)
        assert all(a["_key"] == harmful and a["action"] == "abort" and a["label"] == 1 for a in mine)
        assert not [a for a in aborts() if a["session_id"] == safe]
        assert all(v["status"] != "abort" for v in verdicts()[safe])
        assert verdicts()[harmful], "the harmful session was never scored"

        for key, envelope in dead().items():
            reason, value = bad[key]
            letter = json.loads(envelope["payload"])
            assert letter["reason"] == reason and letter["error"], letter
            assert base64.b64decode(letter["raw_b64"]).decode() == value
            assert letter["topic"] == topics.chunks and letter["offset"] >= 0
            assert _headers(envelope) == HEADERS, envelope  # the producer's headers, kept
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
