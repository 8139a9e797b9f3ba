"""Byte streams for the adapters: lean ones on asyncio and trio, anyio's for TLS on trio.

anyio's asyncio ``SocketStream`` pauses and resumes reading around every
``receive()`` (two ``epoll_ctl`` calls) and spends a whole event-loop turn
in every ``send()``. On the proxy's hot path that was more than half the cost
of a request. Under asyncio we therefore use ``AsyncioStream``, a
``Protocol`` with a bounded buffer behind anyio's ``ByteStream`` interface;
under trio, ``adapters._trio_streams.TrioStream`` for plain TCP (anyio's own
streams for TLS). The code above this module is the same for all: it sees an
``anyio.abc.ByteStream``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import select
import socket
import ssl
import sys
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import anyio
import anyio.abc
import sniffio
from anyio.abc import SocketAttribute

from core._errors import detached

__all__ = [
    "AsyncioStream",
    "PumpedStream",
    "Clock",
    "clock",
    "abort",
    "accept",
    "accept_queued",
    "bound_writes",
    "connect_tcp",
    "idle_is_readable",
    "is_closed",
    "listen",
    "raw_socket",
    "serve_tcp",
    "using_asyncio",
]

_HIGH_WATER = 1 << 20  # buffered bytes before we stop reading from the socket
_LOW_WATER = 1 << 18
# accept() failing for want of descriptors, buffers or memory is load, not a
# fault: the server waits (0.1 s, doubling to 1 s) and tries again, serving the
# connections it has meanwhile; new ones wait in the listen backlog.
_ACCEPT_CAPACITY = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# A connection that failed before it was accepted: try the next one at once.
_ACCEPT_SKIP = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR})
_ACCEPT_BACKOFF = (0.1, 1.0)
_ACCEPT_BATCH = 256  # connections taken from the listen queue at one wake-up, at most
_ACCEPT_EPISODE_GAP = 10.0

logger = logging.getLogger("sansproxy")

# anyio imports its parts lazily, on first use, and importing opens files: the
# first request a server serves once it is out of descriptors would fail (a 500).
# What the adapters use while serving is loaded now.
_SERVING = (
    anyio.BrokenResourceError,
    anyio.CancelScope,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    anyio.Event,
    anyio.aclose_forcefully,
    anyio.create_task_group,
    anyio.current_time,
    anyio.fail_after,
    anyio.move_on_after,
    anyio.sleep,
    anyio.sleep_forever,
)


Clock = Callable[[], float]


def using_asyncio() -> bool:
    """True when running under asyncio (the lean streams apply)."""
    return sniffio.current_async_library() == "asyncio"


def clock() -> Clock:
    """The running loop's clock (what anyio deadlines use), without per-call lookups."""
    library = sniffio.current_async_library()
    if library == "asyncio":
        return asyncio.get_running_loop().time
    if library == "trio":  # running, so imported (not imported here otherwise)
        # The run's clock itself: trio.current_time() is two calls more to it.
        trio_clock: Clock = sys.modules["trio"].lowlevel.current_clock().current_time
        return trio_clock
    return anyio.current_time


class _StreamProtocol(asyncio.Protocol):
    __slots__ = (
        "buffered",
        "chunks",
        "closed",
        "drain_waiter",
        "eof",
        "exception",
        "on_close",
        "paused_reading",
        "paused_writing",
        "transport",
        "waiter",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.eof = False
        self.closed = False
        self.exception: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None
        self.paused_reading = False
        self.paused_writing = False
        self.on_close: Callable[[], object] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > _HIGH_WATER and not self.paused_reading:
            self.paused_reading = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        self._closing()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.exception = exc
        self._wake()
        self._closing()
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self.paused_writing = True

    def resume_writing(self) -> None:
        self.paused_writing = False
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _closing(self) -> None:
        callback = self.on_close
        if callback is not None:
            self.on_close = None
            callback()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class AsyncioStream(anyio.abc.ByteStream):
    """A TCP (or TLS) connection as an anyio ``ByteStream``, on asyncio callbacks.

    ``write_timeout`` bounds how long ``send`` waits for the peer to read
    (infinite unless set).
    """

    __slots__ = ("_loop", "_protocol", "_transport", "write_timeout")

    def __init__(self, transport: asyncio.Transport, protocol: _StreamProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self.write_timeout = math.inf

    async def receive(self, max_bytes: int = 65536) -> bytes:
        protocol = self._protocol
        chunks = protocol.chunks
        if not chunks:
            if protocol.closed and protocol.exception is not None:
                raise anyio.BrokenResourceError from protocol.exception
            if protocol.eof or protocol.closed:
                raise anyio.EndOfStream
            waiter = protocol.waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                protocol.waiter = None
            if not chunks:
                if protocol.exception is not None:
                    raise anyio.BrokenResourceError from protocol.exception
                raise anyio.EndOfStream
        chunk = chunks.popleft()
        if len(chunk) > max_bytes:
            chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        protocol.buffered -= len(chunk)
        if protocol.paused_reading and protocol.buffered < _LOW_WATER:
            protocol.paused_reading = False
            self._transport.resume_reading()
        return chunk

    async def send(self, item: bytes) -> None:
        """Write ``item``; wait while the peer does not read what is buffered.

        Raises ``TimeoutError`` (and aborts the connection) if that wait
        reaches ``write_timeout``. Only this slow path arms a timer.
        """
        protocol = self._protocol
        if protocol.closed or self._transport.is_closing():
            raise anyio.BrokenResourceError from protocol.exception
        self._transport.write(item)
        if protocol.paused_writing:
            waiter = protocol.drain_waiter = self._loop.create_future()
            timeout = self.write_timeout
            expiry = None
            if timeout != math.inf:
                expiry = self._loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            except TimeoutError:
                self._transport.abort()  # a close would wait for the peer to read
                raise
            finally:
                protocol.drain_waiter = None
                if expiry is not None:
                    expiry.cancel()
            if protocol.closed:
                raise anyio.BrokenResourceError from protocol.exception

    async def send_eof(self) -> None:
        transport = self._transport
        if self._protocol.closed or transport.is_closing():
            # uvloop raises on a closed transport: the peer has gone already.
            raise anyio.BrokenResourceError from self._protocol.exception
        if transport.can_write_eof():
            transport.write_eof()

    async def aclose(self) -> None:
        self._transport.close()

    def abort(self) -> None:
        """Close at once, without waiting for buffered writes."""
        self._transport.abort()

    def is_closed(self) -> bool:
        """Whether the connection is closed or closing."""
        return self._protocol.closed or self._transport.is_closing()

    def watch_close(self, callback: Callable[[], object] | None) -> None:
        """Call ``callback`` once, when the peer closes or the connection breaks.

        ``None`` stops watching. Already closed: called at once.
        """
        protocol = self._protocol
        if callback is not None and (protocol.eof or protocol.closed):
            callback()
            return
        protocol.on_close = callback

    def idle_is_readable(self) -> bool:
        """Whether anything (data, EOF, an error) arrived: a stale idle connection.

        Asks the kernel too: a FIN that arrived since the loop last polled is
        not in the protocol's state yet.
        """
        protocol = self._protocol
        if protocol.chunks or protocol.eof or protocol.closed:
            return True
        sock = self._transport.get_extra_info("socket")
        return sock is not None and _poll_readable(sock.fileno())

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        transport = self._transport
        return {
            SocketAttribute.raw_socket: lambda: transport.get_extra_info("socket"),
            SocketAttribute.local_address: lambda: transport.get_extra_info("sockname"),
            SocketAttribute.remote_address: lambda: transport.get_extra_info("peername"),
        }


class PumpedStream(anyio.abc.ByteStream):
    """Any anyio byte stream, read ahead by one task per connection.

    It lets a server learn at once that a peer closed, through
    ``watch_close``, as ``AsyncioStream`` does, without a watching task per
    request. Run ``pump()`` in a task for as long as the stream is used.
    """

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._error: BaseException | None = None
        self._readable = anyio.Event()
        self._space = anyio.Event()
        self._on_close: Callable[[], object] | None = None

    async def pump(self) -> None:
        """Read into the buffer until the peer closes or the connection breaks."""
        try:
            while True:
                while self._buffered >= _HIGH_WATER:
                    self._space = anyio.Event()
                    await self._space.wait()
                data = await self._stream.receive(65536)
                self._chunks.append(data)
                self._buffered += len(data)
                self._readable.set()
        except anyio.EndOfStream:
            self._eof = True
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self._error = detached(exc)  # kept: without the frames that hold this stream
        except anyio.get_cancelled_exc_class() as cancelled:
            # anyio's trio streams raise it from a frame that holds it: a reference
            # cycle (this stream in it), unless its frames go.
            detached(cancelled)
            raise
        self._readable.set()
        callback, self._on_close = self._on_close, None
        if callback is not None:
            callback()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        chunks = self._chunks
        while not chunks:
            if self._error is not None:
                raise anyio.BrokenResourceError from self._error
            if self._eof:
                raise anyio.EndOfStream
            self._readable = anyio.Event()
            await self._readable.wait()
        chunk = chunks.popleft()
        if len(chunk) > max_bytes:
            chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        self._buffered -= len(chunk)
        if self._buffered < _LOW_WATER:
            self._space.set()
        return chunk

    async def send(self, item: bytes) -> None:
        await self._stream.send(item)

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()

    def watch_close(self, callback: Callable[[], object] | None) -> None:
        """Call ``callback`` once, when the peer closes or the connection breaks."""
        if callback is not None and (self._eof or self._error is not None):
            callback()
            return
        self._on_close = callback

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._stream.extra_attributes


async def connect_tcp(
    host: str, port: int, *, ssl_context: ssl.SSLContext | None = None
) -> anyio.abc.ByteStream:
    """Connect, with TLS when ``ssl_context`` is given (SNI = ``host``)."""
    if not using_asyncio():
        if ssl_context is None:
            return _lean(await anyio.connect_tcp(host, port))
        return await anyio.connect_tcp(
            host, port, ssl_context=ssl_context, tls_hostname=host, tls_standard_compatible=False
        )
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(
        _StreamProtocol,
        host,
        port,
        ssl=ssl_context,
        server_hostname=host if ssl_context is not None else None,
    )
    _nodelay(transport)
    return AsyncioStream(transport, protocol)


def bound_writes(stream: anyio.abc.ByteStream, timeout: float) -> bool:
    """Let ``stream`` bound its blocked writes by ``timeout`` itself (``send`` then
    aborts and raises ``TimeoutError``): an ``AsyncioStream`` or a ``TrioStream``,
    or a ``PumpedStream`` over one. False if it cannot."""
    inner = stream._stream if isinstance(stream, PumpedStream) else stream
    if not hasattr(inner, "write_timeout"):
        return False
    inner.write_timeout = timeout
    return True


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):  # already closed
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def abort(stream: anyio.abc.ByteStream) -> None:
    """Close ``stream`` at once without awaiting: the peer sees it end now."""
    if isinstance(stream, AsyncioStream):
        stream.abort()
        return
    raw = stream.extra(SocketAttribute.raw_socket, None)
    if raw is None:
        return
    # On a duplicate of the descriptor: some event loops' socket objects refuse
    # shutdown(), the kernel socket does not. -1 (closed already) fails fromfd.
    with (
        contextlib.suppress(OSError),
        socket.fromfd(raw.fileno(), raw.family, socket.SOCK_STREAM) as dup,
    ):
        dup.shutdown(socket.SHUT_RDWR)


def raw_socket(stream: anyio.abc.ByteStream) -> socket.socket | None:
    """The socket under ``stream``, to look up once and pass to ``is_closed`` and
    ``idle_is_readable`` (anyio makes a stream's attributes anew at each lookup);
    None for an ``AsyncioStream``, which answers for itself."""
    if isinstance(stream, AsyncioStream):
        return None
    raw: socket.socket | None = stream.extra(SocketAttribute.raw_socket, None)
    return raw


def is_closed(stream: anyio.abc.ByteStream, raw: socket.socket | None = None) -> bool:
    """Whether the connection is already closed (a write may have failed silently);
    ``raw``: its ``raw_socket``, if looked up already."""
    if isinstance(stream, AsyncioStream):
        return stream.is_closed()
    if raw is None:
        raw = raw_socket(stream)
    return raw is not None and raw.fileno() < 0


def idle_is_readable(stream: anyio.abc.ByteStream, raw: socket.socket | None = None) -> bool:
    """Whether an idle connection has something to read: the peer closed it, usually;
    ``raw``: its ``raw_socket``, if looked up already."""
    if isinstance(stream, AsyncioStream):
        return stream.idle_is_readable()
    if raw is None:
        raw = raw_socket(stream)
    return raw is not None and _poll_readable(raw.fileno())


def _poll_readable(fd: int) -> bool:
    """Zero-timeout poll(2): readable, hung up or broken. A closed descriptor counts."""
    if fd < 0:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


Handler = Callable[[anyio.abc.ByteStream], Coroutine[Any, Any, None]]


async def serve_tcp(
    host: str,
    port: int,
    handler: Handler,
    *,
    task_group: anyio.abc.TaskGroup,
    started: Callable[[int], None],
) -> None:
    """Accept connections until cancelled, running ``handler`` for each in ``task_group``.

    ``started(port)`` is called once listening (the actual port when 0 was asked).
    Running out of descriptors (or buffers, or memory) never ends it: see
    ``_AcceptBackoff``.
    """
    # Our own accept loop, not loop.create_server(): at EMFILE/ENFILE libuv
    # resets the connections it cannot accept (with a descriptor it keeps in
    # reserve), and on any other accept() error uvloop closes its listener for
    # good (uvloop/handles/streamserver.pyx: _fatal_error). Here they wait in
    # the backlog, and the listener lives. Elsewhere (trio) not anyio's
    # listener either: it took one connection a wake-up (see accept_queued).
    listening = listen(host, port)
    if not using_asyncio():
        # Now, not at the first connection: importing opens files (see _SERVING).
        _trio_stream()
    started(listening.getsockname()[1])
    backoff = _AcceptBackoff()
    with listening:
        if not using_asyncio():
            while True:
                for sock in await accept_queued(listening, backoff):
                    task_group.start_soon(_serve_anyio_socket, sock, handler)
        while True:
            sock = await accept(listening, backoff)
            task_group.start_soon(_serve_socket, sock, handler)


def listen(host: str, port: int) -> socket.socket:
    """A non-blocking listening socket on ``host``:``port`` (backlog 2048), for
    :func:`accept`. Raises ``OSError`` if it cannot listen."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    listening = socket.create_server(address, family=family, backlog=2048)
    listening.setblocking(False)
    return listening


async def accept(listening: socket.socket, backoff: _AcceptBackoff) -> socket.socket:
    """The next connection on ``listening``, on asyncio: one already queued is taken
    without a future; an ``accept()`` error (EMFILE ...) waits in ``backoff``."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            try:
                sock, _ = listening.accept()
            except BlockingIOError:
                sock, _ = await loop.sock_accept(listening)
        except OSError as exc:
            await backoff.wait(exc)
            continue
        backoff.accepted()
        return sock


async def _serve_socket(sock: socket.socket, handler: Handler) -> None:
    """Run ``handler`` on an accepted connection, as an ``AsyncioStream``."""
    try:
        transport, protocol = await asyncio.get_running_loop().connect_accepted_socket(
            _StreamProtocol, sock
        )
    except OSError:  # gone already
        sock.close()
        return
    _nodelay(transport)
    await handler(AsyncioStream(transport, protocol))


async def accept_queued(listening: socket.socket, backoff: _AcceptBackoff) -> list[socket.socket]:
    """The connections queued on ``listening`` (up to ``_ACCEPT_BATCH``), waiting for
    one if none is, on any anyio backend; an ``accept()`` error (EMFILE ...) waits in
    ``backoff``. All at once: a loop busy with thousands of streams wakes the
    accepting task seldom, and one connection a wake-up let the listen queue
    overflow (trio, 5,000 streams opened over 5 s)."""
    while True:
        queued: list[socket.socket] = []
        try:
            while len(queued) < _ACCEPT_BATCH:
                queued.append(listening.accept()[0])
        except BlockingIOError:
            pass
        except OSError as exc:
            if not queued:
                await backoff.wait(exc)
                continue
        if queued:
            backoff.accepted()
            return queued
        await anyio.wait_readable(listening)


async def _serve_anyio_socket(sock: socket.socket, handler: Handler) -> None:
    """Run ``handler`` on an accepted connection: a ``TrioStream`` on trio, else anyio's
    stream of the backend."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if sniffio.current_async_library() == "trio":
            stream: anyio.abc.ByteStream = _trio_stream()(sock)
        else:
            stream = await anyio.abc.SocketStream.from_socket(sock)
    except OSError:  # gone already
        sock.close()
        return
    await handler(stream)


def _lean(stream: anyio.abc.SocketStream) -> anyio.abc.ByteStream:
    """anyio's plain TCP stream as a ``TrioStream`` on trio (the same socket)."""
    if sniffio.current_async_library() != "trio":
        return stream
    return _trio_stream()(stream.extra(SocketAttribute.raw_socket))


def _trio_stream() -> Callable[[socket.socket], anyio.abc.ByteStream]:
    """``TrioStream``, imported on first use: trio is running then (never imported
    under asyncio)."""
    from ._trio_streams import TrioStream  # noqa: PLC0415

    return TrioStream


class _AcceptBackoff:
    """An accept loop's answer to accept() failing for lack of resources.

    It waits before the next try (0.1 s, doubling to 1 s) and logs one warning
    per episode. At the limit, accepts fail and succeed by turns (each
    connection that closes lets one more in), so an episode ends only once
    accept() has not failed for ``_ACCEPT_EPISODE_GAP`` seconds; the next
    connection accepted then says how long it lasted.
    """

    __slots__ = ("delay", "failures", "last", "since")

    def __init__(self) -> None:
        self.delay = 0.0
        self.failures = 0
        self.since = 0.0
        self.last = 0.0

    async def wait(self, exc: OSError) -> None:
        """Wait before the next try; re-raise ``exc`` unless it is a lack of resources
        (or one connection's own failure: no wait then)."""
        if exc.errno in _ACCEPT_SKIP:
            return
        if exc.errno not in _ACCEPT_CAPACITY:
            raise exc
        now = anyio.current_time()
        if not self.failures:
            self.since = now
            logger.warning(
                "cannot accept new connections: %s (%s); retrying every %g s at most, "
                "still serving the open ones",
                exc.strerror,
                errno.errorcode.get(exc.errno or 0, exc.errno),
                _ACCEPT_BACKOFF[1],
            )
        self.failures += 1
        self.last = now
        self.delay = min(self.delay * 2 or _ACCEPT_BACKOFF[0], _ACCEPT_BACKOFF[1])
        await anyio.sleep(self.delay)

    def accepted(self) -> None:
        """A connection was accepted: ends an episode of failures long enough ago."""
        if self.failures and anyio.current_time() - self.last >= _ACCEPT_EPISODE_GAP:
            logger.info(
                "accepting connections again (%d tries failed over %.1f s)",
                self.failures,
                self.last - self.since,
            )
            self.failures = 0
            self.delay = 0.0
