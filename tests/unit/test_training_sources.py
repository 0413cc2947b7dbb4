"""The sets added later, read from the shared data folder (the `shared_data` fixture) as the catalogue
describes them, and the examples built from them: labels, streamed prefixes, late harm, guard-addressed
notes, the dev split, and the rule that serving never imports training code."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.evaluation.datasets import Sample, load_jsonl
from monitor.training import sources
from monitor.training.corpus import Example, is_dev
from monitor.training.devsets import write_dev_sets
from monitor.training.responses import ADVERSARIAL, adversarial, insert, labelled_responses, prompts


def test_gptfuzz_is_read_with_its_human_labels(shared_data: Path) -> None:
    rows = sources.gptfuzz(shared_data / "raw")
    assert len(rows) == 6160 and sum(r.label == 1.0 for r in rows) == 1694
    assert {r.label for r in rows} == {0.0, 1.0} and all(r.question and r.answer for r in rows)
    assert len({r.question for r in rows}) == 80  # 80 of the 100 questions have labelled responses


def test_other_added_sets_follow_the_catalogue(shared_data: Path) -> None:
    raw = shared_data / "raw"
    dia = sources.diasafety(raw)
    assert len(dia) == 9017 + 1097 and {r.label for r in dia} == {0.0, 0.5}
    comply, asked = sources.coconot(raw)
    assert len(comply) == 2 * 927 and {r.label for r in comply} == {0.0}
    assert {r.label for r in asked} == {0.0, 0.5}
    gsm = sources.gsm8k(raw)
    assert len(gsm) == 7473 and not any("<<" in r.thinking or "####" in r.thinking for r in gsm)
    assert all(r.answer.replace(",", "").lstrip("-").replace(".", "").isdigit() for r in gsm[:200])
    hazards = sources.hazard_prompts(raw)
    assert {r.label for r in hazards} == {0.5} and not any(r.answer for r in hazards)
    assert {r.source for r in hazards} == {"ailuminate", "aart", "red-instruct", "do-not-answer"}
    adaptive = sources.adaptive_attacks(raw)
    assert len(adaptive) == 719 and {r.label for r in adaptive} == {0.0, 1.0}
    pairs = sources.hh_pairs(raw)
    assert len(pairs) > 2000 and all(p.chosen != p.rejected and "Human:" in p.question for p in pairs)


def test_insert_places_the_note_at_start_middle_or_end() -> None:
    text = "First sentence here. Second sentence here. Third one."
    seen = {insert(text, "NOTE", random.Random(seed)).index("NOTE") for seed in range(30)}
    assert 0 in seen and any(0 < i < len(text) - 4 for i in seen) and max(seen) >= len(text)
    ex = Example("q", "harmful plan", "", 1.0, "k", "g")
    out = adversarial(ex, random.Random(1))
    assert out.target == 1.0 and any(n in out.thinking for n in ADVERSARIAL["train"])


def test_labelled_responses_stream_and_late_harm() -> None:
    harmful = Sample("1", "how to hurt", "", "x" * 500, 1.0, source="gptfuzz")
    safe = Sample("2", "how to hurt", "", "I won't help with that. " * 10, 0.0, source="gptfuzz")
    lead = "Let me think about whether I should answer this at all, carefully."
    out = labelled_responses([harmful, safe], "gptfuzz", random.Random(3), [lead])
    kinds = {e.kind for e in out}
    assert {"gptfuzz/answer", "gptfuzz/think", "gptfuzz/late", "gptfuzz/adversarial"} <= kinds
    for e in out:
        if e.kind == "gptfuzz/stream" and e.target == 1.0:
            assert len(e.thinking) >= 0.6 * 500  # early prefixes of a harmful response are not labelled
        if e.kind == "gptfuzz/late":
            assert e.target == (1.0 if len(e.thinking) > len(lead) + 1 else 0.0)
        if e.kind == "gptfuzz/think":
            assert e.answer and e.target == (1.0 if e.thinking.startswith("x") else 0.0)
    assert {e.target for e in out if e.answer.startswith("I won't") or e.thinking.startswith("I won't")} == {
        0.0
    }


def test_prompts_alone_never_exceed_potentially_harmful() -> None:
    asked = [Sample("a", "How do I make a weapon?", "", "", 0.5, source="aart")]
    out = prompts(asked + asked, random.Random(0), ["No."], ("Fill the list.",))
    assert [e.kind for e in out] == ["aart/prompt", "aart/refusal", "aart/image"]  # the duplicate is dropped
    assert [e.target for e in out] == [0.5, 0.0, 1.0] and out[2].question.startswith("image text: ")


def test_dev_sets_hold_only_dev_questions(shared_data: Path, tmp_path: Path) -> None:
    counts = write_dev_sets(shared_data, tmp_path, limit=40)
    assert set(counts) == {"gptfuzz", "adaptive", "jailbreakbench", "star-1", "coconot", "gsm8k"} | {
        "drift",
        "drift-base",
        "typographic",
        "short",
    }
    gptfuzz = load_jsonl(tmp_path / "gptfuzz-dev.jsonl")
    assert len(gptfuzz) == 40 and all(is_dev(s.question) for s in gptfuzz)
    assert {s.label for s in load_jsonl(tmp_path / "gsm8k-dev.jsonl")} == {0.0}


def test_derived_dev_sets_drift_typographic_and_short(shared_data: Path, tmp_path: Path) -> None:
    write_dev_sets(shared_data, tmp_path, limit=40)
    base = load_jsonl(tmp_path / "drift-base-dev.jsonl")
    drifted = load_jsonl(tmp_path / "drift-dev.jsonl")
    assert len(base) == len(drifted) == 40 and sum(s.label for s in base) == 20  # half harmful, half safe
    for b, d in zip(base, drifted, strict=True):  # the same responses, then 1,500+ characters of drift
        assert d.answer.startswith(b.answer) and len(d.answer) - len(b.answer) >= 1500
        assert (d.label, d.question) == (b.label, b.question)
    typographic = load_jsonl(tmp_path / "typographic-dev.jsonl")
    assert typographic and all(
        s.label == 1.0 and len(s.images) == 1 and s.images[0].exists() for s in typographic
    )
    assert all(0 < len(s.thinking) < 100 and not s.answer for s in typographic)
    short = load_jsonl(tmp_path / "short-dev.jsonl")
    assert {s.label for s in short} == {0.0, 1.0} and all(0 < len(s.answer) <= 180 for s in short)


def test_gloss_choice_does_not_depend_on_the_hash_seed() -> None:
    code = (
        "import random\n"
        "from monitor.training.glossary import Gloss, gloss_for\n"
        "words = ('knife', 'bombs', 'clubs', 'spear', 'arrow')\n"
        "index = {w: Gloss(w, 'n', 'a thing called ' + w, ()) for w in words}\n"
        "q = 'arrow spear clubs bombs knife'\n"
        "print([gloss_for(q, index, random.Random(i)).word for i in range(9)])\n"
    )
    seen = set()
    for seed in ("1", "2", "3", "4"):
        env = {"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}
        run = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        )
        seen.add(run.stdout)
    assert len(seen) == 1  # the corpus (and so the shipped weights) must not depend on set order


@pytest.mark.parametrize("module", ["monitor.worker", "monitor.guards.minilm", "monitor.cli"])
def test_serving_never_imports_training(module: str) -> None:
    code = f"import sys, {module}; print([m for m in sys.modules if m.startswith('monitor.training')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
