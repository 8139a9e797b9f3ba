"""Byte streams for the adapters: lean asyncio ones, anyio's everywhere else.

anyio's asyncio ``SocketStream`` pauses and resumes reading around every
``receive()`` (two ``epoll_ctl`` calls) and spends a whole event-loop turn
in every ``send()``. On the proxy's hot path that was more than half the cost
of a request. Under asyncio we therefore use ``AsyncioStream``, a
``Protocol`` with a bounded buffer behind anyio's ``ByteStream`` interface;
under trio, anyio's own streams. The code above this module is the same for
both: it sees an ``anyio.abc.ByteStream``.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import anyio
import anyio.abc
import sniffio
from anyio.abc import SocketAttribute

__all__ = [
    "AsyncioStream",
    "PumpedStream",
    "Clock",
    "clock",
    "abort",
    "connect_tcp",
    "idle_is_readable",
    "is_closed",
    "serve_tcp",
    "using_asyncio",
]

_HIGH_WATER = 1 << 20  # buffered bytes before we stop reading from the socket
_LOW_WATER = 1 << 18


Clock = Callable[[], float]


def using_asyncio() -> bool:
    """True when running under asyncio (the lean streams apply)."""
    return sniffio.current_async_library() == "asyncio"


def clock() -> Clock:
    """The running loop's clock (what anyio deadlines use), without per-call lookups."""
    if using_asyncio():
        return asyncio.get_running_loop().time
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


class _ServerProtocol(_StreamProtocol):
    """Hands each accepted connection, as a stream, to the accept loop."""

    __slots__ = ("_accepted",)

    def __init__(self, accepted: asyncio.Queue[AsyncioStream]) -> None:
        super().__init__()
        self._accepted = accepted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        _nodelay(transport)
        self._accepted.put_nowait(AsyncioStream(transport, self))  # type: ignore[arg-type]


class AsyncioStream(anyio.abc.ByteStream):
    """A TCP (or TLS) connection as an anyio ``ByteStream``, on asyncio callbacks."""

    __slots__ = ("_loop", "_protocol", "_transport")

    def __init__(self, transport: asyncio.Transport, protocol: _StreamProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()

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
        protocol = self._protocol
        if protocol.closed or self._transport.is_closing():
            raise anyio.BrokenResourceError from protocol.exception
        self._transport.write(item)
        if protocol.paused_writing:
            waiter = protocol.drain_waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                protocol.drain_waiter = None
            if protocol.closed:
                raise anyio.BrokenResourceError from protocol.exception

    async def send_eof(self) -> None:
        if self._transport.can_write_eof():
            self._transport.write_eof()

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
            self._error = exc
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
            return await anyio.connect_tcp(host, port)
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


def is_closed(stream: anyio.abc.ByteStream) -> bool:
    """Whether the connection is already closed (a write may have failed silently)."""
    if isinstance(stream, AsyncioStream):
        return stream.is_closed()
    raw = stream.extra(SocketAttribute.raw_socket, None)
    return raw is not None and raw.fileno() < 0


def idle_is_readable(stream: anyio.abc.ByteStream) -> bool:
    """Whether an idle connection has something to read: the peer closed it, usually."""
    if isinstance(stream, AsyncioStream):
        return stream.idle_is_readable()
    raw = stream.extra(SocketAttribute.raw_socket, None)
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
    """
    if not using_asyncio():
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        started(listener.extra(SocketAttribute.local_port))
        async with listener:
            await listener.serve(handler, task_group=task_group)
        return
    loop = asyncio.get_running_loop()
    accepted: asyncio.Queue[AsyncioStream] = asyncio.Queue()

    server = await loop.create_server(
        lambda: _ServerProtocol(accepted), host, port, backlog=2048, reuse_address=True
    )
    started(server.sockets[0].getsockname()[1])
    try:
        while True:
            stream: anyio.abc.ByteStream = await accepted.get()
            task_group.start_soon(handler, stream)
    finally:
        server.close()
        while not accepted.empty():
            accepted.get_nowait().abort()
