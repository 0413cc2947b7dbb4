"""A secured broker: a private single node (scripts/kafka.sh with QTA_KAFKA_EXTRA_CONFIG) with a SASL_SSL
listener (SCRAM-SHA-512, the user created with Kafka's own kafka-configs tool, kafka.admin.ConfigCommand)
and a mutual-TLS listener, certificates made here by `cryptography` (tls_certs.py).

The worker connects over mutual TLS, the SDK and the event reader over SASL_SSL, with the settings the
README documents (MONITOR_KAFKA__SECURITY_PROTOCOL, ...); a harmful session is aborted once and a safe one
fully covered. A wrong password, an untrusted broker certificate, an untrusted or missing client certificate
each fail fast with a message that names the cause, and no log line holds the password."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mixed_replay import Planned, all_covered, check, collect, stream, tail, with_bootstrap, with_client_id
from private_kafka import ROOT, kafka_sh
from test_worker_chaos import _owns_everything
from test_worker_e2e import SAMPLES, SETTLE_S, Events, _plan, _settings, _sid, _start_worker, _stop, _until
from tls_certs import Certs, make_certs

from monitor.demo import settings_env
from monitor.edges.kafka import KafkaChunkSource, KafkaUnavailable, apply_topics
from monitor.sdk import PublishError, TracePublisher
from monitor.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

PORT = 19392  # controller 19393, SASL_SSL 19394, mutual TLS 19395
SASL, MTLS = PORT + 2, PORT + 3
USER = "qta-monitor"
FAST_S = 10.0  # a refusal is reported within this long, not retried until a timeout


@dataclass(frozen=True)
class Broker:
    certs: Certs
    password: str


def _extra_config(certs: Certs, directory: Path) -> Path:
    keystore = certs.broker.keystore(directory / "broker-keystore.pem")
    listeners = (
        f"PLAINTEXT://127.0.0.1:{PORT},CONTROLLER://127.0.0.1:{PORT + 1},"
        f"SASL_SSL://127.0.0.1:{SASL},SSL://127.0.0.1:{MTLS}"
    )
    path = directory / "secured.properties"
    path.write_text(
        f"listeners={listeners}\n"
        f"advertised.listeners={listeners}\n"
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL\n"
        "sasl.enabled.mechanisms=SCRAM-SHA-512\n"
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
        "org.apache.kafka.common.security.scram.ScramLoginModule required;\n"
        f"ssl.keystore.type=PEM\nssl.keystore.location={keystore}\n"
        f"ssl.truststore.type=PEM\nssl.truststore.location={certs.ca}\n"
        "listener.name.ssl.ssl.client.auth=required\n"
    )
    return path


def _add_scram_user(password: str) -> None:
    """kafka-configs --alter --add-config SCRAM-SHA-512=[...] --entity-type users, from the broker's jars."""
    libs = Path(os.environ.get("QTA_CACHE", Path.home() / ".cache" / "qta-monitor"))
    version = next(p.name for p in sorted(libs.glob("kafka-*")) if (p / "libs" / ".complete").exists())
    done = subprocess.run(
        [
            *("java", "-cp", str(libs / version / "libs" / "*"), "kafka.admin.ConfigCommand"),
            *("--bootstrap-server", f"127.0.0.1:{PORT}", "--alter", "--entity-type", "users"),
            *("--entity-name", USER, "--add-config", f"SCRAM-SHA-512=[iterations=4096,password={password}]"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, f"kafka-configs failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def broker(services: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    directory = tmp_path_factory.mktemp("secured")
    certs = make_certs(directory / "certs")
    state = directory / "state"
    os.environ["QTA_KAFKA_EXTRA_CONFIG"] = str(_extra_config(certs, directory))
    try:
        kafka_sh("start", state, port=PORT)
    finally:
        del os.environ["QTA_KAFKA_EXTRA_CONFIG"]
    try:
        password = secrets.token_urlsafe(18)
        _add_scram_user(password)
        yield Broker(certs, password)
    finally:
        kafka_sh("stop", state, port=PORT)


def _sasl(broker: Broker, base: Settings, **kafka: Any) -> Settings:
    fields: dict[str, Any] = {
        "bootstrap": f"127.0.0.1:{SASL}",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": USER,
        "sasl_password": broker.password,
        "tls_ca": broker.certs.ca,
    }
    return base.model_copy(
        update={"kafka": base.kafka.model_validate({**base.kafka.model_dump(), **fields, **kafka})}
    )


def _mtls(broker: Broker, base: Settings, **kafka: Any) -> Settings:
    fields: dict[str, Any] = {
        "bootstrap": f"127.0.0.1:{MTLS}",
        "security_protocol": "SSL",
        "tls_ca": broker.certs.ca,
        "tls_cert": broker.certs.client.cert,
        "tls_key": broker.certs.client.key,
    }
    return base.model_copy(
        update={"kafka": base.kafka.model_validate({**base.kafka.model_dump(), **fields, **kafka})}
    )


async def test_worker_over_mutual_tls_and_sdk_over_sasl_ssl_abort_once(
    broker: Broker, tmp_path: Path
) -> None:
    base = _settings(policy={"min_tokens": 64})
    sasl, mtls = _sasl(broker, base), _mtls(broker, base)
    await apply_topics(sasl)
    plans = [
        Planned(sid, name, _plan(SAMPLES[name], sid))
        for sid, name in ((_sid(n), n) for n in ("think-gas-attack", "benign-python-dedupe"))
    ]
    log = tmp_path / "worker.log"
    worker = _start_worker(with_client_id(mtls, "mtls"), log)
    events, stop = Events(), asyncio.Event()
    collector = asyncio.create_task(collect(sasl, events, stop))
    try:
        # the group as the broker's plaintext admin listener shows it (the test helper speaks no TLS)
        await _owns_everything(with_bootstrap(mtls, f"127.0.0.1:{PORT}"), "mtls", log)
        async with TracePublisher(sasl) as publisher:
            await asyncio.gather(*(stream(publisher, p, 15.0) for p in plans))
        await _until(lambda: all_covered(events, plans), SETTLE_S, "coverage over the secured listeners")
        await asyncio.sleep(1.0)
        check(events, plans)
        assert _stop(worker) == 0, f"worker did not drain cleanly:\n{tail(log)}"
        assert broker.password not in log.read_text()
    finally:
        _stop(worker, signal.SIGKILL)
        stop.set()
        await collector


async def _refused(settings: Settings) -> tuple[str, str, float]:
    """What the SDK and the worker's consumer say when connecting with these settings, and how long."""
    started = time.monotonic()
    with pytest.raises(PublishError) as published:
        async with TracePublisher(settings):
            pass
    source = KafkaChunkSource(settings)
    with pytest.raises(KafkaUnavailable) as consumed:
        await source.start()
    assert not consumed.value.recoverable, "a refusal must not be retried"
    return str(published.value), str(consumed.value), time.monotonic() - started


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong password", "SASL authentication as 'qta-monitor' with SCRAM-SHA-512 failed"),
        ("untrusted broker certificate", "the broker's TLS certificate is not trusted"),
        ("untrusted client certificate", "the broker rejected kafka.tls_cert"),
        ("no client certificate", "the broker requires a client certificate"),
    ],
)
async def test_a_refused_connection_fails_fast_and_says_why(broker: Broker, case: str, expected: str) -> None:
    base, wrong = _settings(), "not-" + broker.password
    settings = {
        "wrong password": lambda: _sasl(broker, base, sasl_password=wrong),
        "untrusted broker certificate": lambda: _sasl(broker, base, tls_ca=broker.certs.other_ca),
        "untrusted client certificate": lambda: _mtls(
            broker, base, tls_cert=broker.certs.stranger.cert, tls_key=broker.certs.stranger.key
        ),
        "no client certificate": lambda: _mtls(broker, base, tls_cert=None, tls_key=None),
    }[case]()
    published, consumed, took = await _refused(settings)
    assert took < FAST_S, (case, took)
    for message in (published, consumed):
        assert expected in message, (case, message)
        assert broker.password not in message and wrong not in message


def test_a_worker_with_a_wrong_password_exits_at_once_with_the_reason_and_no_secret(
    broker: Broker, tmp_path: Path
) -> None:
    wrong = "not-" + broker.password
    settings = _sasl(broker, _settings(), sasl_password=wrong)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    env.update(settings_env(settings), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "monitor", "serve"], env=env, capture_output=True, text=True, timeout=120
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    assert "SASL authentication as 'qta-monitor' with SCRAM-SHA-512 failed" in output, output[-3000:]
    assert wrong not in output and broker.password not in output
