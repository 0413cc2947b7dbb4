"""GPU benchmark of the causal-LM judge's scoring pattern: incremental KV reuse vs full re-scoring.

Self-contained on purpose (only torch + transformers), so it runs on a bare GPU machine without the
qta-monitor package. The model is a Qwen2 built from a config with random weights: the shapes and hence the
speed are those of a 0.5B-class judge (Qwen2.5-0.5B's geometry); the verdicts themselves are meaningless.

What the monitor does per score (see monitor/guards/judge.py): extend the session's cached content prefix by
the new chunk, run the fixed template suffix ("... Verdict:") on top, read the label-token logits at the
last position, then cut the suffix back off the cache. The naive alternative forwards the whole prefix plus
the suffix from scratch on every chunk.

Measured in one run, side by side:
  1. exactness: label logits, incremental vs full re-score (fp32, short prefix)
  2. one session of --tokens tokens in --chunk-token chunks: tokens forwarded, wall time, per-score latency
  3. batch scaling: B sessions in lockstep, incremental vs naive, monitored tokens/s, scores/s, GPU memory
  4. with --engine vllm, side by side with hf-eager on the same weights and sessions: the same scoring
     pattern on vLLM's AsyncLLM (prefix caching, token-id prompts, label logprobs by logprob_token_ids, one
     score in flight per session, sessions as concurrent coroutines): per-score latency p50/p99 at one
     session, monitored tokens/s and GPU memory at --concurrency sessions of --vllm-tokens tokens, the
     share of computed tokens that are template suffix, and the label log-probabilities against HF's.
Prints ratios and writes JSON (GPU name, driver, torch/transformers/CUDA versions, date).

    python bench/gpu_judge.py                     # 0.5B-class, on CUDA
    python bench/gpu_judge.py --engine vllm       # + vLLM side by side (pip install 'qta-monitor[vllm]')
    python bench/gpu_judge.py --tiny --tokens 256 --batches 1,2   # smoke test on CPU
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import DynamicCache, Qwen2Config, Qwen2ForCausalLM

LABEL_TOKENS = (15, 16, 17)  # stand-ins for the "0", "0.5", "1" label tokens of the template


def build_config(tiny: bool) -> Qwen2Config:
    if tiny:
        return Qwen2Config(
            vocab_size=2048,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=16384,
        )
    # Qwen2.5-0.5B geometry: 24 layers, hidden 896, GQA 14 q / 2 kv heads, vocab 151,936, tied embeddings.
    return Qwen2Config(
        vocab_size=151_936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        rope_theta=1_000_000.0,
    )


def build_model(cfg: Qwen2Config, device: torch.device, dtype: torch.dtype) -> Qwen2ForCausalLM:
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg)
    return model.to(dtype).eval()


def crop(cache: DynamicCache, n: int) -> None:
    """Drop the last n positions. Done by hand: `DynamicCache.crop`'s argument changed meaning across
    transformers releases (target length before, negative count now)."""
    if n <= 0:
        return
    for layer in cache.layers:
        layer.keys = layer.keys[..., :-n, :]
        layer.values = layer.values[..., :-n, :]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def incremental(
    model: Qwen2ForCausalLM, content: torch.Tensor, suffix: torch.Tensor, chunk: int, latencies: list[float]
) -> tuple[torch.Tensor, int]:
    """Score after every chunk, reusing the KV cache. content: (B, T); returns last logits and tokens fed."""
    cache = DynamicCache()
    fed = 0
    logits = torch.empty(0)
    batch = content.shape[0]
    suffix_b = suffix.expand(batch, -1)
    for start in range(0, content.shape[1], chunk):
        t0 = time.perf_counter()
        piece = content[:, start : start + chunk]
        # One forward per score: the new chunk and the template suffix together, then the suffix is cut
        # back off the cache, leaving exactly the content prefix for the next chunk.
        ids = torch.cat([piece, suffix_b], dim=1)
        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1, list(LABEL_TOKENS)]
        crop(cache, suffix.shape[1])
        fed += (piece.shape[1] + suffix.shape[1]) * batch
        latencies.append(time.perf_counter() - t0)
    return logits, fed


@torch.inference_mode()
def naive(
    model: Qwen2ForCausalLM, content: torch.Tensor, suffix: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, int]:
    """Score after every chunk by forwarding the whole prefix + suffix again."""
    fed = 0
    logits = torch.empty(0)
    batch = content.shape[0]
    suffix_b = suffix.expand(batch, -1)
    for end in range(chunk, content.shape[1] + chunk, chunk):
        ids = torch.cat([content[:, : min(end, content.shape[1])], suffix_b], dim=1)
        out = model(input_ids=ids, use_cache=False, logits_to_keep=1)
        logits = out.logits[:, -1, list(LABEL_TOKENS)]
        fed += ids.numel()
    return logits, fed


def timed(fn: Any, device: torch.device) -> tuple[Any, float]:
    sync(device)
    t0 = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - t0


def peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            info["driver"] = f"unknown ({exc})"
    return info


def gpu_used_mb() -> float | None:
    """Device memory in use by every process (vLLM's engine runs in a process of its own)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "--id=0"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        return float(out.split()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def vllm_side(
    model: Qwen2ForCausalLM, args: argparse.Namespace, gen: torch.Generator
) -> dict[str, Any]:
    """The monitor's scoring pattern on vLLM (what monitor.guards.vllm_engine sends), same weights."""
    from vllm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams

    folder = Path(tempfile.mkdtemp(prefix="gpu_judge_vllm_"))
    model.save_pretrained(folder)  # the hf-eager model's random weights, read back by vLLM
    vocab = model.config.vocab_size
    max_len = max(args.vllm_tokens, args.tokens) + args.suffix + 16
    before = gpu_used_mb()
    engine = AsyncLLMEngine.from_engine_args(
        AsyncEngineArgs(
            model=str(folder),
            skip_tokenizer_init=True,
            dtype=args.dtype,
            enable_prefix_caching=True,
            kv_cache_memory_bytes=args.vllm_kv_gb * 2**30,
            gpu_memory_utilization=0.05,  # start-up check only; the pool is kv_cache_memory_bytes
            max_model_len=max_len,
            max_num_seqs=args.vllm_max_seqs,
            generation_config="vllm",
            seed=0,
        )
    )
    params = SamplingParams(
        max_tokens=1,
        temperature=0.0,
        logprobs=len(LABEL_TOKENS),
        logprob_token_ids=list(LABEL_TOKENS),
        detokenize=False,
    )
    ids = itertools.count()
    suffix = torch.randint(100, vocab, (args.suffix,), generator=gen).tolist()

    async def score(prompt: list[int]) -> tuple[float, int, int, dict[int, float]]:
        t0 = time.perf_counter()
        final = None
        async for out in engine.generate({"prompt_token_ids": prompt}, params, str(next(ids))):
            final = out
        assert final is not None
        row = {int(t): lp.logprob for t, lp in final.outputs[0].logprobs[0].items()}
        return time.perf_counter() - t0, len(prompt), int(final.num_cached_tokens or 0), row

    async def session(content: list[int], stats: list[tuple[float, int, int]]) -> None:
        for end in range(args.chunk, len(content) + args.chunk, args.chunk):  # one score in flight
            latency, sent, cached, _ = await score(content[:end] + suffix)
            stats.append((latency, sent, cached))

    def trace(n: int) -> list[int]:
        return torch.randint(100, vocab, (n,), generator=gen).tolist()

    out: dict[str, Any] = {"engine_mem_mb": None}
    await session(trace(256), [])  # warm-up (CUDA graphs are captured at start-up)
    # exactness: label log-probabilities vs an HF full forward of the same prompt
    probe = trace(300) + suffix
    _, _, _, row = await score(probe)
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([probe], device=model.device), logits_to_keep=1).logits
    hf = torch.log_softmax(logits[0, -1].float(), -1)
    out["label_logprob_max_abs_diff_vs_hf"] = max(abs(row[t] - float(hf[t])) for t in LABEL_TOKENS)
    single: list[tuple[float, int, int]] = []
    await session(trace(args.tokens), single)
    lat = [x[0] * 1000 for x in single]
    out["single_session"] = {
        "score_latency_ms_p50": statistics.median(lat),
        "score_latency_ms_p99": percentile(lat, 0.99),
        "monitored_tokens_per_s": args.tokens / sum(x[0] for x in single),
    }
    print(f"[vllm single] score p50 {statistics.median(lat):.2f} ms, p99 {percentile(lat, 0.99):.2f} ms")
    rows = []
    for sessions in [int(b) for b in args.concurrency.split(",") if b]:
        contents = [trace(args.vllm_tokens) for _ in range(sessions)]
        stats: list[tuple[float, int, int]] = []
        t0 = time.perf_counter()
        await asyncio.gather(*(session(c, stats) for c in contents))
        wall = time.perf_counter() - t0
        sent = sum(x[1] for x in stats)
        computed = sum(x[1] - x[2] for x in stats)
        rows.append(
            {
                "sessions": sessions,
                "tokens_per_session": args.vllm_tokens,
                "wall_s": wall,
                "monitored_tokens_per_s": sessions * args.vllm_tokens / wall,
                "scores_per_s": len(stats) / wall,
                "score_latency_ms_p50": statistics.median(x[0] * 1000 for x in stats),
                "score_latency_ms_p99": percentile([x[0] * 1000 for x in stats], 0.99),
                "prefix_cache_hit_rate": 1 - computed / sent,
                "suffix_share_of_computed": len(stats) * args.suffix / max(1, computed),
                "gpu_used_mb": gpu_used_mb(),
            }
        )
        print(
            f"[vllm {sessions:>4} sessions] monitored tokens/s {rows[-1]['monitored_tokens_per_s']:,.0f}, "
            f"hit rate {rows[-1]['prefix_cache_hit_rate']:.3f}, "
            f"suffix share {rows[-1]['suffix_share_of_computed']:.2f}"
        )
    out["concurrency"] = rows
    used = gpu_used_mb()
    out["engine_mem_mb"] = used - before if used is not None and before is not None else None
    engine.shutdown()
    return out


def hf_side(
    model: Qwen2ForCausalLM, args: argparse.Namespace, device: torch.device, cfg: Qwen2Config
) -> list:
    """hf-eager (incremental, lockstep batches) at the same session counts and lengths as vLLM."""
    gen = torch.Generator().manual_seed(2)
    suffix = torch.randint(100, cfg.vocab_size, (1, args.suffix), generator=gen).to(device)
    rows = []
    for sessions in [int(b) for b in args.concurrency.split(",") if b]:
        if sessions > args.hf_max_sessions:
            continue
        content = torch.randint(100, cfg.vocab_size, (sessions, args.vllm_tokens), generator=gen).to(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        lat: list[float] = []
        _, wall = timed(lambda c=content, la=lat: incremental(model, c, suffix, args.chunk, la), device)
        rows.append(
            {
                "sessions": sessions,
                "tokens_per_session": args.vllm_tokens,
                "wall_s": wall,
                "monitored_tokens_per_s": sessions * args.vllm_tokens / wall,
                "score_latency_ms_p50": statistics.median(x * 1000 for x in lat),
                "peak_mem_mb": peak_mb(device),
            }
        )
        print(
            f"[hf-eager {sessions:>4} sessions] monitored tokens/s {rows[-1]['monitored_tokens_per_s']:,.0f}"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny config (CPU smoke test)")
    ap.add_argument("--tokens", type=int, default=2048, help="trace length in tokens")
    ap.add_argument("--chunk", type=int, default=16, help="tokens per chunk (one score per chunk)")
    ap.add_argument("--suffix", type=int, default=24, help="template suffix tokens run on top per score")
    ap.add_argument("--batches", default="1,4,16,64")
    ap.add_argument("--growth", default="512,1024,2048,4096,8192", help="trace lengths of the growth run")
    ap.add_argument("--naive-max-batch", type=int, default=64, help="largest batch also re-scored naively")
    ap.add_argument("--batch-tokens", type=int, default=1024, help="trace length in the batch-scaling runs")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of 10 scores")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu_judge.json")
    ap.add_argument("--engine", default="hf", choices=["hf", "vllm"], help="vllm: also run vLLM side by side")
    ap.add_argument("--concurrency", default="16,64,256,1024", help="concurrent sessions (hf-eager vs vllm)")
    ap.add_argument("--vllm-tokens", type=int, default=2048, help="trace length per session, side by side")
    ap.add_argument("--vllm-kv-gb", type=int, default=40, help="vLLM KV pool (kv_cache_memory_bytes)")
    ap.add_argument("--vllm-max-seqs", type=int, default=1024, help="vLLM max_num_seqs")
    ap.add_argument("--hf-max-sessions", type=int, default=1024, help="largest hf-eager side-by-side run")
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(2)
    dtype = getattr(torch, args.dtype) if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        # cuDNN's attention builds a new execution plan for every new KV length (~0.5 ms CPU per layer per
        # score, measured with --profile); a growing cache sees a new length on every chunk, so use the
        # flash / memory-efficient kernels instead.
        torch.backends.cuda.enable_cudnn_sdp(False)
    cfg = build_config(args.tiny)
    result: dict[str, Any] = {"machine": machine(device), "args": {k: str(v) for k, v in vars(args).items()}}
    gen = torch.Generator().manual_seed(1)

    def tokens(batch: int, n: int) -> torch.Tensor:
        return torch.randint(100, cfg.vocab_size, (batch, n), generator=gen).to(device)

    suffix = tokens(1, args.suffix)

    # 1. exactness in fp32 (bf16 rounding would hide a real bug behind noise)
    model32 = build_model(cfg, device, torch.float32)
    check = tokens(1, 256)
    inc_logits, _ = incremental(model32, check, suffix, args.chunk, [])
    full_logits, _ = naive(model32, check, suffix, args.chunk)
    result["exactness_fp32_max_abs_diff"] = float((inc_logits - full_logits).abs().max())
    del model32
    if device.type == "cuda":
        torch.cuda.empty_cache()

    model = build_model(cfg, device, dtype)
    result["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    kv_bytes_per_token = (
        2
        * cfg.num_hidden_layers
        * cfg.num_key_value_heads
        * (cfg.hidden_size // cfg.num_attention_heads)
        * torch.finfo(dtype).bits
        // 8
    )
    result["kv_bytes_per_token"] = kv_bytes_per_token

    warm = tokens(1, 128)
    incremental(model, warm, suffix, args.chunk, [])
    naive(model, warm, suffix, args.chunk)

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            timed(lambda: incremental(model, tokens(1, 160), suffix, args.chunk, []), device)
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))

    # 2. one session, the headline comparison
    content = tokens(1, args.tokens)
    lat: list[float] = []
    (_, inc_fed), inc_s = timed(lambda: incremental(model, content, suffix, args.chunk, lat), device)
    (_, naive_fed), naive_s = timed(lambda: naive(model, content, suffix, args.chunk), device)
    content_only = sum(range(args.chunk, args.tokens + args.chunk, args.chunk))
    lat_ms = sorted(x * 1000 for x in lat)
    single = {
        "tokens": args.tokens,
        "chunk": args.chunk,
        "scores": len(lat),
        "incremental_tokens_forwarded": inc_fed,
        "naive_tokens_forwarded": naive_fed,
        "forwarded_ratio": inc_fed / naive_fed,
        "content_forwarded_ratio": args.tokens / content_only,
        "incremental_s": inc_s,
        "naive_s": naive_s,
        "wall_ratio": inc_s / naive_s,
        "score_latency_ms_p50": statistics.median(lat_ms),
        "score_latency_ms_p99": lat_ms[min(len(lat_ms) - 1, int(0.99 * len(lat_ms)))],
        "monitored_tokens_per_s_incremental": args.tokens / inc_s,
        "monitored_tokens_per_s_naive": args.tokens / naive_s,
    }
    result["single_session"] = single
    print(
        f"[single] {args.tokens} tokens / {args.chunk}-token chunks: forwarded {inc_fed} vs {naive_fed} "
        f"({single['forwarded_ratio']:.3f}x), wall {inc_s:.2f}s vs {naive_s:.2f}s "
        f"({single['wall_ratio']:.3f}x), "
        f"score p50 {single['score_latency_ms_p50']:.1f} ms"
    )

    # 2b. cost growth of the incremental path with trace length (one session, scored on every chunk)
    growth = []
    for n in [int(x) for x in args.growth.split(",") if x]:
        content = tokens(1, n)
        (_, fed), wall = timed(lambda c=content: incremental(model, c, suffix, args.chunk, []), device)
        growth.append({"tokens": n, "tokens_forwarded": fed, "wall_s": wall})
    for prev, cur in itertools.pairwise(growth):
        cur["doubling_wall"] = cur["wall_s"] / prev["wall_s"]
        cur["doubling_tokens"] = cur["tokens_forwarded"] / prev["tokens_forwarded"]
    result["growth"] = growth
    if growth:
        print("[growth] " + ", ".join(f"{g['tokens']}: {g['wall_s']:.2f}s" for g in growth))

    # 3. batch scaling: B sessions advancing in lockstep (one cross-session batch per chunk)
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        content = tokens(batch, args.batch_tokens)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        _, inc_s = timed(lambda c=content: incremental(model, c, suffix, args.chunk, []), device)
        inc_peak = peak_mb(device)
        if batch > args.naive_max_batch:  # full re-scoring grows quadratically; skip where it takes minutes
            rows.append(
                {
                    "batch": batch,
                    "tokens_per_session": args.batch_tokens,
                    "incremental_s": inc_s,
                    "monitored_tokens_per_s_incremental": batch * args.batch_tokens / inc_s,
                    "scores_per_s_incremental": batch * (args.batch_tokens // args.chunk) / inc_s,
                    "peak_mem_mb_incremental": inc_peak,
                    "kv_mb_per_session": kv_bytes_per_token * args.batch_tokens / 2**20,
                }
            )
            print(
                f"[batch {batch:>3}] monitored tokens/s incremental "
                f"{rows[-1]['monitored_tokens_per_s_incremental']:,.0f}"
            )
            continue
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _, naive_s = timed(lambda c=content: naive(model, c, suffix, args.chunk), device)
        row = {
            "batch": batch,
            "tokens_per_session": args.batch_tokens,
            "incremental_s": inc_s,
            "naive_s": naive_s,
            "wall_ratio": inc_s / naive_s,
            "monitored_tokens_per_s_incremental": batch * args.batch_tokens / inc_s,
            "monitored_tokens_per_s_naive": batch * args.batch_tokens / naive_s,
            "scores_per_s_incremental": batch * (args.batch_tokens // args.chunk) / inc_s,
            "peak_mem_mb_incremental": inc_peak,
            "peak_mem_mb_naive": peak_mb(device),
            "kv_mb_per_session": kv_bytes_per_token * args.batch_tokens / 2**20,
        }
        rows.append(row)
        print(
            f"[batch {batch:>3}] monitored tokens/s incremental "
            f"{row['monitored_tokens_per_s_incremental']:,.0f} "
            f"vs naive {row['monitored_tokens_per_s_naive']:,.0f} (wall {row['wall_ratio']:.3f}x), "
            f"peak mem {row['peak_mem_mb_incremental']} MB"
        )
    result["batch_scaling"] = rows
    print(
        f"[exactness] fp32 max |incremental - full| label logit = {result['exactness_fp32_max_abs_diff']:.2e}"
    )

    if args.engine == "vllm":
        if device.type != "cuda":
            raise SystemExit("--engine vllm needs a CUDA device")
        import vllm

        result["machine"]["vllm"] = vllm.__version__
        result["side_by_side"] = {
            "hf_eager": hf_side(model, args, device, cfg),
            "vllm": asyncio.run(vllm_side(model, args, torch.Generator().manual_seed(3))),
        }

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], args.out.name).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
