"""The SDK a serving stack uses: `TracePublisher` sends a generation's question, thinking and answer as
chunks; `AbortSubscriber` tells it when the monitor aborts (or steers) a session; `MonitorHealth` tells it
when the monitor is not watching; `monitored_stream` does all three around an OpenAI-compatible streaming
chat completion. `SyncTracePublisher`, `SyncAbortSubscriber` and `SyncMonitorHealth` are the same for code
without an event loop, each running the async one on its own loop thread.

    async with TracePublisher(settings) as publisher, AbortSubscriber(settings) as subscriber:
        session = publisher.session(model="qwen3-8b", tenant="acme", request_id=request.id)
        await session.question(prompt)
        stream = monitored_stream(await client.chat.completions.create(..., stream=True), session, subscriber)
        async for chunk in stream:
            ...                                  # stops early once the monitor aborts the session
        if stream.abort is not None: ...         # the Abort (or steer) event

A session id is single-use: `session()` hands out a fresh one, and refuses (`SessionIdReused`) an id it
has handed out before. Chunks are sent without waiting for each acknowledgement (the producer is
idempotent with acks=all, so order and no duplicates are the broker's job); a failed delivery raises
`PublishError` at the next call, and `end()` / `flush()` wait for every acknowledgement, at most
`timeout_s`."""

from __future__ import annotations

import asyncio
import base64
import functools
import math
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from monitor.edges import EventSink, KafkaUnavailable
from monitor.kafka import MAX_MESSAGE_BYTES, connect_failed, connection_kwargs, partitions_of
from monitor.messages import Abort, Chunk, ImageRef, Part, Verdict, decode_abort, encode
from monitor.sdk_stream import MonitoredStream, deltas, monitored_stream
from monitor.settings import Settings, load_settings
from monitor.watch import EventTail, WatchError

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")
P = ParamSpec("P")
__all__ = [
    "AbortSubscriber", "AbortWatch", "MonitorHealth", "MonitoredStream", "PublishError", "SessionHandle",
    "SessionIdReused", "SubscribeError", "SyncAbortSubscriber", "SyncAbortWatch", "SyncMonitorHealth",
    "SyncTracePublisher", "TracePublisher", "deltas", "monitored_stream",
]  # fmt: skip
ImageLike = ImageRef | bytes | str | Path  # bytes: inline image; str / Path: a file path or URI
MAX_ID = 256  # characters of a session id or request id, as chunk.schema.json allows


class PublishError(Exception):
    """A chunk could not be delivered (or acknowledged) within the publisher's timeout."""


class SessionIdReused(PublishError):
    """`session()` was given an id this publisher has handed out before. A session id is single-use: the
    worker keeps an aborted session aborted and scores a restarted one as a new epoch, so a retried
    request needs a new id (the stack's own request id goes in `request_id`)."""


class SubscribeError(Exception):
    """The aborts (or verdicts) topic cannot be read (broker unreachable, topic missing)."""


def _remember(memory: OrderedDict[K, V], key: K, value: V, limit: int) -> None:
    memory[key] = value
    memory.move_to_end(key)
    while len(memory) > limit:
        memory.popitem(last=False)


def _image(image: ImageLike) -> ImageRef:
    if isinstance(image, ImageRef):
        return image
    if isinstance(image, bytes):
        return ImageRef(data=base64.b64encode(image).decode("ascii"))
    return ImageRef(uri=str(image))


class SessionHandle:
    """One generation: numbers its chunks from 1, keys them by `session_id` and carries `request_id`."""

    def __init__(
        self,
        publisher: TracePublisher,
        session_id: str,
        model: str | None,
        tenant: str | None,
        request_id: str | None = None,
    ) -> None:
        self.publisher = publisher
        self.session_id = session_id
        self.model = model
        self.tenant = tenant
        self.request_id = request_id
        self.seq = 0
        self.ended = False

    async def question(self, text: str, images: Iterable[ImageLike] = ()) -> None:
        await self._emit("question", text, tuple(_image(i) for i in images))

    async def thinking(self, delta: str) -> None:
        await self._emit("thinking", delta)

    async def answer(self, delta: str) -> None:
        await self._emit("answer", delta)

    async def end(self) -> None:
        """Close the session and wait until all its chunks are acknowledged. A second call does nothing."""
        if not self.ended:
            await self._emit("end", "")
            self.ended = True
            await self.publisher.flush()

    async def _emit(self, part: Part, text: str, images: tuple[ImageRef, ...] = ()) -> None:
        if self.ended:
            raise PublishError(f"session {self.session_id} has ended; no more chunks")
        self.seq += 1
        chunk = Chunk(
            session_id=self.session_id,
            seq=self.seq,
            part=part,
            text=text,
            images=images,
            model=self.model,
            tenant=self.tenant,
            request_id=self.request_id,
        )
        await self.publisher.send(chunk)


class TracePublisher:
    """Publishes chunks to the chunks topic. Pass `sink` (e.g. a MemoryEventSink) to publish through an
    EventSink instead of the built-in producer; each chunk then waits for its acknowledgement. The last
    `remember_sessions` session ids handed out are kept, to refuse them a second time."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        sink: EventSink | None = None,
        timeout_s: float | None = None,
        linger_ms: int = 5,
        remember_sessions: int = 100_000,
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.topic = self.settings.topics.chunks
        self.timeout_s = timeout_s if timeout_s is not None else self.settings.kafka.request_timeout_s
        self.linger_ms = linger_ms
        self.remember_sessions = remember_sessions
        self._sink = sink
        self._producer: Any = None
        self._pending: set[asyncio.Future[Any]] = set()
        self._failure: PublishError | None = None
        self._handed_out: OrderedDict[str, None] = OrderedDict()

    def _where(self) -> str:
        return f"{self.topic} at {self.settings.kafka.bootstrap}"

    async def start(self) -> None:
        """Connect and check that the chunks topic exists; PublishError within `timeout_s` otherwise."""
        if self._sink is not None:
            await self._sink.start()
            return
        self._producer = AIOKafkaProducer(
            **{**connection_kwargs(self.settings.kafka), "request_timeout_ms": int(self.timeout_s * 1000)},
            acks="all",
            enable_idempotence=True,
            linger_ms=self.linger_ms,
            max_request_size=MAX_MESSAGE_BYTES,
        )
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._producer.start()
                # A producer sending to a missing topic retries its metadata until the timeout and logs
                # every try: ask once, as the subscriber does, and say what to run.
                exists = bool(await partitions_of(self.settings, self.topic))
        except (KafkaError, KafkaUnavailable, TimeoutError) as exc:
            await self._producer.stop()
            self._producer = None
            if isinstance(exc, KafkaUnavailable):
                raise PublishError(f"cannot look up {self._where()}: {exc}") from exc
            refused = await connect_failed(exc, "connect (publisher)", self.settings.kafka)
            if not refused.recoverable:  # a TLS / SASL refusal, named
                raise PublishError(f"cannot connect for {self._where()}: {refused}") from exc
            raise PublishError(f"cannot connect to Kafka for {self._where()}: {exc!r}") from exc
        if not exists:
            await self._producer.stop()
            self._producer = None
            raise PublishError(f"topic {self._where()} does not exist (run `qta-monitor topics apply`)")

    async def stop(self) -> None:
        """Wait for outstanding acknowledgements (at most `timeout_s`), then close."""
        try:
            await self.flush()
        finally:
            if self._sink is not None:
                await self._sink.stop()
            if self._producer is not None:
                await self._producer.stop()
                self._producer = None

    async def __aenter__(self) -> TracePublisher:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def session(
        self,
        session_id: str | None = None,
        *,
        model: str | None = None,
        tenant: str | None = None,
        request_id: str | None = None,
    ) -> SessionHandle:
        """A handle for one generation, under a fresh id unless `session_id` is given. An id handed out
        before raises SessionIdReused: a retried request is a new session (keep your id in `request_id`)."""
        sid = session_id if session_id is not None else uuid.uuid4().hex
        for name, value in (("session_id", sid), ("request_id", request_id)):
            if value is not None and not 0 < len(value) <= MAX_ID:
                raise ValueError(f"{name} must have 1 to {MAX_ID} characters, not {len(value)}")
        if sid in self._handed_out:
            raise SessionIdReused(
                f"session id {sid!r} was already handed out by this publisher; a session id is single-use "
                "(call session() without one for a fresh id, and pass your own id as request_id)"
            )
        _remember(self._handed_out, sid, None, self.remember_sessions)
        return SessionHandle(self, sid, model, tenant, request_id)

    async def send(self, chunk: Chunk) -> None:
        """Hand one chunk to the producer (raises a PublishError of an earlier delivery first)."""
        self._raise_failure()
        key, value = chunk.session_id.encode(), encode(chunk)
        what = f"chunk {chunk.seq} ({chunk.part}) of session {chunk.session_id}"
        if self._sink is not None:
            try:
                await self._sink.publish([(self.topic, key, value)])
            except KafkaUnavailable as exc:
                raise PublishError(f"{what} not delivered to {self._where()}: {exc}") from exc
            return
        if self._producer is None:
            raise PublishError(f"{what}: the publisher is not started")
        try:
            async with asyncio.timeout(self.timeout_s):
                delivery = await self._producer.send(self.topic, value=value, key=key)
        except (KafkaError, TimeoutError) as exc:
            raise PublishError(
                f"{what} not accepted for {self._where()} within {self.timeout_s}s: {exc!r}"
            ) from exc
        self._pending.add(delivery)
        delivery.add_done_callback(functools.partial(self._delivered, what))

    def _delivered(self, what: str, delivery: asyncio.Future[Any]) -> None:
        self._pending.discard(delivery)
        if not delivery.cancelled() and delivery.exception() is not None and self._failure is None:
            self._failure = PublishError(f"{what} not delivered to {self._where()}: {delivery.exception()!r}")

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def flush(self) -> None:
        """Wait until every chunk sent so far is acknowledged; PublishError after `timeout_s`."""
        if self._pending:
            _, pending = await asyncio.wait(set(self._pending), timeout=self.timeout_s)
            if pending:
                raise PublishError(
                    f"{len(pending)} chunks not acknowledged by {self._where()} within {self.timeout_s}s"
                )
        self._raise_failure()


# ------------------------------------------------------------------------------------------ sync twins
class _LoopThread:
    """An event loop on its own daemon thread: how each Sync* class runs its async original."""

    def __init__(self, name: str, timeout_s: float) -> None:
        self.timeout_s = timeout_s  # how long a call may take unless it says otherwise
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run `coro` on the loop and wait for it (`timeout_s`: math.inf waits for ever)."""
        wait = self.timeout_s if timeout_s is None else timeout_s
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout=None if wait == math.inf else wait)
        except TimeoutError:
            future.cancel()
            raise

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call a plain function on the loop thread (the async objects are not thread-safe)."""

        async def apply() -> T:
            return fn(*args, **kwargs)

        return self.run(apply())

    def open(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run the async object's start(); the loop ends with it if that fails."""
        try:
            self.run(coro)
        except BaseException:
            self.close()
            raise

    def shut(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run the async object's stop(), then end the loop."""
        try:
            self.run(coro)
        finally:
            self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


class SyncTracePublisher:
    """The same for code without an event loop: runs a TracePublisher on its own loop thread."""

    def __init__(self, settings: Settings | None = None, *, timeout_s: float | None = None) -> None:
        self._publisher = TracePublisher(settings, timeout_s=timeout_s)
        self._loop = _LoopThread("qta-publisher", self._publisher.timeout_s * 2 + 5)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run(coro)

    def start(self) -> None:
        self._loop.open(self._publisher.start())

    def close(self) -> None:
        self._loop.shut(self._publisher.stop())

    def __enter__(self) -> SyncTracePublisher:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def session(
        self,
        session_id: str | None = None,
        *,
        model: str | None = None,
        tenant: str | None = None,
        request_id: str | None = None,
    ) -> SyncSessionHandle:
        # on the loop thread, so that threads asking at once never get the same id twice
        make = functools.partial(self._publisher.session, model=model, tenant=tenant, request_id=request_id)
        return SyncSessionHandle(self, self._loop.call(make, session_id))


class SyncSessionHandle:
    def __init__(self, owner: SyncTracePublisher, handle: SessionHandle) -> None:
        self._owner = owner
        self._handle = handle
        self.session_id = handle.session_id
        self.request_id = handle.request_id

    @property
    def seq(self) -> int:
        """The seq of the last chunk sent (for `SyncMonitorHealth.sent`)."""
        return self._handle.seq

    def question(self, text: str, images: Iterable[ImageLike] = ()) -> None:
        self._owner.run(self._handle.question(text, images))

    def thinking(self, delta: str) -> None:
        self._owner.run(self._handle.thinking(delta))

    def answer(self, delta: str) -> None:
        self._owner.run(self._handle.answer(delta))

    def end(self) -> None:
        self._owner.run(self._handle.end())


# ---------------------------------------------------------------------------------------------- aborts
def _rank(event: Abort) -> tuple[int, bool]:
    """Which event of a session wins: a later epoch, then an abort over a steer (a steered session goes on
    being scored and may be aborted later); on a tie, the newer arrival."""
    return event.epoch, event.action == "abort"


class AbortWatch:
    """The newest abort or steer event of one session, other than `after` (an event the caller has already
    handled). `abort` peeks; `await aborted()` waits; `future` resolves with the first such event."""

    def __init__(self, subscriber: AbortSubscriber, session_id: str, after: str | None = None) -> None:
        self.subscriber = subscriber
        self.session_id = session_id
        self.after = after
        self.future: asyncio.Future[Abort] = asyncio.get_running_loop().create_future()
        self._newest: Abort | None = None

    def offer(self, event: Abort) -> None:
        """The subscriber hands in each event that became its session's newest."""
        if event.event_id != self.after:
            self._newest = event  # one reference assignment: SyncAbortWatch peeks it from another thread
            if not self.future.done():
                self.future.set_result(event)

    @property
    def abort(self) -> Abort | None:
        return self._newest

    async def aborted(self) -> Abort:
        """The newest event, once there is one (raises SubscribeError if the subscriber failed)."""
        first = await asyncio.shield(self.future)
        return self._newest or first

    def close(self) -> None:
        self.subscriber.unwatch(self)


class AbortSubscriber:
    """Reads the aborts topic (from its end by default; no consumer group, nothing committed) and hands
    each event to every `async for` over the subscriber and, when it is its session's newest, to the
    session's watches. Events are deduplicated by event id (the last `remember`); the newest event of the
    last `remember` sessions is kept, so a watch made after the event still sees it."""

    def __init__(
        self, settings: Settings | None = None, *, from_beginning: bool = False, remember: int = 10_000
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.topic = self.settings.topics.aborts
        self.from_beginning = from_beginning
        self.remember = remember
        self._event_ids: OrderedDict[str, None] = OrderedDict()
        self._newest: OrderedDict[str, Abort] = OrderedDict()
        self._watches: dict[str, set[AbortWatch]] = {}
        self._queues: set[asyncio.Queue[Abort | BaseException]] = set()
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        where = f"{self.topic} at {self.settings.kafka.bootstrap}"
        self._consumer = AIOKafkaConsumer(**connection_kwargs(self.settings.kafka), enable_auto_commit=False)
        try:
            async with asyncio.timeout(self.settings.kafka.request_timeout_s):
                partitions = await partitions_of(self.settings, self.topic)
                if not partitions:
                    raise SubscribeError(f"topic {where} does not exist (run `qta-monitor topics apply`)")
                await self._consumer.start()
                tps = [TopicPartition(self.topic, p) for p in partitions]
                self._consumer.assign(tps)
                if self.from_beginning:
                    await self._consumer.seek_to_beginning(*tps)
                else:
                    await self._consumer.seek_to_end(*tps)
                for tp in tps:  # resolve positions now: an abort published after start() is never missed
                    await self._consumer.position(tp)
        except (KafkaError, KafkaUnavailable, TimeoutError, SubscribeError) as exc:
            await self._consumer.stop()
            if isinstance(exc, SubscribeError):
                raise
            raise SubscribeError(f"cannot read {where}: {exc!r}") from exc
        self._task = asyncio.create_task(self._read(), name="qta-abort-subscriber")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    async def __aenter__(self) -> AbortSubscriber:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _read(self) -> None:
        try:
            while True:
                batches = await self._consumer.getmany(timeout_ms=1000)
                for messages in batches.values():
                    for message in messages:
                        abort = decode_abort(message.value or b"")
                        if isinstance(abort, Abort):  # anything else is not ours to judge; skip it
                            self.deliver(abort)
        except KafkaError as exc:
            self._fail(SubscribeError(f"reading {self.topic} failed: {exc!r}"))

    def _fail(self, error: BaseException) -> None:
        for watches in self._watches.values():
            for watch in watches:
                if not watch.future.done():
                    watch.future.set_exception(error)
        for queue in self._queues:
            queue.put_nowait(error)

    def deliver(self, abort: Abort) -> None:
        """Hand an event to its iterators and watches (the reader calls this; so can tests). An event id
        seen before is a replay (the worker re-publishes an aborted session's abort for every later chunk)
        and changes nothing."""
        if abort.event_id in self._event_ids:
            return
        _remember(self._event_ids, abort.event_id, None, self.remember)
        newest = self._newest.get(abort.session_id)
        if newest is None or _rank(abort) >= _rank(newest):
            _remember(self._newest, abort.session_id, abort, self.remember)
            for watch in self._watches.get(abort.session_id, ()):
                watch.offer(abort)
        for queue in self._queues:
            queue.put_nowait(abort)

    def watch(self, session_id: str, *, after: str | None = None) -> AbortWatch:
        """A watch of the session's newest event; `after`: the id of an event already handled (a steer),
        so that the watch waits for the next one."""
        watch = AbortWatch(self, session_id, after)
        if session_id in self._newest:
            watch.offer(self._newest[session_id])
        self._watches.setdefault(session_id, set()).add(watch)
        return watch

    def unwatch(self, watch: AbortWatch) -> None:
        watches = self._watches.get(watch.session_id)
        if watches is not None:
            watches.discard(watch)
            if not watches:
                del self._watches[watch.session_id]

    async def __aiter__(self) -> AsyncIterator[Abort]:
        queue: asyncio.Queue[Abort | BaseException] = asyncio.Queue()
        self._queues.add(queue)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._queues.discard(queue)


class SyncAbortWatch:
    """An AbortWatch for a thread: `abort` peeks, `wait(timeout)` blocks until the event (None on timeout)."""

    def __init__(self, loop: _LoopThread, watch: AbortWatch) -> None:
        self._loop = loop
        self._watch = watch
        self.session_id = watch.session_id

    @property
    def abort(self) -> Abort | None:
        return self._watch.abort

    def wait(self, timeout: float | None = None) -> Abort | None:
        return self._loop.run(self._wait(timeout), math.inf if timeout is None else timeout + 5)

    async def _wait(self, seconds: float | None) -> Abort | None:
        try:
            async with asyncio.timeout(seconds):
                return await self._watch.aborted()
        except TimeoutError:
            return None

    def close(self) -> None:
        self._loop.call(self._watch.close)

    def __enter__(self) -> SyncAbortWatch:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class SyncAbortSubscriber:
    """AbortSubscriber for code without an event loop: runs one on its own loop thread."""

    def __init__(
        self, settings: Settings | None = None, *, from_beginning: bool = False, remember: int = 10_000
    ) -> None:
        self._subscriber = AbortSubscriber(settings, from_beginning=from_beginning, remember=remember)
        self._loop = _LoopThread("qta-aborts", self._subscriber.settings.kafka.request_timeout_s * 2 + 5)

    def start(self) -> None:
        self._loop.open(self._subscriber.start())

    def close(self) -> None:
        self._loop.shut(self._subscriber.stop())

    def __enter__(self) -> SyncAbortSubscriber:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def watch(self, session_id: str, *, after: str | None = None) -> SyncAbortWatch:
        return SyncAbortWatch(self._loop, self._loop.call(self._subscriber.watch, session_id, after=after))


# ---------------------------------------------------------------------------------------------- health
class MonitorHealth:
    """Whether the monitor is watching. Reads the verdicts topic from its end (no consumer group, nothing
    committed) and keeps, per tracked session, when each response chunk was sent; a verdict of the session
    answers every chunk up to its seq. A worker that is down, or lags, shows as a chunk that waits:
    `unanswered_s` is the age of a session's oldest unanswered chunk, `watching` compares it with a bound,
    `healthy` checks every tracked session (and that the verdicts can be read)."""

    def __init__(
        self, settings: Settings | None = None, *, bound_s: float = 10.0, remember_sessions: int = 100_000
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.bound_s = bound_s
        self.remember_sessions = remember_sessions
        self.error: SubscribeError | None = None
        self._sent: OrderedDict[str, deque[tuple[int, float]]] = OrderedDict()  # (seq, monotonic sent)
        self._answered: dict[str, int] = {}
        self._tail: EventTail | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        tail = EventTail(self.settings, [self.settings.topics.verdicts])
        try:
            await tail.start()
        except WatchError as exc:
            raise SubscribeError(str(exc)) from exc
        self._tail = tail
        self._task = asyncio.create_task(self._read(tail), name="qta-monitor-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._tail is not None:
            await self._tail.stop()

    async def __aenter__(self) -> MonitorHealth:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _read(self, tail: EventTail) -> None:
        try:
            while True:
                for event in await tail.poll(1.0):
                    if isinstance(event, Verdict):
                        self.answered(event.session_id, event.seq)
        except WatchError as exc:
            self.error = SubscribeError(str(exc))

    def track(self, session_id: str) -> None:
        """Follow this session's verdicts from now on (the last `remember_sessions` sessions tracked)."""
        if session_id not in self._sent:
            _remember(self._sent, session_id, deque(), self.remember_sessions)

    def sent(self, session_id: str, seq: int) -> None:
        """Chunk `seq` of a tracked session (thinking or answer) was just sent."""
        chunks = self._sent.get(session_id)
        if chunks is not None and seq > self._answered.get(session_id, 0):
            chunks.append((seq, time.monotonic()))

    def answered(self, session_id: str, seq: int) -> None:
        """A verdict of the session covers chunks 1..seq (the reader calls this; so can tests)."""
        chunks = self._sent.get(session_id)
        if chunks is None:
            return
        self._answered[session_id] = max(seq, self._answered.get(session_id, 0))
        while chunks and chunks[0][0] <= seq:
            chunks.popleft()

    def forget(self, session_id: str) -> None:
        self._sent.pop(session_id, None)
        self._answered.pop(session_id, None)

    def unanswered_s(self, session_id: str) -> float:
        """How long the session's oldest chunk has waited for a verdict (0.0 when none waits)."""
        chunks = self._sent.get(session_id)
        return time.monotonic() - chunks[0][1] if chunks else 0.0

    def watching(self, session_id: str, bound_s: float | None = None) -> bool:
        return self.unanswered_s(session_id) <= (self.bound_s if bound_s is None else bound_s)

    @property
    def healthy(self) -> bool:
        return self.error is None and all(self.watching(sid) for sid in self._sent)


class SyncMonitorHealth:
    """MonitorHealth for code without an event loop: runs one on its own loop thread."""

    def __init__(self, settings: Settings | None = None, *, bound_s: float = 10.0) -> None:
        self._health = MonitorHealth(settings, bound_s=bound_s)
        self._loop = _LoopThread("qta-health", self._health.settings.kafka.request_timeout_s * 2 + 5)

    def start(self) -> None:
        self._loop.open(self._health.start())

    def close(self) -> None:
        self._loop.shut(self._health.stop())

    def __enter__(self) -> SyncMonitorHealth:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def track(self, session_id: str) -> None:
        self._loop.call(self._health.track, session_id)

    def sent(self, session_id: str, seq: int) -> None:
        self._loop.call(self._health.sent, session_id, seq)

    def forget(self, session_id: str) -> None:
        self._loop.call(self._health.forget, session_id)

    def unanswered_s(self, session_id: str) -> float:
        return self._loop.call(self._health.unanswered_s, session_id)

    def watching(self, session_id: str, bound_s: float | None = None) -> bool:
        return self._loop.call(self._health.watching, session_id, bound_s)

    @property
    def healthy(self) -> bool:
        return self._loop.call(lambda: self._health.healthy)
