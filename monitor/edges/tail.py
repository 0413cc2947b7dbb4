"""`EventTail`: reads the event topics (verdicts, aborts, dead letters) from their end, or their beginning,
without a consumer group, so reading never takes partitions from anyone and commits nothing. `qta-monitor
watch`, the demo and the SDK's `MonitorHealth` read through it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from monitor.edges.kafka import KafkaUnavailable, connection_kwargs, partitions_of
from monitor.messages import (
    Abort,
    DeadLetter,
    DecodeError,
    Verdict,
    decode_abort,
    decode_dead_letter,
    decode_verdict,
)
from monitor.settings import Settings

Event = Verdict | Abort | DeadLetter


class WatchError(Exception):
    """The event topics cannot be read (broker unreachable, topic missing)."""


class EventTail:
    """Every partition of `topics`, read from the end (default) or the beginning. Positions are resolved in
    `start()`, so an event published after it returns is never missed."""

    def __init__(self, settings: Settings, topics: Sequence[str], *, from_beginning: bool = False) -> None:
        self.settings = settings
        self.topics = tuple(topics)
        self.from_beginning = from_beginning
        t = settings.topics
        self._decoders = {
            t.verdicts: decode_verdict,
            t.aborts: decode_abort,
            t.dead_letters: decode_dead_letter,
        }
        self._consumer: Any = None

    async def start(self) -> None:
        where = f"{', '.join(self.topics)} at {self.settings.kafka.bootstrap}"
        self._consumer = AIOKafkaConsumer(**connection_kwargs(self.settings.kafka), enable_auto_commit=False)
        try:
            async with asyncio.timeout(self.settings.kafka.request_timeout_s):
                tps = []
                for topic in self.topics:
                    partitions = await partitions_of(self.settings, topic)
                    if not partitions:
                        raise WatchError(
                            f"topic {topic} at {self.settings.kafka.bootstrap} does not exist"
                            " (run `qta-monitor topics apply`)"
                        )
                    tps += [TopicPartition(topic, p) for p in partitions]
                await self._consumer.start()
                self._consumer.assign(tps)
                if self.from_beginning:
                    await self._consumer.seek_to_beginning(*tps)
                else:
                    await self._consumer.seek_to_end(*tps)
                for tp in tps:  # resolve positions now: an event published after start() is never missed
                    await self._consumer.position(tp)
        except (KafkaError, KafkaUnavailable, TimeoutError, WatchError) as exc:
            await self._consumer.stop()
            self._consumer = None
            if isinstance(exc, WatchError):
                raise
            raise WatchError(f"cannot read {where}: {exc!r}") from exc

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def __aenter__(self) -> EventTail:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def poll(self, timeout_s: float) -> list[Event]:
        """The events that arrived, in partition order; undecodable ones are skipped (not ours to judge)."""
        try:
            batches = await self._consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=1000)
        except KafkaError as exc:
            raise WatchError(f"reading {', '.join(self.topics)} failed: {exc!r}") from exc
        events: list[Event] = []
        for tp, messages in batches.items():
            decode = self._decoders[tp.topic]
            for message in messages:
                event = decode(message.value or b"")
                if not isinstance(event, DecodeError):
                    events.append(event)
        return events
