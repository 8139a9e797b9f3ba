"""The record of an exchange: what observers (logs, metrics, spans) see of it.

When an exchange ends, the core emits one :class:`RecordExchange` command
holding an :class:`ExchangeRecord`: complete and immutable. The access log,
the metrics and the span exporter in ``adapters/`` are its consumers; none of
them parses a body again. Times are UNIX seconds (``started``) and durations
in seconds. Nothing in a record is a secret: no header, no key, no body but
the messages ``telemetry.capture_content`` asks for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, Literal, NamedTuple

from ._commands import Command
from ._endpoints import Endpoint
from ._errors import BudgetExceededError, ClientRateLimitError
from ._headers import header
from ._middleware import Attempt, Context
from ._params import NO_VALUES, RequestParams
from ._relay import Relay
from ._traceids import TraceIds, trace_ids
from .gateway import Usage

__all__ = [
    "OPERATIONS",
    "AttemptRecord",
    "ExchangeRecord",
    "ExchangeTotals",
    "RecordExchange",
    "RequestParams",
    "TraceIds",
    "record_source",
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
    What only spans show is read only when they are exported (``telemetry``
    on): ``max_tokens``, ``temperature``, ``top_p``, ``user``, ``session_id``,
    ``response_id``, ``response_model`` and the messages are None and
    ``finish_reasons`` empty otherwise.
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


class ExchangeTotals(NamedTuple):
    """What a counter needs of an exchange (the metrics): 18 of its record's
    fields, or what follows from them, made without building the record.

    ``model``, ``model_configured``, ``provider``, ``client_api``, ``status``,
    ``outcome``, ``key_name``, ``stream``, ``duration``, ``upstream_duration``,
    ``time_to_first_token``, ``usage``, ``cost_usd``, ``refusal``, ``retries``
    and ``fallbacks`` are the record's (a time to first token only for a
    stream); ``served_model`` is the public model
    that answered (the last attempt's on a fallback, else ``model``);
    ``failures`` the ``(provider, outcome)`` of each attempt that failed
    (an outcome neither ``ok`` nor ``None``), in order.
    """

    model: str | None
    model_configured: bool
    provider: str | None
    client_api: Literal["openai", "anthropic"]
    status: int | None
    outcome: str
    key_name: str | None
    stream: bool
    duration: float
    upstream_duration: float | None
    time_to_first_token: float | None
    usage: Usage | None
    cost_usd: float | None
    refusal: Literal["rate_limit", "budget"] | None
    retries: int
    fallbacks: int
    served_model: str | None
    failures: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, record: ExchangeRecord) -> ExchangeTotals:
        """The totals of a record already built."""
        attempts = record.attempts
        served = record.model
        if record.fallbacks and attempts:
            served = attempts[-1].model or served
        return _new_totals(
            (
                record.model,
                record.model_configured,
                record.provider,
                record.client_api,
                record.status,
                record.outcome,
                record.key_name,
                record.stream,
                record.duration,
                record.upstream_duration,
                record.time_to_first_token if record.stream else None,
                record.usage,
                record.cost_usd,
                record.refusal,
                record.retries,
                record.fallbacks,
                served,
                tuple(
                    (a.provider, a.outcome)
                    for a in attempts
                    if a.outcome is not None and a.outcome != "ok"
                ),
            )
        )


class RecordExchange(Command):
    """The exchange is over: hand ``record`` to the observers. Fire and forget.

    Emitted once per exchange, last, when the configuration has an observer
    (``ProxyConfig.observed``). The core takes what the record is made of when
    the exchange ends (a few references); ``record`` is built the first time it
    is read, by whichever thread reads it (the sinks read it in theirs, off the
    response path), and the same record is returned after. Known without the
    record: ``sampled`` (whether the exchange's spans are to be exported),
    ``attempt_count`` (``len(record.attempts)``) and ``totals`` (what the
    metrics count: an ``ExchangeTotals``, made in a third of the record's time).
    ``RecordExchange(record)`` holds a record already built. Don't subclass.
    """

    __slots__ = ("_record", "_source", "sampled")

    def __init__(self, record: ExchangeRecord) -> None:
        self._record: ExchangeRecord | None = record
        self._source: _Source | None = None
        self.sampled: bool = record.sampled

    @classmethod
    def _of(cls, source: _Source, sampled: bool) -> RecordExchange:
        """The command of an exchange that ended: its record made from ``source`` when read."""
        command = object.__new__(cls)
        command._record = None
        command._source = source
        command.sampled = sampled
        return command

    @property
    def attempt_count(self) -> int:
        """How many upstream attempts the exchange made (without building the record)."""
        source = self._source
        return len(source.attempts if source is not None else self.record.attempts)

    @property
    def totals(self) -> ExchangeTotals:
        """What a counter needs of the exchange (without building the record)."""
        source = self._source
        return source.totals() if source is not None else ExchangeTotals.of(self.record)

    @property
    def record(self) -> ExchangeRecord:
        """The exchange's record (built on first read)."""
        record = self._record
        if record is None:
            assert self._source is not None
            # Two threads reading at once build two equal records; either is kept.
            record = self._record = self._source.build()
        return record

    def __repr__(self) -> str:
        return f"RecordExchange({self.record!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RecordExchange):
            return NotImplemented
        return self.record == other.record

    __hash__ = None  # type: ignore[assignment]


#: The GenAI operation (OpenTelemetry's ``gen_ai.operation.name``) of each endpoint.
OPERATIONS: Mapping[Endpoint | None, str] = {
    "chat": "chat",
    "messages": "chat",
    "responses": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
}


class _Source(NamedTuple):
    """What an exchange's record is made of, taken when it ends (``capture``): a
    tuple of references and small values, cheap to take on the response path.
    Nothing in it is mutated once the exchange has ended, and it holds nothing
    large (no body, no parsed JSON, no traceback): the sinks may keep it a while.
    ``build`` makes the record."""

    exchange_id: str
    ids: TraceIds | None
    method: bytes
    path: bytes
    client_api: Literal["openai", "anthropic"]
    endpoint: Endpoint | None
    model: str | None
    models: Mapping[str, Any]
    params: RequestParams | None
    stream: bool
    session: bytes | None
    key_name: str | None
    attempts: Sequence[Attempt]
    status: int | None
    outcome: str | None
    error: tuple[str, str | None, str, Literal["rate_limit", "budget"] | None] | None
    usage: Usage | None
    usage_estimated: bool
    cost_usd: float | None
    response: tuple[str | None, str | None, tuple[str, ...]] | None
    output_text: str | None
    started_at: float
    ended_at: float
    wall_time: float
    first_byte_at: float | None
    first_token_at: float | None

    def totals(self) -> ExchangeTotals:
        """The exchange's ``ExchangeTotals``: as ``ExchangeTotals.of(self.build())``."""
        started = self.started_at
        ended = self.ended_at
        duration = ended - started
        duration = duration if duration > 0.0 else 0.0  # as max(0.0, ...), a call fewer
        attempts = self.attempts
        model = self.model
        if model is None:
            params = self.params
            model = None if params is None else params.model
        served = model
        retries = fallbacks = 0
        failures: tuple[tuple[str, str], ...] = ()
        if not attempts:
            provider = upstream = None
        elif len(attempts) == 1:  # most exchanges: as below, without the loops
            last = attempts[0]
            provider = last.provider
            upstream = _attempt_duration(last, ended)
            outcome = last.outcome
            if outcome is not None and outcome != "ok":
                failures = ((provider, outcome),)
        else:
            last = attempts[-1]
            provider = last.provider
            for a in attempts:
                outcome = a.outcome
                if outcome is not None and outcome != "ok":
                    failures += ((a.provider, outcome),)
            retries = len(attempts) - 1
            first = attempts[0].model
            fallbacks = sum(1 for a in attempts if a.model != first)
            upstream = sum(_attempt_duration(a, ended) for a in attempts)
            if fallbacks:
                served = last.model or model
        error = self.error
        token = self.first_token_at
        return _new_totals(
            (
                model,
                model is not None and model in self.models,
                provider,
                self.client_api,
                self.status,
                self.outcome or "error",
                self.key_name,
                self.stream,
                duration,
                upstream,
                None if token is None or not self.stream else token - started,
                self.usage,
                self.cost_usd,
                None if error is None else error[3],
                retries,
                fallbacks,
                served,
                failures,
            )
        )

    def build(self) -> ExchangeRecord:
        """The record (see ``ExchangeRecord``)."""
        started = self.started_at
        ended = self.ended_at
        duration = ended - started
        duration = duration if duration > 0.0 else 0.0  # as max(0.0, ...), a call fewer
        wall = self.wall_time
        ids = self.ids
        attempts = tuple(  # from a list: a generator costs more
            [
                _new_attempt(
                    (
                        a.number,
                        "" if ids is None else ids.attempt_span_id(a.number),
                        a.model,
                        a.provider,
                        a.provider_type,
                        a.upstream_model,
                        a.host,
                        a.port,
                        wall + (a.started_at - started),
                        _attempt_duration(a, ended),
                        a.delay,
                        a.status,
                        a.outcome,
                    )
                )
                for a in self.attempts
            ]
        )
        last = attempts[-1] if attempts else None
        if len(attempts) < 2:
            fallbacks = 0
            upstream = None if last is None else last.duration
        else:
            fallbacks = sum(1 for a in attempts if a.model != attempts[0].model)
            upstream = sum(a.duration for a in attempts)
        params = self.params
        asked, _, max_tokens, temperature, top_p, user = (
            NO_VALUES if params is None else params.values()
        )
        model = self.model if self.model is not None else asked
        error = self.error
        response_id, response_model, reasons = self.response or (None, None, ())
        output = None
        if self.output_text is not None:
            message: dict[str, Any] = {
                "role": "assistant",
                "parts": [{"type": "text", "content": self.output_text}],
            }
            if reasons:
                message["finish_reason"] = reasons[0]
            output = [message]
        session = self.session
        first = self.first_byte_at
        token = self.first_token_at
        return _new_record(
            (
                self.exchange_id,
                None if ids is None else ids.trace_id,
                None if ids is None else ids.span_id,
                None if ids is None else ids.parent_span_id,
                ids is not None and ids.sampled,
                self.method.decode("latin-1"),
                self.path.decode("latin-1"),
                self.client_api,
                OPERATIONS.get(self.endpoint),
                model,
                model is not None and model in self.models,
                self.stream,
                max_tokens,
                temperature,
                top_p,
                user,
                None if session is None else session.decode("latin-1")[:256],
                self.key_name,
                None if last is None else last.provider,
                None if last is None else last.provider_type,
                None if last is None else last.upstream_model,
                attempts,
                len(attempts) - 1 if attempts else 0,
                fallbacks,
                self.status,
                self.outcome or "error",
                None if error is None else error[0],
                None if error is None else error[1],
                None if error is None else error[2],
                None if error is None else error[3],
                self.usage,
                self.usage_estimated,
                self.cost_usd,
                response_id,
                response_model,
                reasons,
                wall,
                duration,
                upstream,
                None if first is None else first - started,
                None if token is None or not self.stream else token - started,
                None if params is None else params.input_messages,
                output,
            )
        )


# Named tuples built from a tuple of every field, in order, without the keyword
# handling of their constructors (a third of the instructions on a 43-field one).
_new_source = partial(tuple.__new__, _Source)
_new_attempt = partial(tuple.__new__, AttemptRecord)
_new_record = partial(tuple.__new__, ExchangeRecord)
_new_totals = partial(tuple.__new__, ExchangeTotals)


def _attempt_duration(attempt: Attempt, ended: float) -> float:
    """An attempt's duration (to the exchange's end if it was still running)."""
    end = attempt.ended_at
    duration = (ended if end is None else end) - attempt.started_at
    return duration if duration > 0.0 else 0.0


def record_source(
    ex: Context,
    *,
    now: float,
    ids: TraceIds | None,
    params: RequestParams | None,
    relay: Relay | None,
    first_token_at: float | None,
    capture: bool,
    session_header: bytes | None,
) -> _Source:
    """What the record of exchange ``ex`` is made of, as it stands at ``now``
    (complete once it ended): ``params`` is what it asked, ``relay`` its last
    attempt's response (its id, model and finish reasons; None: not read),
    ``session_header`` the header naming a session (None: not read). Cheap: the
    record is built from it later (``build``)."""
    error = ex.error
    failure = None
    if error is not None:
        refusal: Literal["rate_limit", "budget"] | None = None
        if isinstance(error, ClientRateLimitError):
            refusal = "rate_limit"
        elif isinstance(error, BudgetExceededError):
            refusal = "budget"
        failure = (error.error_type, error.code, str(error), refusal)
    return _new_source(
        (
            ex.exchange_id,
            ids,
            ex.request_method,
            ex.request_path,
            ex.client_api,
            ex.endpoint,
            ex.model,
            ex.router.models,
            params,
            ex.is_stream,
            None if session_header is None else header(ex.request_headers, session_header),
            getattr(ex.key, "name", None),
            ex.attempts,
            ex.response_status,
            ex.outcome,
            failure,
            ex.usage,
            ex.usage_estimated,
            ex.cost_usd,
            None if relay is None else relay.response_info(),
            relay.output_text() if capture and relay is not None else None,
            ex.started_at,
            now if ex.ended_at is None else ex.ended_at,
            ex.wall_time,
            ex.first_upstream_byte_at,
            first_token_at,
        ),
    )
