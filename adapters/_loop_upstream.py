"""A lean keep-alive HTTP/1.1 client on ``asyncio.Protocol`` callbacks.

The asyncio twin of ``adapters._upstream.UpstreamPool`` for the callback
driver (``adapters._loop_driver``): the same framing (``adapters._http1``:
one buffer per request, llhttp for responses), the same per-origin LIFO pool
of idle connections, the same failure kinds and messages, but no stream, no
task and no await per request: a request is one ``transport.write`` and the
response comes back as calls on a listener. Only opening a connection runs
a task (``loop.create_connection``, bounded by ``connect_timeout``).

A reused idle connection that the server had closed is known before use: its
protocol heard the close (or bytes, which an idle connection must not get) and
it left the pool then, without a system call per reuse. One closed as the
request went out, before a byte of the answer (a close the loop had not read
yet, say), is replaced by a new connection once, as RFC 9112 9.3.1 allows.
A connection that fails in any way, or whose call is aborted, is closed,
never pooled again.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Sequence
from typing import Protocol

from core import Origin
from core._events import FailureKind

from ._http1 import ResponseFramer, UpstreamError, encode

__all__ = ["LoopPool", "UpstreamCall", "UpstreamError", "UpstreamListener"]


class UpstreamListener(Protocol):
    """Who hears of one call's response (``adapters._loop_driver.Run``), in order:
    ``upstream_head``, ``upstream_data``..., then ``upstream_end`` or, at any
    point, ``upstream_failed``. Never called from inside ``LoopPool.request``.
    What one read of the connection brings is told between ``reading()`` and
    ``read_done()``: a listener writing to a client writes it once, at the end."""

    def reading(self) -> None:
        """A read of the response is about to be told."""

    def read_done(self) -> None:
        """What the read held has been told."""

    def upstream_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """The final response head (header names lower-cased)."""

    def upstream_data(self, data: bytes) -> None:
        """A piece of the body, as it arrived."""

    def upstream_end(self) -> None:
        """The response is complete (its connection is pooled again or closed)."""

    def upstream_failed(self, kind: FailureKind, message: str) -> None:
        """The call failed; ``kind`` as ``UpstreamError``'s."""


class UpstreamCall:
    """One request in flight: abort it, or pause and resume reading its response."""

    __slots__ = (
        "_closing",
        "_complete",
        "_conn",
        "_connect_timeout",
        "_connecting",
        "_keep",
        "_listener",
        "_method",
        "_origin",
        "_paused",
        "_pool",
        "_request",
        "_resend",
        "over",
    )

    def __init__(  # noqa: PLR0917
        self,
        pool: LoopPool,
        origin: Origin,
        request: bytes,
        method: bytes,
        closing: bool,
        connect_timeout: float,
        listener: UpstreamListener,
    ) -> None:
        self._pool = pool
        self._origin = origin
        self._request = request
        self._method = method
        self._closing = closing
        self._connect_timeout = connect_timeout
        self._listener = listener
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._resend = False  # sent on a reused connection: may be sent once more
        self._paused = False
        self._complete = False  # the response ended; the connection awaits release()
        self._keep = False  # ... and may be pooled again then
        self.over = False  # released, failed or aborted: the listener hears nothing more

    def abort(self) -> None:
        """Close the connection at once; the listener hears nothing more. Idempotent."""
        if self.over:
            return
        self.over = True
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.call = None
            self._pool._in_use -= 1
            conn.transport.abort()
        task = self._connecting
        if task is not None:
            self._connecting = None
            task.cancel()

    def pause_reading(self) -> None:
        """Stop reading the response (the client reads slowly)."""
        self._paused = True
        conn = self._conn
        if conn is not None and not conn.closed:
            conn.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read the response again."""
        if not self._paused:
            return
        self._paused = False
        conn = self._conn
        if conn is not None and not conn.closed:
            conn.transport.resume_reading()

    # -- from the connection ----------------------------------------------------------

    def _start(self, conn: _Connection) -> None:
        self._conn = conn
        conn.call = self
        conn.received = False
        self._pool._in_use += 1
        conn.framer.expect(self._method, self._closing)
        if self._paused:
            conn.transport.pause_reading()
        conn.transport.write(self._request)

    def release(self) -> None:
        """The listener has taken the end of the response: pool the connection again
        (or close it). Until then an ``abort()`` closes it."""
        if self.over or not self._complete:
            return
        self.over = True
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        conn.call = None
        pool = self._pool
        pool._in_use -= 1
        if self._paused:
            conn.transport.resume_reading()
        if not (self._keep and not conn.closed and pool._checkin(conn)):
            conn.transport.close()

    def _ended(self, conn: _Connection, keep_alive: bool) -> None:
        self._complete = True
        self._keep = keep_alive
        self._listener.upstream_end()

    def _broken(self, conn: _Connection, kind: FailureKind, message: str) -> None:
        """The connection failed under this call: send once more, or fail."""
        if self._complete:  # after the response: the connection is not reused
            self._keep = False
            return
        self._conn = None
        conn.call = None
        pool = self._pool
        pool._in_use -= 1
        conn.transport.abort()
        if self._resend and kind == "reset" and not conn.received:
            # A reused keep-alive connection closed by the server before a byte
            # of the answer: it never read the request. Once, on a new connection.
            self._resend = False
            pool._retried += 1
            pool._open(self)
            return
        self._fail(kind, message)

    def _fail(self, kind: FailureKind, message: str) -> None:
        self.over = True
        self._listener.upstream_failed(kind, message)


class _Connection(asyncio.Protocol):
    """One upstream connection; the framer's listener, passing on to its call."""

    __slots__ = ("call", "closed", "framer", "origin", "pool", "received", "transport")

    def __init__(self, pool: LoopPool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.call: UpstreamCall | None = None
        self.received = False  # any byte of the current response yet
        self.closed = False
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.framer = ResponseFramer(self, pool._max_head_size)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        call = self.call
        if call is None or call._complete:  # idle: the server closes it, or lies
            self.closed = True
            self.transport.abort()
            return
        self.received = True
        listener = call._listener
        listener.reading()
        try:
            self.framer.feed(data)
        except UpstreamError as exc:
            if self.call is call:
                call._broken(self, exc.kind, f"{exc} ({self.origin})")
        finally:
            listener.read_done()

    def eof_received(self) -> bool:
        self.closed = True
        call = self.call
        if call is not None and not call._complete:
            try:
                self.framer.feed_eof()
            except UpstreamError as exc:
                if self.call is call:
                    message = f"{self.origin} closed the connection mid-response"
                    if exc.kind != "reset":
                        message = f"{exc} ({self.origin})"
                    call._broken(self, exc.kind, message)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        call = self.call
        if call is not None:
            reason = _reason(exc) if exc is not None else "closed"
            call._broken(self, "reset", f"connection to {self.origin} broke: {reason}")
        self.pool._forget(self)
        self.framer.close()

    def is_stale(self) -> bool:
        """An idle connection that cannot carry a request: closed, or closing.

        No system call: its protocol heard the server's close, or bytes (then it
        aborted it), and ``connection_lost`` took it out of the pool. A close the
        loop has not read yet breaks the request before a byte of the answer,
        which is then sent once more on a new connection.
        """
        return self.closed or self.transport.is_closing()

    # -- the framer's listener --

    def on_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        call = self.call
        if call is not None:
            call._listener.upstream_head(status, headers)

    def on_data(self, data: bytes) -> None:
        call = self.call
        if call is not None:
            call._listener.upstream_data(data)

    def on_end(self, keep_alive: bool) -> None:
        call = self.call
        if call is not None:
            call._ended(self, keep_alive and not self.closed)


class LoopPool:
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
        self._in_use = 0
        self._opened = 0
        self._reused = 0
        self._stale_discarded = 0
        self._retried = 0
        self._closed = False

    def request(
        self,
        origin: Origin,
        method: bytes,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        *,
        connect_timeout: float,
        listener: UpstreamListener,
    ) -> UpstreamCall:
        """Send one request; the response comes to ``listener`` (never from in here).

        ``headers`` are sent as given: they must carry Host and frame the body
        (``core.SendUpstreamRequest.headers`` do). A request that cannot be
        sent as valid HTTP/1.1 raises ``UpstreamError("protocol")`` here,
        before anything is sent.
        """
        data, closing = encode(method, target, headers, body)
        call = UpstreamCall(self, origin, data, method, closing, connect_timeout, listener)
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.closed or conn.transport.is_closing():  # is_stale(), inline
                self._stale_discarded += 1
                conn.transport.abort()
                continue
            self._reused += 1
            call._resend = True
            call._start(conn)
            return call
        self._open(call)
        return call

    def close(self) -> None:
        """Close every idle connection; later requests still work (they connect)."""
        idle = [conn for conns in self._idle.values() for conn in conns]
        self._idle.clear()
        for conn in idle:
            conn.transport.abort()

    def statistics(self) -> dict[str, int]:
        """The pool's counters (idle, in use, opened, reused, stale discarded, retried)."""
        return {
            "idle": sum(len(conns) for conns in self._idle.values()),
            "in_use": self._in_use,
            "opened": self._opened,
            "reused": self._reused,
            "stale_discarded": self._stale_discarded,
            "retried": self._retried,
        }

    def _open(self, call: UpstreamCall) -> None:
        call._connecting = asyncio.get_running_loop().create_task(self._connect(call))

    async def _connect(self, call: UpstreamCall) -> None:
        origin = call._origin
        timeout = call._connect_timeout
        loop = asyncio.get_running_loop()
        context = None
        if origin.scheme == "https":
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            context = self._ssl_context
        try:
            async with asyncio.timeout(timeout):
                # HTTP/1.1 framing detects truncation: no close_notify dance.
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, origin),
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context is not None else None,
                )
        except TimeoutError:
            message = f"connecting to {origin} took longer than {timeout} s"
            call._connecting = None
            call._fail("timeout", message)
            return
        except (OSError, ssl.SSLError, EOFError) as exc:
            message = f"cannot connect to {origin}: {_reason(exc)}"
            call._connecting = None
            call._fail("connect", message)
            return
        call._connecting = None
        self._opened += 1
        if call.over:  # aborted as it connected
            conn.transport.close()
            return
        call._start(conn)

    def _checkin(self, conn: _Connection) -> bool:
        """Pool a connection whose response ended cleanly; False if it must be closed."""
        if conn.closed or self._closed:
            return False
        idle = self._idle.get(conn.origin)
        if idle is None:
            idle = self._idle[conn.origin] = []
        if len(idle) >= self._max_idle:
            return False
        idle.append(conn)
        return True

    def _forget(self, conn: _Connection) -> None:
        """A connection closed: out of the idle list if it was there."""
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)


def _reason(exc: BaseException) -> str:
    """The root cause of an I/O error."""
    cause = exc.__cause__
    if cause is not None:
        return _reason(cause)
    return str(exc) or type(exc).__name__
