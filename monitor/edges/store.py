"""Where session state lives between steps, workers and restarts: the `SessionStore` protocol, the Redis
store (the only module that imports redis) and its in-memory twin; the protocol and its error are the
core's ports (monitor.core.ports), re-exported here.

Keys per session, all under the `{sid}` hash tag so one Lua script touches one Redis Cluster slot, each
with the TTL refreshed on every write:

    qm:{sid}:meta    hash: next_seq, status, part, tokens, scored_seq, policy state, pending chunks ...
    qm:{sid}:q|t|a   question / thinking / answer text
    qm:{sid}:scores  recent scores (JSON, capped at redis.scores_kept)
    qm:{sid}:img     image references (JSON), in arrival order
    qm:{sid}:abort   the event id of the session's one abort (SET NX); `abort:<epoch>` after a restart,
                     `steer` / `steer:<epoch>` for its one steer

The meta record carries `state_version`. Loading is tolerant in both directions, so workers of two releases
can share sessions during a rolling deploy: a field this code does not know is ignored, a field it knows but
the record lacks takes its default.

A save appends what was folded since the last save, and only when the stored `next_seq` still equals the
`stored_seq` the caller started from: a replay or a stale worker is a no-op, reported back as a conflict.
A part that reached the token limit (its head dropped) is rewritten whole instead of appended.

With `redis.wait_replicas` > 0 a claim or save is followed, on the same connection to the key's primary, by
an EXPIRE of one of its keys and `WAIT`: WAIT counts the replicas that have every write of its own
connection, and the EXPIRE (a write after ours in the primary's one replication stream) makes that cover
ours, even when our write ran on another connection or is a retry that wrote nothing new. Fewer
acknowledgements than asked is a recoverable StoreUnavailable; the worker retries the step, which claims
the same event id again (True again) and saves the same write under the same token (a success again)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, fields
from typing import Any
from urllib.parse import urlsplit

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import PipelineCommand, RedisCluster
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    MovedError,
    NoPermissionError,
    RedisClusterException,
    RedisError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from monitor.core.policy import PolicyState
from monitor.core.ports import StoreUnavailable
from monitor.core.session import ScorePoint, SessionState
from monitor.edges.health import not_reachable
from monitor.messages import Chunk, ImageRef
from monitor.settings import Settings

_PARTS = (("question", "q"), ("thinking", "t"), ("answer", "a"))
STATE_VERSION = 2  # 1: before epochs, steers and request ids (records without the field)


def meta_record(state: SessionState) -> dict[str, bytes]:
    """The meta hash of a state: one JSON value per field, readable with redis-cli."""
    record: dict[str, Any] = {
        "next_seq": state.next_seq,
        "status": state.status,
        "part": state.part,
        "has_question": state.has_question,
        "image_text": state.image_text,
        "ocr_images": state.ocr_images,
        "model": state.model,
        "tenant": state.tenant,
        "question_tokens": state.question_tokens,
        "tokens": state.tokens,
        "chars": state.chars,
        "truncated": state.truncated,
        "degraded": state.degraded,
        "late_chunks": state.late_chunks,
        "chunk_ts": state.chunk_ts,
        "pending": [c.model_dump(mode="json") for c in state.pending],
        "scored_seq": state.scored_seq,
        "scored_tokens": state.scored_tokens,
        "scored_chars": state.scored_chars,
        "scored_part": state.scored_part,
        "policy": asdict(state.policy),
        "abort_event_id": state.abort_event_id,
        "abort_record": state.abort_record,
        "steer_event_id": state.steer_event_id,
        "steer_tokens": state.steer_tokens,
        "epoch": state.epoch,
        "origin": state.origin,
        "origin_offset": state.origin_offset,
        "request_id": state.request_id,
        "state_version": STATE_VERSION,
    }
    return {k: orjson.dumps(v) for k, v in record.items()}


_DEFAULTS = SessionState("")
_POLICY_FIELDS = frozenset(f.name for f in fields(PolicyState))


def state_from_record(
    session_id: str, meta: Mapping[Any, bytes], texts: Sequence[bytes | None], images: Sequence[bytes]
) -> SessionState:
    m = {(k.decode() if isinstance(k, bytes) else k): orjson.loads(v) for k, v in meta.items()}
    q, t, a = ((x or b"").decode("utf-8", errors="replace") for x in texts)
    next_seq = int(m["next_seq"])
    plain = (
        "status part has_question image_text ocr_images model tenant question_tokens tokens chars truncated "
        "degraded late_chunks chunk_ts scored_seq scored_tokens scored_chars scored_part abort_event_id "
        "abort_record steer_event_id steer_tokens epoch origin origin_offset request_id"
    ).split()
    known = {name: m[name] for name in plain if name in m}  # missing: the default; unknown: ignored
    policy = {k: v for k, v in (m.get("policy") or {}).items() if k in _POLICY_FIELDS}
    return SessionState(
        session_id=session_id,
        next_seq=next_seq,
        stored_seq=next_seq,
        question=q,
        thinking=t,
        answer=a,
        images=tuple(ImageRef.model_validate_json(i) for i in images),
        pending=tuple(Chunk.model_validate(c) for c in m.get("pending", [])),
        policy=PolicyState(**policy),
        **known,
    )


def _texts(state: SessionState, cap: int) -> list[tuple[str, str]]:
    """(mode, text) per part: 'A' appends the unsaved delta; 'S' rewrites a part that reached the limit (or
    every part, when a new epoch began)."""
    out = []
    for name, _ in _PARTS:
        full: str = getattr(state, name)
        delta: str = getattr(state.unsaved, name)
        rewrite = state.unsaved.reset or (len(full) >= cap and delta)
        out.append(("S", full) if rewrite else ("A", delta))
    return out


def _score_json(point: ScorePoint) -> bytes:
    return orjson.dumps(asdict(point))


class MemorySessionStore:
    """The in-memory twin: the same records and the same seq check, for tests and `qta-monitor eval`."""

    def __init__(self, settings: Settings) -> None:
        self._cap = settings.guard.max_tokens * 4
        self._kept = settings.redis.scores_kept
        self.meta: dict[str, dict[str, bytes]] = {}
        self.texts: dict[str, list[str]] = {}
        self.images: dict[str, list[bytes]] = {}
        self.scores: dict[str, list[bytes]] = {}
        self.aborts: dict[str, str] = {}
        self.claims: dict[tuple[str, str], str] = {}  # (session, kind) -> event id, for kinds but "abort"

    async def load(self, session_ids: Iterable[str]) -> dict[str, SessionState]:
        return {
            sid: state_from_record(
                sid, self.meta[sid], [t.encode() for t in self.texts[sid]], self.images[sid]
            )
            for sid in session_ids
            if sid in self.meta
        }

    async def save(self, states: Sequence[SessionState]) -> frozenset[str]:
        conflicts = set()
        for state in states:
            sid = state.session_id
            current = self.meta.get(sid)
            if (int(current["next_seq"]) if current else 1) != state.stored_seq:
                conflicts.add(sid)
                continue
            if state.unsaved.reset:
                self.images.pop(sid, None)
                self.scores.pop(sid, None)
            texts = self.texts.setdefault(sid, ["", "", ""])
            for i, (mode, text) in enumerate(_texts(state, self._cap)):
                texts[i] = text if mode == "S" else texts[i] + text
            self.images.setdefault(sid, []).extend(i.model_dump_json().encode() for i in state.unsaved.images)
            kept = self.scores.setdefault(sid, []) + [_score_json(p) for p in state.unsaved.scores]
            self.scores[sid] = kept[-self._kept :]
            self.meta[sid] = meta_record(state)
        return frozenset(conflicts)

    async def claim_abort(self, session_id: str, event_id: str, kind: str = "abort") -> bool:
        if kind != "abort":
            return self.claims.setdefault((session_id, kind), event_id) == event_id
        return self.aborts.setdefault(session_id, event_id) == event_id

    async def claimed_abort(self, session_id: str, kind: str = "abort") -> str | None:
        return self.aborts.get(session_id) if kind == "abort" else self.claims.get((session_id, kind))

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


def keys(session_id: str) -> dict[str, str]:
    """Every key of a session, under one hash tag."""
    return {name: f"qm:{{{session_id}}}:{name}" for name in ("meta", "q", "t", "a", "scores", "img", "abort")}


def claim_key(session_id: str, kind: str) -> str:
    """The key of a session's one abort ("abort") or steer ("steer"), ":<epoch>" after a restart."""
    return f"qm:{{{session_id}}}:{kind}"


_SAVE_LUA = """
-- KEYS: meta q t a scores img abort
-- ARGV: expected_seq ttl kept reset  (mode text) x3  n_scores n_images  scores... images... meta k/v pairs...
local current = redis.call('HGET', KEYS[1], 'next_seq')
local expected = tonumber(ARGV[1])
if (current and tonumber(current) ~= expected) or (not current and expected ~= 1) then
  -- the client's own retry of a save that already ran (same token, sent last) is a success
  if ARGV[#ARGV - 1] == 'save_token' and redis.call('HGET', KEYS[1], 'save_token') == ARGV[#ARGV] then
    return 1
  end
  return 0
end
if ARGV[4] == '1' then
  -- a new epoch of the session: what the old one kept goes
  redis.call('DEL', KEYS[5], KEYS[6])
end
for i = 0, 2 do
  local mode, text = ARGV[5 + 2 * i], ARGV[6 + 2 * i]
  if mode == 'S' then
    redis.call('SET', KEYS[2 + i], text)
  elseif #text > 0 then
    redis.call('APPEND', KEYS[2 + i], text)
  end
end
local n_scores, n_images = tonumber(ARGV[11]), tonumber(ARGV[12])
local at = 13
for _ = 1, n_scores do
  redis.call('RPUSH', KEYS[5], ARGV[at])
  at = at + 1
end
if n_scores > 0 then
  redis.call('LTRIM', KEYS[5], -tonumber(ARGV[3]), -1)
end
for _ = 1, n_images do
  redis.call('RPUSH', KEYS[6], ARGV[at])
  at = at + 1
end
while at < #ARGV do
  redis.call('HSET', KEYS[1], ARGV[at], ARGV[at + 1])
  at = at + 2
end
for i = 1, #KEYS do
  redis.call('EXPIRE', KEYS[i], ARGV[2])
end
return 1
"""

_CLAIM_LUA = """
-- KEYS: abort  ARGV: event_id ttl
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return 1
end
return 0
"""


def _digest(args: Sequence[bytes | str | int]) -> bytes:
    return hashlib.blake2b(repr(list(args)).encode(), digest_size=16).digest()


def _unavailable(exc: RedisError | RedisClusterException, doing: str) -> StoreUnavailable:
    fatal = isinstance(exc, AuthenticationError | AuthorizationError | NoPermissionError)
    return StoreUnavailable(f"redis {doing} failed: {type(exc).__name__}: {exc}", recoverable=not fatal)


class RedisSessionStore:
    """Session state in Redis (or Redis Cluster-compatible keys); every write is one Lua script call."""

    def __init__(self, settings: Settings) -> None:
        url = settings.redis.url
        if settings.redis.tls and url.startswith("redis://"):
            url = "rediss://" + url.removeprefix("redis://")
        password = settings.redis.password.get_secret_value() if settings.redis.password else None
        kwargs: dict[str, Any] = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0}
        if password is not None:
            kwargs["password"] = password
        # A cluster client refuses scripts and MGET inside pipelines, so it gets one call per session
        # (every key of a session shares its `{sid}` slot) sent concurrently instead.
        self._client: Redis | RedisCluster = (
            RedisCluster.from_url(url, **kwargs) if settings.redis.cluster else Redis.from_url(url, **kwargs)
        )
        self._cluster_ready = False
        parsed = urlsplit(url)  # host:port only; the url may carry a password
        self._address = f"{parsed.hostname}:{parsed.port or 6379}"
        self._ttl = settings.redis.session_ttl_s
        self._kept = settings.redis.scores_kept
        self._cap = settings.guard.max_tokens * 4
        self._save = self._client.register_script(_SAVE_LUA)
        self._claim = self._client.register_script(_CLAIM_LUA)
        self._wait_replicas = settings.redis.wait_replicas
        self._wait_timeout_ms = settings.redis.wait_timeout_ms
        # session id -> (digest of a failed save's arguments, its token): see _token
        self._retry_tokens: dict[str, tuple[bytes, str]] = {}

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except RedisConnectionError as exc:
            raise StoreUnavailable(
                not_reachable("Redis", self._address, "redis.url"), recoverable=True
            ) from exc
        except (RedisError, RedisClusterException) as exc:  # the latter: no node of the cluster answers
            raise _unavailable(exc, "ping") from exc

    async def load(self, session_ids: Iterable[str]) -> dict[str, SessionState]:
        ids = list(dict.fromkeys(session_ids))
        if not ids:
            return {}
        try:
            if isinstance(self._client, RedisCluster):
                await self._discover(self._client)
                found_each = await asyncio.gather(*(self._load_one(sid) for sid in ids))
                replies = [reply for each in found_each for reply in each]
            else:
                async with self._client.pipeline(transaction=False) as pipe:
                    for sid in ids:
                        k = keys(sid)
                        pipe.hgetall(k["meta"])
                        pipe.mget(k["q"], k["t"], k["a"])
                        pipe.lrange(k["img"], 0, -1)
                    replies = await pipe.execute()
        except (RedisError, RedisClusterException) as exc:  # the latter: no node of the cluster answers
            raise _unavailable(exc, "load") from exc
        found = {}
        for i, sid in enumerate(ids):
            meta, texts, images = replies[3 * i : 3 * i + 3]
            if meta:
                found[sid] = state_from_record(sid, meta, texts, images)
        return found

    async def _discover(self, client: RedisCluster) -> None:
        # The async cluster client discovers its nodes lazily; calls racing through that discovery can
        # break each other's connections, so discover once before the first concurrent burst.
        if not self._cluster_ready:
            await client.initialize()
            self._cluster_ready = True

    async def _load_one(self, sid: str) -> list[Any]:
        k = keys(sid)
        return list(
            await asyncio.gather(
                self._client.hgetall(k["meta"]),
                self._client.mget(k["q"], k["t"], k["a"]),
                self._client.lrange(k["img"], 0, -1),
            )
        )

    def _save_args(self, state: SessionState) -> tuple[list[str], list[bytes | str | int]]:
        k = keys(state.session_id)
        args: list[bytes | str | int] = [state.stored_seq, self._ttl, self._kept, int(state.unsaved.reset)]
        for mode, text in _texts(state, self._cap):
            args += [mode, text]
        args += [len(state.unsaved.scores), len(state.unsaved.images)]
        args += [_score_json(p) for p in state.unsaved.scores]
        args += [i.model_dump_json() for i in state.unsaved.images]
        for field, value in meta_record(state).items():
            args += [field, value]
        token = self._token(state.session_id, args)
        args += ["save_token", orjson.dumps(token)]  # last: tells a retried call from a replay
        return [k[n] for n in ("meta", "q", "t", "a", "scores", "img", "abort")], args

    def _token(self, session_id: str, args: Sequence[bytes | str | int]) -> str:
        """A new save token, except for the very write of a save that failed (an error, or too few replicas
        acknowledged): its retry then carries the same token, so the Lua takes it for the call that may
        already have run (a success), not for a replay (a conflict that would drop the session)."""
        failed = self._retry_tokens.get(session_id)
        if failed is not None and failed[0] == _digest(args):
            return failed[1]
        return uuid.uuid4().hex

    async def _on_primary(self, key: str, *commands: tuple[Any, ...]) -> list[Any]:
        """Run `commands` in order on one connection of the primary that serves `key`'s slot. The cluster
        client would send each command on any pooled connection (WAIT counts only its own connection's
        writes), and its pipeline re-routes a keyless WAIT to the default node when it retries; this does
        neither. A moved slot or a lost node raises (recoverable) after a routed call for the key has let
        the client learn the new owner, which the worker's retry then reaches."""
        client = self._client
        if not isinstance(client, RedisCluster):
            raise TypeError("_on_primary is for a Redis Cluster client")
        await self._discover(client)
        node = client.get_node_from_key(key)
        if node is None:
            raise RedisConnectionError(f"no Redis Cluster node serves the slot of {key}")
        calls = [PipelineCommand(i, *command) for i, command in enumerate(commands)]
        try:
            await node.execute_pipeline(calls)
            failed = next((c.result for c in calls if isinstance(c.result, Exception)), None)
            if failed is not None:
                raise failed
        except (MovedError, AskError, RedisConnectionError, RedisTimeoutError):
            with contextlib.suppress(RedisError, RedisClusterException):
                await client.exists(key)  # follows MOVED, re-discovers the nodes after a lost one
            raise
        return [c.result for c in calls]

    def _wait_command(self) -> tuple[str, int, int]:
        return ("WAIT", self._wait_replicas, self._wait_timeout_ms)

    def _replicated(self, acked: int, doing: str) -> None:
        if acked < self._wait_replicas:
            raise StoreUnavailable(
                f"redis {doing}: {acked} of {self._wait_replicas} replicas (redis.wait_replicas) "
                f"acknowledged within {self._wait_timeout_ms} ms (redis.wait_timeout_ms): not durable yet, "
                "retrying (a Redis without replicas needs redis.wait_replicas=0)",
                recoverable=True,
            )

    async def save(self, states: Sequence[SessionState]) -> frozenset[str]:
        if not states:
            return frozenset()
        calls = [self._save_args(state) for state in states]
        acked = self._wait_replicas
        try:
            if isinstance(self._client, RedisCluster):
                await self._discover(self._client)
                if self._wait_replicas:
                    # per session: the save, an EXPIRE of its meta (see the module docstring) and WAIT
                    confirmed = await asyncio.gather(
                        *(
                            self._on_primary(
                                k[0], ("EVAL", _SAVE_LUA, len(k), *k, *a), ("EXPIRE", k[0], self._ttl),
                                self._wait_command(),
                            )
                            for k, a in calls
                        )
                    )  # fmt: skip
                    replies = [reply[0] for reply in confirmed]
                    acked = min(int(reply[-1]) for reply in confirmed)
                else:
                    # EVAL, not EVALSHA: nodes come and go with their script caches. A cluster client may
                    # also retry a call that already ran; the save token makes that retry a success.
                    replies = list(
                        await asyncio.gather(
                            *(self._client.eval(_SAVE_LUA, len(k), *k, *a) for k, a in calls)  # type: ignore[arg-type]
                        )
                    )
            else:
                async with self._client.pipeline(transaction=False) as pipe:
                    for key_list, args in calls:
                        await self._save(keys=key_list, args=args, client=pipe)
                    if self._wait_replicas:
                        for key_list, _ in calls:
                            pipe.expire(key_list[0], self._ttl)
                        pipe.wait(self._wait_replicas, self._wait_timeout_ms)
                    replies = await pipe.execute()
                if self._wait_replicas:
                    acked, replies = int(replies[-1]), replies[: len(states)]
        except (RedisError, RedisClusterException) as exc:  # the latter: no node of the cluster answers
            self._remember(states, calls)
            raise _unavailable(exc, "save") from exc
        if acked < self._wait_replicas:
            self._remember(states, calls)
            self._replicated(acked, "save")
        for state in states:
            self._retry_tokens.pop(state.session_id, None)
        return frozenset(s.session_id for s, ok in zip(states, replies, strict=True) if not ok)

    def _remember(
        self, states: Sequence[SessionState], calls: Sequence[tuple[list[str], list[bytes | str | int]]]
    ) -> None:
        """The token of each save of a call that failed (see _token)."""
        for state, (_, args) in zip(states, calls, strict=True):
            token = args[-1]  # orjson of the token, last (_save_args)
            if isinstance(token, bytes):
                self._retry_tokens[state.session_id] = (_digest(args[:-2]), orjson.loads(token))

    async def claim_abort(self, session_id: str, event_id: str, kind: str = "abort") -> bool:
        key = claim_key(session_id, kind)
        try:
            if not self._wait_replicas:
                return bool(await self._claim(keys=[key], args=[event_id, self._ttl]))
            # The EXPIRE makes the WAIT cover the claim also when this is a retry that wrote nothing, and
            # also another worker's claim, which a False answer makes this worker publish.
            if isinstance(self._client, RedisCluster):
                claimed, _, acked = await self._on_primary(
                    key, ("EVAL", _CLAIM_LUA, 1, key, event_id, self._ttl), ("EXPIRE", key, self._ttl),
                    self._wait_command(),
                )  # fmt: skip
            else:
                async with self._client.pipeline(transaction=False) as pipe:
                    await self._claim(keys=[key], args=[event_id, self._ttl], client=pipe)
                    pipe.expire(key, self._ttl)
                    pipe.wait(self._wait_replicas, self._wait_timeout_ms)
                    claimed, _, acked = await pipe.execute()
        except (RedisError, RedisClusterException) as exc:
            raise _unavailable(exc, "claim_abort") from exc
        self._replicated(int(acked), "claim_abort")
        return bool(claimed)

    async def claimed_abort(self, session_id: str, kind: str = "abort") -> str | None:
        try:
            value = await self._client.get(claim_key(session_id, kind))
        except RedisError as exc:
            raise _unavailable(exc, "get abort") from exc
        return value.decode() if isinstance(value, bytes) else None

    async def ttl(self, session_id: str) -> dict[str, int]:
        """Seconds left per key (-2: missing); for tests and operators."""
        try:
            return {name: int(await self._client.ttl(key)) for name, key in keys(session_id).items()}
        except RedisError as exc:
            raise _unavailable(exc, "ttl") from exc

    async def close(self) -> None:
        await self._client.aclose()
