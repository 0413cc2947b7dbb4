"""The scoring core shared by the worker and `qta-monitor eval`: fold chunks into sessions, schedule
re-scores, score one cross-session batch with the guard (in an executor thread this object owns), apply the
policy, claim aborts, save state. No Kafka here: chunks come in as `Incoming`, events go out in a
`StepResult` for the caller to publish.

A step is all-or-nothing for the in-memory state: it works on a copy of the live sessions and keeps it only
when the step finished, so a step that failed on the store can simply be run again with the same input."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from monitor import telemetry
from monitor.core.policy import action_for, decide, scored_part, should_escalate
from monitor.core.ports import SessionStore
from monitor.core.prefixes import PrefixBuilder
from monitor.core.schedule import plan, score_before
from monitor.core.session import (
    FoldLimits,
    Rejected,
    ScorePoint,
    SessionState,
    expire,
    fold,
    is_clean,
    mark_aborted,
    mark_saved,
    mark_scored,
    mark_steered,
    revive,
)
from monitor.guards.base import Guard, Prefix, Score
from monitor.images import ImageError
from monitor.messages import (
    Abort,
    Audit,
    Chunk,
    DeadLetter,
    DecodeError,
    ImageRef,
    Verdict,
    dead_letter,
    encode,
    event_id,
)
from monitor.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

IDLE_EVICT_S = 120.0  # a clean session untouched this long leaves memory (it stays in the store)
EXPLAIN_KEPT = 256  # prefixes of recent aborts kept for their audit record


@dataclass(frozen=True, slots=True)
class Incoming:
    chunk: Chunk
    topic: str = ""
    partition: int = -1
    offset: int = -1


@dataclass(frozen=True, slots=True)
class StepResult:
    verdicts: list[Verdict]
    aborts: list[Abort]  # new aborts and steers
    dead_letters: list[DeadLetter]
    scored_tokens: int
    repeats: list[Abort] = field(default_factory=list)  # aborts published again: chunks came after them


@dataclass(slots=True)
class _Out:
    """What one step has to publish, gathered as it goes."""

    verdicts: list[Verdict] = field(default_factory=list)
    aborts: list[Abort] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    scored_tokens: int = 0
    forget: list[str] = field(default_factory=list)
    reabort: set[str] = field(default_factory=set)  # aborted sessions that got chunks anyway
    restarted: list[str] = field(default_factory=list)  # new epochs: guards forget the old one first


@dataclass(frozen=True, slots=True)
class _Scored:
    prefix: Prefix
    score: Score
    guard: Guard
    image_text: str
    ocr_images: int


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        store: SessionStore,
        guard: Guard,
        escalation: Guard | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        autosave: bool = True,  # the worker saves itself, after publishing (see worker.py)
    ) -> None:
        self._settings = settings
        self._store = store
        self._guard = guard
        self._escalation = escalation
        self._clock = clock
        self._autosave = autosave
        self._limits = FoldLimits.from_settings(settings)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qm-guard")
        self._live: dict[str, SessionState] = {}
        self._dirty: set[str] = set()
        self._touched: dict[str, float] = {}
        self._where: dict[str, tuple[str, int]] = {}  # session -> (topic, partition) it arrives on
        self._holds: dict[str, tuple[str, int, int]] = {}  # first offset not yet done, per session
        self._prefixes = PrefixBuilder(settings.images)  # used only in the executor thread
        self._explain: OrderedDict[str, tuple[Guard, Prefix]] = OrderedDict()

    # -- the step -------------------------------------------------------------------------------

    async def step(self, incoming: Sequence[Incoming]) -> StepResult:
        """Fold `incoming`, then score what is due (one batch) and decide; returns what to publish."""
        return await self._step(incoming, force=False)

    async def flush(self, *, resolve_gaps: bool = True) -> StepResult:
        """Score everything pending now, batch after batch (end of a replay, drain). `resolve_gaps` gives
        up on open gaps first; a draining worker leaves them for whoever owns the session next."""
        total = StepResult([], [], [], 0)
        while True:
            result = await self._step((), force=True, resolve_gaps=resolve_gaps)
            total = StepResult(
                total.verdicts + result.verdicts,
                total.aborts + result.aborts,
                total.dead_letters + result.dead_letters,
                total.scored_tokens + result.scored_tokens,
                total.repeats + result.repeats,
            )
            if not result.verdicts:
                return total

    async def _step(
        self, incoming: Sequence[Incoming], *, force: bool, resolve_gaps: bool = False
    ) -> StepResult:
        now = self._clock()
        batching = self._settings.batching
        live = dict(self._live)
        dirty: set[str] = set()
        holds = dict(self._holds)
        out = _Out()

        # 1. sessions not in memory come from the store
        wanted = {i.chunk.session_id for i in incoming} - live.keys()
        if wanted:
            for sid, state in (await self._store.load(wanted)).items():
                live[sid] = revive(state, now)

        # 2. images are checked off the event loop; a bad one is dropped from its chunk and dead-lettered
        incoming = await self._check_images(incoming, out.dead)

        # 3. fold, in arrival order per session (Kafka keeps a session's chunks in order in its partition);
        #    a session is scored first wherever a live stream would have been (stride, thinking -> answer)
        queues: dict[str, deque[Incoming]] = {}
        for item in incoming:
            queues.setdefault(item.chunk.session_id, deque()).append(item)
        while queues:
            blocked = []
            for sid, queue in list(queues.items()):
                while queue and not score_before(
                    live.get(sid) or SessionState(sid), queue[0].chunk, batching
                ):
                    self._fold(queue.popleft(), live, holds, dirty, out, now)
                if queue:
                    blocked.append(sid)
                else:
                    del queues[sid]
            for at in range(0, len(blocked), batching.max_batch):
                await self._score_and_decide(blocked[at : at + batching.max_batch], live, dirty, out)

        # 4. gaps that waited too long are given up
        for sid, state in list(live.items()):
            if state.pending:
                gone = expire(state, now, self._limits, force=resolve_gaps)
                if gone.rejected:
                    live[sid] = gone.state
                    dirty.add(sid)
                    topic, partition = self._where.get(sid, (self._settings.topics.chunks, -1))
                    out.dead += [self._dead(r, sid, topic, partition, -1) for r in gone.rejected]

        # 5. schedule one batch, 6. score it off the loop, 7. policy
        chosen = plan(live.values(), now, batching, self._settings.policy, force=force).batch
        if chosen:
            await self._score_and_decide(list(chosen), live, dirty, out)

        repeats = self._repeats(out, live)

        # keep the step: nothing above touched self until here
        if out.forget:
            await self._run(self._forget, out.forget)
        for sid in list(holds):
            if sid not in live or is_clean(live[sid]):
                del holds[sid]
        self._live, self._holds = live, holds
        self._dirty |= dirty
        if self._autosave:
            await self.save()
        telemetry.sessions_live.set(len(self._live))
        telemetry.pending_sessions.set(self.pending_sessions)
        return StepResult(out.verdicts, out.aborts, out.dead, out.scored_tokens, repeats)

    @staticmethod
    def _repeats(out: _Out, live: dict[str, SessionState]) -> list[Abort]:
        """An aborted session stays aborted: its abort again (same event id, same bytes) for a stack that
        kept streaming or came back under the same id; once per step and session."""
        fresh = {a.session_id for a in out.aborts}
        repeats = []
        for sid in sorted(out.reabort - fresh):
            record = live[sid].abort_record
            if record is None:  # aborted by a worker that kept no record of it
                log.warning("session %s is aborted but its abort was not kept; not repeated", sid)
                continue
            repeats.append(Abort.model_validate_json(record))
        return repeats

    def _fold(
        self,
        item: Incoming,
        live: dict[str, SessionState],
        holds: dict[str, tuple[str, int, int]],
        dirty: set[str],
        out: _Out,
        now: float,
    ) -> None:
        chunk, sid = item.chunk, item.chunk.session_id
        telemetry.chunks.add(1, {"part": chunk.part})
        folded = fold(live.get(sid) or SessionState(sid), chunk, now, self._limits, item.offset)
        if folded.ignored != "duplicate" or folded.rejected:
            live[sid] = folded.state
            dirty.add(sid)
        if folded.reabort:
            out.reabort.add(sid)
        if folded.restarted:
            log.warning(
                "session %s restarted (seq 1 again, other content): epoch %d is scored from scratch",
                sid,
                folded.state.epoch,
            )
            telemetry.sessions_restarted.add(1)
            out.restarted.append(sid)
        self._where[sid] = (item.topic, item.partition)
        self._touched[sid] = now
        # a question folded in order is done once saved; anything else waits for its score
        settled = chunk.part == "question" and not folded.state.pending
        if item.offset >= 0 and sid not in holds and not settled:
            holds[sid] = (item.topic, item.partition, item.offset)
        out.dead += [self._dead(r, sid, item.topic, item.partition, item.offset) for r in folded.rejected]

    async def _score_and_decide(
        self, chosen: list[str], live: dict[str, SessionState], dirty: set[str], out: _Out
    ) -> None:
        if out.restarted:  # an incremental guard must not extend what it held for the old epoch
            await self._run(self._forget, out.restarted)
            out.restarted = []
        results: list[_Scored] = await self._run(self._score, [live[sid] for sid in chosen])
        for sid, done in zip(chosen, results, strict=True):
            verdict, abort, state = await self._decide(live[sid], done)
            live[sid] = state
            dirty.add(sid)
            out.verdicts.append(verdict)
            out.scored_tokens += done.score.tokens_read
            if abort is not None:
                out.aborts.append(abort)
                if abort.action == "abort":
                    out.forget.append(sid)

    async def _decide(self, state: SessionState, done: _Scored) -> tuple[Verdict, Abort | None, SessionState]:
        policy = self._settings.policy
        score, sid, seq, epoch = done.score, state.session_id, state.folded_seq, state.epoch
        part = scored_part(state.part, bool(state.answer))
        end = state.part == "end"  # the score of the session's `end`: an abort now comes after the response
        decision = decide(policy, state.policy, score, part, state.tokens - state.steer_tokens, end=end)
        point = ScorePoint(seq, score.p_harmful, score.label, done.guard.name)
        state = replace(state, image_text=done.image_text, ocr_images=done.ocr_images)
        state = mark_scored(state, point, decision.state)
        verdict = Verdict(
            event_id=event_id("verdict", sid, seq, epoch),
            session_id=sid,
            seq=seq,
            part=state.part,
            tokens=state.total_tokens,
            tokens_read=score.tokens_read,
            p_safe=score.p_safe,
            p_potential=score.p_potential,
            p_harmful=score.p_harmful,
            label=score.label,
            category=score.category,
            guard=done.guard.name,
            ema=decision.state.ema,
            status=decision.status,
            truncated=state.truncated,
            degraded=state.degraded,
            chunk_ts=state.chunk_ts,
            epoch=epoch,
        )
        if decision.status != "abort":
            return verdict, None, state
        # One steer at most: a session that trends harmful again after it is aborted.
        action = action_for(policy, state.model, state.tenant) if state.steer_event_id is None else "abort"
        kind = action + (f":{epoch}" if epoch else "")
        eid = event_id(action, sid, seq, epoch)
        if not await self._store.claim_abort(sid, eid, kind):
            # Another worker (or this session before a crash) claimed it first. Re-publish under the
            # claimed id: if it was published, consumers drop it as a duplicate; if the publish was lost,
            # this is it. Either way there is one abort (and one steer) event id per session.
            eid = await self._store.claimed_abort(sid, kind) or eid
        abort = Abort(
            event_id=eid,
            session_id=sid,
            seq=seq,
            part=state.part,
            action=action,
            label=score.label,
            score=score.p_harmful,
            category=score.category,
            rule=decision.rule or "unknown",
            guard=done.guard.name,
            steer_prompt=policy.steer_prompt if action == "steer" else None,
            model=state.model,
            tenant=state.tenant,
            request_id=state.request_id,
            chunk_ts=state.chunk_ts,
            epoch=epoch,
            final=decision.final,
        )
        self._explain[eid] = (done.guard, done.prefix)
        while len(self._explain) > EXPLAIN_KEPT:
            self._explain.popitem(last=False)
        if action == "steer":
            return verdict, abort, mark_steered(state, eid)
        return verdict, abort, mark_aborted(state, eid, encode(abort).decode())

    def _dead(self, rejected: Rejected, sid: str, topic: str, partition: int, offset: int) -> DeadLetter:
        raw = encode(rejected.chunk) if rejected.chunk is not None else b""
        error = DecodeError(rejected.reason, rejected.error, sid)
        return dead_letter(
            error, raw, topic=topic or self._settings.topics.chunks, partition=partition, offset=offset
        )

    # -- off the event loop (the one executor thread that owns the guard) -----------------------

    async def _run(self, fn: Callable[[T], Any], arg: T) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, arg)

    async def _check_images(self, incoming: Sequence[Incoming], dead: list[DeadLetter]) -> Sequence[Incoming]:
        if not any(i.chunk.images for i in incoming):
            return incoming
        checks: list[list[ImageError | None]] = await self._run(
            self._prefixes.check, [i.chunk for i in incoming]
        )
        out = []
        for item, errors in zip(incoming, checks, strict=True):
            bad = [e for e in errors if e is not None]
            if bad:
                error = DecodeError(
                    "bad_image", "; ".join(f"{e.reason}: {e.error}" for e in bad), item.chunk.session_id
                )
                dead.append(
                    dead_letter(
                        error,
                        encode(item.chunk),
                        topic=item.topic or self._settings.topics.chunks,
                        partition=item.partition,
                        offset=item.offset,
                    )
                )
                kept: tuple[ImageRef, ...] = tuple(
                    r for r, e in zip(item.chunk.images, errors, strict=True) if e is None
                )
                item = replace(item, chunk=item.chunk.model_copy(update={"images": kept}))
            out.append(item)
        return out

    def _score(self, states: list[SessionState]) -> list[_Scored]:
        prepared = [self._prefixes.build(s) for s in states]
        prefixes = [p for p, _, _ in prepared]
        started = time.perf_counter()
        scores = self._guard.score(prefixes)
        telemetry.score_seconds.record(time.perf_counter() - started, {"guard": self._guard.name})
        telemetry.batch_size.record(len(prefixes), {"guard": self._guard.name})
        guards: list[Guard] = [self._guard] * len(scores)
        second = self._escalation
        if second is not None:
            band = [i for i, s in enumerate(scores) if should_escalate(self._settings.policy, s)]
            if band:
                started = time.perf_counter()
                for i, score in zip(band, second.score([prefixes[i] for i in band]), strict=True):
                    scores[i], guards[i] = score, second
                telemetry.score_seconds.record(time.perf_counter() - started, {"guard": second.name})
                telemetry.escalations.add(len(band), {"guard": second.name})
        return [
            _Scored(prefix, score, guard, text, done)
            for (prefix, text, done), score, guard in zip(prepared, scores, guards, strict=True)
        ]

    def _forget(self, session_ids: list[str]) -> None:
        self._guard.forget(session_ids)
        if self._escalation is not None:
            self._escalation.forget(session_ids)
        self._prefixes.forget(session_ids)

    # -- state, rebalance, audits ----------------------------------------------------------------

    async def save(self) -> None:
        """Persist every session changed since the last save, then let finished and idle ones go."""
        dirty = [self._live[sid] for sid in self._dirty if sid in self._live]
        conflicts = await self._store.save(dirty)
        for state in dirty:
            sid = state.session_id
            if sid in conflicts:
                # the store moved on without us (a replay, or another worker owns it now): reload next time
                log.warning("session %s changed in the store under this worker; reloading it", sid)
            else:
                self._live[sid] = mark_saved(state)
        self._dirty.clear()
        now = self._clock()
        gone = [
            sid
            for sid, s in self._live.items()
            if is_clean(s) and (s.status != "open" or now - self._touched.get(sid, now) >= IDLE_EVICT_S)
        ]
        await self._drop([*conflicts, *gone])

    async def _drop(self, session_ids: Collection[str]) -> None:
        """Let sessions go from memory (they stay in the store), with the guard's state for them."""
        for sid in session_ids:
            self._live.pop(sid, None)
            self._holds.pop(sid, None)
            self._touched.pop(sid, None)
            self._where.pop(sid, None)
        if session_ids:
            await self._run(self._forget, list(session_ids))

    async def release(self, partitions: Collection[tuple[str, int]]) -> None:
        """Partitions were revoked: save their sessions and let them go (the new owner loads them)."""
        await self.save()
        await self._drop([sid for sid, where in self._where.items() if where in partitions])

    def commit_floor(self) -> dict[tuple[str, int], int]:
        """Per partition, the lowest offset whose chunk is not yet done (folded but unscored, or waiting
        behind a gap): offsets may be committed up to it, never past it."""
        floor: dict[tuple[str, int], int] = {}
        for topic, partition, offset in self._holds.values():
            key = (topic, partition)
            floor[key] = min(offset, floor.get(key, offset))
        return floor

    @property
    def pending_sessions(self) -> int:
        return sum(not is_clean(s) for s in self._live.values())

    @property
    def live_sessions(self) -> int:
        return len(self._live)

    def wake_in_s(self) -> float:
        """How long the caller may wait for input before the next step has work of its own."""
        return plan(
            self._live.values(), self._clock(), self._settings.batching, self._settings.policy
        ).wake_in_s

    async def explain(self, abort: Abort) -> Audit | None:
        """The guard's analysis of an abort, for the audit record; None when the guard cannot explain."""
        kept = self._explain.pop(abort.event_id, None)
        if kept is None:
            return None
        guard, prefix = kept
        analysis: str | None = await self._run(guard.explain, prefix)
        if not analysis:
            return None
        return Audit(
            event_id=event_id("audit", abort.session_id, abort.seq),
            abort_event_id=abort.event_id,
            session_id=abort.session_id,
            guard=guard.name,
            analysis=analysis,
        )

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the session store answers."""
        await self._store.ping()

    async def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
