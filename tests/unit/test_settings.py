"""Settings: env nesting, file + env precedence, masked secrets, errors that name the field, and Kafka
security settings turned into client arguments."""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path

import pytest

from monitor.cli import main
from monitor.edges.kafka import connection_kwargs
from monitor.settings import ConfigError, KafkaSettings, load_settings, masked


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("MONITOR_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_defaults_point_at_local_services() -> None:
    settings = load_settings()
    assert settings.kafka.bootstrap == "127.0.0.1:19092"
    assert settings.redis.url == "redis://127.0.0.1:16379/0"


def test_env_nesting(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MONITOR_KAFKA__BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
    clean_env.setenv("MONITOR_BATCHING__MAX_BATCH", "7")
    clean_env.setenv("MONITOR_TOPICS__CHUNKS", "prod.chunks")
    settings = load_settings()
    assert settings.kafka.bootstrap == "kafka-1:9092,kafka-2:9092"
    assert settings.batching.max_batch == 7
    assert settings.topics.chunks == "prod.chunks"


def test_env_beats_file_field_by_field(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    path = tmp_path / "monitor.toml"
    path.write_text(
        '[kafka]\nbootstrap = "from-file:9092"\ngroup_id = "file-group"\n[policy]\nconsecutive = 3\n'
    )
    clean_env.setenv("MONITOR_KAFKA__BOOTSTRAP", "from-env:9092")
    settings = load_settings(path)
    assert settings.kafka.bootstrap == "from-env:9092"
    assert settings.kafka.group_id == "file-group"
    assert settings.policy.consecutive == 3


def test_json_file(tmp_path: Path) -> None:
    path = tmp_path / "monitor.json"
    path.write_text(json.dumps({"redis": {"url": "rediss://cache:6380/1", "tls": True}}))
    assert load_settings(path).redis.tls is True


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(Exception, match="frozen"):
        settings.kafka.bootstrap = "x"  # type: ignore[misc]


def test_secrets_are_masked(clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    clean_env.setenv("MONITOR_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    clean_env.setenv("MONITOR_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    clean_env.setenv("MONITOR_KAFKA__SASL_USERNAME", "monitor")
    clean_env.setenv("MONITOR_KAFKA__SASL_PASSWORD", "hunter2-kafka")
    clean_env.setenv("MONITOR_REDIS__PASSWORD", "hunter2-redis")
    settings = load_settings()
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == "hunter2-kafka"
    shown = masked(settings)
    assert shown["kafka"]["sasl_password"] == "**********"
    assert shown["kafka"]["sasl_username"] == "monitor"
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    assert json.loads(out)["redis"]["password"] == "**********"


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"MONITOR_BATCHING__MAX_BATCH": "0"}, "batching.max_batch"),
        ({"MONITOR_KAFKA__SECURITY_PROTOCOL": "SSL_PLEASE"}, "kafka.security_protocol"),
        ({"MONITOR_POLICY__WARN_THRESHOLD": "0.9", "MONITOR_POLICY__ABORT_THRESHOLD": "0.8"}, "policy"),
        ({"MONITOR_REDIS__SESSION_TTL_S": "soon"}, "redis.session_ttl_s"),
    ],
)
def test_invalid_config_names_the_field(
    env: dict[str, str], field: str, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_settings()
    assert main(["config"]) == 2
    assert field in capsys.readouterr().err


def test_unknown_file_field_is_named(tmp_path: Path) -> None:
    path = tmp_path / "monitor.toml"
    path.write_text("[kafka]\nbootstrap_servers = 'x:1'\n")
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap_servers"):
        load_settings(path)


def test_plaintext_kafka_arguments() -> None:
    kwargs = connection_kwargs(KafkaSettings(bootstrap="k:1", request_timeout_s=2.5))
    assert kwargs["bootstrap_servers"] == "k:1"
    assert kwargs["security_protocol"] == "PLAINTEXT"
    assert kwargs["request_timeout_ms"] == 2500
    assert "ssl_context" not in kwargs and "sasl_mechanism" not in kwargs


def test_sasl_ssl_kafka_arguments() -> None:
    kafka = KafkaSettings(
        security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256", sasl_username="u", sasl_password="p"
    )  # type: ignore[arg-type]
    kwargs = connection_kwargs(kafka)
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-256"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("u", "p")


def test_sasl_without_credentials_names_the_fields() -> None:
    with pytest.raises(ConfigError, match=r"kafka\.sasl_username"):
        connection_kwargs(KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN"))


def test_tls_cert_without_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"kafka\.tls_key"):
        connection_kwargs(KafkaSettings(security_protocol="SSL", tls_cert=tmp_path / "c.pem"))
