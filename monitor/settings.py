"""The one frozen settings tree: built once at start-up from env (`MONITOR_...`, nested with `__`) and an
optional JSON/TOML file, then passed down explicitly. Nothing else in the package reads `os.environ`."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    bootstrap: str = "127.0.0.1:19092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    group_id: str = "qta-monitor"
    client_id: str = "qta-monitor"
    request_timeout_s: float = Field(default=10.0, gt=0)


class RedisSettings(_Section):
    url: str = "redis://127.0.0.1:16379/0"
    cluster: bool = False  # Redis Cluster: the url names any node; keys are hash-tagged per session
    tls: bool = False
    password: SecretStr | None = None
    session_ttl_s: int = Field(default=86_400, gt=0)
    scores_kept: int = Field(default=32, gt=0)
    # Replicas that must acknowledge an abort claim or a save (Redis WAIT) before the worker publishes or
    # commits on it. Redis replicates asynchronously, so without WAIT a write acknowledged just before its
    # primary dies can be lost in the fail-over, and a second abort follow. 0: no WAIT (one Redis without
    # replicas). With replicas (Redis Cluster with replicas, a replicated primary) set 1. Too few
    # acknowledgements within wait_timeout_ms is a recoverable StoreUnavailable: the worker retries and
    # publishes nothing meanwhile. A promoted replica has no replica of its own until one returns, so with
    # one replica per primary a fail-over stalls the worker until then: run two per primary.
    wait_replicas: int = Field(default=0, ge=0)
    wait_timeout_ms: int = Field(default=500, gt=0)  # 0 would make Redis wait forever


class TopicsSettings(_Section):
    chunks: str = "qta.chunks"
    verdicts: str = "qta.verdicts"
    aborts: str = "qta.aborts"
    dead_letters: str = "qta.dead-letters"
    audits: str = "qta.audits"
    definitions_dir: Path = Path("topics")
    # Per environment (topics.json defines 1 for a dev broker): a replicated cluster sets 3 and 2, so an
    # acks=all write survives one broker down. None keeps topics.json's replication / the broker's min ISR.
    replication_factor: int | None = Field(default=None, ge=1)
    min_insync_replicas: int | None = Field(default=None, ge=1)


class ImageSettings(_Section):
    max_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    max_pixels: int = Field(default=40_000_000, gt=0)
    allowed_formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
    allow_file_uris: bool = True
    allow_http: bool = False
    ocr: bool = True


class GuardSettings(_Section):
    name: str = "minilm"
    path: Path | None = None  # local weights of a judge guard; never a hub id
    template: Literal["guardtrace", "reasoningshield", "llamaguard", "qwen3guard"] = "guardtrace"
    device: str = "cpu"
    window_tokens: int = Field(default=256, gt=0)  # minilm: latest thinking/answer tokens read per score
    max_tokens: int = Field(default=8192, gt=0)  # longer sessions keep their tail
    kv_budget_mb: int = Field(default=4096, gt=0)
    engine: Literal["hf", "vllm"] = "hf"  # judge backend: transformers (reference) or vLLM (pip extra)
    escalate_to: str | None = None  # optional second guard for the uncertain band
    escalate_path: Path | None = None


class PolicySettings(_Section):
    # Defaults chosen by `qta-monitor eval --sweep` on the dev split (docs/embedded-guard.md).
    action: Literal["abort", "steer"] = "abort"
    action_by_model: dict[str, Literal["abort", "steer"]] = Field(default_factory=dict)
    action_by_tenant: dict[str, Literal["abort", "steer"]] = Field(default_factory=dict)
    warn_threshold: float = Field(default=0.5, ge=0, le=1)
    abort_threshold: float = Field(default=0.9, ge=0, le=1)
    answer_abort_threshold: float = Field(default=0.95, ge=0, le=1)  # 0.85 before issue 15's LOSO choice
    ema_alpha: float = Field(default=0.5, gt=0, le=1)
    ema_abort: float = Field(default=0.8, ge=0, le=1)
    ema_release: float = Field(default=0.5, ge=0, le=1)  # hysteresis: warning clears below this
    consecutive: int = Field(default=6, ge=1)
    min_tokens: int = Field(default=16, ge=0)
    answer_label_abort: bool = False  # True: an arg-max label 1 in the answer aborts, whatever p_harmful
    # At a session's `end`: abort (final, a late abort that retracts what was shown) when the session's peak
    # p_harmful reached this, whatever min_tokens and the other rules said; 1.0 only for a certain score.
    final_abort_threshold: float = Field(default=0.9, ge=0, le=1)
    # One score this strong aborts alone, before min_tokens (any response at all); 1.0: only a certain score.
    strong_abort_threshold: float = Field(default=0.97, ge=0, le=1)
    escalate_band: tuple[float, float] = (0.35, 0.8)
    steer_prompt: str = (
        "Wait. This line of reasoning could cause real harm. I should not provide this; "
        "instead I will explain why I can't help with it and offer a safe alternative."
    )

    @model_validator(mode="after")
    def _ordered(self) -> PolicySettings:
        if self.warn_threshold > self.abort_threshold:
            raise ValueError("policy.warn_threshold must not exceed policy.abort_threshold")
        if self.ema_release > self.ema_abort:
            raise ValueError("policy.ema_release must not exceed policy.ema_abort")
        return self


class BatchingSettings(_Section):
    stride_tokens: int = Field(default=64, gt=0)
    max_delay_s: float = Field(default=0.1, gt=0)  # 0.25 s missed the p99 abort target
    max_batch: int = Field(default=16, gt=0)
    max_wait_s: float = Field(default=0.02, ge=0)
    max_pending_sessions: int = Field(default=512, gt=0)  # backpressure: pause partitions above this
    reorder_window: int = Field(default=16, ge=0)  # out-of-order chunks buffered per session
    gap_timeout_s: float = Field(default=5.0, gt=0)
    # Risk-adaptive re-scoring (monitor/core/schedule.py): a cold session (scored, past its first
    # `warm_tokens` response tokens, p and EMA below `cold_below`, not rising) waits for `cold_stride_tokens`
    # new tokens or `cold_max_delay_s`; a warm one keeps `stride_tokens` / `max_delay_s`. 0 turns it off (all
    # warm). Off by default: 224 (window 256 - 32 overlap, each token read about once) halves the guard's work
    # on benign traffic but delays the median abort on the GPTFuzz dev set by 200+ characters (BENCHMARKS.md).
    cold_stride_tokens: int = Field(default=0, ge=0)
    cold_max_delay_s: float = Field(default=8.0, gt=0)  # also bounds how long overload may starve a cold one
    cold_below: float = Field(default=0.2, ge=0, le=1)
    warm_tokens: int = Field(default=64, ge=0)


_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


class TelemetrySettings(_Section):
    metrics_port: int = Field(default=9464, ge=0, le=65535)  # 0 = no /metrics endpoint
    # Address /metrics, /ready and /live listen on: 0.0.0.0 (all IPv4 interfaces) for a pod or container,
    # 127.0.0.1 for a worker that only a local Prometheus scrapes, :: for all IPv6 (and mapped IPv4).
    metrics_host: str = "0.0.0.0"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    service_name: str = "qta-monitor"

    @field_validator("metrics_host")
    @classmethod
    def _host(cls, host: str) -> str:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if len(host) > 253 or not _HOSTNAME.fullmatch(host):
                raise ValueError(f"not an IP address or host name: {host!r}") from None
        return host


class Settings(BaseSettings):
    """Everything configurable, in one frozen object."""

    model_config = SettingsConfigDict(
        env_prefix="MONITOR_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    topics: TopicsSettings = TopicsSettings()
    images: ImageSettings = ImageSettings()
    guard: GuardSettings = GuardSettings()
    policy: PolicySettings = PolicySettings()
    batching: BatchingSettings = BatchingSettings()
    telemetry: TelemetrySettings = TelemetrySettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # env beats the file (passed as init kwargs), so a deployment can override one field.
        return (_EnvSource(settings_cls), init_settings)


class ConfigError(Exception):
    """Invalid configuration; the message names the offending field."""


class _NotJson(ValueError):
    """A MONITOR_ variable of a list, tuple or table field that is not JSON; `path` is the field's."""

    def __init__(self, path: tuple[str, ...], reason: str) -> None:
        super().__init__(reason)
        self.path = path


class _EnvSource(EnvSettingsSource):
    """pydantic-settings' env source, except that a value it cannot decode names its field: the library's
    own error names only the section ('error parsing value for field "policy"')."""

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError as exc:
            raise _NotJson((field_name,), str(exc)) from exc

    def prepare_field_value(
        self, field_name: str, field: FieldInfo, value: Any, value_is_complex: bool
    ) -> Any:
        try:
            return super().prepare_field_value(field_name, field, value, value_is_complex)
        except _NotJson as exc:
            if exc.path != (field_name,):  # a field of the section, not the whole section as one variable
                exc.path = (field_name, *exc.path)
            raise


def _env_name(path: tuple[str, ...]) -> str:
    return "MONITOR_" + "__".join(path).upper()


def _where(path: tuple[str, ...]) -> str:
    """The field, and its MONITOR_ variable when that is set (then it is where the value came from)."""
    name = _env_name(path)
    from_env = any(key.upper() == name for key in os.environ)
    return f"{'.'.join(path) or '<root>'}{f' ({name})' if from_env else ''}"


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        data: Any = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSON and TOML decode errors are ValueErrors
        raise ConfigError(f"{path}: cannot read the config file: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config file must hold a table/object at the top level")
    return data


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings once: file (if any) < explicit overrides < environment. ConfigError (one line,
    naming each offending field and its MONITOR_ variable where that is set) for anything invalid."""
    data: dict[str, Any] = _read_file(path) if path is not None else {}
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {problems(exc)}") from exc
    except SettingsError as exc:
        cause = exc.__cause__
        if isinstance(cause, _NotJson):
            raise ConfigError(
                f"invalid configuration: {_where(cause.path)}: not JSON, which a list, tuple or table takes "
                f"(e.g. '[0.35, 0.8]' or '{{\"qwen3-8b\": \"steer\"}}'): {cause}"
            ) from exc
        raise ConfigError(f"invalid configuration: {exc}") from exc


def problems(exc: ValidationError) -> str:
    """A validation error as one line: `section.field (MONITOR_SECTION__FIELD): message; ...`."""
    return "; ".join(
        f"{_where(tuple(str(p) for p in err['loc']))}: {err['msg']}".replace("\n", " ")
        for err in exc.errors()
    )


def masked(settings: Settings) -> dict[str, Any]:
    """The effective config as plain data, secrets shown as '**********'."""
    return settings.model_dump(mode="json")
