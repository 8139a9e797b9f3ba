"""sansproxy's core: a pure, synchronous state machine for proxying LLM API calls.

No I/O, no clock, no randomness: a driver feeds events with ``now=`` and
carries out the commands the exchange returns, then re-arms one timer from
``get_timer()``. See the README's "Embedding the core" for a whole driver.

    proxy = Proxy(ProxyConfig())                       # compiled once
    ex = proxy.exchange(exchange_id="1", now=0.0, wall_time=time.time())
    ex.handle(RequestReceived(method=b"GET", target=b"/health", headers=[]), now=0.0)
    ex.handle(RequestEnded(), now=0.0)
    while (cmd := ex.next_command()) is not None:
        ...  # StartResponse, SendBody, EndResponse, SendUpstreamRequest, ...

This module's names are the embedder's API. ``core.gateway`` (routing, prices,
usage) and ``core.policies`` (the built-in middleware, the limiter for a store)
have their own; every ``_module`` is private and may change.
"""

from ._commands import (
    AcquireQuota,
    CancelUpstream,
    CollectMetrics,
    Command,
    EndResponse,
    Log,
    Origin,
    SendBody,
    SendUpstreamRequest,
    SettleQuota,
    StartResponse,
    WriteTrace,
)
from ._config import ProxyConfig
from ._errors import (
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
    RemoteProtocolError,
    ServiceUnavailableError,
    UpstreamTimeoutError,
    ValidationError,
)
from ._events import (
    ClientGone,
    Event,
    MetricsCollected,
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
from ._exchange import Exchange
from ._middleware import Attempt, Context, Middleware, Reply, Retry
from ._proxy import Proxy
from ._record import AttemptRecord, ExchangeRecord, ExchangeTotals, RecordExchange
from ._render import render_error
from ._sse import SSEDecoder, SSEEvent, parse_block

__all__ = [
    "AcquireQuota",
    "Attempt",
    "AttemptRecord",
    "AuthenticationError",
    "BudgetExceededError",
    "CancelUpstream",
    "ClientGone",
    "ClientRateLimitError",
    "CollectMetrics",
    "Command",
    "ContentPolicyError",
    "Context",
    "EndResponse",
    "Event",
    "Exchange",
    "ExchangeRecord",
    "ExchangeTotals",
    "InternalError",
    "LocalProtocolError",
    "Log",
    "MetricsCollected",
    "Middleware",
    "ModelNotFoundError",
    "NetworkError",
    "Origin",
    "PermissionDeniedError",
    "ProtocolError",
    "ProviderRateLimitError",
    "Proxy",
    "ProxyConfig",
    "QuotaAnswered",
    "QuotaFailed",
    "RecordExchange",
    "RemoteProtocolError",
    "Reply",
    "RequestData",
    "RequestEnded",
    "RequestReceived",
    "Retry",
    "SSEDecoder",
    "SSEEvent",
    "SendBody",
    "SendUpstreamRequest",
    "ServiceUnavailableError",
    "SettleQuota",
    "StartResponse",
    "TimerFired",
    "UpstreamData",
    "UpstreamEnded",
    "UpstreamFailed",
    "UpstreamResponse",
    "UpstreamTimeoutError",
    "ValidationError",
    "WriteTrace",
    "parse_block",
    "render_error",
]
