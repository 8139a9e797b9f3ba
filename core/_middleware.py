"""The middleware protocol.

A middleware is a plain object with optional, synchronous hooks, one per phase
of an exchange. Hooks receive the exchange as a :class:`Context` (what it
shows them is listed there), never do I/O, and act by returning values or by
``exchange.emit()`` of commands (a trace record, a log line). Per-exchange state belongs in
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
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ._commands import Command, SendUpstreamRequest
from ._config import ConfigProblem, suggest, unknown
from ._endpoints import ApiName, Endpoint
from ._errors import ProtocolError
from ._events import FailureKind, QuotaAnswered, QuotaFailed
from ._headers import Headers
from .gateway import Deployment, Router, Usage

__all__ = [
    "HOOKS",
    "Attempt",
    "Context",
    "Middleware",
    "Outcome",
    "Pipeline",
    "Reply",
    "Retry",
    "load_middleware",
]

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

#: How an upstream attempt ended: ``ok``, an error ``status``, or a failure kind.
Outcome = Literal["ok", "status"] | FailureKind


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """A response a middleware gives instead of forwarding the request."""

    status: int
    headers: Headers = ()
    body: bytes = b""


@dataclass(slots=True, kw_only=True)
class Attempt:
    """One upstream attempt, as the trace records it.

    ``outcome``: ``ok`` (a status below 400 came back), ``status`` (an error
    status), or the failure kind (``connect``, ``timeout``, ``reset``,
    ``protocol``); ``None`` while it runs. ``delay``: seconds waited before it.
    Times are the driver's ``now``.
    """

    number: int
    model: str | None
    provider: str
    upstream_model: str | None
    delay: float
    started_at: float
    outcome: Outcome | None = None
    status: int | None = None
    retry_after: float | None = None
    ended_at: float | None = None
    #: The provider's API, and where it lives (for observers).
    provider_type: Literal["openai", "anthropic"] = "openai"
    host: str = ""
    port: int = 0

    def record(self) -> dict[str, Any]:
        """The attempt as JSON for a trace."""
        return {
            "attempt": self.number,
            "model": self.model,
            "provider": self.provider,
            "upstream_model": self.upstream_model,
            "delay_ms": round(self.delay * 1000, 3),
            "outcome": self.outcome,
            "status": self.status,
            "retry_after": self.retry_after,
            "duration_ms": None
            if self.ended_at is None
            else round((self.ended_at - self.started_at) * 1000, 3),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """Try again: wait ``delay`` seconds, then send the request to ``deployment``.

    ``deployment`` ``None`` means the same upstream request again (the
    one-provider shorthand). ``model`` is the public model that deployment
    serves (a fallback's name, or the one asked for).
    """

    delay: float
    deployment: Deployment | None
    model: str | None


class Context(Protocol):
    """What a hook sees of the exchange (``core.Exchange`` is one).

    Request fields are the client's, as received (header names lower-cased);
    times are the driver's ``now``; ``scratch`` holds per-exchange middleware
    state, keyed by whatever the middleware likes (usually itself).
    """

    exchange_id: str
    wall_time: float
    started_at: float
    request_method: bytes
    request_target: bytes
    request_path: bytes
    request_query: bytes
    request_headers: Headers
    request_body: bytes
    #: The API the client speaks, and what it asks (None: not an endpoint the proxy knows).
    client_api: ApiName
    endpoint: Endpoint | None
    response_status: int | None
    response_headers: list[tuple[bytes, bytes]]
    is_stream: bool
    first_upstream_byte_at: float | None
    ended_at: float | None
    outcome: str | None
    error: ProtocolError | None
    upstream_url: str | None
    #: The public model asked for, and the deployment serving it (once routed).
    model: str | None
    deployment: Deployment | None
    usage: Usage | None
    #: True when ``usage`` is an estimate (a stream that ended without its usage).
    usage_estimated: bool
    cost_usd: float | None
    attempts: list[Attempt]
    #: Whatever an authentication middleware put there (the built-in ``auth``: a ``ClientKey``).
    key: Any
    scratch: dict[Any, Any]

    @property
    def router(self) -> Router:
        """The gateway's models and deployments (fallback candidates)."""

    @property
    def seed(self) -> float:
        """The number in [0, 1) the driver gave this exchange (routing, retry jitter)."""

    @property
    def wall_now(self) -> float:
        """UNIX time of the event being handled."""

    def request_json(self) -> dict[str, Any] | None:
        """The request body as a JSON object, parsed once; ``None`` if it is not one."""

    def new_query_id(self) -> int:
        """A fresh id for a command that needs a reply (``AcquireQuota``)."""

    def emit(self, command: Command) -> None:
        """Queue a command for the driver."""


class Middleware:
    """Optional base class documenting the hooks; subclassing it is not required.

    Only the hooks a subclass overrides are called.
    """

    name: str = "middleware"


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Middleware compiled into one tuple of bound hooks per phase, built once."""

    middleware: tuple[object, ...]
    on_request: tuple[Callable[[Context], object], ...]
    #: The ``on_answer`` hook of each ``on_request`` hook's middleware (or None), same order.
    on_answer: tuple[Callable[[Context, QuotaAnswered | QuotaFailed], object] | None, ...]
    on_upstream_request: tuple[Callable[[Context, SendUpstreamRequest], SendUpstreamRequest], ...]
    on_response_head: tuple[Callable[[Context], None], ...]
    on_response_data: tuple[Callable[[Context, bytes], bytes], ...]
    on_stream_event: tuple[Callable[[Context, bytes], bytes | None], ...]
    on_error: tuple[Callable[[Context, ProtocolError], None], ...]
    on_complete: tuple[Callable[[Context], None], ...]
    on_attempt_failed: tuple[Callable[[Context, Attempt], Retry | ProtocolError | None], ...]
    #: Every middleware is a built-in (``core.policies``): what their hooks leave
    #: (headers, bodies) is well-formed, so the commands built after them are not
    #: checked again, as after no hook at all.
    builtin: bool = False

    @classmethod
    def build(cls, middleware: Sequence[object]) -> Pipeline:
        """Collect each middleware's hooks, in order, skipping the ones it lacks."""
        phases: dict[str, list[Callable[..., Any]]] = {hook: [] for hook in HOOKS}
        answers: list[Callable[..., Any] | None] = []
        for mw in middleware:
            for hook in HOOKS:
                fn = getattr(mw, hook, None)
                if fn is not None:
                    if not callable(fn):
                        raise TypeError(f"{type(mw).__name__}.{hook} is not callable")
                    phases[hook].append(fn)
                    if hook == "on_request":
                        answers.append(getattr(mw, "on_answer", None))
        return cls(
            tuple(middleware),
            on_request=tuple(phases["on_request"]),
            on_answer=tuple(answers),
            on_attempt_failed=tuple(phases["on_attempt_failed"]),
            on_upstream_request=tuple(phases["on_upstream_request"]),
            on_response_head=tuple(phases["on_response_head"]),
            on_response_data=tuple(phases["on_response_data"]),
            on_stream_event=tuple(phases["on_stream_event"]),
            on_error=tuple(phases["on_error"]),
            on_complete=tuple(phases["on_complete"]),
            builtin=all(type(mw).__module__.startswith("core.policies.") for mw in middleware),
        )


def _option_names(factory: Callable[..., object]) -> tuple[list[str], list[str], bool]:
    """A factory's options from its signature: all of them, the required ones, and
    whether it takes any other (``**options``)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): anything goes
        return [], [], True
    named = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return (
        [p.name for p in named],
        [p.name for p in named if p.default is p.empty],
        any(p.kind is p.VAR_KEYWORD for p in parameters),
    )


def load_middleware(
    name: str,
    options: Mapping[str, Any],
    builtins: Mapping[str, Callable[..., object]],
) -> object:
    """Instantiate the middleware ``name``: a built-in, or ``package.module:attr``.

    Raises ``ConfigProblem`` (a ``ValueError``) with a path under the entry
    (``(name, ...)``, or ``()`` when the name itself is wrong): an unknown
    middleware, an option the factory's signature does not take (its options
    listed, the nearest suggested), a missing one, or the factory's own ``ValueError``.
    """
    factory = builtins.get(name)
    if factory is None:
        if ":" not in name:
            known = list(builtins)
            raise ConfigProblem(
                (),
                f"unknown middleware {name!r} (built-ins: {', '.join(known) or 'none'}; "
                f"custom ones: 'package.module:attr'{suggest(name, known)})",
            )
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigProblem((name,), f"cannot import {module_name!r} ({exc})") from None
        factory = getattr(module, attr, None)
        if factory is None or not callable(factory):
            raise ConfigProblem(
                (name,), f"{module_name} has no callable {attr!r} (a class or function)"
            )
    accepted, required, anything = _option_names(factory)
    if not anything:
        for option in options:
            if option not in accepted:
                raise ConfigProblem((name,), unknown("option", option, accepted))
    for option in required:
        if option not in options:
            raise ConfigProblem(
                (name,), f"missing option {option!r} (required; options: {', '.join(accepted)})"
            )
    try:
        middleware = factory(**options)
    except ConfigProblem as exc:
        raise exc.within(name) from None
    except (TypeError, ValueError) as exc:
        raise _own_words(name, str(exc)) from None
    for hook in HOOKS:
        if not callable(getattr(middleware, hook, _callable)):
            raise ConfigProblem((name,), f"{hook} is not callable (hooks are methods)")
    return middleware


def _callable() -> None:
    """Stands for a hook a middleware does not have."""


_WITHIN = re.compile(r"([A-Za-z_][\w.\[\]]*): (.*)", re.DOTALL)


def _own_words(name: str, message: str) -> ConfigProblem:
    """A factory's error as a problem under its entry, without the name it may start
    with: ``trace: 'dir' must ...``, or ``auth.keys[0].name: ...`` (a path under it)."""
    short = name.rpartition(":")[2]
    for prefix in (f"{name}: ", f"{short}: "):
        if message.startswith(prefix):
            return ConfigProblem((name,), message[len(prefix) :].removeprefix("Value error, "))
    within = _WITHIN.fullmatch(message)
    if within and within[1].startswith(f"{short}."):
        parts = re.findall(r"\[(\d+)\]|([^.\[\]]+)", within[1][len(short) + 1 :])
        path = [int(index) if index else key for index, key in parts]
        return ConfigProblem((name, *path), within[2].removeprefix("Value error, "))
    return ConfigProblem((name,), message)
