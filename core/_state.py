"""Everything that affects the exchange's state machine lives here.

An exchange carries one request from its head to the end of its response.
``TRANSITIONS[state][event type]`` names the handler that runs for that pair;
any pair missing from the table is a driver error (``LocalProtocolError``) and
moves the exchange to ``ERROR``, where it stays.

    RECV_HEAD --RequestReceived--> RECV_BODY --RequestEnded--> AWAIT_UPSTREAM
    RECV_BODY --RequestEnded (a hook asks the store)--> AWAIT_QUOTA
    AWAIT_QUOTA --QuotaAnswered / QuotaFailed / TimerFired--> AWAIT_UPSTREAM (or DONE)
    AWAIT_UPSTREAM --UpstreamResponse--> RELAY --UpstreamEnded--> DONE
    AWAIT_UPSTREAM / RELAY --failure before the client saw a byte, retried--> BACKOFF
    BACKOFF --TimerFired--> AWAIT_UPSTREAM
    RECV_BODY --RequestEnded (local answer)--> LOCAL_STREAM --TimerFired...--> DONE
    RECV_BODY --RequestEnded (GET metrics.path)--> AWAIT_METRICS --MetricsCollected--> DONE
    any live state --ClientGone / failure / timeout--> DONE
"""

from __future__ import annotations

import enum

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

__all__ = ["TRANSITIONS", "State"]


class State(enum.Enum):
    """Where an exchange is."""

    # Members are singletons compared by identity: hash them so, in C (Enum's own
    # __hash__ is Python code, run at every change of state).
    __hash__ = object.__hash__

    RECV_HEAD = "RECV_HEAD"
    RECV_BODY = "RECV_BODY"
    AWAIT_QUOTA = "AWAIT_QUOTA"
    AWAIT_METRICS = "AWAIT_METRICS"
    AWAIT_UPSTREAM = "AWAIT_UPSTREAM"
    BACKOFF = "BACKOFF"
    RELAY = "RELAY"
    LOCAL_STREAM = "LOCAL_STREAM"
    DONE = "DONE"
    ERROR = "ERROR"


TRANSITIONS: dict[State, dict[type[Event], str]] = {
    State.RECV_HEAD: {
        RequestReceived: "_on_request_head",
        ClientGone: "_on_client_gone",
    },
    State.RECV_BODY: {
        RequestData: "_on_request_data",
        RequestEnded: "_on_request_end",
        ClientGone: "_on_client_gone",
    },
    State.AWAIT_QUOTA: {
        QuotaAnswered: "_on_quota_answer",
        QuotaFailed: "_on_quota_answer",
        TimerFired: "_on_quota_timer",
        ClientGone: "_on_client_gone",
    },
    State.AWAIT_METRICS: {
        MetricsCollected: "_on_metrics",
        TimerFired: "_on_metrics_timer",
        ClientGone: "_on_client_gone",
    },
    State.BACKOFF: {
        QuotaAnswered: "_on_stale_answer",
        QuotaFailed: "_on_stale_answer",
        TimerFired: "_on_backoff_timer",
        ClientGone: "_on_client_gone",
    },
    State.AWAIT_UPSTREAM: {
        QuotaAnswered: "_on_stale_answer",
        QuotaFailed: "_on_stale_answer",
        UpstreamResponse: "_on_upstream_head",
        UpstreamFailed: "_on_upstream_failed",
        TimerFired: "_on_upstream_timer",
        ClientGone: "_on_client_gone",
    },
    State.RELAY: {
        QuotaAnswered: "_on_stale_answer",
        QuotaFailed: "_on_stale_answer",
        UpstreamData: "_on_upstream_data",
        UpstreamEnded: "_on_upstream_end",
        UpstreamFailed: "_on_upstream_failed",
        TimerFired: "_on_upstream_timer",
        ClientGone: "_on_client_gone",
    },
    State.LOCAL_STREAM: {
        QuotaAnswered: "_on_stale_answer",
        QuotaFailed: "_on_stale_answer",
        TimerFired: "_on_local_timer",
        ClientGone: "_on_client_gone",
    },
    # A finished exchange tolerates what a driver may still see: the rest of a
    # request body it answered early, a client leaving, a stale timer, a store's
    # answer it stopped waiting for (whose charges it gives back).
    State.DONE: {
        QuotaAnswered: "_on_stale_answer",
        QuotaFailed: "_on_stale_answer",
        RequestData: "_ignore",
        RequestEnded: "_ignore",
        MetricsCollected: "_ignore",
        ClientGone: "_ignore",
        TimerFired: "_ignore",
    },
    State.ERROR: {},
}
