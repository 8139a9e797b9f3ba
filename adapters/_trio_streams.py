"""A lean TCP stream on trio, behind anyio's ``ByteStream`` interface.

anyio's trio ``SocketStream`` reads through trio's socket wrapper, which tries
the system call first and waits only if it would block: on a stream whose
events come one at a time (a model's answer) every read is a failed
``recv`` (``EAGAIN``, an exception), an ``epoll_ctl``, a wait and the
``recv`` again, inside an async context manager per call; every write ends in
a full trip through trio's scheduler. That was most of a relayed event's cost
on trio. ``TrioStream`` waits first when the last read drained the socket,
reads first when it filled its buffer (more is likely there), and writes at
once, waiting only when the kernel's buffer is full: then, like
``AsyncioStream``, for at most ``write_timeout`` seconds.

Imported only under trio (by ``adapters._streams``).
"""

from __future__ import annotations

import contextlib
import errno
import math
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import anyio
import anyio.abc
import trio
from anyio.abc import SocketAttribute

__all__ = ["TrioStream"]

_T = TypeVar("_T")

_wait_readable = trio.lowlevel.wait_readable
_wait_writable = trio.lowlevel.wait_writable
_checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled
_cancel_shielded_checkpoint = trio.lowlevel.cancel_shielded_checkpoint
# Writes that complete at once never yield to trio's scheduler: a task that
# only writes (answers to requests pipelined in one read) yields after this
# many, so other connections are served meanwhile.
_WRITES_BEFORE_YIELD = 16


class TrioStream(anyio.abc.ByteStream):
    """A connected TCP socket as an anyio ``ByteStream``, on trio's I/O waits.

    ``write_timeout`` bounds how long ``send`` waits for the peer to read
    (infinite unless set): past it the connection is aborted and ``send``
    raises ``TimeoutError``. Errors are anyio's: ``EndOfStream``,
    ``BrokenResourceError`` (from the ``OSError``), ``ClosedResourceError``
    (closed here).
    """

    __slots__ = ("_closed", "_full", "_sock", "_writes", "write_timeout")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._closed = False
        self._full = False  # the last read filled its buffer: read before waiting
        self._writes = 0  # writes since this stream last yielded
        self.write_timeout = math.inf

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._closed:
            raise anyio.ClosedResourceError
        recv = self._sock.recv
        data: bytes | None = None
        if self._full:
            await _checkpoint_if_cancelled()
            data = self._try(recv, max_bytes)
            if data is not None:
                # A schedule point, as trio's own sockets make (it cannot be
                # cancelled: what was read is not lost).
                await _cancel_shielded_checkpoint()
        while data is None:
            await self._wait(_wait_readable)
            data = self._try(recv, max_bytes)
        self._writes = 0
        self._full = len(data) == max_bytes
        if not data:
            raise anyio.EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        """Write ``item``; wait (at most ``write_timeout``) while the peer does not read."""
        if self._closed:
            raise anyio.ClosedResourceError
        send = self._sock.send
        sent = self._try(send, item) or 0
        if sent == len(item):
            self._writes += 1
            if self._writes >= _WRITES_BEFORE_YIELD:
                self._writes = 0
                await _cancel_shielded_checkpoint()
            return
        self._writes = 0
        view = memoryview(item)[sent:]
        with trio.move_on_after(self.write_timeout) as bound:
            while view:
                await self._wait(_wait_writable)
                view = view[self._try(send, view) or 0 :]
        if bound.cancelled_caught:
            self.abort()  # a close would wait for the peer to read
            raise TimeoutError(f"the peer read nothing for {self.write_timeout:g} s")

    def _try(self, call: Callable[[Any], _T], arg: Any) -> _T | None:
        """``call(arg)``, the socket's ``recv`` or ``send``: None if it would block."""
        try:
            return call(arg)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise self._broken() from exc

    async def _wait(self, wait: Callable[[socket.socket], Awaitable[None]]) -> None:
        """Wait until the socket is readable (or writable: ``wait``)."""
        sock = self._sock
        if sock.fileno() < 0:
            raise self._broken() from OSError(errno.EBADF, "the socket is closed")
        try:
            await wait(sock)
        except trio.ClosedResourceError as exc:  # closed by another task meanwhile
            raise anyio.ClosedResourceError from exc

    async def send_eof(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise self._broken() from exc

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """Close at once (a task waiting on the socket gets ``ClosedResourceError``)."""
        if self._closed:
            return
        self._closed = True
        sock = self._sock
        if sock.fileno() >= 0:
            trio.lowlevel.notify_closing(sock)
        sock.close()

    def abort(self) -> None:
        """Close at once, without waiting for the peer to read: it sees the end now."""
        sock = self._sock
        if sock.fileno() >= 0:
            with contextlib.suppress(OSError):  # the peer has gone already
                sock.shutdown(socket.SHUT_RDWR)
        self.close()

    def _broken(self) -> anyio.ClosedResourceError | anyio.BrokenResourceError:
        if self._closed:
            return anyio.ClosedResourceError()
        return anyio.BrokenResourceError()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        sock = self._sock
        return {
            SocketAttribute.raw_socket: lambda: sock,
            SocketAttribute.family: lambda: sock.family,
            SocketAttribute.local_address: sock.getsockname,
            SocketAttribute.remote_address: sock.getpeername,
            SocketAttribute.local_port: lambda: sock.getsockname()[1],
            SocketAttribute.remote_port: lambda: sock.getpeername()[1],
        }
