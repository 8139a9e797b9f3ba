"""The proxy: a configuration compiled once, and the factory of its exchanges.

The one module that knows every layer: it builds the router (the gateway) and
the middleware pipeline (the built-in policies by name, or custom ones by
``module:attr``), and hands both to each :class:`~core.Exchange` it makes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._config import DEFAULT_ORDER, ConfigProblem, ProxyConfig
from ._exchange import Exchange
from ._headers import Headers
from ._middleware import Pipeline, load_middleware
from .gateway import Router
from .policies import (
    AuthMiddleware,
    GuardrailsMiddleware,
    MemoryLimiter,
    RateLimitMiddleware,
    RetryMiddleware,
    TraceMiddleware,
    ValidateMiddleware,
)

__all__ = ["Proxy"]


class _Builtin:
    """A built-in middleware's factory: its class, some options defaulted from the
    config (the user may set them), some fixed by it (not options). Its signature is
    the class's, less the fixed ones, so a wrong option is named against it."""

    def __init__(
        self,
        cls: Callable[..., object],
        *,
        defaults: Mapping[str, Any] | None = None,
        fixed: Mapping[str, Any] | None = None,
    ) -> None:
        self.cls = cls
        self.defaults = dict(defaults or {})
        self.fixed = dict(fixed or {})
        signature = inspect.signature(cls)
        self.__signature__ = signature.replace(
            parameters=[
                p.replace(default=self.defaults.get(p.name, p.default))
                for p in signature.parameters.values()
                if p.name not in self.fixed
            ]
        )

    def __call__(self, **options: Any) -> object:
        return self.cls(**{**self.defaults, **options, **self.fixed})


def _builtin_middleware(
    config: ProxyConfig, limiter: MemoryLimiter | None = None
) -> dict[str, Callable[..., object]]:
    limits = config.limits

    def rate_limit(**options: Any) -> RateLimitMiddleware:
        if options:
            raise ConfigProblem(
                (),
                f"unknown option {min(options)!r} (rate_limit takes none: limits are set on "
                "auth keys (rpm, tpm, budget) and on models (limits: {rpm, tpm}))",
            )
        return RateLimitMiddleware.from_config(config, limiter=limiter)

    items = {"max_json_items": limits.max_json_items}
    return {
        "trace": _Builtin(
            TraceMiddleware,
            defaults={"max_body": limits.max_trace_body, "max_events": limits.max_trace_events},
        ),
        "auth": _Builtin(AuthMiddleware, defaults={"store_timeout": limits.store_timeout}),
        "validate": _Builtin(ValidateMiddleware, fixed=items),
        "guardrails": _Builtin(GuardrailsMiddleware, fixed=items),
        "rate_limit": rate_limit,
        "retry": RetryMiddleware,
    }


def _check_order(config: ProxyConfig) -> None:
    """What the built-ins need of each other, as readable errors."""
    names = [name for item in config.middleware for name in item]
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in first and name in DEFAULT_ORDER:
            raise ConfigProblem(
                ("middleware", i),
                f"{name!r} is listed twice, first at middleware[{first[name]}] "
                "(each built-in runs once)",
            )
        first.setdefault(name, i)
    if "rate_limit" in first and "auth" in first and first["auth"] > first["rate_limit"]:
        raise ConfigProblem(
            ("middleware", first["auth"]),
            f"auth is listed after rate_limit (middleware[{first['rate_limit']}]), which reads "
            "the key auth finds (list auth before rate_limit)",
        )
    if "auth" in first and "rate_limit" not in first:
        at = first["auth"]
        options = config.middleware[at]["auth"]
        keys = options.get("keys") if isinstance(options, Mapping) else None
        for i, key in enumerate(keys if isinstance(keys, list | tuple) else ()):
            limited = [
                f
                for f in ("rpm", "tpm", "budget")
                if isinstance(key, Mapping) and key.get(f) is not None
            ]
            if limited:
                raise ConfigProblem(
                    ("middleware", at, "auth", "keys", i),
                    f"sets {', '.join(limited)} without the rate_limit middleware "
                    "(add rate_limit after auth to enforce it)",
                )
    for name, model in config.models.items():
        if model.limits is not None and "rate_limit" not in first:
            raise ConfigProblem(
                ("models", name, "limits"),
                "set without the rate_limit middleware (add rate_limit to enforce them)",
            )
        if model.fallbacks and "retry" not in first:
            raise ConfigProblem(
                ("models", name, "fallbacks"),
                "set without the retry middleware (add retry to use them)",
            )


class Proxy:
    """A compiled configuration: everything exchanges share, built once at start-up.

    ``middleware`` overrides the config's list with ready-made objects
    (embedders); by default it is built from ``config.middleware``, each entry a
    built-in name or a ``module:attr`` factory called with the entry's options.
    Raises ``ConfigProblem`` (a ``ValueError`` that says where: ``middleware[0].trace:
    unknown option 'dri' (options: ...)``) on a middleware it cannot build.

    ``limiter``: with ``limits.backend: memory``, a ``MemoryLimiter`` the built-in
    ``rate_limit`` checks, charges and settles at once, in the exchange's own step:
    no ``AcquireQuota`` to answer, no ``SettleQuota`` to carry out (the driver
    keeps the same limiter for its sweeps and views). Without one, the limits
    are the driver's store's, through those commands (any backend).
    """

    __slots__ = (
        "capture_content",
        "config",
        "limiter",
        "limits",
        "metrics_guard",
        "metrics_path",
        "mock_stream_delay",
        "observed",
        "pipeline",
        "router",
        "sample_ratio",
        "session_header",
        "tracing",
    )

    def __init__(
        self,
        config: ProxyConfig,
        *,
        middleware: Sequence[object] | None = None,
        limiter: MemoryLimiter | None = None,
    ) -> None:
        if limiter is not None and config.limits.backend != "memory":
            raise ValueError(f"a limiter is for limits.backend memory, not {config.limits.backend}")
        self.config = config
        self.limits = config.limits
        #: The in-process limiter ``rate_limit`` uses directly (see the class), or None.
        self.limiter = limiter
        self.router = Router(config)
        self.mock_stream_delay = config.mock.stream_delay
        if middleware is None:
            _check_order(config)
            builtins = _builtin_middleware(config, limiter)
            built: list[object] = []
            for i, item in enumerate(config.middleware):
                for name, options in item.items():
                    try:
                        built.append(load_middleware(name, options, builtins))
                    except ConfigProblem as exc:
                        raise exc.within("middleware", i) from None
            middleware = built
        self.pipeline = Pipeline.build(middleware)
        telemetry = config.telemetry
        #: Whether each exchange ends with a ``RecordExchange`` (something observes it).
        self.observed = config.observed
        #: Whether exchanges carry a W3C trace context (sent upstream as ``traceparent``).
        self.tracing = telemetry.enabled
        self.sample_ratio = telemetry.sample_ratio
        self.capture_content = telemetry.capture_content
        self.session_header = telemetry.session_header.lower().encode("latin-1")
        metrics = config.metrics
        self.metrics_path = metrics.path.encode("latin-1") if metrics.enabled else None
        #: Who may read the metrics: None (anyone), or a check of the request's headers.
        self.metrics_guard: Callable[[Headers], bool] | None = None
        if metrics.enabled and metrics.admin_only:
            auth = next((m for m in middleware if isinstance(m, AuthMiddleware)), None)
            if auth is None or not auth.has_admin_key:
                raise ConfigProblem(
                    ("metrics", "admin_only"),
                    "is true, but no admin key is configured (set the auth middleware's "
                    "admin_key_sha256)",
                )
            self.metrics_guard = auth.admin_key_in

    def exchange(
        self, *, exchange_id: str, now: float, wall_time: float, rand: float = 0.0
    ) -> Exchange:
        """Start a new exchange.

        ``now`` is the driver's clock, ``wall_time`` UNIX time, ``rand`` a
        number in [0, 1) that picks among a model's weighted deployments (the
        core draws no random numbers itself).
        """
        return Exchange(self, exchange_id=exchange_id, now=now, wall_time=wall_time, rand=rand)
