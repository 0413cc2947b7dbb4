"""Scale-out: 1, 2, 4 and 8 `qta-monitor serve --guard profile` processes in one consumer group on the
3-broker cluster (scripts/kafka-cluster.sh), Redis from scripts/services.sh. Per worker count: monitored
tokens/s, sessions held at 30 tokens/s, consumer lag, p99 chunk-to-verdict and chunk-to-abort, the CPU each
party spent per chunk, and the rebalance time when a worker joins and when one leaves (SIGTERM, and SIGKILL).

The guard is monitor/guards/profile.py: it sleeps like the H100 judge (a fixed cost per batch plus a cost per
token forwarded), so a worker's "GPU" costs no CPU and many fit on this box; what the workers spend on CPU is
coordination (Kafka, Redis, the loop). `--scale` slows the profile down (a smaller device), so that the
device, not this 2-core machine, bounds the first worker counts and the point where coordination takes over
shows.

Sessions held: an open-loop generator streams N sessions at `--rate` tokens/s each (16-token chunks, 384
tokens, then `end`; a new session replaces each ended one; one in `--harmful-every` carries the profile
guard's marker at a random chunk, and is stopped with `end` once its abort is read back). N grows by
`--step` each level of `--seconds` until the group's committed lag grows (or p99 chunk-to-verdict passes
`--p99-bound-s`); the last level that held is the figure. Latencies are what a serving stack sees: from the
chunk's producer timestamp to the event read back from Kafka. CPU per chunk: /proc of each worker, the
brokers and redis-server, and this process (the generator and reader) over the level.

    bash scripts/services.sh up && bash scripts/kafka-cluster.sh start
    python bench/scaleout.py                        # 1,2,4,8 workers, cluster, results/scaleout.json
    python bench/scaleout.py --workers 1 --bootstrap 127.0.0.1:19092 --replication 1   # quick, one broker
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import heapq
import itertools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from common import RESULTS, ROOT, quantile, rss_mb, trace_text, write_result

from monitor.demo import settings_env
from monitor.edges.kafka import apply_topics, delete_topics
from monitor.guards.profile import MARKER, Profile
from monitor.messages import Chunk, encode
from monitor.settings import Settings, load_settings

CLUSTER = "127.0.0.1:29092,127.0.0.1:29093,127.0.0.1:29094"
REDIS = "redis://127.0.0.1:16379/0"
CHARS_PER_TOKEN = 4
QUESTION = "Could you explain how to approach this, and what the main steps are? Please be thorough."
STATE = Path(
    os.environ.get(
        "QTA_STATE", Path(os.environ.get("QTA_CACHE", Path.home() / ".cache/qta-monitor")) / "state"
    )
)


# ------------------------------------------------------------------------------------------- settings
def run_settings(
    bootstrap: str,
    redis_url: str,
    partitions: int,
    replication: int,
    tag: str,
    workdir: Path,
    *,
    redis_cluster: bool = False,
    **sections: dict[str, Any],
) -> Settings:
    """Settings of one run: its own topics (chunks with `partitions` partitions, from a copy of
    topics/topics.json) and consumer group."""
    spec = json.loads((ROOT / "topics" / "topics.json").read_text())
    spec["chunks"]["partitions"] = partitions
    spec["verdicts"]["partitions"] = partitions
    (workdir / "topics").mkdir(parents=True, exist_ok=True)
    (workdir / "topics" / "topics.json").write_text(json.dumps(spec))
    names = {k: f"{tag}.{k}" for k in ("chunks", "verdicts", "aborts", "dead_letters", "audits")}
    base: dict[str, Any] = {
        "kafka": {"bootstrap": bootstrap, "group_id": tag, "request_timeout_s": 15.0},
        "redis": {"url": redis_url, "cluster": redis_cluster},
        "topics": {**names, "definitions_dir": str(workdir / "topics")},
        "guard": {"name": "profile"},
        "telemetry": {"metrics_port": 0, "log_level": "INFO"},
    }
    if replication > 1:
        base["topics"].update(replication_factor=replication, min_insync_replicas=2)
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return load_settings(None, **base)


def profile_file(workdir: Path, scale: float) -> Path:
    path = workdir / "profile.json"
    p = Profile(scale=scale)
    path.write_text(json.dumps({"fixed_s": p.fixed_s, "per_token_s": p.per_token_s, "scale": scale}))
    return path


# -------------------------------------------------------------------------------------------- workers
@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    started: float


class Workers:
    """`qta-monitor serve --guard profile` subprocesses of one group, each with its own client id."""

    def __init__(
        self, settings: Settings, workdir: Path, profile: Path | None, env: dict[str, str] | None = None
    ):
        self.settings = settings
        self.workdir = workdir
        self.profile = profile
        self.extra = env or {}
        self.live: list[Worker] = []
        self.gone: list[Worker] = []
        self._names = itertools.count()

    def add(self) -> Worker:
        name = f"w{next(self._names)}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
        env.update(
            settings_env(self.settings), OMP_NUM_THREADS="1", MONITOR_KAFKA__CLIENT_ID=name, **self.extra
        )
        if self.profile is not None:
            env["MONITOR_GUARD__PATH"] = str(self.profile)
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "monitor", "serve", "--guard", "profile"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(name, proc, log, time.time())
        self.live.append(worker)
        return worker

    def remove(self, worker: Worker, sig: int = signal.SIGTERM, wait_s: float = 60.0) -> int | None:
        self.live.remove(worker)
        self.gone.append(worker)
        if worker.proc.poll() is None:
            worker.proc.send_signal(sig)
            try:
                worker.proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()
        return worker.proc.returncode

    def stop_all(self, sig: int = signal.SIGTERM) -> list[int | None]:
        return [self.remove(w, sig) for w in list(self.live)]

    def died(self) -> list[Worker]:
        return [w for w in self.live if w.proc.poll() is not None]


# ------------------------------------------------------------------------------------------ the group
class Group:
    """The consumer group and the chunks topic as the brokers see them (one admin client, one consumer)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap, request_timeout_ms=10000)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, request_timeout_ms=10000)
        self.partitions: list[TopicPartition] = []

    async def start(self) -> None:
        await self.admin.start()
        await self.consumer.start()
        topic = self.settings.topics.chunks
        parts = self.consumer.partitions_for_topic(topic)
        while not parts:
            await self.consumer._client.force_metadata_update()
            parts = self.consumer.partitions_for_topic(topic)
        self.partitions = [TopicPartition(topic, p) for p in sorted(parts)]

    async def close(self) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def assignment(self) -> tuple[str, dict[str, set[int]]]:
        """The group's state and the chunk partitions of each member (by client id)."""
        (response,) = await self.admin.describe_consumer_groups([self.settings.kafka.group_id])
        group = response.to_object()["groups"][0]
        out: dict[str, set[int]] = {}
        for member in group["members"]:
            raw = member["member_assignment"]
            assignment = ConsumerProtocolMemberAssignment.decode(raw).assignment if raw else []
            out[member["client_id"]] = {
                p for t, ps in assignment if t == self.settings.topics.chunks for p in ps
            }
        return group["state"], out

    async def stable_with(self, names: set[str], timeout_s: float = 120.0, poll_s: float = 0.1) -> float:
        """Wait until the group is Stable with exactly `names` as members covering every partition;
        returns the time.time() it was first seen so."""
        deadline = time.monotonic() + timeout_s
        want = {tp.partition for tp in self.partitions}
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                state, split = await self.assignment()
                if state == "Stable" and set(split) == names and set().union(*split.values()) == want:
                    return time.time()
            await asyncio.sleep(poll_s)
        raise TimeoutError(f"group never became stable with {sorted(names)}")

    async def lag(self) -> int:
        """Records after the group's committed offsets, summed over the chunks partitions (KEDA's lag)."""
        ends = await self.consumer.end_offsets(self.partitions)
        committed = await self.admin.list_consumer_group_offsets(self.settings.kafka.group_id)
        return sum(
            max(0, ends[tp] - (committed[tp].offset if tp in committed else 0)) for tp in self.partitions
        )


# ---------------------------------------------------------------------------------------- the traffic
@dataclass
class Session:
    sid: str
    chunks: list[Chunk]
    harmful: bool
    marker_seq: int = 0  # seq of the chunk that carries the marker
    sent: int = 0  # chunks sent so far
    stopped: bool = False  # no more chunks will be sent (ended, aborted or cut at the end of a level)
    ended: bool = False  # its `end` was sent
    name: str = "synthetic"  # or the bundled sample's id

    @property
    def harm_sent(self) -> bool:
        """The harmful part was sent (a session cut before its marker is a safe one)."""
        return self.harmful and self.sent >= self.marker_seq


@dataclass
class Observed:
    """Events read back: per verdict (read time, latency, sid, seq); per abort (read time, latency)."""

    verdicts: list[tuple[float, float, str, int]] = field(default_factory=list)
    aborts: dict[str, list[tuple[float, float, str, int]]] = field(default_factory=lambda: defaultdict(list))
    dead: list[dict[str, Any]] = field(default_factory=list)
    covered: dict[str, int] = field(default_factory=dict)  # sid -> highest seq with a verdict
    degraded: set[str] = field(default_factory=set)


class Traffic:
    """Open-loop load: sessions at `rate` tokens/s each, chunks sent when due whatever the workers do, and a
    reader of verdicts, aborts and dead letters. Keep `live` sessions going (each ended one replaced)."""

    def __init__(
        self,
        settings: Settings,
        *,
        rate: float = 30.0,
        chunk_tokens: int = 16,
        session_tokens: int = 384,
        harmful_every: int = 8,
        seed: int = 0,
        samples: Sequence[dict[str, Any]] = (),
        sample_every: int = 0,
    ):
        self.settings = settings
        self.rate, self.chunk_tokens, self.session_tokens = rate, chunk_tokens, session_tokens
        self.harmful_every = harmful_every
        self.samples, self.sample_every = list(samples), sample_every
        self.rng = random.Random(seed)
        self.interval = chunk_tokens / rate
        self.producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            request_timeout_ms=30000,
        )
        self.reader = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        self.observed = Observed()
        self.sessions: dict[str, Session] = {}
        self.target = 0
        self.chunks_sent = 0
        self.sent_at: list[tuple[float, int]] = []  # (time, chunks sent so far), once a second
        self._heap: list[tuple[float, int, str]] = []
        self._count = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: list[asyncio.Future[Any]] = []
        self.prefix = uuid.uuid4().hex[:6]
        self.extra_sessions: list[Session] = []  # planned elsewhere (the soak's bundled samples)
        self.send_errors = 0
        self._live = 0
        self._planned = itertools.count()  # session numbers: every harmful_every-th is harmful

    async def start(self) -> None:
        await self.producer.start()
        await self.reader.start()
        t = self.settings.topics
        parts = []
        for topic in (t.verdicts, t.aborts, t.dead_letters):
            ps = self.reader.partitions_for_topic(topic)
            while not ps:
                await self.reader._client.force_metadata_update()
                ps = self.reader.partitions_for_topic(topic)
            parts += [TopicPartition(topic, p) for p in ps]
        self.reader.assign(parts)
        self._tasks = [asyncio.create_task(self._send_loop()), asyncio.create_task(self._read_loop())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self.producer.stop()
        with contextlib.suppress(Exception):
            await self.reader.stop()

    # -- planning
    def plan(self, n: int) -> Session:
        sid = f"so-{self.prefix}-{n}"
        if self.samples and self.sample_every and n % self.sample_every == self.sample_every // 2:
            return self.plan_sample(sid, self.samples[n // self.sample_every % len(self.samples)])
        text = trace_text(self.session_tokens * CHARS_PER_TOKEN, seed=n)
        size = self.chunk_tokens * CHARS_PER_TOKEN
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        harmful = self.harmful_every > 0 and n % self.harmful_every == self.harmful_every - 1
        marker_seq = 0
        if harmful:  # the marker lands in the second quarter of the thinking
            k = self.rng.randrange(len(pieces) // 4, len(pieces) // 2)
            pieces[k] = MARKER + " " + pieces[k][: size - len(MARKER) - 1]
            marker_seq = k + 2
        chunks = [Chunk(session_id=sid, seq=1, part="question", text=QUESTION)]
        chunks += [Chunk(session_id=sid, seq=i + 2, part="thinking", text=p) for i, p in enumerate(pieces)]
        chunks.append(Chunk(session_id=sid, seq=len(chunks) + 1, part="end"))
        return Session(sid, chunks, harmful, marker_seq)

    def plan_sample(self, sid: str, sample: dict[str, Any]) -> Session:
        """A bundled sample (monitor/samples/sessions.jsonl) in chunks of this run's size; the profile guard
        scores it harmful from its first response chunk when its label is 1."""
        size = self.chunk_tokens * CHARS_PER_TOKEN
        chunks = [Chunk(session_id=sid, seq=1, part="question", text=sample["question"])]
        for part in ("thinking", "answer"):
            text = sample.get(part) or ""
            for i in range(0, len(text), size):
                chunks.append(Chunk(session_id=sid, seq=len(chunks) + 1, part=part, text=text[i : i + size]))
        chunks.append(Chunk(session_id=sid, seq=len(chunks) + 1, part="end"))
        return Session(sid, chunks, sample["label"] == 1, 2, name=sample["id"])

    def schedule(self, session: Session, at: float) -> None:
        self.sessions[session.sid] = session
        self._live += 1
        heapq.heappush(self._heap, (at, next(self._count), session.sid))

    def set_live(self, n: int) -> None:
        """Keep `n` sessions streaming (new ones start spread over one chunk interval)."""
        now = time.monotonic()
        while self.target < n:
            self.target += 1
            self.schedule(self.plan(next(self._planned)), now + self.rng.random() * self.interval)
        self.target = n  # fewer: ended sessions are not replaced until the count falls to n

    def live(self) -> int:
        return self._live

    async def end_all(self) -> None:
        """Send `end` to every open session and stop replacing them."""
        self.target = 0
        self._heap.clear()
        for s in self.sessions.values():
            if not s.stopped:
                s.stopped = True
                self._live -= 1
            if s.sent > 0 and not s.ended:
                await self._end(s)

    async def _end(self, s: Session) -> None:
        s.ended = True
        await self._send(s.chunks[-1].model_copy(update={"seq": s.chunks[s.sent - 1].seq + 1}))

    # -- sending
    async def _send(self, chunk: Chunk) -> None:
        chunk = chunk.model_copy(update={"ts": time.time()})
        fut = await self.producer.send(
            self.settings.topics.chunks, encode(chunk), key=chunk.session_id.encode()
        )
        self._pending.append(fut)
        self.chunks_sent += 1

    async def _send_loop(self) -> None:
        next_mark = time.monotonic()
        while True:
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now:
                at, _, sid = heapq.heappop(self._heap)
                s = self.sessions[sid]
                if s.stopped:
                    continue
                if sid in self.observed.aborts:  # the stack stops at the abort
                    s.stopped = True
                    await self._end(s)
                else:
                    await self._send(s.chunks[s.sent])
                    s.sent += 1
                    s.ended = s.sent == len(s.chunks)
                if s.stopped or s.sent == len(s.chunks):
                    s.stopped = True
                    self._live -= 1
                    if self.live() < self.target:
                        self.schedule(self.plan(next(self._planned)), max(now, at + self.interval))
                else:
                    heapq.heappush(self._heap, (at + self.interval, next(self._count), sid))
            if len(self._pending) > 256 or (self._pending and not self._heap):
                done, self._pending = self._pending, []
                for result in await asyncio.gather(*done, return_exceptions=True):
                    self.send_errors += isinstance(result, BaseException)
            if now >= next_mark:
                self.sent_at.append((time.time(), self.chunks_sent))
                next_mark = now + 1.0
            wait = (self._heap[0][0] - time.monotonic()) if self._heap else 0.02
            await asyncio.sleep(max(0.001, min(wait, 0.02)))

    # -- reading
    async def _read_loop(self) -> None:
        t = self.settings.topics
        obs = self.observed
        while True:
            try:
                batches = await self.reader.getmany(timeout_ms=200, max_records=2000)
            except Exception:  # a broker restarting under the reader: try again
                await asyncio.sleep(0.5)
                continue
            now = time.time()
            for tp, records in batches.items():
                for r in records:
                    value = orjson.loads(r.value)
                    if tp.topic == t.verdicts:
                        sid, seq = value["session_id"], value["seq"]
                        obs.verdicts.append((now, now - value["chunk_ts"], sid, seq))
                        if seq > obs.covered.get(sid, 0):
                            obs.covered[sid] = seq
                        if value.get("degraded"):
                            obs.degraded.add(sid)
                    elif tp.topic == t.aborts:
                        obs.aborts[value["session_id"]].append(
                            (now, now - value["chunk_ts"], value["event_id"], value["seq"])
                        )
                    else:
                        obs.dead.append(value)


# ------------------------------------------------------------------------------------------ CPU time
def _ticks(pid: int) -> float:
    """CPU seconds (user + system) of a process and its reaped children so far; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:13]) / os.sysconf("SC_CLK_TCK")


def service_pids(bootstrap: str) -> dict[str, list[int]]:
    """Broker and redis-server pids, from the scripts' pid files (the cluster's or the single broker's)."""
    out: dict[str, list[int]] = {"kafka": [], "redis": []}
    cluster = STATE / "kafka-cluster-29092"
    files = (
        sorted(cluster.glob("node-*/kafka.pid"))
        if "29092" in bootstrap
        else [STATE / "kafka-19092/kafka.pid"]
    )
    for f in files:
        with contextlib.suppress(OSError, ValueError):
            out["kafka"].append(int(f.read_text().split()[0]))
    for f in [*STATE.glob("redis-16379/*.pid"), *STATE.glob("redis-cluster-*/*/redis.pid")]:
        with contextlib.suppress(OSError, ValueError):
            out["redis"].append(int(f.read_text().split()[0]))
    if not out["redis"]:
        with contextlib.suppress(Exception):
            info = subprocess.run(
                ["redis-cli", "-p", "16379", "info", "server"], capture_output=True, text=True
            )
            out["redis"] = [
                int(line.split(":")[1]) for line in info.stdout.splitlines() if line.startswith("process_id:")
            ]
    return out


class CpuMeter:
    """CPU seconds spent by each party between start() and stop()."""

    def __init__(self, parties: dict[str, list[int]]):
        self.parties = parties
        self.t0: dict[str, float] = {}
        self.wall0 = 0.0

    def start(self) -> None:
        self.t0 = {k: sum(_ticks(p) for p in pids) for k, pids in self.parties.items()}
        self.t0["bench"] = time.process_time()
        self.wall0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        now = {k: sum(_ticks(p) for p in pids) for k, pids in self.parties.items()}
        now["bench"] = time.process_time()
        wall = time.monotonic() - self.wall0
        out = {f"{k}_cores": round((now[k] - self.t0.get(k, 0.0)) / wall, 3) for k in now}
        out["wall_s"] = round(wall, 2)
        return out


# -------------------------------------------------------------------------------------------- levels
def window(obs: Observed, t0: float, t1: float) -> dict[str, Any]:
    verdicts = [lat for at, lat, _, _ in obs.verdicts if t0 <= at < t1]
    aborts = [lat for evs in obs.aborts.values() for at, lat, _, _ in evs[:1] if t0 <= at < t1]
    return {
        "verdicts": len(verdicts),
        "chunk_to_verdict_p50_s": round(quantile(verdicts, 0.5), 4),
        "chunk_to_verdict_p99_s": round(quantile(verdicts, 0.99), 4),
        "aborts": len(aborts),
        "chunk_to_abort_p50_s": round(quantile(aborts, 0.5), 4),
        "chunk_to_abort_p99_s": round(quantile(aborts, 0.99), 4),
    }


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (per unit of x); 0 for fewer than 3 points."""
    if len(points) < 3:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


async def run_level(
    traffic: Traffic,
    group: Group,
    cpu: CpuMeter,
    sessions: int,
    seconds: float,
    warmup_s: float,
    bound_s: float,
) -> dict[str, Any]:
    """`sessions` live for warmup + seconds; figures over the measured part."""
    traffic.set_live(sessions)
    await asyncio.sleep(warmup_s)
    t0, covered0, sent0 = time.time(), dict(traffic.observed.covered), traffic.chunks_sent
    cpu.start()
    lags: list[tuple[float, float]] = []
    while time.time() - t0 < seconds:
        with contextlib.suppress(Exception):
            lags.append((time.time() - t0, float(await group.lag())))
        await asyncio.sleep(1.0)
    t1 = time.time()
    used = cpu.stop()
    covered1 = dict(traffic.observed.covered)
    chunks_covered = sum(seq - covered0.get(sid, 0) for sid, seq in covered1.items())
    chunks_sent = traffic.chunks_sent - sent0
    rate_chunks = chunks_sent / (t1 - t0)
    growth = slope(lags)
    row = {
        "sessions": sessions,
        "chunks_per_s_sent": round(rate_chunks, 1),
        "monitored_tokens_per_s": round(chunks_covered * traffic.chunk_tokens / (t1 - t0), 1),
        "offered_tokens_per_s": round(chunks_sent * traffic.chunk_tokens / (t1 - t0), 1),
        "lag_max": max((y for _, y in lags), default=0),
        "lag_mean": round(statistics.fmean(y for _, y in lags), 1) if lags else 0,
        "lag_growth_per_s": round(growth, 2),
        **window(traffic.observed, t0, t1),
        "cpu": used,
    }
    cpu_chunks = max(1, chunks_covered)
    row["cpu_ms_per_chunk"] = {
        k.removesuffix("_cores"): round(1000 * v * used["wall_s"] / cpu_chunks, 3)
        for k, v in used.items()
        if k.endswith("_cores")
    }
    row["held"] = held(row, bound_s)
    return row


def held(row: dict[str, Any], bound_s: float) -> bool:
    """A level holds when the committed lag grows by at most 1 % of the chunk rate (2 chunks/s at least:
    noise) over the level and the p99 chunk-to-verdict stays within the bound."""
    allowed = max(2.0, 0.01 * row["chunks_per_s_sent"])
    return bool(row["lag_growth_per_s"] <= allowed and row["chunk_to_verdict_p99_s"] <= bound_s)


async def drain(traffic: Traffic, group: Group, timeout_s: float = 90.0) -> float:
    """End every session and wait until the committed lag is 0; returns how long that took."""
    await traffic.end_all()
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        with contextlib.suppress(Exception):
            if await group.lag() == 0:
                break
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.0)
    return time.monotonic() - started


async def rebalance(workers: Workers, group: Group, traffic: Traffic, how: str) -> dict[str, Any]:
    """Time one membership change under the running traffic: `join` (a new worker), `leave` (SIGTERM of
    the newest) or `crash` (SIGKILL of the newest). From the change (the joiner's first line in its log
    that says it consumes; the signal) to the group Stable with every partition owned again, and the
    longest gap between verdicts read back in that interval."""
    before = {w.name for w in workers.live}
    if how == "join":
        w = workers.add()
        while "worker started" not in w.log.read_text(errors="replace"):
            await asyncio.sleep(0.05)
            if w.proc.poll() is not None:
                raise RuntimeError(f"{w.name} exited:\n{w.log.read_text()[-2000:]}")
        t0 = time.time()
        names = before | {w.name}
    else:
        w = workers.live[-1]
        t0 = time.time()
        sig = signal.SIGTERM if how == "leave" else signal.SIGKILL
        loop = asyncio.get_running_loop()
        exit_task = loop.run_in_executor(None, workers.remove, w, sig)
        names = before - {w.name}
    t1 = await group.stable_with(names, timeout_s=180.0)
    if how != "join":
        await exit_task
    await asyncio.sleep(2.0)
    reads = sorted(at for at, *_ in traffic.observed.verdicts if t0 - 1.0 <= at <= t1 + 2.0)
    gaps = [b - a for a, b in itertools.pairwise(reads)]
    lat = window(traffic.observed, t0, t1 + 2.0)
    return {
        "event": how,
        "worker": w.name,
        "members_after": len(names),
        "rebalance_s": round(t1 - t0, 2),
        "longest_verdict_gap_s": round(max(gaps, default=float("nan")), 2),
        "chunk_to_verdict_p99_s": lat["chunk_to_verdict_p99_s"],
    }


# ----------------------------------------------------------------------------------------- profiling
def py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """Sample one worker on-CPU (not idle) for `seconds` into collapsed stacks at `out`, if py-spy exists."""
    import shutil

    exe = shutil.which("py-spy")
    if exe is None:
        return None
    return subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


BUCKETS = (  # first match wins, checked from the innermost frame outwards (paths as py-spy prints them)
    ("guard (profile sleep)", ("/guards/",)),
    ("redis (client + store edge)", ("(redis/", "/store.py")),
    ("kafka (aiokafka + edge)", ("(aiokafka/", "(kafka/", "/kafka.py")),
    ("message decode/encode (pydantic, orjson)", ("(pydantic", "/messages.py", "(orjson")),
    ("fold, schedule, policy (core)", ("/session.py", "/schedule.py", "/policy.py", "/prefixes.py")),
    ("executor hand-off (threads)", ("(concurrent/futures", "(threading.py")),
    ("telemetry (opentelemetry)", ("(opentelemetry", "/telemetry.py")),
    ("worker loop + pipeline glue", ("/worker.py", "/pipeline.py")),
    ("asyncio event loop + epoll", ("(asyncio/", "(selectors.py")),
)


def summarize_profile(path: Path) -> dict[str, Any]:
    """Share of on-CPU samples per bucket, from py-spy's raw (collapsed) output."""
    counts: dict[str, int] = defaultdict(int)
    leaves: dict[str, int] = defaultdict(int)
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        total += int(n)
        bucket = "other"
        for frame in reversed(frames):
            hit = next((b for b, keys in BUCKETS if any(k in frame for k in keys)), None)
            if hit is not None:
                bucket = hit
                break
        counts[bucket] += int(n)
        leaves[frames[-1][:140]] += int(n)
    top = sorted(leaves.items(), key=lambda kv: -kv[1])[:12]
    return {
        "samples": total,
        "share": {k: round(v / total, 3) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}
        if total
        else {},
        "top_leaf_frames": [(f, round(n / total, 3)) for f, n in top] if total else [],
    }


# -------------------------------------------------------------------------------------------- the run
@contextlib.contextmanager
def workdir_for(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="qta-scaleout-"))
    yield path
    if not keep:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


async def one_count(args: argparse.Namespace, n_workers: int, workdir: Path) -> dict[str, Any]:
    tag = f"scaleout-{n_workers}w-{uuid.uuid4().hex[:6]}"
    settings = run_settings(args.bootstrap, args.redis_url, args.partitions, args.replication, tag, workdir)
    await apply_topics(settings)
    profile = profile_file(workdir, args.scale)
    workers = Workers(settings, workdir / tag, profile)
    (workdir / tag).mkdir(parents=True, exist_ok=True)
    group = Group(settings)
    traffic = Traffic(settings, rate=args.rate, harmful_every=args.harmful_every, seed=n_workers)
    result: dict[str, Any] = {"workers": n_workers, "levels": [], "rebalances": []}
    try:
        for _ in range(n_workers):
            workers.add()
        await group.start()
        await group.stable_with({w.name for w in workers.live}, timeout_s=240.0)
        await traffic.start()
        pids = service_pids(args.bootstrap)
        cpu = CpuMeter({"workers": [w.proc.pid for w in workers.live], **pids})
        sessions = max(1, int(args.start_sessions * n_workers))
        held: dict[str, Any] | None = None
        while sessions <= args.max_sessions:
            row = await run_level(traffic, group, cpu, sessions, args.seconds, args.warmup, args.p99_bound_s)
            row["drain_s"] = round(await drain(traffic, group), 1)
            result["levels"].append(row)
            print(
                f"{n_workers}w {sessions:5d} sessions: {row['monitored_tokens_per_s']:9,.0f} tok/s monitored "
                f"({row['offered_tokens_per_s']:,.0f} offered), lag max {row['lag_max']:.0f} "
                f"growth {row['lag_growth_per_s']:+.1f}/s, verdict p99 {row['chunk_to_verdict_p99_s']:.2f}s, "
                f"abort p99 {row['chunk_to_abort_p99_s']:.2f}s ({row['aborts']}), cpu {row['cpu']} "
                f"-> {'held' if row['held'] else 'NOT held'}",
                flush=True,
            )
            if workers.died():
                raise RuntimeError(f"a worker died: {[w.log for w in workers.died()]}")
            if not row["held"]:
                break
            held = row
            sessions = int(sessions * args.step) + 1
        result["held"] = held
        result["saturated"] = result["levels"][-1] if not result["levels"][-1]["held"] else None
        if held is not None and args.profile_seconds > 0:
            prof = RESULTS / f"{args.out_name}-{n_workers}w-worker.pyspy.txt"
            spy = py_spy(workers.live[0].proc.pid, args.profile_seconds, prof)
            top = result["saturated"] or held
            row = await run_level(
                traffic, group, cpu, top["sessions"], args.profile_seconds, args.warmup, args.p99_bound_s
            )
            if spy is not None:
                spy.wait(timeout=60)
            await drain(traffic, group)
            result["profiled_level"] = row
            if prof.exists():
                result["profile"] = summarize_profile(prof) | {"file": str(prof.relative_to(ROOT))}
                print(
                    f"{n_workers}w profile of w0 at {top['sessions']} sessions: {result['profile']['share']}"
                )
        if held is not None and n_workers < args.rebalance_max_workers:
            traffic.set_live(max(1, held["sessions"] // 2))
            await asyncio.sleep(args.warmup)
            for how in ("join", "leave", "join", "crash"):
                ev = await rebalance(workers, group, traffic, how)
                result["rebalances"].append(ev)
                print(f"{n_workers}w rebalance: {ev}", flush=True)
                await asyncio.sleep(3.0)
            await drain(traffic, group)
        result["dead_letters"] = len(traffic.observed.dead)
        result["send_errors"] = traffic.send_errors
        result["worker_rss_mb"] = [round(rss_mb(w.proc.pid), 1) for w in workers.live]
    finally:
        await traffic.close()
        codes = workers.stop_all()
        result["exit_codes"] = codes
        with contextlib.suppress(Exception):
            await group.close()
        with contextlib.suppress(Exception):
            await delete_topics(settings)
    return result


# ------------------------------------------------------------------------------- Redis per live session
def redis_info(url: str) -> dict[str, int]:
    """used_memory, used_memory_dataset and keys of the Redis at `url` (one node)."""
    port = url.rsplit(":", 1)[1].split("/")[0]
    out: dict[str, int] = {}
    for line in subprocess.run(
        ["redis-cli", "-p", port, "info", "memory"], capture_output=True, text=True, check=True
    ).stdout.splitlines():
        key, _, value = line.strip().partition(":")
        if key in ("used_memory", "used_memory_dataset"):
            out[key] = int(value)
    dbsize = subprocess.run(["redis-cli", "-p", port, "dbsize"], capture_output=True, text=True, check=True)
    out["keys"] = int(dbsize.stdout.strip())
    return out


def private_redis(port: int) -> str:
    """scripts/redis.sh on `port`, emptied; its url."""
    env = {**os.environ, "QTA_REDIS_PORT": str(port)}
    subprocess.run(
        ["bash", str(ROOT / "scripts/redis.sh"), "start"], env=env, check=True, capture_output=True
    )
    subprocess.run(["redis-cli", "-p", str(port), "flushall"], check=True, capture_output=True)
    return f"redis://127.0.0.1:{port}/0"


async def redis_memory(args: argparse.Namespace, workdir: Path, tokens: int) -> dict[str, Any]:
    """Redis bytes per live session of `tokens` trace tokens: `args.redis_memory` sessions streamed chunk by
    chunk in lockstep (each round waits for a verdict on every session, as a live stream is scored once per
    chunk, so the capped score list fills as it would), never ended; INFO memory before and after, on a
    private Redis (scripts/redis.sh on `--memory-redis-port`, emptied first)."""
    port = args.memory_redis_port
    url = private_redis(port)
    tag = f"redismem-{tokens}-{uuid.uuid4().hex[:6]}"
    settings = run_settings(args.bootstrap, url, args.partitions, args.replication, tag, workdir)
    await apply_topics(settings)
    workers = Workers(settings, workdir, profile_file(workdir, args.scale))
    traffic = Traffic(settings, session_tokens=tokens, harmful_every=0)
    group = Group(settings)
    try:
        workers.add()
        await group.start()
        await group.stable_with({w.name for w in workers.live})
        await traffic.start()
        await asyncio.sleep(1.0)
        before = redis_info(url)
        plans = [traffic.plan(n) for n in range(args.redis_memory)]
        for k in range(len(plans[0].chunks) - 1):  # every chunk but `end`
            for p in plans:
                await traffic._send(p.chunks[k])
            if k == 0:  # a question alone is not scored
                continue
            deadline = time.monotonic() + 120
            while any(traffic.observed.covered.get(p.sid, 0) < k + 1 for p in plans):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"round {k} not covered")
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        after = redis_info(url)
        n = len(plans)
        return {
            "sessions": n,
            "trace_tokens": tokens,
            "chars_held": len(QUESTION) + tokens * CHARS_PER_TOKEN,
            "before": before,
            "after": after,
            "used_memory_per_session_b": round((after["used_memory"] - before["used_memory"]) / n),
            "dataset_per_session_b": round(
                (after["used_memory_dataset"] - before["used_memory_dataset"]) / n
            ),
            "keys_per_session": round((after["keys"] - before["keys"]) / n, 2),
        }
    finally:
        await traffic.close()
        workers.stop_all()
        with contextlib.suppress(Exception):
            await group.close()
        with contextlib.suppress(Exception):
            await delete_topics(settings)
        private_redis(port)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2,4,8", help="worker counts, comma-separated")
    ap.add_argument("--bootstrap", default=CLUSTER)
    ap.add_argument(
        "--replication", type=int, default=3, help="topics' replication factor (min ISR 2 if > 1)"
    )
    ap.add_argument("--redis-url", default=REDIS)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--scale", type=float, default=1.0, help="profile slow-down: 1 = the H100 judge")
    ap.add_argument("--rate", type=float, default=30.0, help="tokens/s per session")
    ap.add_argument("--harmful-every", type=int, default=8)
    ap.add_argument("--start-sessions", type=float, default=20, help="first level, per worker")
    ap.add_argument("--step", type=float, default=1.5, help="sessions grow by this factor per level")
    ap.add_argument("--max-sessions", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=20.0, help="measured part of a level")
    ap.add_argument("--warmup", type=float, default=6.0)
    ap.add_argument("--p99-bound-s", type=float, default=2.0, help="a level with a higher verdict p99 fails")
    ap.add_argument("--profile-seconds", type=float, default=15.0, help="py-spy of worker 0; 0: none")
    ap.add_argument("--rebalance-max-workers", type=int, default=99, help="time rebalances below this count")
    ap.add_argument("--out-name", default="scaleout")
    ap.add_argument("--keep", action="store_true", help="keep the run's folder (worker logs)")
    ap.add_argument(
        "--redis-memory", type=int, default=0, help="only measure Redis per live session, N sessions"
    )
    ap.add_argument("--memory-tokens", default="384,1536", help="trace tokens per session for --redis-memory")
    ap.add_argument("--memory-redis-port", type=int, default=17131)
    args = ap.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    rows = []
    with workdir_for(args.keep) as workdir:
        if args.redis_memory:
            sizes = [asyncio.run(redis_memory(args, workdir, int(t))) for t in args.memory_tokens.split(",")]
            for size in sizes:
                print(
                    f"redis: {size['sessions']} live sessions of {size['trace_tokens']} tokens: "
                    f"{size['used_memory_per_session_b']:,} B used_memory, "
                    f"{size['dataset_per_session_b']:,} B data set, {size['keys_per_session']} keys each",
                    flush=True,
                )
            write_result(f"{args.out_name}-redis-memory", {"args": vars(args), "sizes": sizes})
            return
        print(f"run folder {workdir}; load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
        for n in counts:
            load0 = os.getloadavg()[0]
            row = asyncio.run(one_count(args, n, workdir))
            row["load_avg_1m"] = [load0, os.getloadavg()[0]]
            rows.append(row)
            profile = dataclasses.asdict(Profile(scale=args.scale))
            write_result(args.out_name, {"args": vars(args), "profile": profile, "counts": rows})


if __name__ == "__main__":
    main()
