"""The worker as a black box: `qta-monitor serve` subprocesses (env MONITOR_*), chunks published with the SDK
or raw bytes, verdicts / aborts / dead letters read back from their topics, the consumer group read from
the broker. Real Kafka, Redis and the embedded MiniLM guard; one guard load per worker process.

Sessions come from the bundled samples (monitor/samples/sessions.jsonl). Where the guard's quality is the
point (thinking-only harm, safe refusals), those are the sessions; where the mechanics are (duplicates,
reordering, failover), the harm is blatant so the outcome does not hinge on a borderline score."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.partitioner import DefaultPartitioner

from monitor.demo import settings_env
from monitor.edges.kafka import apply_topics, delete_topics
from monitor.edges.tail import EventTail
from monitor.evaluation.datasets import Sample, load_jsonl
from monitor.evaluation.sessions import session_chunks
from monitor.messages import Abort, Chunk, DeadLetter, Verdict
from monitor.sdk import TracePublisher
from monitor.settings import Settings, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = {s.id: s for s in load_jsonl(ROOT / "monitor" / "samples" / "sessions.jsonl")}
CHUNK_CHARS = 48
RATE = 15.0  # chunks per second per session: a model streaming, so thinking is scored before the answer
READY_S = 120.0
SETTLE_S = 60.0


# ------------------------------------------------------------------------------------------- helpers
def _settings(**sections: Any) -> Settings:
    suffix = uuid.uuid4().hex[:10]
    topics = {k: f"e2e.{suffix}.{k}" for k in ("chunks", "verdicts", "aborts", "dead_letters", "audits")}
    base: dict[str, Any] = {
        "kafka": {"bootstrap": "127.0.0.1:19092", "group_id": f"e2e-{suffix}"},
        "redis": {"url": "redis://127.0.0.1:16379/0"},
        "topics": {**topics, "definitions_dir": str(ROOT / "topics")},
        "telemetry": {"metrics_port": 0},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return load_settings(None, **base)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    env.update(settings_env(settings), OMP_NUM_THREADS="1")
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "monitor", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _stop(worker: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if worker.poll() is None:
        worker.send_signal(sig)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    return worker.returncode


async def _assignment(settings: Settings) -> dict[str, set[int]]:
    """Chunk partitions of each member of the worker group (by client id), as the coordinator sees them;
    empty while the group is rebalancing."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([settings.kafka.group_id])
    finally:
        await admin.close()
    group = response.to_object()["groups"][0]
    if group["state"] != "Stable":
        return {}
    out: dict[str, set[int]] = {}
    for member in group["members"]:
        raw = member["member_assignment"]
        assignment = ConsumerProtocolMemberAssignment.decode(raw).assignment if raw else []
        out[member["client_id"]] = {
            p for topic, ps in assignment if topic == settings.topics.chunks for p in ps
        }
    return out


async def _wait_for_group(settings: Settings, members: int, logs: Sequence[Path]) -> dict[str, set[int]]:
    """Until `members` workers share all chunk partitions (the group is stable)."""
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        split = await _assignment(settings)
        if len(split) == members and all(split.values()) and set().union(*split.values()) == set(range(6)):
            return split
        await asyncio.sleep(0.5)
    tails = "\n".join(log.read_text(errors="replace")[-2000:] for log in logs)
    raise AssertionError(f"group never reached {members} members with all partitions\n{tails}")


def _partition(session_id: str, partitions: int = 6) -> int:
    """The chunks partition of a session: the producer's default partitioner (murmur2 of the key)."""
    return int(DefaultPartitioner()(session_id.encode(), list(range(partitions)), []))


@dataclass
class Events:
    """Everything the workers published, read from the start of the test's topics."""

    verdicts: dict[str, list[Verdict]] = field(default_factory=lambda: defaultdict(list))
    aborts: dict[str, list[Abort]] = field(default_factory=lambda: defaultdict(list))
    dead: list[DeadLetter] = field(default_factory=list)

    def add(self, event: Any) -> None:
        if isinstance(event, Verdict):
            self.verdicts[event.session_id].append(event)
        elif isinstance(event, Abort):
            self.aborts[event.session_id].append(event)
        else:
            self.dead.append(event)

    def covered(self, sid: str, end_seq: int) -> bool:
        top = max((v.seq for v in self.verdicts.get(sid, [])), default=0)
        return top >= end_seq or bool(self.aborts.get(sid))

    def abort_ids(self, sid: str) -> set[str]:
        return {a.event_id for a in self.aborts.get(sid, [])}


async def _collect(settings: Settings, events: Events, stop: asyncio.Event) -> None:
    t = settings.topics
    async with EventTail(settings, [t.verdicts, t.aborts, t.dead_letters], from_beginning=True) as tail:
        while not stop.is_set():
            for event in await tail.poll(0.2):
                events.add(event)


async def _until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def _plan(sample: Sample, sid: str) -> list[Chunk]:
    return [p.chunk for p in session_chunks(sample, sid, CHUNK_CHARS)]


def _first_answer_seq(plan: Sequence[Chunk]) -> int:
    return next(c.seq for c in plan if c.part in ("answer", "end"))


async def _stream(publisher: TracePublisher, chunks: Sequence[Chunk], rate: float = RATE) -> None:
    """Send these chunks as a serving stack would, one every 1/rate s, in the given order."""
    for chunk in chunks:
        await publisher.send(chunk.model_copy(update={"ts": time.time()}))
        await asyncio.sleep(1.0 / rate)
    await publisher.flush()


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
        return text


def _sid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def _sid_on(partition: int, name: str) -> str:
    return next(s for s in (_sid(name) for _ in range(1000)) if _partition(s) == partition)


# ------------------------------------------------------------------------------------------- fixtures
@dataclass
class Stack:
    settings: Settings
    events: Events
    publisher: TracePublisher
    metrics_port: int
    log: Path


@pytest.fixture(scope="module")
async def stack(services: None, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One worker (one guard load) shared by the single-worker tests; each test uses its own sessions."""
    port = _free_port()
    # No abort before 64 response tokens (about four lines of thinking): the embedded guard reads a few
    # words of any trace as harmful, so a deployment sets this floor; the default (16) is stricter.
    settings = _settings(telemetry={"metrics_port": port}, policy={"min_tokens": 64})
    await apply_topics(settings)
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    worker = _start_worker(settings, log)
    events, stop = Events(), asyncio.Event()
    collector = asyncio.create_task(_collect(settings, events, stop))
    try:
        await _wait_for_group(settings, 1, [log])
        async with TracePublisher(settings) as publisher:
            yield Stack(settings, events, publisher, port, log)
        assert _stop(worker) == 0, f"worker did not drain cleanly:\n{log.read_text()[-3000:]}"
    finally:
        _stop(worker, signal.SIGKILL)
        stop.set()
        await collector
        await delete_topics(settings)


# ------------------------------------------------------------------------------------------- tests
async def test_harm_only_in_thinking_is_aborted_before_the_answer(stack: Stack) -> None:
    plans = {_sid(name): name for name in ("think-car-bomb", "think-ransomware-hospital")}
    chunks = {sid: _plan(SAMPLES[name], sid) for sid, name in plans.items()}
    await asyncio.gather(*(_stream(stack.publisher, c) for c in chunks.values()))
    await _until(lambda: all(stack.events.aborts.get(sid) for sid in plans), SETTLE_S, "the aborts")
    for sid, plan in chunks.items():
        assert len(stack.events.abort_ids(sid)) == 1
        abort = stack.events.aborts[sid][0]
        assert abort.part == "thinking", plans[sid]
        assert abort.seq < _first_answer_seq(plan), (plans[sid], abort.seq)
        assert abort.label == 1 and abort.guard == "minilm"


async def test_a_safe_session_that_names_a_harm_gets_no_abort(stack: Stack) -> None:
    # safe-refuse-account-hack is a known false abort of the shipped weights (docs/embedded-guard.md)
    sids = {_sid(name): name for name in ("safe-refuse-bomb", "safe-self-harm-support")}
    plans = {sid: _plan(SAMPLES[name], sid) for sid, name in sids.items()}
    await asyncio.gather(*(_stream(stack.publisher, plan) for plan in plans.values()))
    await _until(
        lambda: all(stack.events.covered(sid, plan[-1].seq) for sid, plan in plans.items()),
        SETTLE_S,
        "coverage",
    )
    for sid, plan in plans.items():
        assert not stack.events.aborts.get(sid), sid
        verdicts = stack.events.verdicts[sid]
        assert max(v.seq for v in verdicts) == plan[-1].seq
        assert all(v.status != "abort" for v in verdicts)


def _shuffled(plan: Sequence[Chunk], window: int, seed: int) -> list[Chunk]:
    """Every chunk moved at most `window - 1` places: shuffle consecutive blocks of `window`."""
    rng = random.Random(seed)
    out: list[Chunk] = []
    for i in range(0, len(plan), window):
        block = list(plan[i : i + window])
        rng.shuffle(block)
        out += block
    assert out != list(plan)
    return out


async def test_duplicates_and_reordering_give_the_same_verdicts_and_one_abort(stack: Stack) -> None:
    harmful, safe = SAMPLES["both-threaten-journalist"], SAMPLES["safe-refuse-bomb"]
    window = min(4, stack.settings.batching.reorder_window)
    h1, h2, s1, s2 = (_sid(n) for n in ("dup-harm", "shuf-harm", "ord-safe", "shuf-safe"))
    ph1, ph2, ps1, ps2 = _plan(harmful, h1), _plan(harmful, h2), _plan(safe, s1), _plan(safe, s2)
    await asyncio.gather(
        _stream(stack.publisher, ph1),
        _stream(stack.publisher, _shuffled(ph2, window, seed=1)),
        _stream(stack.publisher, ps1),
        _stream(stack.publisher, _shuffled(ps2, window, seed=2)),
    )
    ends = {h1: ph1[-1].seq, h2: ph2[-1].seq, s1: ps1[-1].seq, s2: ps2[-1].seq}
    await _until(lambda: all(stack.events.covered(s, e) for s, e in ends.items()), SETTLE_S, "coverage")
    await asyncio.sleep(1.0)
    before = {v.event_id for v in stack.events.verdicts[h1]}
    assert before and len(stack.events.abort_ids(h1)) == 1

    # the same chunks of h1 again, as a producer retrying after a timeout would send them
    await _stream(stack.publisher, ph1, rate=200)
    probe = _sid_on(_partition(h1), "after-dup")  # same partition: read after the replayed chunks
    await _stream(stack.publisher, _plan(safe, probe), rate=200)  # a later session proves the replay was read
    await _until(lambda: stack.events.covered(probe, _plan(safe, probe)[-1].seq), SETTLE_S, "the probe")

    assert {v.event_id for v in stack.events.verdicts[h1]} == before
    assert len(stack.events.abort_ids(h1)) == 1
    assert len(stack.events.abort_ids(h2)) == 1
    assert not stack.events.aborts.get(s1) and not stack.events.aborts.get(s2)
    end1 = next(v for v in stack.events.verdicts[s1] if v.seq == ps1[-1].seq)
    end2 = next(v for v in stack.events.verdicts[s2] if v.seq == ps2[-1].seq)
    assert end1.label == end2.label
    assert end1.p_harmful == pytest.approx(end2.p_harmful, abs=1e-3)
    assert not any(v.degraded for sid in (h2, s2) for v in stack.events.verdicts[sid])
    assert not [d for d in stack.events.dead if d.session_id in ends]


async def test_malformed_messages_are_dead_letters_and_the_worker_keeps_going(stack: Stack) -> None:
    topic = stack.settings.topics.chunks
    bad_sid = _sid("bad")
    good = {"v": 1, "session_id": bad_sid, "part": "thinking", "text": "x", "ts": time.time()}
    cases: list[tuple[str, bytes]] = [
        ("undecodable", b"\xff\xfe\x00 not json"),
        ("unknown_version", json.dumps({**good, "v": 2, "seq": 1}).encode()),
        ("invalid_fields", json.dumps({k: v for k, v in good.items() if k != "part"} | {"seq": 1}).encode()),
        ("bad_seq", json.dumps({**good, "seq": 0}).encode()),
        ("no_question", json.dumps({**good, "seq": 1}).encode()),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=stack.settings.kafka.bootstrap, acks="all")
    await producer.start()
    try:
        for _, raw in cases:
            await producer.send_and_wait(topic, raw, key=bad_sid.encode())
    finally:
        await producer.stop()
    after = _sid_on(_partition(bad_sid), "after-bad")  # same partition: read after the bad messages
    plan = _plan(SAMPLES["benign-python-dedupe"], after)
    await _stream(stack.publisher, plan, rate=200)

    def mine() -> list[DeadLetter]:
        return [d for d in stack.events.dead if d.session_id == bad_sid or d.session_id is None]

    await _until(lambda: len(mine()) >= len(cases), SETTLE_S, "the dead letters")
    await _until(
        lambda: stack.events.covered(after, plan[-1].seq), SETTLE_S, "the session after the bad ones"
    )
    reasons = sorted(d.reason for d in mine())
    assert reasons == sorted(reason for reason, _ in cases)
    for dead in mine():
        assert dead.topic == topic and dead.offset >= 0 and dead.raw_b64


async def test_worker_metrics_carry_the_dashboard_labels(stack: Stack) -> None:
    await _until(lambda: any(stack.events.aborts.values()), SETTLE_S, "an abort")
    text = await asyncio.to_thread(_scrape, stack.metrics_port)
    series = [line for line in text.splitlines() if line.startswith("qta_monitor_")]
    for name, labels in [
        ("qta_monitor_chunks_total{", ('part="thinking"',)),
        ("qta_monitor_aborts_total{", ("rule=", "category=", "guard=")),
        ("qta_monitor_dead_letters_total{", ("reason=",)),
        ("qta_monitor_score_seconds_bucket{", ()),
        ("qta_monitor_batch_size_bucket{", ()),
        ("qta_monitor_chunk_to_verdict_seconds_bucket{", ()),
        ("qta_monitor_sessions_live", ()),
    ]:
        found = [s for s in series if s.startswith(name)]
        assert found, f"{name} not exported"
        assert any(all(label in s for label in labels) for s in found), (name, labels)


async def test_two_workers_split_partitions_and_one_survives_a_sigkill(
    services: None, tmp_path: Path
) -> None:
    base = _settings()
    await apply_topics(base)
    logs = {name: tmp_path / f"{name}.log" for name in ("a", "b")}
    workers = {
        name: _start_worker(
            base.model_copy(update={"kafka": base.kafka.model_copy(update={"client_id": name})}), log
        )
        for name, log in logs.items()
    }
    events, stop = Events(), asyncio.Event()
    collector = asyncio.create_task(_collect(base, events, stop))
    try:
        split = await _wait_for_group(base, 2, list(logs.values()))
        assert not split["a"] & split["b"]

        # Sessions alternate between the two workers' partitions, so the one killed holds half of them.
        # (not think-poison-spouse: the shipped weights reach its abort late, so whether it fires depends on
        # where the kill cuts the stream; docs/embedded-guard.md)
        harmful = ["think-gas-attack", "both-threaten-journalist", "both-meth-lab", "think-stalk-ex"]
        safe = [  # (not safe-refuse-account-hack: a run of harmful labels at some cut points aborts it)
            "safe-refuse-bomb",
            "benign-sourdough",
            "benign-python-dedupe",
            "safe-self-harm-support",
        ]
        plans: dict[str, tuple[str, list[Chunk]]] = {}
        for i, name in enumerate(harmful + safe):
            owner = split["a" if i % 2 == 0 else "b"]
            sid = next(s for s in (_sid(name) for _ in range(1000)) if _partition(s) in owner)
            plans[sid] = (name, _plan(SAMPLES[name], sid))
        on_a = [sid for sid in plans if _partition(sid) in split["a"]]
        assert len(on_a) == 4

        async with TracePublisher(base) as publisher:
            streaming = asyncio.gather(*(_stream(publisher, p, rate=8) for _, p in plans.values()))
            await asyncio.sleep(1.0)  # mid-stream: every session has started, none has ended
            workers["a"].send_signal(signal.SIGKILL)
            workers["a"].wait()
            killed_at = time.time()
            await streaming
        await _until(
            lambda: all(events.covered(sid, p[-1].seq) for sid, (_, p) in plans.items()),
            SETTLE_S + 30,
            "the survivor to cover every session",
        )
        assert await _wait_for_group(base, 1, [logs["b"]]) == {"b": set(range(6))}
        for sid, (name, plan) in plans.items():
            verdicts = events.verdicts[sid]
            if name in harmful:
                assert len(events.abort_ids(sid)) == 1, name
            if not events.aborts.get(sid):
                assert max(v.seq for v in verdicts) == plan[-1].seq, name
            assert not any(v.degraded for v in verdicts), name
        # the survivor took over the killed worker's sessions mid-stream
        assert all(
            any(v.ts > killed_at for v in events.verdicts[sid]) or events.aborts.get(sid) for sid in on_a
        )
        assert not [d for d in events.dead if d.session_id in plans]
        assert _stop(workers["b"]) == 0
    finally:
        for worker in workers.values():
            _stop(worker, signal.SIGKILL)
        stop.set()
        await collector
        await delete_topics(base)
