"""The quota scripts on trio: one pipelined connection to Redis, no thread.

The trio counterpart of ``adapters._store_redis``'s asyncio lean client, with
the same contract: ``call(keys, args)`` runs the client's script (EVALSHA,
EVAL again after a ``NOSCRIPT``) and returns its reply, raising what redis-py
would (``ResponseError`` for an error reply, ``ConnectionError``), or
``TimeoutError`` after ``timeout``. The connection is made at the first call
(AUTH, SELECT and SCRIPT LOAD once) and again after a failure. A call that
times out drops the connection (the calls behind it wait for the same
replies); a call cancelled from outside (its client gone) leaves it to the
others, and its reply, when it comes, is skipped.

Before, trio ran redis-py's sync client in a worker thread: a thread hop per
acquire, ~0.7 ms of CPU a request. Here one task writes what the callers of
one scheduling round asked (one ``send_all``), one task reads the replies
(hiredis parses them) and hands each to its caller with
``trio.lowlevel.reschedule``: no thread, no event object per call. Both are
system tasks, ended by ``close()`` (or the end of the run).
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis
import outcome
import trio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from ._redis_wire import LeanScript, closed

__all__ = ["TrioLeanClient"]

_READ_SIZE = 65536


class _Call:
    """A caller waiting for its reply: its task, until the reply (or the end) comes."""

    __slots__ = ("abandoned", "task")

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.abandoned = False  # cancelled: its reply is skipped


class _Connection:
    """One connection to Redis: commands written together, replies in order."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._waiting: deque[_Call] = deque()
        self._unsent: list[bytes] = []
        self._more = trio.lowlevel.ParkingLot()  # the writer waits here for commands
        self.closed = False

    def start(self) -> None:
        """Start the reader and the writer (system tasks: they outlive any caller)."""
        trio.lowlevel.spawn_system_task(self._read, name="sansproxy-redis-reader")
        trio.lowlevel.spawn_system_task(self._write, name="sansproxy-redis-writer")

    async def call(self, packed: bytes) -> Any:
        """Send a packed command; its reply (a ``ResponseError`` for an error reply)."""
        if self.closed:
            raise closed()
        call = _Call(trio.lowlevel.current_task())
        self._waiting.append(call)
        if not self._unsent:
            self._more.unpark()
        self._unsent.append(packed)

        def abort(_: object) -> trio.lowlevel.Abort:
            call.abandoned = True
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)

    async def _write(self) -> None:
        stream = self._stream
        try:
            while not self.closed:
                if not self._unsent:
                    await self._more.park()
                    continue
                # What the callers of the last round asked, in one write.
                unsent, self._unsent = self._unsent, []
                await stream.send_all(b"".join(unsent))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.close(functools.partial(RedisConnectionError, "Connection closed by server."))

    async def _read(self) -> None:
        stream, reader, waiting = self._stream, self._reader, self._waiting
        reschedule, value = trio.lowlevel.reschedule, outcome.Value
        try:
            while not self.closed:
                data = await stream.receive_some(_READ_SIZE)
                if not data:
                    break
                reader.feed(data)
                while (reply := reader.gets()) is not False:
                    call = waiting.popleft()
                    if not call.abandoned:
                        reschedule(call.task, value(reply))
        except (hiredis.ProtocolError, IndexError):  # garbage, or a reply nobody asked for
            self.close(functools.partial(RedisConnectionError, "Protocol error: not a reply"))
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        self.close(functools.partial(RedisConnectionError, "Connection closed by server."))

    def close(self, error: Callable[[], Exception] = closed) -> None:
        """Drop the connection; every call still waiting fails with ``error()``."""
        if self.closed:
            return
        self.closed = True
        self._stream.socket.close()  # wakes the reader and the writer (closed)
        self._more.unpark_all()
        waiting = self._waiting
        while waiting:
            call = waiting.popleft()
            if not call.abandoned:
                trio.lowlevel.reschedule(call.task, outcome.Error(error()))


class TrioLeanClient(LeanScript):
    """A script on trio, on one pipelined connection (see the module)."""

    def __init__(self, options: dict[str, Any], where: str, script: str, timeout: float) -> None:
        super().__init__(options, where, script, timeout)
        self._conn: _Connection | None = None
        self._connecting = trio.Lock()

    async def _ask(self, conn: _Connection, packed: bytes) -> Any:
        with trio.move_on_after(self._timeout):
            return await conn.call(packed)
        # No reply in time: the calls behind this one wait for the same replies.
        conn.close(TimeoutError)
        raise TimeoutError

    async def _connection(self) -> _Connection:
        # Concurrent first calls share one attempt: the others wait for its end.
        async with self._connecting:
            conn = self._conn
            if conn is not None and not conn.closed:
                return conn
            with trio.move_on_after(self._timeout):
                conn = self._conn = await self._handshake()
                return conn
            raise TimeoutError

    async def _handshake(self) -> _Connection:
        options = self._options
        try:
            if "path" in options:
                stream = await trio.open_unix_socket(options["path"])
            else:
                stream = await trio.open_tcp_stream(
                    options.get("host", "localhost"), options.get("port", 6379)
                )
        except OSError as exc:
            raise self._unreachable(exc) from None
        conn = _Connection(stream)
        conn.start()
        try:
            for packed in self._greeting():
                self._greeted(await conn.call(packed))
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        """Drop the connection (a call still waiting fails)."""
        if self._conn is not None:
            self._conn.close()
