"""Kafka for the worker and the CLI: connection settings (TLS, SASL), `apply_topics` (the topics/ contract
made real, idempotently), the consumer-group `KafkaChunkSource` and the idempotent `KafkaEventSink`.

The only module besides monitor.sdk (and monitor.edges.auth, which explains refused TLS / SASL connections
for it) that imports aiokafka; its errors become `KafkaUnavailable` here.
The edge types come from monitor.core.ports and the in-memory twins from monitor.edges.kafka_memory; both are
re-exported so a caller imports everything Kafka-shaped from one place."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaConnectionError, KafkaError, for_code
from aiokafka.helpers import create_ssl_context

from monitor import telemetry
from monitor.core.ports import (
    ChunkSource,
    CommitRejected,
    EventSink,
    KafkaUnavailable,
    Message,
    PartitionsCallback,
    Record,
    no_partitions_callback,
    unpack,
)
from monitor.edges.health import not_reachable
from monitor.edges.kafka_memory import MemoryBroker, MemoryChunkSource, MemoryEventSink
from monitor.settings import ConfigError, KafkaSettings, Settings

__all__ = [
    "ChunkSource", "CommitRejected", "EventSink", "KafkaChunkSource", "KafkaEventSink", "KafkaUnavailable",
    "MemoryBroker", "MemoryChunkSource", "MemoryEventSink", "Message", "Record", "TopicSpec", "apply_topics",
    "connection_kwargs", "delete_topics", "partitions_of", "topic_specs",
]  # fmt: skip

MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # chunks carry inline images; matches topics.json and the broker
_UNKNOWN_TOPIC = 3


def connection_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """aiokafka client arguments for the configured security protocol (TLS context, SASL credentials)."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap,
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
        "request_timeout_ms": int(kafka.request_timeout_s * 1000),
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        if (kafka.tls_cert is None) != (kafka.tls_key is None):
            raise ConfigError("kafka.tls_cert and kafka.tls_key: give both (client certificate) or neither")
        kwargs["ssl_context"] = create_ssl_context(
            cafile=kafka.tls_ca, certfile=kafka.tls_cert, keyfile=kafka.tls_key
        )
    if kafka.security_protocol.startswith("SASL_"):
        if kafka.sasl_mechanism is None or kafka.sasl_username is None or kafka.sasl_password is None:
            raise ConfigError(
                "kafka.sasl_mechanism, kafka.sasl_username, kafka.sasl_password: all required with "
                f"security_protocol {kafka.security_protocol}"
            )
        kwargs["sasl_mechanism"] = kafka.sasl_mechanism
        kwargs["sasl_plain_username"] = kafka.sasl_username
        kwargs["sasl_plain_password"] = kafka.sasl_password.get_secret_value()
    return kwargs


def unavailable(exc: BaseException, doing: str, bootstrap: str) -> KafkaUnavailable:
    if isinstance(exc, KafkaConnectionError) and "bootstrap" in str(exc):  # nothing answers at that address
        return KafkaUnavailable(not_reachable("Kafka", bootstrap, "kafka.bootstrap"), recoverable=True)
    recoverable = isinstance(exc, KafkaConnectionError | TimeoutError) or bool(
        getattr(exc, "retriable", False)
    )
    return KafkaUnavailable(f"Kafka at {bootstrap}: {doing} failed: {exc!r}", recoverable=recoverable)


async def connect_failed(exc: BaseException, doing: str, kafka: KafkaSettings) -> KafkaUnavailable:
    """`unavailable`, except that a TLS / SASL refusal (bad certificate, wrong password) is named and is
    not recoverable: retrying cannot fix it, so a worker stops at once instead of retrying forever."""
    from monitor.edges.auth import explain_refusal

    if isinstance(exc, KafkaConnectionError):
        reason = await explain_refusal(kafka, connection_kwargs(kafka))
        if reason is not None:
            return KafkaUnavailable(reason, recoverable=False)
    return unavailable(exc, doing, kafka.bootstrap)


# ---------------------------------------------------------------------------------------------- topics
@dataclass(frozen=True, slots=True)
class TopicSpec:
    role: str
    name: str
    partitions: int
    replication: int
    configs: Mapping[str, str]


def _definitions(settings: Settings) -> dict[str, Any]:
    path = settings.topics.definitions_dir / "topics.json"
    if not path.exists():  # run from elsewhere: the checkout this package is installed from
        path = Path(__file__).resolve().parent.parent / "topics" / "topics.json"
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The topic definitions of topics/topics.json with the names of `settings.topics`."""
    t = settings.topics
    if t.replication_factor is not None and (t.min_insync_replicas or 1) > t.replication_factor:
        raise ConfigError("topics.min_insync_replicas must not exceed topics.replication_factor")
    specs = []
    for role, spec in _definitions(settings).items():
        if role.startswith("_"):
            continue
        name = getattr(t, role)
        configs = {k: str(v) for k, v in spec.get("configs", {}).items()}
        if t.min_insync_replicas is not None:
            configs["min.insync.replicas"] = str(t.min_insync_replicas)
        replication = t.replication_factor or int(spec["replication"])
        specs.append(TopicSpec(role, name, int(spec["partitions"]), replication, configs))
    return specs


@asynccontextmanager
async def _admin(settings: Settings) -> AsyncIterator[Any]:
    admin = AIOKafkaAdminClient(**connection_kwargs(settings.kafka))
    try:
        await admin.start()
    except KafkaError as exc:
        await admin.close()
        raise await connect_failed(exc, "connect (admin)", settings.kafka) from exc
    try:
        yield admin
    except KafkaError as exc:
        raise unavailable(exc, "admin request", settings.kafka.bootstrap) from exc
    finally:
        await admin.close()


def _raise_errors(pairs: Sequence[tuple[str, int, str | None]], doing: str, ok: frozenset[int]) -> None:
    for name, code, message in pairs:
        if code and code not in ok:
            raise KafkaUnavailable(
                f"{doing} {name}: {for_code(code).__name__} {message or ''}", recoverable=False
            )


async def _current_configs(admin: Any, names: Sequence[str]) -> dict[str, dict[str, str]]:
    if not names:
        return {}
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    out: dict[str, dict[str, str]] = {}
    for response in responses:
        for res in response.to_object()["resources"]:
            entries = res["config_entries"]
            out[res["resource_name"]] = {e["config_names"]: e["config_value"] for e in entries}
    return out


async def _settle(admin: Any, specs: Sequence[TopicSpec], timeout_s: float) -> None:
    """Wait (briefly) until the broker's metadata shows what was just created or changed: every partition
    with a leader and the defined configs, so that an immediate second apply sees no difference."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while specs and loop.time() < deadline:
        topics = {t["topic"]: t for t in await admin.describe_topics([s.name for s in specs])}
        configs = await _current_configs(admin, [s.name for s in specs])
        if all(
            topics[s.name]["error_code"] == 0
            and len(topics[s.name]["partitions"]) >= s.partitions
            and all(p["leader"] >= 0 for p in topics[s.name]["partitions"])
            and all(configs.get(s.name, {}).get(k) == v for k, v in s.configs.items())
            for s in specs
        ):
            return
        await asyncio.sleep(0.1)


async def apply_topics(settings: Settings) -> list[str]:
    """Create missing topics, add partitions and align configs where they differ from topics/topics.json.
    Returns one line per topic: created / updated / unchanged. Running it twice changes nothing."""
    specs = topic_specs(settings)
    lines: dict[str, str] = {}
    async with _admin(settings) as admin:
        described = {t["topic"]: t for t in await admin.describe_topics([s.name for s in specs])}
        missing = [s for s in specs if described[s.name]["error_code"] == _UNKNOWN_TOPIC]
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(s.name, s.partitions, s.replication, topic_configs=dict(s.configs))
                    for s in missing
                ]
            )
            _raise_errors(response.topic_errors, "create topic", frozenset({36}))  # 36: created meanwhile
            for s in missing:
                configs = ", ".join(f"{k}={v}" for k, v in sorted(s.configs.items()))
                lines[s.name] = (
                    f"created   {s.name}: {s.partitions} partitions, rf {s.replication}, {configs}"
                )
        existing = [s for s in specs if s not in missing]
        _raise_errors(
            [(s.name, described[s.name]["error_code"], None) for s in existing], "describe", frozenset()
        )
        current = await _current_configs(admin, [s.name for s in existing])
        for s in existing:
            changes, notes = [], []
            have = len(described[s.name]["partitions"])
            if have < s.partitions:
                await admin.create_partitions({s.name: NewPartitions(s.partitions)})
                changes.append(f"partitions {have} -> {s.partitions}")
            elif have > s.partitions:
                notes.append(
                    f"has {have} partitions, more than the {s.partitions} defined; Kafka cannot shrink"
                )
            replicas = len(described[s.name]["partitions"][0]["replicas"])
            if replicas != s.replication:
                notes.append(
                    f"has replication {replicas}, not {s.replication}; reassign partitions to change"
                )
            diff = {k: v for k, v in s.configs.items() if current[s.name].get(k) != v}
            if diff:
                # AlterConfigs replaces the topic's dynamic configs, so send the whole defined set.
                resource = ConfigResource(ConfigResourceType.TOPIC, s.name, dict(s.configs))
                for response in await admin.alter_configs([resource]):
                    _raise_errors(
                        [(r[3], r[0], r[1]) for r in response.resources], "alter configs of", frozenset()
                    )
                changes += [f"{k} {current[s.name].get(k)} -> {v}" for k, v in sorted(diff.items())]
            word = "updated  " if changes else "unchanged"
            detail = ": " + "; ".join(changes) if changes else ""
            lines[s.name] = f"{word} {s.name}{detail}" + (f" ({'; '.join(notes)})" if notes else "")
        touched = [s for s in specs if not lines[s.name].startswith("unchanged")]
        await _settle(admin, touched, settings.kafka.request_timeout_s)
    return [lines[s.name] for s in specs]


async def partitions_of(settings: Settings, topic: str) -> list[int]:
    """The partition numbers of `topic`; empty when it does not exist."""
    async with _admin(settings) as admin:
        (described,) = await admin.describe_topics([topic])
    if described["error_code"] == _UNKNOWN_TOPIC:
        return []
    _raise_errors([(topic, described["error_code"], None)], "describe", frozenset())
    return sorted(p["partition"] for p in described["partitions"])


async def delete_topics(settings: Settings) -> None:
    """Delete the topics named by `settings.topics` (tests clean up after themselves); absent is fine."""
    names = [s.name for s in topic_specs(settings)]
    async with _admin(settings) as admin:
        response = await admin.delete_topics(names)
        _raise_errors([(t[0], t[1], None) for t in response.topic_error_codes], "delete", frozenset({3}))


# ---------------------------------------------------------------------------------------------- edges
class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaChunkSource) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._source.on_revoked(frozenset((tp.topic, tp.partition) for tp in revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if self._source.paused and assigned:
            self._source.consumer.pause(*assigned)
        await self._source.on_assigned(frozenset((tp.topic, tp.partition) for tp in assigned))


class KafkaChunkSource:
    """A consumer-group member over the chunks topic (or `topics`), committing only when told to.
    Like aiokafka, `stop()` runs no rebalance callback: commit before stopping."""

    def __init__(
        self,
        settings: Settings,
        *,
        on_assigned: PartitionsCallback = no_partitions_callback,
        on_revoked: PartitionsCallback = no_partitions_callback,
        topics: Sequence[str] | None = None,
        group_id: str | None = None,
        auto_offset_reset: str = "earliest",
    ) -> None:
        self.settings = settings
        self.on_assigned = on_assigned
        self.on_revoked = on_revoked
        self.topics = tuple(topics) if topics is not None else (settings.topics.chunks,)
        self.group_id = group_id or settings.kafka.group_id
        self.auto_offset_reset = auto_offset_reset
        self.paused = False
        self._consumer: Any = None

    @property
    def consumer(self) -> Any:
        if self._consumer is None:
            raise RuntimeError("KafkaChunkSource used before start()")
        return self._consumer

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            **connection_kwargs(self.settings.kafka),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset=self.auto_offset_reset,
            max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
            fetch_max_bytes=4 * MAX_MESSAGE_BYTES,
        )
        try:
            await self._consumer.start()
        except KafkaError as exc:
            await self._consumer.stop()
            raise await connect_failed(exc, "connect (consumer)", self.settings.kafka) from exc
        self._consumer.subscribe(list(self.topics), listener=_Listener(self))

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def poll(self, timeout_s: float, max_records: int) -> list[Record]:
        try:
            batches = await self.consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except KafkaError as exc:
            raise unavailable(exc, "poll", self.settings.kafka.bootstrap) from exc
        return [
            Record(
                tp.topic, tp.partition, m.offset, m.key, m.value or b"", m.timestamp, tuple(m.headers or ())
            )
            for tp, messages in sorted(batches.items())
            for m in messages
        ]

    async def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        if not offsets:
            return
        try:
            await self.consumer.commit({TopicPartition(t, p): o for (t, p), o in offsets.items()})
        except (CommitFailedError, IllegalStateError) as exc:
            raise CommitRejected(f"commit of {dict(offsets)} rejected: {exc}") from exc
        except KafkaError as exc:
            raise unavailable(exc, "commit", self.settings.kafka.bootstrap) from exc

    def pause(self) -> None:
        self.paused = True
        self.consumer.pause(*self.consumer.assignment())

    def resume(self) -> None:
        self.paused = False
        self.consumer.resume(*self.consumer.assignment())

    def assignment(self) -> frozenset[tuple[str, int]]:
        return frozenset((tp.topic, tp.partition) for tp in self.consumer.assignment())

    async def lag(self) -> dict[tuple[str, int], int]:
        """Per assigned partition: the broker's end offset minus this member's position (the next offset
        it hands out), so records fetched ahead but not yet polled still count as lag."""
        return (await self.lags())[0]

    async def lags(self) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int]]:
        """Per assigned partition, from one set of end offsets: (end - this member's position, end - the
        group's committed offset). The second is what KEDA's Kafka scaler sees; a partition the group never
        committed counts from offset 0, as that scaler does with `offsetResetPolicy: earliest`."""
        assigned = sorted(self.consumer.assignment())
        if not assigned:
            return {}, {}
        try:
            async with asyncio.timeout(self.settings.kafka.request_timeout_s):
                ends = await self.consumer.end_offsets(assigned)
                positions = {tp: await self.consumer.position(tp) for tp in assigned}
                # one OffsetFetch per partition (aiokafka's public API); concurrent, so one round trip
                committed = await asyncio.gather(*(self.consumer.committed(tp) for tp in assigned))
        except IllegalStateError:
            return {}, {}  # revoked while asking; the next measurement sees the new assignment
        except TimeoutError as exc:
            raise unavailable(exc, "end offsets", self.settings.kafka.bootstrap) from exc
        except KafkaError as exc:
            raise unavailable(exc, "end offsets", self.settings.kafka.bootstrap) from exc
        by_position = {(tp.topic, tp.partition): max(0, ends[tp] - positions[tp]) for tp in assigned}
        by_commit = {
            (tp.topic, tp.partition): max(0, ends[tp] - (done or 0))
            for tp, done in zip(assigned, committed, strict=True)
        }
        return by_position, by_commit


class KafkaEventSink:
    """An idempotent producer (acks=all); `publish` returns once every message is acknowledged."""

    def __init__(self, settings: Settings, *, linger_ms: int = 5) -> None:
        self.settings = settings
        self.linger_ms = linger_ms
        self._producer: Any = None

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            **connection_kwargs(self.settings.kafka),
            acks="all",
            enable_idempotence=True,
            linger_ms=self.linger_ms,
            max_request_size=MAX_MESSAGE_BYTES,
        )
        try:
            await self._producer.start()
        except KafkaError as exc:
            await self._producer.stop()
            raise await connect_failed(exc, "connect (producer)", self.settings.kafka) from exc

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def publish(self, messages: Sequence[Message]) -> None:
        if self._producer is None:
            raise KafkaUnavailable("publish on a sink that is not started", recoverable=False)
        timeout = self.settings.kafka.request_timeout_s
        try:
            async with asyncio.timeout(timeout):
                acks = [
                    await self._producer.send(t, value=v, key=k, headers=list(h) or None)
                    for t, k, v, h in map(unpack, messages)
                ]
                await asyncio.gather(*acks)
        except TimeoutError as exc:
            telemetry.produce_errors.add(1, {"error": "timeout"})
            raise KafkaUnavailable(
                f"Kafka at {self.settings.kafka.bootstrap}: {len(messages)} messages not acknowledged "
                f"within {timeout}s",
                recoverable=True,
            ) from exc
        except KafkaError as exc:
            telemetry.produce_errors.add(1, {"error": type(exc).__name__})
            raise unavailable(exc, "publish", self.settings.kafka.bootstrap) from exc
