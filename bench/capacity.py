"""Capacity of one worker: guard tokens read per trace token, raw guard throughput, sessions at 30 tokens/s,
and chunk-to-abort latency at 50 % and 90 % of that capacity, for the default guard and bge-small side by
side, with the risk-adaptive schedule on (`batching.cold_stride_tokens`) and off (the old schedule).

1. Tokens read per trace token: labelled sessions (the bundled samples, and the dev sets with `--dev`) are
   streamed through the worker's in-process `Pipeline` (in-memory store, simulated clock): 16-token chunks
   every 16/30 s per session, `--live` sessions at a time, every due batch scored before the clock moves
   on, so the schedule sees the cadence of a live stream at 30 tokens/s. Trace tokens are the thinking
   and answer tokens streamed (up to an abort); guard tokens are what the guard read for them.
2. Raw guard tokens/s: batches of `max_batch` real prefixes at full window, the two guards interleaved
   (A B A B), the faster pass of each taken.
3. Capacity = raw tokens/s / (30 x guard tokens per trace token on benign traffic).
4. Latency: open loop, real clock, in process (no broker): N sessions at 30 tokens/s (a quarter replay
   the harmful bundled samples), chunks fed to one `Pipeline` as they fall due; chunk-to-abort is the time
   from the abort's newest chunk being produced to the abort being returned by the pipeline.

    python bench/capacity.py                          # samples only, 20 s per latency level
    python bench/capacity.py --dev /tmp/dev80 --limit 24 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import json
import random
import time
from pathlib import Path
from typing import Any

import torch
from common import ROOT, quantile, trace_text, write_result

from monitor.core.pipeline import Incoming, Pipeline
from monitor.core.session import CHARS_PER_TOKEN
from monitor.edges.store import MemorySessionStore
from monitor.evaluation.datasets import Sample, load_dataset
from monitor.evaluation.runner import SimClock
from monitor.evaluation.sessions import session_chunks
from monitor.guards import build_guard
from monitor.guards.base import Guard, Prefix
from monitor.messages import Chunk
from monitor.settings import Settings

SAMPLES = ROOT / "monitor" / "samples" / "sessions.jsonl"
GUARDS = ("minilm", "bge-small")
TICK_S = 0.01
QUESTION = "Could you explain how to approach this, and what the main steps are?"


def with_cold(settings: Settings, stride: int) -> Settings:
    batching = settings.batching.model_copy(update={"cold_stride_tokens": stride})
    return settings.model_copy(update={"batching": batching})


def load_guard(settings: Settings, name: str) -> tuple[Guard, bool]:
    """The guard `name`, and whether it is trained. Without trained weights (bge-small unless `qta-monitor
    train --base bge-small` was run) its base from the encoder cache gets an untrained head: the same
    tokens and the same forward cost, so it is timed, but its scores mean nothing and are not used."""
    try:
        return build_guard(settings, name), True
    except FileNotFoundError:
        from transformers import AutoModel, AutoTokenizer

        from monitor.guards import encoders
        from monitor.guards.minilm import MiniLMClassifier, MiniLMGuard

        base = encoders.base_dir(name)
        tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
        tokenizer.model_max_length = 1 << 30
        encoder = AutoModel.from_pretrained(str(base), local_files_only=True, dtype=torch.float32)
        torch.manual_seed(0)
        model = MiniLMClassifier(encoder, int(encoder.config.hidden_size)).eval()
        window = settings.guard.window_tokens
        return MiniLMGuard(model, tokenizer, window, 128, (0.0, 0.0, 0.0), "cpu", name=name), False


def traffic(dev: Path | None, limit: int) -> dict[str, list[Sample]]:
    samples = [s for s in load_dataset(SAMPLES) if not s.images]
    if dev is not None:
        for path in sorted(dev.glob("*.jsonl")):
            rows = load_dataset(path)
            samples += random.Random(0).sample(rows, min(limit, len(rows)))
    return {
        "benign": [s for s in samples if s.label == 0],
        "harmful": [s for s in samples if s.label >= 1],
    }


async def tokens_read(
    settings: Settings, guard: Guard, samples: list[Sample], rate: float, chunk_tokens: int, live: int
) -> dict[str, float]:
    """Stream `samples` (`live` at a time) at `rate` tokens/s each; guard tokens read per trace token."""
    clock = SimClock()
    pipeline = Pipeline(settings, MemorySessionStore(settings), guard, clock=clock)
    plans = {
        f"cap-{i}": session_chunks(s, f"cap-{i}", chunk_tokens * CHARS_PER_TOKEN)
        for i, s in enumerate(samples)
    }
    waiting = list(reversed(plans))
    at: dict[str, int] = {}
    aborted: set[str] = set()
    guard_tokens = trace_chars = scores = 0
    interval = chunk_tokens / rate
    try:
        while waiting or at:
            while waiting and len(at) < live:
                at[waiting.pop()] = 0
            incoming = []
            for sid, i in list(at.items()):
                planned = plans[sid][i]
                chunk = planned.chunk
                if sid in aborted and chunk.part != "end":
                    chunk = Chunk(session_id=sid, seq=chunk.seq, part="end")
                incoming.append(Incoming(chunk.model_copy(update={"ts": clock.now})))
                if chunk.part in ("thinking", "answer"):
                    trace_chars += len(chunk.text)
                if chunk.part == "end":
                    del at[sid]
                else:
                    at[sid] = i + 1
            # until the next chunk the worker wakes as a live one would (max_delay_s, max_wait_s), and every
            # due batch is scored before the clock moves on: the worker keeps up at this load
            result = await pipeline.step(incoming)
            end = clock.now + interval
            while True:
                guard_tokens += result.scored_tokens
                scores += len(result.verdicts)
                aborted |= {a.session_id for a in result.aborts}
                wake = pipeline.wake_in_s()
                if clock.now + wake >= end:
                    break
                if wake > 0 or not result.verdicts:  # nothing scored: time must move on
                    clock.now += max(wake, TICK_S)
                result = await pipeline.step([])
            clock.now = end
        result = await pipeline.flush()
        guard_tokens += result.scored_tokens
        scores += len(result.verdicts)
    finally:
        await pipeline.close()
    trace_tokens = trace_chars / CHARS_PER_TOKEN
    return {
        "sessions": len(samples),
        "aborted": len(aborted),
        "scores": scores,
        "trace_tokens": trace_tokens,
        "guard_tokens": guard_tokens,
        "guard_per_trace_token": guard_tokens / max(trace_tokens, 1.0),
    }


def raw_rows(batch: int) -> list[Prefix]:
    text = trace_text(2048 * CHARS_PER_TOKEN, seed=7)
    return [Prefix(f"raw-{i}", QUESTION, thinking=text[: len(text) - 37 * i]) for i in range(4 * batch)]


def raw_pass(guard: Guard, rows: list[Prefix], batch: int) -> float:
    started, tokens = time.perf_counter(), 0
    for i in range(0, len(rows), batch):
        tokens += sum(s.tokens_read for s in guard.score(rows[i : i + batch]))
    return tokens / (time.perf_counter() - started)


async def latency(
    settings: Settings, guard: Guard, sessions: int, seconds: float, rate: float, chunk_tokens: int,
    harmful: list[Sample],
) -> dict[str, Any]:  # fmt: skip
    """Open loop on the real clock: `sessions` live sessions, a new one whenever one ends."""
    pipeline = Pipeline(settings, MemorySessionStore(settings), guard)
    interval = chunk_tokens / rate
    chunk_chars = chunk_tokens * CHARS_PER_TOKEN
    counter = itertools.count()
    heap: list[tuple[float, int, list[Chunk]]] = []
    rng = random.Random(sessions)
    to_abort: list[float] = []
    to_verdict: list[float] = []
    offset = time.time() - time.monotonic()

    def new_session(at: float) -> None:
        n = next(counter)
        sid = f"lat-{sessions}-{n}"
        if n % 4 == 3:
            s = harmful[n // 4 % len(harmful)]
            plan = [p.chunk for p in session_chunks(s, sid, chunk_chars)]
        else:
            text = trace_text(384 * CHARS_PER_TOKEN, seed=n)
            plan = [Chunk(session_id=sid, seq=1, part="question", text=QUESTION)]
            plan += [
                Chunk(session_id=sid, seq=len(plan) + 1 + k, part="thinking", text=text[i : i + chunk_chars])
                for k, i in enumerate(range(0, len(text), chunk_chars))
            ]
            plan.append(Chunk(session_id=sid, seq=len(plan) + 1, part="end"))
        heapq.heappush(heap, (at, n, plan))

    start = time.monotonic()
    for _ in range(sessions):
        new_session(start + rng.random() * interval)
    aborted: set[str] = set()
    try:
        while heap or pipeline.pending_sessions:
            now = time.monotonic()
            if now - start > seconds + 30:
                break
            incoming = []
            while heap and heap[0][0] <= now:
                at, n, plan = heapq.heappop(heap)
                head, rest = plan[0], plan[1:]
                if head.session_id in aborted:
                    head, rest = Chunk(session_id=head.session_id, seq=head.seq, part="end"), []
                incoming.append(Incoming(head.model_copy(update={"ts": at + offset})))
                if rest:
                    heapq.heappush(heap, (at + interval, n, rest))
                elif now - start < seconds:
                    new_session(max(now, at + interval))
            result = await pipeline.step(incoming)
            done = time.time()
            to_verdict += [done - v.chunk_ts for v in result.verdicts]
            for a in result.aborts:
                aborted.add(a.session_id)
                to_abort.append(done - a.chunk_ts)
            wake = min(pipeline.wake_in_s(), (heap[0][0] - time.monotonic()) if heap else 0.05)
            await asyncio.sleep(max(0.0, min(wake, 0.05)))
    finally:
        await pipeline.close()
    return {
        "sessions": sessions,
        "verdicts": len(to_verdict),
        "aborts": len(to_abort),
        "chunk_to_verdict_p50_s": quantile(to_verdict, 0.5),
        "chunk_to_verdict_p99_s": quantile(to_verdict, 0.99),
        "chunk_to_abort_p50_s": quantile(to_abort, 0.5),
        "chunk_to_abort_p99_s": quantile(to_abort, 0.99),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=30.0, help="tokens/s per session")
    ap.add_argument("--chunk-tokens", type=int, default=16)
    ap.add_argument("--live", type=int, default=32, help="concurrent sessions when counting tokens read")
    ap.add_argument("--dev", type=Path, default=None, help="also stream these dev sets (*.jsonl)")
    ap.add_argument("--limit", type=int, default=24, help="sessions per dev set")
    ap.add_argument("--seconds", type=float, default=20.0, help="per latency level")
    ap.add_argument("--levels", default="0.5,0.9")
    ap.add_argument("--guards", default=",".join(GUARDS))
    ap.add_argument("--cold-stride", type=int, default=224, help="batching.cold_stride_tokens of `new`")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = Settings()
    guards = {name: load_guard(settings, name) for name in args.guards.split(",")}
    sets = traffic(args.dev, args.limit)
    harmful_samples = [s for s in load_dataset(SAMPLES) if s.label >= 1 and not s.images]

    out: dict[str, Any] = {"guards": {}}
    batch = settings.batching.max_batch
    rows = raw_rows(batch)
    for g, _ in guards.values():
        g.score(rows[:batch])  # warm
    passes: dict[str, list[float]] = {name: [] for name in guards}
    for _ in range(2):  # interleaved, so a load swing hits both guards
        for name, (g, _) in guards.items():
            passes[name].append(raw_pass(g, rows, batch))
    reads: dict[str, dict[str, Any]] = {}  # tokens read, from the first trained guard's scores
    for name, (g, trained) in guards.items():
        raw = max(passes[name])
        entry: dict[str, Any] = {
            "raw_guard_tokens_per_s": raw,
            "raw_passes": passes[name],
            "trained": trained,
        }
        if trained and not reads:
            for mode in ("old", "new"):
                s = with_cold(settings, args.cold_stride if mode == "new" else 0)
                for kind, samples in sets.items():
                    r = asyncio.run(tokens_read(s, g, samples, args.rate, args.chunk_tokens, args.live))
                    reads[f"{mode}_{kind}"] = r
                    print(
                        f"{mode} schedule, {kind}: {r['guard_per_trace_token']:.2f} guard tokens/trace "
                        f"token ({r['sessions']} sessions, {r['scores']} scores, {name})",
                        flush=True,
                    )
            out["tokens_read"] = {"guard": name, **reads}
        for mode in ("old", "new"):
            entry[f"{mode}_capacity_sessions"] = raw / (
                args.rate * reads[f"{mode}_benign"]["guard_per_trace_token"]
            )
            print(
                f"{name} {mode}: raw {raw:,.0f} guard tokens/s -> "
                f"{entry[f'{mode}_capacity_sessions']:.1f} sessions at {args.rate:g} tokens/s",
                flush=True,
            )
        levels = []
        for share in (float(x) for x in args.levels.split(",")) if trained else ():
            n = max(1, round(share * entry["new_capacity_sessions"]))
            for mode in ("new", "old"):
                s = with_cold(settings, args.cold_stride if mode == "new" else 0)
                row = asyncio.run(
                    latency(s, g, n, args.seconds, args.rate, args.chunk_tokens, harmful_samples)
                )
                row["load"], row["schedule"] = share, mode
                levels.append(row)
                print(
                    f"{name} {mode} schedule at {share:.0%} ({n}): chunk->abort p50 "
                    f"{row['chunk_to_abort_p50_s']:.3f}s p99 {row['chunk_to_abort_p99_s']:.3f}s "
                    f"({row['aborts']} aborts), chunk->verdict p99 {row['chunk_to_verdict_p99_s']:.3f}s",
                    flush=True,
                )
        entry["latency_real_clock_in_process"] = levels
        out["guards"][name] = entry
    out["args"] = {k: str(v) for k, v in vars(args).items()}
    out["batching"] = settings.batching.model_dump(mode="json")
    out["guard_settings"] = {"window_tokens": settings.guard.window_tokens}
    write_result("capacity", json.loads(json.dumps(out)))


if __name__ == "__main__":
    main()
