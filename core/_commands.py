"""Commands: what the exchange asks its driver to do.

"Commands make it possible for layers to communicate with the outer world."
Every command is a frozen, slotted, keyword-only dataclass; a driver matches on
the exact class and raises ``RuntimeError`` on one it does not know. Don't
subclass them.

Like the events, each checks its fields when it is built (a type test and a
range test per field, no copy but a list made a tuple where a tuple is
documented): a wrong type or an out-of-range value raises ``LocalProtocolError``
(status hint 500) where the command is built -- in the exchange or in the
middleware that built it -- never in the driver that carries it out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from ._events import (
    _check_bool,
    _check_bytes,
    _check_choice,
    _check_instance,
    _check_int,
    _check_number,
    _check_str,
    _exact_tuple,
    _fast_pairs,
    _header_pairs,
    _tuple_of,
)
from ._frozen import fast_init
from ._headers import Headers
from ._quota import Limit

__all__ = [
    "AcquireQuota",
    "BudgetCheck",
    "CancelUpstream",
    "CollectMetrics",
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

_LOG_LEVELS: frozenset[str] = frozenset(get_args(LogLevel))
_SCHEMES = frozenset({"http", "https"})
_ROTATIONS = frozenset({"hour", "day"})


class Command:
    """Base class of all commands."""

    __slots__ = ()


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Origin:
    """Where an upstream lives: scheme (http, https), host (non-empty), port (1-65535).

    Don't subclass.
    """

    scheme: Literal["http", "https"]
    host: str
    port: int

    def __post_init__(self) -> None:
        _check_choice(self, "scheme", self.scheme, _SCHEMES)
        _check_str(self, "host", self.host, empty=False)
        _check_int(self, "port", self.port, 1, 65535)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class SendUpstreamRequest(Command):
    """Open (or reuse) a connection to ``origin`` and send this request.

    ``headers`` are final (Host and Content-Length included). Feed the outcome
    back as ``UpstreamResponse``/``UpstreamData``/``UpstreamEnded`` or
    ``UpstreamFailed`` with the same ``attempt`` (>= 1). ``connect_timeout``:
    finite seconds > 0. Don't subclass.
    """

    attempt: int
    origin: Origin
    method: bytes
    target: bytes
    headers: Headers
    body: bytes
    connect_timeout: float

    def __post_init__(self) -> None:
        attempt, method, target, timeout = (
            self.attempt,
            self.method,
            self.target,
            self.connect_timeout,
        )
        if (  # the usual command, checked at once; anything else field by field
            type(attempt) is int
            and attempt >= 1
            and type(self.origin) is Origin
            and type(method) is bytes
            and method
            and type(target) is bytes
            and target
            and type(self.body) is bytes
            and type(timeout) is float
            and 0 < timeout < math.inf
            and _fast_pairs(self.headers, False) is not None
        ):
            return
        _check_int(self, "attempt", attempt, 1)
        _check_instance(self, "origin", self.origin, Origin)
        _check_bytes(self, "method", method, empty=False)
        _check_bytes(self, "target", target, empty=False)
        _header_pairs(self, "headers", self.headers, lower=False)
        _check_bytes(self, "body", self.body)
        _check_number(self, "connect_timeout", timeout, positive=True)


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class CancelUpstream(Command):
    """Abort the upstream attempt (>= 1): close its connection at once. Don't subclass."""

    attempt: int

    def __post_init__(self) -> None:
        _check_int(self, "attempt", self.attempt, 1)


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class StartResponse(Command):
    """Send the response head (status in [100, 599]) to the client. Once sent, it is final.

    Don't subclass.
    """

    status: int
    headers: Headers

    def __post_init__(self) -> None:
        status = self.status
        if (
            type(status) is int
            and 100 <= status <= 599
            and _fast_pairs(self.headers, False) is not None
        ):
            return
        _check_int(self, "status", status, 100, 599)
        _header_pairs(self, "headers", self.headers, lower=False)


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class SendBody(Command):
    """Send a chunk of the response body (bytes only) to the client. Don't subclass."""

    data: bytes

    def __post_init__(self) -> None:
        if type(self.data) is not bytes:
            _check_bytes(self, "data", self.data)


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class EndResponse(Command):
    """End the response.

    ``complete=False`` means the body is truncated: the driver must close the
    client connection without a clean end, so the client can tell. Don't subclass.
    """

    complete: bool = True

    def __post_init__(self) -> None:
        _check_bool(self, "complete", self.complete)


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class WriteTrace(Command):
    """Append one trace record to the trace files in ``directory``. Fire and forget.

    The files are the writer's business: JSON lines, one file per ``rotate``
    period (UTC); whole files are deleted once their period ended ``max_age``
    seconds ago (> 0), or oldest first while they hold more than ``max_bytes``
    (an int > 0); None: no such limit. Don't subclass.
    """

    directory: str
    record: Mapping[str, Any]
    rotate: Literal["hour", "day"] = "hour"
    max_age: float | None = 7 * 86400.0
    max_bytes: int | None = 1 << 30

    def __post_init__(self) -> None:
        _check_str(self, "directory", self.directory, empty=False)
        _check_instance(self, "record", self.record, Mapping)
        _check_choice(self, "rotate", self.rotate, _ROTATIONS)
        _check_number(self, "max_age", self.max_age, positive=True, finite=False, optional=True)
        _check_int(self, "max_bytes", self.max_bytes, 1, optional=True)


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class CollectMetrics(Command):
    """Collect the process's metrics (every worker's) in an exposition format, and
    answer with ``MetricsCollected``. Don't subclass."""


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Log(Command):
    """Emit a log line. ``fields`` never hold secrets. Don't subclass."""

    level: LogLevel
    message: str
    fields: Mapping[str, Any]

    def __post_init__(self) -> None:
        _check_choice(self, "level", self.level, _LOG_LEVELS)
        _check_str(self, "message", self.message)
        _check_instance(self, "fields", self.fields, Mapping)


# --- quotas: rate limits and budgets, kept by the driver's store (memory or Redis) ---


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaCharge:
    """Charge ``amount`` (>= 0; 0: only look) against the limiter state under ``key``.

    Don't subclass.
    """

    key: str
    limit: Limit
    amount: int

    def __post_init__(self) -> None:
        amount = self.amount
        if (
            type(self.key) is str
            and type(self.limit) is Limit
            and type(amount) is int
            and amount >= 0
        ):
            return
        _check_str(self, "key", self.key)
        _check_instance(self, "limit", self.limit, Limit)
        _check_int(self, "amount", amount, 0)


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetCheck:
    """Refuse unless what was spent under ``key`` (USD) is below ``usd``. Don't subclass.

    ``usd`` may be ``math.inf``: the check then only reports the spend.
    """

    key: str
    usd: float

    def __post_init__(self) -> None:
        _check_str(self, "key", self.key)
        _check_number(self, "usd", self.usd, finite=False)


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class AcquireQuota(Command):
    """Ask the store whether a request may go, and charge it if so: a command with a reply.

    All or nothing: the request is admitted when every budget has money left
    and every charge fits its limit; only then is every charge recorded
    (``core.MemoryLimiter.acquire_all`` and the Redis quota script). ``at`` is
    UNIX time in seconds (limits are shared between processes, so their clock is
    the wall clock). Answer with ``QuotaAnswered`` (decisions in the order of
    ``charges``, spent USD in the order of ``budgets``) or ``QuotaFailed`` with
    the same ``query_id`` (>= 1). The exchange gives up after ``timeout`` seconds
    (finite, > 0). Lists of charges or budgets are made tuples. Don't subclass.
    """

    query_id: int
    at: float
    charges: tuple[QuotaCharge, ...]
    budgets: tuple[BudgetCheck, ...] = ()
    timeout: float

    def __post_init__(self) -> None:
        query_id, at, timeout = self.query_id, self.at, self.timeout
        if (  # the usual command, checked at once; anything else field by field
            type(query_id) is int
            and query_id >= 1
            and type(at) is float
            and math.isfinite(at)
            and type(timeout) is float
            and 0 < timeout < math.inf
            and _exact_tuple(self.charges, QuotaCharge)
            and _exact_tuple(self.budgets, BudgetCheck)
        ):
            return
        _check_int(self, "query_id", self.query_id, 1)
        _check_number(self, "at", self.at)
        object.__setattr__(self, "charges", _tuple_of(self, "charges", self.charges, QuotaCharge))
        object.__setattr__(self, "budgets", _tuple_of(self, "budgets", self.budgets, BudgetCheck))
        _check_number(self, "timeout", self.timeout, positive=True)


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaAdjustment:
    """Correct an up-front charge: ``delta`` > 0 charges more, < 0 refunds (``adjust``).

    Don't subclass.
    """

    key: str
    limit: Limit
    delta: int
    charged_at: float

    def __post_init__(self) -> None:
        at = self.charged_at
        if (
            type(self.key) is str
            and type(self.limit) is Limit
            and type(self.delta) is int
            and type(at) is float
            and math.isfinite(at)
        ):
            return
        _check_str(self, "key", self.key)
        _check_instance(self, "limit", self.limit, Limit)
        _check_int(self, "delta", self.delta, -math.inf)
        _check_number(self, "charged_at", at)


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class SpendRecord:
    """Add ``usd`` to the spend under ``key``; the store may forget it after ``ttl`` s.

    ``usd`` is finite; ``ttl`` finite and > 0, or None. Don't subclass.
    """

    key: str
    usd: float
    ttl: float | None

    def __post_init__(self) -> None:
        _check_str(self, "key", self.key)
        _check_number(self, "usd", self.usd)
        _check_number(self, "ttl", self.ttl, positive=True, optional=True)


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class SettleQuota(Command):
    """Record what an exchange really used, once it is over. Fire and forget.

    Carry it out after the client's response is flushed; a failure is logged
    and counted, never fed back. Lists are made tuples. Don't subclass.
    """

    at: float
    adjustments: tuple[QuotaAdjustment, ...] = ()
    spends: tuple[SpendRecord, ...] = ()

    def __post_init__(self) -> None:
        at = self.at
        if (
            type(at) is float
            and math.isfinite(at)
            and _exact_tuple(self.adjustments, QuotaAdjustment)
            and _exact_tuple(self.spends, SpendRecord)
        ):
            return
        _check_number(self, "at", at)
        adjustments = _tuple_of(self, "adjustments", self.adjustments, QuotaAdjustment)
        object.__setattr__(self, "adjustments", adjustments)
        object.__setattr__(self, "spends", _tuple_of(self, "spends", self.spends, SpendRecord))
