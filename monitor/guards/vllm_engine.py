"""`VLLMJudge`: the causal-LM judge of monitor.guards.judge served by vLLM's async engine (`AsyncLLM`), with
the engine's automatic prefix caching in place of our per-session KV caches (`guard.engine = "vllm"`).

Same templates, tokenisation, truncation, label maths and Score as `JudgeGuard`, which stays the reference;
only the forward moves. vLLM is imported in `VLLMJudge.load` only (the `vllm` extra, vllm==0.33.0).

preprocess: the prompt is rendered and tokenised by our tokenizer (`split_ids`) and sent as token ids
  (`TokensPrompt`), so a text judge's engine runs without a tokenizer (`skip_tokenizer_init`).
forward: one request per row of the label probe (`LabelReader.probe`): row 0 is prefix + tail up to the
  forced judgment position, row j the same prompt extended by probe[:j] (GuardTrace's "0.5" needs row 1:
  the prompt extended by "0"). Each asks `max_tokens=1`, greedy, `logprob_token_ids` = the label tokens, in
  raw log-probabilities; never `allowed_token_ids`, logit bias or penalties, which renormalise. The rows
  of one score go out together; row 1 shares all of row 0's blocks, so it is a prefix-cache hit.
postprocess: `LabelReader.from_rows` and `label_score`, exactly as for HF.

Prefix caching keeps a session warm with no state here: the engine hashes full KV blocks of token ids (and
image ids), so a session's next score reuses every full block of its content and runs only the rest (the
block left partial, the new tokens, the template suffix). That needs the same ids for the same content
(our tokenisation is split where the content ends; truncation drops whole quarter budgets), sessions that
stay on one worker (the Kafka key), and a pool large enough to hold the live sessions (`guard.kv_budget_mb`,
`kv_pool`). At most one score per session is in flight: a second waits for the first, then hits its cache.

Images (Qwen2.5-VL judges): the question holds one `<|image_pad|>` slot per image, which vLLM's processor
widens to the image's vision tokens; `multi_modal_uuids` names each image by a digest of its pixels, so a
repeated image is a cache hit. The vision tokens are not counted against `guard.max_tokens`.

Every score is a coroutine (`score_one`, `ascore`) on the engine's event loop, which runs in a thread of its
own (`EngineLoop`); the Guard protocol's blocking `score(batch)` submits a whole batch at once and waits,
and the engine's continuous batching packs the requests."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from monitor import telemetry
from monitor.guards.base import Prefix, Score
from monitor.guards.judge import (
    EXPLAIN_TOKENS,
    JudgeLoadError,
    LabelReader,
    judge_template,
    label_score,
    split_ids,
)
from monitor.guards.templates import Template
from monitor.guards.vision import fingerprint
from monitor.settings import Settings

if TYPE_CHECKING:
    from PIL.Image import Image

VLLM_VERSION = "0.33.0"  # the pin of the `vllm` extra; the logprob API changed across releases
BLOCK_SIZE = 16  # tokens per KV block: the prefix cache reuses whole blocks
VISION_TOKENS = 16_384  # room in max_model_len for a VL judge's vision tokens
MAX_IMAGES = 8
# vLLM 0.33 refuses to start unless this share of the GPU is free; with kv_cache_memory_bytes set it sizes
# nothing else, so a small share lets the engine start next to other users of the GPU (tests, a 2nd engine)
STARTUP_FREE_SHARE = 0.05

T = TypeVar("T")


class EngineUnavailable(JudgeLoadError):
    """vLLM is not installed (or lacks the API this backend uses)."""


class EngineError(RuntimeError):
    """The serving engine failed a request; the engine itself may be dead (see the cause)."""


class Engine(Protocol):
    """The part of vLLM's `AsyncLLM` this backend calls (an in-memory twin implements it for tests)."""

    def generate(self, prompt: Any, sampling_params: Any, request_id: str) -> AsyncIterator[Any]: ...

    def shutdown(self) -> None: ...


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise EngineUnavailable(
            f"guard.engine = 'vllm' needs vLLM on a CUDA machine: pip install 'qta-monitor[vllm]' "
            f"(vllm=={VLLM_VERSION}); or set MONITOR_GUARD__ENGINE=hf ({exc})"
        ) from exc
    return vllm


# -- sizing ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Geometry:
    """What one token's keys and values cost, from the model's config.json."""

    layers: int
    kv_heads: int
    head_dim: int
    max_positions: int | None = None
    dtype_bytes: int = 2  # bf16

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Geometry:
        text = config.get("text_config") or config  # VL checkpoints nest the language model's config
        heads = int(text["num_attention_heads"])
        head_dim = int(text.get("head_dim") or int(text["hidden_size"]) // heads)
        kv_heads = int(text.get("num_key_value_heads") or heads)
        positions = text.get("max_position_embeddings")
        return cls(int(text["num_hidden_layers"]), kv_heads, head_dim, int(positions) if positions else None)

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes


@dataclass(frozen=True, slots=True)
class KVPool:
    blocks: int
    block_size: int
    bytes: int

    @property
    def tokens(self) -> int:
        return self.blocks * self.block_size


def kv_pool(
    geometry: Geometry, budget_bytes: int, max_model_len: int, block_size: int = BLOCK_SIZE
) -> KVPool:
    """The engine's KV pool in whole blocks within the budget; it must hold one longest prompt."""
    block_bytes = geometry.bytes_per_token * block_size
    blocks = budget_bytes // block_bytes
    if blocks * block_size < max_model_len:
        raise JudgeLoadError(
            f"guard.kv_budget_mb = {budget_bytes // 2**20} holds {blocks * block_size} tokens of this model "
            f"({geometry.bytes_per_token} bytes each), fewer than one prompt of {max_model_len}"
        )
    return KVPool(blocks, block_size, blocks * block_bytes)


def engine_args(
    settings: Settings, path: Path, geometry: Geometry, *, vision: bool, prefix_caching: bool = True
) -> dict[str, Any]:
    """Keyword arguments of vLLM's `AsyncEngineArgs`: bf16, CUDA graphs, prefix caching, a KV pool of
    `guard.kv_budget_mb` (`kv_cache_memory_bytes`, which replaces gpu_memory_utilization's profiling)."""
    max_model_len = settings.guard.max_tokens + (VISION_TOKENS if vision else 0)
    if geometry.max_positions:
        max_model_len = min(max_model_len, geometry.max_positions)
    pool = kv_pool(geometry, settings.guard.kv_budget_mb * 2**20, max_model_len)
    args: dict[str, Any] = {
        "model": str(path),
        "tokenizer": str(path),
        "skip_tokenizer_init": not vision,  # prompts are token ids; only the image processor needs one
        "dtype": "bfloat16",
        "enable_prefix_caching": prefix_caching,
        "block_size": pool.block_size,
        "kv_cache_memory_bytes": pool.bytes,
        "gpu_memory_utilization": STARTUP_FREE_SHARE,
        "max_model_len": max_model_len,
        "logprobs_mode": "raw_logprobs",  # log_softmax of the logits, before any processor
        "enforce_eager": False,  # CUDA graphs
        "generation_config": "vllm",  # ignore the checkpoint's sampling defaults
        "seed": 0,
    }
    if vision:
        args["limit_mm_per_prompt"] = {"image": MAX_IMAGES}
    return args


# -- requests -------------------------------------------------------------------------------------------


def sampling_kwargs(reader: LabelReader) -> dict[str, Any]:
    """`SamplingParams` of every scoring request: one greedy token, the label tokens' raw logprobs."""
    return {
        "max_tokens": 1,
        "temperature": 0.0,
        "logprobs": len(reader.tokens),  # vLLM 0.33 requires logprobs == len(logprob_token_ids) when set
        "logprob_token_ids": list(reader.tokens),
        "detokenize": False,
    }


@dataclass(frozen=True, slots=True)
class Request:
    """One prefix as engine input: token ids up to the forced judgment position, and its images."""

    session_id: str
    prefix_ids: tuple[int, ...]
    tail_ids: tuple[int, ...]
    truncated: bool
    images: tuple[Image, ...] = ()
    image_ids: tuple[str, ...] = ()

    @property
    def tokens(self) -> int:
        return len(self.prefix_ids) + len(self.tail_ids)

    def prompts(self, probe: Sequence[int]) -> list[dict[str, Any]]:
        """One `TokensPrompt` (a plain dict) per probe row: the prompt, then extended by probe[:j]."""
        ids = [*self.prefix_ids, *self.tail_ids]
        out: list[dict[str, Any]] = []
        for j in range(len(probe) + 1):
            prompt: dict[str, Any] = {"prompt_token_ids": ids + list(probe[:j])}
            if self.images:
                prompt["multi_modal_data"] = {"image": list(self.images)}
                prompt["multi_modal_uuids"] = {"image": list(self.image_ids)}
            out.append(prompt)
        return out


def logprob_row(output: Any) -> dict[int, float]:
    """token id -> log-probability at the one generated position of a finished `RequestOutput`."""
    completion = output.outputs[0]
    if not completion.logprobs:
        raise EngineError(f"request {output.request_id} came back without logprobs")
    return {int(token): float(lp.logprob) for token, lp in completion.logprobs[0].items()}


# -- the event loop the engine lives on -----------------------------------------------------------------


class EngineLoop:
    """An asyncio loop in a daemon thread: the engine is bound to one loop, its callers are not."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="vllm-engine-loop", daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run on the loop and block this (other) thread until done."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a blocking guard call on the engine loop itself; await ascore() instead")
        return self.submit(coro).result()

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


@dataclass
class _Turn:
    """A session's place in line: one score in flight, the others wait in order."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class VLLMJudge:
    """The judge guard on vLLM; see the module docstring."""

    name = "judge"

    def __init__(
        self,
        engine: Engine,
        tokenizer: Any,
        template: Template,
        *,
        max_tokens: int,
        make_params: Callable[..., Any],
        loop: EngineLoop,
        vision: bool = False,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.template = template
        self.max_tokens = max_tokens
        self.loop = loop
        self.vision = vision
        self._special = tuple(str(t) for t in getattr(tokenizer, "all_special_tokens", ()))
        self.reader = LabelReader.build(template, self._ids)
        try:
            self.params = make_params(**sampling_kwargs(self.reader))
        except TypeError as exc:  # a vLLM without SamplingParams.logprob_token_ids
            raise EngineUnavailable(f"this vLLM cannot score labels; install vllm=={VLLM_VERSION}") from exc
        self.explain_params = make_params(max_tokens=EXPLAIN_TOKENS, temperature=0.0, detokenize=False)
        self._turns: dict[str, _Turn] = {}  # touched on the engine loop only
        self._images: dict[str, tuple[tuple[Image, ...], tuple[Image, ...], tuple[str, ...]]] = {}
        self._request_ids = itertools.count()

    @classmethod
    def load(cls, settings: Settings, path: Path | None, *, prefix_caching: bool = True) -> VLLMJudge:
        """Start the engine on the guard's GPU (minutes: weights, CUDA graphs) from a local folder."""
        if path is None:
            raise JudgeLoadError("the judge guard needs a local model directory (MONITOR_GUARD__PATH)")
        device = settings.guard.device
        if device not in ("cuda", "cuda:0"):
            raise JudgeLoadError(
                f"guard.engine = 'vllm' runs on the first visible GPU: set guard.device = 'cuda' and choose "
                f"the GPU with CUDA_VISIBLE_DEVICES (got guard.device = {device!r})"
            )
        vllm = import_vllm()
        from transformers import AutoTokenizer

        path = Path(path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise JudgeLoadError(f"cannot load a causal LM guard from {path}: {exc}") from exc
        template = judge_template(settings.guard.template, path, tokenizer.get_vocab())
        vision = bool(config.get("vision_config")) and bool(template.image_slot)
        args = engine_args(
            settings, path, Geometry.from_config(config), vision=vision, prefix_caching=prefix_caching
        )
        loop = EngineLoop()

        async def start() -> Any:  # created on its loop, where its output handler will run
            return vllm.AsyncLLMEngine.from_engine_args(vllm.AsyncEngineArgs(**args))

        try:
            engine = loop.run(start())
        except Exception as exc:
            loop.close()
            raise JudgeLoadError(f"vLLM could not start the judge from {path}: {exc}") from exc
        return cls(
            engine,
            tokenizer,
            template,
            max_tokens=settings.guard.max_tokens,
            make_params=vllm.SamplingParams,
            loop=loop,
            vision=vision,
        )

    # -- preprocess ---------------------------------------------------------------------------------

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _image_inputs(self, prefix: Prefix) -> tuple[tuple[Image, ...], tuple[str, ...]]:
        """RGB images and their digests, memoised per session while the same image objects come back."""
        memo = self._images.get(prefix.session_id)
        if memo is not None and len(memo[0]) == len(prefix.images):
            if all(a is b for a, b in zip(memo[0], prefix.images, strict=True)):
                return memo[1], memo[2]
        rgb = tuple(image.convert("RGB") for image in prefix.images)
        ids = tuple(fingerprint([image]) for image in prefix.images)
        self._images[prefix.session_id] = (prefix.images, rgb, ids)
        return rgb, ids

    def encode(self, prefix: Prefix) -> Request:
        images = len(prefix.images) if self.vision else 0
        rendered = self.template.render(prefix, self._special, images=images)
        prefix_ids, tail_ids, truncated = split_ids(
            self.tokenizer,
            rendered,
            max_tokens=self.max_tokens,
            probe=len(self.reader.probe),
            truncated=prefix.truncated,
        )
        if not images:
            return Request(prefix.session_id, tuple(prefix_ids), tuple(tail_ids), truncated)
        rgb, ids = self._image_inputs(prefix)
        return Request(prefix.session_id, tuple(prefix_ids), tuple(tail_ids), truncated, rgb, ids)

    # -- forward ------------------------------------------------------------------------------------

    async def _generate(self, prompt: dict[str, Any], params: Any, session_id: str) -> Any:
        request_id = f"{session_id}#{next(self._request_ids)}"
        final = None
        try:
            async for out in self.engine.generate(prompt, params, request_id):
                final = out
        except Exception as exc:
            raise EngineError(f"vLLM failed request {request_id}: {exc}") from exc
        if final is None:
            raise EngineError(f"vLLM returned nothing for request {request_id}")
        return final

    async def _score(self, prefix: Prefix) -> Score:
        request = self.encode(prefix)
        prompts = request.prompts(self.reader.probe)
        outputs = await asyncio.gather(*(self._generate(p, self.params, prefix.session_id) for p in prompts))
        sent = sum(len(p["prompt_token_ids"]) for p in prompts)
        cached = sum(int(out.num_cached_tokens or 0) for out in outputs)
        telemetry.engine_prompt_tokens.add(sent, {"guard": self.name})
        telemetry.engine_cached_tokens.add(cached, {"guard": self.name})
        probs = self.reader.from_rows([logprob_row(out) for out in outputs])
        score = label_score(probs, request.tokens, sent - cached, request.truncated)
        return replace(score, extra={**score.extra, "tokens_cached": float(cached)})

    async def score_one(self, prefix: Prefix) -> Score:
        """One score, on the engine loop; waits while another score of the same session is in flight."""
        turn = self._turns.setdefault(prefix.session_id, _Turn())
        turn.users += 1
        try:
            async with turn.lock:
                return await self._score(prefix)
        finally:
            turn.users -= 1
            if not turn.users:
                del self._turns[prefix.session_id]

    async def _score_all(self, batch: Sequence[Prefix]) -> list[Score]:
        return list(await asyncio.gather(*(self.score_one(p) for p in batch)))

    async def ascore(self, batch: Sequence[Prefix]) -> list[Score]:
        """`score` as a coroutine, from any event loop."""
        if asyncio.get_running_loop() is self.loop.loop:
            return await self._score_all(batch)
        return await asyncio.wrap_future(self.loop.submit(self._score_all(batch)))

    def score(self, batch: Sequence[Prefix]) -> list[Score]:
        if not batch:
            return []
        return self.loop.run(self._score_all(batch))

    # -- state and audit ----------------------------------------------------------------------------

    def forget(self, session_ids: Iterable[str]) -> None:
        """The engine's cache is addressed by content and evicts least-recently-used blocks itself; only
        the image memo is per session."""
        for sid in session_ids:
            self._images.pop(sid, None)

    async def _explain(self, prefix: Prefix) -> str:
        images = len(prefix.images) if self.vision else 0
        rendered = self.template.render(prefix, self._special, images=images)
        ids = tuple(self._ids(rendered.content + self.template.explain_suffix(prefix)))
        media = self._image_inputs(prefix) if images else ((), ())
        prompt = Request(prefix.session_id, ids, (), prefix.truncated, *media).prompts(())[0]
        out = await self._generate(prompt, self.explain_params, prefix.session_id)
        return str(self.tokenizer.decode(list(out.outputs[0].token_ids), skip_special_tokens=True)).strip()

    def explain(self, prefix: Prefix) -> str | None:
        """The judge's own analysis, decoded greedily (audit path only, never the hot path)."""
        return self.loop.run(self._explain(prefix))

    def close(self) -> None:
        async def shutdown() -> None:  # on its loop: it cancels the engine's output-handler task
            self.engine.shutdown()

        self.loop.run(shutdown())
        self.loop.close()
