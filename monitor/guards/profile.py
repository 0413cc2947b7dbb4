"""`ProfileGuard` (guard name `profile`): a stand-in for a GPU judge whose batch latency follows a measured
profile, so that many "GPU workers" fit on one CPU box for scale-out and soak runs. It computes nothing: it
sleeps (releasing the GIL, as a CUDA call does) for

    fixed_s + per_token_s * (tokens forwarded by the batch)

where a prefix forwards what an incremental judge with a KV cache forwards (monitor/guards/judge.py): its
whole text plus the template head the first time a session is seen, afterwards only the characters added
since its last score, plus the template suffix each time. Tokens are characters / 4
(monitor.core.session.CHARS_PER_TOKEN). Per-session state (the characters "cached") is bounded like a KV
budget: the least recently scored sessions are dropped first and re-forward their whole prefix when they
return.

Default profile: the H100 run of `bench/gpu_judge.py` in BENCHMARKS.md ("GPU: causal-LM judge"; Qwen2 with
Qwen2.5-0.5B's geometry, bf16, sessions of 2,048 tokens, 16 new + 24 suffix tokens per score). A least-squares
line through its batch 16 / 64 / 256 rows (15.7 / 26.8 / 82.0 ms per batch of 640 / 2,560 / 10,240
tokens) gives 10.2 ms per batch plus 7.0 us per token (within 5 % of each row); at batch 1 the H100 measured
16 ms p50, launch-bound, where the line says 10.5 ms. Another card or model is a JSON file with the same
keys, named by `guard.path` (`MONITOR_GUARD__PATH=profile.json`); missing keys keep the defaults, and
`scale` multiplies both costs (2.0: a card half as fast). Example:

    {"fixed_s": 0.0102, "per_token_s": 7.0e-06, "head_tokens": 64, "suffix_tokens": 24, "scale": 1.0}

Labels follow a deterministic rule, not a model: a prefix is harmful (p_harmful `harmful_p`, label 1) when
its response so far contains one of `markers`, or when its question is the question of a bundled sample
labelled harmful (monitor/samples/sessions.jsonl) and some response has arrived; otherwise it is safe
(p_harmful `safe_p`). So benchmark traffic chooses which sessions abort, and the bundled fault-test sessions
(tests/integration/mixed_replay.py) abort exactly when their label says."""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from monitor.guards.base import Prefix, Score

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "sessions.jsonl"
CHARS_PER_TOKEN = 4  # monitor.core.session's estimate; imported by value so this module stays import-light
MARKER = "qta-harm-marker"  # no natural text contains it: the load generators put it where harm starts


class ProfileError(ValueError):
    """The profile file is missing, not JSON, or has an unknown or out-of-range key."""


@dataclass(frozen=True, slots=True)
class Profile:
    fixed_s: float = 0.0102  # per batch (kernel launches, the template suffix's set-up)
    per_token_s: float = 7.0e-6  # per token forwarded
    head_tokens: int = 64  # the judge template before the question, forwarded once per session
    suffix_tokens: int = 24  # the template after the trace, forwarded at every score and cut off again
    scale: float = 1.0  # multiplies both costs: 2.0 is a device half as fast
    max_sessions: int = 100_000  # sessions whose cached length is kept (the KV budget, in sessions)
    markers: tuple[str, ...] = (MARKER,)
    harmful_p: float = 0.95  # above policy.abort_threshold (0.9), below strong_abort_threshold (0.97)
    safe_p: float = 0.02

    def __post_init__(self) -> None:
        if min(self.fixed_s, self.per_token_s, self.scale) < 0 or not 0 <= self.safe_p <= self.harmful_p <= 1:
            raise ProfileError(f"profile values out of range: {self}")
        if min(self.head_tokens, self.suffix_tokens) < 0 or self.max_sessions < 1:
            raise ProfileError(f"profile token counts out of range: {self}")

    def batch_seconds(self, tokens: int) -> float:
        return self.scale * (self.fixed_s + self.per_token_s * tokens)

    @classmethod
    def read(cls, path: Path) -> Profile:
        try:
            data: Any = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ProfileError(f"guard profile {path}: {exc}") from exc
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) - known:
            unknown = sorted(set(data) - known) if isinstance(data, dict) else data
            raise ProfileError(f"guard profile {path}: unknown keys {unknown}; known: {sorted(known)}")
        if "markers" in data:
            data["markers"] = tuple(data["markers"])
        try:
            return replace(cls(), **data)
        except TypeError as exc:
            raise ProfileError(f"guard profile {path}: {exc}") from exc


def harmful_questions(samples: Path = SAMPLES) -> frozenset[str]:
    """The questions of the bundled samples labelled harmful (label 1)."""
    rows = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines() if line.strip()]
    return frozenset(r["question"].strip() for r in rows if r.get("label") == 1)


class ProfileGuard:
    """Sleeps for the profile's batch time and labels by marker words or the bundled samples' labels."""

    name = "profile"

    def __init__(self, profile: Profile | None = None, questions: frozenset[str] | None = None) -> None:
        self.profile = profile or Profile()
        self._questions = harmful_questions() if questions is None else questions
        self._cached: OrderedDict[str, int] = OrderedDict()  # session -> characters "in its KV cache"
        self.batches = 0
        self.tokens_forwarded = 0
        self.seconds_slept = 0.0

    @classmethod
    def load(cls, path: Path | None = None) -> ProfileGuard:
        return cls(Profile.read(path) if path is not None else None)

    def forwarded(self, prefix: Prefix) -> int:
        """Tokens this prefix forwards now, and remember its length (pure bookkeeping, no sleep)."""
        length = len(prefix.question) + len(prefix.image_text) + len(prefix.thinking) + len(prefix.answer)
        cached = self._cached.pop(prefix.session_id, None)
        head = 0
        if cached is None or cached > length or prefix.truncated:  # new, restarted or cut: from the start
            cached, head = 0, self.profile.head_tokens
        self._cached[prefix.session_id] = length
        while len(self._cached) > self.profile.max_sessions:
            self._cached.popitem(last=False)
        return head + math.ceil((length - cached) / CHARS_PER_TOKEN) + self.profile.suffix_tokens

    def label(self, prefix: Prefix) -> Score:
        response = prefix.thinking + prefix.answer
        harmful = any(m in response for m in self.profile.markers) or (
            bool(response) and prefix.question.strip() in self._questions
        )
        p = self.profile.harmful_p if harmful else self.profile.safe_p
        tokens = math.ceil((len(prefix.question) + len(response)) / CHARS_PER_TOKEN)
        return Score.from_probs(max(0.0, 1.0 - p - 0.01), 0.01, p, tokens, "profile" if harmful else None)

    def score(self, batch: Sequence[Prefix]) -> list[Score]:
        counts = [self.forwarded(p) for p in batch]
        seconds = self.profile.batch_seconds(sum(counts))
        time.sleep(seconds)  # the device is busy; the GIL is free, as during a CUDA call
        self.batches += 1
        self.tokens_forwarded += sum(counts)
        self.seconds_slept += seconds
        # tokens_read is what the judge forwarded: the figure capacity planning multiplies by its cost
        return [replace(self.label(p), tokens_read=n) for p, n in zip(batch, counts, strict=True)]

    def forget(self, session_ids: Iterable[str]) -> None:
        for sid in session_ids:
            self._cached.pop(sid, None)

    def explain(self, prefix: Prefix) -> str | None:
        return None
