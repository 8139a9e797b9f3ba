"""Exchange records as OpenTelemetry spans (GenAI conventions), over OTLP/HTTP and to Langfuse.

Each sampled record becomes one SERVER span (the exchange, as the client saw it)
and one CLIENT span per upstream attempt, its child, named
``{gen_ai.operation.name} {gen_ai.request.model}`` with the ``gen_ai.*``
attributes of the OpenTelemetry GenAI conventions. The ids are the ones the
core chose and sent upstream in ``traceparent`` (a client's ``traceparent``
continued). :meth:`SpanExporter.spans` says what they are as the SDK's
``ReadableSpan`` objects: the reference.

Why not the SDK's pipeline: its span objects, ``BatchSpanProcessor`` and
encoder cost ~10x tracing's budget (~50 µs a request; it was ~290 µs). So
``submit`` only appends the record to a bounded queue (``telemetry.max_queue``
records; beyond, the record's spans are dropped and counted), and one thread
per exporter, woken when a batch is ready (256 records) or every
``OTEL_BSP_SCHEDULE_DELAY`` ms (5000 by default, as the SDK reads it), writes
the batch once, straight to the OTLP protobuf bytes (``adapters._otlp``'s
``RecordEncoder``: the message the SDK's encoder makes of the reference spans,
a property test compares them), and sends the same bytes to every destination
through the SDK's ``OTLPSpanExporter``'s HTTP client, which still does the
HTTP: retries, headers, environment variables, TLS, compression. Its requests
go over libcurl (``adapters._curl``), not ``requests``: a POST that takes the
GIL from the event loop once, not at every system call. The
destinations: the OTLP endpoint of ``telemetry.otlp_endpoint`` (or of the
standard ``OTEL_EXPORTER_OTLP_*`` variables), and Langfuse's OTLP endpoint when
``telemetry.langfuse`` is set. A destination that is slow or down costs
``submit`` nothing but dropped spans, counted in ``dropped``.

With Langfuse configured, the spans also carry the attributes Langfuse maps
into its data model: the attempt spans are generations (model, usage and
the gateway's own cost, time of the first token), the SERVER span is a plain
span (without ``langfuse.observation.type`` Langfuse would also take it for a
generation by its model), and the trace is named. Both destinations get the same
spans: the ``langfuse.*`` attributes are namespaced, other backends keep them as
plain attributes, and one encoding serves both. Without Langfuse they are left
out. ``user.id`` and ``session.id`` are standard OpenTelemetry attributes and
are always set.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from core import AttemptRecord, ExchangeRecord, ProxyConfig, RecordExchange

from ._logs import LogCollapser
from ._otlp import (
    LANGFUSE_TYPES,
    SCOPE,
    LeanOTLPSpanExporter,
    RecordEncoder,
    attempt_error,
    attempt_name,
    dumps,
    server_error,
    server_name,
)

__all__ = ["SpanExporter"]

logger = logging.getLogger("sansproxy.spans")

#: Seconds one export request (retries included) may take before the batch is given up.
EXPORT_TIMEOUT: Final = 5.0
#: Seconds ``close()`` waits for the queued records to be delivered.
CLOSE_TIMEOUT: Final = 3.0
#: Records per export request, at most; a queue this long is sent at once.
BATCH: Final = 256
#: Milliseconds between exports (the SDK's default for ``OTEL_BSP_SCHEDULE_DELAY``).
SCHEDULE_DELAY_MS: Final = 5000
_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
_OK_STATUS: Final = Status(StatusCode.UNSET)
_ENV_ENDPOINTS: Final = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def traces_url(base: str) -> str:
    """The OTLP/HTTP traces URL of ``base``: ``{base}/v1/traces`` unless it already is one."""
    base = base.rstrip("/")
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


def schedule_delay() -> float:
    """Seconds between exports: ``OTEL_BSP_SCHEDULE_DELAY`` (ms), read as the SDK reads it."""
    value = os.environ.get("OTEL_BSP_SCHEDULE_DELAY")
    if value is None:
        return SCHEDULE_DELAY_MS / 1e3
    try:
        millis = int(value)
    except ValueError:
        millis = 0
    if millis <= 0:
        logger.warning(
            "OTEL_BSP_SCHEDULE_DELAY is not a positive integer (%r); %d ms instead",
            value,
            SCHEDULE_DELAY_MS,
        )
        millis = SCHEDULE_DELAY_MS
    return millis / 1e3


class _Destination:
    """Where spans go: the SDK's exporter, and its HTTP client when it has one."""

    __slots__ = ("client", "exporter", "name")

    def __init__(self, name: str, exporter: OTLPSpanExporter) -> None:
        self.name = name
        self.exporter = exporter
        # The SDK's own client (retries, headers, TLS, compression) sends our bytes;
        # an SDK that keeps it elsewhere gets the reference spans through export().
        client = getattr(exporter, "_client", None)
        self.client: Any = client if callable(getattr(client, "export", None)) else None
        if self.client is not None:
            _onto_curl(self.client)


def _onto_curl(client: Any) -> None:
    """Carry the client's requests on libcurl (``adapters._curl``), with what its
    ``requests`` session would have used, read once: the proxy the environment
    names for the endpoint, ``.netrc`` credentials, the client certificate, and
    the CA bundle: the SDK's (``certificate_file``, ``OTEL_EXPORTER_OTLP_*CERTIFICATE``),
    else ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE``, else ``certifi``'s. (With
    ``requests`` the two variables won over the SDK's certificate too.) A
    session of the user's own keeps ``requests``
    (``OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER``: its own auth,
    adapters or hooks)."""
    import requests  # noqa: PLC0415 (the SDK's HTTP client: imported with it)
    from requests.adapters import HTTPAdapter  # noqa: PLC0415
    from requests.utils import get_environ_proxies, get_netrc_auth, select_proxy  # noqa: PLC0415

    session = getattr(getattr(client, "_transport", None), "_session", None)
    url = getattr(client, "_endpoint", None)
    if type(session) is not requests.Session or not isinstance(url, str):
        return
    stock = requests.Session()
    own = (
        any(type(adapter) is not HTTPAdapter for adapter in session.adapters.values())
        or set(session.adapters) != set(stock.adapters)
        or any(session.hooks.values())
        or session.auth is not None
        or bool(session.cookies)
        or bool(session.proxies)
    )
    stock.close()
    if own:
        return
    from ._curl import CurlTransport  # noqa: PLC0415 (only with spans)

    verify: bool | str = session.verify
    proxies: dict[str, str] = {}
    credentials = None
    if session.trust_env:
        proxies = get_environ_proxies(url)
        netrc = get_netrc_auth(url)
        credentials = netrc if isinstance(netrc, tuple) else None
        if verify is True:
            verify = (
                os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
            )
    client._transport = CurlTransport(
        verify=verify,
        cert=session.cert,
        proxy=select_proxy(url, proxies),
        credentials=credentials,
    )
    session.close()


class SpanExporter:
    """The span sink (``RecordSink``): records in, spans out to OTLP and Langfuse.

    ``submit`` queues a sampled record; it never blocks nor raises. ``dropped``
    counts the spans that were not delivered (each destination counts its own):
    a full queue's, a failed export's, and the records that could not be turned
    into spans (one each). ``close`` delivers what is queued, waiting at most
    ``CLOSE_TIMEOUT`` seconds. ``on_drop(n)``, if given, is told of each drop as it
    happens (the metrics' count of dropped spans, say); it must not raise.
    """

    def __init__(
        self, config: ProxyConfig, *, on_drop: Callable[[int], None] | None = None
    ) -> None:
        telemetry = config.telemetry
        #: Spans dropped so far (and records that could not become spans).
        self.dropped = 0
        self._on_drop = on_drop
        self._langfuse = telemetry.langfuse is not None
        self._resource = Resource.create({"service.name": telemetry.service_name})
        self._encoder = RecordEncoder(self._resource, langfuse=self._langfuse)
        self._warnings = LogCollapser(logger, interval=30.0)
        self._closed = False
        self._lock = threading.Lock()  # drops are counted by the export thread too
        # The SDK logs each failed export with its URL and the collector's answer; the
        # failures are counted and said here instead, naming the destination only.
        logging.getLogger("opentelemetry.exporter").setLevel(logging.CRITICAL)
        destinations: list[_Destination] = []
        if telemetry.otlp_endpoint is not None:
            headers = {name: value.get_secret_value() for name, value in telemetry.headers.items()}
            exporter = LeanOTLPSpanExporter(
                endpoint=traces_url(telemetry.otlp_endpoint),
                headers=headers or None,
                timeout=EXPORT_TIMEOUT,
            )
            destinations.append(_Destination("otlp", exporter))
        elif any(os.environ.get(name) for name in _ENV_ENDPOINTS):
            # The SDK reads the endpoint, headers, timeout and TLS files from the
            # standard variables.
            destinations.append(_Destination("otlp", LeanOTLPSpanExporter()))
        if telemetry.langfuse is not None:
            lf = telemetry.langfuse
            token = f"{lf.public_key}:{lf.secret_key.get_secret_value()}".encode()
            exporter = LeanOTLPSpanExporter(
                endpoint=f"{lf.host}/api/public/otel/v1/traces",
                headers={
                    "Authorization": "Basic " + base64.b64encode(token).decode("ascii"),
                    "x-langfuse-ingestion-version": "4",
                },
                timeout=EXPORT_TIMEOUT,
            )
            destinations.append(_Destination("langfuse", exporter))
        self._destinations = tuple(destinations)
        self._queue: deque[RecordExchange] = deque()
        # Nowhere to send: nothing is queued, nor counted as dropped.
        self._limit = telemetry.max_queue if destinations else 0
        self._ready = min(telemetry.max_queue, BATCH)
        self._delay = schedule_delay()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sansproxy-spans", daemon=True)
        if destinations:
            self._thread.start()

    def submit(self, exchange: RecordExchange) -> None:
        """Queue ``exchange``'s record (if it is sampled) for export; never blocks nor
        raises. The record is read in the export thread."""
        if not exchange.sampled:
            return
        queue = self._queue
        if len(queue) < self._limit and not self._closed:
            queue.append(exchange)
            if len(queue) == self._ready:
                self._wake.set()
            return
        if not self._destinations:
            return
        self._drop(_span_count(exchange) * len(self._destinations))
        if not self._closed:
            self._warnings.log(
                logging.WARNING,
                "the span queue is full (%d records): dropping spans",
                self._limit,
            )

    def _drop(self, count: int) -> None:
        with self._lock:
            self.dropped += count
        if self._on_drop is not None:
            self._on_drop(count)

    # -- the export thread ---------------------------------------------------------------

    def _run(self) -> None:
        """Export what is queued when a batch is ready, every delay, and at close."""
        queue = self._queue
        while True:
            if len(queue) < self._ready and not self._closed:
                self._wake.wait(self._delay)
            self._wake.clear()
            closed = self._closed
            waiting = len(queue)  # what came later waits for its batch
            while waiting > 0:
                batch = [queue.popleft() for _ in range(min(waiting, BATCH))]
                waiting -= len(batch)
                try:
                    self._export(batch)
                except Exception:  # never seen; the thread must live on: drop, say
                    self._drop(sum(map(_span_count, batch)) * len(self._destinations))
                    logger.exception("exporting spans failed; dropped")
            if closed:
                return

    def _export(self, batch: list[RecordExchange]) -> None:
        """Encode ``batch`` once, send the bytes to every destination."""
        encoder = self._encoder
        parts: list[bytes] = []
        good: list[ExchangeRecord] = []
        for exchange in batch:
            record: ExchangeRecord | None = None
            try:
                record = exchange.record
                if record.trace_id is None or record.span_id is None:
                    continue  # a record made by hand, sampled without ids: no spans
                parts.append(encoder.record(record))
            except Exception as exc:  # a record the encoder did not expect: drop it, go on
                self._unreadable(record, exc)
                continue
            good.append(record)
        if not parts:
            return
        data = encoder.request(parts)
        spans = sum(1 + len(record.attempts) for record in good)
        for destination in self._destinations:
            try:
                if destination.client is not None:
                    delivered = bool(destination.client.export(data).success)
                else:
                    result = destination.exporter.export([s for r in good for s in self.spans(r)])
                    delivered = result is SpanExportResult.SUCCESS
            except Exception:  # the SDK would log and carry on: count, and carry on
                delivered = False
            if not delivered:
                self._failed(destination.name, spans)

    def _unreadable(self, record: ExchangeRecord | None, exc: Exception) -> None:
        self._drop(1)
        self._warnings.log(
            logging.ERROR,
            "could not turn exchange %s into spans (%r); dropped",
            "?" if record is None else record.exchange_id,
            exc,
            key="build",
            text="could not turn an exchange into spans",
        )

    def _failed(self, destination: str, count: int) -> None:
        """The export thread could not deliver ``count`` spans to ``destination``."""
        self._warnings.log(
            logging.WARNING,
            "the %s span exporter could not deliver %d spans (the collector is down, slow "
            "or refused them); dropped",
            destination,
            count,
            key=("export", destination),
            text=f"the {destination} span exporter could not deliver spans",
        )
        self._drop(count)  # after the warning: who sees the count sees the warning

    def close(self) -> None:
        """Deliver the queued spans (within ``CLOSE_TIMEOUT`` s), then stop."""
        self._closed = True
        if self._destinations:
            self._wake.set()
            self._thread.join(CLOSE_TIMEOUT)
            if self._thread.is_alive():
                logger.warning(
                    "the span exporter did not finish within %.0f s; its queued spans are lost",
                    CLOSE_TIMEOUT,
                )
            for destination in self._destinations:
                try:
                    # Ends a retry's back-off, closes the session.
                    destination.exporter.shutdown()  # type: ignore[no-untyped-call]
                except Exception:  # closing must go on
                    logger.debug("closing the %s span exporter failed", destination.name)
        self._warnings.flush()
        if self.dropped:
            logger.warning("%d spans were dropped (queue full or exporters down)", self.dropped)

    # -- records to spans --------------------------------------------------------------

    def spans(self, record: ExchangeRecord) -> list[ReadableSpan]:
        """The SERVER span of ``record`` and one CLIENT span per attempt (sampled records):
        the reference the encoder is held to, and what an SDK without the exporter's
        HTTP client is given."""
        assert record.trace_id is not None and record.span_id is not None
        trace_id = int(record.trace_id, 16)
        server = SpanContext(trace_id, int(record.span_id, 16), False, _SAMPLED)
        parent = (
            SpanContext(trace_id, int(record.parent_span_id, 16), True, _SAMPLED)
            if record.parent_span_id is not None
            else None
        )
        common: dict[str, Any] = {}
        user = record.key_name if record.key_name is not None else record.user
        if user is not None:
            common["user.id"] = user
        if record.session_id is not None:
            common["session.id"] = record.session_id
        start = _ns(record.started)
        end = start + _ns(record.duration)
        name = server_name(record)
        attributes = _server_attributes(record)
        attributes.update(common)
        if self._langfuse:
            attributes["langfuse.observation.type"] = "span"
            attributes["langfuse.trace.name"] = (
                f"{record.operation} {record.model}"
                if record.operation is not None and record.model is not None
                else name
            )
        spans = [
            ReadableSpan(
                name=name,
                context=server,
                parent=parent,
                resource=self._resource,
                attributes=attributes,
                kind=SpanKind.SERVER,
                status=_server_status(record),
                start_time=start,
                end_time=end,
                instrumentation_scope=SCOPE,
            )
        ]
        last = len(record.attempts) - 1
        for index, attempt in enumerate(record.attempts):
            served = index == last and attempt.status is not None and attempt.status < 400
            attributes = self._attempt_attributes(record, attempt, served=served)
            attributes.update(common)
            # Within the exchange's span (the float seconds round apart by a few ns).
            attempt_start = max(start, _ns(attempt.started))
            attempt_end = min(end, max(attempt_start, _ns(attempt.started + attempt.duration)))
            spans.append(
                ReadableSpan(
                    name=attempt_name(record, attempt),
                    context=SpanContext(trace_id, int(attempt.span_id, 16), False, _SAMPLED),
                    parent=server,
                    resource=self._resource,
                    attributes=attributes,
                    kind=SpanKind.CLIENT,
                    status=_attempt_status(attempt),
                    start_time=attempt_start,
                    end_time=attempt_end,
                    instrumentation_scope=SCOPE,
                )
            )
        return spans

    def _attempt_attributes(
        self, record: ExchangeRecord, attempt: AttemptRecord, *, served: bool
    ) -> dict[str, Any]:
        """An attempt's attributes; ``served``: its answer is the one the client got."""
        attributes: dict[str, Any] = {
            "server.address": attempt.server_address,
            "server.port": attempt.server_port,
            "sansproxy.attempt": attempt.number,
            "sansproxy.provider": attempt.provider,
        }
        if attempt.status is not None:
            attributes["http.response.status_code"] = attempt.status
        error = attempt_error(attempt)
        if error is not None:
            attributes["error.type"] = error
        operation = record.operation
        if operation is None:  # not a model call: a plain HTTP client span
            attributes["http.request.method"] = record.method
            return attributes
        attributes["gen_ai.operation.name"] = operation
        attributes["gen_ai.provider.name"] = attempt.provider_type
        model = attempt.upstream_model
        if model is not None:
            attributes["gen_ai.request.model"] = model
        if record.max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = record.max_tokens
        if record.temperature is not None:
            attributes["gen_ai.request.temperature"] = record.temperature
        if record.top_p is not None:
            attributes["gen_ai.request.top_p"] = record.top_p
        if record.stream:  # the convention: set if and only if the request streams
            attributes["gen_ai.request.stream"] = True
        if record.input_messages is not None:
            attributes["gen_ai.input.messages"] = dumps(record.input_messages)
        if self._langfuse:
            attributes["langfuse.observation.type"] = LANGFUSE_TYPES.get(operation, "generation")
            if model is not None:
                attributes["langfuse.observation.model.name"] = model
        if not served:
            return attributes
        if record.response_id is not None:
            attributes["gen_ai.response.id"] = record.response_id
        if record.response_model is not None:
            attributes["gen_ai.response.model"] = record.response_model
            if self._langfuse:
                attributes["langfuse.observation.model.name"] = record.response_model
        if record.finish_reasons:
            attributes["gen_ai.response.finish_reasons"] = record.finish_reasons
        first_token = (
            record.started + record.time_to_first_token
            if record.time_to_first_token is not None
            else None
        )
        if record.stream and first_token is not None:
            attributes["gen_ai.response.time_to_first_chunk"] = max(
                0.0, first_token - attempt.started
            )
        if record.output_messages is not None:
            attributes["gen_ai.output.messages"] = dumps(record.output_messages)
        usage = record.usage
        if usage is not None:
            # The convention counts cache reads and writes in the input tokens.
            attributes["gen_ai.usage.input_tokens"] = (
                usage.input_tokens + usage.cached_input_tokens + usage.cache_creation_tokens
            )
            attributes["gen_ai.usage.output_tokens"] = usage.output_tokens
            attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cached_input_tokens
            attributes["gen_ai.usage.cache_creation.input_tokens"] = usage.cache_creation_tokens
        if not self._langfuse:
            return attributes
        if usage is not None:
            # Langfuse's usage types: input at the full rate, cache reads and writes apart.
            details = {"input": usage.input_tokens, "output": usage.output_tokens}
            if usage.cached_input_tokens:
                details["input_cache_read"] = usage.cached_input_tokens
            if usage.cache_creation_tokens:
                details["input_cache_creation"] = usage.cache_creation_tokens
            details["total"] = sum(details.values())
            attributes["langfuse.observation.usage_details"] = dumps(details)
        if record.cost_usd is not None:
            attributes["langfuse.observation.cost_details"] = dumps({"total": record.cost_usd})
        if first_token is not None:
            attributes["langfuse.observation.completion_start_time"] = _iso(first_token)
        return attributes


def _span_count(exchange: RecordExchange) -> int:
    """The spans of ``exchange``: its SERVER span and one per attempt."""
    return 1 + exchange.attempt_count


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _iso(seconds: float) -> str:
    """ISO 8601 in UTC with milliseconds, as Langfuse reads it: ``2025-01-31T14:00:00.123Z``."""
    stamp = datetime.fromtimestamp(seconds, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def _server_attributes(record: ExchangeRecord) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "http.request.method": record.method,
        "url.path": record.path,
        "sansproxy.exchange_id": record.exchange_id,
        "sansproxy.client_api": record.client_api,
        "sansproxy.outcome": record.outcome,
    }
    if record.operation is not None:
        attributes["http.route"] = record.path
    if record.status is not None:
        attributes["http.response.status_code"] = record.status
    if record.model is not None and record.model_configured:
        attributes["sansproxy.model"] = record.model
    if record.retries:
        attributes["sansproxy.retries"] = record.retries
    if record.fallbacks:
        attributes["sansproxy.fallbacks"] = record.fallbacks
    if record.refusal is not None:
        attributes["sansproxy.refusal"] = record.refusal
    if record.cost_usd is not None:
        attributes["sansproxy.cost_usd"] = record.cost_usd
    error = server_error(record)
    if error is not None:
        attributes["error.type"] = error
    return attributes


def _server_status(record: ExchangeRecord) -> Status:
    if server_error(record) is None:
        return _OK_STATUS
    return Status(StatusCode.ERROR, record.error_message)


def _attempt_status(attempt: AttemptRecord) -> Status:
    error = attempt_error(attempt)
    return _OK_STATUS if error is None else Status(StatusCode.ERROR, error)
