"""Benign reasoning for training the embedded guard: everyday questions with step-by-step "thinking" and a
helpful answer, generated from templates (written for this project, so no licence question arises).

The licence-clean sets hold no benign compliant traces at all; without them the guard learns that any
thinking is harmful. The topics steer clear of the demo sessions in monitor/samples (sourdough,
photosynthesis, Python de-duplication) so the streaming check there stays honest. The topics and phrases
are data: monitor/training/data/benign_topics.json."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

_DATA = json.loads((Path(__file__).parent / "data" / "benign_topics.json").read_text(encoding="utf-8"))
# (question, facts / steps a helpful answer walks through)
TOPICS: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
    (t["question"], tuple(t["steps"])) for t in _DATA["topics"]
)
OPENINGS: tuple[str, ...] = tuple(_DATA["openings"])
MIDDLES: tuple[str, ...] = tuple(_DATA["middles"])
LINKS: tuple[str, ...] = tuple(_DATA["links"])
CLOSINGS: tuple[str, ...] = tuple(_DATA["closings"])


@dataclass(frozen=True)
class Benign:
    question: str
    thinking: str
    answer: str
    topic: str  # the split key: all variants of one topic land in one split


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def benign_trace(rng: random.Random, topic: int | None = None) -> Benign:
    """One randomised variant: the question, a reasoning trace over a shuffled subset of the topic's steps
    (with hedges and links), and an answer listing them."""
    question, steps = TOPICS[rng.randrange(len(TOPICS)) if topic is None else topic]
    chosen = rng.sample(steps, rng.randint(max(2, len(steps) - 2), len(steps)))
    body = []
    for step in chosen:
        link = rng.choice(LINKS)
        body.append(f"{link}{_lower_first(step) if link else step}.")
        if rng.random() < 0.25:
            body.append(
                rng.choice(("That matters.", "Wait, is that right? Yes.", "People often forget this."))
            )
    opening = rng.choice(OPENINGS).format(q=_lower_first(question))
    thinking = f"{opening}{rng.choice(MIDDLES)} {' '.join(body)} {rng.choice(CLOSINGS)}".strip()
    numbered = " ".join(f"{i}. {s}." for i, s in enumerate(chosen, 1))
    answer = rng.choice(("Sure! ", "Here's how: ", "Good question. ", "")) + numbered
    return Benign(question, thinking, answer, question)
