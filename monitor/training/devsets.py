"""The dev split as streaming sessions: one generic-JSONL file per source (monitor/datasets.py's format),
the sessions whose normalised question falls in the dev split (`corpus.is_dev`, the same split the guard
was trained against). `qta-monitor eval DIR/*.jsonl --sweep` replays them to set the policy's operating
point (docs/embedded-guard.md); the files are written to a temporary folder, never into the repository.

    python -m monitor.training devsets --data ../shared/data --out /tmp/dev [--limit 150]

Sources: GPTFuzz and llm-adaptive-attacks (human-labelled / judged responses; eval adds their
`+composed` twin, the response as thinking before a refusal), JailbreakBench (responses), STAR-1 (safe
refusal traces), CoCoNot (compliant answers to scary-sounding prompts) and GSM8K (benign reasoning)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING

from monitor.training.corpus import RAW, TRAIN_SETS, is_dev, jbb_goals

if TYPE_CHECKING:
    from monitor.datasets import Sample


def dev_sessions(data_dir: Path) -> dict[str, list[Sample]]:
    from monitor.datasets import load_dataset
    from monitor.training import sources

    raw = data_dir / RAW
    comply, _ = sources.coconot(raw)
    sets = {
        "gptfuzz": sources.gptfuzz(raw),
        "adaptive": sources.adaptive_attacks(raw),
        "jailbreakbench": load_dataset(raw / TRAIN_SETS["jailbreakbench"][0]),
        "star-1": load_dataset(raw / TRAIN_SETS["star-1"][0]),
        "coconot": [s for s in comply if not s.id.startswith("coconot-refusal")],
        "gsm8k": sources.gsm8k(raw),
    }
    goals = jbb_goals(data_dir)

    def group(name: str, s: Sample) -> str:  # the split key training used (JailbreakBench: the plain goal)
        if name == "jailbreakbench":
            return goals.get("jbb-behaviour-" + s.id.rsplit("-", 1)[1], s.question)
        return s.question

    return {name: [s for s in samples if is_dev(group(name, s))] for name, samples in sets.items()}


def write_dev_sets(data_dir: Path, out: Path, limit: int | None, seed: int = 13) -> dict[str, int]:
    """One `<source>-dev.jsonl` per source (a seeded draw of `limit` when given); returns the counts."""
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, samples in dev_sessions(data_dir).items():
        if limit is not None and len(samples) > limit:
            keep = sorted(random.Random(seed).sample(range(len(samples)), limit))
            samples = [samples[i] for i in keep]
        lines = [
            json.dumps(
                {
                    "id": s.id,
                    "question": s.question,
                    "thinking": s.thinking,
                    "answer": s.answer,
                    "label": s.label,
                    "category": s.category,
                    "source": name,
                }
            )
            for s in samples
        ]
        (out / f"{name}-dev.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        counts[name] = len(samples)
    return counts
