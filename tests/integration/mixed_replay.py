"""A mixed replay for the fault tests (worker crashes, broker restarts, a broker of a cluster stopped): a set
of harmful and safe sample sessions streamed through the SDK while faults are injected, the events read
back from the topics, and the one check every fault test ends with: every chunk covered by a verdict, one
abort per harmful session, none on a safe one, no dead letter and no degraded verdict.

The sessions are ones the shipped weights handle whatever prefixes get scored, with a margin: scored at
every 32-character prefix, the harmful ones pass the abort threshold 0.9 in their thinking (0.93-0.998), the
safe ones stay below it (sourdough 0.03, Python de-duplication 0.07, self-harm support 0.82). Safe refusals
that name a harm (safe-refuse-bomb 0.76 in its answer, safe-refuse-account-hack with runs of harmful labels)
are not used: these tests are about faults, not the guard's quality."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from test_worker_e2e import SAMPLES, Events, _plan, _sid

from monitor.edges.tail import EventTail
from monitor.messages import Chunk
from monitor.sdk import TracePublisher
from monitor.settings import Settings

HARMFUL = ("think-gas-attack", "both-threaten-journalist", "both-meth-lab", "think-stalk-ex")
SAFE = ("benign-sourdough", "safe-self-harm-support", "benign-python-dedupe")
log = logging.getLogger("tests.mixed_replay")


@dataclass(frozen=True)
class Planned:
    sid: str
    name: str
    chunks: list[Chunk]

    @property
    def harmful(self) -> bool:
        return self.name in HARMFUL


def mixed_set(copies: int = 1) -> list[Planned]:
    """`copies` of every harmful and safe session, interleaved (harmful, safe, harmful, ...)."""
    names = [n for pair in zip(HARMFUL, (*SAFE, ""), strict=True) for n in pair if n] * copies
    out = []
    for name in names:
        sid = _sid(name)
        out.append(Planned(sid, name, _plan(SAMPLES[name], sid)))
    return out


def with_client_id(settings: Settings, client_id: str) -> Settings:
    return settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"client_id": client_id})})


def with_bootstrap(settings: Settings, bootstrap: str) -> Settings:
    return settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"bootstrap": bootstrap})})


async def stream(publisher: TracePublisher, plan: Planned, rate: float, start_in_s: float = 0.0) -> None:
    """Send a session's chunks one every 1/rate s, after `start_in_s`."""
    await asyncio.sleep(start_in_s)
    for chunk in plan.chunks:
        await publisher.send(chunk.model_copy(update={"ts": time.time()}))
        await asyncio.sleep(1.0 / rate)
    await publisher.flush()


async def collect(settings: Settings, events: Events, stop: asyncio.Event) -> None:
    """Read verdicts, aborts and dead letters from the beginning until `stop`; a broker that goes away
    ends the tail, so it is reopened (reading from the beginning again only repeats events)."""
    t = settings.topics
    topics = [t.verdicts, t.aborts, t.dead_letters]
    while not stop.is_set():
        seen = Events()
        try:
            async with EventTail(settings, topics, from_beginning=True) as reader:
                while not stop.is_set():
                    for event in await reader.poll(0.2):
                        seen.add(event)
                    for sid, vs in seen.verdicts.items():
                        events.verdicts[sid] = list(vs)
                    for sid, aborts in seen.aborts.items():
                        events.aborts[sid] = list(aborts)
                    events.dead[:] = seen.dead
        except Exception as exc:  # the broker went away under the tail: reopen it
            log.info("event tail reopened after %r", exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


def tail(log: Path) -> str:
    """The end of a worker's log, for an assertion message."""
    return log.read_text(errors="replace")[-3000:]


def all_covered(events: Events, plans: Sequence[Planned]) -> bool:
    return all(events.covered(p.sid, p.chunks[-1].seq) for p in plans)


def check(events: Events, plans: Sequence[Planned]) -> dict[str, int]:
    """The outcome every fault test asserts; returns counts for the record."""
    for p in plans:
        verdicts = events.verdicts.get(p.sid, [])
        aborts = events.abort_ids(p.sid)
        if p.harmful:
            assert len(aborts) == 1, (p.name, p.sid, sorted(aborts))
        else:
            assert not aborts, (p.name, p.sid, sorted(aborts))
            # every chunk of a session that was not aborted is covered by a verdict of its last seq
            assert max((v.seq for v in verdicts), default=0) == p.chunks[-1].seq, (p.name, p.sid)
        assert not any(v.degraded for v in verdicts), (p.name, p.sid, "degraded: a chunk went missing")
    mine = {p.sid for p in plans}
    assert not [d for d in events.dead if d.session_id in mine]
    return {
        "sessions": len(plans),
        "harmful": sum(p.harmful for p in plans),
        "chunks": sum(len(p.chunks) for p in plans),
        "abort_deliveries": sum(len(events.aborts.get(p.sid, [])) for p in plans),
    }
