"""End-to-end replays through the real broker, Redis and a `qta-monitor serve` subprocess: the
`qta-monitor eval --through-kafka` mode and the benchmarks in bench/ share this.

Each run is isolated: its own topics (`<name>.run-<id>`), consumer group and session-id prefix, so it can
share a broker with other runs and tests. The worker is the real command, started with this run's settings
as its config file (plus any MONITOR_* env given), so what is measured is what ships."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from monitor.evaluation.datasets import Sample
from monitor.evaluation.report import Outcome
from monitor.messages import (
    Abort,
    Chunk,
    DecodeError,
    Verdict,
    decode_abort,
    decode_verdict,
    encode,
)
from monitor.settings import Settings

TOPIC_KEYS = ("chunks", "verdicts", "aborts", "dead_letters", "audits")
READY_TIMEOUT_S = 120.0


def _plain(settings: Settings) -> dict[str, Any]:
    """The settings as JSON data with secrets in clear, for the worker's config file (mode 0600)."""
    data: dict[str, Any] = settings.model_dump(mode="json")
    for section, key in (("kafka", "sasl_password"), ("redis", "password")):
        secret = getattr(getattr(settings, section), key)
        if secret is not None:
            data[section][key] = secret.get_secret_value()
    return data


def _inherited() -> dict[str, str]:
    """This process's environment minus what names the run's topics, group and metrics port: env beats
    the config file, and those must stay the run's own."""
    owned = ("MONITOR_TOPICS__", "MONITOR_KAFKA__GROUP_ID", "MONITOR_TELEMETRY__METRICS_PORT")
    return {k: v for k, v in os.environ.items() if not k.upper().startswith(owned)}


def producer_kwargs(settings: Settings) -> dict[str, Any]:
    """The run's chunk producer: idempotent with acks=all, as the worker's sink and the SDK are, so a chunk
    the run counts as sent is on every in-sync replica (a replay on the 3-broker cluster loses none to a
    leader change) and a retried send is never a duplicate."""
    from monitor.edges.kafka import MAX_MESSAGE_BYTES, connection_kwargs

    return {
        **connection_kwargs(settings.kafka),
        "linger_ms": 2,
        "acks": "all",
        "enable_idempotence": True,
        "max_request_size": MAX_MESSAGE_BYTES,
    }


class EndToEndError(RuntimeError):
    """The broker or the worker did not do what an end-to-end run needs (the message says which)."""


@dataclass
class Events:
    """Verdicts and aborts read back, by session, with the wall time each was read."""

    verdicts: dict[str, list[tuple[float, Verdict]]] = field(default_factory=lambda: defaultdict(list))
    aborts: dict[str, tuple[float, Abort]] = field(default_factory=dict)
    last_read: float = 0.0


class EndToEnd:
    """One isolated run: topics, a worker subprocess, a producer and a reader of verdicts and aborts."""

    def __init__(self, settings: Settings, env: dict[str, str] | None = None) -> None:
        self.run_id = uuid.uuid4().hex[:8]
        names = {k: f"{getattr(settings.topics, k)}.run-{self.run_id}" for k in TOPIC_KEYS}
        self.settings = settings.model_copy(
            update={
                "topics": settings.topics.model_copy(update=names),
                "kafka": settings.kafka.model_copy(update={"group_id": f"qta-monitor-run-{self.run_id}"}),
                "telemetry": settings.telemetry.model_copy(update={"metrics_port": 0}),
            }
        )
        self.env = env or {}
        self.events = Events()
        self.worker: asyncio.subprocess.Process | None = None
        self.partitions = 0
        self._producer: Any = None
        self._consumer: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._log: BinaryIO | None = None
        self._config: Path | None = None

    def session_id(self, name: str | int) -> str:
        return f"run-{self.run_id}-{name}"

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self, log: Path | None = None) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
        from aiokafka.errors import KafkaError

        from monitor.edges.kafka import KafkaUnavailable, apply_topics, connection_kwargs

        conn = connection_kwargs(self.settings.kafka)
        t = self.settings.topics
        try:
            await apply_topics(self.settings)
            self._producer = AIOKafkaProducer(**producer_kwargs(self.settings))
            await self._producer.start()
            self._consumer = AIOKafkaConsumer(
                t.verdicts, t.aborts, **conn, auto_offset_reset="earliest", group_id=None
            )
            await self._consumer.start()
            self.partitions = len(await self._producer.partitions_for(t.chunks))
        except (KafkaError, KafkaUnavailable) as exc:
            raise EndToEndError(f"Kafka at {self.settings.kafka.bootstrap} is not usable: {exc}") from exc
        self._reader = asyncio.create_task(self._read())
        # The worker gets this run's settings as a file (env MONITOR_* still wins, as for any deployment).
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(_plain(self.settings), f)
            self._config = Path(f.name)
        self._log = log.open("wb") if log is not None else None
        out = self._log if self._log is not None else asyncio.subprocess.DEVNULL
        self.worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "monitor",
            "--config",
            str(self._config),
            "serve",
            env={**_inherited(), **self.env},
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        """Until a probe session comes back as a verdict, the worker has not joined its group yet."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        tries = 0
        while time.monotonic() < deadline:
            if self.worker is not None and self.worker.returncode is not None:
                raise EndToEndError(f"the worker exited early with status {self.worker.returncode}")
            sid = self.session_id(f"probe-{tries}")
            tries += 1
            probe = Sample(
                sid,
                "How do I bake bread?",
                "Mix flour, water, salt and yeast, then knead and bake. " * 2,
                "",
                0.0,
            )
            from monitor.evaluation.sessions import session_chunks

            await self.publish([p.chunk for p in session_chunks(probe, sid, 200)])
            for _ in range(40):
                await asyncio.sleep(0.25)
                if sid in self.events.verdicts:
                    return
        raise EndToEndError(f"no verdict from the worker within {READY_TIMEOUT_S:.0f} s")

    async def close(self) -> int | None:
        """Stop the worker (SIGTERM: it drains) and the clients; drop the run's topics."""
        code = None
        if self.worker is not None and self.worker.returncode is None:
            self.worker.terminate()
            try:
                code = await asyncio.wait_for(self.worker.wait(), 60)
            except TimeoutError:
                self.worker.kill()
                code = await self.worker.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        for client in (self._consumer, self._producer):
            if client is not None:
                await client.stop()
        await self._drop_topics()
        if self._log is not None:
            self._log.close()
        if self._config is not None:
            self._config.unlink(missing_ok=True)
        return code

    async def _drop_topics(self) -> None:
        from monitor.edges.kafka import KafkaUnavailable, delete_topics

        with contextlib.suppress(KafkaUnavailable):  # hygiene only: a left-over topic harms nothing
            await delete_topics(self.settings)

    # -- traffic ----------------------------------------------------------------------------------

    async def publish(self, chunks: Iterable[Chunk]) -> None:
        topic = self.settings.topics.chunks
        futures = [await self._producer.send(topic, encode(c), key=c.session_id.encode()) for c in chunks]
        if futures:
            await asyncio.gather(*futures)

    async def _read(self) -> None:
        verdicts, aborts = self.settings.topics.verdicts, self.settings.topics.aborts
        while True:
            batches = await self._consumer.getmany(timeout_ms=200, max_records=2000)
            now = time.time()
            for tp, records in batches.items():
                for r in records:
                    if tp.topic == verdicts:
                        v = decode_verdict(r.value)
                        if not isinstance(v, DecodeError):
                            self.events.verdicts[v.session_id].append((now, v))
                    elif tp.topic == aborts:
                        a = decode_abort(r.value)
                        if not isinstance(a, DecodeError):
                            self.events.aborts.setdefault(a.session_id, (now, a))
                    self.events.last_read = now

    async def lag(self) -> int:
        """Chunks published but not yet committed by the worker's group (its consumer lag)."""
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.structs import TopicPartition

        from monitor.edges.kafka import connection_kwargs

        admin = AIOKafkaAdminClient(**connection_kwargs(self.settings.kafka))
        await admin.start()
        try:
            committed = await admin.list_consumer_group_offsets(self.settings.kafka.group_id)
        finally:
            await admin.close()
        tps = [TopicPartition(self.settings.topics.chunks, p) for p in range(self.partitions)]
        end_offsets = dict(await self._consumer.end_offsets(tps))
        done = {
            tp: (committed[tp].offset if tp in committed and committed[tp].offset >= 0 else 0) for tp in tps
        }
        return sum(max(0, end_offsets[tp] - done[tp]) for tp in tps)

    async def settle(self, timeout_s: float, quiet_s: float = 1.5) -> bool:
        """Wait until the worker has committed everything and no event arrived for `quiet_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.3)
            if time.time() - self.events.last_read >= quiet_s and await self.lag() == 0:
                return True
        return False


@contextlib.asynccontextmanager
async def end_to_end(
    settings: Settings, env: dict[str, str] | None = None, log: Path | None = None
) -> AsyncIterator[EndToEnd]:
    run = EndToEnd(settings, env)
    try:
        await run.start(log)
        yield run
    finally:
        await run.close()


async def evaluate_through_kafka(
    settings: Settings,
    guard: str | None,
    sessions: Sequence[tuple[str, Sample]],
    chunk_chars: int,
    *,
    round_s: float = 0.02,
    timeout_s: float = 600.0,
) -> list[Outcome]:
    """Replay every session through the broker and a worker; a session stops at its abort, as it would
    in a serving stack. Returns one outcome per session, like the in-process replay."""
    from tqdm import tqdm

    from monitor.evaluation.sessions import Replayed, end_chunk, outcome, session_chunks

    env = {"MONITOR_GUARD__NAME": guard} if guard else {}
    async with end_to_end(settings, env) as run:
        replayed = {
            run.session_id(i): Replayed(s, name, session_chunks(s, run.session_id(i), chunk_chars))
            for i, (name, s) in enumerate(sessions)
        }
        cursor = dict.fromkeys(replayed, 0)
        with tqdm(total=len(replayed), desc="eval (kafka)", unit="session") as bar:
            while cursor:
                chunks = []
                for sid, index in list(cursor.items()):
                    r = replayed[sid]
                    planned = r.plan[index] if sid not in run.events.aborts else end_chunk(r, index + 1)
                    chunks.append(planned.chunk)
                    if planned.chunk.part == "end":
                        del cursor[sid]
                        bar.update(1)
                    else:
                        cursor[sid] = index + 1
                await run.publish(chunks)
                await asyncio.sleep(round_s)
            if not await run.settle(timeout_s):
                raise EndToEndError(f"the worker did not finish within {timeout_s:.0f} s")
        for sid, r in replayed.items():
            r.verdicts = [v for _, v in run.events.verdicts.get(sid, [])]
            r.abort = run.events.aborts[sid][1] if sid in run.events.aborts else None
        return [outcome(r) for r in replayed.values()]
