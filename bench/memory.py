"""Memory: worker RSS and Redis memory against live sessions (100 / 1,000 / 10,000 by default).

Sessions are opened through Kafka (question + `--thinking-chars` of thinking each, no `end`) in steps up to
each level, and a real worker folds them into memory and Redis. Scoring is switched off for this run
(stride and max delay out of reach; the pending-session limit raised so backpressure does not pause the
topic), so the figure is the cost of holding sessions, not of scoring them; the embedded guard keeps no
per-session state. A judge guard's KV caches come on top, bounded by `guard.kv_budget_mb`.

    bash scripts/services.sh up
    python bench/memory.py                            # 100, 1,000, 10,000
    python bench/memory.py --levels 100,1000 --thinking-chars 8000
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from common import RESULTS, rss_mb, trace_text, write_result

from monitor.evaluation.kafka_replay import end_to_end
from monitor.messages import Chunk
from monitor.settings import Settings

QUESTION = "Please think this through carefully before you answer: how does it work?"
NO_SCORING = {
    "MONITOR_BATCHING__STRIDE_TOKENS": "100000000",
    "MONITOR_BATCHING__MAX_DELAY_S": "86400",
    "MONITOR_BATCHING__MAX_PENDING_SESSIONS": "1000000",
}


async def redis_used(url: str) -> dict[str, int]:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        info = await client.info("memory")
        keys = await client.dbsize()
    finally:
        await client.aclose()
    return {"used_memory": int(info["used_memory"]), "keys": int(keys)}


async def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    settings = Settings()
    levels = [int(x) for x in args.levels.split(",")]
    text = trace_text(args.thinking_chars, seed=3)
    rows: list[dict[str, Any]] = []
    async with end_to_end(settings, env=NO_SCORING, log=RESULTS / "memory-worker.log") as run:
        assert run.worker is not None
        await asyncio.sleep(2.0)
        base_rss = rss_mb(run.worker.pid)
        base_redis = await redis_used(settings.redis.url)
        opened = 0
        for target in levels:
            started = time.monotonic()
            while opened < target:
                batch = []
                for i in range(opened, min(target, opened + 500)):
                    sid = run.session_id(f"mem-{i}")
                    batch.append(Chunk(session_id=sid, seq=1, part="question", text=QUESTION))
                    batch.append(Chunk(session_id=sid, seq=2, part="thinking", text=text))
                await run.publish(batch)
                opened = min(target, opened + 500)
            # the worker holds unscored chunks uncommitted, so consumer lag never drains here: wait until
            # Redis holds every session instead
            if not await wait_stored(settings.redis.url, run.session_id("mem-"), target, args.timeout):
                print(f"warning: the worker had not stored {target} sessions in {args.timeout:.0f} s")
            await asyncio.sleep(1.0)
            rss = rss_mb(run.worker.pid)
            red = await redis_used(settings.redis.url)
            row = {
                "live_sessions": target,
                "fold_s": time.monotonic() - started,
                "worker_rss_mb": rss,
                "worker_rss_delta_mb": rss - base_rss,
                "worker_kb_per_session": (rss - base_rss) * 1024 / target,
                "redis_used_mb": red["used_memory"] / 2**20,
                "redis_delta_mb": (red["used_memory"] - base_redis["used_memory"]) / 2**20,
                "redis_kb_per_session": (red["used_memory"] - base_redis["used_memory"]) / 1024 / target,
                "redis_keys_added": red["keys"] - base_redis["keys"],
            }
            rows.append(row)
            print(
                f"{target:>6} live sessions: worker RSS {rss:7.1f} MB (+{row['worker_rss_delta_mb']:.1f}, "
                f"{row['worker_kb_per_session']:.1f} KB/session) | Redis +{row['redis_delta_mb']:.1f} MB "
                f"({row['redis_kb_per_session']:.1f} KB/session, {row['redis_keys_added']} keys)",
                flush=True,
            )
        rows.insert(
            0,
            {
                "live_sessions": 0,
                "worker_rss_mb": base_rss,
                "redis_used_mb": base_redis["used_memory"] / 2**20,
            },
        )
        # SIGKILL, not SIGTERM: a draining worker would score every held session before it exits
        run.worker.kill()
        await run.worker.wait()
        await forget_sessions(settings.redis.url, run.session_id(""))
    return rows


async def wait_stored(url: str, prefix: str, count: int, timeout_s: float) -> bool:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            stored = 0
            async for _ in client.scan_iter(match=f"qm:{{{prefix}*}}:meta", count=5000):
                stored += 1
            if stored >= count:
                return True
            await asyncio.sleep(0.5)
        return False
    finally:
        await client.aclose()


async def forget_sessions(url: str, prefix: str) -> None:
    """Delete this run's session keys, so a benchmark leaves nothing in a shared Redis for a day."""
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        batch = [key async for key in client.scan_iter(match=f"qm:{{{prefix}*", count=1000)]
        for i in range(0, len(batch), 1000):
            await client.delete(*batch[i : i + 1000])
    finally:
        await client.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="100,1000,10000")
    ap.add_argument("--thinking-chars", type=int, default=2000, help="thinking held per session")
    ap.add_argument("--timeout", type=float, default=300.0, help="per level")
    args = ap.parse_args()
    rows = asyncio.run(measure(args))
    write_result("memory", {"args": vars(args), "levels": rows, "scoring": "off (stride/delay out of reach)"})


if __name__ == "__main__":
    main()
