"""The configuration model: one pydantic model, validated once at start-up.

Loading it (CLI flags, YAML, environment) is the adapters' job; the core only
defines and validates the shape. Every value is immutable.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from ._http import param_path as format_path
from ._json import MAX_JSON_ITEMS

__all__ = [
    "DEFAULT_ORDER",
    "ConfigProblem",
    "DeploymentConfig",
    "LangfuseConfig",
    "LimitsConfig",
    "MetricsConfig",
    "ModelConfig",
    "RateLimitConfig",
    "PriceConfig",
    "TranslationConfig",
    "MockConfig",
    "ProxyConfig",
    "ServerConfig",
    "TelemetryConfig",
    "UpstreamConfig",
    "format_path",
    "show",
    "suggest",
    "unknown",
]

MiB = 1 << 20

#: The built-in middleware in their default order: the order the mapping form of
#: ``middleware`` (``{auth: {...}, retry: {}}``) runs them in. Custom ones follow.
DEFAULT_ORDER = ("trace", "auth", "validate", "guardrails", "rate_limit", "retry")


Path = tuple[str | int, ...]


def show(value: Any) -> str:
    """A value as an error message quotes it, in YAML's words: ``'abc'``, ``3``,
    ``null``, ``true``, ``a list``, ``a mapping``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def suggest(word: str, known: Iterable[str]) -> str:
    """``; did you mean 'x'?`` for the known name nearest ``word``, or nothing."""
    close = difflib.get_close_matches(word, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def unknown(kind: str, word: str, known: Iterable[str]) -> str:
    """``unknown option 'x' (options: a, b; did you mean 'a'?)``: one wording everywhere
    (the known names in the order given: declaration order, or the user's)."""
    names = [str(name) for name in known]
    listed = ", ".join(names) if names else "none"
    return f"unknown {kind} {word!r} ({kind}s: {listed}{suggest(word, names)})"


class ConfigProblem(ValueError):
    """A configuration value that is wrong: where (``path``, keys and list indexes
    within the model that raised it) and what is wrong, and what is allowed."""

    def __init__(self, path: Sequence[str | int], problem: str) -> None:
        self.path: Path = tuple(path)
        self.problem = problem
        where = format_path(self.path)
        super().__init__(f"{where}: {problem}" if where else problem)

    def within(self, *prefix: str | int) -> ConfigProblem:
        """The same problem, seen from ``prefix`` further out."""
        return ConfigProblem((*prefix, *self.path), self.problem)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class UpstreamConfig(_Frozen):
    """An upstream API: the one ``upstream`` of the shorthand, or a named provider."""

    base_url: str = Field(description="Upstream base URL, e.g. https://api.openai.com")
    type: Literal["openai", "anthropic"] = Field(
        default="openai", description="Which API the upstream speaks (decides the key header)."
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="Key sent upstream instead of the client's credentials (None: pass them).",
    )
    connect_timeout: float = Field(default=10.0, gt=0, description="Seconds to connect.")
    read_timeout: float = Field(
        default=600.0, gt=0, description="Seconds to wait for the head or the next body chunk."
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Extra headers sent with every request (anthropic-version has a default).",
    )
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = Field(
        default="max_tokens",
        description="How an Anthropic client's max_tokens is sent to this OpenAI-type provider "
        "(OpenAI's reasoning models want max_completion_tokens).",
    )

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.username is not None or parts.password is not None:
            raise ValueError("a URL with credentials (not allowed: put the key in api_key)")
        expected = ""
        if parts.scheme not in ("http", "https"):
            expected = "a URL starting with http:// or https://"
        elif not parts.hostname:
            expected = "a URL naming a host"
        elif parts.query or parts.fragment:
            expected = "a URL without a query or fragment"
        else:
            try:
                parts.port  # noqa: B018 -- validates the port
            except ValueError:
                expected = "a URL whose port is from 0 to 65535"
        if expected:
            raise ValueError(f"invalid value {show(value)} (expected {expected})")
        return value.rstrip("/")


class PriceConfig(_Frozen):
    """USD per million tokens, overriding the built-in price table."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)
    cache_write: float | None = Field(default=None, ge=0)


class DeploymentConfig(_Frozen):
    """One place a public model is served: a provider and its name for the model."""

    provider: str
    model: str = Field(min_length=1)
    weight: float = Field(default=1.0, gt=0, description="Share of requests, among siblings.")
    price: PriceConfig | None = None


class RateLimitConfig(_Frozen):
    """Requests and tokens per minute (each optional)."""

    rpm: int | None = Field(default=None, ge=1, description="Requests per minute.")
    tpm: int | None = Field(default=None, ge=1, description="Tokens (input + output) per minute.")


class ModelConfig(_Frozen):
    """A public model: where it is served, what to try when that fails, its limits.

    In YAML a model may be just its list of deployments (the short form).
    """

    deployments: tuple[DeploymentConfig, ...]
    fallbacks: tuple[str, ...] = Field(
        default=(),
        description="Public models tried, in order, once every deployment of this one has "
        "failed (needs the retry middleware).",
    )
    limits: RateLimitConfig | None = Field(
        default=None, description="Per-model rate limits, shared by every key (rate_limit)."
    )

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return {"deployments": value}
        return value


class TranslationConfig(_Frozen):
    """Defaults used when translating between the OpenAI and Anthropic APIs."""

    default_max_tokens: int = Field(
        default=4096, ge=1, description="max_tokens sent to Anthropic when the client gave none."
    )


class LimitsConfig(_Frozen):
    """Bounds on everything a peer can make the proxy hold."""

    max_body_size: int = Field(default=10 * MiB, gt=0, description="Request body bytes (413).")
    max_header_size: int = Field(default=64 * 1024, gt=0, description="Request head bytes (431).")
    max_sse_event_size: int = Field(default=MiB, gt=0, description="One upstream SSE event.")
    max_trace_body: int = Field(
        default=MiB, ge=0, description="Body bytes kept per trace record (the rest is cut)."
    )
    max_trace_events: int = Field(default=10_000, ge=0, description="Stream events per trace.")
    max_json_items: int = Field(
        default=MAX_JSON_ITEMS,
        ge=1,
        description="Values (array elements, object members, at any depth) in one JSON "
        "document the proxy reads: a request body over it is refused (413) before it is "
        "parsed; an upstream's answer or event over it is a 502.",
    )
    backend: Literal["memory", "redis"] = Field(
        default="memory",
        description="Where rate-limit and budget state lives: this process, or a Redis "
        "shared by every worker and instance.",
    )
    redis_url: SecretStr | None = Field(
        default=None, description="redis://[:password@]host:port/db (backend: redis)."
    )
    redis_timeout: float = Field(
        default=0.25, gt=0, description="Seconds a Redis call may take before it counts as down."
    )
    redis_retry_interval: float = Field(
        default=1.0,
        ge=0,
        description="After a failed Redis call, seconds during which calls fail at once "
        "(no wait) before Redis is tried again.",
    )
    on_backend_error: Literal["open", "closed"] = Field(
        default="open",
        description="Redis unreachable: 'open' admits the request (logged, counted), "
        "'closed' answers 503.",
    )

    @property
    def store_timeout(self) -> float:
        """How long an exchange waits for the quota store's answer before it acts on
        ``on_backend_error``: twice the Redis timeout (the store gives up first), or
        1 s in memory (a bound that is never reached)."""
        return self.redis_timeout * 2 if self.backend == "redis" else 1.0

    @model_validator(mode="after")
    def _check_backend(self) -> LimitsConfig:
        if self.backend == "redis" and self.redis_url is None:
            raise ConfigProblem(
                (), "missing option 'redis_url' (backend 'redis' needs it: redis://host:port/db)"
            )
        return self


class ServerConfig(_Frozen):
    """Where and how the adapters listen."""

    host: str = "127.0.0.1"
    port: int = Field(default=3000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, description="Worker processes (ASGI adapter).")
    header_timeout: float = Field(default=10.0, gt=0, description="Seconds to send a request head.")
    keepalive_timeout: float = Field(default=5.0, gt=0, description="Idle keep-alive seconds.")
    request_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Seconds to send a whole request, head and body (a trickled body is cut "
        "with 408).",
    )
    write_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a write to the client may wait for it to read before it is dropped.",
    )
    shutdown_grace: float = Field(default=10.0, ge=0, description="Seconds to finish on SIGTERM.")


class MockConfig(_Frozen):
    """The built-in mock provider, served when no upstream is configured."""

    stream_delay: float = Field(default=0.02, ge=0, description="Seconds between stream events.")


class MetricsConfig(_Frozen):
    """Prometheus metrics, served at ``path`` (never forwarded)."""

    enabled: bool = Field(default=False, description="Serve GET <path> in Prometheus's format.")
    path: str = Field(default="/metrics", pattern=r"^/[^?#\s]*$", description="Where.")
    admin_only: bool = Field(
        default=False,
        description="Only with the auth middleware's admin key (Authorization: Bearer ...).",
    )


class LangfuseConfig(_Frozen):
    """Send the spans to Langfuse's OTLP endpoint too (``{host}/api/public/otel``)."""

    host: str = Field(default="https://cloud.langfuse.com", description="Langfuse's base URL.")
    public_key: str = Field(min_length=1)
    secret_key: SecretStr

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http(s) URL, not {value!r}")
        return value.rstrip("/")


class TelemetryConfig(_Frozen):
    """OpenTelemetry spans (GenAI conventions) over OTLP/HTTP, and Langfuse.

    Spans are on when ``otlp_endpoint`` or ``langfuse`` is set (the adapters
    also read ``OTEL_EXPORTER_OTLP_ENDPOINT``/``..._TRACES_ENDPOINT``).
    """

    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP base URL (spans go to <it>/v1/traces), or the full traces URL.",
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="Headers sent with every export (credentials)."
    )
    service_name: str = Field(default="sansproxy", min_length=1)
    capture_content: bool = Field(
        default=False, description="Put the messages in the spans (after guardrails' redaction)."
    )
    sample_ratio: float = Field(default=1.0, ge=0, le=1, description="Share of new traces kept.")
    session_header: str = Field(
        default="x-session-id", min_length=1, description="Request header naming the session."
    )
    max_queue: int = Field(
        default=2048, ge=1, description="Exchanges waiting for export; beyond, their spans drop."
    )
    langfuse: LangfuseConfig | None = None

    @field_validator("otlp_endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"must be an http(s) URL, not {value!r}")
        return value

    @property
    def enabled(self) -> bool:
        """Whether spans are exported anywhere."""
        return self.otlp_endpoint is not None or self.langfuse is not None


class ProxyConfig(_Frozen):
    """Everything sansproxy needs to run."""

    server: ServerConfig = ServerConfig()
    upstream: UpstreamConfig | None = None
    providers: dict[str, UpstreamConfig] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    translation: TranslationConfig = TranslationConfig()
    limits: LimitsConfig = LimitsConfig()
    mock: MockConfig = MockConfig()
    middleware: tuple[dict[str, dict[str, Any]], ...] = Field(
        default=(),
        description="Middleware in order: [{name: {options}}] (or a mapping {name: {options}}: "
        "built-ins then run in DEFAULT_ORDER); name is a built-in or module:attr.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = Field(
        default="text", description="Log lines as text, or one JSON object per line."
    )
    access_log: bool = Field(default=False, description="One log line per exchange.")
    metrics: MetricsConfig = MetricsConfig()
    telemetry: TelemetryConfig = TelemetryConfig()

    @property
    def observed(self) -> bool:
        """Whether anything consumes the record of each exchange."""
        return self.access_log or self.metrics.enabled or self.telemetry.enabled

    @field_validator("middleware", mode="before")
    @classmethod
    def _normalise_middleware(cls, value: Any) -> Any:
        if isinstance(value, dict):  # the shorthand: built-ins in their default order
            rank = {name: i for i, name in enumerate(DEFAULT_ORDER)}
            names = sorted(value, key=lambda n: (rank.get(n, len(rank)), list(value).index(n)))
            value = [{name: value[name]} for name in names]
        if not isinstance(value, list | tuple):
            return value
        out: list[Any] = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                out.append({item: {}})
            elif isinstance(item, dict) and len(item) == 1:
                ((name, options),) = item.items()
                out.append({name: {} if options is None else options})
            elif isinstance(item, dict) and item:
                given = ", ".join(map(str, item))
                raise ConfigProblem(
                    (i,),
                    f"names {len(item)} middleware ({given}) in one entry "
                    "(one per entry: a name, or one name mapped to its options)",
                )
            else:
                kind = "an empty mapping" if isinstance(item, dict) else show(item)
                raise ConfigProblem(
                    (i,),
                    f"must be a middleware name, or one name mapped to its options, not {kind}",
                )
        return tuple(out)

    @model_validator(mode="after")
    def _check_routing(self) -> ProxyConfig:
        if self.upstream is not None and (self.providers or self.models):
            raise ConfigProblem(
                ("upstream",),
                "set together with providers or models (upstream, or --base-url, is the "
                "one-provider shorthand: use it, or providers and models, not both)",
            )
        if self.models and not self.providers:
            raise ConfigProblem(
                ("models",), "set without providers (each deployment names one of providers)"
            )
        for name, model in self.models.items():
            if not model.deployments:
                raise ConfigProblem(
                    ("models", name, "deployments"),
                    "lists no deployment (at least one: {provider, model})",
                )
            for i, deployment in enumerate(model.deployments):
                if deployment.provider not in self.providers:
                    raise ConfigProblem(
                        ("models", name, "deployments", i, "provider"),
                        unknown("provider", deployment.provider, self.providers),
                    )
            for i, fallback in enumerate(model.fallbacks):
                if fallback not in self.models or fallback == name:
                    others = set(self.models) - {name}
                    raise ConfigProblem(
                        ("models", name, "fallbacks", i),
                        f"{fallback!r} is not another public model "
                        f"(others: {', '.join(sorted(others)) or 'none'}"
                        f"{suggest(fallback, others)})",
                    )
        return self
