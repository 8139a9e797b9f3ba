"""Events: what a driver feeds the exchange.

Every event is a frozen, slotted, keyword-only dataclass. Don't subclass them:
the exchange dispatches on the exact class.

Like h11's events, each checks and normalises its fields when it is built: a
wrong type or an out-of-range value raises ``LocalProtocolError`` (status hint
500) there, in the driver's code, never deep inside the exchange. The checks are
a type test and a range test per field: events are built thousands of times a
second. The small ``_check_*`` helpers below are shared with the commands.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from ._errors import LocalProtocolError
from ._frozen import fast_init
from ._headers import Headers, lower_names
from ._quota import Decision

__all__ = [
    "FAILURE_KINDS",
    "ClientGone",
    "Event",
    "FailureKind",
    "QuotaAnswered",
    "QuotaFailed",
    "Headers",
    "MetricsCollected",
    "RequestData",
    "RequestEnded",
    "RequestReceived",
    "TimerFired",
    "UpstreamData",
    "UpstreamEnded",
    "UpstreamFailed",
    "UpstreamResponse",
]

#: Why an upstream attempt failed, as the driver saw it.
FailureKind = Literal["connect", "timeout", "reset", "protocol"]

#: The values of ``FailureKind``, for code that checks a kind at run time.
FAILURE_KINDS: frozenset[FailureKind] = frozenset(get_args(FailureKind))


# --- field checks, one per kind of check (events and commands share them) ---------


def _refuse(owner: object, field: str, wanted: str, value: object) -> LocalProtocolError:
    """The error for ``owner.field = value``: the driver (or a middleware) misbuilt it."""
    return LocalProtocolError(
        f"{type(owner).__name__}.{field}: must be {wanted}, not {value!r:.200}",
        error_status_hint=500,
        error_type="server_error",
    )


def _check_int(
    owner: object,
    field: str,
    value: object,
    low: float,
    high: float = math.inf,
    *,
    optional: bool = False,
) -> None:
    """An int (``bool`` refused) in ``[low, high]``; ``None`` too if ``optional``."""
    if type(value) is int or (isinstance(value, int) and not isinstance(value, bool)):
        if low <= value <= high:
            return
    elif value is None and optional:
        return
    if high != math.inf:
        wanted = f"an int in [{low}, {high}]"
    else:
        wanted = "an int" if low == -math.inf else f"an int >= {low}"
    raise _refuse(owner, field, wanted + (" or None" if optional else ""), value)


def _check_number(
    owner: object,
    field: str,
    value: object,
    *,
    positive: bool = False,
    finite: bool = True,
    optional: bool = False,
) -> None:
    """An int or a float (``bool`` refused), never NaN; ``> 0`` if ``positive``,
    not infinite if ``finite``, ``None`` too if ``optional``."""
    if isinstance(value, float):
        if (value > 0 if positive else not math.isnan(value)) and (
            not finite or math.isfinite(value)
        ):
            return
    elif isinstance(value, int) and value is not True and value is not False:
        if not positive or value > 0:
            return
    elif value is None and optional:
        return
    wanted = ("a finite number" if finite else "a number (not NaN)") + (" > 0" if positive else "")
    raise _refuse(owner, field, wanted + (" or None" if optional else ""), value)


def _check_bool(owner: object, field: str, value: object) -> None:
    """``True`` or ``False``."""
    if value is not True and value is not False:
        raise _refuse(owner, field, "a bool", value)


def _check_str(owner: object, field: str, value: object, *, empty: bool = True) -> None:
    """A str; not empty unless ``empty``."""
    if not isinstance(value, str) or not (empty or value):
        raise _refuse(owner, field, "a str" if empty else "a non-empty str", value)


def _check_bytes(owner: object, field: str, value: object, *, empty: bool = True) -> None:
    """Bytes (not bytearray, memoryview or str); not empty unless ``empty``."""
    if (type(value) is not bytes and not isinstance(value, bytes)) or not (empty or value):
        raise _refuse(owner, field, "bytes" if empty else "non-empty bytes", value)


def _peer_bytes(owner: object, field: str, value: object) -> bytes:
    """Bytes, or a bytearray (h11 hands body chunks out as one) copied to bytes."""
    if isinstance(value, bytearray):
        return bytes(value)
    _check_bytes(owner, field, value)
    return value  # type: ignore[return-value]


def _check_choice(owner: object, field: str, value: object, allowed: frozenset[str]) -> None:
    """One of the strings in ``allowed``."""
    if not isinstance(value, str) or value not in allowed:
        raise _refuse(owner, field, f"one of {sorted(allowed)}", value)


def _check_instance(owner: object, field: str, value: object, cls: type[Any]) -> None:
    """An instance of ``cls``."""
    if not isinstance(value, cls):
        raise _refuse(owner, field, f"a {cls.__name__}", value)


def _tuple_of(owner: object, field: str, value: object, cls: type[Any]) -> tuple[Any, ...]:
    """A tuple (a list is copied to one) of ``cls`` instances."""
    if type(value) is not tuple:
        if not isinstance(value, (list, tuple)):
            raise _refuse(owner, field, f"a tuple of {cls.__name__}", value)
        value = tuple(value)
    for item in value:
        if not isinstance(item, cls):
            raise _refuse(owner, field, f"a tuple of {cls.__name__}", value)
    return value


def _floats(owner: object, field: str, value: object) -> tuple[float, ...]:
    """A tuple (a list is copied to one) of numbers (``bool`` refused, not NaN), made floats."""
    if isinstance(value, (list, tuple)):
        kinds = (int, float)
        try:
            floats = tuple(float(x) for x in value if isinstance(x, kinds) and type(x) is not bool)
        except OverflowError:  # an int too large for a float
            floats = ()
        if len(floats) == len(value) and not any(map(math.isnan, floats)):
            return floats
    raise _refuse(owner, field, "a tuple of numbers (not NaN)", value)


def _fast_pairs(value: object, lower: bool) -> Headers | None:
    """The fast path of :func:`_header_pairs`: a list of (bytes, bytes) tuples as it
    is (names lower-cased into a new list if ``lower`` and one is not); None for
    anything else, which the slow path then judges."""
    if type(value) is not list:
        return None
    lowered = lower  # no name looked at yet: all lower-case so far
    for pair in value:
        if type(pair) is not tuple or len(pair) != 2:
            return None
        name, item = pair
        if type(name) is not bytes or type(item) is not bytes:
            return None
        if lowered and not name.islower():
            lowered = False
    if lower and not lowered:
        return [(name.lower(), item) for name, item in value]
    return value


def _exact_tuple(value: object, cls: type[Any]) -> bool:
    """Whether ``value`` is a tuple of items of exactly type ``cls`` (a fast path's test)."""
    if type(value) is not tuple:
        return False
    for item in value:  # noqa: SIM110 -- a loop: twice as fast as all() over a generator
        if type(item) is not cls:
            return False
    return True


def _header_pairs(owner: object, field: str, value: object, *, lower: bool) -> Headers:
    """A sequence of (bytes, bytes) pairs (two-item lists too: ASGI servers may send
    them); with ``lower``, a new list of tuples with the names lower-cased."""
    wanted = "a sequence of (bytes, bytes) pairs"
    if type(value) is not list and (
        not isinstance(value, Sequence) or isinstance(value, (str, bytes, bytearray))
    ):
        raise _refuse(owner, field, wanted, value)
    headers: Headers = value
    try:
        if lower:  # (a list of lower-case tuples took the fast path, _fast_pairs)
            headers = lower_names(headers)
        for name, item in headers:
            if type(name) is not bytes or type(item) is not bytes:
                raise _refuse(owner, field, wanted, (name, item))
    except (AttributeError, TypeError, ValueError):  # not pairs, or names without .lower()
        raise _refuse(owner, field, wanted, value) from None
    return headers


# --- the events ----------------------------------------------------------------------


class Event:
    """Base class of all events."""

    __slots__ = ()


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestReceived(Event):
    """The client's request head. Header names are lower-cased (into a list) on construction.

    ``method`` and ``target`` are non-empty bytes; ``headers`` a sequence of
    (bytes, bytes) pairs. Don't subclass.
    """

    method: bytes
    target: bytes
    headers: Headers

    def __post_init__(self) -> None:
        method, target = self.method, self.target
        if type(method) is bytes and method and type(target) is bytes and target:
            headers = _fast_pairs(self.headers, True)
            if headers is not None:
                if headers is not self.headers:
                    object.__setattr__(self, "headers", headers)
                return
        _check_bytes(self, "method", method, empty=False)
        _check_bytes(self, "target", target, empty=False)
        object.__setattr__(
            self, "headers", _header_pairs(self, "headers", self.headers, lower=True)
        )


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestData(Event):
    """A chunk of the client's request body: bytes (a bytearray is copied to bytes;
    memoryview and str are refused). Don't subclass."""

    data: bytes

    def __post_init__(self) -> None:
        if type(self.data) is not bytes:
            object.__setattr__(self, "data", _peer_bytes(self, "data", self.data))


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestEnded(Event):
    """The client's request body is complete. Don't subclass."""


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamResponse(Event):
    """The upstream's response head for attempt ``attempt`` (an int >= 1).

    ``status`` is an int in [100, 599]. Header names are lower-cased (into a
    list) on construction, whatever the upstream sent. Don't subclass.
    """

    attempt: int
    status: int
    headers: Headers

    def __post_init__(self) -> None:
        attempt, status = self.attempt, self.status
        if type(attempt) is int and attempt >= 1 and type(status) is int and 100 <= status <= 599:
            headers = _fast_pairs(self.headers, True)
            if headers is not None:
                if headers is not self.headers:
                    object.__setattr__(self, "headers", headers)
                return
        _check_int(self, "attempt", attempt, 1)
        _check_int(self, "status", status, 100, 599)
        object.__setattr__(
            self, "headers", _header_pairs(self, "headers", self.headers, lower=True)
        )


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamData(Event):
    """A chunk of the upstream's response body, as it arrived: bytes (a bytearray is
    copied to bytes; memoryview and str are refused). Don't subclass."""

    attempt: int
    data: bytes

    def __post_init__(self) -> None:
        # Built once per chunk: the helpers are called only off the fast path.
        if type(self.attempt) is not int or self.attempt < 1:
            _check_int(self, "attempt", self.attempt, 1)
        if type(self.data) is not bytes:
            object.__setattr__(self, "data", _peer_bytes(self, "data", self.data))


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamEnded(Event):
    """The upstream's response body is complete. Don't subclass."""

    attempt: int

    def __post_init__(self) -> None:
        if type(self.attempt) is not int or self.attempt < 1:
            _check_int(self, "attempt", self.attempt, 1)


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamFailed(Event):
    """The upstream attempt failed: it could not connect, timed out, reset or lied.

    ``kind`` is one of ``FAILURE_KINDS``. ``message`` is for logs and must not
    carry secrets. Don't subclass.
    """

    attempt: int
    kind: FailureKind
    message: str = ""

    def __post_init__(self) -> None:
        _check_int(self, "attempt", self.attempt, 1)
        _check_choice(self, "kind", self.kind, FAILURE_KINDS)
        _check_str(self, "message", self.message)


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class TimerFired(Event):
    """The deadline the exchange last returned from ``get_timer()`` has passed. Don't subclass."""


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class ClientGone(Event):
    """The client closed its connection (or the driver gave up on it).

    ``reason``, when the driver dropped the client (it read or sent too
    slowly), says why; it is logged as the exchange's one warning. Don't subclass.
    """

    reason: str = ""

    def __post_init__(self) -> None:
        _check_str(self, "reason", self.reason)


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaAnswered(Event):
    """The store's answer to ``AcquireQuota`` number ``query_id``.

    ``admitted``: every budget had money left and every charge fitted (and all
    were recorded). ``decisions``: one per charge, in order. ``spent``: USD
    spent so far, one per budget, in order. Lists are made tuples (and
    ``spent``'s numbers floats) on construction. Don't subclass.
    """

    query_id: int
    admitted: bool
    decisions: tuple[Decision, ...]
    spent: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        query_id, decisions, spent = self.query_id, self.decisions, self.spent
        if (  # the usual answer, checked at once; anything else field by field
            type(query_id) is int
            and query_id >= 1
            and type(self.admitted) is bool
            and _exact_tuple(decisions, Decision)
            and _exact_tuple(spent, float)
            and not any(map(math.isnan, spent))
        ):
            return
        _check_int(self, "query_id", query_id, 1)
        _check_bool(self, "admitted", self.admitted)
        object.__setattr__(
            self, "decisions", _tuple_of(self, "decisions", self.decisions, Decision)
        )
        object.__setattr__(self, "spent", _floats(self, "spent", self.spent))


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaFailed(Event):
    """The store could not answer ``AcquireQuota`` number ``query_id`` (unreachable,
    timed out). ``message`` is for logs and must not carry secrets. Don't subclass."""

    query_id: int
    message: str

    def __post_init__(self) -> None:
        _check_int(self, "query_id", self.query_id, 1)
        _check_str(self, "message", self.message)


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsCollected(Event):
    """The answer to ``CollectMetrics``: the exposition ``body`` and its
    ``content_type`` (Prometheus's text format, say). Don't subclass."""

    body: bytes
    content_type: bytes

    def __post_init__(self) -> None:
        _check_instance(self, "body", self.body, bytes)
        _check_instance(self, "content_type", self.content_type, bytes)
