"""In-memory twins of the Kafka edges, for pure unit tests of the worker and for `eval` without a broker.

`MemoryBroker` holds topic -> partitions -> records, partitions keys like Kafka does (same key, same
partition) and keeps committed offsets per group. `MemoryChunkSource` is a single group member that owns
every partition; `MemoryEventSink` appends and can be told to fail. Like aiokafka, `stop()` calls no
rebalance callback: a worker commits before it stops."""

from __future__ import annotations

import asyncio
import itertools
import time
import zlib
from collections.abc import Mapping, Sequence

from monitor import telemetry
from monitor.core.ports import (
    CommitRejected,
    Headers,
    KafkaUnavailable,
    Message,
    PartitionsCallback,
    Record,
    TopicPartition,
    no_partitions_callback,
    unpack,
)


class MemoryBroker:
    def __init__(self, default_partitions: int = 3) -> None:
        self.default_partitions = default_partitions
        self.topics: dict[str, list[list[Record]]] = {}
        self.committed: dict[tuple[str, str, int], int] = {}  # (group, topic, partition) -> next offset
        self._round_robin = itertools.count()
        self._appended: asyncio.Event | None = None

    def create_topic(self, name: str, partitions: int | None = None) -> None:
        if name not in self.topics:
            self.topics[name] = [[] for _ in range(partitions or self.default_partitions)]

    def partition_for(self, topic: str, key: bytes | None) -> int:
        n = len(self.topics[topic])
        if key is None:
            return next(self._round_robin) % n
        return zlib.crc32(key) % n  # any stable hash keeps a session on one partition

    def append(self, topic: str, key: bytes | None, value: bytes, headers: Headers = ()) -> Record:
        self.create_topic(topic)
        partition = self.partition_for(topic, key)
        log = self.topics[topic][partition]
        record = Record(topic, partition, len(log), key, value, int(time.time() * 1000), tuple(headers))
        log.append(record)
        if self._appended is not None:
            self._appended.set()
        return record

    def records(self, topic: str, partition: int | None = None) -> list[Record]:
        """Everything in a topic (one partition, or all in partition order), for assertions."""
        logs = self.topics.get(topic, [])
        if partition is not None:
            return list(logs[partition])
        return [record for log in logs for record in log]

    def values(self, topic: str) -> list[bytes]:
        return [record.value for record in self.records(topic)]

    async def wait_for_append(self, timeout_s: float) -> None:
        if self._appended is None:
            self._appended = asyncio.Event()
        self._appended.clear()
        try:
            await asyncio.wait_for(self._appended.wait(), timeout_s)
        except TimeoutError:
            pass


class MemoryEventSink:
    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self.started = False
        self._failures: list[KafkaUnavailable] = []

    def fail_next(self, error: KafkaUnavailable, times: int = 1) -> None:
        """The next `times` publishes raise `error` and append nothing."""
        self._failures.extend([error] * times)

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    async def publish(self, messages: Sequence[Message]) -> None:
        if not self.started:
            raise KafkaUnavailable("publish on a sink that is not started", recoverable=False)
        if self._failures:
            telemetry.produce_errors.add(1, {"error": "injected"})
            raise self._failures.pop(0)
        for topic, key, value, headers in map(unpack, messages):
            self.broker.append(topic, key, value, headers)
        await asyncio.sleep(0)  # a real publish yields to the loop too


class MemoryChunkSource:
    def __init__(
        self,
        broker: MemoryBroker,
        topics: Sequence[str],
        *,
        group_id: str = "qta-monitor",
        on_assigned: PartitionsCallback = no_partitions_callback,
        on_revoked: PartitionsCallback = no_partitions_callback,
    ) -> None:
        self.broker = broker
        self.topics = tuple(topics)
        self.group_id = group_id
        self.on_assigned = on_assigned
        self.on_revoked = on_revoked
        self.commits: list[dict[TopicPartition, int]] = []  # every commit, for assertions
        self._positions: dict[TopicPartition, int] = {}
        self._paused = False
        self._next_first = 0

    async def start(self) -> None:
        for topic in self.topics:
            self.broker.create_topic(topic)
        everything = frozenset(
            (topic, p) for topic in self.topics for p in range(len(self.broker.topics[topic]))
        )
        await self.rebalance(everything)

    async def stop(self) -> None:
        self._positions = {}

    async def rebalance(self, assignment: frozenset[TopicPartition]) -> None:
        """Simulate a rebalance: revoke everything, then assign `assignment`, reading from the committed
        offsets (uncommitted records are delivered again, as after a crash)."""
        if self._positions:
            await self.on_revoked(frozenset(self._positions))
        self._positions = {
            (t, p): self.broker.committed.get((self.group_id, t, p), 0) for t, p in sorted(assignment)
        }
        await self.on_assigned(frozenset(self._positions))

    async def poll(self, timeout_s: float, max_records: int) -> list[Record]:
        out = self._take(max_records)
        if not out and timeout_s > 0:
            await self.broker.wait_for_append(timeout_s)
            out = self._take(max_records)
        return out

    def _take(self, max_records: int) -> list[Record]:
        if self._paused or not self._positions:
            return []
        order = sorted(self._positions)
        # Rotate the starting partition so one busy partition cannot starve the others.
        self._next_first = (self._next_first + 1) % len(order)
        out: list[Record] = []
        for topic, partition in order[self._next_first :] + order[: self._next_first]:
            log = self.broker.topics[topic][partition]
            start = self._positions[(topic, partition)]
            taken = log[start : start + max_records - len(out)]
            out.extend(taken)
            self._positions[(topic, partition)] = start + len(taken)
            if len(out) >= max_records:
                break
        return out

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        lost = set(offsets) - set(self._positions)
        if lost:
            raise CommitRejected(f"not assigned to this member: {sorted(lost)}")
        for (topic, partition), offset in offsets.items():
            self.broker.committed[(self.group_id, topic, partition)] = offset
        self.commits.append(dict(offsets))

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    @property
    def paused(self) -> bool:
        return self._paused

    def assignment(self) -> frozenset[TopicPartition]:
        return frozenset(self._positions)

    async def lag(self) -> dict[TopicPartition, int]:
        """Records between this member's position and the end of each assigned partition."""
        return (await self.lags())[0]

    async def lags(self) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        """(end - position, end - the group's committed offset) per assigned partition, as the Kafka
        source measures them (no commit yet counts from 0)."""
        ends = {(t, p): len(self.broker.topics[t][p]) for t, p in sorted(self._positions)}
        committed = {tp: self.broker.committed.get((self.group_id, *tp), 0) for tp in ends}
        return (
            {tp: end - self._positions[tp] for tp, end in ends.items()},
            {tp: max(0, end - committed[tp]) for tp, end in ends.items()},
        )
