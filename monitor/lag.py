"""Consumer lag: how many records of each partition this worker owns are still ahead of it (the broker's end
offset minus the consumer's own position), measured every few seconds from the worker loop and exported as
`qta_monitor_consumer_lag{topic,partition}`. The measurement also probes Kafka for the readiness endpoint:
a failed one marks Kafka down, the next good one marks it up again. No I/O library here; the source does the
asking (monitor.kafka.KafkaChunkSource.lag, monitor.kafka_memory.MemoryChunkSource.lag)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from monitor import telemetry
from monitor.edges import KafkaUnavailable, TopicPartition
from monitor.health import Readiness

log = logging.getLogger(__name__)

LAG_INTERVAL_S = 5.0  # one ListOffsets request per interval; Prometheus scrapes every 5 s in compose


class LagSource(Protocol):
    async def lag(self) -> dict[TopicPartition, int]:
        """Records between this member's position and the end of each assigned partition."""
        ...


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
        self.last: dict[TopicPartition, int] = {}

    async def tick(self) -> None:
        """Measure and export the lag if the interval has passed since the last measurement."""
        if self._clock() < self._due:
            return
        self._due = self._clock() + self._interval_s
        await self.measure()

    async def measure(self) -> None:
        try:
            lags = await self._source.lag()
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
        self.last = lags
        telemetry.set_consumer_lag(lags)
