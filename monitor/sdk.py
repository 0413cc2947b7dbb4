"""The SDK a serving stack uses: `TracePublisher` sends a generation's question, thinking and answer as
chunks; `AbortSubscriber` tells it when the monitor aborts a session; `monitored_stream` does both around
an OpenAI-compatible streaming chat completion.

    async with TracePublisher(settings) as publisher, AbortSubscriber(settings) as subscriber:
        session = publisher.session(model="qwen3-8b", tenant="acme")
        await session.question(prompt)
        stream = monitored_stream(await client.chat.completions.create(..., stream=True), session, subscriber)
        async for chunk in stream:
            ...                                  # stops early once the monitor aborts the session
        if stream.abort is not None: ...         # the Abort (or steer) event

Chunks are sent without waiting for each acknowledgement (the producer is idempotent with acks=all, so
order and no duplicates are the broker's job); a failed delivery raises `PublishError` at the next call,
and `end()` / `flush()` wait for every acknowledgement, at most `timeout_s`."""

from __future__ import annotations

import asyncio
import base64
import functools
import threading
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Coroutine, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from monitor.edges import EventSink, KafkaUnavailable
from monitor.kafka import MAX_MESSAGE_BYTES, connect_failed, connection_kwargs, partitions_of
from monitor.messages import Abort, Chunk, ImageRef, Part, decode_abort, encode
from monitor.sdk_stream import MonitoredStream, deltas, monitored_stream
from monitor.settings import Settings, load_settings

T = TypeVar("T")
__all__ = [
    "AbortSubscriber", "AbortWatch", "MonitoredStream", "PublishError", "SessionHandle", "SubscribeError",
    "SyncTracePublisher", "TracePublisher", "deltas", "monitored_stream",
]  # fmt: skip
ImageLike = ImageRef | bytes | str | Path  # bytes: inline image; str / Path: a file path or URI


class PublishError(Exception):
    """A chunk could not be delivered (or acknowledged) within the publisher's timeout."""


class SubscribeError(Exception):
    """The aborts topic cannot be read (broker unreachable, topic missing)."""


def _image(image: ImageLike) -> ImageRef:
    if isinstance(image, ImageRef):
        return image
    if isinstance(image, bytes):
        return ImageRef(data=base64.b64encode(image).decode("ascii"))
    return ImageRef(uri=str(image))


class SessionHandle:
    """One generation: numbers its chunks from 1 and keys them by `session_id`."""

    def __init__(self, publisher: TracePublisher, session_id: str, model: str | None, tenant: str | None):
        self.publisher = publisher
        self.session_id = session_id
        self.model = model
        self.tenant = tenant
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
        )
        await self.publisher.send(chunk)


class TracePublisher:
    """Publishes chunks to the chunks topic. Pass `sink` (e.g. a MemoryEventSink) to publish through an
    EventSink instead of the built-in producer; each chunk then waits for its acknowledgement."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        sink: EventSink | None = None,
        timeout_s: float | None = None,
        linger_ms: int = 5,
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.topic = self.settings.topics.chunks
        self.timeout_s = timeout_s if timeout_s is not None else self.settings.kafka.request_timeout_s
        self.linger_ms = linger_ms
        self._sink = sink
        self._producer: Any = None
        self._pending: set[asyncio.Future[Any]] = set()
        self._failure: PublishError | None = None

    def _where(self) -> str:
        return f"{self.topic} at {self.settings.kafka.bootstrap}"

    async def start(self) -> None:
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
        except (KafkaError, TimeoutError) as exc:
            await self._producer.stop()
            self._producer = None
            refused = await connect_failed(exc, "connect (publisher)", self.settings.kafka)
            if not refused.recoverable:  # a TLS / SASL refusal, named
                raise PublishError(f"cannot connect for {self._where()}: {refused}") from exc
            raise PublishError(f"cannot connect to Kafka for {self._where()}: {exc!r}") from exc

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
        self, session_id: str | None = None, *, model: str | None = None, tenant: str | None = None
    ) -> SessionHandle:
        return SessionHandle(self, session_id or uuid.uuid4().hex, model, tenant)

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


class SyncTracePublisher:
    """The same for code without an event loop: runs a TracePublisher on its own loop thread."""

    def __init__(self, settings: Settings | None = None, *, timeout_s: float | None = None) -> None:
        self._publisher = TracePublisher(settings, timeout_s=timeout_s)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="qta-publisher", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=self._publisher.timeout_s * 2 + 5)

    def start(self) -> None:
        try:
            self.run(self._publisher.start())
        except BaseException:
            self._end_loop()
            raise

    def close(self) -> None:
        try:
            self.run(self._publisher.stop())
        finally:
            self._end_loop()

    def _end_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> SyncTracePublisher:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def session(
        self, session_id: str | None = None, *, model: str | None = None, tenant: str | None = None
    ) -> SyncSessionHandle:
        return SyncSessionHandle(self, self._publisher.session(session_id, model=model, tenant=tenant))


class SyncSessionHandle:
    def __init__(self, owner: SyncTracePublisher, handle: SessionHandle) -> None:
        self._owner = owner
        self._handle = handle
        self.session_id = handle.session_id

    def question(self, text: str, images: Iterable[ImageLike] = ()) -> None:
        self._owner.run(self._handle.question(text, images))

    def thinking(self, delta: str) -> None:
        self._owner.run(self._handle.thinking(delta))

    def answer(self, delta: str) -> None:
        self._owner.run(self._handle.answer(delta))

    def end(self) -> None:
        self._owner.run(self._handle.end())


# ---------------------------------------------------------------------------------------------- aborts
class AbortWatch:
    """The abort of one session, when it comes. `abort` peeks; `await aborted()` waits."""

    def __init__(self, subscriber: AbortSubscriber, session_id: str) -> None:
        self.subscriber = subscriber
        self.session_id = session_id
        self.future: asyncio.Future[Abort] = asyncio.get_running_loop().create_future()

    @property
    def abort(self) -> Abort | None:
        done = self.future.done() and not self.future.cancelled() and self.future.exception() is None
        return self.future.result() if done else None

    async def aborted(self) -> Abort:
        return await asyncio.shield(self.future)

    def close(self) -> None:
        self.subscriber.unwatch(self)


class AbortSubscriber:
    """Reads the aborts topic (from its end by default; no consumer group, nothing committed) and hands
    each Abort to the watches of its session and to every `async for` over the subscriber. Aborts that
    arrive before `watch()` are remembered (the last `remember` sessions)."""

    def __init__(
        self, settings: Settings | None = None, *, from_beginning: bool = False, remember: int = 10_000
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.topic = self.settings.topics.aborts
        self.from_beginning = from_beginning
        self.remember = remember
        self._seen: OrderedDict[str, Abort] = OrderedDict()
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
        """Hand an abort to its watchers and iterators (the reader calls this; so can tests)."""
        if abort.session_id in self._seen:
            return  # one abort per session: a replayed duplicate changes nothing
        self._seen[abort.session_id] = abort
        while len(self._seen) > self.remember:
            self._seen.popitem(last=False)
        for watch in self._watches.get(abort.session_id, ()):
            if not watch.future.done():
                watch.future.set_result(abort)
        for queue in self._queues:
            queue.put_nowait(abort)

    def watch(self, session_id: str) -> AbortWatch:
        watch = AbortWatch(self, session_id)
        if session_id in self._seen:
            watch.future.set_result(self._seen[session_id])
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
