"""What the client's classes share: `LoopThread`, an event loop on its own thread that the sync twins run
the async classes on, and `remember`, a bounded memory of recent ids."""

from __future__ import annotations

import asyncio
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, ParamSpec, Protocol, Self, TypeVar

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")
P = ParamSpec("P")


def remember(memory: OrderedDict[K, V], key: K, value: V, limit: int) -> None:
    memory[key] = value
    memory.move_to_end(key)
    while len(memory) > limit:
        memory.popitem(last=False)


class LoopThread:
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


class Startable(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class SyncTwin:
    """`start`, `close` and `with` for a sync twin whose async original (`_inner`) runs on `_loop`."""

    _inner: Startable
    _loop: LoopThread

    def start(self) -> None:
        self._loop.open(self._inner.start())

    def close(self) -> None:
        self._loop.shut(self._inner.stop())

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
