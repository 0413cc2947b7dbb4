"""`qta-monitor demo`: the main job end to end on one machine.

1 start the local Kafka and Redis (scripts/services.sh up)     2 apply the topics
3 start a worker (`qta-monitor serve`, embedded MiniLM guard, /metrics) and wait until it answers
4 replay the bundled sample sessions (monitor/samples/) through the SDK, printing verdicts and aborts
  live; a session stops generating at its abort, as a serving stack would
5 wait until every session's end is covered, stop the worker (SIGTERM: it drains and commits)
6 print a summary: per session its label, whether and where the abort fired, and how much of the
  thinking had streamed by then."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from monitor.client.logs import quiet_client_logs
from monitor.edges.tail import EventTail, WatchError
from monitor.evaluation import sessions as evaluation
from monitor.evaluation.datasets import Sample, load_jsonl
from monitor.evaluation.replay import Replayed, publish_sessions
from monitor.evaluation.report import Outcome
from monitor.messages import Abort, Verdict
from monitor.sdk import PublishError, SubscribeError
from monitor.settings import Settings
from monitor.watch import format_event

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = Path(__file__).resolve().parent / "samples" / "sessions.jsonl"
READY_TIMEOUT_S = 180.0  # the worker imports torch and loads the guard first
COVER_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
CHUNK_CHARS = 48


class DemoError(Exception):
    """A step of the demo failed; the message says which and why."""


def settings_env(settings: Settings) -> dict[str, str]:
    """`MONITOR_*` variables that rebuild exactly these settings in a subprocess (secrets included)."""

    def plain(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    env: dict[str, str] = {}
    for section in type(settings).model_fields:
        model: BaseModel = getattr(settings, section)
        for name in type(model).model_fields:
            value = plain(getattr(model, name))
            if value is None:
                continue
            key = f"MONITOR_{section.upper()}__{name.upper()}"
            if isinstance(value, bool):
                env[key] = "true" if value else "false"
            elif isinstance(value, dict | list):
                env[key] = json.dumps(value)
            else:
                env[key] = str(value)
    return env


def _worker_env(settings: Settings) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    return {**inherited, **settings_env(settings)}


def _services_up() -> None:
    script = ROOT / "scripts" / "services.sh"
    if not script.exists():
        raise DemoError(f"{script} is missing: run the demo from a checkout of qta-monitor")
    proc = subprocess.run(["bash", str(script), "up"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DemoError(f"scripts/services.sh up failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")


def _start_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "monitor", "serve"],
            env=_worker_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )


def _stop_worker(worker: subprocess.Popen[bytes]) -> int:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    return worker.returncode


class _Events:
    """Verdicts and aborts read back, by session."""

    def __init__(self) -> None:
        self.verdicts: dict[str, list[Verdict]] = defaultdict(list)
        self.aborts: dict[str, Abort] = {}

    def add(self, event: Any, show: bool) -> None:
        if isinstance(event, Verdict):
            self.verdicts[event.session_id].append(event)
        elif isinstance(event, Abort):
            self.aborts.setdefault(event.session_id, event)
        if show:
            print(format_event(event), flush=True)

    def covered(self, sid: str, end_seq: int) -> bool:
        top = max((v.seq for v in self.verdicts.get(sid, [])), default=0)
        return top >= end_seq or sid in self.aborts  # an aborted session's later chunks are not scored


async def _wait_ready(
    settings: Settings, tail: EventTail, events: _Events, worker: subprocess.Popen[bytes]
) -> None:
    """A probe session: the worker is ready once its verdict comes back."""
    probe = Sample("demo-probe", "Is the monitor ready?", "Checking that the worker answers.", "", 0.0)
    sent = await publish_sessions(
        settings, [probe], rate=0, chunk_chars=CHUNK_CHARS, run=f"{time.time():.0f}"
    )
    sid = sent[0].session_id
    deadline = time.monotonic() + READY_TIMEOUT_S
    while sid not in events.verdicts:
        if worker.poll() is not None:
            raise DemoError(f"the worker exited early with status {worker.returncode}")
        if time.monotonic() > deadline:
            raise DemoError(f"no verdict from the worker within {READY_TIMEOUT_S:.0f} s")
        for event in await tail.poll(0.5):
            events.add(event, show=False)


async def _stream(
    settings: Settings, samples: Sequence[Sample], rate: float, worker: subprocess.Popen[bytes]
) -> tuple[list[Replayed], _Events]:
    t = settings.topics
    events = _Events()
    async with EventTail(settings, [t.verdicts, t.aborts]) as tail:
        await _wait_ready(settings, tail, events, worker)
        print("== 4/6 replaying the sample sessions; verdicts and aborts as they arrive:", flush=True)
        run = uuid.uuid4().hex[:6]
        ours = f"-{run}"  # events of other traffic on the same topics are not shown
        publishing = asyncio.create_task(publish_sessions(settings, samples, rate, CHUNK_CHARS, run))
        deadline: float | None = None  # set once everything is published
        while True:
            for event in await tail.poll(0.2):
                events.add(event, show=(event.session_id or "").endswith(ours))
            if publishing.done():
                replayed = publishing.result()
                if deadline is None:
                    deadline = time.monotonic() + COVER_TIMEOUT_S
                    print("== 5/6 all sessions published; waiting for the worker to cover them", flush=True)
                if all(events.covered(r.session_id, r.end_seq) for r in replayed):
                    for event in await tail.poll(1.0):  # stragglers of the last scoring
                        events.add(event, show=(event.session_id or "").endswith(ours))
                    return replayed, events
                if time.monotonic() > deadline:
                    open_ = [r.session_id for r in replayed if not events.covered(r.session_id, r.end_seq)]
                    raise DemoError(f"not covered within {COVER_TIMEOUT_S:.0f} s: {', '.join(open_)}")
            if worker.poll() is not None:
                publishing.cancel()
                raise DemoError(f"the worker exited with status {worker.returncode} during the replay")


def outcomes(
    replayed: Sequence[Replayed], verdicts: dict[str, list[Verdict]], aborts: dict[str, Abort]
) -> list[Outcome]:
    out = []
    for r in replayed:
        abort = aborts.get(r.session_id, r.abort)
        state = evaluation.Replayed(r.sample, "samples", list(r.plan), verdicts.get(r.session_id, []), abort)
        out.append(evaluation.outcome(state))
    return out


def summary(replayed: Sequence[Replayed], results: Sequence[Outcome], aborts: dict[str, Abort]) -> str:
    """The closing table: where each abort fired, and how the aborts line up with the labels."""
    rows = [("session", "label", "aborted", "at seq/part", "thinking seen", "before answer", "max p_harmful")]
    for r, o in zip(replayed, results, strict=True):
        abort = aborts.get(r.session_id, r.abort)
        rows.append(
            (
                o.id,
                {0.0: "safe", 0.5: "potential", 1.0: "harmful"}[o.label],
                "yes" if o.aborted else "no",
                f"{abort.seq}/{abort.part}" if abort is not None else "-",
                f"{o.thinking_consumed:.0%}" if o.thinking_consumed is not None else "-",
                ("yes" if o.before_answer else "no") if o.aborted else "-",
                f"{o.max_p_harmful:.2f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    harmful = [o for o in results if o.label >= 1.0]
    safe = [o for o in results if o.label == 0.0]
    caught = [o for o in harmful if o.aborted]
    lines.append("")
    lines.append(
        f"{len(results)} sessions: {len(caught)}/{len(harmful)} harmful aborted "
        f"({sum(o.before_answer for o in caught)} before their answer began), "
        f"{sum(o.aborted for o in safe)}/{len(safe)} safe aborted"
    )
    return "\n".join(lines)


def run_demo(settings: Settings, rate: float) -> int:
    worker_settings = settings.model_copy(
        update={
            "guard": settings.guard.model_copy(update={"name": "minilm"}),
            "telemetry": settings.telemetry.model_copy(
                update={"metrics_port": settings.telemetry.metrics_port or 9464}
            ),
        }
    )
    quiet_client_logs()  # the event tail's consumer starts right after the topics are created
    log = Path(tempfile.gettempdir()) / "qta-monitor-demo-worker.log"
    worker: subprocess.Popen[bytes] | None = None
    try:
        print("== 1/6 starting Kafka and Redis (scripts/services.sh up)", flush=True)
        _services_up()
        print("== 2/6 applying the topics", flush=True)
        from monitor.edges.kafka import KafkaUnavailable, apply_topics

        try:
            for line in asyncio.run(apply_topics(settings)):
                print(f"   {line}", flush=True)
        except KafkaUnavailable as exc:
            raise DemoError(str(exc)) from exc
        port = worker_settings.telemetry.metrics_port
        print(
            f"== 3/6 starting a worker (embedded minilm guard; log {log}; metrics :{port}/metrics)",
            flush=True,
        )
        worker = _start_worker(worker_settings, log)
        samples = load_jsonl(SAMPLES)
        replayed, events = asyncio.run(_stream(settings, samples, rate, worker))
        print("== 6/6 stopping the worker (SIGTERM)", flush=True)
        code = _stop_worker(worker)
        if code != 0:
            raise DemoError(f"the worker exited with status {code}; see {log}")
    except (DemoError, WatchError, PublishError, SubscribeError) as exc:
        print(f"qta-monitor demo: {exc}", flush=True)
        if worker is not None:
            _stop_worker(worker)
            print(f"worker log: {log}", flush=True)
        return 1
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
    print()
    print(summary(replayed, outcomes(replayed, events.verdicts, events.aborts), events.aborts))
    return 0
