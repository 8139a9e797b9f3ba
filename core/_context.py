"""The exchange as its hooks see it, and how an answer leaves it.

:class:`ExchangeContext` holds everything an exchange knows -- the request,
the route, the attempts, the response, the usage, the outcome -- and the one
way each kind of answer reaches the client: a response head (after the
``on_response_head`` hooks), a body chunk or SSE blocks (after their hooks;
nothing at all to a HEAD request), an error in the client API's shape, and
the completion that runs ``on_complete``. :class:`~core.Exchange` adds the
state machine that decides which happens when. The mock's answers leave here too.
"""

from __future__ import annotations

import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

from ._commands import (
    AcquireQuota,
    CancelUpstream,
    CollectMetrics,
    Command,
    EndResponse,
    Log,
    SendBody,
    StartResponse,
)
from ._config import LimitsConfig, ProxyConfig
from ._endpoints import ApiName, Endpoint
from ._errors import (
    AuthenticationError,
    InternalError,
    ProtocolError,
    RemoteProtocolError,
    ServiceUnavailableError,
    ValidationError,
    detached,
)
from ._events import (
    Event,
    MetricsCollected,
    TimerFired,
)
from ._frozen import unchecked
from ._headers import Headers, header
from ._http import parse_json_object
from ._middleware import Attempt, Pipeline, Retry
from ._record import (
    ExchangeRecord,
    RecordExchange,
    RequestParams,
    TraceIds,
    _Source,
    record_source,
    trace_ids,
)
from ._relay import Relay
from ._render import error_headers, render_error, render_error_event
from ._state import State
from .gateway import Deployment, Router, Usage, cost_usd
from .gateway._mock import mock_answer
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


_END_OK = EndResponse(complete=True)
_COLLECT_METRICS = CollectMetrics()
_METRICS_TIMEOUT = 10.0  # seconds the driver may take to collect the metrics
_END_CUT = EndResponse(complete=False)
# Commands the core builds from parts it checked, without checking them again.
_head_command = unchecked(StartResponse)
_body_command = unchecked(SendBody)


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
        "_client_traceparent",
        "_commands",
        "_deadline",
        "_dispatch",
        "_head",
        "_hook_index",
        "_json",
        "_json_for",
        "_last_block",
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
        self._last_block = b""  # the last SSE block sent: the stream's final event?
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
        self._local_blocks: deque[bytes] | None = None  # a mock stream's, paced
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
        self._params: RequestParams | None = None
        self._trace: TraceIds | None = None
        self._client_traceparent = False
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
                    value = detached(exc)
            self._json, self._json_for = value, body
        return value

    def _set_state(self, state: State) -> None:
        self.state = state
        self._dispatch = self._DISPATCH[state]
        if (state is State.DONE or state is State.ERROR) and self._relay is not None:
            # Over: the relay lets go of the exchange, which reference counting then
            # frees (a cycle would wait for the collector: see core._relay).
            self._relay.detach()

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
        pipeline = self._proxy.pipeline
        head_hooks = pipeline.on_response_head if hooks else ()
        for hook in head_hooks:
            hook(self)
        # The core's own, or left by built-in hooks: well-formed; a custom hook's: checked.
        mine = pipeline.builtin or not (head_hooks or pipeline.on_request)
        build = _head_command if mine else StartResponse
        self._commands.append(build(status=status, headers=self.response_headers))

    def _answer_mock(self, now: float) -> None:
        answer = mock_answer(
            b"GET" if self._head else self.request_method,
            self.request_path,
            self.request_body,
            exchange_id=self.exchange_id,
            created=int(self.wall_time),
            max_json_items=self._proxy.limits.max_json_items,
        )
        self.usage = answer.usage  # what the answer says it used, as a trace records it
        if not answer.stream:
            self._answer(answer.status, list(answer.headers), answer.body, now)
            return
        self.is_stream = True
        self._start_response(answer.status, list(answer.headers))
        delay = self._proxy.mock_stream_delay
        if delay <= 0:
            self._send_blocks(answer.blocks)
            self._commands.append(_END_OK)
            self._complete("completed", now)
            return
        self._local_blocks = blocks = deque(answer.blocks)
        self._send_blocks((blocks.popleft(),))
        self._deadline = now + delay
        self._set_state(State.LOCAL_STREAM)

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
        build = _body_command  # the core's own blocks: bytes
        if hooks:
            out: list[bytes] = []
            for block in blocks:
                changed = self._stream_hooks(hooks, block)
                if changed is not None:
                    out.append(changed)
            blocks = out
            build = SendBody
        if blocks:
            if self.first_token_at is None:
                self.first_token_at = self.now
            data = blocks[0] if len(blocks) == 1 else b"".join(blocks)
            self._commands.append(build(data=data))
            self._last_block = blocks[-1]  # judged only if the client leaves

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
        self.error = detached(error)
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
                source = self._record_source()
                ids = source.ids
                self._commands.append(
                    RecordExchange._of(source, sampled=ids is not None and ids.sampled)
                )

    def trace_ids(self) -> TraceIds:
        """The exchange's W3C trace context (the client's ``traceparent`` continued)."""
        ids = self._trace
        if ids is None:
            traceparent = header(self.request_headers, b"traceparent")
            self._client_traceparent = traceparent is not None
            ids = self._trace = trace_ids(
                traceparent,
                exchange_id=self.exchange_id,
                rand=self._rand,
                sample_ratio=self._proxy.sample_ratio,
            )
        return ids

    def _spanned(self) -> bool:  # whether the exchange's spans are exported
        return self._proxy.tracing and self.trace_ids().sampled

    def _note_request(self, spanned: bool) -> None:
        """Read what observers record of the request, once, while it is parsed: its
        parameters if its spans are exported (``spanned``: they alone show them), else
        the model when it was not routed (the model asked is then the record's)."""
        proxy = self._proxy
        if self._params is None and (spanned or self.model is None) and proxy.observed:
            parsed = self._request_object()
            body = parsed if type(parsed) is dict else None
            self._params = (
                RequestParams(body, capture=proxy.capture_content)
                if spanned
                else RequestParams.asking(body)
            )

    def record(self) -> ExchangeRecord:
        """The exchange as observers see it (complete once it has ended)."""
        return self._record_source().build()

    def _record_source(self) -> _Source:
        """What the exchange's record is made of (cheap; the record is built later)."""
        proxy = self._proxy
        ids = self.trace_ids() if proxy.tracing else None
        # What only spans show (the response's id, model, finish reasons, the session)
        # is read only when they are exported: an unsampled trace costs its ids alone.
        spanned = ids is not None and ids.sampled
        if self.request_body and self.endpoint is not None:
            self._note_request(spanned)
        return record_source(
            self,
            now=self.now,
            ids=ids,
            params=self._params,
            relay=self._relay if spanned else None,
            first_token_at=self.first_token_at,
            capture=proxy.capture_content,
            session_header=proxy.session_header if spanned else None,
        )

    # -- a local answer: GET metrics.path -----------------------------------------------

    def _metrics_request(self, now: float) -> None:
        """``GET metrics.path``: the driver collects them (``CollectMetrics``)."""
        guard = self._proxy.metrics_guard
        if self.request_method not in (b"GET", b"HEAD"):
            path = self.request_path.decode("latin-1")
            self._fail(
                ValidationError(f"{path} only answers GET", status=405, code="method_not_allowed"),
                now,
            )
        elif guard is not None and not guard(self.request_headers):
            self._fail(
                AuthenticationError(
                    "the metrics need the admin key: send it as 'Authorization: Bearer <key>'"
                ),
                now,
            )
        else:
            self._commands.append(_COLLECT_METRICS)
            self._deadline = now + _METRICS_TIMEOUT
            self._set_state(State.AWAIT_METRICS)

    def _on_metrics(self, event: MetricsCollected, now: float) -> None:
        body = event.body
        headers = [
            (b"content-type", event.content_type),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        self._start_response(200, headers, hooks=False)
        if not self._head:
            self._commands.append(SendBody(data=body))
        self._commands.append(_END_OK)
        self._complete("completed", now, hooks=False)

    def _on_metrics_timer(self, event: TimerFired, now: float) -> None:
        deadline = self._deadline
        if deadline is None or now < deadline:
            return
        message = f"the metrics were not collected within {_METRICS_TIMEOUT:g} s"
        self._fail(ServiceUnavailableError(message, code="metrics_unavailable"), now)

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
