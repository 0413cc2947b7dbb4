"""Readiness and its HTTP endpoint, the one-line message of a missing service, and the client-log filter."""

from __future__ import annotations

import json
import logging
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from aiokafka.errors import KafkaConnectionError

from monitor.client.logs import quiet_client_logs
from monitor.edges.health import Readiness, serve_http
from monitor.edges.kafka import unavailable
from monitor.edges.store import RedisSessionStore, StoreUnavailable
from monitor.settings import RedisSettings, Settings


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def served() -> Iterator[tuple[Readiness, str]]:
    readiness = Readiness()
    server = serve_http(0, readiness, host="127.0.0.1")
    try:
        yield readiness, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_ready_is_503_until_kafka_redis_and_the_guard_are_up(served: tuple[Readiness, str]) -> None:
    readiness, base = served
    status, body = _get(f"{base}/ready")
    assert status == 503
    assert json.loads(body) == {"ready": False, "guard": "starting", "kafka": "starting", "redis": "starting"}
    readiness.up("guard")
    readiness.up("kafka")
    assert _get(f"{base}/ready")[0] == 503
    readiness.up("redis")
    status, body = _get(f"{base}/ready")
    assert status == 200
    assert json.loads(body) == {"ready": True, "guard": "ok", "kafka": "ok", "redis": "ok"}


def test_a_service_going_down_makes_it_unready_with_the_reason(served: tuple[Readiness, str]) -> None:
    readiness, base = served
    for service in ("guard", "kafka", "redis"):
        readiness.up(service)
    readiness.down("redis", "Redis is not reachable at 127.0.0.1:16379")
    status, body = _get(f"{base}/ready")
    assert status == 503 and json.loads(body)["redis"] == "Redis is not reachable at 127.0.0.1:16379"
    readiness.up("redis")
    assert _get(f"{base}/ready")[0] == 200


def test_metrics_and_live_share_the_port(served: tuple[Readiness, str]) -> None:
    _, base = served
    status, body = _get(f"{base}/metrics")
    assert status == 200 and b"# HELP" in body
    assert _get(f"{base}/live") == (200, b"ok\n")


def test_an_ipv6_address_is_served_too() -> None:
    try:
        server = serve_http(0, Readiness(), host="::1")
    except OSError as exc:  # a machine without IPv6 loopback
        pytest.skip(f"no IPv6 loopback: {exc}")
    try:
        assert _get(f"http://[::1]:{server.server_port}/live") == (200, b"ok\n")
    finally:
        server.shutdown()
        server.server_close()


def test_an_unreachable_broker_is_one_line_that_says_what_to_start() -> None:
    exc = KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 19092, <AddressFamily.AF_INET: 2>)]")
    error = unavailable(exc, "connect (consumer)", "127.0.0.1:19092")
    assert str(error) == (
        "Kafka is not reachable at 127.0.0.1:19092: start it with bash scripts/services.sh up "
        "(or point kafka.bootstrap at a running one)"
    )
    assert error.recoverable


def test_expected_client_states_are_kept_out_of_the_output(caplog: pytest.LogCaptureFixture) -> None:
    quiet_client_logs()
    quiet_client_logs()  # idempotent
    fetcher = logging.getLogger("aiokafka.consumer.fetcher")
    with caplog.at_level(logging.INFO):
        fetcher.error(
            "Failed fetch offsets from 1: [Error 6] NotLeaderForPartitionError: TopicPartition(topic='t')"
        )
        logging.getLogger("aiokafka.client").error('Unable connect to "127.0.0.1:19092": refused')
        logging.getLogger("aiokafka.consumer.group_coordinator").error(
            "Group Coordinator Request failed: [Error 15] CoordinatorNotAvailableError"
        )
        fetcher.error("Failed fetch messages from 1: [Error 74] FencedLeaderEpochError")  # not expected: kept
    assert [r.getMessage() for r in caplog.records] == [
        "Failed fetch messages from 1: [Error 74] FencedLeaderEpochError"
    ]
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="monitor"):
        fetcher.error("Failed fetch offsets from 1: [Error 6] NotLeaderForPartitionError")
    assert len(caplog.records) == 1  # debugging the client: everything comes back


async def test_an_unreachable_redis_is_one_line_that_says_what_to_start() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = RedisSessionStore(Settings(redis=RedisSettings(url=f"redis://:secret@127.0.0.1:{port}/0")))
    try:
        with pytest.raises(StoreUnavailable) as raised:
            await store.ping()
    finally:
        await store.close()
    assert str(raised.value) == (
        f"Redis is not reachable at 127.0.0.1:{port}: start it with bash scripts/services.sh up "
        "(or point redis.url at a running one)"
    )  # and the password in the url stays out of it
    assert raised.value.recoverable
