"""The record of an exchange: what observers (logs, metrics, spans) see of it.

When an exchange ends, the core emits one :class:`RecordExchange` command
holding an :class:`ExchangeRecord`: complete and immutable. The access log,
the metrics and the span exporter in ``adapters/`` are its consumers; none of
them parses a body again. Times are UNIX seconds (``started``) and durations
in seconds. Nothing in a record is a secret: no header, no key, no body but
the messages ``telemetry.capture_content`` asks for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from ._commands import Command
from ._endpoints import Endpoint
from ._errors import BudgetExceededError, ClientRateLimitError
from ._headers import header
from ._middleware import Context
from ._relay import Relay
from .gateway import Usage

__all__ = [
    "OPERATIONS",
    "AttemptRecord",
    "ExchangeRecord",
    "RecordExchange",
    "RequestParams",
    "TraceIds",
    "build_record",
    "trace_ids",
]


class AttemptRecord(NamedTuple):
    """One upstream attempt: a CLIENT span.

    ``outcome``: ``ok`` (a status below 400), ``status`` (an error status), a
    failure kind (``connect``, ``timeout``, ``reset``, ``protocol``), or
    ``None`` if the exchange ended while it ran (the client left). ``model`` is
    the public model it served (a fallback's name on a fallback).
    """

    number: int
    span_id: str
    model: str | None
    provider: str
    provider_type: Literal["openai", "anthropic"]
    upstream_model: str | None
    server_address: str
    server_port: int
    started: float
    duration: float
    delay: float
    status: int | None
    outcome: str | None


class ExchangeRecord(NamedTuple):
    """Everything about one exchange an observer needs, once it has ended.

    A named tuple, not a frozen dataclass: as immutable, and built in a third of
    the time (one per exchange: ~4 µs against ~12 µs here).

    Identity and trace context: ``exchange_id``; W3C ``trace_id`` (32 hex),
    ``span_id`` (16 hex, the exchange's SERVER span) and ``parent_span_id``
    (the client's ``traceparent``, if it sent a valid one); ``sampled``.

    The request: ``method``, ``path`` (no query), ``client_api`` (``openai``
    or ``anthropic``), ``operation`` (the GenAI operation: ``chat``,
    ``text_completion``, ``embeddings``; ``None`` for what is not a model
    call), ``model`` (the public model asked for: a configured one when
    ``model_configured``), ``stream``, ``max_tokens``, ``temperature``,
    ``top_p``, ``user`` (the request's ``user`` or ``metadata.user_id``),
    ``session_id`` (the ``telemetry.session_header``), ``key_name`` (the auth
    key's name, never the key).

    The route: ``provider``, ``provider_type`` and ``upstream_model`` of the
    last attempt; ``attempts``; ``retries`` (attempts after the first) and
    ``fallbacks`` (attempts that served another public model).

    The result: ``status`` (sent to the client; ``None`` if nothing was),
    ``outcome`` (``completed``, ``client_gone``, ``timeout``,
    ``upstream_error``, ``rejected``, ``error``), ``error_type``,
    ``error_code``, ``error_message`` (the error's text, which never holds a
    secret), ``refusal`` (``rate_limit`` or ``budget`` when the proxy's own
    limits refused it), ``usage``, ``usage_estimated``, ``cost_usd``,
    ``response_id``, ``response_model``, ``finish_reasons``.

    Timings: ``started`` (UNIX time); ``duration`` (to the end), ``upstream_duration``
    (the attempts' sum), ``time_to_first_byte`` (the upstream's head) and
    ``time_to_first_token`` (the first stream event sent), in seconds from
    ``started``, ``None`` where there was none.

    ``input_messages``/``output_messages``: only with ``telemetry.capture_content``.
    """

    exchange_id: str
    trace_id: str | None
    span_id: str | None
    parent_span_id: str | None
    sampled: bool
    method: str
    path: str
    client_api: Literal["openai", "anthropic"]
    operation: str | None
    model: str | None
    model_configured: bool
    stream: bool
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    user: str | None
    session_id: str | None
    key_name: str | None
    provider: str | None
    provider_type: Literal["openai", "anthropic"] | None
    upstream_model: str | None
    attempts: tuple[AttemptRecord, ...]
    retries: int
    fallbacks: int
    status: int | None
    outcome: str
    error_type: str | None
    error_code: str | None
    error_message: str | None
    refusal: Literal["rate_limit", "budget"] | None
    usage: Usage | None
    usage_estimated: bool
    cost_usd: float | None
    response_id: str | None
    response_model: str | None
    finish_reasons: tuple[str, ...]
    started: float
    duration: float
    upstream_duration: float | None
    time_to_first_byte: float | None
    time_to_first_token: float | None
    input_messages: Any = None
    output_messages: Any = None


@dataclass(frozen=True, slots=True)
class RecordExchange(Command):
    """The exchange is over: hand ``record`` to the observers. Fire and forget.

    Emitted once per exchange, last, when the configuration has an observer
    (``ProxyConfig.observed``). Don't subclass.
    """

    record: ExchangeRecord


@dataclass(frozen=True, slots=True)
class TraceIds:
    """An exchange's W3C trace context: ``trace_id`` (32 hex), ``span_id`` (16 hex),
    ``parent_span_id`` (16 hex, or None for a new trace), ``sampled``, and the
    seed its attempts' span ids are drawn from."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    sampled: bool
    seed: bytes

    def attempt_span_id(self, number: int) -> str:
        """The span id of upstream attempt ``number`` (a CLIENT span): the seed's last
        eight bytes stepped by a Weyl sequence (distinct for every attempt, from
        each other and, but once in 2**64, from the exchange's span)."""
        value = (int.from_bytes(self.seed[24:], "big") + number * _WEYL) & _MASK64
        return f"{value or 1:016x}"

    def traceparent(self, number: int) -> bytes:
        """The ``traceparent`` header sent with upstream attempt ``number``."""
        flags = "01" if self.sampled else "00"
        return f"00-{self.trace_id}-{self.attempt_span_id(number)}-{flags}".encode("ascii")


_HEX = frozenset("0123456789abcdef")
_WEYL = 0x9E3779B97F4A7C15  # 2**64 / the golden ratio, odd: number -> id is one to one
_MASK64 = (1 << 64) - 1


def _parse_traceparent(value: bytes | None) -> tuple[str, str, bool] | None:
    """``(trace_id, parent_id, sampled)`` from a valid W3C ``traceparent``, else None."""
    if value is None or len(value) < 55:
        return None
    try:
        text = value.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    parts = text.split("-")
    if len(parts) < 4:
        return None
    version, trace_id, parent_id, flags = parts[:4]
    if (
        len(version) != 2
        or version == "ff"
        or len(trace_id) != 32
        or len(parent_id) != 16
        or len(flags) != 2
        or not _HEX.issuperset(version + trace_id + parent_id + flags)
        or trace_id == "0" * 32
        or parent_id == "0" * 16
        or (version == "00" and len(parts) != 4)
    ):
        return None
    return trace_id, parent_id, bool(int(flags, 16) & 1)


def trace_ids(
    traceparent: bytes | None, *, exchange_id: str, rand: float, sample_ratio: float
) -> TraceIds:
    """The trace context of an exchange: the client's ``traceparent`` continued
    (its sampling decision kept), or a new trace sampled at ``sample_ratio``.

    The ids are drawn from the exchange's id and ``rand`` (the core draws no
    random numbers itself), so the same inputs give the same ids.
    """
    seed = hashlib.blake2b(f"{exchange_id}/{rand!r}".encode(), digest_size=32).digest()
    span_id = seed[16:24].hex()
    if span_id == "0" * 16:
        span_id = "0" * 15 + "1"
    parent = _parse_traceparent(traceparent)
    if parent is not None:
        trace_id, parent_id, sampled = parent
        return TraceIds(trace_id, span_id, parent_id, sampled, seed)
    trace_id = seed[:16].hex()
    if trace_id == "0" * 32:
        trace_id = "0" * 31 + "1"
    # As OpenTelemetry's TraceIdRatioBased: the trace id's low 64 bits against the ratio.
    sampled = int(trace_id[16:], 16) < round(sample_ratio * (1 << 64))
    return TraceIds(trace_id, span_id, None, sampled, seed)


#: The GenAI operation (OpenTelemetry's ``gen_ai.operation.name``) of each endpoint.
OPERATIONS: Mapping[Endpoint | None, str] = {
    "chat": "chat",
    "messages": "chat",
    "responses": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
}


class RequestParams:
    """What the request asks, as observers record it: read once from the parsed body."""

    __slots__ = ("input_messages", "max_tokens", "model", "stream", "temperature", "top_p", "user")

    def __init__(self, body: Mapping[str, Any] | None, *, capture: bool) -> None:
        body = body or {}
        model = body.get("model")
        self.model = model if isinstance(model, str) and model else None
        self.stream = body.get("stream") is True
        self.max_tokens = _first_int(body, ("max_tokens", "max_completion_tokens"))
        if self.max_tokens is None:
            self.max_tokens = _first_int(body, ("max_output_tokens",))
        self.temperature = _number(body.get("temperature"))
        self.top_p = _number(body.get("top_p"))
        user = body.get("user")
        metadata = body.get("metadata")
        if not isinstance(user, str) and isinstance(metadata, dict):
            user = metadata.get("user_id")
        self.user = user[:256] if isinstance(user, str) and user else None
        self.input_messages = _input_messages(body) if capture else None


def _first_int(body: Mapping[str, Any], names: Sequence[str]) -> int | None:
    for name in names:
        value = body.get(name)
        if type(value) is int:
            return value
    return None


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _parts(content: object) -> list[dict[str, Any]]:
    """A message's content as OpenTelemetry GenAI message parts."""
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    parts: list[dict[str, Any]] = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                parts.append({"type": "text", "content": block["text"]})
            elif isinstance(block, dict):
                parts.append({"type": str(block.get("type", "unknown"))})
    return parts


def _input_messages(body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The request's messages as OpenTelemetry GenAI input messages (roles and text)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        prompt = body.get("prompt", body.get("input"))
        if isinstance(prompt, str):
            return [{"role": "user", "parts": [{"type": "text", "content": prompt}]}]
        return None
    out: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        out.append({"role": "system", "parts": _parts(system)})
    for message in messages:
        if isinstance(message, dict):
            role = message.get("role")
            out.append(
                {
                    "role": role if isinstance(role, str) else "user",
                    "parts": _parts(message.get("content")),
                }
            )
    return out


def build_record(
    ex: Context,
    *,
    now: float,
    ids: TraceIds | None,
    params: RequestParams | None,
    relay: Relay | None,
    first_token_at: float | None,
    capture: bool,
    session_header: bytes,
) -> ExchangeRecord:
    """The record of exchange ``ex`` as it stands at ``now`` (complete once it ended):
    ``params`` is what it asked, ``relay`` its last attempt's response."""
    started = ex.started_at
    ended = now if ex.ended_at is None else ex.ended_at
    wall = ex.wall_time
    attempts = tuple(
        AttemptRecord(
            number=a.number,
            span_id="" if ids is None else ids.attempt_span_id(a.number),
            model=a.model,
            provider=a.provider,
            provider_type=a.provider_type,
            upstream_model=a.upstream_model,
            server_address=a.host,
            server_port=a.port,
            started=wall + (a.started_at - started),
            duration=max(0.0, (ended if a.ended_at is None else a.ended_at) - a.started_at),
            delay=a.delay,
            status=a.status,
            outcome=a.outcome,
        )
        for a in ex.attempts
    )
    last = attempts[-1] if attempts else None
    if len(attempts) < 2:
        fallbacks = 0
        upstream = None if last is None else last.duration
    else:
        fallbacks = sum(1 for a in attempts if a.model != attempts[0].model)
        upstream = sum(a.duration for a in attempts)
    model = ex.model if ex.model is not None else None if params is None else params.model
    error = ex.error
    refusal: Literal["rate_limit", "budget"] | None = None
    if error is not None:
        if isinstance(error, ClientRateLimitError):
            refusal = "rate_limit"
        elif isinstance(error, BudgetExceededError):
            refusal = "budget"
    response_id: str | None = None
    response_model: str | None = None
    reasons: tuple[str, ...] = ()
    output = None
    if relay is not None:
        response_id, response_model, reasons = relay.response_info()
        if capture:
            text = relay.output_text()
            if text is not None:
                message: dict[str, Any] = {
                    "role": "assistant",
                    "parts": [{"type": "text", "content": text}],
                }
                if reasons:
                    message["finish_reason"] = reasons[0]
                output = [message]
    session = header(ex.request_headers, session_header)
    first = ex.first_upstream_byte_at
    token = first_token_at
    return ExchangeRecord(
        exchange_id=ex.exchange_id,
        trace_id=None if ids is None else ids.trace_id,
        span_id=None if ids is None else ids.span_id,
        parent_span_id=None if ids is None else ids.parent_span_id,
        sampled=ids is not None and ids.sampled,
        method=ex.request_method.decode("latin-1"),
        path=ex.request_path.decode("latin-1"),
        client_api=ex.client_api,
        operation=OPERATIONS.get(ex.endpoint),
        model=model,
        model_configured=model is not None and model in ex.router.models,
        stream=ex.is_stream,
        max_tokens=None if params is None else params.max_tokens,
        temperature=None if params is None else params.temperature,
        top_p=None if params is None else params.top_p,
        user=None if params is None else params.user,
        session_id=None if session is None else session.decode("latin-1")[:256],
        key_name=getattr(ex.key, "name", None),
        provider=None if last is None else last.provider,
        provider_type=None if last is None else last.provider_type,
        upstream_model=None if last is None else last.upstream_model,
        attempts=attempts,
        retries=max(0, len(attempts) - 1),
        fallbacks=fallbacks,
        status=ex.response_status,
        outcome=ex.outcome or "error",
        error_type=None if error is None else error.error_type,
        error_code=None if error is None else error.code,
        error_message=None if error is None else str(error),
        refusal=refusal,
        usage=ex.usage,
        usage_estimated=ex.usage_estimated,
        cost_usd=ex.cost_usd,
        response_id=response_id,
        response_model=response_model,
        finish_reasons=reasons,
        started=wall,
        duration=max(0.0, ended - started),
        upstream_duration=upstream,
        time_to_first_byte=None if first is None else first - started,
        time_to_first_token=None if token is None or not ex.is_stream else token - started,
        input_messages=None if params is None else params.input_messages,
        output_messages=output,
    )
