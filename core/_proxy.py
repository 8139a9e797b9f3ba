"""The proxy: a configuration compiled once, and the factory of its exchanges.

The one module that knows every layer: it builds the router (the gateway) and
the middleware pipeline (the built-in policies by name, or custom ones by
``module:attr``), and hands both to each :class:`~core.Exchange` it makes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ._config import DEFAULT_ORDER, ProxyConfig
from ._exchange import Exchange
from ._middleware import Pipeline, load_middleware
from .gateway import Router
from .policies import (
    AuthMiddleware,
    GuardrailsMiddleware,
    RateLimitMiddleware,
    RetryMiddleware,
    TraceMiddleware,
    ValidateMiddleware,
)

__all__ = ["Proxy"]


def _builtin_middleware(config: ProxyConfig) -> dict[str, Callable[..., object]]:
    limits = config.limits

    def trace(**options: Any) -> TraceMiddleware:
        options.setdefault("max_body", limits.max_trace_body)
        options.setdefault("max_events", limits.max_trace_events)
        return TraceMiddleware(**options)

    def auth(**options: Any) -> AuthMiddleware:
        options.setdefault("store_timeout", limits.store_timeout)
        return AuthMiddleware(**options)

    def validate(**options: Any) -> ValidateMiddleware:
        return ValidateMiddleware(**options, max_json_items=limits.max_json_items)

    def guardrails(**options: Any) -> GuardrailsMiddleware:
        return GuardrailsMiddleware(**options, max_json_items=limits.max_json_items)

    def rate_limit(**options: Any) -> RateLimitMiddleware:
        if options:
            raise TypeError(
                f"takes no options (got {', '.join(sorted(options))}): limits are set on "
                "auth keys (rpm, tpm, budget) and on models (limits: {rpm, tpm})"
            )
        return RateLimitMiddleware.from_config(config)

    return {
        "trace": trace,
        "auth": auth,
        "validate": validate,
        "guardrails": guardrails,
        "rate_limit": rate_limit,
        "retry": RetryMiddleware,
    }


def _check_order(config: ProxyConfig) -> None:
    """What the built-ins need of each other, as readable errors."""
    names = [name for item in config.middleware for name in item]
    for name in set(names):
        if names.count(name) > 1 and name in DEFAULT_ORDER:
            raise ValueError(f"middleware: {name!r} is listed twice")
    position = {name: i for i, name in enumerate(names)}
    if (
        "rate_limit" in position
        and "auth" in position
        and position["auth"] > position["rate_limit"]
    ):
        raise ValueError("middleware: rate_limit reads the key auth finds: list auth before it")
    auth_options: dict[str, Any] = next(
        (item["auth"] for item in config.middleware if "auth" in item), {}
    )
    keys = auth_options.get("keys") or ()
    for i, key in enumerate(keys):
        if isinstance(key, dict) and "rate_limit" not in position:
            limited = [f for f in ("rpm", "tpm", "budget") if key.get(f) is not None]
            if limited:
                raise ValueError(
                    f"auth.keys[{i}] sets {', '.join(limited)}: add the rate_limit middleware "
                    "(after auth) to enforce it"
                )
    for name, model in config.models.items():
        if model.limits is not None and "rate_limit" not in position:
            raise ValueError(f"models.{name}.limits: add the rate_limit middleware to enforce it")
        if model.fallbacks and "retry" not in position:
            raise ValueError(f"models.{name}.fallbacks: add the retry middleware to use them")


class Proxy:
    """A compiled configuration: everything exchanges share, built once at start-up.

    ``middleware`` overrides the config's list with ready-made objects
    (embedders); by default it is built from ``config.middleware``, each entry a
    built-in name or a ``module:attr`` factory called with the entry's options.
    Raises ``ValueError`` on a middleware it cannot build.
    """

    __slots__ = ("config", "limits", "mock_stream_delay", "pipeline", "router")

    def __init__(self, config: ProxyConfig, *, middleware: Sequence[object] | None = None) -> None:
        self.config = config
        self.limits = config.limits
        self.router = Router(config)
        self.mock_stream_delay = config.mock.stream_delay
        if middleware is None:
            _check_order(config)
            builtins = _builtin_middleware(config)
            middleware = [
                load_middleware(name, options, builtins)
                for item in config.middleware
                for name, options in item.items()
            ]
        self.pipeline = Pipeline.build(middleware)

    def exchange(
        self, *, exchange_id: str, now: float, wall_time: float, rand: float = 0.0
    ) -> Exchange:
        """Start a new exchange.

        ``now`` is the driver's clock, ``wall_time`` UNIX time, ``rand`` a
        number in [0, 1) that picks among a model's weighted deployments (the
        core draws no random numbers itself).
        """
        return Exchange(self, exchange_id=exchange_id, now=now, wall_time=wall_time, rand=rand)
