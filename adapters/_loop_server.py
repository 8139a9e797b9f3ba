"""The HTTP/1.1 server on ``asyncio.Protocol`` callbacks, its request parser pluggable.

``python -m adapters.h11_server`` serves with it and ``H11Codec``
(``adapters._h11_codec``: h11 parses requests, as the name promises);
``python -m adapters.httptools_server`` with ``HttptoolsCodec`` (llhttp).
Behind either: ``adapters._loop_driver`` runs the exchanges, with no task and
no await per request. On trio, ``H11Server``
(``adapters.h11_server``) and the anyio ``Driver`` serve instead; the
behaviour is the same:

Keep-alive and pipelining (requests answered in order: while an exchange
runs, what the client sends next is only buffered, up to a bound, then not
read), a deadline for each request head (slowloris), for each read of a
body and for the whole request, and for idle keep-alive connections; errors
before an exchange (malformed HTTP, a 408) in the client API's shape; a
bound on how long a write waits for the client to read; and a graceful stop
on SIGINT/SIGTERM: stop accepting, let in-flight responses finish within the
grace period, exit 0. Running out of descriptors never stops the accept loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import signal
import socket
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import Final, Protocol

import anyio
import httptools

from core import (
    ClientGone,
    Exchange,
    ProxyConfig,
    RequestData,
    RequestEnded,
    RequestReceived,
    ValidationError,
    render_error,
)

from ._cli import Loaded, cannot_listen, freeze_heap, log_startup, setup_logging, stopped
from ._driver import Driver
from ._loop_driver import LoopDriver, Run
from ._streams import _AcceptBackoff, accept, listen

__all__ = [
    "CLOSED",
    "NEED_DATA",
    "REASONS",
    "BadRequest",
    "CannotAnswer",
    "Codec",
    "HttptoolsCodec",
    "LoopServer",
    "serve",
    "start",
]

logger = logging.getLogger("sansproxy")

_SERVER_HEADER = (b"server", b"sansproxy")
_CLOSE_HEADER = (b"connection", b"close")
# After answering early (before the request body was read): how long, and how
# much of the rest of the body, to read before closing.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 16 << 20
# Bytes the client sends while an exchange runs (the next pipelined requests)
# are buffered up to here; then the connection is not read until they are used.
_HIGH_WATER = 1 << 20
_LOW_WATER = 1 << 18
REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_STATUS_LINES = {
    status: b"HTTP/1.1 %d %s\r\n" % (status, reason) for status, reason in REASONS.items()
}
_ENDED = RequestEnded()


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: ``Codec.next_event()``: nothing more until more bytes are fed.
NEED_DATA: Final = _Marker("NEED_DATA")
#: ``Codec.next_event()``: the client closed its side (between messages, or mid-body).
CLOSED: Final = _Marker("CLOSED")

RequestEvent = RequestReceived | RequestData | RequestEnded | _Marker


class BadRequest(Exception):
    """The client sent malformed HTTP: ``status`` (400, 431) and a ``reason`` that
    quotes nothing the client sent."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class CannotAnswer(Exception):
    """Raised by a ``Codec`` asked for a response its protocol state refuses."""


class Codec(Protocol):
    """One client connection's HTTP/1.1: requests in (as core events), responses out."""

    def feed(self, data: bytes) -> None:
        """Buffer bytes from the client (``b""``: it closed its side)."""

    def next_event(self) -> RequestEvent:
        """The next request event, ``NEED_DATA`` or ``CLOSED``; raises ``BadRequest``."""

    def expects_continue(self) -> bool:
        """Whether the client waits for a ``100 Continue`` before sending the body."""

    def continue_response(self) -> bytes:
        """The bytes of a ``100 Continue``."""

    def response_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        """The bytes of the response head (framing and ``Connection`` as h11 would);
        raises ``CannotAnswer`` (as ``response_data`` and ``response_end`` may)."""

    def response_data(self, data: bytes) -> bytes:
        """The bytes of a piece of the body, framed."""

    def response_end(self) -> bytes:
        """The bytes that end the response."""

    def request_done(self) -> bool:
        """The request was read to its end and the client did not ask to close."""

    def reading_body(self) -> bool:
        """The request's body has not been read to its end."""

    def partial(self) -> bool:
        """Some of a request has arrived (for a 408 rather than a silent close)."""

    def can_answer(self) -> bool:
        """No response has been started on this cycle (an error may still be sent)."""

    def close(self) -> None:
        """The connection is gone: let go of what refers back to the codec (a cycle
        would wait for the garbage collector)."""

    def reusable(self) -> bool:
        """Both request and response ended and neither side asked to close."""

    def next_cycle(self) -> None:
        """Get ready for the connection's next request."""


# -- httptools -----------------------------------------------------------------------


class _Request:
    """What the response to one request depends on."""

    __slots__ = ("continue_", "head", "http11", "keep_alive")

    def __init__(self, head: bool, http11: bool, keep_alive: bool, continue_: bool) -> None:
        self.head = head
        self.http11 = http11
        self.keep_alive = keep_alive
        self.continue_ = continue_


_NO_REQUEST = _Request(False, True, False, False)
# Request states (h11's names).
_IDLE, _SEND_BODY, _DONE = 0, 1, 2
# How the response body is framed.
_LENGTH, _CHUNKED, _UNTIL_CLOSE, _NONE = 0, 1, 2, 3
_CHUNK_END = b"0\r\n\r\n"


class _Stop(Exception):
    pass


def _tokens(value: bytes) -> list[bytes]:
    return [token.strip() for token in value.lower().split(b",")]


class HttptoolsCodec:
    """Requests parsed by llhttp (``httptools``), responses framed as h11 frames them.

    llhttp parses what it is fed, pipelined requests included: their events
    wait in a queue until the connection asks for them (it feeds nothing while
    an exchange runs, so the queue holds one read at most).
    """

    __slots__ = (
        "_body_framing",
        "_broken",
        "_close",
        "_current",
        "_events",
        "_head_bytes",
        "_headers",
        "_in_head",
        "_max_header_size",
        "_parser",
        "_responding",
        "_their",
        "_url",
    )

    def __init__(self, max_header_size: int) -> None:
        self._max_header_size = max_header_size
        self._parser = httptools.HttpRequestParser(self)
        self._events: deque[RequestEvent | BadRequest | _Request] = deque()
        self._broken = False
        self._in_head = False
        self._head_bytes = 0
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._current = _NO_REQUEST  # the request being answered
        self._their = _IDLE
        self._responding = False
        self._close = False
        self._body_framing = _LENGTH

    def close(self) -> None:
        # The parser holds this codec's callbacks: a cycle. Once broken, nothing
        # reads the parser again.
        self._broken = True
        with contextlib.suppress(AttributeError):
            del self._parser

    # -- in --

    def feed(self, data: bytes) -> None:
        if self._broken:
            return
        if not data:
            self._broken = True
            if self._in_head:
                self._events.append(BadRequest(400, "peer unexpectedly closed"))
            else:
                self._events.append(CLOSED)
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrades are not supported: the request is answered, then the
            # connection closes; nothing after it is parsed.
            self._broken = True
            if self._in_head or self._their_pending():
                self._events.append(_ENDED)
            return
        except httptools.HttpParserError as exc:
            self._broken = True
            if isinstance(exc.__context__, _Stop):
                return  # a callback queued the error already
            # llhttp's reasons quote nothing the client sent; the words before a
            # colon only, as for h11.
            reason = str(exc).split(":", 1)[0].strip() or type(exc).__name__
            self._events.append(BadRequest(400, reason))
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self._max_header_size:
                self._broken = True
                self._events.append(BadRequest(431, "Receive buffer too long"))

    def _their_pending(self) -> bool:
        # Whether the last request queued has not been ended.
        for item in reversed(self._events):
            if item is _ENDED:
                return False
            if type(item) is _Request:
                return True
        return False

    def next_event(self) -> RequestEvent:
        events = self._events
        while events:
            item = events.popleft()
            kind = type(item)
            if kind is _Request:
                self._current = item  # type: ignore[assignment]
                self._their = _SEND_BODY
                continue
            if kind is BadRequest:
                try:
                    raise item  # type: ignore[misc]
                finally:
                    del item  # else this frame, in its traceback, holds it: a cycle
            if item is _ENDED:
                self._their = _DONE
            return item  # type: ignore[return-value]
        return NEED_DATA

    # llhttp's callbacks (called during feed_data)

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._url = []
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        http11 = parser.get_http_version() == "1.1"
        headers = self._headers
        method = parser.get_method()
        hosts = 0
        continue_ = False
        for name, value in headers:
            size = len(name)  # lower-cased only when it may be one of the two
            if size == 4:
                if name.lower() == b"host":
                    hosts += 1
            elif size == 6 and name.lower() == b"expect" and value.lower() == b"100-continue":
                continue_ = http11
        if hosts > 1 or (http11 and not hosts):
            message = "Found multiple Host" if hosts else "Missing mandatory Host"  # as h11 says
            self._events.append(BadRequest(400, message))
            self._broken = True
            raise _Stop
        keep_alive = http11 and parser.should_keep_alive()
        url = self._url
        events = self._events
        events.append(_Request(method == b"HEAD", http11, keep_alive, continue_))
        events.append(
            RequestReceived(
                method=method, target=url[0] if len(url) == 1 else b"".join(url), headers=headers
            )
        )

    def on_body(self, body: bytes) -> None:
        self._events.append(RequestData(data=body))

    def on_message_complete(self) -> None:
        self._events.append(_ENDED)

    # -- out --

    def expects_continue(self) -> bool:
        return self._current.continue_ and self._their == _SEND_BODY

    def continue_response(self) -> bytes:
        return b"HTTP/1.1 100 \r\n\r\n"

    def response_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        request = self._current
        self._responding = True
        length = chunked = False
        close = not request.keep_alive
        for name, value in headers:
            size = len(name)  # lower-cased only when it may be one of the three
            if size == 14:
                if name.lower() == b"content-length":
                    length = True
            elif size == 17:
                if name.lower() == b"transfer-encoding":
                    chunked = b"chunked" in _tokens(value)
            elif size == 10 and name.lower() == b"connection" and b"close" in _tokens(value):
                close = True
        # h11's rules: a HEAD is answered with the head a GET would have had.
        if status in (204, 304) or status < 200:
            framing = _NONE
        elif chunked:
            framing = _CHUNKED
        elif length:
            framing = _LENGTH
        elif request.http11:
            framing = _CHUNKED
            headers = [*headers, (b"transfer-encoding", b"chunked")]
        else:
            framing = _UNTIL_CLOSE
            close = True
        if request.head:
            framing = _NONE
        self._body_framing = framing
        if close:
            self._close = True
            headers = [(n, v) for n, v in headers if n.lower() != b"connection"]
            headers.append(_CLOSE_HEADER)
        line = _STATUS_LINES.get(status)
        if line is None:
            line = b"HTTP/1.1 %d \r\n" % status
        parts = [line]
        append = parts.append
        for name, value in headers:
            append(name)
            append(b": ")
            append(value)
            append(b"\r\n")
        append(b"\r\n")
        return b"".join(parts)

    def response_data(self, data: bytes) -> bytes:
        framing = self._body_framing
        if framing == _CHUNKED:
            if not data:
                return b""
            return b"%x\r\n%b\r\n" % (len(data), data)
        if framing == _NONE:
            return b""
        return data

    def response_end(self) -> bytes:
        self._responding = False
        if self._body_framing == _CHUNKED:
            return _CHUNK_END
        return b""

    def request_done(self) -> bool:
        return self._their == _DONE and self._current.keep_alive

    def reading_body(self) -> bool:
        return self._their == _SEND_BODY

    def partial(self) -> bool:
        return self._their == _SEND_BODY or self._in_head

    def can_answer(self) -> bool:
        return not self._responding and not self._close

    def reusable(self) -> bool:
        return (
            self._their == _DONE
            and self._current.keep_alive
            and not self._close
            and not self._responding
        )

    def next_cycle(self) -> None:
        self._their = _IDLE
        self._current = _NO_REQUEST


# -- the connection ------------------------------------------------------------------

# Connection states.
_C_HEAD = 0  # waiting for (the rest of) a request head
_C_IDLE = 1  # keep-alive: waiting for the next request's first byte
_C_BODY = 2  # the request's exchange is fed its body
_C_RUNNING = 3  # the exchange runs; the client's next bytes are only buffered
_C_LINGER = 4  # answered early: reading what still comes, before closing
_C_CLOSED = 5


class _Sink:
    """Buffers what the run sends; one ``transport.write`` per flush."""

    __slots__ = ("_codec", "_conn", "_out", "cut", "started")

    def __init__(self, conn: _ClientConnection) -> None:
        self._conn = conn
        self._codec = conn.codec
        self._out: list[bytes] = []
        self.started = False
        self.cut = False

    def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        headers.append(_SERVER_HEADER)
        if not self._codec.request_done():
            # Answered before the request body was read (a 413, say): this
            # connection cannot carry another request, so say so.
            headers.append(_CLOSE_HEADER)
        self._out.append(self._codec.response_head(status, headers))

    def send(self, data: bytes) -> None:
        piece = self._codec.response_data(data)
        if piece:
            self._out.append(piece)

    def end(self, complete: bool) -> None:
        if complete:
            piece = self._codec.response_end()
            if piece:  # nothing, when a length frames the body
                self._out.append(piece)
        else:
            self.cut = True

    def flush(self) -> bool:
        out = self._out
        if not out:
            return True
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        conn = self._conn
        transport = conn.transport
        if not transport.is_closing():
            transport.write(data)
        return not conn.paused

    def abort(self) -> None:
        self._conn.abort()


class _ClientConnection(asyncio.Protocol):
    """One client connection: reads requests, runs their exchanges one at a time."""

    __slots__ = (
        "_deadline",
        "_ex",
        "_head",
        "_in_advance",
        "_lingered",
        "_pending",
        "_pending_size",
        "_reading_paused",
        "_run",
        "_server",
        "_sink",
        "_state",
        "_timer",
        "_timer_at",
        "_until",
        "codec",
        "paused",
        "transport",
    )

    def __init__(self, server: LoopServer) -> None:
        self._server = server
        self.codec: Codec = server.codec_factory(server.max_header_size)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self._state = _C_HEAD
        self._deadline = 0.0  # the whole request's
        self._until = 0.0  # when the current wait times out
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._ex: Exchange | None = None
        self._sink: _Sink | None = None
        self._run: Run | None = None
        self._head = False
        self._pending: deque[bytes] = deque()
        self._pending_size = 0
        self._reading_paused = False
        self._in_advance = False
        self._lingered = 0
        self.paused = False

    # -- asyncio's callbacks --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server = self._server
        server.connections.add(self)
        if server.metrics is not None:
            server.metrics.connection_opened()
        now = server.loop.time()
        self._deadline = now + server.config.request_timeout
        self._arm(min(now + server.config.header_timeout, self._deadline))

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state == _C_RUNNING:
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size > _HIGH_WATER and not self._reading_paused:
                self._reading_paused = True
                self.transport.pause_reading()
            return
        if state == _C_LINGER:
            self._lingered += len(data)
            if self._lingered >= _LINGER_BYTES:
                self._close()
            return
        if state == _C_CLOSED:
            return
        if state == _C_IDLE:
            self._begin_head()
        self.codec.feed(data)
        self._advance()

    def eof_received(self) -> bool:
        state = self._state
        if state == _C_RUNNING:
            self._client_gone()
        elif state in (_C_HEAD, _C_IDLE, _C_BODY):
            self._pending.append(b"")
            self._advance()
        self._close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._state == _C_BODY:
            self._gone_mid_request(ClientGone())
        self._client_gone()
        self._state = _C_CLOSED
        self._cancel_timer()
        self._server.closed(self)
        # What refers back to this connection goes: its exchange's sink, the
        # codec's parser (cycles would wait for the garbage collector).
        self._sink = self._ex = self._run = None
        self.codec.close()

    def pause_writing(self) -> None:
        self.paused = True
        run = self._run
        if run is not None:
            run.blocked()

    def resume_writing(self) -> None:
        self.paused = False
        run = self._run
        if run is not None:
            run.writable()

    # -- the requests --

    def _begin_head(self) -> None:
        """The first byte of a request after an idle keep-alive wait."""
        server = self._server
        server.idle.discard(self)
        self._state = _C_HEAD
        now = server.loop.time()
        self._deadline = now + server.config.request_timeout
        self._arm(min(now + server.config.header_timeout, self._deadline))

    def _advance(self) -> None:
        """Read events from the codec and act on them until it needs more bytes, or
        an exchange runs."""
        if self._in_advance:
            return
        self._in_advance = True
        try:
            self._events()
        except Exception:  # a bug: this connection closes, the server and the others live on
            logger.exception("internal error on a client connection; closing it")
            self.abort()
        finally:
            self._in_advance = False

    def _events(self) -> None:
        codec = self.codec
        server = self._server
        loop = server.loop
        while True:
            state = self._state
            if state not in (_C_HEAD, _C_IDLE, _C_BODY):
                return
            try:
                event = codec.next_event()
            except BadRequest as exc:
                head = False
                if state == _C_BODY:
                    head = self._head
                    self._gone_mid_request(ClientGone())
                self._bad_request(exc, head=head)
                return
            if event is NEED_DATA:
                pending = self._pending
                if not pending:
                    return
                data = pending.popleft()
                self._pending_size -= len(data)
                if self._reading_paused and self._pending_size < _LOW_WATER:
                    self._reading_paused = False
                    self.transport.resume_reading()
                if state == _C_IDLE:
                    if not data:  # closed while idle
                        self._close()
                        return
                    self._begin_head()
                codec.feed(data)
                continue
            kind = type(event)
            if kind is RequestData:
                ex = self._ex
                assert ex is not None
                now = loop.time()
                ex.handle(event, now=now)  # type: ignore[arg-type]
                if ex.finished:
                    self._start_run()
                else:
                    self._arm(min(now + server.config.header_timeout, self._deadline))
            elif kind is RequestReceived:
                self._request(event)  # type: ignore[arg-type]
            elif kind is RequestEnded:
                ex = self._ex
                assert ex is not None
                ex.handle(event, now=loop.time())  # type: ignore[arg-type]
                self._start_run()
            else:  # CLOSED
                if state == _C_BODY:
                    self._gone_mid_request(ClientGone())
                self._close()
                return

    def _request(self, event: RequestReceived) -> None:
        server = self._server
        now = server.loop.time()
        if self._state == _C_IDLE:  # a pipelined request, already here
            server.idle.discard(self)
            self._deadline = now + server.config.request_timeout
        ex = server.driver.new_exchange(now)
        ex.handle(event, now=now)
        self._ex = ex
        self._head = event.method == b"HEAD"
        self._sink = _Sink(self)
        self._state = _C_BODY
        if ex.finished:
            self._start_run()
            return
        codec = self.codec
        if codec.expects_continue():
            self.transport.write(codec.continue_response())
        self._arm(min(now + server.config.header_timeout, self._deadline))

    def _start_run(self) -> None:
        ex = self._ex
        sink = self._sink
        assert ex is not None and sink is not None
        # The connection's timer is left armed: it fires at most once while the
        # exchange runs (and is ignored), and a short exchange re-arms nothing.
        self._state = _C_RUNNING
        run = self._server.driver.start(ex, sink, self._exchange_done)
        if self._state == _C_RUNNING:
            self._run = run
            if self.paused:
                run.blocked()

    def _exchange_done(self) -> None:
        """The exchange ended and its response is written: the next request, or close."""
        if self._state != _C_RUNNING:
            return
        self._run = None
        self._ex = None
        sink = self._sink
        self._sink = None
        codec = self.codec
        assert sink is not None
        if sink.cut or not sink.started:
            self._close()
            return
        if codec.reading_body():
            # Answered before the whole request body was read: stop writing,
            # and read a little of what is still coming so that closing does
            # not reset the connection under the answer.
            self._linger()
            return
        server = self._server
        if not codec.request_done() or server.shutting_down or not codec.reusable():
            self._close()
            return
        codec.next_cycle()
        self._state = _C_IDLE
        server.idle.add(self)
        self._arm(server.loop.time() + server.config.keepalive_timeout)
        self._advance()

    def _client_gone(self, reason: str = "") -> None:
        run = self._run
        if run is not None:
            self._run = None
            run.client_gone(reason)

    def _gone_mid_request(self, event: ClientGone) -> None:
        """The client left (or is dropped) before its request was read: record it."""
        ex = self._ex
        sink = self._sink
        if ex is None or sink is None:
            return
        self._ex = None
        self._state = _C_RUNNING
        ex.handle(event, now=self._server.loop.time())
        self._server.driver.start(ex, sink, _nothing)

    def _linger(self) -> None:
        self._state = _C_LINGER
        self._lingered = self._pending_size
        self._pending.clear()
        transport = self.transport
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        if transport.is_closing():
            return
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except (OSError, RuntimeError):
                self._close()
                return
        self._arm(self._server.loop.time() + _LINGER_SECONDS)

    def _close(self) -> None:
        if self._state != _C_CLOSED:
            self._state = _C_CLOSED
            self._server.idle.discard(self)
            self._cancel_timer()
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once (its exchange, if one runs, sees the client gone)."""
        self._client_gone()
        self._state = _C_CLOSED
        self._cancel_timer()
        self.transport.abort()

    # -- deadlines --

    def _arm(self, until: float) -> None:
        """Time the current wait out at ``until``; one timer, re-armed only when earlier."""
        self._until = until
        timer = self._timer
        if timer is None or self._timer_at > until:
            if timer is not None:
                timer.cancel()
            self._timer = self._server.loop.call_at(until, self._on_timer)
            self._timer_at = until

    def _cancel_timer(self) -> None:
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()

    def _on_timer(self) -> None:
        self._timer = None
        state = self._state
        if state in (_C_RUNNING, _C_CLOSED):
            return
        loop = self._server.loop
        if loop.time() < self._until:
            self._timer = loop.call_at(self._until, self._on_timer)
            self._timer_at = self._until
            return
        if state == _C_HEAD:
            if self.codec.partial():
                self._send_error(408, "timed out reading the request")
            else:
                logger.debug("closing a connection that sent no request head in time")
            self._close()
        elif state == _C_BODY:
            # Too slow to send its request: the client is dropped, with a 408.
            head = self._head
            self._gone_mid_request(ClientGone(reason=self._too_slow()))
            self._send_error(408, "timed out reading the request", head=head)
            self._linger()
        else:  # idle keep-alive, or the linger is over
            self._close()

    def _too_slow(self) -> str:
        """Why a client that timed out sending its request body is dropped."""
        config = self._server.config
        if self._server.loop.time() >= self._deadline:
            return (
                f"it sent its request too slowly: over {config.request_timeout:g} s "
                "(server.request_timeout)"
            )
        return (
            f"it sent nothing of its request body for {config.header_timeout:g} s "
            "(server.header_timeout)"
        )

    # -- answers without an exchange --

    def _bad_request(self, exc: BadRequest, *, head: bool) -> None:
        logger.warning("malformed HTTP from a client: %s (values not shown)", exc.reason)
        message = f"malformed HTTP request: {exc.reason} (values not shown)"
        self._send_error(exc.status, message, head=head)
        self._close()

    def _send_error(self, status: int, message: str, *, head: bool = False) -> None:
        """A connection-level error answer (no exchange made it); the connection then
        closes. To a HEAD request, the head alone."""
        codec = self.codec
        if not codec.can_answer() or self.transport.is_closing():
            return
        code = {431: "request_header_fields_too_large", 408: "request_timeout"}.get(
            status, "invalid_request"
        )
        body = render_error(ValidationError(message, status=status, code=code))
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            _CLOSE_HEADER,
            _SERVER_HEADER,
        ]
        try:
            data = codec.response_head(status, headers)
            if not head:
                data += codec.response_data(body)
            data += codec.response_end()
        except CannotAnswer:
            return
        self.transport.write(data)


def _nothing() -> None:
    pass


class LoopServer:
    """Serves HTTP/1.1 connections on asyncio callbacks with one ``LoopDriver``."""

    def __init__(
        self, driver: LoopDriver, config: ProxyConfig, codec: Callable[[int], Codec]
    ) -> None:
        self.driver = driver
        self.config = config.server
        self.max_header_size = config.limits.max_header_size
        self.codec_factory = codec
        self.loop = driver.loop
        self.shutting_down = False
        self.connections: set[_ClientConnection] = set()
        self.idle: set[_ClientConnection] = set()
        self.metrics = driver.sinks.metrics
        self._all_closed = asyncio.Event()

    def closed(self, conn: _ClientConnection) -> None:
        """A connection is gone."""
        if conn in self.connections and self.metrics is not None:
            self.metrics.connection_closed()
        self.connections.discard(conn)
        self.idle.discard(conn)
        if self.shutting_down and not self.connections:
            self._all_closed.set()

    def begin_shutdown(self) -> None:
        """Stop serving new requests: idle keep-alive connections close at once."""
        self.shutting_down = True
        for conn in list(self.idle):
            conn._close()
        if not self.connections:
            self._all_closed.set()

    async def wait_all_closed(self) -> None:
        """Wait until every connection has closed."""
        await self._all_closed.wait()

    def abort_all(self) -> None:
        """Drop every connection now (their exchanges see the client gone)."""
        for conn in list(self.connections):
            conn.abort()
            self.closed(conn)

    async def accept(self, listening: socket.socket) -> None:
        """Accept connections on ``listening`` until cancelled (then close it).

        Our own accept loop, not ``loop.create_server()``: at EMFILE/ENFILE
        libuv resets the connections it cannot accept, and on other accept()
        errors uvloop closes its listener for good. Here they wait in the
        backlog (see ``adapters._streams._AcceptBackoff``), and the listener lives.
        """
        loop = self.loop
        backoff = _AcceptBackoff()
        factory = self._connection
        with listening:
            while True:
                sock = await accept(listening, backoff)
                loop.create_task(self._serve_socket(sock, factory))

    def _connection(self) -> _ClientConnection:
        return _ClientConnection(self)

    async def _serve_socket(
        self, sock: socket.socket, factory: Callable[[], _ClientConnection]
    ) -> None:
        try:
            await self.loop.connect_accepted_socket(factory, sock)
        except OSError:  # gone already
            sock.close()


async def serve(driver: Driver, config: ProxyConfig, *, adapter: str, codec: type[Codec]) -> None:
    """Listen, serve until SIGINT/SIGTERM, then stop gracefully."""
    loop = asyncio.get_running_loop()
    looped = LoopDriver(driver)
    server = LoopServer(looped, config, codec)
    signals: asyncio.Queue[int] = asyncio.Queue()
    handled = (signal.SIGINT, signal.SIGTERM)
    for signum in handled:
        loop.add_signal_handler(signum, signals.put_nowait, signum)

    def started(port: int) -> None:
        log_startup(config, adapter=adapter, port=port)
        freeze_heap()

    # What serving out of descriptors needs is loaded now (anyio loads its backend
    # on first use, and importing opens files).
    anyio.current_time()
    failed: list[OSError] = []
    try:
        listening = listen(config.server.host, config.server.port)
    except OSError as exc:
        failed.append(exc)
    else:
        started(listening.getsockname()[1])
        await _serve_until_signal(server, listening, signals, config)
    # Every exchange has ended, so every trace record has been handed over.
    await looped.aclose()
    if failed:
        # The same line and status on every adapter (and no traceback).
        cannot_listen(config.server.host, config.server.port, failed[0])
    for signum in handled:
        loop.remove_signal_handler(signum)
    stopped()


async def _serve_until_signal(
    server: LoopServer,
    listening: socket.socket,
    signals: asyncio.Queue[int],
    config: ProxyConfig,
) -> None:
    loop = server.loop
    accepting = loop.create_task(server.accept(listening))
    first = loop.create_task(signals.get())
    await asyncio.wait({accepting, first}, return_when=asyncio.FIRST_COMPLETED)
    if accepting.done():  # a bug: the accept loop ends only when cancelled
        first.cancel()
        accepting.result()
    else:
        logger.info(
            "received %s: finishing in-flight requests (grace %.0f s)",
            signal.Signals(first.result()).name,
            config.server.shutdown_grace,
        )
        accepting.cancel()  # stops accepting and closes the listener
        with contextlib.suppress(asyncio.CancelledError):
            await accepting
        server.begin_shutdown()
        closing = loop.create_task(server.wait_all_closed())
        second = loop.create_task(signals.get())
        done, _ = await asyncio.wait(
            {closing, second},
            timeout=config.server.shutdown_grace,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if second in done:
            logger.warning("second signal: stopping now")
        if closing not in done:
            logger.warning("closing the connections still open")
            server.abort_all()
        closing.cancel()
        second.cancel()


def start(loaded: Loaded, *, adapter: str, codec: type[Codec]) -> None:
    """Serve a loaded configuration on asyncio (uvloop if installed) until stopped."""
    setup_logging(loaded.config)
    driver = Driver(loaded.proxy)
    factory = None
    if importlib.util.find_spec("uvloop") is not None:
        import uvloop  # noqa: PLC0415

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(driver, loaded.config, adapter=adapter, codec=codec))
