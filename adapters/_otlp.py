"""OTLP/HTTP span export: exchange records written straight to the protobuf bytes.

Why not the SDK's objects: building a record's two ``ReadableSpan`` objects
(attribute dicts, ``SpanContext``, ``Status``) costs ~23 µs, the SDK's
``BatchSpanProcessor.on_end`` ~6 µs a span, and the SDK's encoder (a protobuf
object per span, attribute and value) ~180 µs a span: together ~10x tracing's
budget of ~50 µs a request. The wire format of ``ExportTraceServiceRequest``
is small (opentelemetry-proto's ``trace.proto`` and ``common.proto``), so
:class:`RecordEncoder` writes it from the records themselves: the same message
the SDK's ``encode_spans`` makes of ``SpanExporter.spans(record)`` (the
reference: a property test decodes both and compares them), in ~12-16 µs a
record of two spans here (~25-33 µs with the Langfuse attributes), against
~60-100 µs for the SDK's span objects and this module's span encoder. Most
attribute pairs repeat from record to record
(``gen_ai.operation.name = chat``, the provider, the model, the server): their
encoded fields are kept (bounded caches), and the resource and scope are
encoded once per encoder; only the exchange's own values (ids, times, usage,
response id, cost, status) are encoded each time.

:func:`encode_spans` is the same writer for ``ReadableSpan`` objects (spans of
one resource and scope, without events or links; anything else goes through
the SDK's encoder), and :class:`LeanOTLPSpanExporter` the SDK's
``OTLPSpanExporter`` encoding with it. The SDK's exporter still does the HTTP:
its configuration and environment variables, session, headers, TLS,
compression and retries (``exporter._client.export(data)``).
"""

from __future__ import annotations

import json
import math
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, TypeVar

from opentelemetry.exporter.otlp.proto.common.trace_encoder import (
    encode_spans as sdk_encode_spans,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind

from core import AttemptRecord, ExchangeRecord

__all__ = ["SCOPE", "LeanOTLPSpanExporter", "RecordEncoder", "encode_records", "encode_spans"]

#: The instrumentation scope of sansproxy's spans.
SCOPE: Final = InstrumentationScope("sansproxy")

_pack_double = struct.Struct("<d").pack
_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack
#: trace.proto's SpanKind: the SDK's enum, shifted by one (0 is UNSPECIFIED).
_KINDS = {kind: kind.value + 1 for kind in SpanKind}
_HAS_IS_REMOTE = 0x100  # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_IS_REMOTE = 0x200  # SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_SMALL = [bytes([n]) for n in range(128)]


def _varint(n: int) -> bytes:
    if 0 <= n < 128:
        return _SMALL[n]
    if 0 < n < 16384:  # two bytes: a span's length, most often
        return bytes((n & 0x7F | 0x80, n >> 7))
    if n < 0:
        n += 1 << 64  # int64 as protobuf writes it: ten bytes
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag, the length, the payload."""
    return tag + _varint(len(payload)) + payload


def _any_value(value: Any) -> bytes:
    """common.proto's AnyValue of an OpenTelemetry attribute value."""
    if isinstance(value, str):
        return _field(b"\x0a", value.encode("utf-8", "surrogatepass"))
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(v)) for v in value))
    raise TypeError(f"not an attribute value: {type(value).__name__}")


#: Encoded KeyValue fields of the scalar attributes already met: most repeat from
#: span to span (``gen_ai.provider.name = openai``), and a hit costs one lookup.
#: Keyed by the value's type too (``True == 1``); emptied when full.
_KEY_VALUES: dict[tuple[bytes, str, type, Any], bytes] = {}
_KEY_VALUES_MAX = 4096
_SCALARS = frozenset({str, bool, int, float})


def _key_value(tag: bytes, key: str, value: Any) -> bytes:
    payload = _field(b"\x0a", key.encode("utf-8", "surrogatepass")) + _field(
        b"\x12", _any_value(value)
    )
    return _field(tag, payload)


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    """Repeated KeyValue fields (``tag`` is the field's) for ``attributes``."""
    if not attributes:
        return b""
    cache = _KEY_VALUES
    out = []
    for key, value in attributes.items():
        kind = type(value)
        if kind not in _SCALARS or (kind is str and len(value) > 256):
            out.append(_key_value(tag, key, value))
            continue
        known = (tag, key, kind, value)
        field = cache.get(known)
        if field is None:
            if len(cache) >= _KEY_VALUES_MAX:
                cache.clear()
            field = cache[known] = _key_value(tag, key, value)
        out.append(field)
    return b"".join(out)


def _span(span: ReadableSpan) -> bytes:
    context = span.get_span_context()
    assert context is not None
    parts = [
        b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
        b"\x12\x08" + context.span_id.to_bytes(8, "big"),
    ]
    state = context.trace_state
    if state:
        parts.append(_field(b"\x1a", ",".join(f"{k}={v}" for k, v in state.items()).encode()))
    parent = span.parent
    if parent is not None:
        parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
    if span.name:
        parts.append(_field(b"\x2a", span.name.encode("utf-8", "surrogatepass")))
    kind = _KINDS[span.kind]
    if kind:
        parts.append(b"\x30" + _varint(kind))
    if span.start_time:
        parts.append(b"\x39" + _pack_fixed64(span.start_time))
    if span.end_time:
        parts.append(b"\x41" + _pack_fixed64(span.end_time))
    parts.append(_attributes(b"\x4a", span.attributes))
    if span.dropped_attributes:
        parts.append(b"\x50" + _varint(span.dropped_attributes))
    status = span.status
    if status is not None:
        inner = b""
        if status.description:
            inner += _field(b"\x12", status.description.encode("utf-8", "surrogatepass"))
        if status.status_code.value:
            inner += b"\x18" + _varint(status.status_code.value)
        parts.append(_field(b"\x7a", inner))
    flags = _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)
    parts.append(b"\x85\x01" + _pack_fixed32(flags))
    return b"".join(parts)


def _leanly_encodable(spans: Sequence[ReadableSpan]) -> bool:
    first = spans[0]
    resource, scope = first.resource, first.instrumentation_scope
    return scope is not None and all(
        s.resource is resource
        and s.instrumentation_scope is scope
        and not s.events
        and not s.links
        and not s.dropped_events
        and not s.dropped_links
        for s in spans
    )


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """The serialised ``ExportTraceServiceRequest`` of ``spans``."""
    if not spans or not _leanly_encodable(spans):
        return bytes(sdk_encode_spans(spans).SerializePartialToString())
    first = spans[0]
    resource, scope = first.resource, first.instrumentation_scope
    assert scope is not None
    scope_message = _field(b"\x0a", scope.name.encode()) if scope.name else b""
    if scope.version:
        scope_message += _field(b"\x12", scope.version.encode())
    scope_message += _attributes(b"\x1a", scope.attributes)
    scope_spans = _field(b"\x0a", scope_message) + b"".join(
        _field(b"\x12", _span(span)) for span in spans
    )
    if scope.schema_url:
        scope_spans += _field(b"\x1a", scope.schema_url.encode())
    resource_spans = _field(b"\x0a", _attributes(b"\x0a", resource.attributes))
    resource_spans += _field(b"\x12", scope_spans)
    if resource.schema_url:
        resource_spans += _field(b"\x1a", resource.schema_url.encode())
    return _field(b"\x0a", resource_spans)


# -- what a record's spans say (shared with the reference, ``SpanExporter.spans``) ------

#: Langfuse's observation type for each GenAI operation (others are generations).
LANGFUSE_TYPES: Final = {"embeddings": "embedding"}
dumps: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


def server_name(record: ExchangeRecord) -> str:
    """``{method} {route}`` for the model APIs' routes; the method alone for any other
    path (a raw path is not a low-cardinality name)."""
    return f"{record.method} {record.path}" if record.operation is not None else record.method


def attempt_name(record: ExchangeRecord, attempt: AttemptRecord) -> str:
    """``{operation} {model}`` of an attempt (the method, for what is not a model call)."""
    if record.operation is None:
        return record.method
    if attempt.upstream_model is None:
        return record.operation
    return f"{record.operation} {attempt.upstream_model}"


def server_error(record: ExchangeRecord) -> str | None:
    """The exchange's ``error.type``: an error the proxy answered with (5xx, as the HTTP
    conventions have it for a server), or an exchange that failed after its head."""
    if record.status is not None and record.status >= 500:
        return record.error_type or str(record.status)
    if record.outcome in ("timeout", "upstream_error", "error"):
        return record.error_type or record.outcome
    return None


def attempt_error(attempt: AttemptRecord) -> str | None:
    """``error.type`` of a failed attempt: its status (``503``) or failure kind (``timeout``)."""
    if attempt.outcome is None or attempt.outcome == "ok":
        return None
    if attempt.outcome == "status" and attempt.status is not None:
        return str(attempt.status)
    return attempt.outcome


# -- records to bytes ------------------------------------------------------------------

_CACHE_MAX: Final = 1024  # encoded values kept per attribute key (emptied when full)
_SERVER_KIND: Final = b"\x30\x02"  # trace.proto's SPAN_KIND_SERVER
_CLIENT_KIND: Final = b"\x30\x03"  # SPAN_KIND_CLIENT
_UNSET: Final = b"\x7a\x00"  # an empty Status: STATUS_CODE_UNSET
_LOCAL_PARENT: Final = b"\x85\x01" + _pack_fixed32(_HAS_IS_REMOTE)
_REMOTE_PARENT: Final = b"\x85\x01" + _pack_fixed32(_HAS_IS_REMOTE | _IS_REMOTE)


def _length(payload: bytes) -> bytes:
    """The varint length prefix of ``payload``."""
    n = len(payload)
    return _SMALL[n] if n < 128 else _varint(n)


class _Key:
    """One attribute key: its encoded start and the fields of the values met (bounded).

    Values are of the record's declared types (a ``bool`` is never where an ``int``
    is kept: ``True == 1``); floats are not kept (``-0.0 == 0.0``). The heads are
    the bytes before a value of each size: a field is then one concatenation.
    """

    __slots__ = ("fields", "float_head", "int_heads", "prefix", "text_heads")

    def __init__(self, key: str, *, texts: bool = False) -> None:
        raw = key.encode()
        # KeyValue: key (1), then the tag of value (2); the value's length follows.
        prefix = self.prefix = b"\x0a" + _varint(len(raw)) + raw + b"\x12"
        self.fields: dict[Any, bytes] = {}
        p = len(prefix)
        # Span.attributes (9), the KeyValue's length, the key, AnyValue's length, then
        # double_value (4) of 8 bytes, int_value (3) of a k-byte varint, or string_value
        # (1) of n bytes (as long as each length is one byte).
        self.float_head = bytes((0x4A, p + 10)) + prefix + b"\x09\x21"
        self.int_heads = [b""] + [
            bytes((0x4A, p + 2 + k)) + prefix + bytes((k + 1, 0x18)) for k in range(1, 11)
        ]
        self.text_heads = (
            [bytes((0x4A, p + 3 + n)) + prefix + bytes((n + 2, 0x0A, n)) for n in range(125 - p)]
            if texts
            else []
        )

    def field(self, value: Any) -> bytes:
        """The Span.attributes field (9) of ``value``, kept for the next time."""
        fields = self.fields
        if len(fields) >= _CACHE_MAX:
            fields.clear()
        field = fields[value] = self.once(value)
        return field

    def once(self, value: Any) -> bytes:
        """The Span.attributes field (9) of ``value``, not kept."""
        any_value = _any_value(value)
        pair = self.prefix + _length(any_value) + any_value
        return b"\x4a" + _length(pair) + pair

    def text(self, value: str) -> bytes:
        """The field of a string value met once (an id, a JSON document)."""
        raw = value.encode("utf-8", "surrogatepass")
        heads = self.text_heads
        if len(raw) < len(heads):
            return heads[len(raw)] + raw
        any_value = b"\x0a" + _length(raw) + raw
        pair = self.prefix + _length(any_value) + any_value
        return b"\x4a" + _length(pair) + pair

    def integer(self, value: int) -> bytes:
        """The field of an int value met once (a token count)."""
        encoded = _SMALL[value] if 0 <= value < 128 else _varint(value)
        return self.int_heads[len(encoded)] + encoded

    def number(self, value: float) -> bytes:
        """The field of a float value (an int or other type: as the SDK writes it)."""
        if type(value) is not float:
            return self.once(value)
        return self.float_head + _pack_double(value)


_METHOD = _Key("http.request.method")
_PATH = _Key("url.path")
_EXCHANGE = _Key("sansproxy.exchange_id", texts=True)
_CLIENT_API = _Key("sansproxy.client_api")
_OUTCOME = _Key("sansproxy.outcome")
_ROUTE = _Key("http.route")
_STATUS = _Key("http.response.status_code")
_MODEL = _Key("sansproxy.model")
_RETRIES = _Key("sansproxy.retries")
_FALLBACKS = _Key("sansproxy.fallbacks")
_REFUSAL = _Key("sansproxy.refusal")
_COST = _Key("sansproxy.cost_usd")
_ERROR = _Key("error.type")
_USER = _Key("user.id")
_SESSION = _Key("session.id")
_LF_TYPE = _Key("langfuse.observation.type")
_LF_TRACE = _Key("langfuse.trace.name")
_LF_MODEL = _Key("langfuse.observation.model.name")
_LF_USAGE = _Key("langfuse.observation.usage_details", texts=True)
_LF_COST = _Key("langfuse.observation.cost_details", texts=True)
_LF_FIRST = _Key("langfuse.observation.completion_start_time", texts=True)
_ADDRESS = _Key("server.address")
_PORT = _Key("server.port")
_ATTEMPT = _Key("sansproxy.attempt")
_PROVIDER = _Key("sansproxy.provider")
_OPERATION = _Key("gen_ai.operation.name")
_PROVIDER_TYPE = _Key("gen_ai.provider.name")
_REQUEST_MODEL = _Key("gen_ai.request.model")
_MAX_TOKENS = _Key("gen_ai.request.max_tokens")
_TEMPERATURE = _Key("gen_ai.request.temperature")
_TOP_P = _Key("gen_ai.request.top_p")
_STREAM = _Key("gen_ai.request.stream").once(True)
_INPUT = _Key("gen_ai.input.messages", texts=True)
_OUTPUT = _Key("gen_ai.output.messages", texts=True)
_RESPONSE_ID = _Key("gen_ai.response.id", texts=True)
_RESPONSE_MODEL = _Key("gen_ai.response.model")
_FINISH = _Key("gen_ai.response.finish_reasons")
_FIRST_CHUNK = _Key("gen_ai.response.time_to_first_chunk")
_INPUT_TOKENS = _Key("gen_ai.usage.input_tokens")
_OUTPUT_TOKENS = _Key("gen_ai.usage.output_tokens")
_CACHE_READ = _Key("gen_ai.usage.cache_read.input_tokens")
_CACHE_CREATION = _Key("gen_ai.usage.cache_creation.input_tokens")
_LF_SPAN = _LF_TYPE.once("span")


_times = struct.Struct("<BQBQ").pack  # start (7) and end (8) times: two fixed64 fields
#: A SERVER span's kept fields: name, kind and the attributes before the exchange's
#: id; those after it; error.type; the Langfuse attributes, status and flags.
_ServerBlocks = tuple[bytes, bytes, bytes, bytes]
_T = TypeVar("_T")


def _keep(cache: dict[Any, _T], key: Any, value: _T) -> _T:
    """``cache[key] = value`` (the cache emptied first when full); ``value``."""
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = value
    return value


def _status(message: str | None, code: bytes) -> bytes:
    """A Span.status field (15): ``message`` (if any) and ``code`` (its field)."""
    inner = code
    if message:
        raw = message.encode("utf-8", "surrogatepass")
        inner = b"\x12" + _length(raw) + raw + code
    return b"\x7a" + _length(inner) + inner


class RecordEncoder:
    """Exchange records to ``ExportTraceServiceRequest`` bytes, for one resource.

    ``record(r)`` writes the spans of one sampled record (as
    ``SpanExporter.spans(r)`` builds them, with the ``langfuse.*`` attributes if
    ``langfuse``); ``request(parts)`` wraps them in the resource and scope,
    encoded once here. Not thread-safe (its caches): one thread uses it.
    """

    def __init__(
        self, resource: Resource, *, langfuse: bool, scope: InstrumentationScope = SCOPE
    ) -> None:
        self._langfuse = langfuse
        resource_field = _field(b"\x0a", _attributes(b"\x0a", resource.attributes))
        self._resource_schema = (
            _field(b"\x1a", resource.schema_url.encode()) if resource.schema_url else b""
        )
        scope_message = _field(b"\x0a", scope.name.encode()) if scope.name else b""
        if scope.version:
            scope_message += _field(b"\x12", scope.version.encode())
        scope_message += _attributes(b"\x1a", scope.attributes)
        self._resource = resource_field
        self._scope = _field(b"\x0a", scope_message)
        self._scope_schema = _field(b"\x1a", scope.schema_url.encode()) if scope.schema_url else b""
        self._servers: dict[tuple[Any, ...], _ServerBlocks] = {}
        self._attempts: dict[tuple[Any, ...], tuple[bytes, bytes, bytes]] = {}
        self._asks: dict[tuple[Any, ...], bytes] = {}
        self._second = -1  # the whole second whose ISO 8601 text is _second_text
        self._second_text = ""

    def encode(
        self,
        records: Iterable[ExchangeRecord],
        on_error: Callable[[ExchangeRecord, Exception], None] | None = None,
    ) -> bytes:
        """The request of the sampled ``records`` (b"" if none is): a record that
        cannot be encoded raises, or is left out and told to ``on_error``."""
        parts = []
        for record in records:
            if not record.sampled or record.trace_id is None or record.span_id is None:
                continue
            try:
                parts.append(self.record(record))
            except Exception as exc:
                if on_error is None:
                    raise
                on_error(record, exc)
        return self.request(parts)

    def request(self, parts: Sequence[bytes]) -> bytes:
        """The ``ExportTraceServiceRequest`` of encoded records (b"" for none)."""
        if not parts:
            return b""
        scope_spans = len(self._scope) + sum(map(len, parts)) + len(self._scope_schema)
        scope_length = _varint(scope_spans)
        resource_spans = (
            len(self._resource) + 1 + len(scope_length) + scope_spans + len(self._resource_schema)
        )
        return b"".join(
            (
                b"\x0a",
                _varint(resource_spans),
                self._resource,
                b"\x12",
                scope_length,
                self._scope,
                *parts,
                self._scope_schema,
                self._resource_schema,
            )
        )

    def iso(self, seconds: float) -> str:
        """``seconds`` in ISO 8601, UTC, milliseconds (``2025-01-31T14:00:00.123Z``):
        what ``datetime.fromtimestamp(seconds, UTC)`` gives (rounded half-even to the
        microsecond), its date and time computed once per second."""
        fraction, whole = math.modf(seconds)
        micros = round(fraction * 1e6)
        if micros >= 1_000_000:
            micros -= 1_000_000
            whole += 1.0
        elif micros < 0:
            micros += 1_000_000
            whole -= 1.0
        second = int(whole)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
            self._second = second
        return f"{self._second_text}{micros // 1000:03d}Z"

    def record(self, record: ExchangeRecord) -> bytes:
        """The ScopeSpans.spans fields of a sampled ``record``: its SERVER span, then
        one CLIENT span per attempt."""
        assert record.trace_id is not None and record.span_id is not None
        trace_id = bytes.fromhex(record.trace_id)
        span_id = bytes.fromhex(record.span_id)
        if len(trace_id) != 16 or len(span_id) != 8:
            raise ValueError(f"not a W3C trace id and span id: {record.trace_id}, {record.span_id}")
        trace = b"\x0a\x10" + trace_id
        start = int(record.started * 1e9)
        end = start + int(record.duration * 1e9)
        method = record.method
        operation = record.operation
        user = record.key_name if record.key_name is not None else record.user
        common = b""
        if user is not None:
            common = _USER.fields.get(user) or _USER.field(user)
        if record.session_id is not None:
            session = record.session_id
            common += _SESSION.fields.get(session) or _SESSION.field(session)

        # The SERVER span: the fields that repeat from exchange to exchange are kept.
        parent = record.parent_span_id
        key = (
            method,
            record.path,
            operation,
            record.model,
            record.model_configured,
            record.client_api,
            record.outcome,
            record.status,
            record.retries,
            record.fallbacks,
            record.refusal,
            record.error_type,
            parent is None,
        )
        head, middle, error, closing = self._servers.get(key) or self._server(record, key)
        parent_field = b""
        if parent is not None:
            parent_id = bytes.fromhex(parent)
            if len(parent_id) != 8:
                raise ValueError(f"not a W3C span id: {parent}")
            parent_field = b"\x22\x08" + parent_id
        if not closing:  # an error: its message is the exchange's own
            closing = self._server_closing(record, parent is not None)
        cost = b"" if record.cost_usd is None else _COST.number(record.cost_usd)
        span = b"".join(
            (
                trace,
                b"\x12\x08",
                span_id,
                parent_field,
                _times(0x39, start, 0x41, end),
                head,
                _EXCHANGE.text(record.exchange_id),
                middle,
                cost,
                error,
                common,
                closing,
            )
        )
        size = len(span)
        out = [b"\x12", _SMALL[size] if size < 128 else _varint(size), span]
        if not record.attempts:
            return b"".join(out)

        # The CLIENT spans, children of the SERVER span.
        asked = b"" if operation is None else self._asked(record)
        langfuse = self._langfuse and operation is not None
        parent_field = b"\x22\x08" + span_id
        attempts = self._attempts
        last = len(record.attempts) - 1
        for index, attempt in enumerate(record.attempts):
            status = attempt.status
            upstream_model = attempt.upstream_model
            attempt_key = (
                attempt.number,
                attempt.provider,
                attempt.provider_type,
                upstream_model,
                attempt.server_address,
                attempt.server_port,
                status,
                attempt.outcome,
                method,
                operation,
            )
            head, kind, closing = attempts.get(attempt_key) or self._attempt(
                record, attempt, attempt_key
            )
            attempt_id = bytes.fromhex(attempt.span_id)
            if len(attempt_id) != 8:
                raise ValueError(f"not a W3C span id: {attempt.span_id}")
            started = attempt.started
            attempt_start = max(start, int(started * 1e9))
            attempt_end = min(end, max(attempt_start, int((started + attempt.duration) * 1e9)))
            served = index == last and status is not None and status < 400
            answer = b"" if operation is None or not served else self._answer(record, attempt)
            model_name = b""
            if langfuse and upstream_model is not None:
                shown = upstream_model
                if served and record.response_model is not None:
                    shown = record.response_model
                model_name = _LF_MODEL.fields.get(shown) or _LF_MODEL.field(shown)
            span = b"".join(
                (
                    trace,
                    b"\x12\x08",
                    attempt_id,
                    parent_field,
                    _times(0x39, attempt_start, 0x41, attempt_end),
                    head,
                    asked,
                    kind,
                    model_name,
                    answer,
                    common,
                    closing,
                )
            )
            size = len(span)
            out += (b"\x12", _SMALL[size] if size < 128 else _varint(size), span)
        return b"".join(out)

    def _server(self, record: ExchangeRecord, key: tuple[Any, ...]) -> _ServerBlocks:
        """A SERVER span's fields that repeat from exchange to exchange (kept by ``key``):
        its name, kind, attributes (but the exchange's id, cost, user and session),
        status and flags (b"" if it failed: the status has the exchange's message)."""
        operation, path, model = record.operation, record.path, record.model
        name = server_name(record).encode("utf-8", "surrogatepass")
        head = [_field(b"\x2a", name), _SERVER_KIND, _METHOD.once(record.method), _PATH.once(path)]
        middle = [_CLIENT_API.once(record.client_api), _OUTCOME.once(record.outcome)]
        if operation is not None:
            middle.append(_ROUTE.once(path))
        if record.status is not None:
            middle.append(_STATUS.once(record.status))
        if model is not None and record.model_configured:
            middle.append(_MODEL.once(model))
        if record.retries:
            middle.append(_RETRIES.once(record.retries))
        if record.fallbacks:
            middle.append(_FALLBACKS.once(record.fallbacks))
        if record.refusal is not None:
            middle.append(_REFUSAL.once(record.refusal))
        error = server_error(record)
        closing = b""
        if error is None:
            closing = self._server_closing(record, record.parent_span_id is not None)
        blocks = (
            b"".join(head),
            b"".join(middle),
            b"" if error is None else _ERROR.once(error),
            closing,
        )
        return _keep(self._servers, key, blocks)

    def _server_closing(self, record: ExchangeRecord, remote_parent: bool) -> bytes:
        """A SERVER span's last fields: the Langfuse attributes, status and flags."""
        langfuse = b""
        if self._langfuse:
            operation, model = record.operation, record.model
            trace_name = (
                f"{operation} {model}"
                if operation is not None and model is not None
                else server_name(record)
            )
            langfuse = _LF_SPAN + _LF_TRACE.once(trace_name)
        failed = server_error(record) is not None
        status = _status(record.error_message, b"\x18\x02") if failed else _UNSET
        return langfuse + status + (_REMOTE_PARENT if remote_parent else _LOCAL_PARENT)

    def _attempt(
        self, record: ExchangeRecord, attempt: AttemptRecord, key: tuple[Any, ...]
    ) -> tuple[bytes, bytes, bytes]:
        """A CLIENT span's fields that repeat (kept by ``key``): its name, kind and
        attributes up to the model asked; its Langfuse type; its status and flags."""
        operation = record.operation
        name = attempt_name(record, attempt).encode("utf-8", "surrogatepass")
        head = [
            _field(b"\x2a", name),
            _CLIENT_KIND,
            _ADDRESS.once(attempt.server_address),
            _PORT.once(attempt.server_port),
            _ATTEMPT.once(attempt.number),
            _PROVIDER.once(attempt.provider),
        ]
        if attempt.status is not None:
            head.append(_STATUS.once(attempt.status))
        error = attempt_error(attempt)
        if error is not None:
            head.append(_ERROR.once(error))
        # gen_ai.operation.name, the provider and model, then (per record) the rest of
        # what was asked, then the Langfuse type.
        kind = b""
        if operation is None:  # not a model call: a plain HTTP client span
            head.append(_METHOD.once(record.method))
        else:
            head += (_OPERATION.once(operation), _PROVIDER_TYPE.once(attempt.provider_type))
            if attempt.upstream_model is not None:
                head.append(_REQUEST_MODEL.once(attempt.upstream_model))
            if self._langfuse:
                kind = _LF_TYPE.once(LANGFUSE_TYPES.get(operation, "generation"))
        status = _UNSET if error is None else _status(error, b"\x18\x02")
        return _keep(self._attempts, key, (b"".join(head), kind, status + _LOCAL_PARENT))

    def _asked(self, record: ExchangeRecord) -> bytes:
        """What the request asked (after the model, on every attempt): max tokens,
        temperature, top_p, stream (kept), the input messages."""
        temperature, top_p = record.temperature, record.top_p
        key = (record.max_tokens, temperature, top_p, record.stream)
        # -0.0 == 0.0: a zero is written each time, with its sign.
        keep = temperature != 0.0 and top_p != 0.0
        asked = self._asks.get(key) if keep else None
        if asked is None:
            parts = []
            if record.max_tokens is not None:
                parts.append(_MAX_TOKENS.once(record.max_tokens))
            if temperature is not None:
                parts.append(_TEMPERATURE.number(temperature))
            if top_p is not None:
                parts.append(_TOP_P.number(top_p))
            if record.stream:  # the convention: set if and only if the request streams
                parts.append(_STREAM)
            asked = b"".join(parts)
            if keep:
                _keep(self._asks, key, asked)
        if record.input_messages is not None:
            asked += _INPUT.text(dumps(record.input_messages))
        return asked

    def _answer(self, record: ExchangeRecord, attempt: AttemptRecord) -> bytes:
        """The attributes of the attempt that answered (a model call's): the response,
        the time of its first chunk, the output, the usage and, for Langfuse, the model
        answered if none was asked, usage, cost and first token."""
        block: list[bytes] = []
        if record.response_id is not None:
            block.append(_RESPONSE_ID.text(record.response_id))
        response_model = record.response_model
        if response_model is not None:
            block.append(
                _RESPONSE_MODEL.fields.get(response_model) or _RESPONSE_MODEL.field(response_model)
            )
            if self._langfuse and attempt.upstream_model is None:
                block.append(
                    _LF_MODEL.fields.get(response_model) or _LF_MODEL.field(response_model)
                )
        if record.finish_reasons:
            reasons = record.finish_reasons
            block.append(_FINISH.fields.get(reasons) or _FINISH.field(reasons))
        if record.stream and record.time_to_first_token is not None:
            first_token = record.started + record.time_to_first_token
            block.append(_FIRST_CHUNK.number(max(0.0, first_token - attempt.started)))
        if record.output_messages is not None:
            block.append(_OUTPUT.text(dumps(record.output_messages)))
        usage = record.usage
        if usage is not None:
            cached, created = usage.cached_input_tokens, usage.cache_creation_tokens
            block += (
                _INPUT_TOKENS.integer(usage.input_tokens + cached + created),
                _OUTPUT_TOKENS.integer(usage.output_tokens),
                _CACHE_READ.fields.get(cached) or _CACHE_READ.field(cached),
                _CACHE_CREATION.fields.get(created) or _CACHE_CREATION.field(created),
            )
        if not self._langfuse:
            return b"".join(block)
        if usage is not None:
            # Langfuse's usage types, as the reference's dict dumps them.
            inputs, outputs = usage.input_tokens, usage.output_tokens
            details = f'{{"input":{inputs},"output":{outputs}'
            if cached:
                details += f',"input_cache_read":{cached}'
            if created:
                details += f',"input_cache_creation":{created}'
            details += f',"total":{inputs + outputs + cached + created}}}'
            block.append(_LF_USAGE.text(details))
        cost = record.cost_usd
        if cost is not None:
            block.append(
                _LF_COST.text(
                    f'{{"total":{cost!r}}}'
                    if type(cost) is float and math.isfinite(cost)
                    else dumps({"total": cost})
                )
            )
        if record.time_to_first_token is not None:
            block.append(_LF_FIRST.text(self.iso(record.started + record.time_to_first_token)))
        return b"".join(block)


def encode_records(
    records: Iterable[ExchangeRecord],
    resource: Resource,
    *,
    langfuse: bool = False,
    scope: InstrumentationScope = SCOPE,
    on_error: Callable[[ExchangeRecord, Exception], None] | None = None,
) -> bytes:
    """The ``ExportTraceServiceRequest`` bytes of the sampled ``records``' spans: the
    message the SDK's encoder makes of ``SpanExporter.spans(r)`` for each (b"" if none).
    An exporter keeps a :class:`RecordEncoder` instead (its header encoded once)."""
    return RecordEncoder(resource, langfuse=langfuse, scope=scope).encode(records, on_error)


class LeanOTLPSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter, encoding with :func:`encode_spans`.

    It sends through the exporter's own HTTP client (retries, headers,
    compression, TLS as configured). Should an SDK version keep that client
    elsewhere, the SDK's whole ``export`` runs instead.
    """

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        client = getattr(self, "_client", None)
        if client is None or getattr(self, "_shutdown", False) or not hasattr(client, "export"):
            return super().export(spans)
        data = encode_spans(spans)
        if len(data) > getattr(self, "_max_request_size", len(data)):
            return super().export(spans)  # the SDK drops it, and says so
        result = client.export(data)
        return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE
