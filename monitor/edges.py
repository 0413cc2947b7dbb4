"""The worker's two edges to Kafka as plain types: a `Record` read, the `ChunkSource` it is read from, the
`EventSink` verdicts and aborts go to, and the one error they raise. No I/O library here; the real edges
live in `monitor.kafka`, the in-memory twins in `monitor.kafka_memory` (both re-exported by monitor.kafka)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

TopicPartition = tuple[str, int]
Headers = tuple[tuple[str, bytes], ...]  # Kafka record headers, in order; names may repeat
# Called with the partitions just revoked / assigned; the worker commits (revoked) or loads state (assigned).
PartitionsCallback = Callable[[frozenset[TopicPartition]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int
    headers: Headers = ()


# (topic, key, value) or (topic, key, value, headers): a dead letter keeps its record's key and headers
Message = tuple[str, bytes | None, bytes] | tuple[str, bytes | None, bytes, Headers]


def unpack(message: Message) -> tuple[str, bytes | None, bytes, Headers]:
    if len(message) == 4:
        return message
    topic, key, value = message
    return topic, key, value, ()


class KafkaUnavailable(Exception):
    """Kafka could not do what was asked. `recoverable`: retrying later may succeed (broker down, timeout,
    rebalance); otherwise the request itself is wrong (unknown topic, message too large, not authorised)."""

    def __init__(self, message: str, *, recoverable: bool) -> None:
        super().__init__(message)
        self.recoverable = recoverable


class CommitRejected(KafkaUnavailable):
    """The group rebalanced before the commit: these partitions now belong to another member, which will
    re-read from the last committed offset (at-least-once). Recoverable: keep polling."""

    def __init__(self, message: str) -> None:
        super().__init__(message, recoverable=True)


class ChunkSource(Protocol):
    """A consumer-group member with manual commits."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def poll(self, timeout_s: float, max_records: int) -> list[Record]: ...
    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """`offsets`: the next offset to read per (topic, partition)."""
        ...

    def pause(self) -> None:
        """Stop fetching from all assigned partitions (backpressure); also applies to later assignments."""
        ...

    def resume(self) -> None: ...
    def assignment(self) -> frozenset[TopicPartition]: ...


class EventSink(Protocol):
    """An idempotent producer with acks=all."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def publish(self, messages: Sequence[Message]) -> None:
        """(topic, key, value[, headers]) each; returns once all are acknowledged; raises KafkaUnavailable."""
        ...


async def no_partitions_callback(partitions: frozenset[TopicPartition]) -> None:
    """Default rebalance callback: nothing to do."""
