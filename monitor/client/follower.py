"""`Follower`: what `AbortSubscriber` and `MonitorHealth` share: one event topic read from its end (or
beginning) without a consumer group, in a background task that hands each event to `_on_event`; start,
stop and `async with`. A topic that cannot be read is a `SubscribeError`."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self

from monitor.edges.tail import Event, EventTail, WatchError
from monitor.settings import Settings


class SubscribeError(Exception):
    """The aborts (or verdicts) topic cannot be read (broker unreachable, topic missing)."""


class Follower:
    """Subclasses set `settings`, `topic` and `from_beginning`, and implement `_on_event` and `_on_error`."""

    settings: Settings
    topic: str
    from_beginning: bool = False
    _name = "qta-follower"

    def __init__(self) -> None:
        self._tail: EventTail | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        tail = EventTail(self.settings, [self.topic], from_beginning=self.from_beginning)
        try:
            await tail.start()  # positions resolved: an event published after start() is never missed
        except WatchError as exc:
            raise SubscribeError(str(exc)) from exc
        self._tail = tail
        self._task = asyncio.create_task(self._read(tail), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._tail is not None:
            await self._tail.stop()

    async def __aenter__(self) -> Self:
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
                    self._on_event(event)
        except WatchError as exc:
            self._on_error(SubscribeError(str(exc)))

    def _on_event(self, event: Event) -> None:
        raise NotImplementedError

    def _on_error(self, error: SubscribeError) -> None:
        raise NotImplementedError
