"""The exchange as its hooks see it, and how an answer leaves it.

:class:`ExchangeContext` holds everything an exchange knows -- the request,
the route, the attempts, the response, the usage, the outcome -- and the one
way each kind of answer reaches the client: a response head (after the
``on_response_head`` hooks), a body chunk or SSE blocks (after their hooks;
nothing at all to a HEAD request), an error in the client API's shape, and
the completion that runs ``on_complete``. :class:`~core.Exchange` adds the
state machine that decides which of these happens when.
"""

from __future__ import annotations

import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

from ._commands import (
    AcquireQuota,
    CancelUpstream,
    Command,
    EndResponse,
    Log,
    SendBody,
    StartResponse,
)
from ._config import LimitsConfig, ProxyConfig
from ._endpoints import ApiName, Endpoint
from ._errors import (
    BudgetExceededError,
    ClientRateLimitError,
    InternalError,
    ProtocolError,
    RemoteProtocolError,
)
from ._events import (
    Event,
)
from ._headers import Headers, header
from ._http import parse_json_object
from ._middleware import Attempt, Pipeline, Retry
from ._record import AttemptRecord, ExchangeRecord, RecordExchange, TraceIds, trace_ids
from ._relay import Relay
from ._render import error_headers, render_error, render_error_event
from ._sse import is_final_event
from ._state import State
from .gateway import Deployment, Router, Usage, cost_usd
from .gateway._plan import Plan

__all__ = ["ExchangeContext", "Shared"]


class Shared(Protocol):
    """What every exchange of a proxy shares (``core.Proxy`` is one): built once."""

    @property
    def config(self) -> ProxyConfig: ...
    @property
    def limits(self) -> LimitsConfig: ...
    @property
    def router(self) -> Router: ...
    @property
    def pipeline(self) -> Pipeline: ...
    @property
    def mock_stream_delay(self) -> float: ...
    @property
    def observed(self) -> bool: ...
    @property
    def tracing(self) -> bool: ...
    @property
    def sample_ratio(self) -> float: ...
    @property
    def capture_content(self) -> bool: ...
    @property
    def session_header(self) -> bytes: ...
    @property
    def metrics_path(self) -> bytes | None: ...
    @property
    def metrics_guard(self) -> Callable[[Headers], bool] | None: ...


def _outcome(error: ProtocolError) -> str:
    if error.code == "upstream_timeout":
        return "timeout"
    if error.error_type == "upstream_error":
        return "upstream_error"
    return "rejected"


#: The GenAI operation (OpenTelemetry's ``gen_ai.operation.name``) of each endpoint.
_OPERATIONS: Mapping[Endpoint | None, str] = {
    "chat": "chat",
    "messages": "chat",
    "responses": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
}


class _Params:
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


_END_OK = EndResponse(complete=True)
_END_CUT = EndResponse(complete=False)


class ExchangeContext:
    """An exchange as its hooks see it, and how its answers leave. Don't subclass.

    Public attributes are the context middleware hooks read: the request
    (``request_method``, ``request_target``, ``request_path``, ``request_query``,
    ``request_headers``, ``request_body`` once complete), the response
    (``response_status``, ``response_headers``, ``is_stream``), timings
    (``started_at``, ``first_upstream_byte_at``, ``ended_at``, all in the
    driver's ``now`` units, and ``wall_time``, the start as a UNIX time), and the
    result (``outcome``, ``error``). ``scratch`` holds per-exchange middleware
    state, keyed by whatever the middleware likes (usually itself).
    """

    #: Each state's handlers (``Exchange`` fills it in from ``TRANSITIONS``).
    _DISPATCH: ClassVar[Mapping[State, Mapping[type[Event], Callable[[Any, Any, float], None]]]]

    __slots__ = (
        "_attempt",
        "_body_chunks",
        "_body_size",
        "_commands",
        "_deadline",
        "_dispatch",
        "_final_sent",
        "_head",
        "_hook_index",
        "_json",
        "_json_for",
        "_local_blocks",
        "_params",
        "_plan",
        "_proxy",
        "_query",
        "_query_id",
        "_rand",
        "_read_timeout",
        "_relay",
        "_retry",
        "_trace",
        "_upstream_active",
        "attempts",
        "client_api",
        "cost_usd",
        "deployment",
        "ended_at",
        "endpoint",
        "error",
        "exchange_id",
        "first_token_at",
        "first_upstream_byte_at",
        "is_stream",
        "key",
        "model",
        "now",
        "outcome",
        "request_body",
        "request_headers",
        "request_method",
        "request_path",
        "request_query",
        "request_target",
        "response_headers",
        "response_status",
        "scratch",
        "started_at",
        "state",
        "upstream_url",
        "usage",
        "usage_estimated",
        "wall_time",
    )

    def __init__(
        self, proxy: Shared, *, exchange_id: str, now: float, wall_time: float, rand: float = 0.0
    ) -> None:
        self._proxy = proxy
        self._rand = rand
        self._read_timeout = 0.0
        self._plan: Plan | None = None
        self._relay: Relay | None = None
        self._hook_index = 0
        self._query_id = 0
        self._query: AcquireQuota | None = None
        self._retry: Retry | None = None
        # The request body parsed (or the error parsing it gave), until it is sent.
        self._json: dict[str, Any] | RemoteProtocolError | None = None
        self._json_for: bytes | None = None
        self.attempts: list[Attempt] = []
        self.key: Any = None
        self.now = now
        self.client_api: ApiName = "openai"
        self.endpoint: Endpoint | None = None
        self.model: str | None = None
        self.deployment: Deployment | None = None
        self.usage: Usage | None = None
        self.usage_estimated = False
        self._final_sent = False
        self._head = False  # a HEAD request: every answer is sent without its body
        self.cost_usd: float | None = None
        self.exchange_id = exchange_id
        self.started_at = now
        self.wall_time = wall_time
        self.state = State.RECV_HEAD
        self._dispatch = self._DISPATCH[State.RECV_HEAD]
        self._commands: deque[Command] = deque()
        self._deadline: float | None = None
        self._attempt = 0
        self._upstream_active = False
        self._local_blocks: deque[bytes] = deque()
        self._body_chunks: list[bytes] = []
        self._body_size = 0
        self.request_method = b""
        self.request_target = b""
        self.request_path = b""
        self.request_query = b""
        self.request_headers: Headers = ()
        self.request_body = b""
        self.response_status: int | None = None
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.is_stream = False
        self.first_upstream_byte_at: float | None = None
        #: When the first stream event went to the client (time to first token).
        self.first_token_at: float | None = None
        self._params: _Params | None = None
        self._trace: TraceIds | None = None
        self.ended_at: float | None = None
        self.outcome: str | None = None
        self.error: ProtocolError | None = None
        self.upstream_url: str | None = None
        self.scratch: dict[Any, Any] = {}

    @property
    def upstream_attempt(self) -> int | None:
        """The upstream attempt the exchange is waiting on, ``None`` if none runs."""
        return self._attempt if self._upstream_active else None

    @property
    def finished(self) -> bool:
        """True once the response is over (or the exchange broke)."""
        return self.state is State.DONE or self.state is State.ERROR

    def emit(self, command: Command) -> None:
        """Queue a command for the driver (middleware use this too)."""
        self._commands.append(command)

    @property
    def router(self) -> Router:
        """The gateway's models and deployments (what a retry may fall back to)."""
        return self._proxy.router

    @property
    def seed(self) -> float:
        """The number in [0, 1) the driver gave this exchange (routing, retry jitter)."""
        return self._rand

    @property
    def wall_now(self) -> float:
        """UNIX time of the event being handled (``wall_time`` plus time elapsed)."""
        return self.wall_time + (self.now - self.started_at)

    def new_query_id(self) -> int:
        """A fresh id for a command that needs a reply (``AcquireQuota``)."""
        self._query_id += 1
        return self._query_id

    def request_json(self) -> dict[str, Any] | None:
        """The request body as a JSON object, parsed once (``None`` if it is not one,
        or is over the JSON limits).

        Parsed again only if a hook replaced ``request_body``, or after routing (the
        parse is not kept while the response runs). Treat it as read-only.
        """
        value = self._request_object()
        return value if isinstance(value, dict) else None

    def _request_object(self) -> dict[str, Any] | RemoteProtocolError | None:
        """``request_json()``, or why the body is not a JSON object (None: no body)."""
        body = self.request_body
        value = self._json
        if self._json_for is not body:
            value = None
            if body:
                try:
                    value = parse_json_object(body, max_items=self._proxy.limits.max_json_items)
                except RemoteProtocolError as exc:
                    value = exc
            self._json, self._json_for = value, body
        return value

    def _set_state(self, state: State) -> None:
        self.state = state
        self._dispatch = self._DISPATCH[state]

    def _answer(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, now: float
    ) -> None:
        if header(headers, b"content-length") is None:
            headers.append((b"content-length", str(len(body)).encode()))
        self._start_response(status, headers)
        self._send_body(body)
        self._commands.append(_END_OK)
        self._complete("completed", now)

    def _settle_usage(self) -> None:
        """Take the attempt's usage (read from the stream or the answer) and price it."""
        relay = self._relay
        settled = None if relay is None else relay.settle(-(-len(self.request_body) // 4))
        if settled is None:
            return
        usage, self.usage_estimated = settled
        self.usage = usage
        if usage is not None and self.deployment is not None:
            self.cost_usd = cost_usd(usage, self.deployment.price)

    def _cancel_upstream(self) -> None:
        if self._upstream_active:
            self._upstream_active = False
            self._commands.append(CancelUpstream(attempt=self._attempt))

    def _start_response(
        self, status: int, headers: list[tuple[bytes, bytes]], *, hooks: bool = True
    ) -> None:
        headers.append((b"x-sansproxy-id", self.exchange_id.encode("ascii", "replace")))
        self.response_status = status
        self.response_headers = headers
        if hooks:
            for hook in self._proxy.pipeline.on_response_head:
                hook(self)
        self._commands.append(StartResponse(status=status, headers=self.response_headers))

    def _send_body(self, data: bytes) -> None:
        if self._head:  # the head says how long the body is; the body is not sent
            return
        for hook in self._proxy.pipeline.on_response_data:
            data = hook(self, data)
        if data:
            self._commands.append(SendBody(data=data))

    def _send_blocks(self, blocks: Sequence[bytes]) -> None:
        if self._head:
            return
        hooks = self._proxy.pipeline.on_stream_event
        if hooks:
            out: list[bytes] = []
            for block in blocks:
                changed = self._stream_hooks(hooks, block)
                if changed is not None:
                    out.append(changed)
            blocks = out
        if blocks:
            if self.first_token_at is None:
                self.first_token_at = self.now
            data = blocks[0] if len(blocks) == 1 else b"".join(blocks)
            self._commands.append(SendBody(data=data))
            if is_final_event(blocks[-1]):
                self._final_sent = True

    def _stream_hooks(
        self, hooks: tuple[Callable[[Any, bytes], bytes | None], ...], block: bytes
    ) -> bytes | None:
        for hook in hooks:
            changed = hook(self, block)
            if changed is None:
                return None
            block = changed
        return block

    def _fail(self, error: ProtocolError, now: float) -> None:
        """Answer with ``error``: an error response, an SSE error event, or a cut."""
        self.error = error
        status = error.error_status_hint
        self._commands.append(
            Log(
                level="warning" if status < 500 else "error",
                message=str(error),
                fields={"exchange": self.exchange_id, "status": status, "code": error.code},
            )
        )
        for hook in self._proxy.pipeline.on_error:
            hook(self, error)
        if self.response_status is None:
            body = render_error(error, api=self.client_api)
            self._start_response(status, error_headers(body, error.headers))
            self._send_body(body)
            self._commands.append(_END_OK)
        elif self.is_stream:
            self._send_blocks((render_error_event(error, api=self.client_api),))
            self._commands.append(_END_OK)
        else:
            self._commands.append(_END_CUT)
        self._complete(_outcome(error), now)

    def _complete(self, outcome: str, now: float, *, hooks: bool = True) -> None:
        # A relayed stream cut short still used tokens: count them.
        self._settle_usage()
        self.outcome = outcome
        self.ended_at = now
        self._deadline = None
        self._set_state(State.DONE)
        if hooks:
            for hook in self._proxy.pipeline.on_complete:
                hook(self)
            if self._proxy.observed:
                self._commands.append(RecordExchange(self.record()))

    def trace_ids(self) -> TraceIds:
        """The exchange's W3C trace context (the client's ``traceparent`` continued)."""
        ids = self._trace
        if ids is None:
            ids = self._trace = trace_ids(
                header(self.request_headers, b"traceparent"),
                exchange_id=self.exchange_id,
                rand=self._rand,
                sample_ratio=self._proxy.sample_ratio,
            )
        return ids

    def _note_request(self) -> None:
        """Read what observers record of the request, once, while it is parsed."""
        if self._params is None and self._proxy.observed:
            parsed = self._request_object()
            self._params = _Params(
                parsed if isinstance(parsed, dict) else None,
                capture=self._proxy.capture_content,
            )

    def record(self) -> ExchangeRecord:
        """The exchange as observers see it (complete once it has ended)."""
        proxy = self._proxy
        started = self.started_at
        ended = self.now if self.ended_at is None else self.ended_at
        wall = self.wall_time
        attempts = tuple(
            AttemptRecord(
                number=a.number,
                span_id=self.trace_ids().attempt_span_id(a.number) if proxy.tracing else "",
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
            for a in self.attempts
        )
        last = attempts[-1] if attempts else None
        params = self._params
        if params is None and self.request_body and self.endpoint is not None:
            self._note_request()
            params = self._params
        model = self.model if self.model is not None else None if params is None else params.model
        error = self.error
        relay = self._relay
        response_id: str | None = None
        response_model: str | None = None
        reasons: tuple[str, ...] = ()
        output = None
        if relay is not None:
            response_id, response_model, reasons = relay.response_info()
            if proxy.capture_content:
                text = relay.output_text()
                if text is not None:
                    message: dict[str, Any] = {
                        "role": "assistant",
                        "parts": [{"type": "text", "content": text}],
                    }
                    if reasons:
                        message["finish_reason"] = reasons[0]
                    output = [message]
        ids = self.trace_ids() if proxy.tracing else None
        session = header(self.request_headers, proxy.session_header)
        first = self.first_upstream_byte_at
        token = self.first_token_at
        return ExchangeRecord(
            exchange_id=self.exchange_id,
            trace_id=None if ids is None else ids.trace_id,
            span_id=None if ids is None else ids.span_id,
            parent_span_id=None if ids is None else ids.parent_span_id,
            sampled=ids is not None and ids.sampled,
            method=self.request_method.decode("latin-1"),
            path=self.request_path.decode("latin-1"),
            client_api=self.client_api,
            operation=_OPERATIONS.get(self.endpoint),
            model=model,
            model_configured=model is not None and model in proxy.router.models,
            stream=self.is_stream,
            max_tokens=None if params is None else params.max_tokens,
            temperature=None if params is None else params.temperature,
            top_p=None if params is None else params.top_p,
            user=None if params is None else params.user,
            session_id=None if session is None else session.decode("latin-1")[:256],
            key_name=getattr(self.key, "name", None),
            provider=None if last is None else last.provider,
            provider_type=None if last is None else last.provider_type,
            upstream_model=None if last is None else last.upstream_model,
            attempts=attempts,
            retries=max(0, len(attempts) - 1),
            fallbacks=sum(1 for a in attempts if a.model != attempts[0].model),
            status=self.response_status,
            outcome=self.outcome or "error",
            error_type=None if error is None else error.error_type,
            error_code=None if error is None else error.code,
            error_message=None if error is None else str(error),
            refusal="rate_limit"
            if isinstance(error, ClientRateLimitError)
            else "budget"
            if isinstance(error, BudgetExceededError)
            else None,
            usage=self.usage,
            usage_estimated=self.usage_estimated,
            cost_usd=self.cost_usd,
            response_id=response_id,
            response_model=response_model,
            finish_reasons=reasons,
            started=wall,
            duration=max(0.0, ended - started),
            upstream_duration=sum(a.duration for a in attempts) if attempts else None,
            time_to_first_byte=None if first is None else first - started,
            time_to_first_token=None if token is None or not self.is_stream else token - started,
            input_messages=None if params is None else params.input_messages,
            output_messages=output,
        )

    def _internal_error(self, exc: Exception, now: float) -> None:
        """A bug (usually in a middleware hook): log it, answer 500 or cut, stay sane."""
        self._commands.append(
            Log(
                level="error",
                message=f"internal error: {type(exc).__name__}: {exc}",
                fields={
                    "exchange": self.exchange_id,
                    "traceback": "".join(traceback.format_exception(exc)),
                },
            )
        )
        self._cancel_upstream()
        if self.state is State.DONE:
            return
        error = InternalError("internal error in the proxy")
        self.error = error
        if self.response_status is None:
            body = render_error(error, api=self.client_api)
            self._commands.append(StartResponse(status=500, headers=error_headers(body)))
            if not self._head:
                self._commands.append(SendBody(data=body))
            self._commands.append(_END_OK)
            self.response_status = 500
        else:
            self._commands.append(_END_CUT)
        self.outcome = "error"
        self.ended_at = now
        self._deadline = None
        self._set_state(State.DONE)
        if self._proxy.observed:
            try:
                self._commands.append(RecordExchange(self.record()))
            except Exception as bug:  # in the record itself: the answer above still goes out
                self._commands.append(
                    Log(
                        level="error",
                        message=f"internal error recording the exchange: {bug!r}",
                        fields={"exchange": self.exchange_id},
                    )
                )
