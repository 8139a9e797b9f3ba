"""Exchange records as OpenTelemetry spans (GenAI conventions), over OTLP/HTTP and to Langfuse.

Each sampled record becomes one SERVER span (the exchange, as the client saw it)
and one CLIENT span per upstream attempt, its child, named
``{gen_ai.operation.name} {gen_ai.request.model}`` with the ``gen_ai.*``
attributes of the OpenTelemetry GenAI conventions. The ids are the ones the
core chose and sent upstream in ``traceparent`` (a client's ``traceparent``
continued), so the spans are built as finished ``ReadableSpan`` objects with
their own ids and times, not through a ``Tracer``.

The spans go through the official SDK: one ``BatchSpanProcessor`` (a bounded
queue and a thread) and ``OTLPSpanExporter`` per destination (its protobuf
encoding done by ``adapters._otlp``, ~6x cheaper than the SDK's): the OTLP
endpoint of ``telemetry.otlp_endpoint`` (or of the standard
``OTEL_EXPORTER_OTLP_*`` variables), and Langfuse's OTLP endpoint when
``telemetry.langfuse`` is set. A destination that is slow or down costs
``submit`` nothing but the spans its full queue drops, counted in ``dropped``.

With Langfuse configured, the spans also carry the attributes Langfuse maps
into its data model: the attempt spans are generations (model, usage and
the gateway's own cost, time of the first token), the SERVER span is a plain
span (without ``langfuse.observation.type`` Langfuse would also take it for a
generation by its model), and the trace is named. Both destinations get the same
spans: the ``langfuse.*`` attributes are namespaced, other backends keep them as
plain attributes, and one set of spans is built once per exchange instead of one
per destination. Without Langfuse they are left out. ``user.id`` and
``session.id`` are standard OpenTelemetry attributes and are always set.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export import SpanExporter as SdkSpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from core import AttemptRecord, ExchangeRecord, ProxyConfig

from ._logs import LogCollapser
from ._otlp import LeanOTLPSpanExporter

__all__ = ["SpanExporter"]

logger = logging.getLogger("sansproxy.spans")

#: Seconds one export request (retries included) may take before the batch is given up.
EXPORT_TIMEOUT: Final = 5.0
#: Seconds ``close()`` waits for each destination to deliver what is queued.
CLOSE_TIMEOUT: Final = 3.0
_BATCH: Final = 512  # spans per export request, at most (the SDK's default)
_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
_SCOPE: Final = InstrumentationScope("sansproxy")
_OK_STATUS: Final = Status(StatusCode.UNSET)
_ENV_ENDPOINTS: Final = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
#: Langfuse's observation type for each GenAI operation (others are generations).
_LANGFUSE_TYPES: Final = {"embeddings": "embedding"}
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


def traces_url(base: str) -> str:
    """The OTLP/HTTP traces URL of ``base``: ``{base}/v1/traces`` unless it already is one."""
    base = base.rstrip("/")
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


def _queue_of(processor: BatchSpanProcessor) -> Sequence[object] | None:
    """The processor's queue (SDK internals, read-only: its length tells a drop).

    The SDK drops the oldest span when a span arrives at a full queue and only
    logs it; this is how the drops are counted. None if the SDK keeps it elsewhere.
    """
    inner = getattr(processor, "_batch_processor", processor)
    queue = getattr(inner, "_queue", None)
    if queue is None:
        queue = getattr(inner, "queue", None)
    return queue if isinstance(queue, Sequence) else None


class _Counted(SdkSpanExporter):
    """An exporter that reports the spans it failed to deliver (``on_failed(n)``).

    The SDK's batch processor takes a batch off its queue whether or not its
    export succeeds: without this a collector that is down would lose every
    span silently (the SDK's own lines are silenced, see ``SpanExporter``).
    """

    def __init__(self, inner: OTLPSpanExporter, on_failed: Callable[[int], None]) -> None:
        self._inner = inner
        self._on_failed = on_failed

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception:  # the SDK would log and carry on: count, and carry on
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self._on_failed(len(spans))
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _Destination:
    """One ``BatchSpanProcessor`` and how full its queue may get."""

    __slots__ = ("limit", "name", "processor", "queue")

    def __init__(
        self,
        name: str,
        exporter: OTLPSpanExporter,
        limit: int,
        on_failed: Callable[[str, int], None],
    ) -> None:
        self.name = name
        # The batch delay is the SDK's (OTEL_BSP_SCHEDULE_DELAY, 5 s by default); a
        # batch is at most the queue.
        self.processor = BatchSpanProcessor(
            _Counted(exporter, lambda n: on_failed(name, n)),
            max_queue_size=limit,
            max_export_batch_size=min(limit, _BATCH),
        )
        self.queue = _queue_of(self.processor)
        self.limit = limit


class SpanExporter:
    """The span sink (``RecordSink``): records in, spans out to OTLP and Langfuse.

    ``submit`` builds the spans of a record and hands them to each destination's
    queue; it never blocks nor raises. ``dropped`` counts the spans a full queue
    dropped (each destination counts its own) and the records that could not be
    turned into spans. ``close`` delivers what is queued, waiting at most
    ``CLOSE_TIMEOUT`` seconds per destination. ``on_drop(n)``, if given, is told of
    each drop as it happens (the metrics' count of dropped spans, say); it must not raise.
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
        self._warnings = LogCollapser(logger, interval=30.0)
        self._closed = False
        self._lock = threading.Lock()  # drops are counted by the export threads too
        # The SDK logs each failed export with its URL and the collector's answer; the
        # failures are counted and said here instead, naming the destination only.
        logging.getLogger("opentelemetry.exporter").setLevel(logging.CRITICAL)
        logging.getLogger("opentelemetry.sdk.trace.export").setLevel(logging.CRITICAL)
        destinations: list[_Destination] = []
        if telemetry.otlp_endpoint is not None:
            headers = {name: value.get_secret_value() for name, value in telemetry.headers.items()}
            exporter = LeanOTLPSpanExporter(
                endpoint=traces_url(telemetry.otlp_endpoint),
                headers=headers or None,
                timeout=EXPORT_TIMEOUT,
            )
            destinations.append(_Destination("otlp", exporter, telemetry.max_queue, self._failed))
        elif any(os.environ.get(name) for name in _ENV_ENDPOINTS):
            # The SDK reads the endpoint, headers, timeout and TLS files from the
            # standard variables.
            destinations.append(
                _Destination("otlp", LeanOTLPSpanExporter(), telemetry.max_queue, self._failed)
            )
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
            destinations.append(
                _Destination("langfuse", exporter, telemetry.max_queue, self._failed)
            )
        self._destinations = tuple(destinations)

    def submit(self, record: ExchangeRecord) -> None:
        """Queue the spans of ``record`` (if it is sampled); never blocks nor raises."""
        if not record.sampled or record.trace_id is None or record.span_id is None:
            return
        if self._closed:
            self._drop(1)
            return
        try:
            spans = self.spans(record)
        except Exception as exc:  # a record the code below did not expect: drop it, go on
            self._drop(1)
            self._warnings.log(
                logging.ERROR,
                "could not turn exchange %s into spans (%r); dropped",
                record.exchange_id,
                exc,
                key="build",
                text="could not turn an exchange into spans",
            )
            return
        for destination in self._destinations:
            queue = destination.queue
            for span in spans:
                if queue is not None and len(queue) >= destination.limit:
                    self._drop(1)
                    self._warnings.log(
                        logging.WARNING,
                        "the %s span queue is full (%d spans): dropping spans",
                        destination.name,
                        destination.limit,
                    )
                destination.processor.on_end(span)

    def _drop(self, count: int) -> None:
        with self._lock:
            self.dropped += count
        if self._on_drop is not None:
            self._on_drop(count)

    def _failed(self, destination: str, count: int) -> None:
        """An export thread could not deliver ``count`` spans to ``destination``."""
        self._drop(count)
        self._warnings.log(
            logging.WARNING,
            "the %s span exporter could not deliver %d spans (the collector is down, slow "
            "or refused them); dropped",
            destination,
            count,
            key=("export", destination),
            text=f"the {destination} span exporter could not deliver spans",
        )

    def close(self) -> None:
        """Deliver the queued spans (at most ``CLOSE_TIMEOUT`` s per destination), then stop."""
        self._closed = True
        # BatchSpanProcessor.shutdown() waits up to 30 s for a receiver that does not
        # answer; it runs in a thread of its own so that shutdown waits a bounded time.
        threads = [
            threading.Thread(
                target=destination.processor.shutdown,
                name=f"sansproxy-spans-close-{destination.name}",
                daemon=True,
            )
            for destination in self._destinations
        ]
        deadline = time.monotonic() + CLOSE_TIMEOUT
        for thread in threads:
            thread.start()
        for destination, thread in zip(self._destinations, threads, strict=True):
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                logger.warning(
                    "the %s span exporter did not finish within %.0f s; its queued spans are lost",
                    destination.name,
                    CLOSE_TIMEOUT,
                )
        self._warnings.flush()
        if self.dropped:
            logger.warning("%d spans were dropped (queues full or exporters down)", self.dropped)

    # -- records to spans --------------------------------------------------------------

    def spans(self, record: ExchangeRecord) -> list[ReadableSpan]:
        """The SERVER span of ``record`` and one CLIENT span per attempt (sampled records)."""
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
        name = _server_name(record)
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
                instrumentation_scope=_SCOPE,
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
                    name=_attempt_name(record, attempt),
                    context=SpanContext(trace_id, int(attempt.span_id, 16), False, _SAMPLED),
                    parent=server,
                    resource=self._resource,
                    attributes=attributes,
                    kind=SpanKind.CLIENT,
                    status=_attempt_status(attempt),
                    start_time=attempt_start,
                    end_time=attempt_end,
                    instrumentation_scope=_SCOPE,
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
        error = _attempt_error(attempt)
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
            attributes["gen_ai.input.messages"] = _dumps(record.input_messages)
        if self._langfuse:
            attributes["langfuse.observation.type"] = _LANGFUSE_TYPES.get(operation, "generation")
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
            attributes["gen_ai.output.messages"] = _dumps(record.output_messages)
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
            attributes["langfuse.observation.usage_details"] = _dumps(details)
        if record.cost_usd is not None:
            attributes["langfuse.observation.cost_details"] = _dumps({"total": record.cost_usd})
        if first_token is not None:
            attributes["langfuse.observation.completion_start_time"] = _iso(first_token)
        return attributes


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _iso(seconds: float) -> str:
    """ISO 8601 in UTC with milliseconds, as Langfuse reads it: ``2025-01-31T14:00:00.123Z``."""
    stamp = datetime.fromtimestamp(seconds, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def _server_name(record: ExchangeRecord) -> str:
    """``{method} {route}`` for the model APIs' routes; the method alone for any other
    path (a raw path is not a low-cardinality name)."""
    return f"{record.method} {record.path}" if record.operation is not None else record.method


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
    error = _server_error(record)
    if error is not None:
        attributes["error.type"] = error
    return attributes


def _server_error(record: ExchangeRecord) -> str | None:
    """The exchange's ``error.type``: an error the proxy answered with (5xx, as the HTTP
    conventions have it for a server), or an exchange that failed after its head."""
    if record.status is not None and record.status >= 500:
        return record.error_type or str(record.status)
    if record.outcome in ("timeout", "upstream_error", "error"):
        return record.error_type or record.outcome
    return None


def _server_status(record: ExchangeRecord) -> Status:
    if _server_error(record) is None:
        return _OK_STATUS
    return Status(StatusCode.ERROR, record.error_message)


def _attempt_name(record: ExchangeRecord, attempt: AttemptRecord) -> str:
    if record.operation is None:
        return record.method
    if attempt.upstream_model is None:
        return record.operation
    return f"{record.operation} {attempt.upstream_model}"


def _attempt_error(attempt: AttemptRecord) -> str | None:
    """``error.type`` of a failed attempt: its status (``503``) or failure kind (``timeout``)."""
    if attempt.outcome is None or attempt.outcome == "ok":
        return None
    if attempt.outcome == "status" and attempt.status is not None:
        return str(attempt.status)
    return attempt.outcome


def _attempt_status(attempt: AttemptRecord) -> Status:
    error = _attempt_error(attempt)
    return _OK_STATUS if error is None else Status(StatusCode.ERROR, error)
