"""The exchange: one request carried from its head to the end of its response.

Drive it like aioquic's connection: ``handle(event, now=...)``, then drain
``next_command()`` until it returns ``None``, then re-arm one timer from
``get_timer()``. The exchange never reads a clock and never does I/O.

This module is the state machine: one handler per (state, event) pair of
``core._state.TRANSITIONS``, in the order an exchange meets them (request,
hooks and quota queries, route, attempts and retries, the client leaving).
What hooks see and how answers leave: :class:`~core._context.ExchangeContext`;
one attempt's response: :class:`~core._relay.Relay`.
"""

from __future__ import annotations

from typing import NoReturn

from ._commands import (
    AcquireQuota,
    Command,
    Log,
    QuotaAdjustment,
    SendBody,
    SendUpstreamRequest,
    SettleQuota,
)
from ._context import _END_OK, ExchangeContext
from ._endpoints import ENDPOINTS, HEALTH_PATH, MODELS_PATH, ROUTED
from ._errors import (
    FAILURES,
    LocalProtocolError,
    ModelNotFoundError,
    NetworkError,
    ProtocolError,
    RemoteProtocolError,
    UpstreamTimeoutError,
    ValidationError,
)
from ._events import (
    ClientGone,
    Event,
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
from ._frozen import unchecked
from ._headers import content_length, header, parse_retry_after
from ._http import split_target
from ._middleware import Attempt, Reply, Retry
from ._relay import Relay
from ._sse import is_final_event
from ._state import TRANSITIONS, State
from .gateway import Deployment
from .gateway._plan import Plan, plan, plan_passthrough

__all__ = ["Exchange"]

_JSON_HEADER = (b"content-type", b"application/json")
_HEALTH_BODY = b'{"status":"ok"}'
_HEALTH_HEADERS = (
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_HEALTH_BODY)).encode()),
    (b"cache-control", b"no-store"),
)


class Exchange(ExchangeContext):
    """One proxied request and its response. Create it with ``Proxy.exchange()``.

    Public attributes are the context middleware hooks read (see
    :class:`core.Context`). Don't subclass.
    """

    __slots__ = ()

    def handle(self, event: Event, *, now: float) -> None:
        """Feed one event. Raises ``LocalProtocolError`` if this state refuses it."""
        self.now = now
        cls = event.__class__
        handler = self._dispatch.get(cls)
        # The driver's mistakes are caught here, at the door; past it, an error is
        # a bug (a hook's, a command it built wrong): a 500 or a cut, and a log.
        if handler is None:
            self._misuse(f"can't handle {type(event).__name__} in state {self.state.name}")
        if cls in _OF_ATTEMPT:
            attempt = event.attempt  # type: ignore[attr-defined]
            if attempt != self._attempt or not self._upstream_active:
                self._misuse(
                    f"event for upstream attempt {attempt}, but attempt {self._attempt} is "
                    + ("current" if self._upstream_active else "not running")
                )
        elif cls in _ANSWERS:
            query_id = event.query_id  # type: ignore[attr-defined]
            if query_id > self._query_id:
                self._misuse(
                    f"answer to query {query_id}, but the pending query is {self._query_id}"
                )
        try:
            handler(self, event, now)
        except Exception as exc:
            self._internal_error(exc, now)

    def _misuse(self, message: str) -> NoReturn:
        self._set_state(State.ERROR)
        raise LocalProtocolError(message, error_status_hint=500, error_type="server_error")

    def handle_timer(self, *, now: float) -> None:
        """Shorthand for ``handle(TimerFired(), now=now)``."""
        self.handle(_TIMER_FIRED, now=now)

    def handle_upstream_data(self, attempt: int, data: bytes, *, now: float) -> None:
        """``handle(UpstreamData(attempt=attempt, data=data), now=now)``, without the event
        while the running attempt's response is relayed (a stream's every chunk)."""
        if (
            self._dispatch.get(UpstreamData) is not _ON_UPSTREAM_DATA
            or attempt != self._attempt
            or not self._upstream_active
            or type(attempt) is not int
            or type(data) is not bytes
        ):
            self.handle(UpstreamData(attempt=attempt, data=data), now=now)
            return
        self.now = now
        try:
            self._upstream_data(data, now)
        except Exception as exc:
            self._internal_error(exc, now)

    def next_command(self) -> Command | None:
        """The next command to carry out, or ``None`` when there is none."""
        commands = self._commands
        return commands.popleft() if commands else None

    def get_timer(self) -> float | None:
        """The deadline at which the driver must call ``handle_timer``, or ``None``.

        Firing early is harmless: the exchange ignores a timer before its time.
        """
        return self._deadline

    def _ignore(self, event: Event, now: float) -> None:
        pass

    def _on_request_head(self, event: RequestReceived, now: float) -> None:
        self.request_method = event.method
        self.request_target = event.target
        self.request_headers = event.headers
        self._head = event.method == b"HEAD"
        self._set_state(State.RECV_BODY)
        limits = self._proxy.limits
        size = len(event.method) + len(event.target)
        for name, value in event.headers:
            size += len(name) + len(value) + 4
        try:
            if size > limits.max_header_size:
                raise ValidationError(
                    f"the request head is over {limits.max_header_size} bytes",
                    status=431,
                    code="request_header_fields_too_large",
                )
            self.request_path, self.request_query = split_target(event.target)
            length = header(event.headers, b"content-length")
            if length is not None and int(length) > limits.max_body_size:
                raise self._too_large()
        except RemoteProtocolError as exc:
            self._fail(exc, now)
        except ValueError:
            self._fail(ValidationError("invalid Content-Length"), now)

    def _too_large(self) -> ValidationError:
        message = f"the request body is over {self._proxy.limits.max_body_size} bytes"
        return ValidationError(message, status=413, code="request_too_large")

    def _on_request_data(self, event: RequestData, now: float) -> None:
        self._body_size += len(event.data)
        if self._body_size > self._proxy.limits.max_body_size:
            self._body_chunks.clear()
            self._fail(self._too_large(), now)
        elif event.data:
            self._body_chunks.append(event.data)

    def _on_request_end(self, event: RequestEnded, now: float) -> None:
        chunks = self._body_chunks
        self.request_body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._body_chunks = []
        if self.request_path == HEALTH_PATH:
            self._start_response(200, list(_HEALTH_HEADERS), hooks=False)
            if not self._head:
                self._commands.append(SendBody(data=_HEALTH_BODY))
            self._commands.append(_END_OK)
            self._complete("completed", now, hooks=False)
            return
        if self.request_path == self._proxy.metrics_path:
            self._metrics_request(now)
            return
        found = ENDPOINTS.get((self.request_method, self.request_path))
        if found is not None:
            # Errors from here on are in the client's API's shape.
            self.client_api, self.endpoint = found
        self._continue_request(0, now)

    def _continue_request(self, index: int, now: float) -> None:
        """Run the ``on_request`` hooks from ``index`` on, then route."""
        hooks = self._proxy.pipeline.on_request
        try:
            while index < len(hooks):
                result = hooks[index](self)
                if result is not None and self._hook_result(result, index, now):
                    return
                index += 1
            self._route(now)
        except RemoteProtocolError as exc:
            self._fail(exc, now)

    def _hook_result(self, result: object, index: int, now: float) -> bool:
        """Act on what a request hook returned; True if the request stops here (for now)."""
        if isinstance(result, Reply):
            self._answer(result.status, list(result.headers), result.body, now)
            return True
        if isinstance(result, AcquireQuota):
            self._hook_index = index
            self._query_id = result.query_id
            self._query = result
            self._commands.append(result)
            self._deadline = now + result.timeout
            self._set_state(State.AWAIT_QUOTA)
            return True
        raise TypeError(f"an on_request hook returned {result!r}: expected None, Reply or a query")

    def _on_stale_answer(self, event: QuotaAnswered | QuotaFailed, now: float) -> None:
        """An answer the exchange stopped waiting for (it timed out, the client left).

        If it admitted the request, the charges it made are given back.
        """
        query = self._query
        if (
            isinstance(event, QuotaAnswered)
            and event.admitted
            and query is not None
            and event.query_id == query.query_id
        ):
            self._query = None
            refunds = tuple(
                QuotaAdjustment(
                    key=charge.key, limit=charge.limit, delta=-charge.amount, charged_at=query.at
                )
                for charge in query.charges
                if charge.amount > 0
            )
            if refunds:
                self._commands.append(SettleQuota(at=self.wall_now, adjustments=refunds))

    def _on_quota_answer(self, event: QuotaAnswered | QuotaFailed, now: float) -> None:
        if event.query_id < self._query_id:
            self._on_stale_answer(event, now)
            return
        self._deadline = None
        self._query = None  # answered in time: nothing to give back later
        self._answered(event, now)

    def _on_quota_timer(self, event: TimerFired, now: float) -> None:
        deadline = self._deadline
        if deadline is None or now < deadline:
            return
        self._deadline = None
        self._answered(
            QuotaFailed(query_id=self._query_id, message="the quota store did not answer in time"),
            now,
        )

    def _answered(self, event: QuotaAnswered | QuotaFailed, now: float) -> None:
        """Give the answer to the hook's owner, then go on with the next hooks."""
        index = self._hook_index
        on_answer = self._proxy.pipeline.on_answer[index]
        try:
            if on_answer is None:
                raise TypeError("a middleware asked a query but has no on_answer hook")
            result = on_answer(self, event)
            if result is not None and self._hook_result(result, index, now):
                return
        except RemoteProtocolError as exc:
            self._fail(exc, now)
            return
        self._continue_request(index + 1, now)

    def _route(self, now: float) -> None:
        router = self._proxy.router
        if not router.active:
            self._answer_mock(now)
            return
        # What the proxy answers itself, it answers to HEAD as to GET (without the body).
        method = b"GET" if self._head else self.request_method
        path = self.request_path
        if self.endpoint in ROUTED:
            self.model, self.deployment, upstream = self._plan_route(None, None)
        elif router.shorthand is not None:
            upstream = plan_passthrough(
                router.shorthand, path, self.request_query, self.request_headers, self.request_body
            )
        elif method == b"GET" and path == MODELS_PATH:
            self._answer(200, [_JSON_HEADER], router.model_list(), now)
            return
        else:
            raise ModelNotFoundError(
                f"no route for {method.decode('latin-1')} {path.decode('latin-1')}: the gateway "
                "routes POST /v1/chat/completions, /v1/completions, /v1/embeddings, "
                "/v1/responses and /v1/messages by their model, and answers GET /v1/models",
                code="unknown_url",
            )
        self._send_upstream(upstream, now)

    def _plan_route(
        self, deployment: Deployment | None, model: str | None
    ) -> tuple[str | None, Deployment | None, Plan]:
        assert self.endpoint is not None
        return plan(
            self._proxy.router,
            api=self.client_api,
            kind=self.endpoint,
            path=self.request_path,
            query=self.request_query,
            headers=self.request_headers,
            raw=self.request_body,
            rand=self._rand,
            exchange_id=self.exchange_id,
            created=int(self.wall_time),
            default_max_tokens=self._proxy.config.translation.default_max_tokens,
            deployment=deployment,
            public_model=model,
            parsed=self._request_object(),
            max_json_items=self._proxy.limits.max_json_items,
        )

    def _on_local_timer(self, event: TimerFired, now: float) -> None:
        deadline = self._deadline
        if deadline is None or now < deadline:
            return
        blocks = self._local_blocks
        assert blocks is not None
        self._send_blocks((blocks.popleft(),))
        if blocks:
            self._deadline = now + self._proxy.mock_stream_delay
        else:
            self._commands.append(_END_OK)
            self._complete("completed", now)

    def _send_upstream(
        self, upstream: Plan, now: float, *, delay: float = 0.0, model: str | None = None
    ) -> None:
        provider = upstream.provider
        method = self.request_method
        body = upstream.body
        headers = upstream.headers
        length = content_length(method, body)
        if length is not None:  # a new list: a retry sends the plan again
            headers = [*headers, (b"content-length", length)]
        self._attempt += 1
        proxy = self._proxy
        if proxy.tracing:  # the attempt's span is the upstream's parent
            traceparent = self.trace_ids().traceparent(self._attempt)
            if self._client_traceparent:  # forwarded with the client's headers: replaced
                headers = [(n, v) for n, v in headers if n != b"traceparent"]
                headers.append((b"traceparent", traceparent))
            else:
                headers = [*headers, (b"traceparent", traceparent)]
        if proxy.observed:
            self._note_request(self._spanned())
        deployment = self.deployment
        origin = provider.origin
        self.attempts.append(
            Attempt(
                number=self._attempt,
                model=model if model is not None else self.model,
                provider=provider.name,
                upstream_model=None if deployment is None else deployment.model,
                delay=delay,
                started_at=now,
                provider_type=provider.type,
                host=origin.host,
                port=origin.port,
            )
        )
        # The plan's parts are the core's, checked, unless a custom request hook ran.
        build = _send_upstream_request if proxy.pipeline.builtin else SendUpstreamRequest
        command = build(
            attempt=self._attempt,
            origin=provider.origin,
            method=method,
            target=upstream.target,
            headers=headers,
            body=body,
            connect_timeout=provider.connect_timeout,
        )
        for hook in self._proxy.pipeline.on_upstream_request:
            command = hook(self, command)
        self._plan = upstream
        self._read_timeout = provider.read_timeout
        self.upstream_url = provider.url_prefix + command.target.decode("latin-1")
        self._commands.append(command)
        self._upstream_active = True
        self._deadline = now + provider.read_timeout
        self._set_state(State.AWAIT_UPSTREAM)
        # The parsed body is not kept while the response runs (a stream may last
        # minutes): a retry, or a later hook, parses it again.
        self._json = self._json_for = None

    def _on_upstream_head(self, event: UpstreamResponse, now: float) -> None:
        attempt = self.attempts[-1]
        status = event.status
        attempt.status = status
        if status < 400:
            attempt.outcome = "ok"
        else:
            attempt.outcome = "status"
            # Which statuses are retried is the policy's decision alone.
            if self._retry_hooks():
                attempt.retry_after = parse_retry_after(event.headers, wall_now=self.wall_now)
                if self._attempt_failed(attempt, None, now):
                    return
        self.first_upstream_byte_at = now
        self._deadline = now + self._read_timeout
        self._set_state(State.RELAY)
        assert self._plan is not None
        proxy = self._proxy
        spanned = self._spanned()  # only spans show what it reads
        relay = self._relay = Relay(
            self._plan,
            status,
            event.headers,
            limits=proxy.limits,
            send_body=self._send_body,
            send_blocks=self._send_blocks,
            capture=spanned and proxy.capture_content,
            observed=spanned,
        )
        self.is_stream = relay.stream
        if relay.head is None:  # translated whole at its end
            self.response_headers = relay.kept
        else:
            self._start_response(status, relay.head)

    def _on_upstream_data(self, event: UpstreamData, now: float) -> None:
        self._upstream_data(event.data, now)

    def _upstream_data(self, data: bytes, now: float) -> None:
        self._deadline = now + self._read_timeout
        assert self._relay is not None
        try:
            self._relay.feed(data)
        except RemoteProtocolError as exc:
            self._cancel_upstream()
            self._fail(exc, now)

    def _on_upstream_end(self, event: UpstreamEnded, now: float) -> None:
        relay = self._relay
        assert relay is not None
        try:
            relay.flush()
            self._upstream_active = False
            self.attempts[-1].ended_at = now
            translated = relay.close()
        except RemoteProtocolError as exc:
            self._cancel_upstream()
            self._fail(exc, now)
            return
        self._settle_usage()
        if translated is not None:
            self._answer(relay.status, [_JSON_HEADER, *self.response_headers], translated, now)
            return
        self._commands.append(_END_OK)
        self._complete("completed", now)

    def _on_upstream_failed(self, event: UpstreamFailed, now: float) -> None:
        self._upstream_active = False
        attempt = self.attempts[-1]
        attempt.outcome = event.kind
        cls, code, message = FAILURES[event.kind]
        detail = f"{message}: {event.message}" if event.message else message
        error = cls(detail, code=code)
        if self._retry_hooks() and self._attempt_failed(attempt, error, now):
            return
        self._fail(self._after_attempts(error), now)

    def _on_upstream_timer(self, event: TimerFired, now: float) -> None:
        deadline = self._deadline
        if deadline is None or now < deadline:
            return
        self._cancel_upstream()
        timeout = self._read_timeout
        attempt = self.attempts[-1]
        attempt.outcome = "timeout"
        error = UpstreamTimeoutError(f"the upstream sent nothing for {timeout:g} s")
        if self._retry_hooks() and self._attempt_failed(attempt, error, now):
            return
        self._fail(self._after_attempts(error), now)

    def _retry_hooks(self) -> bool:
        """Whether a retry is possible: hooks to ask, and nothing sent to the client yet."""
        return bool(self._proxy.pipeline.on_attempt_failed) and self.response_status is None

    def _attempt_failed(self, attempt: Attempt, error: ProtocolError | None, now: float) -> bool:
        """Ask the hooks about a failed attempt; True if the exchange retries or fails now."""
        attempt.ended_at = now
        decision: Retry | ProtocolError | None = None
        for hook in self._proxy.pipeline.on_attempt_failed:
            decision = hook(self, attempt)
            if decision is not None:
                break
        if decision is None:
            return False
        self._cancel_upstream()
        if isinstance(decision, ProtocolError):
            self._fail(decision, now)
            return True
        self._retry = decision
        self._reset_attempt()
        self._deadline = now + decision.delay
        self._set_state(State.BACKOFF)
        self._commands.append(
            Log(
                level="info",
                message="retrying upstream request",
                fields={
                    "exchange": self.exchange_id,
                    "attempt": attempt.number,
                    "outcome": attempt.outcome if error is None else error.code,
                    "status": attempt.status,
                    "delay": round(decision.delay, 3),
                    "next_model": decision.model,
                },
            )
        )
        return True

    def _reset_attempt(self) -> None:
        self._relay = None
        self.is_stream = False
        self.response_headers = []

    def _after_attempts(self, error: ProtocolError) -> ProtocolError:
        """The final error, saying how many attempts were made when there were several."""
        n = len(self.attempts)
        if n > 1 and isinstance(error, NetworkError | UpstreamTimeoutError):
            return type(error)(f"{error} (after {n} attempts)", code=error.code)
        return error

    def _on_backoff_timer(self, event: TimerFired, now: float) -> None:
        deadline = self._deadline
        retry = self._retry
        if deadline is None or now < deadline or retry is None:
            return
        self._retry = None
        upstream = self._plan
        assert upstream is not None
        try:
            if retry.deployment is not None and self.endpoint in ROUTED:
                _, self.deployment, upstream = self._plan_route(retry.deployment, retry.model)
        except RemoteProtocolError as exc:
            self._fail(exc, now)
            return
        self._send_upstream(upstream, now, delay=retry.delay, model=retry.model)

    def _on_client_gone(self, event: ClientGone, now: float) -> None:
        self._cancel_upstream()
        relay = self._relay
        whole = relay is not None and relay.whole()  # every byte of a JSON answer
        if not event.reason and (whole or is_final_event(self._last_block)):
            # The client had all of the answer (a stream's last event) and hung up
            # before the upstream's end was handled (not dropped mid-write): complete.
            self._complete("completed", now)
            return
        fields = {"exchange": self.exchange_id}
        if event.reason:  # the driver dropped it: the client is the cause, say so once
            log = Log(level="warning", message=f"dropped the client: {event.reason}", fields=fields)
        else:
            log = Log(level="info", message="client went away", fields=fields)
        self._commands.append(log)
        self._complete("client_gone", now)


_TIMER_FIRED = TimerFired()
_send_upstream_request = unchecked(SendUpstreamRequest)  # for the plan's checked parts
_ON_UPSTREAM_DATA = Exchange._on_upstream_data

# The events the door checks against the running attempt, and against the query asked.
_OF_ATTEMPT = frozenset({UpstreamResponse, UpstreamData, UpstreamEnded, UpstreamFailed})
_ANSWERS = frozenset({QuotaAnswered, QuotaFailed})

Exchange._DISPATCH = {
    state: {event: getattr(Exchange, name) for event, name in table.items()}
    for state, table in TRANSITIONS.items()
}
