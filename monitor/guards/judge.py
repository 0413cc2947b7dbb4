"""`JudgeGuard`: a Hugging Face causal-LM guard (GuardTrace-VL, ReasoningShield, Llama Guard, Qwen3Guard)
scored without free-text decoding and incrementally per session.

preprocess: render the template (monitor.guards.templates), tokenize `content + suffix` in one go (so the
  model sees the tokenization it was trained on) and split it where the content ends: the head of the ids
  is the cacheable prefix, the rest (straddling token, suffix) is throwaway.
forward: per session, the cached prefix is compared with the new ids; the common part is reused, the rest
  and the throwaway tail (plus the label probe, below) run in one batched forward over all sessions
  (left-padded caches, per-row position ids, a 2-D attention mask). Each row's new prefix keys/values are
  kept; the suffix's are dropped (a batch of one uses `DynamicCache.crop`, which in transformers 5 takes
  a negative count of tokens to remove).
postprocess: label probabilities from the next-token distributions at the forced judgment position
  (`LabelReader`), normalised over the labels; `extra["label_mass"]` keeps how much of the distribution
  they held.

Images: Qwen2-VL class judges read `Prefix.images` as pixels in the question (monitor.guards.vision);
other judges get the OCR text after the question.

Truncation: above `settings.guard.max_tokens` the instruction/question head is kept and the trace loses
its oldest tokens in blocks of a quarter of the budget, so the cached prefix stays valid between drops."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from monitor.guards.base import LABELS, Label, Prefix, Score
from monitor.guards.kvcache import KVCache, SessionKV, common_prefix, extend, extension, layers_of
from monitor.guards.templates import Rendered, Template, get_template
from monitor.guards.vision import Pixels, VisionInput, is_vision_model, load_image_processor
from monitor.settings import Settings

log = logging.getLogger(__name__)

INSTRUCTION_FILES = ("system_prompt.txt", "reasoningshield_prompt.txt")  # next to the weights
EXPLAIN_TOKENS = 384


class LabelReader:
    """Label probabilities from next-token distributions, for labels of one or more tokens.

    Labels are tokenized as they follow the judgment prefix (GuardTrace "0" / "0.5" / "1" -> [0], [0 . 5],
    [1] with Qwen/Llama tokenizers). A label's probability is the product of its token probabilities up to
    the token where it differs from every other label; a label that is a strict prefix of another ("0" of
    "0.5") takes its first-token mass times one minus the probability of continuing into the longer one
    ("." after "0"). So for GuardTrace: P(0) = p("0")·(1 - p("." | "0")), P(0.5) = p("0")·p("." | "0"),
    P(1) = p("1"). The contexts needed must lie on one path, the `probe`, which is appended to the suffix
    in the same forward pass: row j of the log-probabilities is the distribution after probe[:j]."""

    def __init__(self, labels: Sequence[tuple[Label, tuple[int, ...]]]) -> None:
        seqs = [ids for _, ids in labels]
        if len(set(seqs)) != len(seqs) or any(not ids for ids in seqs):
            raise ValueError(f"judge labels must tokenize to distinct, non-empty sequences: {labels}")
        self.terms: list[tuple[Label, list[tuple[int, int]], list[tuple[int, int]]]] = []
        contexts: list[tuple[int, ...]] = []
        for label, ids in labels:
            others = [o for o in seqs if o != ids]
            depth = next(
                (d for d in range(1, len(ids) + 1) if all(o[:d] != ids[:d] for o in others)), len(ids)
            )
            factors = [(j, ids[j]) for j in range(depth)]  # (probe row, token)
            contexts += [ids[:j] for j in range(depth)]
            longer = {o[len(ids)] for o in others if len(o) > len(ids) and o[: len(ids)] == ids}
            stops = [(len(ids), t) for t in sorted(longer)]  # continuations that make it another label
            if stops:
                contexts.append(ids)
            self.terms.append((label, factors, stops))
        path = max(contexts, key=len)
        if any(c != path[: len(c)] for c in contexts):
            raise ValueError(f"judge labels need more than one probe path: {labels}")
        self.probe: tuple[int, ...] = path
        # every token id whose log-probability some probe row needs (what a serving engine is asked for)
        self.tokens: tuple[int, ...] = tuple(
            sorted({t for _, factors, stops in self.terms for _, t in (*factors, *stops)})
        )

    @classmethod
    def build(cls, template: Template, tokenize: Any) -> LabelReader:
        """Tokenize each label in context (after the suffix's end), so a label that merges with the
        judgment prefix is read as the model would write it."""
        context = template.close + template.judgment
        base = tokenize(context)
        labels = []
        for text, label in template.labels:
            joint = tokenize(context + text)
            ids = joint[len(base) :] if joint[: len(base)] == base else tokenize(text)
            labels.append((label, tuple(ids)))
        return cls(labels)

    def probabilities(self, logprobs: torch.Tensor) -> dict[Label, float]:
        """Unnormalised label probabilities from (len(probe) + 1, vocab) log-probabilities."""
        picked = logprobs.double()[:, list(self.tokens)].tolist()
        return self.from_rows([dict(zip(self.tokens, row, strict=True)) for row in picked])

    def from_rows(self, rows: Sequence[Mapping[int, float]]) -> dict[Label, float]:
        """The label maths on its own: row j maps token id -> log-probability after probe[:j] and holds
        at least `self.tokens` (a token missing from a row counts as probability 0)."""
        out: dict[Label, float] = {}
        for label, factors, stops in self.terms:
            p = 1.0
            for row, token in factors:
                p *= math.exp(rows[row].get(token, -math.inf))
            if stops:
                p *= max(0.0, 1.0 - sum(math.exp(rows[row].get(token, -math.inf)) for row, token in stops))
            out[label] = p
        return out


def label_score(probs: Mapping[Label, float], tokens: int, computed: int, truncated: bool) -> Score:
    """The Score of unnormalised label probabilities (all zero: safe), `label_mass` in `extra`."""
    mass = sum(probs.values())
    by_label: dict[Label, float] = {label: probs.get(label, 0.0) for label in LABELS}
    if mass <= 0:
        by_label = {0: 1.0, 0.5: 0.0, 1: 0.0}
    score = Score.from_probs(by_label[0], by_label[0.5], by_label[1], tokens)
    extra = {"label_mass": mass, "tokens_computed": float(computed), "truncated": float(truncated)}
    return replace(score, extra=extra)


def split_ids(
    tokenizer: Any, rendered: Rendered, *, max_tokens: int, probe: int, truncated: bool
) -> tuple[list[int], list[int], bool]:
    """(prefix ids, tail ids, truncated): `content + suffix` tokenized in one go and split where the
    content ends; the body loses its oldest tokens in quarter-budget blocks above `max_tokens`."""
    text = rendered.content + rendered.suffix
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    ends = [int(end) for _, end in enc["offset_mapping"]]
    split = sum(1 for end in ends if end <= len(rendered.content))  # tokens wholly inside the content
    head = sum(1 for end in ends if end <= len(rendered.head))
    prefix_ids, tail_ids = ids[:split], ids[split:]
    budget = max_tokens - len(tail_ids) - probe - head
    body = prefix_ids[head:]
    if len(body) > budget > 0:
        block = max(1, budget // 4)
        drop = -(-(len(body) - budget) // block) * block
        prefix_ids, truncated = prefix_ids[:head] + body[drop:], True
    return prefix_ids, tail_ids, truncated


def judge_template(name: str, path: Path, vocab: Mapping[str, int]) -> Template:
    """The named template, with the instruction file shipped next to the weights when there is one."""
    template = get_template(name, dict(vocab))
    for filename in INSTRUCTION_FILES:
        if (path / filename).is_file():
            return template.with_instruction((path / filename).read_text(encoding="utf-8"))
    return template


class JudgeLoadError(RuntimeError):
    """The judge's weights or tokenizer could not be loaded from the given directory."""


@dataclass(frozen=True, slots=True)
class Encoded:
    """One prefix as token ids: `prefix_ids` are cacheable, `tail_ids` are run and dropped."""

    session_id: str
    prefix_ids: tuple[int, ...]
    tail_ids: tuple[int, ...]
    truncated: bool
    pixels: Pixels | None = None  # images fed as pixels (VL judges)
    image_end: int = 0  # prefix tokens up to the last vision token; a cache is reused only past it
    delta: int = 0  # multimodal RoPE shift of text positions after the images

    @property
    def tokens(self) -> int:
        return len(self.prefix_ids) + len(self.tail_ids)


def load_model(path: Path, device: str) -> tuple[Any, Any]:
    """(model, tokenizer) from a local directory: bf16 on CUDA, fp32 elsewhere; never a hub download."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if device.startswith("cuda"):
        # cuDNN attention builds a new plan for every new cache length (~100 ms a score, see BENCHMARKS.md)
        torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
        except ValueError:  # vision-language checkpoints (Qwen2.5-VL) register as image-text-to-text
            from transformers import AutoModelForImageTextToText

            model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise JudgeLoadError(f"cannot load a causal LM guard from {path}: {exc}") from exc
    model = model.to(device)  # type: ignore[arg-type]
    return model.eval(), tokenizer


def full_attention(config: Any) -> bool:
    """True when every layer attends to the whole prefix, so its KV cache can be extended and stacked."""
    text = getattr(config, "text_config", None) or config
    types = getattr(text, "layer_types", None) or ["full_attention"]
    return all(t == "full_attention" for t in types)


class JudgeGuard:
    """Causal-LM guard with per-session KV caches; see the module docstring."""

    name = "judge"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        template: Template,
        *,
        kv_budget_bytes: int,
        max_tokens: int,
        use_cache: bool = True,
        vision: VisionInput | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.max_tokens = max_tokens
        self.device = next(model.parameters()).device
        self.use_cache = use_cache and full_attention(model.config)
        self.cache = KVCache(kv_budget_bytes)
        self.vision = vision
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self._special = tuple(str(t) for t in getattr(tokenizer, "all_special_tokens", ()))
        self.reader = LabelReader.build(template, self._ids)

    @classmethod
    def load(cls, settings: Settings, path: Path | None) -> JudgeGuard:
        if path is None:
            raise JudgeLoadError("the judge guard needs a local model directory (MONITOR_GUARD__PATH)")
        model, tokenizer = load_model(Path(path), settings.guard.device)
        template = judge_template(settings.guard.template, Path(path), tokenizer.get_vocab())
        vision = None
        if is_vision_model(model) and template.image_slot:
            image_processor = load_image_processor(Path(path))
            vision = VisionInput(model, image_processor, template) if image_processor is not None else None
        return cls(
            model,
            tokenizer,
            template,
            kv_budget_bytes=settings.guard.kv_budget_mb * 2**20,
            max_tokens=settings.guard.max_tokens,
            vision=vision,
        )

    # -- preprocess ---------------------------------------------------------------------------------

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render(self, prefix: Prefix) -> tuple[Rendered, Pixels | None]:
        """The template rendering, with the images' vision tokens in the question for a VL judge."""
        if self.vision is None or not prefix.images:
            return self.template.render(prefix, self._special), None
        pixels = self.vision.pixels(prefix.session_id, prefix.images)
        rendered = self.template.render(prefix, self._special, images=len(prefix.images))
        return self.vision.expand(rendered, pixels), pixels

    def encode(self, prefix: Prefix) -> Encoded:
        rendered, pixels = self.render(prefix)
        prefix_ids, tail_ids, truncated = split_ids(
            self.tokenizer,
            rendered,
            max_tokens=self.max_tokens,
            probe=len(self.reader.probe),
            truncated=prefix.truncated,
        )
        if pixels is None or self.vision is None:
            return Encoded(prefix.session_id, tuple(prefix_ids), tuple(tail_ids), truncated)
        image_end, delta = self.vision.text_offset(prefix_ids, pixels)
        return Encoded(
            prefix.session_id, tuple(prefix_ids), tuple(tail_ids), truncated, pixels, image_end, delta
        )

    # -- forward ------------------------------------------------------------------------------------

    @torch.inference_mode()
    def score(self, batch: Sequence[Prefix]) -> list[Score]:
        if not batch:
            return []
        encoded = [self.encode(p) for p in batch]
        logprobs, computed = self.forward(encoded)
        return [self.postprocess(e, lp, n) for e, lp, n in zip(encoded, logprobs, computed, strict=True)]

    def _reuse(self, e: Encoded) -> SessionKV | None:
        entry = self.cache.get(e.session_id) if self.use_cache else None
        if entry is None:
            return None
        keep = common_prefix(entry.ids, e.prefix_ids)
        if e.pixels is not None and self.vision is not None:
            # same ids, other pixels: two images of one size tokenize alike
            if keep < e.image_end or self.vision.cached.get(e.session_id) != e.pixels.fingerprint:
                return None
        return entry.cropped(keep)

    def forward(self, encoded: Sequence[Encoded]) -> tuple[list[torch.Tensor], list[int]]:
        """Log-probabilities (k+1, vocab) at the judgment position and after each probe token, per row,
        and how many tokens each row computed. Rows with the same session id must not repeat."""
        entries = [self._reuse(e) for e in encoded]
        probe = list(self.reader.probe)
        rows = []
        for e, entry in zip(encoded, entries, strict=True):
            done = entry.length if entry is not None else 0
            rows.append(list(e.prefix_ids[done:]) + list(e.tail_ids) + probe)
        keep = len(probe) + 1
        logits: list[torch.Tensor | None] = [None] * len(encoded)
        new_entries: list[SessionKV | None] = [None] * len(encoded)
        text = []
        for i, (e, entry) in enumerate(zip(encoded, entries, strict=True)):
            if e.pixels is not None and entry is None and self.vision is not None:  # pixels: one by one
                out, new_entries[i] = self.vision.prefill(
                    e.prefix_ids, e.pixels, rows[i], keep, self.use_cache
                )
                logits[i] = out[0]
            else:
                text.append(i)
        if len(text) == 1:
            out, news = self._forward_one(encoded[text[0]], entries[text[0]], rows[text[0]], keep)
        elif text:
            sub = [encoded[i] for i in text]
            out, news = self._forward_batch(sub, [entries[i] for i in text], [rows[i] for i in text], keep)
        for j, i in enumerate(text):
            logits[i], new_entries[i] = out[j], news[j]
        if self.use_cache:
            for e, new in zip(encoded, new_entries, strict=True):
                self.cache.put(e.session_id, new)
                if self.vision is not None:
                    self.vision.cached.pop(e.session_id, None)
                    if e.pixels is not None and new is not None:
                        self.vision.cached[e.session_id] = e.pixels.fingerprint
        logprobs = torch.log_softmax(torch.stack([t for t in logits if t is not None]).float(), dim=-1)
        return [logprobs[i] for i in range(len(encoded))], [len(r) for r in rows]

    def _forward_one(
        self, e: Encoded, entry: SessionKV | None, row: list[int], keep: int
    ) -> tuple[torch.Tensor, list[SessionKV | None]]:
        from transformers import DynamicCache

        past = entry.length if entry is not None else 0
        ids = torch.tensor([row], device=self.device)
        positions = torch.arange(past, past + len(row), device=self.device)[None] + e.delta
        if not self.use_cache:
            out = self.model(input_ids=ids, position_ids=positions, use_cache=False, logits_to_keep=keep)
            return out.logits, [None]
        cache = DynamicCache(ddp_cache_data=entry.layers) if entry is not None else DynamicCache()
        out = self.model(
            input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=keep
        )
        throwaway = len(row) - (len(e.prefix_ids) - past)
        if throwaway > 0:  # never crop(0): older transformers read a non-negative argument as a length
            cache.crop(-throwaway)  # transformers 5: a negative count of tokens to remove
        new = SessionKV(e.prefix_ids, layers_of(cache)) if e.prefix_ids else None
        return out.logits, [new]

    def _forward_batch(
        self,
        encoded: Sequence[Encoded],
        entries: Sequence[SessionKV | None],
        rows: list[list[int]],
        keep: int,
    ) -> tuple[torch.Tensor, list[SessionKV | None]]:
        if not self.use_cache:
            entries = [None] * len(rows)
        batch = extension(entries, rows, self.pad_id, self.device)
        deltas = torch.tensor([e.delta for e in encoded], device=self.device)[:, None]  # VL sessions
        out = self.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids + deltas,
            past_key_values=batch.cache if self.use_cache else None,
            use_cache=self.use_cache,
            logits_to_keep=keep,
        )
        if not self.use_cache:
            return out.logits, [None] * len(rows)
        new_entries = []
        for i, (e, entry) in enumerate(zip(encoded, entries, strict=True)):
            done = entry.length if entry is not None else 0
            new_entries.append(extend(entry, batch.cache, i, batch.starts[i], e.prefix_ids[done:]))
        return out.logits, new_entries

    # -- postprocess --------------------------------------------------------------------------------

    def postprocess(self, e: Encoded, logprobs: torch.Tensor, computed: int) -> Score:
        return label_score(self.reader.probabilities(logprobs), e.tokens, computed, e.truncated)

    # -- state and audit ----------------------------------------------------------------------------

    def forget(self, session_ids: Iterable[str]) -> None:
        session_ids = list(session_ids)
        self.cache.drop(session_ids)
        if self.vision is not None:
            self.vision.forget(session_ids)

    @torch.inference_mode()
    def explain(self, prefix: Prefix) -> str | None:
        """The judge's own analysis and verdict, decoded greedily (audit path only, never the hot path)."""
        rendered, pixels = self.render(prefix)
        text = rendered.content + self.template.explain_suffix(prefix)
        ids = torch.tensor([self._ids(text)], device=self.device)
        images = self.vision.generate_inputs(ids, pixels) if self.vision and pixels else {}
        out = self.model.generate(
            **images,
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=EXPLAIN_TOKENS,
            do_sample=False,
            pad_token_id=self.pad_id,
        )
        return str(self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)).strip()
