"""What a serving stack imports (the public path is `monitor.sdk`, which re-exports this): the trace
publisher, the abort subscriber, monitor health, the OpenAI-stream tap and their sync twins. Imports only
messages, settings and the edges (tests/unit/test_layout.py checks it)."""

from monitor.client.aborts import (
    AbortSubscriber,
    AbortWatch,
    SubscribeError,
    SyncAbortSubscriber,
    SyncAbortWatch,
)
from monitor.client.health import MonitorHealth, SyncMonitorHealth
from monitor.client.publisher import (
    ImageLike,
    PublishError,
    SessionHandle,
    SessionIdReused,
    SyncSessionHandle,
    SyncTracePublisher,
    TracePublisher,
)
from monitor.client.stream import MonitoredStream, deltas, monitored_stream

__all__ = [
    "AbortSubscriber", "AbortWatch", "ImageLike", "MonitorHealth", "MonitoredStream", "PublishError",
    "SessionHandle", "SessionIdReused", "SubscribeError", "SyncAbortSubscriber", "SyncAbortWatch",
    "SyncMonitorHealth", "SyncSessionHandle", "SyncTracePublisher", "TracePublisher", "deltas",
    "monitored_stream",
]  # fmt: skip
