"""The Redis store over TLS with a least-privilege ACL user: a private redis-server (Debian's, TLS only, the
default user off) whose user `qta-monitor` may run the commands the store needs on `qm:*` keys only, with
certificates made by tls_certs.py. The store saves, loads and claims; a user without rights on `qm:*` and a
wrong password fail with a message naming the cause, not recoverable, without the password; a client that
does not trust the server's certificate cannot connect."""

from __future__ import annotations

import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_store_redis import comparable, folded, make_settings
from tls_certs import Certs, make_certs

from monitor.core.session import mark_saved
from monitor.edges.store import RedisSessionStore, StoreUnavailable

pytestmark = pytest.mark.integration

PORT = 16393  # TLS only; not the shared 16379
USER, OTHER = "qta-monitor", "other-app"
# What the store runs (its Lua scripts and what they call, reads of its keys, PING) and nothing else.
COMMANDS = (
    "resetchannels -@all +ping +hgetall +mget +lrange +get +eval +evalsha +script|load +script|exists"
    " +append +expire +hget +hset +ltrim +rpush +set"  # what its Lua scripts call
)


@dataclass(frozen=True)
class TlsRedis:
    certs: Certs
    password: str
    other_password: str


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    directory = tmp_path_factory.mktemp("redis-tls")
    certs = make_certs(directory / "certs")
    password, other_password = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    acl = directory / "users.acl"
    acl.write_text(
        "user default off\n"
        f"user admin on >{secrets.token_urlsafe(18)} ~* &* +@all\n"
        f"user {USER} on >{password} ~qm:* {COMMANDS}\n"
        f"user {OTHER} on >{other_password} ~other:* {COMMANDS}\n"  # the same commands, other keys
    )
    server = subprocess.Popen(
        [
            *("redis-server", "--bind", "127.0.0.1", "--port", "0", "--tls-port", str(PORT)),
            *("--tls-cert-file", str(certs.broker.cert), "--tls-key-file", str(certs.broker.key)),
            *("--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "no", "--aclfile", str(acl)),
            *("--save", "", "--appendonly", "no", "--dir", str(directory)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while "NOAUTH" not in _ping(certs):
            assert server.poll() is None, "redis-server with TLS exited at start-up"
            assert time.monotonic() < deadline, "redis-server with TLS did not answer"
            time.sleep(0.1)
        yield TlsRedis(certs, password, other_password)
    finally:
        server.terminate()
        server.wait(10)


def _ping(certs: Certs) -> str:
    done = subprocess.run(
        ["redis-cli", "--tls", "--cacert", str(certs.ca), "-h", "127.0.0.1", "-p", str(PORT), "ping"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return done.stdout + done.stderr


def _url(user: str, ca: Path) -> str:
    return f"rediss://{user}@127.0.0.1:{PORT}/0?ssl_ca_certs={ca}"


async def test_the_store_works_over_tls_as_a_user_limited_to_its_keys(tls_redis: TlsRedis) -> None:
    settings = make_settings(_url(USER, tls_redis.certs.ca), password=tls_redis.password)
    store = RedisSessionStore(settings)
    sid = f"s-{uuid.uuid4().hex}"
    try:
        await store.ping()
        state = folded(sid, [("question", "Is this safe? "), ("thinking", "Let me think. ")])
        assert await store.save([state]) == frozenset()
        assert comparable((await store.load([sid]))[sid]) == comparable(mark_saved(state))
        assert await store.claim_abort(sid, "abort-1") is True
        assert await store.claim_abort(sid, "abort-2") is False
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no rights on qm:*", "no permissions to access one of the keys"),
        ("wrong password", "AuthenticationError"),
    ],
)
async def test_a_user_without_the_rights_or_password_fails_clearly(
    tls_redis: TlsRedis, case: str, expected: str
) -> None:
    user, password = (OTHER, tls_redis.other_password) if case == "no rights on qm:*" else (USER, "not-it")
    store = RedisSessionStore(make_settings(_url(user, tls_redis.certs.ca), password=password))
    sid = f"s-{uuid.uuid4().hex}"
    try:
        with pytest.raises(StoreUnavailable) as raised:
            await store.save([folded(sid, [("question", "Is this safe? ")])])
    finally:
        await store.close()
    assert not raised.value.recoverable, "retrying cannot grant rights"
    message = str(raised.value)
    assert expected in message, message
    assert password not in message and tls_redis.password not in message


async def test_a_client_that_does_not_trust_the_certificate_cannot_connect(tls_redis: TlsRedis) -> None:
    settings = make_settings(_url(USER, tls_redis.certs.other_ca), password=tls_redis.password)
    store = RedisSessionStore(settings)
    try:
        with pytest.raises(StoreUnavailable) as raised:
            await store.ping()
    finally:
        await store.close()
    assert tls_redis.password not in str(raised.value)
