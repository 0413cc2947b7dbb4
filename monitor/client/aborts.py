"""`AbortSubscriber`: the aborts (and steers) the monitor publishes, deduped by event id, per session or as a
stream; `SyncAbortSubscriber` is the same for code without an event loop."""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from collections.abc import AsyncIterator
from types import TracebackType
from typing import ParamSpec, TypeVar

from monitor.client.follower import Follower
from monitor.client.follower import SubscribeError as SubscribeError
from monitor.client.loop import LoopThread, SyncTwin, remember
from monitor.edges.tail import Event
from monitor.messages import Abort
from monitor.settings import Settings, load_settings

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")
P = ParamSpec("P")


__all__ = ["AbortSubscriber", "AbortWatch", "SubscribeError", "SyncAbortSubscriber", "SyncAbortWatch"]


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


class AbortSubscriber(Follower):
    """Reads the aborts topic (from its end by default; no consumer group, nothing committed) and hands
    each event to every `async for` over the subscriber and, when it is its session's newest, to the
    session's watches. Events are deduplicated by event id (the last `remember`); the newest event of the
    last `remember` sessions is kept, so a watch made after the event still sees it."""

    def __init__(
        self, settings: Settings | None = None, *, from_beginning: bool = False, remember: int = 10_000
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.topic = self.settings.topics.aborts
        self._name = "qta-abort-subscriber"
        self.from_beginning = from_beginning
        self.remember = remember
        self._event_ids: OrderedDict[str, None] = OrderedDict()
        self._newest: OrderedDict[str, Abort] = OrderedDict()
        self._watches: dict[str, set[AbortWatch]] = {}
        self._queues: set[asyncio.Queue[Abort | BaseException]] = set()
        super().__init__()

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Abort):
            self.deliver(event)

    def _on_error(self, error: SubscribeError) -> None:
        self._fail(error)

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
        remember(self._event_ids, abort.event_id, None, self.remember)
        newest = self._newest.get(abort.session_id)
        if newest is None or _rank(abort) >= _rank(newest):
            remember(self._newest, abort.session_id, abort, self.remember)
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

    def __init__(self, loop: LoopThread, watch: AbortWatch) -> None:
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


class SyncAbortSubscriber(SyncTwin):
    """AbortSubscriber for code without an event loop: runs one on its own loop thread."""

    def __init__(
        self, settings: Settings | None = None, *, from_beginning: bool = False, remember: int = 10_000
    ) -> None:
        self._subscriber = AbortSubscriber(settings, from_beginning=from_beginning, remember=remember)
        self._inner = self._subscriber
        self._loop = LoopThread("qta-aborts", self._subscriber.settings.kafka.request_timeout_s * 2 + 5)

    def watch(self, session_id: str, *, after: str | None = None) -> SyncAbortWatch:
        return SyncAbortWatch(self._loop, self._loop.call(self._subscriber.watch, session_id, after=after))
