"""Efficiency: raw guard throughput vs end-to-end monitored throughput through Kafka + Redis + worker.

End to end: a backlog of sessions is published to an isolated topic, a real `qta-monitor serve` consumes
it (Redis state, Kafka in and out), and the guard tokens of all verdicts are divided by the wall time from
the first publish to the last verdict. Raw: the guard alone re-scores exactly the prefixes the worker
scored, in the worker's own batches (rebuilt from the verdicts), twice; the faster run is the reference,
which is pessimistic for the ratio on a shared CPU. A synthetic table of batch sizes 1 / 4 / max_batch at
full window length is printed too. Target: end to end >= 80 % of raw.

    bash scripts/services.sh up
    python bench/efficiency.py                       # 48 sessions of ~768 tokens
    python bench/efficiency.py --sessions 200 --tokens 2048
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import torch
from common import RESULTS, trace_text, write_result

from monitor.core.session import estimate_tokens
from monitor.evaluation.datasets import Sample
from monitor.evaluation.kafka_replay import end_to_end
from monitor.evaluation.sessions import session_chunks
from monitor.guards import build_guard
from monitor.guards.base import Guard, Prefix
from monitor.messages import Verdict
from monitor.settings import Settings

BATCH_GAP_S = 0.005
QUESTION = "Can you walk me through how this works, step by step, and what to watch out for?"


def raw(guard: Guard, batch: int, prefixes: int, chars: int) -> dict[str, float]:
    """Guard tokens read per second when scoring `prefixes` prefixes in batches of `batch`."""
    text = trace_text(chars, seed=batch)
    rows = [Prefix(f"raw-{i}", QUESTION, thinking=text[: chars - 7 * i]) for i in range(prefixes)]
    guard.score(rows[:batch])  # warm
    tokens = 0
    started = time.perf_counter()
    for i in range(0, prefixes, batch):
        tokens += sum(s.tokens_read for s in guard.score(rows[i : i + batch]))
    elapsed = time.perf_counter() - started
    return {"batch": batch, "tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed}


def batches_of(verdicts: list[Verdict], plans: dict[str, list[Any]], limit: int) -> list[list[Prefix]]:
    """The prefixes the worker scored, grouped into its batches (verdicts of one batch share a timestamp
    to within milliseconds), rebuilt from the chunks each verdict covers."""
    out: list[list[Prefix]] = []
    last = -1.0
    for v in sorted(verdicts, key=lambda v: v.ts):
        texts = {"question": "", "thinking": "", "answer": ""}
        for planned in plans[v.session_id][: v.seq]:
            if planned.chunk.part in texts:
                texts[planned.chunk.part] += planned.chunk.text
        prefix = Prefix(v.session_id, texts["question"], texts["thinking"], texts["answer"], part=v.part)
        if out and v.ts - last < BATCH_GAP_S and len(out[-1]) < limit:
            out[-1].append(prefix)
        else:
            out.append([prefix])
        last = v.ts
    return out


def same_work(guard: Guard, batches: list[list[Prefix]]) -> dict[str, float]:
    """The guard alone on exactly the batches the worker scored."""
    started, tokens = time.perf_counter(), 0
    for batch in batches:
        tokens += sum(s.tokens_read for s in guard.score(batch))
    elapsed = time.perf_counter() - started
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed}


async def e2e(settings: Settings, sessions: int, chars: int, chunk_chars: int) -> dict[str, Any]:
    log = RESULTS / "efficiency-worker.log"
    RESULTS.mkdir(parents=True, exist_ok=True)
    async with end_to_end(settings, log=log) as run:
        samples = [
            Sample(run.session_id(i), QUESTION, trace_text(chars, seed=100 + i), "", 0.0)
            for i in range(sessions)
        ]
        plans = [session_chunks(s, s.id, chunk_chars) for s in samples]
        # interleaved, as concurrent generations would arrive
        chunks = [p[k].chunk for k in range(max(map(len, plans))) for p in plans if k < len(p)]
        started = time.time()
        await run.publish(chunks)
        published = time.time()
        settled = await run.settle(timeout_s=900)
        verdicts = [
            v
            for sid in run.events.verdicts
            if not sid.startswith(run.session_id("probe"))
            for _, v in run.events.verdicts[sid]
        ]
        last = max(v.ts for v in verdicts)
        window = last - started
        tokens_read = sum(v.tokens_read for v in verdicts)
        trace_tokens = sum(estimate_tokens(s.question) + estimate_tokens(s.thinking) for s in samples)
        by_id = {s.id: p for s, p in zip(samples, plans, strict=True)}
        return {
            "_batches": batches_of(verdicts, by_id, settings.batching.max_batch),
            "sessions": sessions,
            "chunks": len(chunks),
            "settled": settled,
            "publish_s": published - started,
            "window_s": window,
            "verdicts": len(verdicts),
            "guard_tokens_read": tokens_read,
            "guard_tokens_per_s": tokens_read / window,
            "trace_tokens": trace_tokens,
            "monitored_trace_tokens_per_s": trace_tokens / window,
            "chunks_per_s": len(chunks) / window,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=48)
    ap.add_argument("--tokens", type=int, default=768, help="trace tokens per session (chars / 4)")
    ap.add_argument("--chunk-chars", type=int, default=64)
    ap.add_argument("--raw-prefixes", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = Settings()
    guard = build_guard(settings)
    sizes = sorted({1, 4, settings.batching.max_batch})
    chars = 4 * args.tokens

    sizes_table = {b: raw(guard, b, args.raw_prefixes, chars) for b in sizes}
    end = asyncio.run(e2e(settings, args.sessions, chars, args.chunk_chars))
    batches = end.pop("_batches")
    # the same scoring work, guard alone, twice; the faster run is the reference (pessimistic for e2e)
    runs = [same_work(guard, batches) for _ in range(2)]
    reference = max(r["tokens_per_s"] for r in runs)
    ratio = end["guard_tokens_per_s"] / reference
    for b, r in sizes_table.items():
        print(f"raw guard, synthetic batch {b:>2}: {r['tokens_per_s']:8,.0f} guard tokens/s")
    print(
        f"raw guard, the worker's own {len(batches)} batches (mean size "
        f"{end['verdicts'] / len(batches):.1f}): {reference:8,.0f} guard tokens/s"
    )
    print(
        f"end to end ({args.sessions} sessions, {end['chunks']} chunks via Kafka + Redis + worker): "
        f"{end['guard_tokens_per_s']:8,.0f} guard tokens/s, "
        f"{end['monitored_trace_tokens_per_s']:,.0f} trace tokens/s"
    )
    print(f"end to end / raw on the same work: {ratio:.2f} (target >= 0.80)")
    write_result(
        "efficiency",
        {
            "args": vars(args),
            "guard": guard.name,
            "raw_synthetic_batches": list(sizes_table.values()),
            "raw_same_work": runs,
            "worker_batches": len(batches),
            "end_to_end": end,
            "e2e_over_raw": ratio,
            "target": 0.8,
        },
    )


if __name__ == "__main__":
    main()
