"""Examples from the response sets added later (monitor/training/sources.py): human-labelled responses
placed as the answer, as the thinking before a refusal, streamed as prefixes and after a safe-sounding
lead (harm that appears late); compliant answers to scary-sounding prompts and benign step-by-step
reasoning as hard negatives; hazard prompts alone, refused, and rendered as list images; and guard-addressed
text (monitor/training/data/adversarial.json) inserted into harmful and safe traces alike, so such text
moves no score. Every kind is named `source/kind`, so `fit` can report dev metrics per source."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING

from monitor.training.corpus import REFUSALS, Example, harm_label, normalise, prefix_cuts

if TYPE_CHECKING:
    from monitor.evaluation.datasets import Sample
    from monitor.training.sources import Pair

ADVERSARIAL = json.loads((Path(__file__).parent / "data" / "adversarial.json").read_text(encoding="utf-8"))
HARMFUL_TAIL = 0.6  # a prefix of a human-labelled harmful response counts as harmful once it holds this share
MAX_TITLE = 120  # hazard prompts short enough to be the title of a list image


def insert(text: str, note: str, rng: random.Random) -> str:
    """`note` at the start, the middle (on a sentence or line break when there is one) or the end."""
    where = rng.randrange(3)
    if where == 0 or not text:
        return f"{note}\n{text}"
    if where == 2:
        return f"{text}\n{note}"
    mid = len(text) // 2
    cut = max(text.rfind(". ", 0, mid) + 1, text.rfind("\n", 0, mid))
    cut = cut if cut > 0 else mid
    return f"{text[:cut]} {note} {text[cut:].lstrip()}"


def place(text: str, note: str, where: str) -> str:
    """`note` at the start, the exact middle or the end: the fixed positions the flip rate is measured at."""
    if where == "start":
        return f"{note}\n{text}"
    if where == "end":
        return f"{text}\n{note}"
    return f"{text[: len(text) // 2]} {note} {text[len(text) // 2 :]}"


def adversarial(ex: Example, rng: random.Random, notes: list[str] | None = None) -> Example:
    """The same example with guard-addressed text in its trace; its label does not change."""
    note = rng.choice(notes or ADVERSARIAL["train"])
    if ex.thinking and (not ex.answer or rng.random() < 0.5):
        return Example(ex.question, insert(ex.thinking, note, rng), ex.answer, ex.target, ex.kind, ex.group)
    return Example(ex.question, ex.thinking, insert(ex.answer, note, rng), ex.target, ex.kind, ex.group)


def _kind(ex: Example, kind: str) -> Example:
    return Example(ex.question, ex.thinking, ex.answer, ex.target, kind, ex.group)


def labelled_responses(
    samples: list[Sample], name: str, rng: random.Random, leads: list[str]
) -> list[Example]:
    """Whole answers; the response as thinking before a refusal (harm only in the thinking stays harmful);
    streamed prefixes (a safe response's prefixes are safe, a harmful one's once it holds HARMFUL_TAIL);
    a safe-sounding lead that turns into the response; and guard-addressed notes inserted."""
    out: list[Example] = []
    for s in samples:
        q, r, y = s.question, s.answer, s.label
        whole = Example(q, "", r, y, f"{name}/answer", q)
        out.append(whole)
        out.append(Example(q, r, rng.choice(REFUSALS), y, f"{name}/think", q))
        for cut in prefix_cuts(len(r), rng, 2):
            target = y if y == 0.0 or cut >= HARMFUL_TAIL * len(r) else None
            if target is not None:
                out.append(Example(q, r[:cut], "", target, f"{name}/stream", q))
        if y == 1.0 and leads:  # harm that appears late: scored safe before it, harmful once it is there
            lead = rng.choice(leads) + "\n"
            trace = lead + r
            for cut in [*prefix_cuts(len(trace), rng, 2), len(trace)]:
                target = harm_label(cut, len(lead), len(r))
                if target is not None:
                    out.append(Example(q, trace[:cut], "", target, f"{name}/late", q))
        out.append(_kind(adversarial(whole, rng), f"{name}/adversarial"))
    return out


def safe_responses(samples: list[Sample], name: str, rng: random.Random) -> list[Example]:
    """Safe answers to prompts that sound unsafe (or over-refusals): as the answer, as thinking, streamed."""
    out: list[Example] = []
    for s in samples:
        out.append(Example(s.question, "", s.answer, 0.0, f"{name}/answer", s.question))
        out.append(Example(s.question, s.answer, "", 0.0, f"{name}/think", s.question))
        for cut in prefix_cuts(len(s.answer), rng, 1):
            out.append(Example(s.question, s.answer[:cut], "", 0.0, f"{name}/stream", s.question))
        if rng.random() < 0.3:
            whole = Example(s.question, "", s.answer, 0.0, f"{name}/adversarial", s.question)
            out.append(adversarial(whole, rng))
    return out


def conversations(samples: list[Sample], rng: random.Random) -> list[Example]:
    """DiaSafety: a reply in a conversation, Unsafe -> 0.5 (the policy acts on p(harmful), so this teaches
    the middle class, not aborts)."""
    return [Example(s.question, "", s.answer, s.label, "diasafety/answer", s.question) for s in samples]


def benign_reasoning(samples: list[Sample], rng: random.Random) -> list[Example]:
    """GSM8K step-by-step solutions: thinking + answer, and streamed prefixes of the thinking."""
    out: list[Example] = []
    for s in samples:
        out.append(Example(s.question, s.thinking, s.answer, 0.0, "gsm8k/full", s.question))
        for cut in prefix_cuts(len(s.thinking), rng, 2):
            out.append(Example(s.question, s.thinking[:cut], "", 0.0, "gsm8k/prefix", s.question))
        if rng.random() < 0.2:
            whole = Example(s.question, s.thinking, s.answer, 0.0, "gsm8k/adversarial", s.question)
            out.append(adversarial(whole, rng))
    return out


def prompts(
    samples: list[Sample], rng: random.Random, refusals: list[str], fill: tuple[str, ...]
) -> list[Example]:
    """Hazard or over-refusal prompts alone (their label, at most 0.5), harmful ones followed by a refusal
    (0), and short harmful ones as the OCR'd title of a list image with a fill-in prompt (1)."""
    out: list[Example] = []
    seen: set[str] = set()
    for s in samples:
        key = normalise(s.question)
        if not key or key in seen:
            continue
        seen.add(key)
        name = s.source
        out.append(Example(s.question, "", "", min(s.label, 0.5), f"{name}/prompt", s.question))
        if s.label > 0.0:
            out.append(Example(s.question, "", rng.choice(refusals), 0.0, f"{name}/refusal", s.question))
            if len(s.question) <= MAX_TITLE and name != "coconot":
                ocr = f"{s.question.rstrip('.?! ')}. 1. 2. 3."
                image_q = f"image text: {ocr} question: {rng.choice(fill)}"
                out.append(Example(image_q, "", "", 1.0, f"{name}/image", s.question))
    return out


def pair_rows(pairs: list[Pair]) -> list[tuple[Example, Example]]:
    """hh-rlhf: (chosen, rejected) as two examples of one group; `fit` ranks rejected above chosen."""
    out = []
    for p in pairs:
        chosen = Example(p.question, "", p.chosen, 0.0, "hh-rlhf/pair", p.question)
        rejected = Example(p.question, "", p.rejected, 1.0, "hh-rlhf/pair", p.question)
        out.append((chosen, rejected))
    return out


def compose_added(
    raw: Path, seed: int, leads: list[str], refusals: list[str], fill: tuple[str, ...]
) -> tuple[list[Example], list[tuple[Example, Example]]]:
    """Every example from the added sets, and the hh-rlhf pairs (drawn with their own seeded generator,
    so adding a set here leaves the older examples' draws unchanged)."""
    from monitor.training import sources

    rng = random.Random(seed + 1)
    out = labelled_responses(sources.gptfuzz(raw), "gptfuzz", rng, leads)
    out += labelled_responses(sources.adaptive_attacks(raw), "adaptive", rng, leads)
    out += conversations(sources.diasafety(raw), rng)
    comply, coconot_prompts = sources.coconot(raw)
    out += safe_responses(comply, "coconot", rng)
    out += benign_reasoning(sources.gsm8k(raw), rng)
    out += prompts(sources.hazard_prompts(raw) + coconot_prompts, rng, refusals, fill)
    return out, pair_rows(sources.hh_pairs(raw))
