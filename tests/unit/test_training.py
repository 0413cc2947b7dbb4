"""Training mechanics on a handful of examples: composition, splits, metrics, calibration, and one tiny
LoRA step whose saved adapter loads back into the guard with identical outputs and is reproduced byte for
byte by the same seed."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from monitor.evaluation.datasets import Sample
from monitor.guards.base import Prefix
from monitor.guards.minilm import MiniLMClassifier, MiniLMGuard, base_model_dir, encode_prefix, merge_lora
from monitor.settings import Settings
from monitor.training.benign import TOPICS, benign_trace
from monitor.training.corpus import (
    Example,
    compose_examples,
    harm_label,
    is_dev,
    narrate,
    normalise,
    prefix_cuts,
    snippet,
)
from monitor.training.fit import (
    _pack,
    adapter_tensors,
    auroc,
    bucketed,
    calibrate,
    capped,
    fit,
    load_prepared,
    per_source,
    source_of,
    split_metrics,
)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(base_model_dir()), local_files_only=True)


def test_normalise_and_stable_split() -> None:
    assert normalise("  Hello,   World!! ") == "hello world"
    assert is_dev("Some Question?") == is_dev("some question")
    share = sum(is_dev(f"q{i}") for i in range(2000)) / 2000
    assert 0.1 < share < 0.2


def test_snippet_skips_the_opening_line() -> None:
    text = "Sure, here is how to do it.\nFirst, do one thing here.\nThen, do another thing there."
    for seed in range(20):
        assert not snippet(text, random.Random(seed)).lower().startswith("sure, here is")


def test_compose_examples_labels_each_shape() -> None:
    sets = {
        "star-1": [
            Sample("star1-1", "how to hurt?", "The user wants harm. I must refuse.", "I can't help.", 0.0)
        ],
        "jailbreakbench": [
            Sample("jbb-PAIR/m-3", "attack prompt", "", "Step one. Step two is bad. Step three.", 1.0),
            Sample("jbb-PAIR/m-4", "other prompt", "", "I cannot do that.", 0.0),
        ],
        "openai-moderation": [Sample("m0", "hateful text", "", "", 1.0, source="openai-moderation")],
    }
    examples = compose_examples(sets, seed=1, goals={"jbb-behaviour-3": "the goal"})
    kinds = {e.kind: e for e in examples}
    assert {e.target for e in examples if e.kind.startswith("star")} == {0.0}
    composed = kinds["composed_think"]
    assert composed.target == 1.0 and "Step two is bad" in composed.thinking and composed.answer
    assert kinds["jbb_refusal_think"].target == 0.0
    assert kinds["jbb_question"].target == 0.5 and kinds["jbb_question"].thinking == ""
    assert kinds["jbb_snippet"].question == "the goal"
    assert kinds["mod_answer"].answer == "hateful text" and kinds["mod_answer"].target == 1.0
    assert kinds["prompt"].target == 0.5
    # examples built from one behaviour's responses share one split key: attacks cannot leak across splits
    # (the plain goal + refusal rows are keyed by the goal text; see docs/embedded-guard.md)
    from_responses = [
        e for e in examples if e.question in ("attack prompt", "the goal") and e.kind != "goal_refusal"
    ]
    assert {e.group for e in from_responses} == {"the goal"}  # split by the plain goal, shared across sets


@pytest.mark.parametrize(
    ("cut", "harm_start", "harm_len", "expected"),
    [
        (40, 50, 1000, 0.0),  # the safe lead alone
        (50, 50, 1000, 0.0),
        (80, 50, 1000, None),  # 30 harmful characters: ambiguous, left out
        (199, 50, 1000, None),  # 15 % of 1000 = 150 needed
        (200, 50, 1000, 1.0),
        (250, 50, 5000, 1.0),  # a long harm needs at most 200 characters
        (100, 50, 40, 1.0),  # a short harm needs all of itself
    ],
)
def test_harm_label_of_a_prefix(cut: int, harm_start: int, harm_len: int, expected: float | None) -> None:
    assert harm_label(cut, harm_start, harm_len) == expected


def test_prefix_cuts_start_short_and_stay_in_range() -> None:
    rng = random.Random(3)
    for length in (10, 60, 500, 5000):
        cuts = prefix_cuts(length, rng, 3)
        assert all(1 <= c <= length for c in cuts)
        assert cuts[0] <= 400
    assert prefix_cuts(10, rng, 3) == [10]


def test_benign_traces_vary_and_keep_their_topic() -> None:
    rng = random.Random(5)
    traces = [benign_trace(rng, topic=0) for _ in range(20)]
    assert {t.question for t in traces} == {TOPICS[0][0]} == {t.topic for t in traces}
    assert len({t.thinking for t in traces}) > 10
    assert all(t.answer and t.thinking for t in traces)
    demo = ("sourdough", "photosynthesis", "duplicates")  # monitor/samples stays unseen
    assert not any(word in q.lower() for q, _ in TOPICS for word in demo)


def test_narrate_retells_instructions_as_a_plan() -> None:
    text = "Sure, here is how.\n1. Buy the parts at several shops.\n2. Hide them in your garage.\n3. Wait."
    story = narrate(text, random.Random(0))
    assert "1." not in story and "your" not in story
    assert "buy the parts" in story.lower() or "hide them" in story.lower()


def test_compose_streams_prefixes_of_composed_harm() -> None:
    answer = " ".join(f"Step {i}: do harmful thing number {i} with care." for i in range(30))
    sets = {
        "star-1": [Sample("star1-1", "q?", "The user wants harm. I must refuse it.", "No.", 0.0)],
        "jailbreakbench": [Sample("jbb-PAIR/m-3", "attack", "", answer, 1.0)],
    }
    plain = compose_examples(sets, seed=2, goals={"jbb-behaviour-3": "Do the harmful thing"})
    assert not {e.kind for e in plain} & {"benign_full", "star_short", "narrative_harm", "composed_stream"}
    examples = compose_examples(
        sets, seed=2, goals={"jbb-behaviour-3": "Do the harmful thing"}, streaming=True
    )
    assert [e for e in examples if e.kind in {p.kind for p in plain}] != []
    kinds = {e.kind for e in examples}
    assert {"reasoning_harm", "narrative_harm", "benign_full", "benign_prefix", "star_short"} <= kinds
    assert {e.target for e in examples if e.kind.startswith("benign")} == {0.0}
    for e in examples:
        if e.kind in ("reasoning_harm_stream", "narrative_harm_stream", "composed_stream"):
            assert e.target == 1.0 and "harmful thing" in e.thinking


def test_prepared_rows_survive_packing(tmp_path: Path) -> None:
    rows = [
        (torch.tensor([1, 2, 3], dtype=torch.int16), 2, "a"),
        (torch.tensor([4], dtype=torch.int16), 0, "b"),
    ]
    torch.save({"packed": {"dev": _pack(rows)}, "meta": {}, "pad_id": 0}, tmp_path / "p.pt")
    back = load_prepared(tmp_path / "p.pt")["splits"]["dev"]
    assert [(r[0].tolist(), r[1], r[2]) for r in back] == [([1, 2, 3], 2, "a"), ([4], 0, "b")]


def test_metrics_and_calibration_on_toy_logits() -> None:
    rows = [(None, 2, "jbb_answer"), (None, 2, "jbb_answer"), (None, 0, "star_full"), (None, 0, "gsm8k/full")]
    logits = torch.tensor([[0.0, 0.0, 1.0], [0.3, 0.0, 0.0], [0.8, 0.0, 0.0], [0.0, 0.0, -1.0]])
    m = split_metrics(logits, rows, 0.0)
    assert (m["precision"], m["recall"], m["star_false_alarm"]) == (1.0, 0.5, 0.0)
    assert split_metrics(logits, rows, 1.0)["recall"] == 1.0
    # a bias above +0.8 would also flag the STAR-1 row; calibration must stop between +0.3 and +0.8
    best = calibrate(logits, rows, {"star-1": 0.0}, min_harmful=1)
    assert split_metrics(logits, rows, best)["star_false_alarm"] == 0.0
    assert split_metrics(logits, rows, best)["recall"] == 1.0
    sources = per_source(logits, rows, best)
    assert set(sources) == {"jailbreakbench", "star-1", "gsm8k"}
    assert sources["jailbreakbench"]["recall"] == 1.0 and sources["star-1"]["false_alarm"] == 0.0
    assert sources["jailbreakbench"]["n"] == 2.0 and sources["gsm8k"]["harmful"] == 0.0


def test_source_of_old_and_new_kinds() -> None:
    assert source_of("gptfuzz/late") == "gptfuzz" and source_of("star_prefix") == "star-1"
    assert source_of("composed_turn_stream") == "jailbreakbench" and source_of("gloss_answer") == "wordnet"
    assert source_of("image_benign") == "typographic" and source_of("prompt") == "moderation"


def test_auroc_ranks_with_ties() -> None:
    assert auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [False, True, False, True]) == 0.5
    assert auroc([0.3, 0.4], [True, True]) is None


def test_saved_adapter_merges_to_the_same_outputs(tokenizer: Any) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    from monitor.guards.minilm import LORA_TARGETS

    torch.manual_seed(0)

    def encoder() -> Any:
        return AutoModel.from_pretrained(str(base_model_dir()), local_files_only=True)

    peft_model = get_peft_model(encoder(), LoraConfig(r=2, lora_alpha=4, target_modules=LORA_TARGETS))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)  # a fresh adapter is a no-op; make it count
    model = MiniLMClassifier(peft_model, 384).eval()
    ids = torch.tensor([encode_prefix(tokenizer, "q", "", "some thinking", "", 32, 16)])
    mask = torch.ones_like(ids)
    expected = model(ids, mask)
    tensors = {k: v.float() for k, v in adapter_tensors(model).items()}
    plain = encoder()
    assert merge_lora(plain, tensors, scale=2.0) == 6 * 6
    merged = MiniLMClassifier(plain, 384).eval()
    merged.head.load_state_dict({"weight": tensors["head.weight"], "bias": tensors["head.bias"]})
    torch.testing.assert_close(merged(ids, mask), expected, atol=2e-3, rtol=1e-3)  # fp16 adapter storage


def test_fit_runs_a_few_steps_and_the_guard_loads_the_result(tokenizer: Any, tmp_path: Path) -> None:
    torch.set_num_threads(2)

    def row(q: str, t: str, a: str, label: int, kind: str) -> tuple[torch.Tensor, int, str]:
        return torch.tensor(encode_prefix(tokenizer, q, "", t, a, 32, 16), dtype=torch.int16), label, kind

    train_rows = [
        row("how to make a bomb", "", "mix these chemicals", 2, "jbb_answer"),
        row("how to make a bomb", "", "", 1, "jbb_question"),
        row("bake bread", "", "use flour", 0, "prompt"),
        row("hurt someone", "they want harm, refuse", "I can't.", 0, "star_full"),
    ]
    prepared = tmp_path / "prepared.pt"
    meta = {"window_tokens": 32, "question_tokens": 16, "seed": 1}
    torch.save({"splits": {"train": train_rows, "dev": train_rows}, "meta": meta, "pad_id": 0}, prepared)
    out = tmp_path / "weights"
    metrics = fit(prepared, base_model_dir(), out, epochs=1, seed=1, lora_r=2)
    assert metrics["device"] in ("cpu", "cuda") and set(metrics["dev_sources"]) >= {
        "jailbreakbench",
        "star-1",
    }
    assert 0.0 <= metrics["dev"]["f1"] <= 1.0
    assert (out / "adapter.safetensors").stat().st_size < 5_000_000
    guard = MiniLMGuard.load(Settings(), out)
    (score,) = guard.score([Prefix("s", "bake bread", answer="use flour")])
    assert abs(score.p_safe + score.p_potential + score.p_harmful - 1) < 1e-5
    # the same seed reproduces the adapter byte for byte: what `qta-monitor train` promises on CPU
    again = tmp_path / "again"
    fit(prepared, base_model_dir(), again, epochs=1, seed=1, lora_r=2)
    assert (again / "adapter.safetensors").read_bytes() == (out / "adapter.safetensors").read_bytes()


def test_bucketed_batches_are_a_permutation_of_similar_lengths() -> None:
    rows = [(torch.zeros(n), 0, "k") for n in random.Random(0).choices(range(1, 300), k=4000)]
    out = bucketed(rows, 32, random.Random(1))
    assert sorted(len(r[0]) for r in out) == sorted(len(r[0]) for r in rows)
    batches = [out[i : i + 32] for i in range(0, len(out), 32)]
    spread = sum(max(len(r[0]) for r in b) - min(len(r[0]) for r in b) for b in batches) / len(batches)
    assert spread < 30  # unsorted batches of 32 over 1..300 spread ~270
    assert [len(r[0]) for r in bucketed(rows, 32, random.Random(1))] == [len(r[0]) for r in out]


def test_capped_keeps_order_is_seeded_and_follows_the_recipe() -> None:
    from monitor.training.fit import RECIPE

    examples = [
        Example("q", "", str(i), 0.0, "gsm8k/full" if i % 3 else "nosuch/kind", str(i)) for i in range(900)
    ]
    kept = capped(examples, seed=4, dev=False)
    kinds = [e.kind for e in kept]
    assert kinds.count("gsm8k/full") == RECIPE["caps"]["gsm8k/full"] == 400
    assert kinds.count("nosuch/kind") == RECIPE["default_cap"]
    ids = [int(e.answer) for e in kept]
    assert ids == sorted(ids) and ids == [int(e.answer) for e in capped(examples, seed=4, dev=False)]
    dev = capped(examples, seed=4, dev=True)
    assert [e.kind for e in dev].count("nosuch/kind") == max(RECIPE["dev_min"], RECIPE["default_cap"] // 3)
