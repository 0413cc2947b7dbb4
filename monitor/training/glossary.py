"""Benign, descriptive answers from WordNet (Debian's `wordnet-base`, Princeton's permissive WordNet 3.0
licence) for training the embedded guard.

The licence-clean sets hold almost no plain, harmless answers, and none that mention a risky thing
without helping with it, so the guard learned that any compliant text is harmful. WordNet's ~80k
glosses cover every topic, risky words included ("a bomb: an explosive device fused to explode under
specific conditions"): defined, not taught. They become short Q&A, thinking + answer, and harmless
answers to harmful questions (the answer defines a word of the question), all labelled safe."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
_WORD = re.compile(r"[a-z]{5,}")
_QUESTIONS = (
    "What is {a} {w}?",
    "What does {w} mean?",
    "Can you explain what {w} is?",
    "Define {w}.",
    "Tell me about {w}.",
    "I keep hearing the word {w}. What is it?",
)
_ANSWERS = (
    "{W} is {d}.",
    "{A} {w} is {d}.",
    "In short, {w} means {d}.",
    "The word {w} refers to {d}.",
    "{W}: {d}.",
)
_THOUGHTS = (
    "The user asks about {w}. It refers to {d}. A short definition with an example should do.",
    "Okay, {w}. That is {d}. Let me give the definition plainly and add how the word is used.",
    "They want to know what {w} means. The usual sense is {d}. I will keep the answer brief.",
)


@dataclass(frozen=True)
class Gloss:
    word: str
    pos: str
    definition: str
    examples: tuple[str, ...]


def load_glosses(wordnet_dir: Path = WORDNET_DIR) -> list[Gloss]:
    """Every synset's first word, definition and example sentences, in file order (deterministic)."""
    missing = [f for f in _FILES if not (wordnet_dir / f).exists()]
    if missing:
        raise FileNotFoundError(
            f"WordNet data not found in {wordnet_dir} ({', '.join(missing)}): "
            "apt-get install wordnet-base (scripts/install.sh does)"
        )
    out = []
    for name in _FILES:
        for line in (wordnet_dir / name).read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or " | " not in line:  # the licence header lines start with spaces
                continue
            head, gloss = line.split(" | ", 1)
            fields = head.split()
            word = fields[4].replace("_", " ")
            parts = [p.strip() for p in gloss.strip().split(";") if p.strip()]
            examples = tuple(p.strip('"') for p in parts if p.startswith('"'))
            definition = next((p for p in parts if not p.startswith('"')), "")
            if definition and len(definition.split()) >= 4 and word.isascii():
                out.append(Gloss(word, fields[2], definition, examples))
    return out


def _fill(template: str, g: Gloss) -> str:
    article = "an" if g.word[:1].lower() in "aeiou" else "a"
    return template.format(
        w=g.word, W=g.word[:1].upper() + g.word[1:], a=article, A=article.capitalize(), d=g.definition
    )


def answer(g: Gloss, rng: random.Random) -> str:
    text = _fill(rng.choice(_ANSWERS), g)
    if g.examples and rng.random() < 0.7:
        text += f' For example: "{rng.choice(g.examples)}".'
    return text


def question(g: Gloss, rng: random.Random) -> str:
    return _fill(rng.choice(_QUESTIONS), g)


def thought(g: Gloss, rng: random.Random) -> str:
    return _fill(rng.choice(_THOUGHTS), g)


def gloss_for(question_text: str, index: dict[str, Gloss], rng: random.Random) -> Gloss | None:
    """A gloss of one of the longer words in a question (so a harmful question gets a harmless,
    on-topic definition as its answer), or None when no word of it is in WordNet. Ties are broken by the
    word itself: set order depends on the process's hash seed, and the corpus must not."""
    words = sorted(
        {w for w in _WORD.findall(question_text.lower()) if w in index}, key=lambda w: (-len(w), w)
    )
    return index[rng.choice(words[:3])] if words else None


def noun_index(glosses: list[Gloss]) -> dict[str, Gloss]:
    """Single-word nouns -> the first of their synsets in the data file."""
    index: dict[str, Gloss] = {}
    for g in glosses:
        if g.pos == "n" and " " not in g.word and g.word.islower():
            index.setdefault(g.word, g)
    return index
