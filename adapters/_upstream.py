"""A lean keep-alive HTTP/1.1 client for upstream calls.

``adapters._http1`` frames the messages (``httptools``, llhttp),
``adapters._streams`` carries the bytes (lean asyncio streams, or anyio's on
trio: the same code runs on both), and a small per-origin LIFO pool keeps
idle connections.
The hot path is one ``send`` per request (head and body in one buffer) and,
for a small response, one ``receive``; nothing else touches the event loop:
no task, no cancel scope and no log call per request.

Every socket, TLS and framing failure is raised as :class:`UpstreamError`
with a ``kind``; only cancellation passes through unchanged. A connection
that fails in any way, or whose response is abandoned, is closed, never
pooled again.
"""

from __future__ import annotations

import ssl
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import anyio

from core import Origin

from ._http1 import ResponseFramer, UpstreamError, encode
from ._streams import abort, connect_tcp, idle_is_readable, is_closed, raw_socket

__all__ = [
    "Origin",
    "PoolStatistics",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamResponse",
]

_RECEIVE_SIZE = 64 * 1024
# A reading or writing failure of the connection itself; everything else that
# a stream can raise is a bug or cancellation, and propagates.
_IO_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError, ssl.SSLError)


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolStatistics:
    """A snapshot of an :class:`UpstreamPool`'s counters."""

    idle_per_origin: Mapping[Origin, int]
    in_use: int
    opened: int
    reused: int
    stale_discarded: int
    retried: int


class _Connection:
    """One upstream connection, its framer, and what it framed of the current response.

    It is the framer's listener: the head, the body pieces not yet handed
    out and the end are kept here until the response reads them.
    """

    __slots__ = (
        "chunks",
        "ended",
        "error",
        "framer",
        "head",
        "keep_alive",
        "origin",
        "raw",
        "received",
        "stream",
    )

    def __init__(self, origin: Origin, stream: anyio.abc.ByteStream, max_head_size: int) -> None:
        self.origin = origin
        self.stream = stream
        self.raw = raw_socket(stream)  # looked up once
        self.framer = ResponseFramer(self, max_head_size)
        self.head: tuple[int, list[tuple[bytes, bytes]]] | None = None
        self.chunks: deque[bytes] = deque()
        self.ended = False
        self.keep_alive = False
        self.received = False  # any byte of the current response yet
        # A framing failure found after pieces that are still to be read: raised after them.
        self.error: UpstreamError | None = None

    def start(self, method: bytes, closing: bool) -> None:
        """Get ready for the response to the request about to be sent."""
        self.framer.expect(method, closing)
        self.head = None
        self.ended = False
        self.received = False

    # -- the framer's listener --

    def on_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.head = (status, headers)

    def on_data(self, data: bytes) -> None:
        self.chunks.append(data)

    def on_end(self, keep_alive: bool) -> None:
        self.ended = True
        self.keep_alive = keep_alive

    def is_stale(self) -> bool:
        """An idle connection with something to read: the server closed it, usually."""
        return idle_is_readable(self.stream, self.raw)

    async def aclose(self) -> None:
        """Close at once: no TLS close_notify, nothing awaited (anyio's aclose_forcefully)."""
        self.framer.close()
        await anyio.aclose_forcefully(self.stream)

    def shutdown(self) -> None:
        """Make the peer see the connection end now, without awaiting."""
        self.framer.close()
        abort(self.stream)


class UpstreamPool:
    """Keep-alive HTTP/1.1 connections to upstreams, idle ones kept per origin (LIFO)."""

    def __init__(
        self,
        *,
        max_idle_per_origin: int = 64,
        ssl_context: ssl.SSLContext | None = None,
        max_head_size: int = 64 * 1024,
    ) -> None:
        self._max_idle = max_idle_per_origin
        self._ssl_context = ssl_context
        self._max_head_size = max_head_size
        self._idle: dict[Origin, list[_Connection]] = {}
        # Connections shut down by abort(); their descriptors are released
        # on the next request() or aclose(), which may await.
        self._aborted: list[_Connection] = []
        self._in_use = 0
        self._opened = 0
        self._reused = 0
        self._stale_discarded = 0
        self._retried = 0

    async def request(
        self,
        origin: Origin,
        method: bytes,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        *,
        connect_timeout: float,
    ) -> UpstreamResponse:
        """Send one request; return once it is written, before the response arrives.

        ``headers`` are sent as given: they must contain Host and frame the
        body (``core.SendUpstreamRequest.headers`` do: the core adds
        Content-Length by its rule, ``core._headers.content_length``); a body
        its headers do not frame is refused (``protocol``) before a
        connection is taken (``adapters._http1.encode`` says what is sent). A
        pooled connection found closed by the server is discarded; if writing
        to a reused connection fails, the request is sent once more on a new
        connection.
        """
        request, closing = encode(method, target, headers, body)
        if self._aborted:
            await self._release_aborted()
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.is_stale():
                self._stale_discarded += 1
                await conn.aclose()
                continue
            self._reused += 1
            conn.start(method, closing)
            try:
                await _send_request(conn, request)
            except UpstreamError:  # "reset": sending fails no other way
                self._retried += 1
                break
            self._in_use += 1
            # Kept to send once more if the server closed this idle connection
            # as the request went out (see UpstreamResponse.receive_head).
            return UpstreamResponse(self, conn, resend=(request, method, closing, connect_timeout))
        conn = await self._send_new(origin, request, method, closing, connect_timeout)
        return UpstreamResponse(self, conn)

    async def _send_new(
        self, origin: Origin, request: bytes, method: bytes, closing: bool, connect_timeout: float
    ) -> _Connection:
        conn = await self._connect(origin, connect_timeout)
        conn.start(method, closing)
        await _send_request(conn, request)
        self._in_use += 1
        return conn

    async def aclose(self) -> None:
        """Close every idle connection (and those left by :meth:`UpstreamResponse.abort`)."""
        conns = [conn for idle in self._idle.values() for conn in idle]
        conns += self._aborted
        self._idle.clear()
        self._aborted = []
        # Closing never waits (see _Connection.aclose); the shield only makes
        # sure that a cancellation does not leave the rest of the list open.
        with anyio.CancelScope(shield=True):
            for conn in conns:
                await conn.aclose()

    def statistics(self) -> PoolStatistics:
        """Return a snapshot of the pool's counters."""
        return PoolStatistics(
            idle_per_origin=MappingProxyType(
                {origin: len(idle) for origin, idle in self._idle.items() if idle}
            ),
            in_use=self._in_use,
            opened=self._opened,
            reused=self._reused,
            stale_discarded=self._stale_discarded,
            retried=self._retried,
        )

    async def _connect(self, origin: Origin, connect_timeout: float) -> _Connection:
        stream: anyio.abc.ByteStream
        try:
            with anyio.fail_after(connect_timeout):
                context = None
                if origin.scheme == "https":
                    if self._ssl_context is None:
                        self._ssl_context = ssl.create_default_context()
                    context = self._ssl_context
                # HTTP/1.1 framing detects truncation: no close_notify dance.
                stream = await connect_tcp(origin.host, origin.port, ssl_context=context)
        except TimeoutError:
            raise UpstreamError(
                "timeout", f"connecting to {origin} took longer than {connect_timeout} s"
            ) from None
        except (*_IO_ERRORS, anyio.EndOfStream) as exc:
            raise UpstreamError("connect", f"cannot connect to {origin}: {_reason(exc)}") from exc
        self._opened += 1
        return _Connection(origin, stream, self._max_head_size)

    def _checkin(self, conn: _Connection) -> bool:
        """Pool a connection whose exchange ended cleanly; False if it must be closed."""
        self._in_use -= 1
        if not conn.keep_alive:  # closing, close-delimited, or bytes after the response
            return False
        idle = self._idle.get(conn.origin)
        if idle is None:
            idle = self._idle[conn.origin] = []
        if len(idle) >= self._max_idle:
            return False
        idle.append(conn)
        return True

    def _abandon(self) -> None:
        self._in_use -= 1

    async def _release_aborted(self) -> None:
        conns, self._aborted = self._aborted, []
        with anyio.CancelScope(shield=True):
            for conn in conns:
                await conn.aclose()


class UpstreamResponse:
    """The response to one request: read the head, then the body as it arrives."""

    __slots__ = ("_conn", "_finished", "_head_received", "_pieces", "_pool", "_resend")

    def __init__(
        self,
        pool: UpstreamPool,
        conn: _Connection,
        *,
        resend: tuple[bytes, bytes, bool, float] | None = None,
    ) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn  # None once pooled again or closed
        self._head_received = False
        self._pieces = 0  # of the body returned so far
        self._finished = False
        self._resend = resend

    async def receive_head(self) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Wait for the response head; return the status and headers (1xx are skipped).

        Header names are lower-cased, values as the upstream sent them.
        """
        if self._head_received:
            raise RuntimeError("receive_head() was already called")
        conn = self._usable()
        while (head := conn.head) is None:
            try:
                await self._receive(conn)
            except UpstreamError as exc:
                resend = self._resend
                if resend is None or exc.kind != "reset" or conn.received:
                    raise
                # A reused keep-alive connection closed by the server before a
                # byte of the answer: it never read the request (RFC 9112 9.3.1
                # lets a client retry then). Once, on a new connection.
                self._resend = None
                pool = self._pool
                pool._retried += 1
                request, method, closing, connect_timeout = resend
                conn = await pool._send_new(conn.origin, request, method, closing, connect_timeout)
                self._conn = conn
        self._head_received = True
        return head

    async def receive_data(self) -> bytes:
        """Return the body that arrived and was not returned yet, as soon as some has;
        ``b""`` at the end of the body.

        What one read of the connection brought is returned in one piece (a
        stream's events that came together are relayed, and written to the
        client, together), except the body's first piece, returned alone: a
        stream's first event goes out without waiting for the events read with
        it. At a clean end the connection goes back to the pool at once.
        """
        if not self._head_received:
            raise RuntimeError("call receive_head() before receive_data()")
        if self._finished:
            return b""
        conn = self._usable()
        chunks = conn.chunks
        while not chunks:
            if conn.ended:
                self._finished = True
                self._conn = None
                if not self._pool._checkin(conn):
                    await conn.aclose()
                return b""
            await self._receive(conn)
        self._pieces += 1
        if len(chunks) == 1 or self._pieces == 1:
            return chunks.popleft()
        data = b"".join(chunks)
        chunks.clear()
        return data

    @property
    def buffered(self) -> bool:
        """Whether more of the body, or its end, came with what was returned last
        (the head, or a piece but the body's first, which is to be written at once):
        the next ``receive_data`` returns it without waiting, to be handled, and
        written, with it."""
        conn = self._conn
        return (
            conn is not None
            and self._head_received
            and not self._finished
            and self._pieces != 1
            and (bool(conn.chunks) or conn.ended)
        )

    async def aclose(self) -> None:
        """Release the connection; close it unless the body was read to its end.

        A body that already arrived in full (an empty 204 body, say) lets the
        connection return to the pool. Idempotent.
        """
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        if self._head_received and conn.ended:
            self._finished = True
            conn.chunks.clear()
            if self._pool._checkin(conn):
                return
        else:
            self._pool._abandon()
        await conn.aclose()

    def abort(self) -> None:
        """Close the connection now, without awaiting (for cancellation paths). Idempotent.

        The upstream sees the connection end at once; the descriptor itself
        is released by the pool's next :meth:`UpstreamPool.request` or
        :meth:`UpstreamPool.aclose`.
        """
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        self._pool._abandon()
        conn.shutdown()
        self._pool._aborted.append(conn)

    def _usable(self) -> _Connection:
        conn = self._conn
        if conn is None:
            raise UpstreamError("reset", "the response was closed before it was read")
        return conn

    async def _receive(self, conn: _Connection) -> None:
        """Read once and frame what came; failures close the connection and raise."""
        error = conn.error
        if error is not None:
            await self._fail(conn)
            raise error
        try:
            data = await conn.stream.receive(_RECEIVE_SIZE)
        except anyio.EndOfStream:
            data = b""
        except _IO_ERRORS as exc:
            await self._fail(conn)
            raise UpstreamError(
                "reset", f"connection to {conn.origin} broke: {_reason(exc)}"
            ) from exc
        except BaseException:
            await self._fail(conn)
            raise
        if self._conn is not conn:
            # abort() or aclose() ran while this task was reading.
            raise UpstreamError("reset", "the response was closed while being read")
        try:
            if data:
                conn.received = True
                conn.framer.feed(data)
            else:
                conn.framer.feed_eof()
        except UpstreamError as exc:
            if exc.kind == "reset":
                message = f"{conn.origin} closed the connection mid-response"
            else:
                message = f"malformed response from {conn.origin}: {exc}"
            # Raised once what was framed before it is read (the head, body pieces).
            conn.error = UpstreamError(exc.kind, message)

    async def _fail(self, conn: _Connection) -> None:
        if self._conn is conn:
            self._conn = None
            self._pool._abandon()
            await conn.aclose()


async def _send_request(conn: _Connection, request: bytes) -> None:
    """Write the request in one send; any failure closes the connection."""
    try:
        await conn.stream.send(request)
    except _IO_ERRORS as exc:
        await conn.aclose()
        raise UpstreamError(
            "reset", f"connection to {conn.origin} broke while sending: {_reason(exc)}"
        ) from exc
    except BaseException:
        await conn.aclose()
        raise
    if is_closed(conn.stream, conn.raw):
        # asyncio's transport swallows a failed write: it closes the socket
        # and anyio's send() returns normally. The request did not go out.
        await conn.aclose()
        raise UpstreamError("reset", f"connection to {conn.origin} broke while sending")


def _reason(exc: BaseException) -> str:
    """The root cause of an I/O error, looking through anyio's wrappers."""
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        return "; ".join(_reason(sub) for sub in cause.exceptions)
    if cause is not None:
        return _reason(cause)
    return str(exc) or type(exc).__name__
