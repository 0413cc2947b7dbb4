"""`monitored_stream`: wraps an OpenAI-compatible streaming chat completion so that its reasoning and
content deltas are published as thinking / answer chunks of a session, and iteration stops as soon as the
monitor aborts that session (the upstream stream is then closed, which stops the generation).

Two more things it can do: continue after a steer (`on_steer` returns the continuation after the steer's
reflection has been inserted, and monitoring goes on), and notice that the monitor is not watching
(`health`: a response chunk without a verdict for `verdict_timeout_s` calls `on_unwatched`, and with
`fail_closed` stops the stream as an abort would)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from monitor.messages import Abort

if TYPE_CHECKING:
    from monitor.client.aborts import AbortSubscriber, AbortWatch
    from monitor.client.health import MonitorHealth
    from monitor.client.publisher import SessionHandle

T = TypeVar("T")
OnSteer = Callable[[Abort], Awaitable[AsyncIterable[T]]]
OnUnwatched = Callable[[str, float], Awaitable[None] | None]


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def deltas(chunk: Any) -> tuple[str, str]:
    """(thinking, answer) text of one OpenAI-compatible stream chunk (object or dict). Reasoning servers
    call the thinking delta `reasoning_content` (vLLM, DeepSeek, SGLang) or `reasoning`."""
    choices = _field(chunk, "choices") or []
    if not choices:
        return "", ""
    delta = _field(choices[0], "delta") or {}
    thinking = _field(delta, "reasoning_content") or _field(delta, "reasoning") or ""
    answer = _field(delta, "content") or ""
    return (thinking if isinstance(thinking, str) else ""), (answer if isinstance(answer, str) else "")


class MonitoredStream(Generic[T]):
    """Iterate it like the wrapped stream. After the loop: `abort` holds the event that stopped it, if any
    (an abort, or a steer when there is no `on_steer`), `steers` every steer received, and `unwatched` is
    True when `fail_closed` stopped it because the monitor did not answer in time."""

    def __init__(
        self,
        stream: AsyncIterable[T],
        session: SessionHandle,
        subscriber: AbortSubscriber | None,
        *,
        on_steer: OnSteer[T] | None = None,
        health: MonitorHealth | None = None,
        verdict_timeout_s: float = 10.0,
        fail_closed: bool = False,
        on_unwatched: OnUnwatched | None = None,
    ) -> None:
        self.stream = stream
        self.session = session
        self.subscriber = subscriber
        self.on_steer = on_steer
        self.health = health
        self.verdict_timeout_s = verdict_timeout_s
        self.fail_closed = fail_closed
        self.on_unwatched = on_unwatched
        self.abort: Abort | None = None
        self.steers: list[Abort] = []
        self.unwatched = False
        self._current: AsyncIterable[T] = stream  # the upstream now iterated: the continuation after a steer
        self._warned = False
        self._iterator: AsyncGenerator[T, None] | None = None

    def __aiter__(self) -> AsyncIterator[T]:
        self._iterator = self._run()
        return self._iterator

    async def aclose(self) -> None:
        """After a `break`: close the upstream and end the session now, not when the loop collects it."""
        if self._iterator is not None:
            await self._iterator.aclose()
        await _close(self._current)
        await self.session.end()  # a no-op when the loop has ended it

    async def _run(self) -> AsyncGenerator[T, None]:
        sid = self.session.session_id
        watch = self.subscriber.watch(sid) if self.subscriber is not None else None
        if self.health is not None:
            self.health.track(sid)
        upstream = aiter(self._current)
        following: asyncio.Future[T] | None = None  # the next upstream chunk, asked for and not yet used
        try:
            while True:
                # 1. an abort (or steer) of this session: stop, or continue with the steer's continuation
                event = _event(watch)
                if event is not None and event.action == "steer":
                    self.steers.append(event)
                if event is not None and (event.action != "steer" or self.on_steer is None):
                    self.abort = event
                    break
                if event is not None:
                    assert watch is not None and self.subscriber is not None
                    await _cancel(following)
                    following = None
                    watch.close()
                    watch = self.subscriber.watch(sid, after=event.event_id)  # a real abort may follow
                    upstream = aiter(await self._steer(event))
                    continue
                # 2. the monitor's answer is overdue: tell the stack (once), and stop if it fails closed
                if await self._overdue():
                    break
                # 3. the next chunk, unless an event or the verdict deadline comes first
                if following is None:
                    following = asyncio.ensure_future(anext(upstream))
                waiters: set[asyncio.Future[Any]] = {following}
                if watch is not None:
                    waiters.add(watch.future)
                await asyncio.wait(waiters, timeout=self._deadline(), return_when=asyncio.FIRST_COMPLETED)
                if not following.done() or _event(watch) is not None:
                    continue  # an event goes first: a chunk that arrived with it is not handed on
                arrived, following = following, None
                try:
                    chunk = arrived.result()
                except StopAsyncIteration:
                    break
                # 4. publish its deltas, then hand it on
                thinking, answer = deltas(chunk)
                if thinking:
                    await self._publish(self.session.thinking(thinking))
                if answer:
                    await self._publish(self.session.answer(answer))
                yield chunk
        finally:
            await _cancel(following)
            if watch is not None:
                watch.close()
            if self.health is not None:
                self.health.forget(sid)
            if self.abort is not None or self.unwatched:
                await _close(self._current)  # stop the generation upstream
            await self.session.end()

    async def _steer(self, steer: Abort) -> AsyncIterable[T]:
        """Stop the steered generation, publish the reflection the stack inserts into the model's context
        (so the monitor reads what the model reads), and return the continuation from `on_steer`."""
        assert self.on_steer is not None
        await _close(self._current)
        if steer.steer_prompt:
            await self._publish(self.session.thinking(steer.steer_prompt))
        self._current = await self.on_steer(steer)
        return self._current

    async def _publish(self, sending: Awaitable[None]) -> None:
        await sending
        if self.health is not None:
            self.health.sent(self.session.session_id, self.session.seq)

    def _deadline(self) -> float | None:
        """Seconds until the oldest unanswered chunk is overdue (None: no deadline to wake for)."""
        if self.health is None or self._warned:
            return None
        return max(0.0, self.verdict_timeout_s - self.health.unanswered_s(self.session.session_id))

    async def _overdue(self) -> bool:
        """Past the verdict deadline: call `on_unwatched` once; True when the stream must stop."""
        if self.health is None or self._warned:
            return False
        waited = self.health.unanswered_s(self.session.session_id)
        if waited < self.verdict_timeout_s:
            return False
        self._warned = True
        if self.on_unwatched is not None:
            result = self.on_unwatched(self.session.session_id, waited)
            if inspect.isawaitable(result):
                await result
        self.unwatched = self.fail_closed
        return self.fail_closed


def _event(watch: AbortWatch | None) -> Abort | None:
    """The watch's event; raises the subscriber's failure (a SubscribeError) if that is what it holds."""
    if watch is None or not watch.future.done():
        return None
    if watch.abort is None:
        watch.future.result()
    return watch.abort


async def _cancel(future: asyncio.Future[Any] | None) -> None:
    if future is not None:
        future.cancel()
        await asyncio.gather(future, return_exceptions=True)  # a chunk or error dropped with it is consumed


async def _close(stream: Any) -> None:
    for name in ("aclose", "close"):
        method = getattr(stream, name, None)
        if callable(method):
            result = method()
            if asyncio.iscoroutine(result):
                await result
            return


def monitored_stream(
    stream: AsyncIterable[T],
    session: SessionHandle,
    subscriber: AbortSubscriber | None = None,
    *,
    on_steer: OnSteer[T] | None = None,
    health: MonitorHealth | None = None,
    verdict_timeout_s: float = 10.0,
    fail_closed: bool = False,
    on_unwatched: OnUnwatched | None = None,
) -> MonitoredStream[T]:
    """Publish an OpenAI-compatible stream's reasoning / content deltas as thinking / answer chunks of
    `session`, stop when the monitor aborts it, and end the session when the stream ends.

    `on_steer(steer)`: on a steer, the upstream is closed, the steer's `steer_prompt` is published as
    thinking, and iteration goes on over the stream this returns (a later abort still stops it); without
    it a steer stops the stream like an abort. `health`: when a response chunk has had no verdict for
    `verdict_timeout_s`, `on_unwatched(session_id, waited_s)` is called once, and with `fail_closed` the
    stream stops (closed upstream, ended session, `unwatched` True); without `fail_closed` it goes on."""
    return MonitoredStream(
        stream,
        session,
        subscriber,
        on_steer=on_steer,
        health=health,
        verdict_timeout_s=verdict_timeout_s,
        fail_closed=fail_closed,
        on_unwatched=on_unwatched,
    )
