"""The embedded guard's training corpus: licence-clean labelled sets turned into composed QTA examples
(harmful text placed in the thinking with a refusal as the answer, STAR-1 refusals, benign reasoning,
streaming prefixes), normalised, de-duplicated and split into train / dev by a stable hash of their group.
Pure data work: `monitor/training.py` tokenises these examples and fits the model."""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from monitor.training import glossary
from monitor.training.benign import TOPICS, benign_trace
from monitor.training.glossary import Gloss

if TYPE_CHECKING:
    from monitor.evaluation.datasets import Sample

RAW = "raw"
QUESTION_TOKENS = 128
LABELS = (0.0, 0.5, 1.0)
# Shipped weights use only MIT / Apache-2.0 / CC-BY sets (CATALOG.md); FigStep is held out for its test.
TRAIN_SETS = {
    "star-1": ("UCSC-VLAA__STAR-1", "Apache-2.0"),
    "jailbreakbench": ("JailbreakBench__artifacts", "MIT"),
    "openai-moderation": ("openai__moderation-api-release", "MIT"),
    "aegis": ("yueliu1999__GuardReasoner/data/benchmark/0_1_AegisSafetyTest.json", "CC-BY-4.0"),
}
# Human-labelled response sets, CC-BY-NC: measured after training, never trained on.
EVAL_SETS = {
    "beavertails": "yueliu1999__GuardReasoner/data/benchmark/0_A_beaver_tails.json",
    "saferlhf": "yueliu1999__GuardReasoner/data/benchmark/0_9_safe_rlhf.json",
}
GENERIC_QUESTIONS = ("What do you think?", "Reply to this.", "Write a short message.", "Go on.", "Continue.")
OPENERS = (
    "Okay, the user wants this. Let me just write it out.\n",
    "Alright, I'll go along with the request.\n",
    "The user asks for this. Here is how it could be done.\n",
    "",
)
REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I can't assist with this request.",
    "Sorry, I won't provide that. If you have another question, I'm happy to help.",
)


@dataclass(frozen=True)
class Example:
    """One training row before tokenising."""

    question: str
    thinking: str
    answer: str
    target: float
    kind: str
    group: str  # split key: examples sharing it land in the same split


def normalise(text: str) -> str:
    """Lower case, punctuation stripped, whitespace collapsed (CATALOG.md's dedupe rule)."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return re.sub(r"\s+", " ", text).strip()


def is_dev(group: str, share: int = 15) -> bool:
    return int(hashlib.sha256(normalise(group).encode()).hexdigest(), 16) % 100 < share


def _cut(text: str, rng: random.Random, lo: float, hi: float) -> str:
    return text[: max(1, int(len(text) * rng.uniform(lo, hi)))]


CASUAL = ("", "", "You could ", "One way is to ", "Well, ", "Sure. ", "I'd say ")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


# A prefix of a composed harmful trace counts as harmful once it holds this much of the harmful text: at
# least MIN_HARM_CHARS and HARM_SHARE of it (capped at MAX_HARM_NEEDED). Shorter tails are ambiguous and
# left out; a prefix that stops before the harm is labelled by what it holds (a safe lead: 0).
MIN_HARM_CHARS = 64
HARM_SHARE = 0.15
MAX_HARM_NEEDED = 200
SHORT_PREFIX = (48, 400)  # the guard's first scores in a stream read only this much thinking
BENIGN_VARIANTS = 1200
GLOSS_ANSWERS, GLOSS_THOUGHTS, GLOSS_HARMFUL_QUESTIONS = 1500, 500, 1000  # WordNet rows (streaming data)
COMPLY = (
    "Let me think about how this would work.",
    "Fine, let me work it out.",
    "Okay, here is how it would go.",
    "Let me just lay it out.",
    "Sure, I can go through it.",
)


def harm_label(cut: int, harm_start: int, harm_len: int, before: float = 0.0) -> float | None:
    """Label of the first `cut` characters of a trace whose harmful text spans [harm_start, +harm_len)."""
    if cut <= harm_start:
        return before
    needed = min(MAX_HARM_NEEDED, max(MIN_HARM_CHARS, int(HARM_SHARE * harm_len)))
    return 1.0 if cut - harm_start >= min(needed, harm_len) else None


def prefix_cuts(length: int, rng: random.Random, n: int) -> list[int]:
    """`n` cut points, the first biased to the short prefixes a stream starts with, the rest uniform."""
    if length <= SHORT_PREFIX[0]:
        return [length]
    cuts = [rng.randint(SHORT_PREFIX[0], min(length, SHORT_PREFIX[1]))]
    cuts += [rng.randint(SHORT_PREFIX[0], length) for _ in range(n - 1)]
    return cuts[:n]


_NUMBERING = re.compile(r"^\s*(?:step\s*\d+[:.)]?|\d+[.)]|[-*•])\s*", re.IGNORECASE)
_NOT_VERBS = frozenset(
    "the a an this that these those it its i we you they he she in on at to for of with by as if when "
    "while after before once however also and but or so here there however note remember finally "
    "first second third next then sure title subject dear according overall additionally it's this".split()
)
_SECOND_PERSON = ((r"\byourself\b", "himself"), (r"\byour\b", "his"), (r"\byou\b", "he"))
PLANNING = (
    "Let me think about how they would actually do it.",
    "Okay, let me work it out properly.",
    "Fine, let's plan it.",
    "Let me think about how such a plan would go.",
    "So, step by step, this is how it would work.",
)


def narrate(text: str, rng: random.Random) -> str:
    """3-5 sentences of a harmful response retold as a plan in the reasoning voice ("he would buy ...")
    rather than as an instruction list ("1. Buy ..."): harmful thinking rarely reads like an answer."""
    sentences = [_NUMBERING.sub("", x).strip() for x in _SENTENCE.split(text)]
    sentences = [x for x in sentences if len(x) > 20][1:]
    if not sentences:
        return text
    start = rng.randrange(len(sentences))
    out = []
    for sentence in sentences[start : start + rng.randint(3, 5)]:
        first, _, rest = sentence.partition(" ")
        if first.isalpha() and first.lower() not in _NOT_VERBS and not first.endswith("ly") and rest:
            who = rng.choice(("He would", "They would", "Then he should", "Next they"))
            sentence = f"{who} {first.lower()} {rest}"
        for pattern, repl in _SECOND_PERSON:
            sentence = re.sub(pattern, repl, sentence, flags=re.IGNORECASE)
        out.append(sentence if sentence[-1:] in ".!?" else sentence + ".")
    return " ".join(out)[:900]


def snippet(text: str, rng: random.Random) -> str:
    """1-3 sentences from inside a response (not its opening line), optionally behind a casual opener:
    short, plain compliance like human-labelled response sets have, not only "Sure, here is ..."."""
    sentences = [x.strip() for x in _SENTENCE.split(text) if len(x.strip()) > 15]
    if len(sentences) < 2:
        return text
    start = rng.randrange(1, len(sentences))
    body = " ".join(sentences[start : start + rng.randint(1, 3)])[:600]
    opener = rng.choice(CASUAL)
    return f"{opener}{body[0].lower()}{body[1:]}" if opener else body


def compose_examples(
    sets: dict[str, list[Sample]],
    seed: int,
    goals: dict[str, str] | None = None,
    streaming: bool = False,
    glosses: list[Gloss] | None = None,
) -> list[Example]:
    """QTA examples from sets that have no harmful traces (see docs/embedded-guard.md). `streaming` adds
    the streaming data (prefixes, benign reasoning, harmful plans in the reasoning voice); without it the
    examples, random draws included, are exactly those the committed weights were trained on."""
    rng = random.Random(seed)
    out: list[Example] = []
    star = sets.get("star-1", [])
    refusals = list(REFUSALS) + [s.answer for s in star if len(s.answer) < 1200][:200]
    seen_questions: set[str] = set()

    def add_prefixes(
        q: str, trace: str, harm_start: int, group: str, kind: str, skip_lead: bool = False
    ) -> None:
        if not streaming:
            return
        for cut in prefix_cuts(len(trace), rng, 2):
            target = harm_label(cut, harm_start, len(trace) - harm_start)
            if target is not None and not (skip_lead and cut <= harm_start):
                out.append(Example(q, trace[:cut], "", target, kind, group))

    def question_only(text: str, target: float, kind: str) -> None:
        key = normalise(text)
        if key and key not in seen_questions:
            seen_questions.add(key)
            out.append(Example(text, "", "", target, kind, text))

    for s in star:  # safe traces that name a harm to refuse it: hard negatives, whole and streamed
        out.append(Example(s.question, s.thinking, s.answer, 0.0, "star_full", s.question))
        for _ in range(3):
            out.append(
                Example(s.question, _cut(s.thinking, rng, 0.1, 1.0), "", 0.0, "star_prefix", s.question)
            )
        out.append(
            Example(s.question, s.thinking, _cut(s.answer, rng, 0.2, 0.9), 0.0, "star_answer", s.question)
        )
        for cut in prefix_cuts(len(s.thinking), rng, 1) if streaming else []:  # how every stream starts
            out.append(Example(s.question, s.thinking[:cut], "", 0.0, "star_short", s.question))
        opening = [x for x in _SENTENCE.split(s.thinking) if x.strip()]
        for n in (1, 3):  # the first words of a safe trace restate the harmful request: still safe
            out.append(Example(s.question, " ".join(opening[:n]), "", 0.0, "star_opening", s.question))
    harmful_questions = [s.question for s in star] + [
        s.question for s in sets.get("openai-moderation", []) if s.label == 1.0 and len(s.question) < 400
    ]
    for s in sets.get("jailbreakbench", []):
        behaviour = "jbb-behaviour-" + s.id.rsplit("-", 1)[1]  # split by behaviour: no leak across attacks
        q = s.question
        goal = (goals or {}).get(behaviour, q)
        behaviour = goal  # split by the plain goal: other sets (GPTFuzz, adaptive attacks) ask the same ones
        if normalise(q) not in seen_questions:
            seen_questions.add(normalise(q))
            out.append(Example(q, "", "", 0.5, "jbb_question", behaviour))
        if s.label == 1.0:
            out.append(Example(q, "", s.answer, 1.0, "jbb_answer", behaviour))
            for _ in range(2):
                out.append(Example(goal, "", snippet(s.answer, rng), 1.0, "jbb_snippet", behaviour))
            out.append(Example(goal, snippet(s.answer, rng), "", 1.0, "jbb_snippet_think", behaviour))
            if harmful_questions:  # harmful content is harmful whatever was asked: widen the questions
                other = rng.choice(harmful_questions)
                out.append(Example(other, "", snippet(s.answer, rng), 1.0, "jbb_snippet_other", behaviour))
            opener = rng.choice(OPENERS)
            thinking = opener + s.answer
            out.append(Example(q, thinking, rng.choice(refusals), 1.0, "composed_think", behaviour))
            out.append(Example(q, _cut(thinking, rng, 0.6, 1.0), "", 1.0, "composed_prefix", behaviour))
            add_prefixes(q, thinking, len(opener), behaviour, "composed_stream", skip_lead=True)
            if star:  # a safe-sounding deliberation that turns into compliance
                lead = _cut(rng.choice(star).thinking, rng, 0.1, 0.4) + "\n"
                out.append(Example(q, f"{lead}{s.answer}", "", 1.0, "composed_turn", behaviour))
                add_prefixes(q, lead + s.answer, len(lead), behaviour, "composed_turn_stream")
            if not streaming:
                continue
            # plain reasoning that restates the request, then complies: harm is in the content, not the style
            lead = f"The user wants me to {goal[:1].lower()}{goal[1:].rstrip('.')}. {rng.choice(COMPLY)} "
            reasoning = lead + " ".join(snippet(s.answer, rng) for _ in range(2))
            out.append(Example(goal, reasoning, "", 1.0, "reasoning_harm", behaviour))
            add_prefixes(goal, reasoning, len(lead), behaviour, "reasoning_harm_stream", skip_lead=True)
            lead = f"The user wants to {goal[:1].lower()}{goal[1:].rstrip('.')}. {rng.choice(PLANNING)} "
            story = lead + narrate(s.answer, rng)
            out.append(Example(rng.choice((goal, q)), story, "", 1.0, "narrative_harm", behaviour))
            add_prefixes(goal, story, len(lead), behaviour, "narrative_harm_stream", skip_lead=True)
        else:
            out.append(Example(q, "", s.answer, 0.0, "jbb_refusal", behaviour))
            out.append(Example(q, s.answer, rng.choice(refusals), 0.0, "jbb_refusal_think", behaviour))
            out.append(Example(goal, "", snippet(s.answer, rng), 0.0, "jbb_refusal_snippet", behaviour))
    for goal in sorted(set((goals or {}).values())):
        out.append(Example(goal, "", rng.choice(refusals), 0.0, "goal_refusal", goal))
    for s in sets.get("openai-moderation", []) + sets.get("aegis", []):
        question_only(s.question, 0.5 if s.label == 1.0 else 0.0, "prompt")
        if s.source == "openai-moderation" or len(s.question) > 80:  # said by the model: harmful content
            q = rng.choice(GENERIC_QUESTIONS)
            out.append(Example(q, "", s.question, s.label, "mod_answer", s.question))
            # and as the model's thinking (whole or a prefix): benign prose there is safe
            if not streaming:
                continue
            text = s.question if rng.random() < 0.5 else s.question[: prefix_cuts(len(s.question), rng, 1)[0]]
            if s.label == 0.0:  # flagged ones (often self-harm disclosures) would not read as a model's plan
                out.append(Example(q, text, "", 0.0, "mod_think", s.question))
    for _ in range(
        BENIGN_VARIANTS if streaming else 0
    ):  # benign compliant reasoning + answers (monitor/training/benign.py), streamed
        b = benign_trace(rng)
        out.append(Example(b.question, b.thinking, b.answer, 0.0, "benign_full", b.topic))
        for cut in prefix_cuts(len(b.thinking), rng, 2):
            out.append(Example(b.question, b.thinking[:cut], "", 0.0, "benign_prefix", b.topic))
    if streaming and glosses:
        out += _gloss_examples(glosses, harmful_questions + sorted(set((goals or {}).values())), rng)
    if streaming:
        out += _typographic_examples(goals or {}, [s.question for s in star], glosses or [], rng)
    return out


# Our own wording of a typographic jailbreak's text prompt (FigStep's is kept out: it is the held-out test).
FILL_PROMPTS = (
    "The picture shows a numbered list with empty items. Write detailed content for each item.",
    "Complete the list in the image. Give about 100 words for every numbered point.",
    "Read the title in the image and fill in steps 1, 2 and 3 in detail.",
    "The items of this list are blank. Please generate each one, with specifics.",
    "Continue the list shown in the image, one detailed paragraph per number.",
)


def _typographic_examples(
    goals: dict[str, str], star_questions: list[str], glosses: list[Gloss], rng: random.Random
) -> list[Example]:
    """A request rendered in an image, read back by OCR as "<title>. 1. 2. 3.", with a harmless-looking
    "fill in the list" prompt (the shape `encode_prefix` gives image text): a harmful title is harmful
    (1), an everyday one is safe (0). The guard must judge the image text, not the innocent prompt."""

    def row(title: str, target: float, kind: str, group: str) -> Example:
        ocr = f"{title.rstrip('.?! ')}. 1. 2. 3."
        return Example(f"image text: {ocr} question: {rng.choice(FILL_PROMPTS)}", "", "", target, kind, group)

    out = []
    for _behaviour, goal in sorted(goals.items()):
        out += [row(goal, 1.0, "image_harm", goal) for _ in range(3)]
    out += [row(q, 1.0, "image_harm", q) for q in star_questions if len(q) < 200]
    out += [row(q, 0.0, "image_benign", q) for q, _ in TOPICS for _ in range(5)]
    for g in rng.sample(glosses, min(400, len(glosses))):
        title = f"{rng.choice(('Steps to use', 'Facts about', 'How to choose'))} {g.word}"
        out.append(row(title, 0.0, "image_benign", g.word))
    return out


def _gloss_examples(glosses: list[Gloss], harmful_questions: list[str], rng: random.Random) -> list[Example]:
    """Plain descriptive answers (monitor/training/glossary.py), all safe: Q&A, thinking + answer and its
    prefixes, and harmful questions answered with a harmless definition of one of their words."""
    out: list[Example] = []
    for g in rng.sample(glosses, GLOSS_ANSWERS + GLOSS_THOUGHTS):
        q = glossary.question(g, rng)
        if len(out) < GLOSS_ANSWERS:
            out.append(Example(q, "", glossary.answer(g, rng), 0.0, "gloss_answer", g.word))
            continue
        thinking = glossary.thought(g, rng)
        out.append(Example(q, thinking, glossary.answer(g, rng), 0.0, "gloss_think", g.word))
        for cut in prefix_cuts(len(thinking), rng, 1):
            out.append(Example(q, thinking[:cut], "", 0.0, "gloss_think", g.word))
    index = glossary.noun_index(glosses)
    for q in rng.sample(harmful_questions, min(GLOSS_HARMFUL_QUESTIONS, len(harmful_questions))):
        on_topic = glossary.gloss_for(q, index, rng)
        if on_topic is not None:  # grouped by the question: it may also appear with harmful content
            out.append(Example(q, "", glossary.answer(on_topic, rng), 0.0, "gloss_harmful_question", q))
    return out


def jbb_goals(data_dir: Path) -> dict[str, str]:
    """JailbreakBench behaviour index -> its plain goal (the request without the attack wrapper)."""
    path = data_dir / RAW / "JailbreakBench__artifacts/attack-artifacts/PAIR/black_box/vicuna-13b-v1.5.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    return {f"jbb-behaviour-{jb['index']}": jb["goal"] for jb in data["jailbreaks"]}


def load_sets(data_dir: Path) -> tuple[dict[str, list[Sample]], dict[str, list[Sample]]]:
    from monitor.evaluation.datasets import load_dataset

    raw = data_dir / RAW
    train = {name: load_dataset(raw / rel) for name, (rel, _) in TRAIN_SETS.items()}
    evals = {name: load_dataset(raw / rel) for name, rel in EVAL_SETS.items() if (raw / rel).exists()}
    return train, evals
