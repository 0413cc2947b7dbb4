"""The ports the core calls, as plain types: to Kafka, a `Record` read, the `ChunkSource` it is read from,
the `EventSink` verdicts and aborts go to, and the one error they raise; to state, the `SessionStore` and
its error. No I/O library here; the real edges live in `monitor.edges.kafka` and `monitor.edges.store`, the
in-memory twins in `monitor.edges.kafka_memory` and `monitor.edges.store`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from monitor.core.session import SessionState

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


class StoreUnavailable(Exception):
    """The store cannot be reached or refused; `recoverable` says whether retrying can help."""

    def __init__(self, message: str, *, recoverable: bool) -> None:
        super().__init__(message)
        self.recoverable = recoverable


class SessionStore(Protocol):
    async def load(self, session_ids: Iterable[str]) -> dict[str, SessionState]:
        """The stored state of each known session; unknown ids are left out."""
        ...

    async def save(self, states: Sequence[SessionState]) -> frozenset[str]:
        """Persist what each state folded since its last save; returns the ids whose stored seq had moved
        on (a replay or another worker): those were not written and should be reloaded."""
        ...

    async def claim_abort(self, session_id: str, event_id: str, kind: str = "abort") -> bool:
        """True for the first event id ever claimed for the session (and `kind`: "abort", or "steer", with
        ":<epoch>" after a restart), and again for that same id (so a replay after a failed publish
        re-publishes it); False for any other id."""
        ...

    async def claimed_abort(self, session_id: str, kind: str = "abort") -> str | None:
        """The event id claimed for the session's abort (or `kind`), if any."""
        ...

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers (the worker's start-up readiness check)."""
        ...

    async def close(self) -> None: ...
