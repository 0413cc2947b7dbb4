"""`qta-monitor train`: reproduce the embedded guard's committed weights (a LoRA adapter on MiniLM with its
3-way head) from ../shared/data, on CPU (about 50 minutes on 2 cores) or a GPU.

Stages, so they can run apart:
  prepare  licence-clean sets (+ WordNet glosses) -> composed QTA examples, whole and streamed as prefixes
           -> token ids (the guard's own `encode_prefix`)
  fit      LoRA fine-tuning, threshold calibration on the dev split, adapter + config written out
`train()` runs both in one process; `python -m monitor.training prepare|fit ...` runs them apart. Same
seed, same machine: the same bytes (fixed draws, no data-order nondeterminism, fp32 on CPU)."""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitor.training.corpus import LABELS, QUESTION_TOKENS, compose_examples, is_dev, jbb_goals, load_sets
from monitor.training.glossary import load_glosses

if TYPE_CHECKING:
    from monitor.settings import Settings


def prepare(
    data_dir: Path, out_file: Path, window_tokens: int, seed: int, streaming: bool = True
) -> dict[str, int]:
    """Compose, split, tokenise; saves everything `fit` needs (ids as int16, vocab < 32k)."""
    import torch
    from transformers import AutoTokenizer

    from monitor.guards.minilm import base_model_dir, encode_prefix

    tokenizer = AutoTokenizer.from_pretrained(str(base_model_dir()), local_files_only=True)
    tokenizer.model_max_length = 1 << 30  # encode_prefix bounds the lengths
    train_sets, eval_sets = load_sets(data_dir)
    glosses = load_glosses() if streaming else None
    examples = compose_examples(train_sets, seed, jbb_goals(data_dir), streaming, glosses)

    def encode(q: str, t: str, a: str) -> torch.Tensor:
        ids = encode_prefix(tokenizer, q, "", t, a, window_tokens, QUESTION_TOKENS)
        return torch.tensor(ids, dtype=torch.int16)

    splits: dict[str, Any] = {"train": [], "dev": []}
    for ex in examples:
        split = "dev" if is_dev(ex.group) else "train"
        splits[split].append((encode(ex.question, ex.thinking, ex.answer), LABELS.index(ex.target), ex.kind))
    for name, samples in eval_sets.items():
        splits[f"eval:{name}"] = [
            (encode(s.question, s.thinking, s.answer), LABELS.index(s.label), name) for s in samples
        ]
    meta = {"window_tokens": window_tokens, "question_tokens": QUESTION_TOKENS, "seed": seed}
    out_file.parent.mkdir(parents=True, exist_ok=True)
    packed = {name: _pack(rows) for name, rows in splits.items()}
    torch.save({"packed": packed, "meta": meta, "pad_id": int(tokenizer.pad_token_id or 0)}, out_file)
    return {k: len(v) for k, v in splits.items()}


def _pack(rows: list[tuple[Any, int, str]]) -> dict[str, Any]:
    """One flat id tensor + lengths: tens of thousands of small tensors would cost ~300 bytes each in
    torch.save, and the file has to fit in the device machine's 64 MiB transfer."""
    import torch

    return {
        "ids": torch.cat([r[0] for r in rows]) if rows else torch.zeros(0, dtype=torch.int16),
        "lengths": torch.tensor([len(r[0]) for r in rows], dtype=torch.int32),
        "labels": [r[1] for r in rows],
        "kinds": [r[2] for r in rows],
    }


def load_prepared(path: Path) -> dict[str, Any]:
    """A `prepare` file with its splits unpacked back to (ids, label index, kind) rows."""
    import torch

    data: dict[str, Any] = torch.load(path, weights_only=False)
    if "splits" in data:  # already rows (small hand-made files)
        return data
    splits = {}
    for name, p in data.pop("packed").items():
        chunks = torch.split(p["ids"], p["lengths"].tolist())
        splits[name] = list(zip(chunks, p["labels"], p["kinds"], strict=True))
    data["splits"] = splits
    return data


def _binary(pred: list[bool], gold: list[bool]) -> dict[str, float]:
    tp = sum(p and g for p, g in zip(pred, gold, strict=True))
    fp = sum(p and not g for p, g in zip(pred, gold, strict=True))
    fn = sum(g and not p for p, g in zip(pred, gold, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    negatives = sum(not g for g in gold)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "false_alarm": fp / negatives if negatives else 0.0,
    }


def split_metrics(logits: Any, rows: list[tuple[Any, int, str]], bias: float) -> dict[str, float]:
    """Harmful (label 1) vs the rest at arg-max after adding `bias` to the harmful logit; plus the
    false-alarm rate on the STAR-1 rows (safe traces that name a harm to refuse it)."""
    adjusted = logits.clone()
    adjusted[:, 2] += bias
    pred = adjusted.argmax(-1).tolist()
    result = _binary([p == 2 for p in pred], [r[1] == 2 for r in rows])
    star = [p == 2 for p, r in zip(pred, rows, strict=True) if r[2].startswith("star")]
    result["star_false_alarm"] = sum(star) / len(star) if star else 0.0
    result["n"] = float(len(rows))
    return result


def calibrate(logits: Any, rows: list[tuple[Any, int, str]], max_star_fa: float = 0.03) -> float:
    """The harmful-logit bias with the best dev F1 whose STAR-1 false alarms stay under `max_star_fa`."""
    grid = [x / 4 for x in range(-8, 9)]  # wider shifts would swamp the "potentially harmful" class
    scored = [(b, split_metrics(logits, rows, b)) for b in grid]
    allowed = [(m["f1"], -abs(b), b) for b, m in scored if m["star_false_alarm"] <= max_star_fa]
    if not allowed:
        return max(grid)  # the most conservative bias we tried keeps false alarms lowest
    return max(allowed)[2]


def _batches(rows: list[tuple[Any, int, str]], size: int, pad_id: int, device: str) -> Any:
    import torch

    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        width = max(len(r[0]) for r in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, r in enumerate(chunk):
            ids[i, : len(r[0])] = r[0].long()
            mask[i, : len(r[0])] = 1
        yield ids.to(device), mask.to(device), torch.tensor([r[1] for r in chunk], device=device)


# The shipped recipe: one epoch over at most FIT_PER_KIND rows of each example kind (about 18,600 rows,
# 580 steps of 32), which keeps a CPU run near 50 minutes on 2 cores.
FIT_EPOCHS = 1
FIT_PER_KIND = 600


def bucketed(rows: list[tuple[Any, int, str]], size: int, rng: random.Random) -> list[tuple[Any, int, str]]:
    """Rows shuffled, then sorted by length within windows of 50 batches, and the batches shuffled:
    batches of similar length pad little (2x faster on CPU) and still come in random order."""
    rows = list(rows)
    rng.shuffle(rows)
    window = 50 * size
    batches = []
    for start in range(0, len(rows), window):
        chunk = sorted(rows[start : start + window], key=lambda r: len(r[0]))
        batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
    rng.shuffle(batches)
    return [r for b in batches for r in b]


def cap_per_kind(rows: list[tuple[Any, int, str]], cap: int, seed: int) -> list[tuple[Any, int, str]]:
    """At most `cap` rows of each example kind (drawn with `seed`, original order kept): the biggest
    kinds are many draws of the same ~900 harmful responses, and one CPU epoch has to stay short."""
    rng = random.Random(seed)
    by_kind: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_kind.setdefault(r[2], []).append(i)
    keep = {i for kind in sorted(by_kind) for i in rng.sample(by_kind[kind], min(cap, len(by_kind[kind])))}
    return [r for i, r in enumerate(rows) if i in keep]


def _predict(model: Any, rows: list[tuple[Any, int, str]], pad_id: int, device: str) -> Any:
    import torch

    model.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))  # similar lengths pad little
    out = []
    with (
        torch.inference_mode(),
        torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"),
    ):
        for ids, mask, _ in _batches([rows[i] for i in order], 64, pad_id, device):
            out.append(model(ids, mask).float().cpu())
    if not out:
        return torch.zeros((0, 3))
    logits = torch.empty((len(rows), 3))
    logits[torch.tensor(order)] = torch.cat(out)
    return logits


def adapter_tensors(model: Any) -> dict[str, Any]:
    """The trained part of a peft-wrapped `MiniLMClassifier`, under the names `merge_lora` reads:
    `encoder.<module>.lora_A|lora_B` (fp16, small) and the fp32 head."""
    import torch

    tensors = {}
    for name, param in model.encoder.named_parameters():
        if "lora_" in name:
            key = name.removeprefix("base_model.model.").replace(".default.weight", "")
            tensors[f"encoder.{key}"] = param.detach().to("cpu", torch.float16).contiguous()
    tensors["head.weight"] = model.head.weight.detach().float().cpu().contiguous()
    tensors["head.bias"] = model.head.bias.detach().float().cpu().contiguous()
    return tensors


def fit(
    prepared: Path,
    base: Path,
    out: Path,
    epochs: int,
    seed: int,
    lora_r: int = 16,
    limit: int | None = None,
    max_per_kind: int | None = None,
) -> dict[str, Any]:
    """LoRA fine-tuning of MiniLM + head on the prepared ids; writes adapter + config to `out`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from tqdm import tqdm
    from transformers import AutoModel, get_linear_schedule_with_warmup

    from monitor.guards.minilm import ADAPTER_FILE, CONFIG_FILE, LORA_TARGETS, MiniLMClassifier

    random.seed(seed)
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = load_prepared(prepared)
    splits, pad_id = data["splits"], data["pad_id"]
    if limit is not None:  # a smoke run of the whole pipeline on a few rows of each split
        splits = {k: random.Random(seed).sample(v, min(limit, len(v))) for k, v in splits.items()}
    train_rows: list[tuple[Any, int, str]] = list(splits["train"])
    if max_per_kind is not None:
        train_rows = cap_per_kind(train_rows, max_per_kind, seed)
    encoder = AutoModel.from_pretrained(str(base), local_files_only=True, dtype=torch.float32)
    lora_alpha = 2 * lora_r
    config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.1, target_modules=LORA_TARGETS)
    model = MiniLMClassifier(get_peft_model(encoder, config), int(encoder.config.hidden_size)).to(device)
    counts = torch.bincount(torch.tensor([r[1] for r in train_rows]), minlength=3).float()
    weights = (counts.sum() / (3 * counts.clamp(min=1))).sqrt().to(device)  # damped inverse frequency
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    params = [
        {"params": [p for n, p in model.named_parameters() if "lora_" in n], "lr": 5e-4},
        {"params": model.head.parameters(), "lr": 2e-3},
    ]
    optimizer = torch.optim.AdamW(params, weight_decay=0.01)
    batch_size = 32
    steps = epochs * ((len(train_rows) + batch_size - 1) // batch_size)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.06 * steps), steps)  # type: ignore[no-untyped-call]
    rng = random.Random(seed)
    bar = tqdm(total=steps, desc=f"train ({device})", unit="step")
    for _ in range(epochs):
        model.train()
        for ids, mask, labels in _batches(bucketed(train_rows, batch_size, rng), batch_size, pad_id, device):
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
                logits = model(ids, mask)
            loss = loss_fn(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    dev_logits = _predict(model, splits["dev"], pad_id, device)
    bias = calibrate(dev_logits, splits["dev"])
    metrics: dict[str, Any] = {"device": device, "epochs": epochs, "bias": bias}
    metrics["dev"] = split_metrics(dev_logits, splits["dev"], bias)
    metrics["dev_uncalibrated"] = split_metrics(dev_logits, splits["dev"], 0.0)
    for name in (k for k in splits if k.startswith("eval:")):
        metrics[name] = split_metrics(_predict(model, splits[name], pad_id, device), splits[name], bias)
    tensors = adapter_tensors(model)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / ADAPTER_FILE))
    meta = data["meta"]
    (out / CONFIG_FILE).write_text(
        json.dumps(
            {
                "lora_r": lora_r,
                "lora_alpha": lora_alpha,
                "question_tokens": meta["question_tokens"],
                "window_tokens": meta["window_tokens"],
                "logit_bias": [0.0, 0.0, bias],
                "seed": seed,
                "metrics": metrics,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return metrics


def print_metrics(metrics: dict[str, Any]) -> None:
    bias = metrics["bias"]
    print(f"device {metrics['device']}, {metrics['epochs']} epochs, harmful-logit bias {bias:+.2f}")
    for name, m in metrics.items():
        if isinstance(m, dict):
            print(
                f"{name:>22}: precision {m['precision']:.3f} recall {m['recall']:.3f} f1 {m['f1']:.3f} "
                f"false alarms {m['false_alarm']:.3f} star-1 false alarms {m['star_false_alarm']:.3f} "
                f"n={int(m['n'])}"
            )


def train(settings: Settings, data_dir: Path, out: Path, epochs: int | None, seed: int) -> int:
    """The whole recipe in one process: prepare, then fit (on cuda when available, else CPU)."""
    from monitor.guards.minilm import base_model_dir

    prepared = out / "prepared.pt"
    counts = prepare(data_dir, prepared, settings.guard.window_tokens, seed)
    print(f"prepared: {counts}", file=sys.stderr)
    metrics = fit(
        prepared, base_model_dir(), out, epochs=epochs or FIT_EPOCHS, seed=seed, max_per_kind=FIT_PER_KIND
    )
    prepared.unlink()
    print_metrics(metrics)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The stages apart (`fit` needs only torch, transformers, peft and tqdm, for a GPU machine)."""
    parser = argparse.ArgumentParser(prog="python -m monitor.training")
    sub = parser.add_subparsers(dest="stage", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--window-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument(
        "--whole-only", action="store_true", help="whole responses only, no streamed prefixes or glosses"
    )
    f = sub.add_parser("fit")
    f.add_argument("--prepared", type=Path, required=True)
    f.add_argument("--base", type=Path, required=True)
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--epochs", type=int, default=FIT_EPOCHS)
    f.add_argument("--seed", type=int, default=13)
    f.add_argument("--lora-r", type=int, default=16)
    f.add_argument("--limit", type=int, default=None, help="rows per split, for a smoke run")
    f.add_argument("--max-per-kind", type=int, default=FIT_PER_KIND, help="cap the rows of each kind")
    args = parser.parse_args(argv)
    if args.stage == "prepare":
        print(json.dumps(prepare(args.data, args.out, args.window_tokens, args.seed, not args.whole_only)))
        return 0
    print_metrics(
        fit(
            args.prepared,
            args.base,
            args.out,
            epochs=args.epochs,
            seed=args.seed,
            lora_r=args.lora_r,
            limit=args.limit,
            max_per_kind=args.max_per_kind,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
