"""Commands: what the exchange asks its driver to do.

"Commands make it possible for layers to communicate with the outer world."
Every command is a frozen, slotted, keyword-only dataclass; a driver matches on
the exact class and raises ``RuntimeError`` on one it does not know.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ._headers import Headers
from ._quota import Limit

__all__ = [
    "AcquireQuota",
    "BudgetCheck",
    "CancelUpstream",
    "Command",
    "EndResponse",
    "Log",
    "LogLevel",
    "Origin",
    "QuotaAdjustment",
    "QuotaCharge",
    "SendBody",
    "SendUpstreamRequest",
    "SettleQuota",
    "SpendRecord",
    "StartResponse",
    "WriteTrace",
]

LogLevel = Literal["debug", "info", "warning", "error"]


class Command:
    """Base class of all commands."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Origin:
    """Where an upstream lives: scheme, host and port."""

    scheme: Literal["http", "https"]
    host: str
    port: int

    def __post_init__(self) -> None:
        if self.scheme not in ("http", "https"):
            raise ValueError(f"unsupported scheme {self.scheme!r}: use 'http' or 'https'")

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class SendUpstreamRequest(Command):
    """Open (or reuse) a connection to ``origin`` and send this request.

    ``headers`` are final (Host and Content-Length included). Feed the outcome
    back as ``UpstreamResponse``/``UpstreamData``/``UpstreamEnded`` or
    ``UpstreamFailed`` with the same ``attempt``.
    """

    attempt: int
    origin: Origin
    method: bytes
    target: bytes
    headers: Headers
    body: bytes
    connect_timeout: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelUpstream(Command):
    """Abort the upstream attempt: close its connection at once."""

    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StartResponse(Command):
    """Send the response head to the client. Once sent, it is final."""

    status: int
    headers: Headers


@dataclass(frozen=True, slots=True, kw_only=True)
class SendBody(Command):
    """Send a chunk of the response body to the client."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class EndResponse(Command):
    """End the response.

    ``complete=False`` means the body is truncated: the driver must close the
    client connection without a clean end, so the client can tell.
    """

    complete: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteTrace(Command):
    """Append one trace record to the trace files in ``directory``. Fire and forget.

    The files are the writer's business: JSON lines, one file per ``rotate``
    period (UTC); whole files are deleted once their period ended ``max_age``
    seconds ago, or oldest first while they hold more than ``max_bytes`` (None:
    no such limit).
    """

    directory: str
    record: Mapping[str, Any]
    rotate: Literal["hour", "day"] = "hour"
    max_age: float | None = 7 * 86400.0
    max_bytes: int | None = 1 << 30


@dataclass(frozen=True, slots=True, kw_only=True)
class Log(Command):
    """Emit a log line. ``fields`` never hold secrets."""

    level: LogLevel
    message: str
    fields: Mapping[str, Any]


# --- quotas: rate limits and budgets, kept by the driver's store (memory or Redis) ---


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaCharge:
    """Charge ``amount`` against the limiter state stored under ``key`` (0: only look)."""

    key: str
    limit: Limit
    amount: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetCheck:
    """Refuse unless what was spent under ``key`` (USD) is below ``usd``."""

    key: str
    usd: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AcquireQuota(Command):
    """Ask the store whether a request may go, and charge it if so: a command with a reply.

    All or nothing: the request is admitted when every budget has money left
    and every charge fits its limit; only then is every charge recorded
    (``core.MemoryLimiter.acquire_all`` and the Redis quota script). ``at`` is
    UNIX time in seconds (limits are shared between processes, so their clock is
    the wall clock). Answer with ``QuotaAnswered`` (decisions in the order of
    ``charges``, spent USD in the order of ``budgets``) or ``QuotaFailed`` with
    the same ``query_id``. The exchange gives up after ``timeout`` seconds.
    """

    query_id: int
    at: float
    charges: tuple[QuotaCharge, ...]
    budgets: tuple[BudgetCheck, ...] = ()
    timeout: float


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaAdjustment:
    """Correct an up-front charge: ``delta`` > 0 charges more, < 0 refunds (``adjust``)."""

    key: str
    limit: Limit
    delta: int
    charged_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SpendRecord:
    """Add ``usd`` to the spend under ``key``; the store may forget it after ``ttl`` s."""

    key: str
    usd: float
    ttl: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SettleQuota(Command):
    """Record what an exchange really used, once it is over. Fire and forget.

    Carry it out after the client's response is flushed; a failure is logged
    and counted, never fed back.
    """

    at: float
    adjustments: tuple[QuotaAdjustment, ...] = ()
    spends: tuple[SpendRecord, ...] = ()
