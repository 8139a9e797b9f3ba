"""The middleware protocol.

A middleware is a plain object with optional, synchronous hooks, one per phase
of an exchange. Hooks receive the exchange (its public attributes are the
context), never do I/O, and act by returning values or by ``exchange.emit()``
of commands (a trace record, a log line). Per-exchange state belongs in
``exchange.scratch``, never on the middleware object, which is shared by every
exchange of the process.

Phases, in order:

``on_request(exchange) -> Reply | AcquireQuota | None``
    The whole request is in (``exchange.request_*``; ``exchange.request_json()``
    parses the body once for every hook). Return a :class:`Reply` to answer it
    directly; raise an error of the taxonomy (``core.ValidationError`` ...) to
    refuse it; return a command that needs a reply (``AcquireQuota``, its
    ``query_id`` from ``exchange.new_query_id()``) to ask the driver's store:
    the exchange waits, then calls
``on_answer(exchange, answer) -> Reply | AcquireQuota | None``
    of the same middleware with the ``QuotaAnswered`` or ``QuotaFailed`` (also
    given when the store does not answer within the query's ``timeout``); then
    the next middleware's ``on_request`` runs.
``on_upstream_request(exchange, request) -> SendUpstreamRequest``
    Change the request about to be sent upstream.
``on_response_head(exchange) -> None``
    ``exchange.response_status`` / ``exchange.response_headers`` (a list you
    may edit) are about to be sent.
``on_response_data(exchange, data) -> bytes``
    A chunk of a non-streamed response body.
``on_stream_event(exchange, block) -> bytes | None``
    One whole SSE block (canonical bytes, see ``parse_block``). Return it, a
    replacement, or ``None`` to drop it.
``on_attempt_failed(exchange, attempt) -> Retry | ProtocolError | None``
    An upstream attempt failed (``attempt.outcome``: a failure kind, or
    ``status`` with a retryable status) before anything was sent to the client.
    Return a ``Retry`` (wait, then send again, maybe elsewhere), an error to
    answer with, or ``None`` (no opinion: the failure stands).
``on_error(exchange, error) -> None``
    The exchange failed with ``error`` (a ``ProtocolError``).
``on_complete(exchange) -> None``
    The exchange is over; ``exchange.outcome`` says how.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ._commands import Command
from ._errors import ProtocolError
from ._headers import Headers

__all__ = ["HOOKS", "Context", "Middleware", "Reply", "load_middleware"]

HOOKS = (
    "on_request",
    "on_attempt_failed",
    "on_upstream_request",
    "on_response_head",
    "on_response_data",
    "on_stream_event",
    "on_error",
    "on_complete",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """A response a middleware gives instead of forwarding the request."""

    status: int
    headers: Headers = ()
    body: bytes = b""


class Context(Protocol):
    """What a hook sees of the exchange (``core.Exchange`` is one)."""

    exchange_id: str
    wall_time: float
    started_at: float
    request_method: bytes
    request_target: bytes
    request_path: bytes
    request_query: bytes
    request_headers: Headers
    request_body: bytes
    response_status: int | None
    response_headers: list[tuple[bytes, bytes]]
    is_stream: bool
    first_upstream_byte_at: float | None
    ended_at: float | None
    outcome: str | None
    error: ProtocolError | None
    upstream_url: str | None
    client_api: str
    model: str | None
    usage: Any
    #: True when ``usage`` is an estimate (a stream that ended without its usage).
    usage_estimated: bool
    cost_usd: float | None
    attempts: list[Any]
    key: Any
    scratch: dict[Any, Any]

    def emit(self, command: Command) -> None:
        """Queue a command for the driver."""


class Middleware:
    """Optional base class documenting the hooks; subclassing it is not required.

    Only the hooks a subclass overrides are called.
    """

    name: str = "middleware"


def load_middleware(
    name: str,
    options: Mapping[str, Any],
    builtins: Mapping[str, Callable[..., object]],
) -> object:
    """Instantiate the middleware ``name``: a built-in, or ``package.module:attr``."""
    factory = builtins.get(name)
    if factory is None:
        if ":" not in name:
            known = ", ".join(sorted(builtins)) or "none"
            raise ValueError(
                f"unknown middleware {name!r} (built-ins: {known}; custom ones: 'module:attr')"
            )
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"middleware {name!r}: cannot import {module_name!r}: {exc}") from None
        factory = getattr(module, attr, None)
        if factory is None or not callable(factory):
            raise ValueError(f"middleware {name!r}: {module_name} has no callable {attr!r}")
    try:
        return factory(**options)
    except TypeError as exc:
        raise ValueError(f"middleware {name!r}: bad options: {exc}") from None
