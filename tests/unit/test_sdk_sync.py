"""The sync twins without a broker: a SyncAbortSubscriber's watch peeks and blocks from a plain thread
while the subscriber runs on its own loop thread (events handed in as its reader would)."""

from __future__ import annotations

import threading
import time

from monitor.messages import Abort, event_id
from monitor.sdk import SyncAbortSubscriber
from monitor.settings import load_settings


def an_abort(session_id: str) -> Abort:
    return Abort(
        event_id=event_id("abort", session_id, 3), session_id=session_id, seq=3, part="thinking",
        label=1, score=0.95, rule="threshold", guard="minilm", chunk_ts=0.0,
    )  # fmt: skip


def test_a_sync_watch_peeks_and_blocks() -> None:
    subscriber = SyncAbortSubscriber(load_settings(None, topics={"aborts": "t.aborts"}))  # never started
    inner, loop = subscriber._subscriber, subscriber._loop
    try:
        with subscriber.watch("s-1") as watch, subscriber.watch("s-2") as other:
            assert watch.abort is None
            started = time.monotonic()
            assert other.wait(0.05) is None and time.monotonic() - started < 1  # a timeout is None
            abort = an_abort("s-1")
            threading.Timer(0.1, lambda: loop.call(inner.deliver, abort)).start()
            assert watch.wait(5) == abort and watch.abort == abort
            assert other.abort is None
        assert "s-1" not in inner._watches  # the watches are closed with their `with`
        late = subscriber.watch("s-1")  # made after the event: it is remembered
        assert late.wait(0) == abort
    finally:
        subscriber.close()
