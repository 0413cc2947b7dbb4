"""The per-environment topic override: topics.json's replication (1, a dev broker) unless the settings (or
`topics apply --replication-factor`) ask for more, with min.insync.replicas added to every topic."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.edges.kafka import topic_specs
from monitor.settings import ConfigError, load_settings

TOPICS = Path(__file__).resolve().parents[2] / "topics"


def test_topics_json_replication_is_kept_without_an_override() -> None:
    specs = topic_specs(load_settings(None, topics={"definitions_dir": str(TOPICS)}))
    assert {s.replication for s in specs} == {1}
    assert not any("min.insync.replicas" in s.configs for s in specs)


def test_a_replicated_environment_overrides_replication_and_min_isr() -> None:
    topics = {"definitions_dir": str(TOPICS), "replication_factor": 3, "min_insync_replicas": 2}
    specs = topic_specs(load_settings(None, topics=topics))
    assert {s.role for s in specs} >= {"chunks", "verdicts", "aborts"}
    assert all(s.replication == 3 and s.configs["min.insync.replicas"] == "2" for s in specs)
    assert all(s.configs["cleanup.policy"] == "delete" for s in specs)  # topics.json's configs stay


def test_min_isr_above_the_replication_factor_is_refused() -> None:
    topics = {"definitions_dir": str(TOPICS), "replication_factor": 1, "min_insync_replicas": 2}
    with pytest.raises(ConfigError, match="min_insync_replicas"):
        topic_specs(load_settings(None, topics=topics))


def test_the_cli_flags_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import monitor.cli as cli
    import monitor.edges.kafka as kafka

    seen = []

    async def fake_apply(settings):  # type: ignore[no-untyped-def]
        seen.append(settings.topics)
        return []

    monkeypatch.setattr(kafka, "apply_topics", fake_apply)
    assert cli.main(["topics", "apply", "--replication-factor", "3", "--min-insync-replicas", "2"]) == 0
    assert seen[0].replication_factor == 3 and seen[0].min_insync_replicas == 2
