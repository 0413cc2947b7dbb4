"""`qta-monitor watch`: verdicts, aborts and dead letters as they are published, one compact line each.

`EventTail` (monitor.edges.tail) reads the event topics without a consumer group, so watching takes no
partitions from anyone and commits nothing; the demo uses it to collect what it summarises. `InOrder` puts
a session's abort after the verdict of its seq: the two come from different topics, and a fetch may bring
the aborts' partition first."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from monitor.edges.tail import Event, EventTail, WatchError
from monitor.messages import (
    Abort,
    Verdict,
)
from monitor.settings import Settings

HOLD_S = 1.0  # longest an abort waits for the verdict of its seq (one that never comes: a lost verdict)


class InOrder:
    """Releases events in the order a reader expects: an abort only after a verdict of the same session
    with a seq at least the abort's, or once it has waited `hold_s`; verdicts and dead letters at once.
    Pure: the caller passes the time (monotonic seconds)."""

    def __init__(self, hold_s: float = HOLD_S, sessions_kept: int = 10_000) -> None:
        self.hold_s = hold_s
        self._sessions_kept = sessions_kept
        self._verdict_seq: OrderedDict[tuple[str, int], int] = OrderedDict()  # newest verdict seq released
        self._held: list[tuple[float, Abort]] = []  # (release at the latest, abort), in arrival order

    @staticmethod
    def _session(event: Verdict | Abort) -> tuple[str, int]:
        # A restarted session id (a new epoch) counts its seq from 1 again: its verdicts are another's.
        return event.session_id, int(getattr(event, "epoch", 0))

    def _covered(self, abort: Abort) -> bool:
        return self._verdict_seq.get(self._session(abort), -1) >= abort.seq

    def push(self, events: Iterable[Event], now: float) -> list[Event]:
        """The events that can be shown now, in order: `events` less the aborts held back, each abort whose
        verdict came right after that verdict, and every abort that has waited long enough."""
        out: list[Event] = []
        for event in events:
            if isinstance(event, Abort) and self.hold_s > 0 and not self._covered(event):
                self._held.append((now + self.hold_s, event))
                continue
            out.append(event)
            if isinstance(event, Verdict):
                session = self._session(event)
                self._verdict_seq[session] = max(event.seq, self._verdict_seq.pop(session, -1))
                if len(self._verdict_seq) > self._sessions_kept:
                    self._verdict_seq.popitem(last=False)
                out += self._release(lambda _, abort: self._covered(abort))
        return out + self.due(now)

    def due(self, now: float) -> list[Event]:
        """The held aborts that have waited `hold_s` by `now`."""
        return self._release(lambda until, _: until <= now)

    def flush(self) -> list[Event]:
        """Every abort still held (the watch is ending)."""
        return self._release(lambda _, __: True)

    def next_due(self) -> float | None:
        """When the next held abort is due, if one is held."""
        return min((until for until, _ in self._held), default=None)

    def _release(self, ready: Callable[[float, Abort], bool]) -> list[Event]:
        out: list[Event] = [abort for until, abort in self._held if ready(until, abort)]
        self._held = [(until, abort) for until, abort in self._held if not ready(until, abort)]
        return out


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def format_event(event: Event) -> str:
    """One compact line per event."""
    if isinstance(event, Verdict):
        flags = "".join(f" {f}" for f in ("truncated", "degraded") if getattr(event, f))
        category = f" [{event.category}]" if event.category and event.label else ""
        return (
            f"{_clock(event.ts)} verdict {event.session_id}  seq {event.seq:>3} {event.part:<8} "
            f"p_harmful {event.p_harmful:.2f} ema {event.ema:.2f} label {event.label:<3g} "
            f"{event.status}{category}{flags}"
        )
    if isinstance(event, Abort):
        return (
            f"{_clock(event.ts)} {event.action.upper():<7} {event.session_id}  seq {event.seq:>3} "
            f"{event.part:<8} rule {event.rule} score {event.score:.2f} label {event.label:g} "
            f"category {event.category or '-'} guard {event.guard}"
        )
    return (
        f"{_clock(event.ts)} DEAD    {event.session_id or '-'}  {event.reason}: {event.error} "
        f"({event.topic}[{event.partition}]@{event.offset})"
    )


async def watch(settings: Settings, seconds: float | None, verdicts: bool) -> int:
    """The CLI command: print events from now on, for `seconds` (None: until interrupted)."""
    t = settings.topics
    topics = [t.verdicts, t.aborts, t.dead_letters] if verdicts else [t.aborts]
    order = InOrder(hold_s=HOLD_S if verdicts else 0.0)  # without verdicts there is nothing to wait for
    try:
        async with EventTail(settings, topics) as tail:
            print(f"watching {', '.join(topics)} at {settings.kafka.bootstrap}", flush=True)
            deadline = None if seconds is None else time.monotonic() + seconds
            while deadline is None or time.monotonic() < deadline:
                until = min(x for x in (deadline, order.next_due(), time.monotonic() + 1.0) if x is not None)
                events = await tail.poll(max(0.0, until - time.monotonic()))
                for event in order.push(events, time.monotonic()):
                    print(format_event(event), flush=True)
    except WatchError as exc:
        print(f"qta-monitor watch: {exc}", flush=True)
        return 1
    finally:
        for event in order.flush():
            print(format_event(event), flush=True)
    return 0
