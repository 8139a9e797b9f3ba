"""Events: what a driver feeds the exchange.

Every event is a frozen, slotted, keyword-only dataclass. Don't subclass them:
the exchange dispatches on the exact class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._headers import Headers, lower_names
from ._quota import Decision

__all__ = [
    "ClientGone",
    "Event",
    "FailureKind",
    "QuotaAnswered",
    "QuotaFailed",
    "Headers",
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


class Event:
    """Base class of all events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestReceived(Event):
    """The client's request head. Header names are lower-cased on construction."""

    method: bytes
    target: bytes
    headers: Headers

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", lower_names(self.headers))


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestData(Event):
    """A chunk of the client's request body."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestEnded(Event):
    """The client's request body is complete."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamResponse(Event):
    """The upstream's response head for attempt ``attempt``.

    Header names are lower-cased on construction, whatever the upstream sent.
    """

    attempt: int
    status: int
    headers: Headers

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", lower_names(self.headers))


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamData(Event):
    """A chunk of the upstream's response body, as it arrived."""

    attempt: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamEnded(Event):
    """The upstream's response body is complete."""

    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamFailed(Event):
    """The upstream attempt failed: it could not connect, timed out, reset or lied.

    ``message`` is for logs and must not carry secrets.
    """

    attempt: int
    kind: FailureKind
    message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerFired(Event):
    """The deadline the exchange last returned from ``get_timer()`` has passed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientGone(Event):
    """The client closed its connection (or the driver gave up on it).

    ``reason``, when the driver dropped the client (it read or sent too
    slowly), says why; it is logged as the exchange's one warning.
    """

    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaAnswered(Event):
    """The store's answer to ``AcquireQuota`` number ``query_id``.

    ``admitted``: every budget had money left and every charge fitted (and all
    were recorded). ``decisions``: one per charge, in order. ``spent``: USD
    spent so far, one per budget, in order.
    """

    query_id: int
    admitted: bool
    decisions: tuple[Decision, ...]
    spent: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaFailed(Event):
    """The store could not answer ``AcquireQuota`` number ``query_id`` (unreachable,
    timed out). ``message`` is for logs and must not carry secrets."""

    query_id: int
    message: str
