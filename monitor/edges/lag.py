"""Consumer lag, measured every few seconds from the worker loop, two ways from the same end offsets:

    qta_monitor_consumer_lag{topic,partition}            end offset - this worker's position
    qta_monitor_consumer_lag_committed{topic,partition}  end offset - the group's committed offset

The first is how far behind the worker's reading is: it drops as soon as records are polled. The second is
the lag KEDA's Kafka scaler sees (deploy/k8s/base/scaledobject.yaml), which reads the committed offsets.
It is never the smaller of the two: it also counts the work in flight, records polled but not yet scored,
published, saved and committed (the worker commits last, and never past a chunk it has not scored), so it
stays above the position lag while a stride waits for its batch or a retry waits for Redis or Kafka.
A partition the group never committed counts from offset 0, as KEDA does with `offsetResetPolicy:
earliest`. Each worker exports only the partitions it owns, so the sum over workers is the group's total,
which KEDA compares with `lagThreshold`.

The measurement also probes Kafka for the readiness endpoint: a failed one marks Kafka down, the next good
one marks it up again. No I/O library here; the source does the asking
(monitor.edges.kafka.KafkaChunkSource.lags, monitor.edges.kafka_memory.MemoryChunkSource.lags)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from monitor import telemetry
from monitor.core.ports import KafkaUnavailable, TopicPartition
from monitor.edges.health import Readiness

log = logging.getLogger(__name__)

LAG_INTERVAL_S = 5.0  # one ListOffsets request per interval; Prometheus scrapes every 5 s in compose


class LagSource(Protocol):
    async def lags(self) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        """Per assigned partition, from one set of end offsets: (records after this member's position,
        records after the group's committed offset)."""
        ...


_committed: dict[TopicPartition, int] = {}


def set_committed_lag(lags: Mapping[TopicPartition, int]) -> None:
    """Replace the committed lag of every partition this worker owns; partitions left out drop out."""
    _committed.clear()
    _committed.update(lags)


def _observe_committed(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(n, {"topic": t, "partition": str(p)}) for (t, p), n in sorted(_committed.items())]


# Beside telemetry's position lag, on the same meter (a no-op until telemetry.start installs the SDK).
consumer_lag_committed = metrics.get_meter("qta-monitor").create_observable_gauge(
    "qta_monitor_consumer_lag_committed",
    callbacks=[_observe_committed],
    description="records after the consumer group's committed offset of each partition this worker owns "
    "(the lag KEDA scales on)",
)


class LagReporter:
    def __init__(
        self,
        source: LagSource,
        readiness: Readiness | None = None,
        *,
        interval_s: float = LAG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._readiness = readiness
        self._interval_s = interval_s
        self._clock = clock
        self._due = clock()
        self._failing = False
        self.last: dict[TopicPartition, int] = {}  # position lag
        self.last_committed: dict[TopicPartition, int] = {}

    async def tick(self) -> None:
        """Measure and export the lag if the interval has passed since the last measurement."""
        if self._clock() < self._due:
            return
        self._due = self._clock() + self._interval_s
        await self.measure()

    async def measure(self) -> None:
        try:
            by_position, by_commit = await self._source.lags()
        except KafkaUnavailable as exc:
            # Said once per outage (the client retries quietly); lag keeps its last measurement meanwhile.
            if not self._failing:
                log.warning("consumer lag not measured: %s", exc)
            self._failing = True
            if self._readiness is not None:
                self._readiness.down("kafka", str(exc))
            return
        if self._failing:  # only undo its own verdict: a failing publish marks Kafka down by itself
            log.info("consumer lag measured again")
            if self._readiness is not None:
                self._readiness.up("kafka")
        self._failing = False
        self.last, self.last_committed = by_position, by_commit
        telemetry.set_consumer_lag(by_position)
        set_committed_lag(by_commit)
