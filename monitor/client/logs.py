"""The Kafka client's log lines for states that are expected and pass by themselves, kept out of the output
of `serve`, `demo` and the other commands: right after topics are created their partitions have no leader
and the group no coordinator for a moment (NotLeaderForPartition, LeaderNotAvailable, coordinator not
available), and a broker that cannot be reached is said once, in our own words, by the code that needed it
(monitor.edges.health.not_reachable) instead of by every connection attempt. With the `monitor` loggers
at DEBUG the lines come back, for whoever is chasing the client itself."""

from __future__ import annotations

import logging

# aiokafka logs from one logger per module; a filter on a logger does not see its children's records.
CLIENT_LOGGERS = (
    "aiokafka",
    "aiokafka.client",
    "aiokafka.cluster",
    "aiokafka.conn",
    "aiokafka.consumer.consumer",
    "aiokafka.consumer.fetcher",
    "aiokafka.consumer.group_coordinator",
    "aiokafka.producer.producer",
    "aiokafka.producer.sender",
    "aiokafka.admin.client",
)
EXPECTED = (
    "NotLeaderForPartition",
    "LeaderNotAvailable",
    "CoordinatorNotAvailable",
    "NotCoordinator",
    "Unable connect to",
    "Unable to update metadata",
)


class ExpectedStates(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not any(expected in message for expected in EXPECTED):
            return True
        return logging.getLogger("monitor").isEnabledFor(logging.DEBUG)


_FILTER = ExpectedStates()


def quiet_client_logs() -> None:
    """Install the filter on every aiokafka logger (idempotent)."""
    for name in CLIENT_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
