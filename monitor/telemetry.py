"""Every metric instrument of the monitor, defined once, and the Prometheus `/metrics` endpoint.

Instruments come from the OpenTelemetry API's global meter, so recording is a no-op until `start()`
installs the SDK provider with the Prometheus exporter (the worker does; `qta-monitor eval` and unit tests
do not). Names as Prometheus shows them (the dashboards use exactly these):

    qta_monitor_chunks_total{part}                 counter    chunks received (decoded)
    qta_monitor_score_seconds{guard}               histogram  wall time of one guard batch
    qta_monitor_batch_size{guard}                  histogram  prefixes per guard batch
    qta_monitor_chunk_to_verdict_seconds{status}   histogram  producer ts of the newest chunk -> verdict out
    qta_monitor_verdicts_total{status}             counter    verdicts published (ok / warn / abort)
    qta_monitor_aborts_total{rule,category,guard,action}
                                                   counter    abort / steer events published
    qta_monitor_dead_letters_total{reason}         counter    messages sent to the dead-letter topic
    qta_monitor_escalations_total{guard}           counter    prefixes re-scored by the escalation guard
    qta_monitor_sessions_live                      gauge      sessions held in this worker's memory
    qta_monitor_pending_sessions                   gauge      sessions with unscored content or an open gap
    qta_monitor_partitions_paused                  gauge      1 while backpressure pauses the partitions
    qta_monitor_unavailable_total{service}         counter    Redis / Kafka failures that led to a retry
    qta_monitor_consumer_lag{topic,partition}      gauge      records behind each owned partition's end
    qta_monitor_produce_errors_total{error}        counter    publishes to Kafka that failed (timeout / error)
    qta_monitor_engine_prompt_tokens_total{guard}  counter    prompt tokens sent to the vLLM judge's engine
    qta_monitor_engine_cached_tokens_total{guard}  counter    of those, prefix-cache hits (hit rate = ratio)

Prometheus also gets `_bucket`, `_sum` and `_count` series for each histogram, and OpenTelemetry's
`target_info`. Category labels are the guard's category or `none`. The counters whose label values are
known in advance (`ZEROED`: chunks by part, verdicts by status, dead letters by reason, unavailable by
service, produce errors of kind timeout) are exported at 0 from `start()` on, so an alert or a rate() sees
their first increase; the label values only a running worker learns (a guard's categories, an error's type)
appear when first counted. The consumer lag is an observable gauge
over the last measurement (monitor.edges.lag), so partitions this worker no longer owns drop out of /metrics.
`start()` also serves `/ready` and `/live` on the same address and port (monitor.edges.health), which are
`telemetry.metrics_host` (default 0.0.0.0) and `telemetry.metrics_port` (default 9464).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import get_args
from wsgiref.simple_server import WSGIServer

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Counter, Observation

from monitor.edges.health import Readiness, serve_http
from monitor.messages import Action, DeadLetterReason, Part, Verdict
from monitor.settings import Settings

log = logging.getLogger(__name__)

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)

_meter = metrics.get_meter("qta-monitor")

chunks = _meter.create_counter("qta_monitor_chunks_total", description="chunks received, by part")
score_seconds = _meter.create_histogram(
    "qta_monitor_score_seconds",
    unit="s",
    description="wall time of one guard batch",
    explicit_bucket_boundaries_advisory=_SECONDS,
)
batch_size = _meter.create_histogram(
    "qta_monitor_batch_size",
    description="prefixes per guard batch",
    explicit_bucket_boundaries_advisory=_SIZES,
)
chunk_to_verdict_seconds = _meter.create_histogram(
    "qta_monitor_chunk_to_verdict_seconds",
    unit="s",
    description="producer timestamp of the newest chunk covered -> verdict published",
    explicit_bucket_boundaries_advisory=_SECONDS,
)
verdicts = _meter.create_counter("qta_monitor_verdicts_total", description="verdicts published, by status")
aborts = _meter.create_counter("qta_monitor_aborts_total", description="abort / steer events published")
aborts_repeated = _meter.create_counter(
    "qta_monitor_aborts_repeated_total", description="aborts published again: chunks came after the abort"
)
sessions_restarted = _meter.create_counter(
    "qta_monitor_sessions_restarted_total", description="session ids seen again from seq 1 (a new epoch)"
)
dead_letters = _meter.create_counter(
    "qta_monitor_dead_letters_total", description="messages sent to the dead-letter topic, by reason"
)
escalations = _meter.create_counter(
    "qta_monitor_escalations_total", description="prefixes re-scored by the escalation guard"
)
sessions_live = _meter.create_gauge("qta_monitor_sessions_live", description="sessions held in memory")
pending_sessions = _meter.create_gauge(
    "qta_monitor_pending_sessions", description="sessions with unscored content or an open gap"
)
partitions_paused = _meter.create_gauge(
    "qta_monitor_partitions_paused", description="1 while backpressure pauses the partitions"
)
unavailable = _meter.create_counter(
    "qta_monitor_unavailable_total", description="Redis / Kafka failures that triggered a retry"
)

produce_errors = _meter.create_counter(
    "qta_monitor_produce_errors_total", description="publishes to Kafka that failed, by error"
)

engine_prompt_tokens = _meter.create_counter(
    "qta_monitor_engine_prompt_tokens_total", description="prompt tokens sent to a serving engine"
)
engine_cached_tokens = _meter.create_counter(
    "qta_monitor_engine_cached_tokens_total", description="prompt tokens the engine's prefix cache held"
)

# (counter, label name, every value it takes): exported at 0 by start().
ZEROED: tuple[tuple[Counter, str, tuple[str, ...]], ...] = (
    (chunks, "part", get_args(Part)),
    (verdicts, "status", get_args(Verdict.model_fields["status"].annotation)),
    (dead_letters, "reason", get_args(DeadLetterReason)),
    (unavailable, "service", ("kafka", "redis")),
    (produce_errors, "error", ("timeout",)),
    (aborts_repeated, "action", get_args(Action)),
)

_lag: dict[tuple[str, int], int] = {}


def set_consumer_lag(lags: Mapping[tuple[str, int], int]) -> None:
    """Replace the lag of every partition this worker owns; partitions left out are no longer reported."""
    _lag.clear()
    _lag.update(lags)


def _observe_lag(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(lag, {"topic": t, "partition": str(p)}) for (t, p), lag in sorted(_lag.items())]


consumer_lag = _meter.create_observable_gauge(
    "qta_monitor_consumer_lag",
    callbacks=[_observe_lag],
    description="records behind the end offset of each partition this worker owns",
)

_started = False


def start(settings: Settings, readiness: Readiness | None = None) -> WSGIServer | None:
    """Install the SDK meter provider with the Prometheus exporter and serve /metrics, and /ready for
    `readiness`, on telemetry.metrics_host:metrics_port; the server, or None (port 0, or started before)."""
    global _started
    if _started:
        return None
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource

    reader = PrometheusMetricReader()
    resource = Resource.create({"service.name": settings.telemetry.service_name})
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
    for counter, label, values in ZEROED:
        for value in values:
            counter.add(0, {label: value})
    sessions_restarted.add(0)
    host, port = settings.telemetry.metrics_host, settings.telemetry.metrics_port
    server = None
    if port:
        server = serve_http(port, readiness or Readiness(), host=host)
        shown = f"[{host}]" if ":" in host else host
        log.info("metrics at http://%s:%d/metrics, readiness at /ready", shown, port)
    _started = True
    return server
