"""`qta-monitor score`: one QTA JSON file (question, images, thinking, answer) through one guard, printed
as probabilities, label and tokens read; `--explain` adds the guard's analysis where it can give one."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from monitor.guards import build_guard
from monitor.guards.base import Prefix
from monitor.images import DecodedImage, ImageError, OcrUnavailable, decode_image, ocr_text
from monitor.messages import ImageRef
from monitor.settings import Settings


class QtaFileError(ValueError):
    """The file is not a QTA JSON object."""


def _image_ref(item: Any, base: Path) -> ImageRef:
    if isinstance(item, str):  # a plain path, relative to the QTA file
        path = Path(item)
        return ImageRef(uri=str(path if path.is_absolute() or "://" in item else base / path))
    if isinstance(item, dict):
        return ImageRef(**item)
    raise QtaFileError(
        f"an image must be a path or an object with 'data' or 'uri', got {type(item).__name__}"
    )


def read_prefix(settings: Settings, file: Path) -> tuple[Prefix, list[str]]:
    """The QTA file as a finished session's prefix, plus one warning per image that was refused."""
    try:
        obj = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise QtaFileError(f"{file}: {exc}") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("question", ""), str):
        raise QtaFileError(f"{file}: expected an object with 'question', 'images', 'thinking', 'answer'")
    warnings: list[str] = []
    images: list[DecodedImage] = []
    for item in obj.get("images") or []:
        decoded = decode_image(_image_ref(item, file.parent), settings.images)
        if isinstance(decoded, ImageError):
            warnings.append(f"image refused ({decoded.reason}): {decoded.error}")
        else:
            images.append(decoded)
    texts = [ocr_text(d.image) for d in images] if settings.images.ocr else []
    prefix = Prefix(
        session_id=str(obj.get("id", file.stem)),
        question=obj.get("question", ""),
        thinking=str(obj.get("thinking") or ""),
        answer=str(obj.get("answer") or ""),
        images=tuple(d.image for d in images),
        image_text=" ".join(t for t in texts if t),
        part="end",
    )
    return prefix, warnings


def score_file(settings: Settings, file: Path, guard: str | None, path: Path | None, explain: bool) -> int:
    try:
        prefix, warnings = read_prefix(settings, file)
    except (QtaFileError, OcrUnavailable) as exc:
        print(f"qta-monitor score: {exc}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    model = build_guard(settings, guard, path)
    score = model.score([prefix])[0]
    print(f"guard        {model.name}")
    print(f"p_safe       {score.p_safe:.4f}")
    print(f"p_potential  {score.p_potential:.4f}")
    print(f"p_harmful    {score.p_harmful:.4f}")
    print(f"label        {score.label}")
    print(f"tokens_read  {score.tokens_read}")
    if score.category:
        print(f"category     {score.category}")
    if prefix.image_text:
        print(f"image_text   {prefix.image_text[:200]}")
    if explain:
        analysis = model.explain(prefix)
        print("analysis     " + (analysis if analysis else f"(the {model.name} guard gives no analysis)"))
    return 0
