"""`qta-monitor watch` shows a session's abort after the verdict of its seq, whatever order the two topics'
partitions are fetched in, and never holds an abort longer than a short bound."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import pytest

from monitor import watch as watch_module
from monitor.messages import Abort, DeadLetter, Verdict
from monitor.settings import Settings
from monitor.watch import HOLD_S, Event, InOrder, watch


def _verdict(sid: str = "s-1", seq: int = 5, status: str = "abort") -> Verdict:
    return Verdict(
        event_id=f"verdict-{sid}-{seq}",
        session_id=sid,
        seq=seq,
        part="thinking",
        tokens=40,
        tokens_read=40,
        p_safe=0.02,
        p_potential=0.01,
        p_harmful=0.97,
        label=1,
        guard="minilm",
        ema=0.9,
        status=status,  # type: ignore[arg-type]
        chunk_ts=1.0,
    )


def _abort(sid: str = "s-1", seq: int = 5) -> Abort:
    return Abort(
        event_id=f"abort-{sid}",
        session_id=sid,
        seq=seq,
        part="thinking",
        label=1,
        score=0.97,
        rule="threshold:thinking",
        guard="minilm",
        chunk_ts=1.0,
    )


def _dead(sid: str = "s-9") -> DeadLetter:
    return DeadLetter(
        reason="gap",
        error="seq 3 never came",
        session_id=sid,
        topic="qta.chunks",
        partition=0,
        offset=7,
        raw_b64="",
        raw_truncated=False,
    )


def test_an_abort_fetched_before_its_verdict_in_one_batch_comes_after_it() -> None:
    order = InOrder()
    verdict, abort = _verdict(seq=5), _abort(seq=5)
    assert order.push([abort, verdict], now=0.0) == [verdict, abort]
    assert order.next_due() is None


def test_an_abort_from_an_earlier_poll_waits_for_its_verdict() -> None:
    order = InOrder()
    abort, dead = _abort(seq=5), _dead()
    assert order.push([abort, dead], now=0.0) == [dead]  # other events are not held
    assert order.next_due() == HOLD_S
    earlier = _verdict(seq=4, status="warn")
    other = _verdict(sid="s-2", seq=9)
    assert order.push([earlier, other], now=0.1) == [earlier, other]  # neither covers seq 5 of s-1
    verdict = _verdict(seq=5)
    assert order.push([verdict], now=0.2) == [verdict, abort]


def test_an_abort_after_its_verdict_is_shown_at_once() -> None:
    order = InOrder()
    verdict, abort = _verdict(seq=6), _abort(seq=5)  # a later verdict covers it too
    assert order.push([verdict], now=0.0) == [verdict]
    assert order.push([abort], now=0.1) == [abort]


def test_an_abort_whose_verdict_never_comes_is_shown_after_the_bound() -> None:
    order = InOrder(hold_s=0.5)
    abort = _abort()
    assert order.push([abort], now=10.0) == []
    assert order.due(10.4) == []
    assert order.push([], now=10.5) == [abort]
    assert order.next_due() is None and order.flush() == []


def test_what_is_still_held_at_the_end_is_flushed() -> None:
    order = InOrder()
    abort = _abort()
    order.push([abort], now=0.0)
    assert order.flush() == [abort]


def test_a_restarted_session_waits_for_the_verdicts_of_its_new_epoch() -> None:
    order = InOrder()
    old = _verdict(seq=40, status="ok")
    assert order.push([old], now=0.0) == [old]
    abort = _abort(seq=3).model_copy(update={"epoch": 1})
    assert order.push([abort], now=0.1) == []
    verdict = _verdict(seq=3).model_copy(update={"epoch": 1})
    assert order.push([verdict], now=0.2) == [verdict, abort]


def test_without_verdicts_nothing_is_held() -> None:
    order = InOrder(hold_s=0.0)
    abort = _abort()
    assert order.push([abort], now=0.0) == [abort]


def _scripted_tail(batches: list[list[Event]]) -> tuple[type, list[float]]:
    """EventTail's twin: each poll returns the next of `batches`, then nothing; and the poll timeouts."""
    timeouts: list[float] = []

    class Tail:
        def __init__(self, settings: Settings, topics: list[str], **_: Any) -> None:
            self.topics = topics

        async def __aenter__(self) -> Tail:
            return self

        async def __aexit__(
            self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
        ) -> None:
            pass

        async def poll(self, timeout_s: float) -> list[Event]:
            timeouts.append(timeout_s)
            return batches.pop(0) if batches else []

    return Tail, timeouts


async def test_watch_prints_the_verdict_before_the_abort_of_its_seq(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tail, _ = _scripted_tail([[_abort(seq=5)], [_verdict(seq=4, status="warn")], [_verdict(seq=5)]])
    monkeypatch.setattr(watch_module, "EventTail", tail)
    assert await watch(Settings(), seconds=0.3, verdicts=True) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[1] for line in lines] == ["verdict", "verdict", "ABORT"], lines
    assert " seq   5 " in lines[1] and " seq   5 " in lines[2]


async def test_watch_shows_a_held_abort_within_the_bound(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tail, timeouts = _scripted_tail([[_abort(seq=5)]])
    monkeypatch.setattr(watch_module, "EventTail", tail)
    monkeypatch.setattr(watch_module, "HOLD_S", 0.05)
    assert await watch(Settings(), seconds=0.5, verdicts=True) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[1] for line in lines] == ["ABORT"]
    assert timeouts[1] <= 0.05  # the loop wakes when the held abort is due, not a second later
