"""A real OTLP/HTTP traces receiver on loopback, for tests of the span exporter.

`OtlpReceiver` is a threaded ``http.server`` on 127.0.0.1 (a free port). It accepts
``POST /v1/traces`` (an OpenTelemetry collector) and ``POST /api/public/otel/v1/traces``
(Langfuse), decodes each body as an ``ExportTraceServiceRequest`` with the official
``opentelemetry-proto`` messages (gzip and deflate bodies too), and keeps every span
(`ReceivedSpan`) and every request's headers (`ReceivedExport`). Any other path is a 404.
A request in the absolute form (``POST http://host:port/v1/traces``) is taken too:
set as a client's ``HTTP_PROXY``, the receiver gets what the client sends through it.

It misbehaves on demand: `hold()` makes it read each export and then wait, without
answering, until `release()` (a slow receiver); `status` answers every export with
that status instead of 200. Waiting for spans is `wait_for_spans` (a condition with
a deadline), never a sleep.
"""

from __future__ import annotations

import gzip
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import urlsplit

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

__all__ = ["LANGFUSE_PATH", "OTLP_PATH", "OtlpReceiver", "ReceivedExport", "ReceivedSpan"]

OTLP_PATH: Final = "/v1/traces"
LANGFUSE_PATH: Final = "/api/public/otel/v1/traces"
_PATHS: Final = frozenset({OTLP_PATH, LANGFUSE_PATH})
#: How long a held export waits at most for `release()` (then it is answered anyway).
_HOLD_LIMIT: Final = 30.0


def _value(value: AnyValue) -> Any:
    """An OTLP ``AnyValue`` as a Python value (arrays as tuples, kvlists as dicts)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return tuple(_value(item) for item in value.array_value.values)
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)


def _attributes(pairs: Iterator[KeyValue] | Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceivedSpan:
    """One span as the receiver decoded it (ids in lower-case hex)."""

    path: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    #: The W3C flags the exporter sent with the span (bit 8 set: ``is_remote`` known,
    #: bit 9: the parent is remote).
    flags: int
    name: str
    kind: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status: str
    status_message: str
    resource: dict[str, Any]
    scope: str

    @property
    def duration(self) -> float:
        """Seconds from start to end."""
        return (self.end_ns - self.start_ns) / 1e9


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceivedExport:
    """One export request: its path, headers (names lower-cased) and span count;
    ``target`` is the request line's target as sent (absolute, ``http://host/path``,
    when the client sent it to the receiver as its HTTP proxy)."""

    path: str
    headers: dict[str, str]
    spans: int
    target: str = ""


@dataclass(slots=True)
class _State:
    cond: threading.Condition = field(default_factory=threading.Condition)
    spans: list[ReceivedSpan] = field(default_factory=list)
    exports: list[ReceivedExport] = field(default_factory=list)
    arrived: int = 0  # export requests read (held ones too)
    errors: list[str] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    status: int = 200
    retry_after: str | None = None


def _decode(path: str, body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        path=path,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex() or None,
                        flags=span.flags,
                        name=span.name,
                        kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes=_attributes(span.attributes),
                        status=Status.StatusCode.Name(span.status.code).removeprefix(
                            "STATUS_CODE_"
                        ),
                        status_message=span.status.message,
                        resource=resource,
                        scope=scope_spans.scope.name,
                    )
                )
    return spans


def _handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            target = self.path
            # The absolute form a client sends to a proxy (RFC 9112 3.2.2): the
            # receiver serves as a forward proxy that takes the spans itself.
            path = urlsplit(target).path if target.startswith("http://") else target
            path = path.partition("?")[0]
            if path not in _PATHS:
                self._answer(404, b"")
                return
            encoding = (self.headers.get("content-encoding") or "").lower()
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            try:
                spans = _decode(path, body)
            except Exception as exc:  # a test failure, reported by the fixture
                with state.cond:
                    state.errors.append(f"undecodable export on {path}: {exc!r}")
                    state.cond.notify_all()
                self._answer(400, b"")
                return
            with state.cond:
                state.arrived += 1
                state.cond.notify_all()
            state.released.wait(_HOLD_LIMIT)
            headers = {name.lower(): value for name, value in self.headers.items()}
            with state.cond:
                state.exports.append(
                    ReceivedExport(path=path, headers=headers, spans=len(spans), target=target)
                )
                state.spans.extend(spans)
                state.cond.notify_all()
                status, retry_after = state.status, state.retry_after
            if status == 200:
                self._answer(200, ExportTraceServiceResponse().SerializeToString())
            else:
                self._answer(status, b"", retry_after)

        def _answer(self, status: int, body: bytes, retry_after: str | None = None) -> None:
            self.send_response(status)
            if retry_after is not None:
                self.send_header("Retry-After", retry_after)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


class OtlpReceiver:
    """An OTLP/HTTP receiver on 127.0.0.1; use as a context manager (or `close()`).
    With ``tls`` (a server context), it speaks HTTPS."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._state = _State()
        self._state.released.set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self._state))
        self._scheme = "http"
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
            self._scheme = "https"
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # how soon close() stops it
            name="otlp-receiver",
            daemon=True,
        )
        self._thread.start()

    def __enter__(self) -> OtlpReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Answer any held export, stop serving and close the socket."""
        self._state.released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (an OTLP base URL, and a Langfuse host)."""
        return f"{self._scheme}://127.0.0.1:{self.port}"

    # -- behaviour -----------------------------------------------------------------------

    def hold(self) -> None:
        """From now on, read each export and keep it unanswered until `release()`."""
        self._state.released.clear()

    def release(self) -> None:
        """Answer the held exports, and the next ones at once."""
        self._state.released.set()

    @property
    def status(self) -> int:
        """The status every export is answered with (200 unless set)."""
        return self._state.status

    @status.setter
    def status(self, value: int) -> None:
        with self._state.cond:
            self._state.status = value

    @property
    def retry_after(self) -> str | None:
        """The ``Retry-After`` header sent with a status other than 200 (none unless set)."""
        return self._state.retry_after

    @retry_after.setter
    def retry_after(self, value: str | None) -> None:
        with self._state.cond:
            self._state.retry_after = value

    # -- inspection ----------------------------------------------------------------------

    @property
    def spans(self) -> list[ReceivedSpan]:
        """Every span received (of answered exports), in arrival order."""
        with self._state.cond:
            return list(self._state.spans)

    @property
    def exports(self) -> list[ReceivedExport]:
        """Every answered export request, in arrival order."""
        with self._state.cond:
            return list(self._state.exports)

    @property
    def errors(self) -> list[str]:
        """Exports it could not decode (a bug in the exporter, or in the receiver)."""
        with self._state.cond:
            return list(self._state.errors)

    def _wait(self, ready: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._state.cond:
            while not ready():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._state.cond.wait(remaining)
            return True

    def wait_for_spans(
        self,
        count: int = 1,
        *,
        where: Callable[[ReceivedSpan], bool] = lambda span: True,
        timeout: float = 10.0,
    ) -> list[ReceivedSpan]:
        """Wait until at least ``count`` received spans satisfy ``where``; return those.

        Raises TimeoutError (with what did arrive) after ``timeout`` seconds.
        """

        def ready() -> bool:
            return sum(1 for span in self._state.spans if where(span)) >= count

        if not self._wait(ready, timeout):
            raise TimeoutError(
                f"{count} matching spans not received within {timeout} s; received: "
                f"{[(s.path, s.name, s.span_id) for s in self.spans]}"
            )
        return [span for span in self.spans if where(span)]

    def wait_for_arrivals(self, count: int, *, timeout: float = 10.0) -> None:
        """Wait until ``count`` export requests have been read (held or answered)."""
        if not self._wait(lambda: self._state.arrived >= count, timeout):
            raise TimeoutError(f"{count} exports not received within {timeout} s")
