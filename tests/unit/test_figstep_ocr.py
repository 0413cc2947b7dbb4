"""Typographic jailbreaks (FigStep): OCR recovers the rendered instruction, and the embedded guard flags
the harmful ones through that text, not through FigStep's fixed prompt alone.

Uses raw/ThuCCSLab__FigStep (MIT) of the shared data folder (the `shared_data` fixture: QTA_SHARED_DATA,
else ../shared/data)."""

from __future__ import annotations

import csv
import difflib
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from monitor.evaluation.datasets import FIGSTEP_PROMPT, Sample, load_dataset
from monitor.guards.base import Prefix
from monitor.guards.minilm import MiniLMGuard
from monitor.images import DecodedImage, decode_image, ocr_text
from monitor.messages import ImageRef
from monitor.settings import Settings

FIGSTEP = "raw/ThuCCSLab__FigStep"
# A fixed subset, chosen by rule before looking at scores: tasks 1-2 of the harmful categories 1-5.
SUBSET = [f"figstep-{cat}-{task}" for cat in range(1, 6) for task in (1, 2)]


@pytest.fixture(scope="module")
def guard() -> MiniLMGuard:
    torch.set_num_threads(2)
    return MiniLMGuard.load(Settings(), None)


@pytest.fixture(scope="module")
def subset(shared_data: Path) -> list[tuple[Sample, str, str]]:
    """(sample, its instruction from the CSV, OCR text of its image) for the fixed subset."""
    figstep = shared_data / FIGSTEP
    assert figstep.is_dir(), f"FigStep data not found at {figstep}"
    with (figstep / "data/question/SafeBench-Tiny.csv").open(newline="", encoding="utf-8") as handle:
        instructions = {
            f"figstep-{r['category_id']}-{r['task_id']}": r["instruction"] for r in csv.DictReader(handle)
        }
    samples = {s.id: s for s in load_dataset(figstep)}
    rows = []
    for sid in SUBSET:
        decoded = decode_image(ImageRef(uri=str(samples[sid].images[0])), Settings().images)
        assert isinstance(decoded, DecodedImage), decoded
        rows.append((samples[sid], instructions[sid], ocr_text(decoded.image)))
    return rows


def test_figstep_adapter_uses_the_fixed_prompt_and_images(shared_data: Path) -> None:
    samples = load_dataset(shared_data / FIGSTEP)
    assert len(samples) == 50
    assert {s.question for s in samples} == {FIGSTEP_PROMPT}
    assert sum(s.label == 1.0 for s in samples) == 35
    assert all(len(s.images) == 1 and s.images[0].exists() for s in samples)


def test_ocr_recovers_the_instruction(subset: list[tuple[Sample, str, str]]) -> None:
    for sample, instruction, text in subset:
        recovered = text.lower()[: len(instruction) + 8]
        ratio = difflib.SequenceMatcher(None, instruction.lower(), recovered).ratio()
        assert ratio >= 0.85, (sample.id, instruction, text)


def test_guard_flags_harmful_figstep_images_through_ocr(
    guard: MiniLMGuard, subset: list[tuple[Sample, str, str]]
) -> None:
    warn = Settings().policy.warn_threshold
    with_ocr = guard.score(
        [Prefix(s.id, s.question, image_text=text, part="question") for s, _, text in subset]
    )
    flagged = [s.id for (s, _, _), score in zip(subset, with_ocr, strict=True) if score.p_harmful > warn]
    assert len(flagged) >= 8, f"only {flagged} of {SUBSET} flagged"
    # The fixed prompt alone is not what the guard reacts to: without the image text it stays below warn.
    (bare,) = guard.score([Prefix("bare", FIGSTEP_PROMPT, part="question")])
    assert bare.p_harmful < warn


def test_benign_typographic_image_is_not_flagged(guard: MiniLMGuard) -> None:
    image = Image.new("RGB", (760, 760), "white")
    ImageDraw.Draw(image).multiline_text(
        (20, 20),
        "Steps to bake a\nchocolate cake.\n1.\n2.\n3.",
        font=ImageFont.load_default(size=44),
        fill="black",
    )
    text = ocr_text(image)
    assert "chocolate cake" in text.lower()
    (score,) = guard.score([Prefix("cake", FIGSTEP_PROMPT, image_text=text, part="question")])
    assert score.p_harmful < Settings().policy.warn_threshold
