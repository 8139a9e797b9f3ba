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
from dataclasses import dataclass
from typing import Any, Literal

from ._commands import Command
from .gateway import Usage

__all__ = ["AttemptRecord", "ExchangeRecord", "RecordExchange", "TraceIds", "trace_ids"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptRecord:
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


@dataclass(frozen=True, slots=True, kw_only=True)
class ExchangeRecord:
    """Everything about one exchange an observer needs, once it has ended.

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
        """The span id of upstream attempt ``number`` (a CLIENT span)."""
        digest = hashlib.blake2b(number.to_bytes(4, "big"), digest_size=8, key=self.seed)
        value = digest.hexdigest()
        return value if value != "0" * 16 else "0" * 15 + "1"

    def traceparent(self, number: int) -> bytes:
        """The ``traceparent`` header sent with upstream attempt ``number``."""
        flags = "01" if self.sampled else "00"
        return f"00-{self.trace_id}-{self.attempt_span_id(number)}-{flags}".encode("ascii")


_HEX = frozenset("0123456789abcdef")


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
