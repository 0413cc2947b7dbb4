"""`TracePublisher`: a generation's question, thinking and answer as chunks to the chunks topic (the
public path is `monitor.sdk`); `SyncTracePublisher` is the same for code without an event loop.

A session id is single-use: `session()` hands out a fresh one, and refuses (`SessionIdReused`) an id it
has handed out before. Chunks are sent without waiting for each acknowledgement (the producer is
idempotent with acks=all, so order and no duplicates are the broker's job); a failed delivery raises
`PublishError` at the next call, and `end()` / `flush()` wait for every acknowledgement, at most
`timeout_s`."""

from __future__ import annotations

import asyncio
import base64
import functools
import uuid
from collections import OrderedDict
from collections.abc import Coroutine, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from monitor.client.loop import LoopThread, SyncTwin, remember
from monitor.edges.kafka import (
    MAX_MESSAGE_BYTES,
    EventSink,
    KafkaUnavailable,
    connect_failed,
    connection_kwargs,
    partitions_of,
)
from monitor.messages import Chunk, ImageRef, Part, encode
from monitor.settings import Settings, load_settings

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")
P = ParamSpec("P")


__all__ = [
    "ImageLike", "PublishError", "SessionHandle", "SessionIdReused", "SyncSessionHandle",
    "SyncTracePublisher", "TracePublisher",
]  # fmt: skip
ImageLike = ImageRef | bytes | str | Path  # bytes: inline image; str / Path: a file path or URI
MAX_ID = 256  # characters of a session id or request id, as chunk.schema.json allows


class PublishError(Exception):
    """A chunk could not be delivered (or acknowledged) within the publisher's timeout."""


class SessionIdReused(PublishError):
    """`session()` was given an id this publisher has handed out before. A session id is single-use: the
    worker keeps an aborted session aborted and scores a restarted one as a new epoch, so a retried
    request needs a new id (the stack's own request id goes in `request_id`)."""


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
        remember(self._handed_out, sid, None, self.remember_sessions)
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


class SyncTracePublisher(SyncTwin):
    """The same for code without an event loop: runs a TracePublisher on its own loop thread."""

    def __init__(self, settings: Settings | None = None, *, timeout_s: float | None = None) -> None:
        self._publisher = TracePublisher(settings, timeout_s=timeout_s)
        self._inner = self._publisher
        self._loop = LoopThread("qta-publisher", self._publisher.timeout_s * 2 + 5)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run(coro)

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
