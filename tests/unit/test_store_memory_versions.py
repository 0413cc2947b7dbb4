"""Saved session state loads across worker versions (a rolling deploy has both at once)."""

from __future__ import annotations

import orjson

from monitor.core.session import SessionState
from monitor.edges.store import STATE_VERSION, meta_record, state_from_record


def _roundtrip(meta: dict[str, bytes]) -> SessionState:
    return state_from_record("s1", meta, [b"q", b"t", b""], [])


def test_a_record_written_by_a_newer_worker_loads_and_keeps_what_this_one_knows() -> None:
    state = SessionState("s1", next_seq=5, status="open", part="thinking", has_question=True, epoch=2)
    meta = meta_record(state)
    meta["a_field_from_the_future"] = orjson.dumps({"x": 1})
    newer_policy = {**orjson.loads(meta["policy"]), "a_future_field": 0.97}  # a field no release has yet
    meta["policy"] = orjson.dumps(newer_policy)
    meta["state_version"] = orjson.dumps(STATE_VERSION + 1)
    loaded = _roundtrip(meta)
    assert loaded.next_seq == 5 and loaded.epoch == 2 and loaded.thinking == "t"
    assert loaded.policy == state.policy


def test_a_record_written_by_an_older_worker_takes_defaults_for_what_it_lacks() -> None:
    meta = meta_record(SessionState("s1", next_seq=3, has_question=True, part="thinking"))
    for newer in ("epoch", "origin", "origin_offset", "request_id", "abort_record", "steer_event_id",
                  "steer_tokens", "state_version"):  # fmt: skip
        del meta[newer]
    meta["policy"] = orjson.dumps({"scores": 2, "ema": 0.5})  # fewer policy fields than today
    loaded = _roundtrip(meta)
    assert loaded.epoch == 0 and loaded.origin == "" and loaded.request_id is None
    assert loaded.policy.scores == 2 and loaded.policy.ema == 0.5 and loaded.policy.consecutive == 0
