"""Shared fixtures: the real local services, started once per run with the same script users run
(`scripts/services.sh up`), and settings factories that give each test its own topics and consumer group.

A test that asks for `services`, `kafka_bootstrap`, `redis_url` or `make_kafka_settings` is marked
`integration` automatically; a test marked `integration` gets the services started. A service that cannot
start fails the run with the reason; nothing is skipped."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from monitor.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
KAFKA_BOOTSTRAP = "127.0.0.1:19092"
REDIS_URL = "redis://127.0.0.1:16379/0"
SERVICE_FIXTURES = {"services", "kafka_bootstrap", "redis_url", "make_kafka_settings"}
T = TypeVar("T")


def _state_dir() -> Path:
    cache = Path(os.environ.get("QTA_CACHE", Path.home() / ".cache" / "qta-monitor"))
    return Path(os.environ.get("QTA_STATE", cache / "state"))


def _log_tails() -> str:
    parts = []
    for log in (_state_dir() / "kafka-19092" / "kafka.log", _state_dir() / "redis-16379" / "redis.log"):
        if log.exists():
            lines = log.read_text(errors="replace").splitlines()[-25:]
            parts.append(f"--- {log} (last lines)\n" + "\n".join(lines))
    return "\n".join(parts)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def services() -> None:
    """Kafka + Redis up (idempotent; the broker is left running for the next run)."""
    try:
        proc = subprocess.run(
            ["bash", str(ROOT / "scripts" / "services.sh"), "up"],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"scripts/services.sh up timed out after {exc.timeout}s\n{_log_tails()}", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(
            f"scripts/services.sh up failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}"
            f"{proc.stderr[-3000:]}\n{_log_tails()}",
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def _integration_services(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("integration") is not None:
        request.getfixturevalue("services")


@pytest.fixture(scope="session")
def kafka_bootstrap(services: None) -> str:
    return KAFKA_BOOTSTRAP


@pytest.fixture(scope="session")
def redis_url(services: None) -> str:
    return REDIS_URL


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync or async code alike (own loop, own thread)."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


@pytest.fixture
def make_settings() -> Callable[..., Settings]:
    """`make_settings(**overrides)`: local-service settings with unique topic names and group id.
    Overrides are nested dicts per section, e.g. `make_settings(batching={"max_batch": 4})`."""

    def make(**overrides: Any) -> Settings:
        suffix = uuid.uuid4().hex[:10]
        base: dict[str, Any] = {
            "kafka": {"bootstrap": KAFKA_BOOTSTRAP, "group_id": f"test-{suffix}", "request_timeout_s": 10.0},
            "redis": {"url": REDIS_URL},
            "topics": {
                "chunks": f"test.{suffix}.chunks",
                "verdicts": f"test.{suffix}.verdicts",
                "aborts": f"test.{suffix}.aborts",
                "dead_letters": f"test.{suffix}.dead-letters",
                "audits": f"test.{suffix}.audits",
                "definitions_dir": str(ROOT / "topics"),
            },
        }
        return load_settings(None, **_merge(base, overrides))

    return make


@pytest.fixture
def make_kafka_settings(
    services: None, make_settings: Callable[..., Settings]
) -> Iterator[Callable[..., Settings]]:
    """Like `make_settings`, with the topics created on the local broker (deleted again afterwards)."""
    from monitor.edges.kafka import apply_topics, delete_topics

    made: list[Settings] = []

    def make(**overrides: Any) -> Settings:
        settings = make_settings(**overrides)
        run_async(apply_topics(settings))
        made.append(settings)
        return settings

    yield make
    for settings in made:
        run_async(delete_topics(settings))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder for the tests that read it (monitor.evaluation.datasets.data_dir:
    $QTA_SHARED_DATA, else ../shared/data beside the repository). Missing, it fails the test with one line
    naming the path and the setting, instead of a FileNotFoundError deep in a fixture."""
    from monitor.evaluation.datasets import DataMissing, data_dir

    try:
        return data_dir()
    except DataMissing as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)  # outside the except: no chained traceback
