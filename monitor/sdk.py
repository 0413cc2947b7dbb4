"""The SDK a serving stack uses, at its public path (README "SDK for serving stacks"): `TracePublisher`
sends a generation's question, thinking and answer as chunks; `AbortSubscriber` tells it when the monitor
aborts (or steers) a session; `MonitorHealth` tells it when the monitor is not watching; `monitored_stream`
does all three around an OpenAI-compatible streaming chat completion; `Sync*` are the same for code without
an event loop. The code lives in `monitor.client`; this path stays stable across moves."""

from monitor.client import *  # noqa: F403
from monitor.client import __all__ as __all__
