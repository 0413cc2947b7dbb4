"""`qta-monitor eval`: replay labelled sessions chunk by chunk through the worker's own `Pipeline` (session
folding, scheduling, policy, guard) and report how well the guard + policy catches harm in the stream.

In process (the default) the broker and Redis are swapped for their in-memory twins and time is simulated:
every round feeds one chunk of each live session and advances the clock by `ROUND_S`, so runs are
deterministic and as fast as the guard. `--through-kafka` (see monitor/evaluation/kafka_replay.py)
replays through the real broker and a `qta-monitor serve` subprocess instead. A producer stops a session
once its abort arrives, as a serving stack would, and closes it with `end`.

Guard scores are cached by prefix (`CachingGuard`): the policy never changes a score. `--sweep` replays
the sessions once more with a policy that never aborts, so every prefix any setting can reach is scored,
and then decides each setting from that replay's verdicts (`decided`): each session's scores folded
through `policy.decide` in order, stopping at the first abort. That is what a replay under the setting
would give, except where the scheduler's order depends on the setting (its urgency, the distance to
`abort_threshold`, orders sessions only when more are due than a batch holds); the run reports how many
sessions the decisions at the configured setting give differently from its real replay."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import time
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from monitor.core.pipeline import Incoming, Pipeline, StepResult
from monitor.core.policy import PolicyState, decide, scored_part
from monitor.core.session import estimate_tokens
from monitor.edges.store import MemorySessionStore
from monitor.evaluation import operating, report
from monitor.evaluation.datasets import Sample, compose_thinking, load_dataset
from monitor.evaluation.report import Outcome
from monitor.evaluation.sessions import Replayed, end_chunk, outcome, session_chunks
from monitor.guards.base import Guard, Prefix, Score
from monitor.messages import Abort, Verdict
from monitor.settings import PolicySettings, Settings

ROUND_S = 0.05  # simulated time between two chunks of one session (about 20 chunks/s per session)
SWEEP_PRINTED = 12  # rows of the sweep table printed (report.md holds them all)
SAMPLE_SEED = 13  # --limit draws the same sessions on every run


def decided(policy: PolicySettings, r: Replayed) -> Replayed:
    """`r` (replayed under a policy that never aborts) as `policy` would have left it: its verdicts folded
    through `decide` in order, up to and including the first abort, which becomes its abort."""
    tokens_at: dict[int, int] = {}
    answer_at: dict[int, bool] = {}
    tokens, answer = 0, False
    for planned in r.plan:
        c = planned.chunk
        if c.part in ("thinking", "answer"):
            tokens += estimate_tokens(c.text)
        answer = answer or (c.part == "answer" and bool(c.text))
        tokens_at[c.seq], answer_at[c.seq] = tokens, answer
    state = PolicyState()
    verdicts: list[Verdict] = []
    for v in r.verdicts:
        score = Score(v.p_safe, v.p_potential, v.p_harmful, v.label, v.tokens_read, v.category)
        part = scored_part(v.part, answer_at.get(v.seq, False))
        d = decide(policy, state, score, part, tokens_at.get(v.seq, 0), end=v.part == "end")
        state = d.state
        verdicts.append(v.model_copy(update={"status": d.status, "ema": d.state.ema}))
        if d.status == "abort":
            abort = Abort(
                event_id=f"decided-{v.session_id}",
                session_id=v.session_id,
                seq=v.seq,
                part=v.part,
                label=v.label,
                score=v.p_harmful,
                category=v.category,
                rule=d.rule or "unknown",
                guard=v.guard,
                chunk_ts=v.chunk_ts,
                final=d.final,
            )
            return Replayed(r.sample, r.set, r.plan, verdicts, abort)
    return Replayed(r.sample, r.set, r.plan, verdicts, None)


class CachingGuard:
    """A guard wrapper that remembers scores by prefix shape, so replays with other policy settings do not
    run the model again. A stateful (KV-cache) guard behind it is told to `forget` a session before it is
    asked about a shorter prefix than last time, as a new replay starts each session from the beginning."""

    def __init__(self, inner: Guard) -> None:
        self.inner = inner
        self.name = inner.name
        self._scores: dict[tuple[Any, ...], Score] = {}
        self._reach: dict[str, int] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _key(p: Prefix) -> tuple[Any, ...]:
        return (p.session_id, len(p.question), len(p.thinking), len(p.answer), len(p.images), p.part)

    def score(self, batch: Sequence[Prefix]) -> list[Score]:
        missing = [p for p in batch if self._key(p) not in self._scores]
        self.hits += len(batch) - len(missing)
        self.misses += len(missing)
        if missing:
            behind = [p.session_id for p in missing if self._size(p) < self._reach.get(p.session_id, 0)]
            if behind:
                self.inner.forget(behind)
            for p, s in zip(missing, self.inner.score(missing), strict=True):
                self._scores[self._key(p)] = s
                self._reach[p.session_id] = self._size(p)
        return [self._scores[self._key(p)] for p in batch]

    @staticmethod
    def _size(p: Prefix) -> int:
        return len(p.question) + len(p.thinking) + len(p.answer)

    def forget(self, session_ids: Iterable[str]) -> None:
        ids = list(session_ids)
        for sid in ids:
            self._reach.pop(sid, None)
        self.inner.forget(ids)

    def explain(self, prefix: Prefix) -> str | None:
        return self.inner.explain(prefix)


class SimClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def replay(
    settings: Settings,
    guard: Guard,
    sessions: Sequence[tuple[str, Sample]],
    chunk_chars: int,
    progress: tqdm[Any] | None = None,
) -> list[Replayed]:
    """Replay (set name, sample) pairs through one in-process Pipeline; `4 * max_batch` sessions are live
    at a time, so the scheduler forms cross-session batches as it does in the worker."""
    clock = SimClock()
    pipeline = Pipeline(settings, MemorySessionStore(settings), guard, clock=clock)
    replayed = {
        f"eval-{i}": Replayed(s, name, session_chunks(s, f"eval-{i}", chunk_chars))
        for i, (name, s) in enumerate(sessions)
    }
    waiting = deque(replayed)
    live: dict[str, int] = {}  # session id -> index of its next chunk in the plan
    width = 4 * settings.batching.max_batch

    def collect(result: StepResult) -> None:
        for v in result.verdicts:
            replayed[v.session_id].verdicts.append(v)
        for a in result.aborts:
            replayed[a.session_id].abort = replayed[a.session_id].abort or a

    try:
        while waiting or live:
            while waiting and len(live) < width:
                live[waiting.popleft()] = 0
            incoming = []
            for sid, index in list(live.items()):
                r = replayed[sid]
                planned = r.plan[index] if r.abort is None else end_chunk(r, index + 1)
                incoming.append(Incoming(planned.chunk))
                if planned.chunk.part == "end":
                    del live[sid]
                    if progress is not None:
                        progress.update(1)
                else:
                    live[sid] = index + 1
            collect(await pipeline.step(incoming))
            clock.now += ROUND_S
        collect(await pipeline.flush())
    finally:
        await pipeline.close()
    return list(replayed.values())


def load_sets(paths: Sequence[Path], limit: int | None) -> tuple[list[tuple[str, Sample]], list[str]]:
    """(set name, sample) pairs of every path (a seeded sample of `limit` per set) and the composed sets.

    A set with responses but no traces is evaluated twice: as it is (question + answer), and as
    `<name>+composed`, the response moved into the thinking and a refusal as the answer
    (`datasets.compose_thinking`), which is the case a trace monitor exists for."""
    sessions: list[tuple[str, Sample]] = []
    composed: list[str] = []
    names: set[str] = set()
    for path in paths:
        samples = load_dataset(path)
        if limit is not None and len(samples) > limit:
            keep = sorted(random.Random(SAMPLE_SEED).sample(range(len(samples)), limit))
            samples = [samples[i] for i in keep]
        name = path.name.removesuffix(".gz").removesuffix(".jsonl").removesuffix(".json") or str(path)
        while name in names:
            name += "'"
        names.add(name)
        if any(s.composed for s in samples):
            composed.append(name)
        sessions += [(name, s) for s in samples]
        if not any(s.thinking for s in samples) and any(s.answer for s in samples):
            composed.append(f"{name}+composed")
            sessions += [(f"{name}+composed", s) for s in compose_thinking(samples)]
    return sessions, composed


async def evaluate(
    settings: Settings,
    guard: Guard,
    sessions: Sequence[tuple[str, Sample]],
    *,
    positive: float,
    chunk_chars: int,
    sweep: bool,
) -> tuple[list[Outcome], list[dict[str, Any]]]:
    """The in-process evaluation: outcomes of the configured settings, and the sweep rows if asked."""
    cached = CachingGuard(guard)
    with tqdm(total=len(sessions), desc="eval", unit="session") as bar:
        outcomes = [outcome(r) for r in await replay(settings, cached, sessions, chunk_chars, bar)]
    rows: list[dict[str, Any]] = []
    if sweep:  # every prefix scored once under a policy that never aborts, then each setting decided
        full = await replay(operating.never_abort(settings), cached, sessions, chunk_chars)
        check = [outcome(decided(settings.policy, r)) for r in full]
        differ = sum(
            (a.aborted, a.abort_chars) != (b.aborted, b.abort_chars)
            for a, b in zip(check, outcomes, strict=True)
        )
        print(
            f"sweep: decisions at the configured setting differ from its replay in {differ} of "
            f"{len(outcomes)} sessions (aborted, or where)"
        )
        for point in tqdm(operating.grid(settings), desc="sweep", unit="setting"):
            policy = operating.apply(settings, point).policy
            rows.append(operating.row(point, [outcome(decided(policy, r)) for r in full], positive))
    return outcomes, rows


def write_report(
    out: Path,
    outcomes: Sequence[Outcome],
    rows: list[dict[str, Any]],
    composed: Sequence[str],
    positive: float,
    run: dict[str, Any],
    ceilings: dict[str, float] | None = None,
    loso: bool = False,
) -> dict[str, Any]:
    """report.json, report.md and the plots under `out` (with a sweep: the operating point chosen under
    `ceilings` and its plot; with `loso` too, the leave-one-source-out choice, `operating.loso`, and its
    plot); returns the report."""
    result = report.build(outcomes, positive, composed)
    result["run"] = {**run, "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    out.mkdir(parents=True, exist_ok=True)
    plots = report.write_plots(outcomes, result, out)
    if rows:
        rows.sort(key=report.sweep_order)
        result["sweep"] = rows
        chosen = operating.choose(rows, ceilings or {})
        result["operating_point"] = {"ceilings": ceilings or {}, "chosen": chosen}
        plots.append(operating.plot(rows, chosen, ceilings or {}, out))
        if loso:
            result["loso"] = operating.loso(rows, ceilings or {})
            if result["loso"] is not None and result["loso"]["chosen"] is not None:
                plots.append(operating.loso_plot(result["loso"], out))
    result["plots"] = [p.name for p in plots]
    (out / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "report.md").write_text(report.markdown(result, rows))
    return result


def run_eval(
    settings: Settings,
    paths: list[Path],
    guard: str | None,
    out: Path,
    positive: float,
    chunk_chars: int,
    limit: int | None,
    sweep: bool,
    through_kafka: bool,
    ceilings: dict[str, float] | None = None,
    loso: bool = False,
) -> int:
    """`qta-monitor eval PATH... --guard NAME --out DIR`: writes report.json, report.md and PNG plots."""
    from monitor.guards import build_guard

    started = time.perf_counter()
    sessions, composed = load_sets(paths, limit)
    if not sessions:
        print("qta-monitor eval: no sessions in the given paths")
        return 2
    rows: list[dict[str, Any]] = []
    if through_kafka:
        from monitor.evaluation.kafka_replay import evaluate_through_kafka

        if sweep:
            print("qta-monitor eval: --sweep replays in process only; it is ignored with --through-kafka")

        outcomes = asyncio.run(evaluate_through_kafka(settings, guard, sessions, chunk_chars))
        mode = "the real broker, Redis and a `qta-monitor serve` worker"
        guard_name = guard or settings.guard.name
    else:
        model = build_guard(settings, guard)
        outcomes, rows = asyncio.run(
            evaluate(settings, model, sessions, positive=positive, chunk_chars=chunk_chars, sweep=sweep)
        )
        mode, guard_name = "the in-process pipeline (simulated clock)", model.name
    run = {
        "guard": guard_name,
        "mode": mode,
        "chunk_chars": chunk_chars,
        "limit_per_set": limit,
        "paths": [str(p) for p in paths],
        "policy": settings.policy.model_dump(mode="json"),
        "batching": settings.batching.model_dump(mode="json"),
        "elapsed_s": round(time.perf_counter() - started, 2),
    }
    result = write_report(out, outcomes, rows, composed, positive, run, ceilings, loso)
    if rows:
        print(report.sweep_table(rows[:SWEEP_PRINTED]))
        print(f"(best {min(SWEEP_PRINTED, len(rows))} of {len(rows)} settings; all in {out / 'report.md'})")
        chosen = result["operating_point"]["chosen"]
        if chosen is None:
            print(f"no setting keeps the false aborts under {ceilings}")
        else:
            knobs = ", ".join(f"{k}={chosen[k]}" for k in operating.KNOBS)
            print(
                f"operating point under {ceilings or 'no ceilings'}: {knobs} "
                f"({chosen['harmful_aborted']} harmful sessions aborted)"
            )
    if result.get("loso"):
        print(report.loso_table(result["loso"]))
    o = result["overall"]
    print(
        f"{o['sessions']} sessions: precision {o['precision']:.3f} recall {o['recall']:.3f} f1 {o['f1']:.3f} "
        f"false aborts {o['false_abort_rate']:.3f} before answer {o['abort_before_answer_rate']:.3f} -> {out}"
    )
    return 0
