"""One comparison for the judge tests: two scores agree within `TOL` (incremental vs full, batched vs one)."""

from __future__ import annotations

from monitor.guards.base import Score

TOL = 1e-5


def assert_same(a: Score, b: Score) -> None:
    assert abs(a.p_safe - b.p_safe) < TOL
    assert abs(a.p_potential - b.p_potential) < TOL
    assert abs(a.p_harmful - b.p_harmful) < TOL
    assert abs(a.extra["label_mass"] - b.extra["label_mass"]) <= TOL * b.extra["label_mass"]
    assert a.tokens_read == b.tokens_read
