"""Guard prefixes from session states: each session's images are decoded once and read by OCR once, then
cached here for its later re-scores. Called only from the guard's executor thread (pillow and tesseract
are slow enough to stall the event loop)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from monitor.core.session import SessionState
from monitor.guards.base import Prefix
from monitor.images import ImageError, OcrUnavailable, decode_image, ocr_text
from monitor.messages import Chunk
from monitor.settings import ImageSettings

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger(__name__)

OCR_CACHE_SIZE = 1024  # the same image (a FigStep template, a replayed session) is read by tesseract once


class PrefixBuilder:
    def __init__(self, limits: ImageSettings) -> None:
        self._limits = limits
        self._ocr = limits.ocr
        self._images: dict[str, list[tuple[str, Image] | None]] = {}  # (sha256, decoded), per state.images
        self._ocr_cache: OrderedDict[str, str] = OrderedDict()

    def check(self, chunks: Sequence[Chunk]) -> list[list[ImageError | None]]:
        """Per chunk, per image: why it is refused, or None when it decodes under the limits."""
        return [
            [r if isinstance(r := decode_image(ref, self._limits), ImageError) else None for ref in c.images]
            for c in chunks
        ]

    def build(self, state: SessionState) -> tuple[Prefix, str, int]:
        """The prefix, and the session's OCR text and OCR'd image count to keep in its state."""
        images = self._images.setdefault(state.session_id, [])
        for ref in state.images[len(images) :]:
            decoded = decode_image(ref, self._limits)
            if isinstance(decoded, ImageError):  # vanished since it was checked: keep the slots aligned
                log.warning("image of session %s no longer decodes: %s", state.session_id, decoded.error)
            images.append(None if isinstance(decoded, ImageError) else (decoded.sha256, decoded.image))
        text, done = state.image_text, state.ocr_images
        if self._ocr and done < len(images):
            try:
                extra = [self._read(*image) for image in images[done:] if image is not None]
                text, done = " ".join(t for t in (text, *extra) if t), len(images)
            except OcrUnavailable as exc:
                log.warning("OCR is off for this worker: %s", exc)
                self._ocr = False
        prefix = Prefix(
            session_id=state.session_id,
            question=state.question,
            thinking=state.thinking,
            answer=state.answer,
            images=tuple(i[1] for i in images if i is not None),
            image_text=text,
            part=state.part,
            new_chars=state.chars - state.scored_chars,
            truncated=state.truncated,
        )
        return prefix, text, done

    def _read(self, sha256: str, image: Image) -> str:
        if sha256 in self._ocr_cache:
            self._ocr_cache.move_to_end(sha256)
            return self._ocr_cache[sha256]
        text = ocr_text(image)
        self._ocr_cache[sha256] = text
        if len(self._ocr_cache) > OCR_CACHE_SIZE:
            self._ocr_cache.popitem(last=False)
        return text

    def forget(self, session_ids: Iterable[str]) -> None:
        for sid in session_ids:
            self._images.pop(sid, None)
