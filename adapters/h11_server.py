"""sansproxy's own HTTP/1.1 server: h11 parses the requests.

    python -m adapters.h11_server --port 3000

On asyncio (this command, and ``sansproxy serve``), it runs on
``asyncio.Protocol`` callbacks: ``adapters._loop_server`` with its
``H11Codec``, and the callback driver (``adapters._loop_driver``). On trio
(``adapters.trio_runner``), ``H11Server`` below serves, on anyio streams
with the anyio ``Driver``; both behave the same:

Keep-alive and pipelining (requests answered in order), a deadline for each
request head (slowloris), for each whole request (a trickled body) and for idle
keep-alive connections, a bound on how long a write waits for the client to
read, and a graceful stop on SIGINT/SIGTERM: stop accepting, let in-flight
responses finish within the grace period, exit 0.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

import anyio
import anyio.abc
import h11

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
from core._errors import detached

from . import _loop_server
from ._cli import (
    Loaded,
    cannot_listen,
    freeze_heap,
    log_startup,
    parse_args,
    setup_logging,
    stopped,
)
from ._driver import ClientDisconnected, Driver, stopped_reading
from ._h11_codec import H11Codec
from ._streams import AsyncioStream, PumpedStream, bound_writes, serve_tcp

__all__ = ["H11Server", "main", "serve", "start"]

logger = logging.getLogger("sansproxy")

_RECEIVE_SIZE = 65536
_SERVER_HEADER = (b"server", b"sansproxy")
# After answering early (before the request body was read): how long, and how
# much of the rest of the body, to read before closing.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 16 << 20
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


class _H11Sink:
    """Buffers what the driver sends and writes it to the socket on flush."""

    __slots__ = ("_conn", "_out", "_stream", "_write_timeout", "bounds_writes", "cut", "started")

    def __init__(
        self,
        conn: h11.Connection,
        stream: anyio.abc.ByteStream,
        write_timeout: float,
        *,
        bounds_writes: bool = False,
    ) -> None:
        self._conn = conn
        self._stream = stream
        self._write_timeout = write_timeout
        #: The stream bounds a blocked write by ``write_timeout`` itself (TimeoutError).
        self.bounds_writes = bounds_writes
        self._out: list[bytes] = []
        self.started = False
        self.cut = False

    def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        headers.append(_SERVER_HEADER)
        if self._conn.their_state is not h11.DONE:
            # Answered before the request body was read (a 413, say): this
            # connection cannot carry another request, so say so.
            headers.append((b"connection", b"close"))
        data = self._conn.send(
            h11.Response(status_code=status, headers=headers, reason=_REASONS.get(status, b""))
        )
        if data:
            self._out.append(data)

    def send(self, data: bytes) -> None:
        out = self._conn.send(h11.Data(data=data))
        if out:
            self._out.append(out)

    def end(self, complete: bool) -> None:
        if complete:
            out = self._conn.send(h11.EndOfMessage())
            if out:
                self._out.append(out)
        else:
            self.cut = True

    async def flush(self) -> None:
        if not self._out:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        try:
            await self._stream.send(data)
        except TimeoutError as exc:  # the stream's own write_timeout (it aborted)
            raise stopped_reading(self._write_timeout) from exc
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise ClientDisconnected from exc


class _ConnectionGone(Exception):
    pass


class _Timeout(Exception):
    pass


class H11Server:
    """Serves HTTP/1.1 connections with one driver."""

    def __init__(self, driver: Driver, config: ProxyConfig) -> None:
        self.driver = driver
        self.server = config.server
        self.max_header_size = config.limits.max_header_size
        self.shutting_down = False
        self._idle: set[anyio.CancelScope] = set()
        self._connections = 0
        self._all_closed = anyio.Event()

    def begin_shutdown(self) -> None:
        """Stop serving new requests: idle keep-alive connections close at once."""
        self.shutting_down = True
        for scope in list(self._idle):
            scope.cancel()
        if self._connections == 0:
            self._all_closed.set()

    async def wait_all_closed(self) -> None:
        """Wait until every connection has closed."""
        await self._all_closed.wait()

    async def handle(self, stream: anyio.abc.ByteStream) -> None:
        """Serve one client connection until it closes."""
        self._connections += 1
        metrics = self.driver.sinks.metrics
        if metrics is not None:
            metrics.connection_opened()
        try:
            async with stream:
                if isinstance(stream, AsyncioStream):
                    await self._serve_until_closed(stream)
                else:
                    # One reader per connection tells us when the client leaves.
                    pumped = PumpedStream(stream)
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(pumped.pump)
                        await self._serve_until_closed(pumped)
                        tg.cancel_scope.cancel()
        except Exception:  # a bug: this connection closes, the server and the others live on
            logger.exception("internal error on a client connection; closing it")
        finally:
            if metrics is not None:
                metrics.connection_closed()
            self._connections -= 1
            if self.shutting_down and self._connections == 0:
                self._all_closed.set()

    async def _serve_until_closed(self, stream: anyio.abc.ByteStream) -> None:
        # The client going away between requests needs no answer.
        with contextlib.suppress(
            anyio.BrokenResourceError, anyio.ClosedResourceError, OSError, _ConnectionGone
        ):
            await self._serve(stream)

    async def _receive(
        self, conn: h11.Connection, stream: anyio.abc.ByteStream, deadline: float
    ) -> None:
        if deadline == math.inf:  # the caller's scope bounds the wait
            conn.receive_data(await self._read(stream))
            return
        with anyio.CancelScope(deadline=deadline):
            conn.receive_data(await self._read(stream))
            return
        raise _Timeout

    @staticmethod
    async def _read(stream: anyio.abc.ByteStream) -> bytes:
        try:
            return await stream.receive(_RECEIVE_SIZE)
        except anyio.EndOfStream:
            return b""
        except (anyio.BrokenResourceError, OSError) as exc:
            raise _ConnectionGone from exc

    async def _next_event(
        self, conn: h11.Connection, stream: anyio.abc.ByteStream, deadline: float
    ) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            await self._receive(conn, stream, deadline)

    async def _wait_request(
        self, conn: h11.Connection, stream: anyio.abc.ByteStream, first: bool
    ) -> tuple[Any, float]:
        """The next request head, honouring the idle and head deadlines, and the
        deadline of the whole request (``server.request_timeout`` from its first
        byte, or from the connection's start for its first request)."""
        server = self.server
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event, self.driver.now() + server.request_timeout
        if not first:
            # Idle keep-alive: wait for the first byte, cancellable by shutdown.
            with anyio.CancelScope() as scope:
                self._idle.add(scope)
                try:
                    if self.shutting_down:
                        return None, math.inf
                    scope.deadline = self.driver.now() + server.keepalive_timeout
                    await self._receive(conn, stream, math.inf)
                finally:
                    self._idle.discard(scope)
            if scope.cancelled_caught:
                return None, math.inf
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event, self.driver.now() + server.request_timeout
        now = self.driver.now()
        deadline = now + server.request_timeout
        head = min(now + server.header_timeout, deadline)
        return await self._next_event(conn, stream, head), deadline

    async def _serve(self, stream: anyio.abc.ByteStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_header_size)
        # The stream bounds its own blocked writes if it can (asyncio's, trio's lean
        # ones); else the driver does (see Driver.run).
        bounds_writes = bound_writes(stream, self.server.write_timeout)
        first = True
        driver = self.driver
        while True:
            try:
                event, deadline = await self._wait_request(conn, stream, first)
            except h11.RemoteProtocolError as exc:
                await self._bad_request(conn, stream, exc)
                return
            except _Timeout:
                if conn.their_state is h11.SEND_BODY or conn.trailing_data[0]:
                    await self._send_error(conn, stream, 408, "timed out reading the request")
                else:
                    logger.debug("closing a connection that sent no request head in time")
                return
            first = False
            if event is None or type(event) is h11.ConnectionClosed:
                return
            assert type(event) is h11.Request
            ex = driver.new_exchange()
            ex.handle(
                RequestReceived(method=event.method, target=event.target, headers=event.headers),
                now=self.driver.now(),
            )
            sink = _H11Sink(conn, stream, self.server.write_timeout, bounds_writes=bounds_writes)
            head = event.method == b"HEAD"
            try:
                if not ex.finished:
                    if conn.they_are_waiting_for_100_continue:
                        continue_ = h11.InformationalResponse(status_code=100, headers=[])
                        await stream.send(conn.send(continue_) or b"")
                    await self._read_body(ex, conn, stream, deadline)
            except h11.RemoteProtocolError as exc:
                ex.handle(ClientGone(), now=self.driver.now())
                await driver.run(ex, sink)
                await self._bad_request(conn, stream, exc, head=head)
                return
            except _ConnectionGone:
                ex.handle(ClientGone(), now=self.driver.now())
                await driver.run(ex, sink)
                return
            except _Timeout:
                # Too slow to send its request: the client is dropped, with a 408.
                ex.handle(ClientGone(reason=self._too_slow(deadline)), now=self.driver.now())
                await driver.run(ex, sink)
                await self._send_error(
                    conn, stream, 408, "timed out reading the request", head=head
                )
                await self._linger(stream)
                return
            await self._run(ex, conn, stream, sink)
            if sink.cut or not sink.started:
                return
            if conn.their_state is h11.SEND_BODY:
                # Answered before the whole request body was read: stop
                # writing, and read a little of what is still coming so that
                # closing does not reset the connection under the answer.
                await self._linger(stream)
                return
            if conn.their_state is not h11.DONE:  # the client said Connection: close
                return
            if self.shutting_down or conn.our_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _linger(self, stream: anyio.abc.ByteStream) -> None:
        with anyio.move_on_after(_LINGER_SECONDS):
            try:
                await stream.send_eof()
                received = 0
                while received < _LINGER_BYTES:
                    received += len(await stream.receive(_RECEIVE_SIZE))
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass

    def _too_slow(self, deadline: float) -> str:
        """Why a client that timed out sending its request body is dropped."""
        server = self.server
        if self.driver.now() >= deadline:
            return (
                f"it sent its request too slowly: over {server.request_timeout:g} s "
                "(server.request_timeout)"
            )
        return (
            f"it sent nothing of its request body for {server.header_timeout:g} s "
            "(server.header_timeout)"
        )

    async def _read_body(
        self, ex: Exchange, conn: h11.Connection, stream: anyio.abc.ByteStream, deadline: float
    ) -> None:
        """Feed the request body, each read bounded by ``header_timeout`` and all of
        them by ``deadline`` (the whole request's)."""
        timeout = self.server.header_timeout
        while not ex.finished:
            event = await self._next_event(conn, stream, min(self.driver.now() + timeout, deadline))
            kind = type(event)
            if kind is h11.Data:
                ex.handle(RequestData(data=event.data), now=self.driver.now())
            elif kind is h11.EndOfMessage:
                ex.handle(RequestEnded(), now=self.driver.now())
                return
            else:  # ConnectionClosed mid-body
                raise _ConnectionGone

    async def _run(
        self, ex: Exchange, conn: h11.Connection, stream: anyio.abc.ByteStream, sink: _H11Sink
    ) -> None:
        """Run the exchange while watching the socket: EOF cancels it at once."""
        if ex.finished:
            await self.driver.run(ex, sink)
            return
        # The stream tells us when the peer closes: that cancels the exchange.
        assert isinstance(stream, AsyncioStream | PumpedStream)
        await self.driver.run(ex, sink, stream.watch_close)

    async def _bad_request(
        self,
        conn: h11.Connection,
        stream: anyio.abc.ByteStream,
        exc: h11.RemoteProtocolError,
        *,
        head: bool = False,
    ) -> None:
        detached(exc)  # h11 raises it from a frame that holds it: a reference cycle
        # h11's message may quote the offending line, an Authorization header
        # with its key say: only the words before it are logged or sent back.
        reason = str(exc).split(":", 1)[0].strip() or type(exc).__name__
        logger.warning("malformed HTTP from a client: %s (values not shown)", reason)
        status = exc.error_status_hint
        message = f"malformed HTTP request: {reason} (values not shown)"
        await self._send_error(conn, stream, status, message, head=head)

    async def _send_error(
        self,
        conn: h11.Connection,
        stream: anyio.abc.ByteStream,
        status: int,
        message: str,
        *,
        head: bool = False,
    ) -> None:
        """A connection-level error answer (no exchange made it), then the connection
        closes. To a HEAD request, the head alone."""
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        code = {431: "request_header_fields_too_large", 408: "request_timeout"}.get(
            status, "invalid_request"
        )
        body = render_error(ValidationError(message, status=status, code=code))
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            _SERVER_HEADER,
        ]
        try:
            data = conn.send(
                h11.Response(status_code=status, headers=headers, reason=_REASONS.get(status, b""))
            )
            if not head:
                data = (data or b"") + (conn.send(h11.Data(data=body)) or b"")
            data = (data or b"") + (conn.send(h11.EndOfMessage()) or b"")
            await stream.send(data)
        except (h11.LocalProtocolError, anyio.BrokenResourceError, OSError):
            pass


async def serve(
    driver: Driver,
    config: ProxyConfig,
    *,
    adapter: str = "h11",
) -> None:
    """Listen, serve until SIGINT/SIGTERM, then stop gracefully."""
    server = H11Server(driver, config)

    def started(port: int) -> None:
        log_startup(config, adapter=adapter, port=port)
        freeze_heap()

    failed: list[OSError] = []
    # Signals are received until the end, so a third Ctrl-C while the traces are
    # written is no KeyboardInterrupt.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            accept_scope = anyio.CancelScope()

            async def accept() -> None:
                with accept_scope:
                    try:
                        await serve_tcp(
                            config.server.host,
                            config.server.port,
                            server.handle,
                            task_group=tg,
                            started=started,
                        )
                    except OSError as exc:
                        failed.append(exc)
                        tg.cancel_scope.cancel()

            tg.start_soon(accept)
            async for signum in signals:
                logger.info(
                    "received %s: finishing in-flight requests (grace %.0f s)",
                    signal.Signals(signum).name,
                    config.server.shutdown_grace,
                )
                break
            accept_scope.cancel()  # stops accepting and closes the listener
            server.begin_shutdown()
            with anyio.move_on_after(config.server.shutdown_grace) as grace:
                async with anyio.create_task_group() as waiters:

                    async def second_signal() -> None:
                        async for _ in signals:
                            logger.warning("second signal: stopping now")
                            grace.cancel()

                    waiters.start_soon(second_signal)
                    await server.wait_all_closed()
                    waiters.cancel_scope.cancel()
            if grace.cancel_called:
                logger.warning("closing the connections still open")
            tg.cancel_scope.cancel()
        # Every connection task has ended, so every trace record has been handed over.
        with anyio.CancelScope(shield=True):
            await driver.aclose()
        if failed:
            # The same line and status on every adapter (and no traceback).
            cannot_listen(config.server.host, config.server.port, failed[0])
    stopped()


def run(argv: Sequence[str] | None, *, adapter: str, backend: str) -> None:
    """Parse the command line and serve on ``backend`` ("asyncio" or "trio")."""
    loaded = parse_args(
        f"python -m adapters.{'trio_runner' if backend == 'trio' else 'h11_server'}",
        "sansproxy: an LLM API proxy (HTTP/1.1 server on "
        + ("trio" if backend == "trio" else "asyncio")
        + ").",
        argv,
    )
    start(loaded, adapter=adapter, backend=backend)


def start(loaded: Loaded, *, adapter: str, backend: str) -> None:
    """Serve a loaded configuration on ``backend`` ("asyncio" or "trio") until stopped.

    On asyncio: the callback server (``adapters._loop_server``) with h11 as its parser.
    """
    if backend == "asyncio":
        _loop_server.start(loaded, adapter=adapter, codec=H11Codec)
        return
    setup_logging(loaded.config)
    driver = Driver(loaded.proxy)
    anyio.run(lambda: serve(driver, loaded.config, adapter=adapter), backend=backend)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m adapters.h11_server``."""
    run(argv, adapter="h11", backend="asyncio")


if __name__ == "__main__":
    main(sys.argv[1:])
