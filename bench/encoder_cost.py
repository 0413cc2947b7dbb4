"""Cost per score of the two encoder bases side by side: the same batches of guard-sized inputs (the
embedded guard's longest, 387 tokens, and a typical 200) through MiniLM-L6 and bge-small, alternating,
best of `--repeats`. Prints the bge-small / MiniLM time ratio (the issue's "roughly doubles").

    python bench/encoder_cost.py [--repeats 3] [--threads 2]"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    import torch
    from transformers import AutoModel

    from monitor.guards.encoders import base_dir

    ap = argparse.ArgumentParser(prog="bench/encoder_cost.py")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = {
        name: AutoModel.from_pretrained(str(base_dir(name)), local_files_only=True).eval()
        for name in ("minilm", "bge-small")
    }
    result: dict[str, object] = {
        "batch": args.batch,
        "threads": args.threads,
        "load": list(__import__("os").getloadavg()),
    }
    gen = torch.Generator().manual_seed(0)
    for length in (200, 387):
        ids = torch.randint(1000, 29000, (args.batch, length), generator=gen)
        mask = torch.ones_like(ids)
        best = {name: float("inf") for name in models}
        with torch.inference_mode():
            for _ in range(args.repeats):
                for name, model in models.items():
                    start = time.perf_counter()
                    model(input_ids=ids, attention_mask=mask)
                    best[name] = min(best[name], time.perf_counter() - start)
        ratio = best["bge-small"] / best["minilm"]
        result[f"tokens_{length}"] = {"seconds": best, "ratio_bge_over_minilm": ratio}
        print(f"{length} tokens x {args.batch}: bge-small / minilm time per batch = {ratio:.2f}")
    out = ROOT / "bench/results/encoder_cost.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
