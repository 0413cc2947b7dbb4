"""`qta-monitor serve`: the scoring worker, one loop read top to bottom.

    1 poll chunks          (consumer group, manual commits)
    2 decode + fold        (bad bytes -> dead letter; folding happens inside the pipeline step)
    3 schedule             (which sessions are due; one cross-session batch)
    4 score                (the guard, in the pipeline's executor thread, off the event loop)
    5 policy               (verdicts; an abort is claimed in the store before it is published)
    6 publish              (verdicts, aborts, dead letters; acks=all)
    7 save state           (Redis, seq-checked, idempotent)
    8 commit offsets       (only up to the first chunk that is not yet scored, after 6 and 7 are durable)
    9 consumer lag         (every few seconds; monitor.edges.lag, also the readiness probe of Kafka)

Everything emitted has a deterministic event id, so a replay after a crash re-publishes the same events and
consumers dedupe by `event_id`. Backpressure pauses the partitions while too many sessions wait for a score.
Redis or Kafka down: the failing step is retried with backoff and nothing is committed meanwhile, and
/ready (monitor.edges.health) answers 503 until it is back.
SIGTERM / SIGINT: stop polling, score what is pending, publish, save, commit, exit 0."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from monitor import telemetry
from monitor.core.pipeline import Incoming, Pipeline, StepResult
from monitor.core.ports import StoreUnavailable
from monitor.edges.health import Readiness
from monitor.edges.kafka import ChunkSource, CommitRejected, EventSink, KafkaUnavailable, Message, Record
from monitor.edges.lag import LagReporter
from monitor.messages import Abort, DeadLetter, DecodeError, dead_letter, decode_chunk, encode
from monitor.settings import Settings

log = logging.getLogger("monitor.worker")
T = TypeVar("T")

POLL_MAX_RECORDS = 500
POLL_MAX_WAIT_S = 0.5  # also bounds how long a stop signal waits for the loop
BACKOFF_START_S = 0.2
BACKOFF_MAX_S = 10.0
RETRIES_WHEN_STOPPING = 3  # a stop signal while Redis/Kafka is down gives up after this many more tries
AUDIT_WAIT_S = 10.0


class Worker:
    def __init__(
        self,
        settings: Settings,
        source: ChunkSource,
        sink: EventSink,
        pipeline: Pipeline,
        stop: asyncio.Event,
        *,
        readiness: Readiness | None = None,
        lag: LagReporter | None = None,
    ) -> None:
        self._settings = settings
        self._source = source
        self._sink = sink
        self._pipeline = pipeline
        self._stop = stop
        self._readiness = readiness or Readiness()
        self._lag = lag
        self._lock = asyncio.Lock()  # a rebalance waits for the cycle in flight to finish
        self._polled: dict[tuple[str, int], int] = {}  # next offset after the newest record polled
        self._committed: dict[tuple[str, int], int] = {}
        self._paused = False
        self._audits: set[asyncio.Task[None]] = set()

    async def run(self) -> int:
        await self._retry(self._source.start)
        await self._retry(self._sink.start)
        self._readiness.up("kafka")
        await self._retry(self._pipeline.ping)
        self._readiness.up("redis")
        log.info("worker started; consuming %s", self._settings.topics.chunks)
        try:
            while not self._stop.is_set():
                await self._cycle()
            return await self._drain()
        finally:
            await self._source.stop()
            await self._sink.stop()

    async def _cycle(self) -> None:
        # 1. poll (a rebalance may run inside; its callbacks take the lock, so they never split a cycle)
        wait = min(self._pipeline.wake_in_s(), POLL_MAX_WAIT_S)
        records = await self._retry(lambda: self._source.poll(wait, POLL_MAX_RECORDS))
        async with self._lock:
            # 2. decode; folding happens in the step
            incoming, dead = self._decode(records)
            # 3-5. schedule, score off the loop, policy (aborts are claimed in the store here)
            result = await self._retry(lambda: self._pipeline.step(incoming))
            # 6. publish
            await self._publish(result, dead, records)
            # 7. save state
            await self._retry(self._pipeline.save)
            # 8. commit what is done
            await self._commit()
            self._backpressure()
        # 9. consumer lag, every few seconds
        if self._lag is not None:
            await self._lag.tick()

    def _decode(self, records: Sequence[Record]) -> tuple[list[Incoming], list[DeadLetter]]:
        incoming, dead = [], []
        for r in records:
            tp = (r.topic, r.partition)
            self._polled[tp] = max(self._polled.get(tp, 0), r.offset + 1)
            raw = r.value
            chunk = decode_chunk(raw)
            key = r.key.decode("utf-8", errors="replace") if isinstance(r.key, bytes) else r.key
            if not isinstance(chunk, DecodeError) and key is not None and key != chunk.session_id:
                chunk = DecodeError("invalid_fields", f"key {key!r} != session_id {chunk.session_id!r}", key)
            if isinstance(chunk, DecodeError):
                log.info(
                    "dead letter %s at %s/%d@%d: %s",
                    chunk.reason,
                    r.topic,
                    r.partition,
                    r.offset,
                    chunk.error,
                )
                dead.append(dead_letter(chunk, raw, topic=r.topic, partition=r.partition, offset=r.offset))
            else:
                incoming.append(Incoming(chunk, r.topic, r.partition, r.offset))
        return incoming, dead

    async def _publish(
        self, result: StepResult, dead: list[DeadLetter], records: Sequence[Record] = ()
    ) -> None:
        topics = self._settings.topics
        events: list[Message] = []
        events += [(topics.verdicts, v.session_id.encode(), encode(v)) for v in result.verdicts]
        events += [(topics.aborts, a.session_id.encode(), encode(a)) for a in result.aborts + result.repeats]
        letters = dead + result.dead_letters
        origin = {(r.topic, r.partition, r.offset): r for r in records}
        for d in letters:
            # keyed and headed as the record it came from, even bytes that never decoded; a letter with no
            # record of this cycle (a gap given up on) or a record without a key falls back to the session
            record = origin.get((d.topic, d.partition, d.offset))
            key = record.key if record is not None else None
            if key is None and d.session_id:
                key = d.session_id.encode()
            events.append((topics.dead_letters, key, encode(d), record.headers if record else ()))
        if not events:
            return
        await self._retry(lambda: self._sink.publish(events))
        now = time.time()
        for v in result.verdicts:
            telemetry.verdicts.add(1, {"status": v.status})
            telemetry.chunk_to_verdict_seconds.record(max(0.0, now - v.chunk_ts), {"status": v.status})
        for a in result.aborts:
            labels = {"rule": a.rule, "category": a.category or "none", "guard": a.guard, "action": a.action}
            telemetry.aborts.add(1, labels)
            log.warning(
                "%s session %s at seq %d (%s, p=%.2f)", a.action, a.session_id, a.seq, a.rule, a.score
            )
            task = asyncio.create_task(self._audit(a))  # off the hot path: the abort is already out
            self._audits.add(task)
            task.add_done_callback(self._audits.discard)
        for a in result.repeats:
            telemetry.aborts_repeated.add(1, {"action": a.action})
        for d in letters:
            telemetry.dead_letters.add(1, {"reason": d.reason})

    async def _audit(self, abort: Abort) -> None:
        try:
            audit = await self._pipeline.explain(abort)
            if audit is not None:
                value = encode(audit)
                await self._retry(lambda: self._sink.publish([(self._settings.topics.audits, b"", value)]))
        except Exception:  # an audit must never take the worker down
            log.exception("audit of %s failed", abort.event_id)

    async def _commit(self) -> None:
        floor = self._pipeline.commit_floor()
        offsets = {}
        for tp, polled in self._polled.items():
            target = min(polled, floor.get(tp, polled))
            if target > self._committed.get(tp, -1):
                offsets[tp] = target
        if not offsets:
            return

        async def attempt() -> bool:
            try:
                await self._source.commit(offsets)
            except CommitRejected as exc:
                # the group moved these partitions on; their new owner re-reads from the last commit
                log.warning("commit rejected after a rebalance (at-least-once holds): %s", exc)
                return False
            return True

        if await self._retry(attempt):
            self._committed.update(offsets)

    def _backpressure(self) -> None:
        pending, limit = self._pipeline.pending_sessions, self._settings.batching.max_pending_sessions
        if not self._paused and pending > limit:
            self._source.pause()
            self._paused = True
            log.warning(
                "backpressure: %d sessions wait for a score (> %d); partitions paused", pending, limit
            )
        elif self._paused and pending <= limit // 2:
            self._source.resume()
            self._paused = False
            log.info("backpressure cleared (%d pending); partitions resumed", pending)
        telemetry.partitions_paused.set(int(self._paused))

    async def on_revoked(self, partitions: frozenset[tuple[str, int]]) -> None:
        async with self._lock:
            await self._retry(lambda: self._pipeline.release(partitions))
            for tp in partitions:
                self._polled.pop(tp, None)
                self._committed.pop(tp, None)
        log.info("partitions revoked: %s", sorted(partitions))

    async def on_assigned(self, partitions: frozenset[tuple[str, int]]) -> None:
        # Sessions load from the store when their next chunk arrives; chunks not yet scored are re-read
        # from the committed offset, which never passes them.
        if self._paused:
            self._source.pause()
        log.info("partitions assigned: %s", sorted(partitions))

    async def _drain(self) -> int:
        log.info("stopping: scoring what is pending, then publishing, saving and committing")
        async with self._lock:
            result = await self._retry(lambda: self._pipeline.flush(resolve_gaps=False))
            await self._publish(result, [])
            await self._retry(self._pipeline.save)
            await self._commit()
        if self._audits:
            await asyncio.wait(self._audits, timeout=AUDIT_WAIT_S)
        log.info("drained; bye")
        return 0

    async def _retry(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run `call` until it works, backing off while Redis or Kafka is down. Nothing is committed in the
        meantime, so whatever this cycle polled is read again if the worker dies here."""
        delay, failures = BACKOFF_START_S, 0
        while True:
            try:
                result = await call()
            except (StoreUnavailable, KafkaUnavailable) as exc:
                service = "redis" if isinstance(exc, StoreUnavailable) else "kafka"
                if not exc.recoverable:
                    log.error("%s failed and retrying cannot help: %s", service, exc)
                    raise
                failures += 1
                telemetry.unavailable.add(1, {"service": service})
                self._readiness.down(service, str(exc))
                if self._stop.is_set() and failures > RETRIES_WHEN_STOPPING:
                    log.error("%s still unavailable while stopping; exiting without committing", service)
                    raise
                log.warning(
                    "%s unavailable (%s); retry %d in %.1f s, no offsets committed until it is back",
                    service,
                    exc,
                    failures,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
            else:
                if failures:
                    log.info("back after %d failed attempts", failures)
                    self._readiness.up(service)
                return result


async def serve(settings: Settings) -> int:
    """Run one worker until SIGTERM / SIGINT. Exit 0 after a clean drain, 1 when infrastructure failed."""
    logging.basicConfig(
        level=settings.telemetry.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from monitor.client.logs import quiet_client_logs
    from monitor.edges.kafka import KafkaChunkSource, KafkaEventSink
    from monitor.edges.store import RedisSessionStore
    from monitor.guards import build_guard

    quiet_client_logs()
    stop = asyncio.Event()  # set by a signal, even one that arrives while the guard is still loading
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    readiness = Readiness()  # /ready: 503 until the guard is loaded and Kafka and Redis answer
    try:
        telemetry.start(settings, readiness)
    except (
        OSError
    ) as exc:  # e.g. a second worker on the same box: run without /metrics rather than not at all
        log.warning("no /metrics endpoint on port %d: %s", settings.telemetry.metrics_port, exc)
    guard = build_guard(settings)
    escalation = None
    if settings.guard.escalate_to:
        escalation = build_guard(settings, settings.guard.escalate_to, settings.guard.escalate_path)
    log.info("guard %s loaded%s", guard.name, f", escalating to {escalation.name}" if escalation else "")
    readiness.up("guard")
    store = RedisSessionStore(settings)
    pipeline = Pipeline(settings, store, guard, escalation, autosave=False)
    worker: Worker | None = None

    async def revoked(partitions: frozenset[tuple[str, int]]) -> None:
        if worker is not None:
            await worker.on_revoked(partitions)

    async def assigned(partitions: frozenset[tuple[str, int]]) -> None:
        if worker is not None:
            await worker.on_assigned(partitions)

    source = KafkaChunkSource(settings, on_revoked=revoked, on_assigned=assigned)
    sink = KafkaEventSink(settings)
    lag = LagReporter(source, readiness)
    worker = Worker(settings, source, sink, pipeline, stop, readiness=readiness, lag=lag)
    try:
        return await worker.run()
    except (StoreUnavailable, KafkaUnavailable) as exc:
        log.error("worker stopped: %s", exc)
        return 1
    finally:
        await pipeline.close()
        await store.close()
