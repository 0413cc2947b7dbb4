"""`MonitorHealth`: is the monitor watching? It follows the verdicts topic and says, per session, how long
the oldest response chunk has waited for a verdict; `SyncMonitorHealth` is the same without an event loop."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from typing import ParamSpec, TypeVar

from monitor.client.follower import Follower, SubscribeError
from monitor.client.loop import LoopThread, SyncTwin, remember
from monitor.edges.tail import Event
from monitor.messages import Verdict
from monitor.settings import Settings, load_settings

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")
P = ParamSpec("P")


__all__ = ["MonitorHealth", "SyncMonitorHealth"]


class MonitorHealth(Follower):
    """Whether the monitor is watching. Reads the verdicts topic from its end (no consumer group, nothing
    committed) and keeps, per tracked session, when each response chunk was sent; a verdict of the session
    answers every chunk up to its seq. A worker that is down, or lags, shows as a chunk that waits:
    `unanswered_s` is the age of a session's oldest unanswered chunk, `watching` compares it with a bound,
    `healthy` checks every tracked session (and that the verdicts can be read)."""

    def __init__(
        self, settings: Settings | None = None, *, bound_s: float = 10.0, remember_sessions: int = 100_000
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.topic = self.settings.topics.verdicts
        self._name = "qta-monitor-health"
        self.bound_s = bound_s
        self.remember_sessions = remember_sessions
        self.error: SubscribeError | None = None
        self._sent: OrderedDict[str, deque[tuple[int, float]]] = OrderedDict()  # (seq, monotonic sent)
        self._answered: dict[str, int] = {}
        super().__init__()

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Verdict):
            self.answered(event.session_id, event.seq)

    def _on_error(self, error: SubscribeError) -> None:
        self.error = error

    def track(self, session_id: str) -> None:
        """Follow this session's verdicts from now on (the last `remember_sessions` sessions tracked)."""
        if session_id not in self._sent:
            remember(self._sent, session_id, deque(), self.remember_sessions)

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


class SyncMonitorHealth(SyncTwin):
    """MonitorHealth for code without an event loop: runs one on its own loop thread."""

    def __init__(self, settings: Settings | None = None, *, bound_s: float = 10.0) -> None:
        self._health = MonitorHealth(settings, bound_s=bound_s)
        self._inner = self._health
        self._loop = LoopThread("qta-health", self._health.settings.kafka.request_timeout_s * 2 + 5)

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
