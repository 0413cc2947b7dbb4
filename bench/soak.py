"""Soak under combined faults: `--minutes` (default 30) of open-loop traffic at about 70 % of the measured
capacity through 2-4 `qta-monitor serve --guard profile` workers on the 3-broker cluster
(scripts/kafka-cluster.sh) and a Redis Cluster of three primaries with a replica each
(scripts/redis-cluster.sh, its own ports), while a seeded schedule injects faults at random points:

    worker_kill    SIGKILL of a random worker, a replacement started at once
    worker_add     one more worker (at most 4)
    worker_remove  SIGTERM of a random worker (at least 2 stay)
    broker         SIGKILL of the leader of the busiest chunks partition, restarted `--broker-down-s` later
    redis          SIGKILL of the primary serving a live session, its replica promoted; the dead node
                   restarted (it rejoins as the new primary's replica)

Each kind comes `--rounds` times, shuffled by the seed (so the worker count stays within 2-4), one fault per
equal slot of the run at a random point of the slot. A fault's window runs from the fault to its recovery
(group stable again, broker back in every ISR, Redis cluster ok with a replica per primary) plus the time
the committed lag takes to come back to its level before the fault.

Traffic: bench/scaleout.py's generator (16-token chunks at 30 tokens/s, 384-token sessions, one in eight
carries the profile guard's marker) plus every tenth session a bundled sample of the fault tests' mixed set
(tests/integration/mixed_replay.py: four harmful, three safe). The stack stops a session at its abort (sends
`end`); at the end every open session gets its `end`.

Checks afterwards (exit 1 when one fails): every chunk of every session covered by a verdict (a safe session's
`end` has one; a harmful one has its abort), exactly one abort (distinct event id) per session whose harmful
part was sent and none before it, none on the safe ones, no dead letter and no degraded verdict, worker RSS
and Redis memory flat after warm-up (growth within max(10 % of the level, 1 MB): for worker RSS summed over
the quiet time between fault windows, since a fault's backlog raises the allocator's high-water mark once;
for the Redis data set over the span outside Redis faults; slopes reported in MB/h), and p99
chunk-to-verdict outside the fault windows within `--p99-bound-s`.
Redis keys expire `--session-ttl-s` after a session's last write (the default 1 day would make Redis memory
grow for a day by design), and `redis.wait_replicas` is 1 (an abort claim is acknowledged by a replica).

    nice -n 10 python bench/soak.py                       # 30 minutes, results/soak.json
    python bench/soak.py --minutes 3 --out /tmp/soak.json  # the CI variant (tests/integration/test_soak.py)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from common import RESULTS, ROOT, quantile, rss_mb, write_result
from scaleout import CLUSTER, STATE, Group, Session, Traffic, Workers, profile_file, run_settings, slope

from monitor.edges.kafka import apply_topics, delete_topics, topic_specs
from monitor.settings import Settings

REDIS_PORT = 17121  # six nodes 17121-17126: not the fail-over tests' 17101 / 17111
KINDS = ("worker_kill", "worker_add", "worker_remove", "broker", "redis")
MIXED = (
    "think-gas-attack",
    "both-threaten-journalist",
    "both-meth-lab",
    "think-stalk-ex",
    "benign-sourdough",
    "safe-self-harm-support",
    "benign-python-dedupe",
)


# ------------------------------------------------------------------------------------------ services
def sh(script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 240) -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / script), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


class RedisCluster:
    """Three primaries with a replica each from REDIS_PORT on (scripts/redis-cluster.sh)."""

    def __init__(self, first: int = REDIS_PORT):
        self.first = first
        self.ports = list(range(first, first + 6))
        self.env = {"QTA_REDIS_CLUSTER_PORT": str(first), "QTA_REDIS_CLUSTER_REPLICAS": "1"}
        self.dir = STATE / f"redis-cluster-{first}"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.first}/0"

    def start(self) -> None:
        sh("redis-cluster.sh", "stop", env=self.env)  # fresh: a node killed by an earlier run lost its place
        sh("redis-cluster.sh", "start", env=self.env)

    def stop(self) -> None:
        sh("redis-cluster.sh", "stop", env=self.env)

    def cli(self, port: int, *args: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return done.stdout

    def alive(self) -> list[int]:
        return [p for p in self.ports if "PONG" in self.cli(p, "ping")]

    def primaries(self) -> list[int]:
        return [p for p in self.alive() if "role:master" in self.cli(p, "info", "replication")]

    def ok(self) -> bool:
        """Every node up, the cluster ok, and three primaries each with an in-sync replica."""
        alive = self.alive()
        if len(alive) < 6 or any("cluster_state:ok" not in self.cli(p, "cluster", "info") for p in alive):
            return False
        linked = sum("master_link_status:up" in self.cli(p, "info", "replication") for p in alive)
        return linked == 3 and len(self.primaries()) == 3

    def memory(self) -> tuple[int, int, int]:
        """Summed over the primaries (the data set once, not the replicas' copies): used_memory,
        used_memory_dataset (used_memory less Redis' own overhead: replication backlogs, client buffers)
        and keys."""
        used = dataset = keys = 0
        for p in self.primaries():
            for line in self.cli(p, "info", "memory").splitlines():
                if line.startswith("used_memory:"):
                    used += int(line.split(":")[1])
                elif line.startswith("used_memory_dataset:"):
                    dataset += int(line.split(":")[1])
            keys += int(self.cli(p, "dbsize").strip() or 0)
        return used, dataset, keys

    def owner(self, key: str) -> int:
        slot = int(self.cli(self.alive()[0], "cluster", "keyslot", key).strip())
        for line in self.cli(self.alive()[0], "cluster", "nodes").splitlines():
            parts = line.split()
            if "master" in parts[2] and "fail" not in parts[2]:
                for r in parts[8:]:
                    lo, _, hi = r.partition("-")
                    if r[0].isdigit() and int(lo) <= slot <= int(hi or lo):
                        return int(parts[1].split(":")[1].split("@")[0])
        raise RuntimeError(f"no primary serves slot {slot}")

    def kill(self, port: int) -> None:
        os.kill(int((self.dir / str(port) / "redis.pid").read_text()), signal.SIGKILL)

    def restart(self, port: int) -> None:
        """Start a killed node with its old nodes.conf, so it rejoins (as a replica of the promoted one)."""
        d = self.dir / str(port)
        subprocess.run(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--dir",
                str(d),
                "--daemonize",
                "yes",
                "--pidfile",
                str(d / "redis.pid"),
                "--logfile",
                str(d / "redis.log"),
                "--save",
                "",
                "--appendonly",
                "no",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
                "--protected-mode",
                "yes",
            ],
            check=True,
            timeout=30,
        )


async def isr_full(bootstrap: str, topics: list[str]) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await admin.start()
        for described in await admin.describe_topics(topics):
            if described["error_code"] != 0:
                return False
            if any(sorted(p["isr"]) != [1, 2, 3] or p["leader"] < 0 for p in described["partitions"]):
                return False
        return True
    except Exception:
        return False
    finally:
        await admin.close()


async def leaders(bootstrap: str, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return {p["partition"]: p["leader"] for p in described["partitions"]}
    finally:
        await admin.close()


# --------------------------------------------------------------------------------------------- faults
@dataclass
class Fault:
    kind: str
    at_s: float  # planned, seconds from the start of traffic
    start: float = 0.0  # wall clock (time.time)
    recovered: float = 0.0
    end: float = 0.0  # recovered + the lag back to its level
    detail: dict[str, Any] = field(default_factory=dict)


def schedule(
    seed: int, seconds: float, rounds: int, first_s: float, last_s: float, kinds_run: Sequence[str] = KINDS
) -> list[Fault]:
    """Each kind `rounds` times, shuffled so the worker count (from 3) stays within 2-4, one per slot."""
    rng = random.Random(seed)
    kinds = list(kinds_run) * rounds
    for _ in range(10_000):
        rng.shuffle(kinds)
        count, ok = 3, True
        for k in kinds:
            count += {"worker_add": 1, "worker_remove": -1}.get(k, 0)
            ok = ok and 2 <= count <= 4
        if ok:
            break
    else:
        raise ValueError(f"no order of {kinds} keeps 2-4 workers")
    span = (min(last_s, seconds) - first_s) / len(kinds)
    return [Fault(k, first_s + span * (i + rng.uniform(0.2, 0.8))) for i, k in enumerate(kinds)]


class Soak:
    def __init__(self, args: argparse.Namespace, settings: Settings, redis: RedisCluster, workdir: Path):
        self.args = args
        self.settings = settings
        self.redis = redis
        self.rng = random.Random(args.seed + 1)
        self.workers = Workers(settings, workdir, profile_file(workdir, args.scale))
        self.group = Group(settings)
        rows = [
            json.loads(x) for x in (ROOT / "monitor/samples/sessions.jsonl").read_text().splitlines() if x
        ]
        mixed = [r for name in MIXED for r in rows if r["id"] == name]
        self.traffic = Traffic(settings, seed=args.seed, samples=mixed, sample_every=10)
        self.lags: list[tuple[float, int]] = []
        self.rss: dict[str, list[tuple[float, float]]] = {}
        self.redis_mem: list[tuple[float, int, int, int]] = []  # time, used, dataset, keys
        self.disk: dict[str, int] = {}
        self.deaths: list[dict[str, Any]] = []

    async def sample(self) -> None:
        """Every `--sample-s`: committed lag, each worker's RSS, the Redis primaries' used memory."""
        while True:
            now = time.time()
            with contextlib.suppress(Exception):
                self.lags.append((now, await self.group.lag()))
            for dead in self.workers.died():  # a worker that exits by itself is recorded and replaced
                self.workers.live.remove(dead)
                self.workers.gone.append(dead)
                self.deaths.append(
                    {
                        "worker": dead.name,
                        "at": now,
                        "exit_code": dead.proc.returncode,
                        "error": last_error(dead.log),
                        "replaced_by": self.workers.add().name,
                    }
                )
                print(f"worker {dead.name} died by itself: {self.deaths[-1]}", flush=True)
            for w in self.workers.live:
                with contextlib.suppress(Exception):
                    self.rss.setdefault(w.name, []).append((now, rss_mb(w.proc.pid)))
            with contextlib.suppress(Exception):
                self.redis_mem.append((now, *await asyncio.to_thread(self.redis.memory)))
            await asyncio.sleep(self.args.sample_s)

    def lag_now(self) -> int:
        return self.lags[-1][1] if self.lags else 0

    async def stable(self) -> float:
        return await self.group.stable_with({w.name for w in self.workers.live}, timeout_s=180.0)

    async def inject(self, fault: Fault) -> None:
        w = self.workers
        baseline = max(50, 2 * statistics_median([lag for _, lag in self.lags[-6:]]))
        fault.start = time.time()
        if fault.kind == "worker_kill":
            victim = self.rng.choice(w.live)
            await asyncio.to_thread(w.remove, victim, signal.SIGKILL)
            fault.detail = {"killed": victim.name, "started": w.add().name}
            fault.recovered = await self.stable()
        elif fault.kind == "worker_add":
            fault.detail = {"started": w.add().name}
            fault.recovered = await self.stable()
        elif fault.kind == "worker_remove":
            victim = self.rng.choice(w.live)
            code = await asyncio.to_thread(w.remove, victim, signal.SIGTERM)
            fault.detail = {"stopped": victim.name, "exit_code": code}
            fault.recovered = await self.stable()
        elif fault.kind == "broker":
            chunks = self.settings.topics.chunks
            live = [s.sid for s in self.traffic.sessions.values() if not s.stopped]
            busiest, _ = Counter(hash_partition(sid, len(self.group.partitions)) for sid in live).most_common(
                1
            )[0]
            node = (await leaders(self.settings.kafka.bootstrap, chunks))[busiest]
            await asyncio.to_thread(sh, "kafka-cluster.sh", "kill", str(node))
            await asyncio.sleep(self.args.broker_down_s)
            await asyncio.to_thread(sh, "kafka-cluster.sh", "start", str(node))
            names = [s.name for s in topic_specs(self.settings)]
            back = await until(lambda: isr_full(self.settings.kafka.bootstrap, names), 180, 1.0)
            fault.detail = {"node": node, "partition": busiest, "isr_full": back}
            fault.recovered = time.time()
        elif fault.kind == "redis":
            live = [s for s in self.traffic.sessions.values() if not s.stopped and s.sent > 1]
            sid = self.rng.choice(live).sid if live else f"none-{uuid.uuid4().hex}"
            port = await asyncio.to_thread(self.redis.owner, f"qm:{{{sid}}}:meta")
            await asyncio.to_thread(self.redis.kill, port)
            deadline = time.monotonic() + 60
            while (
                port in await asyncio.to_thread(self.redis.primaries)
                or len(await asyncio.to_thread(self.redis.primaries)) < 3
            ):  # the replica takes over after cluster-node-timeout
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            promoted = time.time()
            await asyncio.to_thread(self.redis.restart, port)
            await until(lambda: asyncio.to_thread(self.redis.ok), 120, 0.5)
            fault.detail = {
                "primary": port,
                "session": sid,
                "promoted_after_s": round(promoted - fault.start, 1),
                "cluster_ok": await asyncio.to_thread(self.redis.ok),
            }
            fault.recovered = time.time()
        # the window closes once the backlog the fault left is worked off (or after 120 s)
        await asyncio.sleep(self.args.sample_s)
        await until(lambda: done(self.lag_now() <= baseline), 120, 1.0)
        fault.end = time.time() + 5.0
        fault.detail["window_s"] = round(fault.end - fault.start, 1)
        print(f"fault {fault.kind} at {fault.at_s:.0f}s: {fault.detail}", flush=True)

    async def run(self) -> dict[str, Any]:
        args, w = self.args, self.workers
        for _ in range(3):
            w.add()
        await self.group.start()
        await self.stable()
        await self.traffic.start()
        sampler = asyncio.create_task(self.sample())
        seconds = args.minutes * 60
        kinds = args.kinds.split(",")
        faults = schedule(
            args.seed, seconds, args.rounds, args.first_fault_s, seconds - args.quiet_end_s, kinds
        )
        began = time.time()
        self.traffic.set_live(args.sessions)
        try:
            for fault in faults:
                await asyncio.sleep(max(0.0, began + fault.at_s - time.time()))
                await self.inject(fault)
            await asyncio.sleep(max(0.0, began + seconds - time.time()))
            stopped_at = time.time()
            await self.traffic.end_all()
            await self.settle()
            self.disk = await asyncio.to_thread(kafka_bytes, self.settings)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        return self.report(faults, began, stopped_at)

    async def settle(self) -> None:
        """Until every session is covered (or 120 s), then 3 s for a late duplicate abort."""
        await until(lambda: done(not self.uncovered()), 120, 1.0)
        await asyncio.sleep(3.0)

    def uncovered(self) -> list[Session]:
        obs = self.traffic.observed
        return [
            s
            for s in self.traffic.sessions.values()
            if s.sent > 0 and not (s.sid in obs.aborts or obs.covered.get(s.sid, 0) >= last_seq(s))
        ]

    def report(self, faults: list[Fault], began: float, stopped_at: float) -> dict[str, Any]:
        args, obs = self.args, self.traffic.observed
        sent = [s for s in self.traffic.sessions.values() if s.sent > 0]
        harmful = [s for s in sent if s.harm_sent]
        wrong_aborts = {s.sid: len({e[2] for e in obs.aborts.get(s.sid, [])}) for s in harmful}
        early = [
            s.sid
            for s in harmful
            if obs.aborts.get(s.sid) and min(e[3] for e in obs.aborts[s.sid]) < s.marker_seq
        ]
        false_aborts = [s.sid for s in sent if not s.harm_sent and s.sid in obs.aborts]
        uncovered = [s.sid for s in self.uncovered()]
        windows = [(f.start - 1.0, f.end) for f in faults]

        def outside(at: float, lat: float) -> bool:
            return not any(a <= t <= b for a, b in windows for t in (at, at - lat))

        quiet = [lat for at, lat, _, _ in obs.verdicts if outside(at, lat)]
        during = [lat for at, lat, _, _ in obs.verdicts if not outside(at, lat)]
        quiet_aborts = [e[0][1] for e in obs.aborts.values() if outside(e[0][0], e[0][1])]
        warm = began + args.warmup_s
        rss = {}
        for name, points in self.rss.items():
            after = [(t, v) for t, v in points if t >= warm and t >= points[0][0] + 60]
            if len(after) >= 5:
                rss[name] = flatness(after) | between_faults(after, windows)
        redis_windows = [w for w, f in zip(windows, faults, strict=True) if f.kind == "redis"]
        quiet_mem = [
            m for m in self.redis_mem if m[0] >= warm and not any(a <= m[0] <= b for a, b in redis_windows)
        ]
        redis = flatness([(m[0], m[2] / 2**20) for m in quiet_mem]) if len(quiet_mem) >= 5 else None
        if redis is not None:  # used_memory and the key count beside the data set the check reads
            redis["used_memory"] = flatness([(m[0], m[1] / 2**20) for m in quiet_mem])
            redis["keys_first_last"] = [quiet_mem[0][3], quiet_mem[-1][3]]
            redis["keys_slope_per_h"] = round(slope([(m[0], m[3]) for m in quiet_mem]) * 3600)
        chunks = self.traffic.chunks_sent
        p99_quiet = quantile(quiet, 0.99)
        checks = {
            "every chunk covered by a verdict": not uncovered,
            "exactly one abort per harmful session": all(n == 1 for n in wrong_aborts.values()),
            "no abort before the harm was sent": not early,
            "no abort on a safe session": not false_aborts,
            "no dead letter": not obs.dead,
            "no degraded verdict": not obs.degraded,
            "worker RSS flat between fault windows after warm-up": bool(rss)
            and all(r["flat_between_faults"] for r in rss.values()),
            "Redis data set flat after warm-up": redis is not None and redis["flat"],
            f"p99 chunk-to-verdict outside fault windows <= {args.p99_bound_s} s": p99_quiet
            <= args.p99_bound_s,
            "no worker died by itself": not self.deaths and not self.workers.died(),
        }
        return {
            "seed": args.seed,
            "minutes": args.minutes,
            "traffic_s": round(stopped_at - began, 1),
            "sessions_live": args.sessions,
            "sessions": len(sent),
            "harmful_sessions": len(harmful),
            "sample_sessions": sum(s.name != "synthetic" for s in sent),
            "chunks": chunks,
            "verdicts": len(obs.verdicts),
            "abort_deliveries": sum(len(v) for v in obs.aborts.values()),
            "faults": [{"kind": f.kind, "at_s": round(f.start - began, 1), **f.detail} for f in faults],
            "chunk_to_verdict_p50_quiet_s": round(quantile(quiet, 0.5), 3),
            "chunk_to_verdict_p99_quiet_s": round(p99_quiet, 3),
            "chunk_to_verdict_p99_in_windows_s": round(quantile(during, 0.99), 3),
            "chunk_to_verdict_max_s": round(max((lat for _, lat, _, _ in obs.verdicts), default=0.0), 3),
            "chunk_to_abort_p99_quiet_s": round(quantile(quiet_aborts, 0.99), 3),
            "lag_max": max((v for _, v in self.lags), default=0),
            "lag_max_outside_fault_windows": max(
                (v for t, v in self.lags if not any(a <= t <= b for a, b in windows)), default=0
            ),
            "kafka_bytes_on_disk_all_replicas": self.disk,
            "kafka_bytes_per_message": {
                "chunks": round(self.disk.get("chunks", 0) / max(1, 3 * chunks), 1),
                "verdicts": round(self.disk.get("verdicts", 0) / max(1, 3 * len(obs.verdicts)), 1),
            },
            "worker_rss": rss,
            "redis_memory": redis,
            "problems": {
                "uncovered": uncovered[:20],
                "abort_counts_not_1": {k: v for k, v in wrong_aborts.items() if v != 1},
                "early": early[:20],
                "false_aborts": false_aborts[:20],
                "dead_letters": obs.dead[:5],
                "degraded": sorted(obs.degraded)[:20],
            },
            "worker_deaths": [d | {"at_s": round(d.pop("at") - began, 1)} for d in self.deaths],
            "series": {
                "rss_mb": {
                    k: [(round(t - began, 1), round(v, 2)) for t, v in pts] for k, pts in self.rss.items()
                },
                "redis_used_dataset_keys": [
                    (round(m[0] - began, 1), m[1], m[2], m[3]) for m in self.redis_mem
                ],
                "committed_lag": [(round(t - began, 1), v) for t, v in self.lags],
            },
            "checks": checks,
            "passed": all(checks.values()),
        }


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float, every_s: float) -> bool:
    """Poll `check` until it is true (True) or `timeout_s` passed (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(every_s)
    return False


async def done(value: bool) -> bool:
    return value


def kafka_bytes(settings: Settings) -> dict[str, int]:
    """Bytes on disk per topic of this run, summed over the cluster's three nodes (every replica)."""
    out: dict[str, int] = {}
    for role in ("chunks", "verdicts", "aborts"):
        topic = getattr(settings.topics, role)
        total = 0
        for d in (STATE / "kafka-cluster-29092").glob(f"node-*/data/{topic}-*"):
            total += sum(f.stat().st_size for f in d.glob("*.log"))
        out[role] = total
    return out


def last_error(log: Path) -> str:
    """The exception line of the last traceback in a worker's log (else its last line)."""
    lines = log.read_text(errors="replace").splitlines()
    starts = [i for i, x in enumerate(lines) if x.startswith("Traceback")]
    after = lines[starts[-1] + 1 :] if starts else []
    found = next((x for x in after if x and not x.startswith((" ", "\t"))), None)
    return (found or (lines[-1] if lines else ""))[:300]


def statistics_median(values: list[int]) -> float:
    return float(sorted(values)[len(values) // 2]) if values else 0.0


def hash_partition(sid: str, partitions: int) -> int:
    from aiokafka.partitioner import DefaultPartitioner

    return int(DefaultPartitioner()(sid.encode(), list(range(partitions)), []))


def last_seq(s: Session) -> int:
    """The seq of the session's `end` as sent (after an early stop, one past the last chunk sent)."""
    return s.chunks[-1].seq if s.sent == len(s.chunks) else s.chunks[max(0, s.sent - 1)].seq + 1


def flatness(points: list[tuple[float, float]]) -> dict[str, Any]:
    """Slope (MB/h) of the samples after warm-up, and whether the growth over their span stays within
    max(10 % of the mean level, 1 MB)."""
    per_s = slope(points)
    span = points[-1][0] - points[0][0]
    level = sum(v for _, v in points) / len(points)
    growth = per_s * span
    return {
        "mb_first": round(points[0][1], 2),
        "mb_last": round(points[-1][1], 2),
        "mb_mean": round(level, 2),
        "slope_mb_per_h": round(per_s * 3600, 2),
        "growth_mb": round(growth, 2),
        "span_s": round(span),
        "flat": growth <= max(0.10 * level, 1.0),
    }


def between_faults(points: list[tuple[float, float]], windows: list[tuple[float, float]]) -> dict[str, Any]:
    """Growth summed over the steps between two samples that both lie outside every fault window, beside
    the growth in or next to the windows. A leak grows in quiet time too; a backlog a fault leaves raises
    the allocator's high-water mark once (Python keeps the arenas), which is not a leak."""
    quiet = faulted = 0.0
    for (t0, v0), (t1, v1) in itertools.pairwise(points):
        if any(a <= t0 <= b or a <= t1 <= b or t0 <= a <= t1 for a, b in windows):
            faulted += v1 - v0
        else:
            quiet += v1 - v0
    level = sum(v for _, v in points) / len(points)
    return {
        "growth_between_faults_mb": round(quiet, 2),
        "growth_in_fault_windows_mb": round(faulted, 2),
        "flat_between_faults": quiet <= max(0.10 * level, 1.0),
    }


def capacity_sessions(workers: int) -> int | None:
    """Sessions held at 30 tokens/s by `workers` in bench/results/scaleout.json, if it was run."""
    path = RESULTS / "scaleout.json"
    if not path.exists():
        return None
    for row in json.loads(path.read_text())["counts"]:
        if row["workers"] == workers and row.get("held"):
            return int(row["held"]["sessions"])
    return None


async def main_async(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    redis = RedisCluster(args.redis_port)
    await asyncio.to_thread(sh, "services.sh", "up", timeout=900)
    if args.bootstrap == CLUSTER:
        await asyncio.to_thread(sh, "kafka-cluster.sh", "start")
    await asyncio.to_thread(redis.start)
    tag = f"soak-{uuid.uuid4().hex[:6]}"
    settings = run_settings(
        args.bootstrap,
        redis.url,
        args.partitions,
        args.replication,
        tag,
        workdir,
        redis_cluster=True,
        redis={"wait_replicas": 1, "session_ttl_s": args.session_ttl_s},
    )
    await apply_topics(settings)
    soak = Soak(args, settings, redis, workdir)
    try:
        return await soak.run()
    finally:
        await soak.traffic.close()
        codes = soak.workers.stop_all()
        print(f"workers stopped, exit codes {codes}", flush=True)
        with contextlib.suppress(Exception):
            await soak.group.close()
        with contextlib.suppress(Exception):
            await delete_topics(settings)
        if not args.keep_redis:
            with contextlib.suppress(Exception):
                redis.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=20261206)
    ap.add_argument(
        "--sessions",
        type=int,
        default=None,
        help="live sessions at 30 tokens/s (default: 70 %% of the 2-worker capacity in "
        "results/scaleout.json, else 60)",
    )
    ap.add_argument(
        "--rounds", type=int, default=None, help="each fault kind this often (default: 1 per 10 min)"
    )
    ap.add_argument("--bootstrap", default=CLUSTER)
    ap.add_argument(
        "--replication", type=int, default=3, help="topics' replication factor (3 on the cluster)"
    )
    ap.add_argument("--kinds", default=",".join(KINDS), help="fault kinds to inject (default: all five)")
    ap.add_argument("--redis-port", type=int, default=REDIS_PORT)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--scale", type=float, default=1.0, help="profile slow-down (as bench/scaleout.py)")
    ap.add_argument(
        "--session-ttl-s", type=int, default=None, help="redis.session_ttl_s (default 120; 60 when short)"
    )
    ap.add_argument("--broker-down-s", type=float, default=8.0)
    ap.add_argument("--first-fault-s", type=float, default=None, help="default: 20 s, 90 s past 10 minutes")
    ap.add_argument("--quiet-end-s", type=float, default=None, help="no fault in the last this many seconds")
    ap.add_argument(
        "--warmup-s", type=float, default=None, help="memory slopes start here (default TTL + 30 s)"
    )
    ap.add_argument("--sample-s", type=float, default=5.0)
    ap.add_argument("--p99-bound-s", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=None, help="result file (default bench/results/soak.json)")
    ap.add_argument("--keep-redis", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # this process's clients retry through faults
    long = args.minutes >= 10
    args.sessions = args.sessions or round(0.7 * (capacity_sessions(2) or 86))
    args.rounds = args.rounds or max(1, round(args.minutes / 10))
    args.session_ttl_s = args.session_ttl_s or (120 if long else 60)
    args.first_fault_s = args.first_fault_s if args.first_fault_s is not None else (90.0 if long else 20.0)
    args.quiet_end_s = args.quiet_end_s if args.quiet_end_s is not None else (120.0 if long else 25.0)
    args.warmup_s = args.warmup_s if args.warmup_s is not None else args.session_ttl_s + 30.0
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"qta-soak-{uuid.uuid4().hex[:6]}"
    workdir.mkdir(parents=True)
    print(
        f"soak: {args.minutes:g} min, seed {args.seed}, {args.sessions} sessions at 30 tokens/s, "
        f"{args.rounds} round(s) of {', '.join(KINDS)}; logs in {workdir}; load {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores",
        flush=True,
    )
    result = asyncio.run(main_async(args, workdir))
    result["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result["workdir"] = str(workdir)
    if args.out is not None:
        result["load_avg_1m_at_end"] = os.getloadavg()[0]
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    else:
        write_result("soak", result)
    for name, ok in result["checks"].items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    verdict = "passed" if result["passed"] else "FAILED"
    print(
        f"soak {verdict}: {result['sessions']} sessions, {result['chunks']} chunks, {len(result['faults'])} "
        f"faults, p99 chunk-to-verdict outside fault windows {result['chunk_to_verdict_p99_quiet_s']} s"
    )
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
