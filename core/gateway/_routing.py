"""Providers and models, compiled once: where a request for a model goes.

``Router.resolve(model, rand)`` picks a deployment: a configured public model
(weighted by ``rand``, a number in [0, 1) the driver supplies, so the core
stays deterministic), ``provider/model`` addressing, or, in the one-provider
shorthand (``--base-url``), the provider itself with the model as named.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from .._commands import Origin
from .._config import DeploymentConfig, ProxyConfig, UpstreamConfig
from .._endpoints import ApiName
from .._headers import HOP_BY_HOP, Headers, connection_tokens, header
from .._json import dumps
from ._prices import Price, price_for

__all__ = ["ANTHROPIC_VERSION", "Deployment", "Provider", "Router"]

#: The ``anthropic-version`` sent when neither the client nor the config gives one.
ANTHROPIC_VERSION = "2023-06-01"


@dataclass(frozen=True, slots=True, kw_only=True)
class Provider:
    """An upstream API, compiled: origin, path prefix, credentials and header rules."""

    name: str
    type: ApiName
    origin: Origin
    base_path: bytes
    host_header: bytes
    dropped: frozenset[bytes]
    auth: tuple[bytes, bytes] | None
    extra: tuple[tuple[bytes, bytes], ...]
    connect_timeout: float
    read_timeout: float
    url_prefix: str
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"

    def request_headers(self, headers: Headers) -> list[tuple[bytes, bytes]]:
        """The client's headers as this upstream must see them (no Content-Length yet)."""
        dropped = self.dropped
        for name, value in headers:
            if name == b"connection":
                dropped = dropped | connection_tokens(value)
        if self.extra:
            dropped = dropped.union(name for name, _ in self.extra)
        out = [(b"host", self.host_header)]
        out += [item for item in headers if item[0] not in dropped]  # a list: no generator
        out.append((b"accept-encoding", b"identity"))
        out += self.extra
        if self.auth is not None:
            out.append(self.auth)
        if (
            self.type == "anthropic"
            and header(headers, b"anthropic-version") is None
            and not any(name == b"anthropic-version" for name, _ in self.extra)
        ):
            # Native Anthropic clients send their version; if not, use ours.
            out.append((b"anthropic-version", ANTHROPIC_VERSION.encode()))
        return out

    def translated_headers(self, headers: Headers, *, stream: bool) -> list[tuple[bytes, bytes]]:
        """Headers for a request translated from the other API: only what this API needs.

        Without a configured key, the client's own credential (a bearer token
        or an ``x-api-key``) is carried over in this API's header.
        """
        out = [
            (b"host", self.host_header),
            (b"content-type", b"application/json"),
            (b"accept", b"text/event-stream" if stream else b"application/json"),
            (b"accept-encoding", b"identity"),
        ]
        auth = self.auth
        if auth is None:
            key = header(headers, b"x-api-key")
            bearer = header(headers, b"authorization")
            if key is None and bearer is not None and bearer[:7].lower() == b"bearer ":
                key = bearer[7:].strip()
            if key is not None:
                auth = (
                    (b"x-api-key", key)
                    if self.type == "anthropic"
                    else (b"authorization", b"Bearer " + key)
                )
        if auth is not None:
            out.append(auth)
        if self.type == "anthropic" and not any(n == b"anthropic-version" for n, _ in self.extra):
            out.append((b"anthropic-version", ANTHROPIC_VERSION.encode()))
        out.extend(self.extra)
        return out

    def target(self, path: bytes) -> bytes:
        """The upstream path for a client path (``/v1`` is not doubled)."""
        base = self.base_path
        if base.endswith(b"/v1") and (path.startswith(b"/v1/") or path == b"/v1"):
            base = base[:-3]
        return base + path


def compile_provider(name: str, config: UpstreamConfig) -> Provider:
    """Compile one provider's settings into the form every request uses."""
    parts = urlsplit(config.base_url)
    scheme: Literal["http", "https"] = "https" if parts.scheme == "https" else "http"
    host = parts.hostname or ""
    default_port = 443 if scheme == "https" else 80
    port = parts.port or default_port
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    host_text = f"[{host}]" if ":" in host else host
    host_header = host_text if port == default_port else f"{host_text}:{port}"
    dropped = set(HOP_BY_HOP) | {b"host", b"content-length", b"accept-encoding", b"expect"}
    auth: tuple[bytes, bytes] | None = None
    if config.api_key is not None:
        dropped |= {b"authorization", b"x-api-key"}
        key = config.api_key.get_secret_value().encode()
        auth = (
            (b"x-api-key", key)
            if config.type == "anthropic"
            else (b"authorization", b"Bearer " + key)
        )
    extra = tuple(
        (header.lower().encode("latin-1"), value.encode("latin-1"))
        for header, value in config.headers.items()
    )
    return Provider(
        name=name,
        type=config.type,
        origin=Origin(scheme=scheme, host=host, port=port),
        base_path=parts.path.rstrip("/").encode(),
        host_header=host_header.encode("ascii"),
        dropped=frozenset(dropped),
        auth=auth,
        extra=extra,
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        url_prefix=f"{scheme}://{host_header}",
        max_tokens_param=config.max_tokens_param,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Deployment:
    """Where one request goes: a provider, the model's name there, and its price."""

    provider: Provider
    model: str
    price: Price | None


def _price(config: DeploymentConfig) -> Price | None:
    if config.price is None:
        return price_for(config.model)
    p = config.price
    return Price(
        input=p.input, output=p.output, cached_input=p.cached_input, cache_write=p.cache_write
    )


#: How many models asked by name a router keeps the deployment of (clients choose
#: the names: the bound keeps memory flat whatever they send).
_SEEN_MAX = 1024


class Router:
    """The providers and public models of one configuration."""

    __slots__ = ("_choices", "_seen", "fallbacks", "models", "providers", "shorthand")

    def __init__(self, config: ProxyConfig) -> None:
        self.providers: Mapping[str, Provider] = {
            name: compile_provider(name, provider) for name, provider in config.providers.items()
        }
        self.shorthand = (
            compile_provider("upstream", config.upstream) if config.upstream is not None else None
        )
        self.models: dict[str, tuple[Deployment, ...]] = {}
        self._choices: dict[str, tuple[list[float], tuple[Deployment, ...]]] = {}
        self.fallbacks: dict[str, tuple[str, ...]] = {}
        # Deployments made for models asked by name (``provider/model``, or any model
        # in the shorthand), kept for the next request: a bounded few.
        self._seen: dict[str, Deployment] = {}
        for name, model in config.models.items():
            deployments = model.deployments
            self.fallbacks[name] = model.fallbacks
            compiled = tuple(
                Deployment(provider=self.providers[d.provider], model=d.model, price=_price(d))
                for d in deployments
            )
            total = sum(d.weight for d in deployments)
            bounds = [w / total for w in itertools.accumulate(d.weight for d in deployments)]
            self.models[name] = compiled
            self._choices[name] = (bounds, compiled)

    @property
    def active(self) -> bool:
        """Whether anything is configured to route to (else the mock answers)."""
        return self.shorthand is not None or bool(self.providers)

    def resolve(self, model: str, rand: float) -> Deployment | None:
        """The deployment serving ``model``, or None if nothing does."""
        choice = self._choices.get(model)
        if choice is not None:
            bounds, deployments = choice
            index = bisect.bisect_right(bounds, rand)
            return deployments[min(index, len(deployments) - 1)]
        seen = self._seen.get(model)
        if seen is not None:
            return seen
        deployment = None
        if "/" in model:
            name, _, upstream_model = model.partition("/")
            provider = self.providers.get(name)
            if provider is not None and upstream_model:
                deployment = Deployment(
                    provider=provider, model=upstream_model, price=price_for(upstream_model)
                )
        if deployment is None and self.shorthand is not None:
            deployment = Deployment(provider=self.shorthand, model=model, price=price_for(model))
        if deployment is not None and len(self._seen) < _SEEN_MAX:
            self._seen[model] = deployment
        return deployment

    def model_list(self) -> bytes:
        """``GET /v1/models`` in OpenAI's list format: the public models."""
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": deployments[0].provider.name}
            for name, deployments in self.models.items()
        ]
        return dumps({"object": "list", "data": data})
