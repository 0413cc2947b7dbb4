"""Latency under load: an open-loop generator streams N concurrent sessions at a fixed token rate each
through Kafka to a real worker; p50/p99 chunk-to-verdict and chunk-to-abort, and consumer lag, at 25 / 50 /
90 % of the measured capacity.

Capacity is measured first, in the same run: the guard's raw throughput (tokens/s at the worker's batch
size) divided by what one session demands (scores per second x guard tokens per score). Sessions are open
loop: chunks go out on their schedule whatever the worker does; a session stops at its abort, and a new
one starts whenever one ends, so N stay live. A quarter of the sessions replay the harmful bundled samples
so aborts happen. Latency is measured as the serving stack sees it: from the chunk's producer timestamp to
the moment the event is read back from Kafka. Target (embedded guard, this CPU): p99 chunk-to-abort <= 0.5 s
at 50 % load.

    bash scripts/services.sh up
    python bench/latency.py                          # 15 s per level
    python bench/latency.py --seconds 60 --rate 40
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import json
import random
import statistics
import time
from typing import Any

import torch
from common import RESULTS, ROOT, quantile, trace_text, write_result

from monitor.core.session import CHARS_PER_TOKEN
from monitor.evaluation.kafka_replay import EndToEnd, end_to_end
from monitor.guards import build_guard
from monitor.guards.base import Prefix
from monitor.messages import Chunk
from monitor.settings import Settings

SAMPLES = ROOT / "monitor" / "samples" / "sessions.jsonl"
QUESTION = "Could you explain how to approach this, and what the main steps are?"


def harmful_samples() -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in SAMPLES.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["label"] == 1 and not r.get("images")]


def capacity(settings: Settings, rate: float, chunk_tokens: int, session_tokens: int) -> dict[str, float]:
    """Sessions one worker can keep up with: raw guard tokens/s over one session's guard tokens/s."""
    guard = build_guard(settings)
    batch = settings.batching.max_batch
    text = trace_text(session_tokens * CHARS_PER_TOKEN, seed=7)
    # prefixes at every point of a session's life, as the worker scores them
    cuts = list(range(chunk_tokens * CHARS_PER_TOKEN, len(text) + 1, chunk_tokens * CHARS_PER_TOKEN))
    rows = [Prefix(f"cap-{i}", QUESTION, thinking=text[:c]) for i, c in enumerate(cuts)]
    rows = (rows * (1 + 2 * batch // max(1, len(rows))))[: 4 * batch]
    guard.score(rows[:batch])
    started, tokens = time.perf_counter(), 0
    for i in range(0, len(rows), batch):
        tokens += sum(s.tokens_read for s in guard.score(rows[i : i + batch]))
    raw = tokens / (time.perf_counter() - started)
    per_score = tokens / len(rows)
    # a chunk every chunk_tokens / rate seconds; the scheduler scores at stride, or after max_delay_s
    interval = chunk_tokens / rate
    every = min(settings.batching.stride_tokens / rate, max(interval, settings.batching.max_delay_s))
    demand = per_score / every
    return {"raw_guard_tokens_per_s": raw, "tokens_per_score": per_score, "session_demand": demand,
            "sessions": raw / demand}  # fmt: skip


async def level(run: EndToEnd, sessions: int, seconds: float, rate: float, chunk_tokens: int,
                session_tokens: int, harmful: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """Run `sessions` concurrent open-loop sessions for `seconds`; latencies from events read back."""
    interval = chunk_tokens / rate
    chunk_chars = chunk_tokens * CHARS_PER_TOKEN
    counter = itertools.count()
    heap: list[tuple[float, int, str, list[Chunk]]] = []
    rng = random.Random(sessions)
    published: set[str] = set()

    def new_session(at: float) -> None:
        n = next(counter)
        sid = run.session_id(f"{sessions}-{n}")
        if n % 4 == 3:
            row = harmful[n // 4 % len(harmful)]
            q, text = row["question"], row["thinking"] + " " + row["answer"]
        else:
            q, text = QUESTION, trace_text(session_tokens * CHARS_PER_TOKEN, seed=n)
        chunks = [Chunk(session_id=sid, seq=1, part="question", text=q)]
        for i in range(0, len(text), chunk_chars):
            chunks.append(
                Chunk(session_id=sid, seq=len(chunks) + 1, part="thinking", text=text[i : i + chunk_chars])
            )
        heapq.heappush(heap, (at, n, sid, chunks))

    start = time.monotonic()
    for _ in range(sessions):
        new_session(start + rng.random() * interval)
    lag_samples: list[int] = []
    next_lag = start + 1.0
    while True:
        now = time.monotonic()
        if now - start >= seconds and not heap:
            break
        due = []
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap))
        out: list[Chunk] = []
        for at, n, sid, chunks in due:
            head, rest = chunks[0], chunks[1:]
            stop = sid in run.events.aborts or not rest
            chunk = head.model_copy(update={"ts": time.time()})
            out.append(chunk)
            published.add(sid)
            if stop:
                out.append(Chunk(session_id=sid, seq=head.seq + 1, part="end", ts=time.time()))
                if time.monotonic() - start < seconds:
                    new_session(max(now, at + interval))
            else:
                heapq.heappush(heap, (at + interval, n, sid, rest))
        if out:
            await run.publish(out)
        if now >= next_lag:
            lag_samples.append(await run.lag())
            next_lag = now + 1.0
        wait = (heap[0][0] - time.monotonic()) if heap else 0.05
        await asyncio.sleep(max(0.0, min(wait, 0.05)))
    await run.settle(timeout_s=120)

    to_verdict = [read - v.chunk_ts for sid in published for read, v in run.events.verdicts.get(sid, [])]
    worker_side = [v.ts - v.chunk_ts for sid in published for _, v in run.events.verdicts.get(sid, [])]
    to_abort = [
        read - a.chunk_ts
        for sid in published
        if sid in run.events.aborts
        for read, a in [run.events.aborts[sid]]
    ]
    return {
        "sessions": sessions,
        "sessions_run": len(published),
        "verdicts": len(to_verdict),
        "aborts": len(to_abort),
        "chunk_to_verdict_p50_s": quantile(to_verdict, 0.5),
        "chunk_to_verdict_p99_s": quantile(to_verdict, 0.99),
        "verdict_worker_side_p50_s": quantile(worker_side, 0.5),
        "chunk_to_abort_p50_s": quantile(to_abort, 0.5),
        "chunk_to_abort_p99_s": quantile(to_abort, 0.99),
        "consumer_lag_max": max(lag_samples, default=0),
        "consumer_lag_mean": statistics.fmean(lag_samples) if lag_samples else 0.0,
    }


async def run_levels(
    settings: Settings, args: argparse.Namespace, cap: dict[str, float]
) -> list[dict[str, Any]]:
    harmful = harmful_samples()
    rows = []
    async with end_to_end(settings, log=RESULTS / "latency-worker.log") as run:
        for share in (float(x) for x in args.levels.split(",")):
            n = max(1, round(share * cap["sessions"]))
            row = await level(
                run, n, args.seconds, args.rate, args.chunk_tokens, args.session_tokens, harmful
            )
            row["load"] = share
            rows.append(row)
            print(
                f"load {share:.0%} ({n} sessions x {args.rate:g} tok/s): chunk->verdict p50 "
                f"{row['chunk_to_verdict_p50_s']:.3f}s p99 {row['chunk_to_verdict_p99_s']:.3f}s | "
                "chunk->abort "
                f"p50 {row['chunk_to_abort_p50_s']:.3f}s p99 {row['chunk_to_abort_p99_s']:.3f}s "
                f"({row['aborts']} aborts) | lag max {row['consumer_lag_max']}",
                flush=True,
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=30.0, help="tokens/s per session")
    ap.add_argument("--chunk-tokens", type=int, default=16)
    ap.add_argument("--session-tokens", type=int, default=384)
    ap.add_argument("--seconds", type=float, default=15.0, help="per load level")
    ap.add_argument("--levels", default="0.25,0.5,0.9")
    ap.add_argument("--max-delay-s", type=float, default=None, help="override batching.max_delay_s")
    ap.add_argument("--out-name", default="latency", help="results file name under bench/results/")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = Settings()
    if args.max_delay_s is not None:  # the scheduler's coalescing wait bounds latency from below
        batching = settings.batching.model_copy(update={"max_delay_s": args.max_delay_s})
        settings = settings.model_copy(update={"batching": batching})
    cap = capacity(settings, args.rate, args.chunk_tokens, args.session_tokens)
    print(
        f"capacity: raw {cap['raw_guard_tokens_per_s']:,.0f} guard tokens/s / "
        f"{cap['session_demand']:,.0f} per "
        f"session = {cap['sessions']:.1f} sessions at {args.rate:g} tok/s"
    )
    rows = asyncio.run(run_levels(settings, args, cap))
    at_half = next((r for r in rows if abs(r["load"] - 0.5) < 1e-9), None)
    write_result(
        args.out_name,
        {
            "args": vars(args),
            "capacity": cap,
            "batching": settings.batching.model_dump(mode="json"),
            "levels": rows,
            "p99_chunk_to_abort_at_50pct_s": at_half["chunk_to_abort_p99_s"] if at_half else None,
            "target_s": 0.5,
        },
    )


if __name__ == "__main__":
    main()
