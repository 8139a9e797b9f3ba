"""sansproxy's core: a pure, synchronous state machine for proxying LLM API calls.

No I/O, no clock, no randomness: a driver feeds events with ``now=`` and
carries out the commands the exchange returns. See the README for a complete
driver in a dozen lines.

    proxy = Proxy(ProxyConfig())                       # compiled once
    ex = proxy.exchange(exchange_id="1", now=0.0, wall_time=time.time())
    ex.handle(RequestReceived(method=b"GET", target=b"/health", headers=[]), now=0.0)
    ex.handle(RequestEnded(), now=0.0)
    while (cmd := ex.next_command()) is not None:
        ...  # StartResponse, SendBody, EndResponse, SendUpstreamRequest, ...
"""

from ._commands import (
    AcquireQuota,
    BudgetCheck,
    CancelUpstream,
    Command,
    EndResponse,
    Log,
    LogLevel,
    Origin,
    QuotaAdjustment,
    QuotaCharge,
    SendBody,
    SendUpstreamRequest,
    SettleQuota,
    SpendRecord,
    StartResponse,
    WriteTrace,
)
from ._config import (
    DEFAULT_ORDER,
    DeploymentConfig,
    LimitsConfig,
    MockConfig,
    ModelConfig,
    PriceConfig,
    ProxyConfig,
    RateLimitConfig,
    ServerConfig,
    TranslationConfig,
    UpstreamConfig,
)
from ._errors import (
    TAXONOMY,
    AuthenticationError,
    BudgetExceededError,
    ClientRateLimitError,
    ContentPolicyError,
    InternalError,
    LocalProtocolError,
    ModelNotFoundError,
    NetworkError,
    PermissionDeniedError,
    ProtocolError,
    ProviderRateLimitError,
    ProxyError,
    RemoteProtocolError,
    ServiceUnavailableError,
    UpstreamTimeoutError,
    ValidationError,
)
from ._events import (
    ClientGone,
    Event,
    FailureKind,
    QuotaAnswered,
    QuotaFailed,
    RequestData,
    RequestEnded,
    RequestReceived,
    TimerFired,
    UpstreamData,
    UpstreamEnded,
    UpstreamFailed,
    UpstreamResponse,
)
from ._exchange import BUILTIN_MIDDLEWARE, Exchange, Pipeline, Proxy
from ._headers import Headers
from ._middleware import Context, Middleware, Reply
from ._render import render_error, render_error_event
from ._sse import SSEDecoder, SSEEvent, parse_block
from ._state import TRANSITIONS, State
from .gateway._prices import AS_OF as PRICES_AS_OF
from .gateway._prices import PRICES, Price, price_for
from .gateway._prices import SOURCE as PRICES_SOURCE
from .gateway._routing import Deployment, Provider, Router
from .gateway._usage import StreamUsage, Usage, cost_usd, usage_from_anthropic, usage_from_openai
from .policies._auth import AuthMiddleware, Budget, ClientKey
from .policies._guardrails import GuardrailsMiddleware
from .policies._limiter import (
    REDIS_QUOTA_SCRIPT,
    REDIS_SETTLE_SCRIPT,
    Decision,
    Limit,
    LimiterState,
    MemoryLimiter,
    redis_quota_answer,
    redis_quota_args,
    redis_settle_args,
)
from .policies._ratelimit import RateLimitMiddleware
from .policies._retry import Attempt, Retry, RetryMiddleware
from .policies._trace import TraceMiddleware
from .policies._validate import ValidateMiddleware

__all__ = [
    "ValidateMiddleware",
    "REDIS_QUOTA_SCRIPT",
    "REDIS_SETTLE_SCRIPT",
    "redis_quota_answer",
    "redis_quota_args",
    "redis_settle_args",
    "AcquireQuota",
    "Attempt",
    "AuthMiddleware",
    "AuthenticationError",
    "Budget",
    "BudgetCheck",
    "BudgetExceededError",
    "ClientKey",
    "ClientRateLimitError",
    "ContentPolicyError",
    "DEFAULT_ORDER",
    "Decision",
    "InternalError",
    "Limit",
    "LimiterState",
    "MemoryLimiter",
    "ModelConfig",
    "ModelNotFoundError",
    "NetworkError",
    "PermissionDeniedError",
    "ProviderRateLimitError",
    "ProxyError",
    "QuotaAdjustment",
    "QuotaAnswered",
    "QuotaCharge",
    "QuotaFailed",
    "RateLimitConfig",
    "RateLimitMiddleware",
    "Retry",
    "RetryMiddleware",
    "ServiceUnavailableError",
    "SettleQuota",
    "SpendRecord",
    "TAXONOMY",
    "UpstreamTimeoutError",
    "ValidationError",
    "GuardrailsMiddleware",
    "usage_from_openai",
    "usage_from_anthropic",
    "cost_usd",
    "Usage",
    "StreamUsage",
    "Router",
    "Provider",
    "Deployment",
    "price_for",
    "Price",
    "PRICES_SOURCE",
    "PRICES_AS_OF",
    "PRICES",
    "TranslationConfig",
    "PriceConfig",
    "DeploymentConfig",
    "BUILTIN_MIDDLEWARE",
    "TRANSITIONS",
    "CancelUpstream",
    "ClientGone",
    "Command",
    "Context",
    "EndResponse",
    "Event",
    "Exchange",
    "FailureKind",
    "Headers",
    "LimitsConfig",
    "LocalProtocolError",
    "Log",
    "LogLevel",
    "Middleware",
    "MockConfig",
    "Origin",
    "Pipeline",
    "ProtocolError",
    "Proxy",
    "ProxyConfig",
    "RemoteProtocolError",
    "Reply",
    "RequestData",
    "RequestEnded",
    "RequestReceived",
    "SSEDecoder",
    "SSEEvent",
    "SendBody",
    "SendUpstreamRequest",
    "ServerConfig",
    "StartResponse",
    "State",
    "TimerFired",
    "TraceMiddleware",
    "UpstreamConfig",
    "UpstreamData",
    "UpstreamEnded",
    "UpstreamFailed",
    "UpstreamResponse",
    "WriteTrace",
    "render_error",
    "render_error_event",
    "parse_block",
]
