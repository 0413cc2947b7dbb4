"""Wire messages: frozen, versioned (`v`), orjson-encoded, with JSON Schemas exported to topics/schemas/.

The schemas are the contract: a message is decoded exactly when its JSON validates against its schema
(tests/unit/test_schemas.py checks both directions). So decoding follows JSON's types, not pydantic's lax
coercions: `"1"` or `true` is no number, `1` is no boolean, and a missing `v` means version 1, as the
schema's default says. Decoding never raises on data: `decode_chunk` returns either a `Chunk` or a
`DecodeError` value that the worker turns into a dead letter."""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

VERSION = 1
MAX_INT = 2**63 - 1  # a Java long: what every Kafka client can hold
MAX_DEAD_LETTER_RAW = 16 * 1024  # bytes of the offending message kept (base64) in a dead letter

Part = Literal["question", "thinking", "answer", "end"]


def _on_scale(value: float) -> float:
    if value not in (0, 0.5, 1):
        raise ValueError("label must be 0, 0.5 or 1")
    return float(value)


def _json_number(value: Any) -> Any:
    # pydantic's lax mode reads "1" and true as numbers; JSON Schema does not, and the schema is the contract
    if isinstance(value, bool | str):
        raise ValueError(f"Input should be a JSON number, not {type(value).__name__}")
    return value


# 1.0 is an integer, as in JSON Schema; "1" is not
Int = Annotated[int, Field(ge=-MAX_INT - 1, le=MAX_INT), BeforeValidator(_json_number)]
Float = Annotated[float, BeforeValidator(_json_number)]
# mypy accepts no float in Literal; the validator and the schema keep the wire to 0 / 0.5 / 1.
Label = Annotated[
    float,
    BeforeValidator(_json_number),
    AfterValidator(_on_scale),
    WithJsonSchema({"type": "number", "enum": [0, 0.5, 1]}),
]
Action = Literal["abort", "steer"]
DeadLetterReason = Literal[
    "undecodable",
    "unknown_version",
    "invalid_fields",
    "bad_image",
    "bad_seq",
    "no_question",
    "gap",
    "oversized",
    "session_reused",
    "after_end",
]


EPOCH = (
    "how often this session id had been restarted before (seq 1 again with other content); ids of events of "
    "epoch > 0 carry it"
)


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    v: Annotated[Literal[1], BeforeValidator(_json_number)] = Field(
        default=1, description="message version; a message without it is version 1"
    )


M = TypeVar("M", bound=_Wire)


class ImageRef(BaseModel):
    """An image either inline (`data`, base64) or by reference (`uri`: a file path or file:// URI;
    http(s) only where the settings allow it)."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                {"required": ["data"], "properties": {"data": {"type": "string"}}},
                {"required": ["uri"], "properties": {"uri": {"type": "string"}}},
            ]
        },
    )
    data: str | None = Field(default=None, description="base64 of the encoded image bytes")
    uri: str | None = None
    mime: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ImageRef:
        if (self.data is None) == (self.uri is None):
            raise ValueError("an image needs exactly one of 'data' (base64) or 'uri'")
        return self


class Chunk(_Wire):
    """One delta of one part of a session, numbered by `seq` from 1; `end` closes the session."""

    session_id: Annotated[str, Field(min_length=1, max_length=256)]
    seq: Annotated[int, Field(ge=1, le=MAX_INT), BeforeValidator(_json_number)]
    part: Part
    text: str = ""
    images: tuple[ImageRef, ...] = ()
    model: str | None = None
    tenant: str | None = None
    request_id: Annotated[str, Field(max_length=256)] | None = Field(
        default=None, description="the serving stack's own request id; carried to the session's abort"
    )
    ts: Float = Field(default_factory=time.time, description="producer timestamp, unix seconds")


class Verdict(_Wire):
    """A published score of a session covering chunks 1..seq."""

    event_id: str
    session_id: str
    seq: Int
    part: Part
    tokens: Int = Field(description="tokens of the prefix seen so far")
    tokens_read: Int = Field(description="tokens the guard read for this score")
    p_safe: Float
    p_potential: Float
    p_harmful: Float
    label: Label
    category: str | None = None
    guard: str
    ema: Float = Field(description="moving average of p_harmful across re-scores")
    status: Literal["ok", "warn", "abort"] = "ok"
    truncated: StrictBool = Field(default=False, description="prefix exceeded the token limit; tail kept")
    degraded: StrictBool = Field(default=False, description="a gap in seq never filled")
    chunk_ts: Float = Field(description="producer timestamp of the newest chunk covered")
    epoch: Int = Field(default=0, description=EPOCH)
    ts: Float = Field(default_factory=time.time)


class Abort(_Wire):
    """The one event per session that tells the serving stack to stop (or to steer)."""

    event_id: str
    session_id: str
    seq: Int
    part: Part
    action: Action = "abort"
    label: Label
    score: Float
    category: str | None = None
    rule: str
    guard: str
    explanation: str | None = None
    steer_prompt: str | None = None
    model: str | None = None
    tenant: str | None = None
    request_id: str | None = None
    chunk_ts: Float
    epoch: Int = Field(default=0, description=EPOCH)
    final: StrictBool = Field(
        default=False, description="fired at the session's end: retract or redact what was already shown"
    )
    ts: Float = Field(default_factory=time.time)


class Audit(_Wire):
    """The guard's analysis of an abort, produced off the hot path and published after the abort."""

    event_id: str
    abort_event_id: str
    session_id: str
    guard: str
    analysis: str
    ts: Float = Field(default_factory=time.time)


class DeadLetter(_Wire):
    """A message the worker could not use, with why, where it came from and its (bounded) bytes."""

    reason: DeadLetterReason
    error: str
    session_id: str | None = None
    topic: str
    partition: Int
    offset: Int
    raw_b64: str
    raw_truncated: StrictBool
    ts: Float = Field(default_factory=time.time)


MESSAGES: dict[str, type[_Wire]] = {
    "chunk": Chunk,
    "verdict": Verdict,
    "abort": Abort,
    "audit": Audit,
    "dead_letter": DeadLetter,
}


@dataclass(frozen=True, slots=True)
class DecodeError:
    """Why some bytes are not a usable message (a value, not an exception)."""

    reason: DeadLetterReason
    error: str
    session_id: str | None = None


def encode(message: _Wire) -> bytes:
    return orjson.dumps(message.model_dump(mode="json", exclude_none=True))


def _decode(raw: bytes, model: type[M]) -> M | DecodeError:
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return DecodeError("undecodable", f"not JSON: {exc}")
    if not isinstance(data, dict):
        return DecodeError("undecodable", f"expected a JSON object, got {type(data).__name__}")
    sid = data.get("session_id")
    sid = sid if isinstance(sid, str) else None
    version = data.get("v", VERSION)  # the schema's default: a message without `v` is version 1
    if isinstance(version, bool) or version != VERSION:
        return DecodeError("unknown_version", f"unsupported message version {version!r}", sid)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        reason: DeadLetterReason = "bad_seq" if first["loc"][:1] == ("seq",) else "invalid_fields"
        return DecodeError(reason, f"{where}: {first['msg']}", sid)
    except (RecursionError, ValueError, TypeError) as exc:  # pathological input must not escape
        return DecodeError("invalid_fields", str(exc), sid)


def decode_chunk(raw: bytes) -> Chunk | DecodeError:
    return _decode(raw, Chunk)


def decode_verdict(raw: bytes) -> Verdict | DecodeError:
    return _decode(raw, Verdict)


def decode_abort(raw: bytes) -> Abort | DecodeError:
    return _decode(raw, Abort)


def decode_audit(raw: bytes) -> Audit | DecodeError:
    return _decode(raw, Audit)


def decode_dead_letter(raw: bytes) -> DeadLetter | DecodeError:
    return _decode(raw, DeadLetter)


def event_id(kind: str, session_id: str, seq: int, epoch: int = 0) -> str:
    """Deterministic id: the same (kind, session, seq, epoch) always names the same event, so replays
    dedupe. Epoch 0 keeps the ids of before epochs existed."""
    what = f"{kind}\x00{session_id}\x00{seq}" + (f"\x00{epoch}" if epoch else "")
    digest = hashlib.sha256(what.encode()).hexdigest()
    return f"{kind}-{digest[:24]}"


def dead_letter(error: DecodeError, raw: bytes, *, topic: str, partition: int, offset: int) -> DeadLetter:
    kept = raw[:MAX_DEAD_LETTER_RAW]
    return DeadLetter(
        reason=error.reason,
        error=error.error,
        session_id=error.session_id,
        topic=topic,
        partition=partition,
        offset=offset,
        raw_b64=base64.b64encode(kept).decode("ascii"),
        raw_truncated=len(raw) > len(kept),
    )


def schemas() -> dict[str, dict[str, Any]]:
    return {name: model.model_json_schema(mode="serialization") for name, model in MESSAGES.items()}


def write_schemas(directory: Path) -> list[Path]:
    """(Re)generate topics/schemas/*.schema.json; the drift test compares these files with the code."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in schemas().items():
        path = directory / f"{name}.schema.json"
        path.write_bytes(orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
        written.append(path)
    return written
