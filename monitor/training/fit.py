"""`qta-monitor train`: reproduce the embedded guard's committed weights (a LoRA adapter on an offline
encoder base with its 3-way head) from ../shared/data, on CPU (about an hour on 2 cores) or a GPU.

Stages, so they can run apart:
  prepare  licence-clean sets (+ WordNet glosses, + the sets added later) -> composed QTA examples, whole
           and streamed as prefixes, capped per kind (monitor/training/data/recipe.json) -> token ids
  fit      LoRA fine-tuning (+ a ranking loss on hh-rlhf pairs), bias calibration on the dev split,
           per-source dev metrics, adapter + config written out
`train()` runs both in one process; `python -m monitor.training prepare|fit ...` runs them apart. Same
seed, same machine: the same bytes (fixed draws, no data-order nondeterminism, fp32 on CPU)."""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitor.training.corpus import (
    FILL_PROMPTS,
    LABELS,
    QUESTION_TOKENS,
    RAW,
    REFUSALS,
    Example,
    _cut,
    compose_examples,
    is_dev,
    jbb_goals,
    load_sets,
)
from monitor.training.glossary import load_glosses
from monitor.training.responses import compose_added

if TYPE_CHECKING:
    from monitor.settings import Settings

RECIPE = json.loads((Path(__file__).parent / "data" / "recipe.json").read_text(encoding="utf-8"))
Row = tuple[Any, int, str]
# The older example kinds carry no source prefix; this is their source for per-source metrics.
_OLD_SOURCES = (
    ("star", "star-1"),
    ("jbb", "jailbreakbench"),
    ("composed", "jailbreakbench"),
    ("reasoning", "jailbreakbench"),
    ("narrative", "jailbreakbench"),
    ("goal", "jailbreakbench"),
    ("mod", "moderation"),
    ("prompt", "moderation"),
    ("benign", "benign"),
    ("gloss", "wordnet"),
    ("image", "typographic"),
)


def source_of(kind: str) -> str:
    if "/" in kind:
        return kind.split("/", 1)[0]
    return next((src for prefix, src in _OLD_SOURCES if kind.startswith(prefix)), kind)


def base_dir(name: str) -> Path:
    """The encoder base `name` (monitor/guards/encoders.py; `minilm` is the wheel's MiniLM)."""
    from monitor.guards.encoders import base_dir as encoder_dir

    return encoder_dir(name)


def capped(examples: list[Example], seed: int, dev: bool) -> list[Example]:
    """At most the recipe's cap of each kind (drawn with `seed`, original order kept); the dev split keeps a
    third of it: the biggest kinds are many draws of the same responses, and one CPU epoch must stay short."""
    rng = random.Random(seed)
    by_kind: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        by_kind.setdefault(ex.kind, []).append(i)
    keep: set[int] = set()
    for kind in sorted(by_kind):
        cap = int(RECIPE["caps"].get(kind, RECIPE["default_cap"]))
        cap = max(int(RECIPE["dev_min"]), cap // 3) if dev else cap
        keep.update(rng.sample(by_kind[kind], min(cap, len(by_kind[kind]))))
    return [ex for i, ex in enumerate(examples) if i in keep]


def prepare(
    data_dir: Path,
    out_file: Path,
    window_tokens: int,
    seed: int,
    streaming: bool = True,
    base: str = "minilm",
    full: bool = False,
) -> dict[str, int]:
    """Compose, split, cap, tokenise; saves everything `fit` needs (ids as int16, vocab < 32k). `full`
    keeps every row (no caps) and leaves out the added sets, as the older recipe did."""
    import torch
    from transformers import AutoTokenizer

    from monitor.guards.minilm import encode_prefix

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir(base)), local_files_only=True)
    tokenizer.model_max_length = 1 << 30  # encode_prefix bounds the lengths
    train_sets, eval_sets = load_sets(data_dir)
    glosses = load_glosses() if streaming else None
    examples = compose_examples(train_sets, seed, jbb_goals(data_dir), streaming, glosses)
    pairs: list[tuple[Example, Example]] = []
    if streaming and not full:
        star = train_sets.get("star-1", [])
        rng = random.Random(seed + 2)
        leads = [_cut(s.thinking, rng, 0.1, 0.4) for s in star]
        refusals = list(REFUSALS) + [s.answer for s in star if len(s.answer) < 1200][:200]
        added, pairs = compose_added(data_dir / RAW, seed, leads, refusals, FILL_PROMPTS)
        examples += added

    def encode(ex: Example) -> torch.Tensor:
        ids = encode_prefix(
            tokenizer, ex.question, "", ex.thinking, ex.answer, window_tokens, QUESTION_TOKENS
        )
        return torch.tensor(ids, dtype=torch.int16)

    splits: dict[str, Any] = {}
    for name, dev in (("train", False), ("dev", True)):
        chosen = [ex for ex in examples if is_dev(ex.group) == dev]
        chosen = chosen if full else capped(chosen, seed, dev)
        splits[name] = [(encode(ex), LABELS.index(ex.target), ex.kind) for ex in chosen]
        in_split = [p for p in pairs if is_dev(p[0].group) == dev]
        in_split = random.Random(seed).sample(
            in_split, min(len(in_split), int(RECIPE["pairs"]) // (3 if dev else 1))
        )
        splits[f"pairs:{name}"] = [
            (encode(ex), LABELS.index(ex.target), ex.kind) for p in in_split for ex in p
        ]
    for name, samples in eval_sets.items():
        splits[f"eval:{name}"] = [
            (
                encode(Example(s.question, s.thinking, s.answer, s.label, name, "")),
                LABELS.index(s.label),
                name,
            )
            for s in samples
        ]
    meta = {"window_tokens": window_tokens, "question_tokens": QUESTION_TOKENS, "seed": seed, "base": base}
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


def auroc(scores: list[float], gold: list[bool]) -> float | None:
    """Probability that a harmful row outranks a safe one (ties count half); None without both classes."""
    pos = sum(gold)
    neg = len(gold) - pos
    if not pos or not neg:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, g in zip(ranks, gold, strict=True) if g)
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def per_source(logits: Any, rows: list[Row], bias: float) -> dict[str, dict[str, float]]:
    """Dev metrics of each source apart (harmful = arg-max label 1 after `bias`), so a source the guard has
    memorised cannot hide a weak one: n, harmful rows, precision / recall / F1, false alarms, AUROC."""
    adjusted = logits.clone()
    adjusted[:, 2] += bias
    pred = adjusted.argmax(-1).tolist()
    p_harm = adjusted.softmax(-1)[:, 2].tolist()
    out: dict[str, dict[str, float]] = {}
    for source in sorted({source_of(r[2]) for r in rows}):
        idx = [i for i, r in enumerate(rows) if source_of(r[2]) == source]
        gold = [rows[i][1] == 2 for i in idx]
        m = _binary([pred[i] == 2 for i in idx], gold)
        m["n"], m["harmful"] = float(len(idx)), float(sum(gold))
        area = auroc([p_harm[i] for i in idx], gold)
        m["auroc"] = area if area is not None else math.nan
        out[source] = m
    return out


def calibrate(
    logits: Any, rows: list[Row], ceilings: dict[str, float] | None = None, min_harmful: int = 5
) -> float:
    """The harmful-logit bias with the best mean F1 over the sources that have harmful dev rows, among those
    that keep every safe source under its false-alarm ceiling (recipe.json): no single source decides."""
    ceilings = RECIPE["calibration"] if ceilings is None else ceilings
    grid = [x / 4 for x in range(-8, 9)]  # wider shifts would swamp the "potentially harmful" class
    best: tuple[float, float, float] | None = None
    for b in grid:
        by_source = per_source(logits, rows, b)
        if any(m["false_alarm"] > ceilings.get(src, 1.0) for src, m in by_source.items()):
            continue
        f1s = [m["f1"] for m in by_source.values() if m["harmful"] >= min_harmful]  # else too noisy
        score = (sum(f1s) / len(f1s) if f1s else 0.0, -abs(b), b)
        best = score if best is None or score > best else best
    return best[2] if best is not None else min(grid)  # none allowed: the most conservative bias


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


FIT_EPOCHS = int(RECIPE["epochs"])


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


def _pair_loss(model: Any, batch: Any) -> Any:
    """hh-rlhf ranking: the rejected reply's harmful margin should exceed the chosen one's (rows alternate
    chosen, rejected)."""
    import torch

    ids, mask, _ = batch
    logits = model(ids, mask).float()
    margin = logits[:, 2] - torch.logsumexp(logits[:, :2], dim=-1)
    return torch.nn.functional.softplus(margin[0::2] - margin[1::2]).mean()


def fit(
    prepared: Path,
    base: Path,
    out: Path,
    epochs: int,
    seed: int,
    lora_r: int = 16,
    limit: int | None = None,
    base_name: str = "minilm",
    train_rows: int | None = None,
    eval_sets: bool = True,
    batch_size: int = 32,
) -> dict[str, Any]:
    """LoRA fine-tuning of the encoder + head on the prepared ids; writes adapter + config to `out`.
    `train_rows` trains on a seeded draw of that many rows (a cheaper side-by-side of two bases on the same
    rows; dev stays whole); `eval_sets=False` leaves out the evaluation sets at the end."""
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
        rng0 = random.Random(seed)
        splits = {
            k: v[: 2 * (limit // 2)] if k.startswith("pairs:") else rng0.sample(v, min(limit, len(v)))
            for k, v in splits.items()
        }
    if not eval_sets:
        splits = {k: v for k, v in splits.items() if not k.startswith("eval:")}
    rows: list[Row] = list(splits["train"])
    if train_rows is not None:
        keep = set(random.Random(seed).sample(range(len(rows)), min(train_rows, len(rows))))
        rows = [r for i, r in enumerate(rows) if i in keep]
    pair_rows: list[Row] = list(splits.get("pairs:train", []))
    encoder = AutoModel.from_pretrained(str(base), local_files_only=True, dtype=torch.float32)
    lora_alpha = 2 * lora_r
    config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.1, target_modules=LORA_TARGETS)
    model = MiniLMClassifier(get_peft_model(encoder, config), int(encoder.config.hidden_size)).to(device)
    counts = torch.bincount(torch.tensor([r[1] for r in rows]), minlength=3).float()
    weights = (counts.sum() / (3 * counts.clamp(min=1))).sqrt().to(device)  # damped inverse frequency
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    params = [
        {"params": [p for n, p in model.named_parameters() if "lora_" in n], "lr": 5e-4},
        {"params": model.head.parameters(), "lr": 2e-3},
    ]
    optimizer = torch.optim.AdamW(params, weight_decay=0.01)
    steps = epochs * ((len(rows) + batch_size - 1) // batch_size)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.06 * steps), steps)  # type: ignore[no-untyped-call]
    rng = random.Random(seed)
    pair_size = 2 * int(RECIPE["pair_batch"])
    pair_batches = [pair_rows[i : i + pair_size] for i in range(0, len(pair_rows) - pair_size + 1, pair_size)]
    every = max(1, steps // max(1, len(pair_batches) * epochs))  # spread the pairs over the epoch(s)
    bar = tqdm(total=steps, desc=f"train {base_name} ({device})", unit="step")
    step = 0
    for _ in range(epochs):
        model.train()
        rng.shuffle(pair_batches)
        pending = list(pair_batches)
        for ids, mask, labels in _batches(bucketed(rows, batch_size, rng), batch_size, pad_id, device):
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
                logits = model(ids, mask)
                loss = loss_fn(logits.float(), labels)
                step += 1
                if pending and step % every == 0:
                    pair = next(_batches(pending.pop(), pair_size, pad_id, device))
                    loss = loss + float(RECIPE["pair_weight"]) * _pair_loss(model, pair)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    metrics = evaluate(model, splits, pad_id, device)
    metrics.update({"device": device, "epochs": epochs, "base": base_name, "train_rows": len(rows)})
    tensors = adapter_tensors(model)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / ADAPTER_FILE))
    meta = data["meta"]
    (out / CONFIG_FILE).write_text(
        json.dumps(
            {
                "base": base_name,
                "lora_r": lora_r,
                "lora_alpha": lora_alpha,
                "question_tokens": meta["question_tokens"],
                "window_tokens": meta["window_tokens"],
                "logit_bias": [0.0, 0.0, metrics["bias"]],
                "seed": seed,
                "metrics": metrics,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return metrics


def evaluate(model: Any, splits: dict[str, list[Row]], pad_id: int, device: str) -> dict[str, Any]:
    """Calibrate the bias on the dev split, then dev metrics overall and per source, the held-out pair
    accuracy, and the evaluation sets."""
    dev_logits = _predict(model, splits["dev"], pad_id, device)
    bias = calibrate(dev_logits, splits["dev"])
    metrics: dict[str, Any] = {"bias": bias}
    metrics["dev"] = split_metrics(dev_logits, splits["dev"], bias)
    metrics["dev_sources"] = per_source(dev_logits, splits["dev"], bias)
    pairs = splits.get("pairs:dev", [])
    if pairs:
        logits = _predict(model, pairs, pad_id, device)
        margin = (logits[:, 2] - logits[:, :2].logsumexp(-1)).tolist()
        wins = [margin[i + 1] > margin[i] for i in range(0, len(margin) - 1, 2)]
        metrics["dev_pairs"] = {"n": float(len(wins)), "accuracy": sum(wins) / len(wins)}
    for name in (k for k in splits if k.startswith("eval:")):
        logits = _predict(model, splits[name], pad_id, device)
        m = split_metrics(logits, splits[name], bias)
        area = auroc(logits.softmax(-1)[:, 2].tolist(), [r[1] == 2 for r in splits[name]])
        m["auroc"] = area if area is not None else math.nan
        metrics[name] = m
    return metrics


def print_metrics(metrics: dict[str, Any]) -> None:
    print(
        f"base {metrics.get('base', 'minilm')}, device {metrics['device']}, {metrics['epochs']} epochs, "
        f"harmful-logit bias {metrics['bias']:+.2f}"
    )
    rows = [(k, m) for k, m in metrics.items() if isinstance(m, dict) and "f1" in m]
    rows += [(f"dev/{k}", m) for k, m in metrics.get("dev_sources", {}).items()]
    for name, m in rows:
        area = m.get("auroc", math.nan)
        print(
            f"{name:>24}: n={int(m['n']):>5} precision {m['precision']:.3f} recall {m['recall']:.3f} "
            f"f1 {m['f1']:.3f} false alarms {m['false_alarm']:.3f} auroc {area:.3f}"
        )
    if "dev_pairs" in metrics:
        p = metrics["dev_pairs"]
        print(
            f"{'dev/hh-rlhf pairs':>24}: n={int(p['n']):>5} rejected ranked more harmful {p['accuracy']:.3f}"
        )


def train(
    settings: Settings, data_dir: Path, out: Path, epochs: int | None, seed: int, base: str = "minilm"
) -> int:
    """The whole recipe in one process: prepare, then fit (on cuda when available, else CPU)."""
    prepared = out / "prepared.pt"
    counts = prepare(data_dir, prepared, settings.guard.window_tokens, seed, base=base)
    print(f"prepared: {counts}", file=sys.stderr)
    metrics = fit(prepared, base_dir(base), out, epochs=epochs or FIT_EPOCHS, seed=seed, base_name=base)
    prepared.unlink()
    print_metrics(metrics)
    return 0


DATA_HELP = "the shared data folder (default: $QTA_SHARED_DATA, else ../shared/data beside the repository)"


def main(argv: list[str] | None = None) -> int:
    """The stages apart (`fit` needs only torch, transformers, peft and tqdm, for a GPU machine)."""
    parser = argparse.ArgumentParser(prog="python -m monitor.training")
    sub = parser.add_subparsers(dest="stage", required=True)
    p = sub.add_parser("prepare", help="compose, split, cap and tokenise the training data")
    p.add_argument("--data", type=Path, default=None, help=DATA_HELP)
    p.add_argument("--out", type=Path, required=True, help="the prepared file to write")
    p.add_argument(
        "--window-tokens", type=int, default=256, help="trace tokens per row (guard.window_tokens)"
    )
    p.add_argument("--seed", type=int, default=13, help="seed of every draw")
    p.add_argument("--base", default="minilm", help="encoder base whose tokenizer to use (minilm, bge-small)")
    p.add_argument(
        "--whole-only", action="store_true", help="whole responses only, no streamed prefixes or glosses"
    )
    f = sub.add_parser("fit", help="LoRA fine-tuning on a prepared file; writes adapter + config")
    f.add_argument("--prepared", type=Path, required=True, help="a file written by prepare")
    f.add_argument("--base", default="minilm", help="encoder base name (minilm, bge-small) or a model folder")
    f.add_argument("--out", type=Path, required=True, help="folder for adapter.safetensors + config.json")
    f.add_argument("--epochs", type=int, default=FIT_EPOCHS, help="passes over the capped train rows")
    f.add_argument("--seed", type=int, default=13, help="seed of every draw")
    f.add_argument("--lora-r", type=int, default=16, help="LoRA rank")
    f.add_argument("--limit", type=int, default=None, help="rows per split, for a smoke run")
    f.add_argument("--train-rows", type=int, default=None, help="train on a seeded draw of this many rows")
    f.add_argument("--no-eval-sets", action="store_true", help="skip the evaluation sets at the end")
    f.add_argument("--batch-size", type=int, default=32, help="rows per step (smaller: less memory)")
    d = sub.add_parser("devsets", help="write the dev split as streaming sessions, one JSONL per source")
    d.add_argument("--data", type=Path, default=None, help=DATA_HELP)
    d.add_argument("--out", type=Path, required=True, help="folder for <source>-dev.jsonl")
    d.add_argument("--limit", type=int, default=None, help="at most this many sessions per source")
    args = parser.parse_args(argv)
    if args.stage in ("devsets", "prepare"):
        from monitor.evaluation.datasets import DataMissing, data_dir

        try:
            data = data_dir(args.data)
        except DataMissing as exc:
            print(f"{parser.prog}: {exc}", file=sys.stderr)
            return 2
    if args.stage == "devsets":
        from monitor.training.devsets import write_dev_sets

        print(json.dumps(write_dev_sets(data, args.out, args.limit)))
        return 0
    if args.stage == "prepare":
        counts = prepare(data, args.out, args.window_tokens, args.seed, not args.whole_only, args.base)
        print(json.dumps(counts))
        return 0
    base_path = Path(args.base) if Path(args.base).is_dir() else base_dir(args.base)
    name = args.base if not Path(args.base).is_dir() else "minilm"
    print_metrics(
        fit(
            args.prepared,
            base_path,
            args.out,
            epochs=args.epochs,
            seed=args.seed,
            lora_r=args.lora_r,
            limit=args.limit,
            base_name=name,
            train_rows=args.train_rows,
            eval_sets=not args.no_eval_sets,
            batch_size=args.batch_size,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
