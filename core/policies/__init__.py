"""The built-in policies: middleware named in the config, and the rate-limit algorithm.

``trace``, ``auth``, ``validate``, ``guardrails``, ``rate_limit`` and ``retry``
are plain middleware (see ``core.Middleware``): they see an exchange only as a
``core.Context`` and act through its hooks and commands. The limiter's memory
store and the Redis scripts are here for the drivers' stores (``adapters``).
"""

from .._quota import Decision, Limit
from ._auth import AuthMiddleware, Budget, ClientKey
from ._guardrails import GuardrailsMiddleware
from ._limiter import LimiterState, MemoryLimiter
from ._limiter_redis import (
    REDIS_QUOTA_SCRIPT,
    REDIS_SETTLE_SCRIPT,
    redis_quota_answer,
    redis_quota_args,
    redis_settle_args,
)
from ._ratelimit import RateLimitMiddleware
from ._retry import RetryMiddleware
from ._trace import TraceMiddleware
from ._validate import ValidateMiddleware

__all__ = [
    "REDIS_QUOTA_SCRIPT",
    "REDIS_SETTLE_SCRIPT",
    "AuthMiddleware",
    "Budget",
    "ClientKey",
    "Decision",
    "GuardrailsMiddleware",
    "Limit",
    "LimiterState",
    "MemoryLimiter",
    "RateLimitMiddleware",
    "RetryMiddleware",
    "TraceMiddleware",
    "ValidateMiddleware",
    "redis_quota_answer",
    "redis_quota_args",
    "redis_settle_args",
]
